// SPDX-License-Identifier: BSD-3-Clause
// regcache-missbench: the issue 14 miss-path benchmarks, regcache next to UCX
// 1.13's ucs_rcache, each printed with its goal and met / NOT MET. Not a test:
// a loaded machine would make the goals flaky (docs/bench.md).
//
//   (a) insert: first get of each of 16 384 distinct 4 KiB pages, no
//       eviction, no-op registration callbacks; ns per get      goal <= 1.0x UCX
//   (b) miss + evict: 1 024 regions cycling over 8 192 distinct pages; ns
//       per get+put (UCX 1.13 does not evict at max_regions: no UCX column)
//                                                               goal <= 1.5 us
//   (c) invalidation: mmap 64 KiB, get, put, munmap, repeat; the cache's
//       overhead over plain mmap+munmap                         goal <= 1.2x UCX
//
// Every measurement runs in a fresh process: `regcache-missbench --child ...`
// for regcache, `regcache-missbench-ucx ...` for UCX (not linked with
// libregcache, so ucm and regcache's notifier never meet). Repetitions
// alternate the two (ABBA order), and the goal lines use the medians.
//
//   regcache-missbench [--reps N]     (default 7)
//   regcache-missbench --child insert PASSES | evict PASSES | inval BLOCKS ITERS
//                                     one measurement, RESULT line (used by the
//                                     above, and for callgrind: docs/bench.md)
#include <regcache/regcache.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/bench/miss/miss_loops.h"
#include "tests/bench/self_dir.h"

namespace {

// Registrations made: printed, so that a run shows one per miss.
uint64_t g_regs = 0;
int NoopReg(void *, void *, size_t, unsigned, void **handle, uint32_t *,
            uint64_t *, void **) {
  ++g_regs;
  *handle = nullptr;
  return 0;
}
int NoopDereg(void *, void *) { return 0; }
const regcache_driver_ops_t kOps = {sizeof(regcache_driver_ops_t), NoopReg,
                                    NoopDereg};

// What an MPI transport asks for (the README's example): local write, remote
// read and write. Under the default ACCESS_POLICY=all a miss widens it to
// every access when the memory is writable, as UCX registers it.
constexpr unsigned kAccess = REGCACHE_ACCESS_LOCAL_WRITE |
                             REGCACHE_ACCESS_REMOTE_READ |
                             REGCACHE_ACCESS_REMOTE_WRITE;

class Regcache {
 public:
  bool Open(size_t max_regions) {
    if (drv_ == nullptr && regcache_driver_custom_open(&kOps, nullptr, &drv_))
      return false;
    regcache_params_t p{};
    p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MAX_BYTES |
                   REGCACHE_PARAM_NAME;
    p.max_regions = max_regions;
    p.max_bytes = size_t(1) << 40;
    p.name = "missbench";
    int rc = regcache_create(drv_, &p, &cache_);
    if (rc) fprintf(stderr, "regcache_create: %s\n", regcache_strerror(rc));
    return rc == 0;
  }
  bool Get(void *addr, size_t len, void **handle) {
    regcache_region_t *r;
    int rc = regcache_get(cache_, addr, len, kAccess, &r);
    if (rc) {
      fprintf(stderr, "regcache_get: %s\n", regcache_strerror(rc));
      return false;
    }
    *handle = r;
    return true;
  }
  void Put(void *handle) {
    regcache_put(cache_, static_cast<regcache_region_t *>(handle));
  }
  void Close() {
    regcache_destroy(cache_);
    cache_ = nullptr;
  }

 private:
  regcache_driver_t *drv_ = nullptr;
  regcache_t *cache_ = nullptr;
};

int Child(int argc, char **argv) {
  Regcache c;
  const int rc =
      missbench::RunCommand(c, argc, argv, g_regs, /*with_evict=*/true);
  if (rc == 2) fprintf(stderr, "bad --child arguments\n");
  return rc;
}

using regcache::bench::SelfDir;

// Runs cmd and returns its RESULT line ("" if it failed).
std::string Run(const std::string &cmd) {
  FILE *p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char line[512];
  std::string result;
  while (fgets(line, sizeof line, p))
    if (strncmp(line, "RESULT", 6) == 0) result = line;
  if (pclose(p) != 0) return "";
  return result;
}

// The value of `key=` on a RESULT line (< 0: absent).
double Value(const std::string &result, const char *key) {
  const std::string k = std::string(" ") + key + "=";
  const size_t at = result.find(k);
  return at == std::string::npos ? -1 : atof(result.c_str() + at + k.size());
}

const char *Verdict(bool met) { return met ? "met" : "NOT MET"; }

}  // namespace

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "--child") == 0)
    return Child(argc - 2, argv + 2);
  int reps = 7;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: %s [--reps N]\n", argv[0]);
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  const std::string dir = SelfDir();
  const std::string self = "'" + dir + "/regcache-missbench' --child ";
  const std::string ucx_exe = dir + "/regcache-missbench-ucx";
  const bool have_ucx = access(ucx_exe.c_str(), X_OK) == 0;
  // As regcache-bench starts its UCX worker: the loops allocate nothing
  // through malloc, but UCM's malloc hooks would change glibc's behaviour.
  const std::string ucx =
      "UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MALLOC_RELOC=no '" + ucx_exe + "' ";
  const int kBlocks = 7, kIters = 1000;
  std::vector<double> ins_rc, ins_ucx, ev_ad, ev_lru;
  // Invalidation, per contender: the cycle's time with the cache, its
  // overhead over the plain cycle before any hook was installed (the goal's
  // figure), and over the plain cycle with the hooks installed (the cache's
  // own part), each a per-process difference.
  struct Inv {
    std::vector<double> cached, total, own;
    void Add(const std::string &res) {
      const double p = Value(res, "plain_ns"), h = Value(res, "hooked_ns"),
                   c = Value(res, "cache_ns");
      if (p < 0 || h < 0 || c < 0) {
        fprintf(stderr, "regcache-missbench: inval failed\n");
        exit(1);
      }
      cached.push_back(c);
      total.push_back(c - p);
      own.push_back(c - h);
    }
  } inv_rc, inv_ucx;
  auto fail = [](const char *what) {
    fprintf(stderr, "regcache-missbench: %s failed\n", what);
    exit(1);
  };
  for (int r = 0; r < reps; ++r) {
    fprintf(stderr, "\rrepetition %d of %d", r + 1, reps);
    const bool ucx_first = r % 2 == 1;  // ABBA: alternate who goes first
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == ucx_first) {
        if (!have_ucx) continue;
        double v = Value(Run(ucx + "insert 3"), "insert_ns");
        if (v < 0) fail("UCX insert");
        ins_ucx.push_back(v);
        inv_ucx.Add(Run(ucx + "inval " + std::to_string(kBlocks) + " " +
                        std::to_string(kIters)));
      } else {
        double v = Value(Run(self + "insert 3"), "insert_ns");
        if (v < 0) fail("regcache insert");
        ins_rc.push_back(v);
        v = Value(Run(self + "evict 3"), "evict_ns");
        if (v < 0) fail("regcache evict");
        ev_ad.push_back(v);
        v = Value(Run("REGCACHE_EVICTION=lru " + self + "evict 3"), "evict_ns");
        if (v < 0) fail("regcache evict (lru)");
        ev_lru.push_back(v);
        inv_rc.Add(Run(self + "inval " + std::to_string(kBlocks) + " " +
                       std::to_string(kIters)));
      }
    }
  }
  fprintf(stderr, "\n");
  using missbench::Median;
  const double irc = Median(ins_rc), iucx = Median(ins_ucx);
  printf(
      "issue 14 miss path, %d interleaved repetitions (medians), no-op "
      "registration callbacks:\n",
      reps);
  printf(
      "  (a) insert, first get of 16384 distinct 4 KiB pages, no eviction: "
      "regcache %.0f ns/get",
      irc);
  if (have_ucx)
    printf(", UCX %.0f ns/get = %.2fx   (goal <= 1.0x) %s\n", iucx, irc / iucx,
           Verdict(irc <= iucx));
  else
    printf("; UCX not built (libucx-dev missing)   (goal <= 1.0x)\n");
  const double ead = Median(ev_ad), elru = Median(ev_lru);
  printf(
      "  (b) miss + evict, 1024 regions cycling over 8192 pages: regcache "
      "%.0f ns/get (REGCACHE_EVICTION=lru: %.0f)   (goal <= 1500 ns) %s; "
      "no UCX column: UCX 1.13 does not evict at max_regions\n",
      ead, elru, Verdict(ead <= 1500 && elru <= 1500));
  const double orc = Median(inv_rc.total), oucx = Median(inv_ucx.total);
  printf(
      "  (c) invalidation, mmap 64 KiB + get + put + munmap: regcache %.0f "
      "ns/cycle, overhead over plain mmap+munmap %.0f ns (cache's own part, "
      "hooks installed in both: %.0f)",
      Median(inv_rc.cached), orc, Median(inv_rc.own));
  if (have_ucx)
    printf(
        "; UCX %.0f ns/cycle, overhead %.0f ns (own part %.0f); overhead "
        "%.2fx UCX's   (goal <= 1.2x) %s\n",
        Median(inv_ucx.cached), oucx, Median(inv_ucx.own), orc / oucx,
        Verdict(orc <= 1.2 * oucx));
  else
    printf("; UCX not built   (goal <= 1.2x)\n");
  printf(
      "  (d) churn, ns per hit in every workload: regcache-bench's report "
      "(\"ns/hit xUCX\" goal line); hit path, 2 threads: regcache-micro; "
      "unrelated munmap: tests/bench/notifier_icount.sh\n");
  return 0;
}

// SPDX-License-Identifier: BSD-3-Clause
// regcache-bench-ucx: the UCX contender (ucs_rcache from libucx-dev 1.13), run
// by regcache-bench in a process of its own so that UCX's memory hooks (ucm)
// and regcache's notifier never meet. Not linked with libregcache.
//
//   regcache-bench-ucx --worker ucx --workload NAME --level L ...   one run,
//   RESULT line regcache-bench-ucx --hit-loop [--iters N] [--threads T] hit
//   path, ns per op
//
// The orchestrator starts it with UCX_MEM_MALLOC_HOOKS=no and
// UCX_MEM_MALLOC_RELOC=no (unless set): the workloads allocate through glibc in
// every contender, and UCM's bistro hooks on munmap/madvise/brk still deliver
// UCM_EVENT_VM_UNMAPPED for glibc's own unmaps. Open() checks that they do: an
// rcache region of unmapped memory must be re-registered.
extern "C" {
#include <ucm/api/ucm.h>
#include <ucs/memory/rcache.h>
}
#include <regcache/regcache.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/regcache_bench/bench.h"

namespace rcbench {
namespace {

struct UcxRegion {
  ucs_rcache_region_t super;
  void *handle;
};

std::atomic<uint64_t> g_unmap_events{0};

void CountUnmap(ucm_event_type_t, ucm_event_t *, void *) {
  g_unmap_events.fetch_add(1, std::memory_order_relaxed);
}

// UCX caches by memory protection, not by HCA access: its memory domains
// register with every access flag the protection allows. The same model here:
// writable memory is registered with REGCACHE_ACCESS_ALL, read-only with remote
// read.
ucs_status_t MemReg(void *, ucs_rcache_t *, void *, ucs_rcache_region_t *region,
                    uint16_t) {
  UcxRegion *r = reinterpret_cast<UcxRegion *>(region);
  unsigned access = (region->prot & PROT_WRITE) ? REGCACHE_ACCESS_ALL
                                                : REGCACHE_ACCESS_REMOTE_READ;
  uint32_t lkey;
  uint64_t rkey;
  void *desc;
  void *addr = reinterpret_cast<void *>(region->super.start);
  size_t len = region->super.end - region->super.start;
  int rc =
      BenchReg(nullptr, addr, len, access, &r->handle, &lkey, &rkey, &desc);
  return rc == 0 ? UCS_OK : UCS_ERR_IO_ERROR;
}

void MemDereg(void *, ucs_rcache_t *, ucs_rcache_region_t *region) {
  BenchDereg(nullptr, reinterpret_cast<UcxRegion *>(region)->handle);
}

void DumpRegion(void *, ucs_rcache_t *, ucs_rcache_region_t *, char *buf,
                size_t max) {
  if (max) buf[0] = 0;
}

const ucs_rcache_ops_t kOps = {MemReg, MemDereg, DumpRegion};

int ProtOf(unsigned access) {
  return (access & (REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_WRITE |
                    REGCACHE_ACCESS_REMOTE_ATOMIC))
             ? PROT_READ | PROT_WRITE
             : PROT_READ;
}

bool NoEvents() {
  const char *v = getenv("RCBENCH_UCX_NO_EVENTS");
  return v && *v == '1';
}

ucs_status_t CreateRcache(const Capacity &cap, const char *name,
                          ucs_rcache_t **rc) {
  ucs_rcache_params_t p;
  memset(&p, 0, sizeof p);
  p.region_struct_size = sizeof(UcxRegion);
  p.alignment = 4096;  // page-aligned registrations, as regcache's
  p.max_alignment = 4096;
  // RCBENCH_UCX_NO_EVENTS=1: no UCM events, for callgrind only (UCM installs
  // no hooks under valgrind, so ucm_set_event_handler fails there); valid
  // only for workloads that unmap nothing (pool-fit, mixed, scan, ...):
  // docs/bench.md.
  p.ucm_events = NoEvents() ? 0 : UCM_EVENT_VM_UNMAPPED;
  p.ucm_event_priority = 1000;
  p.ops = &kOps;
  p.context = nullptr;
  p.flags = 0;
  p.max_regions = cap.regions;
  p.max_size = cap.bytes;
  p.max_unreleased = SIZE_MAX;
  return ucs_rcache_create(&p, name, nullptr, rc);
}

class Ucx : public Contender {
 public:
  const char *name() const override { return "ucx"; }
  int Open(const Capacity &cap, std::string *err) override {
    if (NoEvents()) {
      fprintf(stderr,
              "regcache-bench-ucx: RCBENCH_UCX_NO_EVENTS=1: no invalidations "
              "(profiling only)\n");
    } else if (ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, CountUnmap,
                                     nullptr) != UCS_OK) {
      *err = "ucm_set_event_handler(VM_UNMAPPED) failed";
      return -ENOSYS;
    }
    if (!NoEvents() && !SelfCheck(err)) return -ENOSYS;
    g_unmap_events = 0;
    ucs_status_t s = CreateRcache(cap, "regcache-bench", &rc_);
    if (s != UCS_OK) {
      *err = std::string("ucs_rcache_create: ") + ucs_status_string(s);
      return -EIO;
    }
    return 0;
  }
  int Get(void *addr, size_t len, unsigned access, void **handle) override {
    ucs_rcache_region_t *r;
    ucs_status_t s =
        ucs_rcache_get(rc_, addr, len, ProtOf(access), nullptr, &r);
    if (s != UCS_OK) return -EIO;
    *handle = r;
    return 0;
  }
  void Put(void *handle) override {
    ucs_rcache_region_put(rc_, static_cast<ucs_rcache_region_t *>(handle));
  }
  void *RegHandle(void *handle) override {
    return static_cast<UcxRegion *>(handle)->handle;
  }
  std::string Extra() override {
    return "unmap_events:" + std::to_string(g_unmap_events.load());
  }
  void Close() override {
    ucs_rcache_destroy(rc_);
    if (!NoEvents())
      ucm_unset_event_handler(UCM_EVENT_VM_UNMAPPED, CountUnmap, nullptr);
  }

 private:
  // A region whose memory was unmapped must not be returned again: the UCM
  // hooks must be live in this process, or the comparison would flatter UCX.
  static bool SelfCheck(std::string *err) {
    ucs_rcache_t *rc;
    if (CreateRcache(Capacity{16, size_t(1) << 30}, "selfcheck", &rc) !=
        UCS_OK) {
      *err = "ucs_rcache_create failed";
      return false;
    }
    const size_t len = 1 << 20;
    void *a = malloc(len);  // above the mmap threshold: free() munmaps it
    ucs_rcache_region_t *r;
    bool ok = ucs_rcache_get(rc, a, len, PROT_READ | PROT_WRITE, nullptr, &r) ==
              UCS_OK;
    if (ok) ucs_rcache_region_put(rc, r);
    uint64_t ev0 = g_unmap_events.load();
    uint64_t deregs0 = ReadRegCounters().deregs;
    free(a);
    void *b =
        malloc(len);  // the get below also drains UCX's invalidation queue
    ok = ok && ucs_rcache_get(rc, b, len, PROT_READ | PROT_WRITE, nullptr,
                              &r) == UCS_OK;
    if (ok) ucs_rcache_region_put(rc, r);
    bool invalidated =
        g_unmap_events.load() > ev0 && ReadRegCounters().deregs > deregs0;
    free(b);
    ucs_rcache_destroy(rc);
    if (!ok || !invalidated) {
      *err = "UCX's rcache did not see glibc's munmap (UCM hooks inactive?)";
      return false;
    }
    return true;
  }
  ucs_rcache_t *rc_ = nullptr;
};

Contender *MakeContender(const std::string &name) {
  if (name == "ucx") return new Ucx;
  if (name == "nocache") return NewNoCache();
  if (name == "prereg") return NewPreRegistered();
  return nullptr;
}

// Hit path: each thread get+puts 64-byte slices of its own 1 MiB buffer (one
// region per thread, registered before the loop) `iters` times. Prints ns per
// get+put per thread.
int HitLoop(uint64_t iters, int threads) {
  std::string err;
  RegConfig cfg;
  cfg.driver = "none";
  if (CallbacksInit(cfg, &err) != 0) {
    fprintf(stderr, "%s\n", err.c_str());
    return 1;
  }
  ucs_rcache_t *rc;
  if (CreateRcache(Capacity{1024, size_t(1) << 40}, "hitloop", &rc) != UCS_OK) {
    fprintf(stderr, "ucs_rcache_create failed\n");
    return 1;
  }
  std::vector<double> ns(threads);
  std::atomic<int> ready{0};
  auto body = [&](int t) {
    const size_t len = 1 << 20;
    char *buf = static_cast<char *>(aligned_alloc(4096, len));
    ucs_rcache_region_t *r;
    if (ucs_rcache_get(rc, buf, len, PROT_READ | PROT_WRITE, nullptr, &r) !=
        UCS_OK)
      abort();
    ucs_rcache_region_put(rc, r);
    ready.fetch_add(1);
    while (ready.load() < threads) {
    }
    auto t0 = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < iters; i++) {
      ucs_rcache_get(rc, buf + 64 * (i & 16383), 64, PROT_READ | PROT_WRITE,
                     nullptr, &r);
      ucs_rcache_region_put(rc, r);
    }
    auto t1 = std::chrono::steady_clock::now();
    ns[t] = std::chrono::duration<double, std::nano>(t1 - t0).count() /
            double(iters);
    // buf stays allocated: freeing it would invalidate while others still run.
  };
  std::vector<std::thread> th;
  for (int t = 1; t < threads; t++) th.emplace_back(body, t);
  body(0);
  for (auto &x : th) x.join();
  double sum = 0;
  for (double v : ns) sum += v;
  printf("HITLOOP threads=%d iters=%llu ns_per_op=%.3f\n", threads,
         (unsigned long long)iters, sum / threads);
  ucs_rcache_destroy(rc);
  return 0;
}

}  // namespace
}  // namespace rcbench

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--hit-loop") == 0) {
    uint64_t iters = 10000000;
    int threads = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
      if (strcmp(argv[i], "--iters") == 0)
        iters = strtoull(argv[i + 1], nullptr, 0);
      else if (strcmp(argv[i], "--threads") == 0)
        threads = atoi(argv[i + 1]);
    }
    return rcbench::HitLoop(iters, threads < 1 ? 1 : threads);
  }
  if (argc > 2 && strcmp(argv[1], "--worker") == 0)
    return rcbench::WorkerMain(argc, argv, rcbench::MakeContender);
  fprintf(stderr,
          "regcache-bench-ucx: the UCX worker of regcache-bench; run "
          "regcache-bench.\n");
  return 2;
}

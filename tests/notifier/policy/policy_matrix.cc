// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/policy/policy_matrix.cc - never stale, never blind-cached, in
// every environment of issue 12's matrix:
//   {root, non-root (setuid nobody)} x {uffd allowed, blocked by seccomp}
//   x {no other patcher, libucm loaded first, libucm loaded after the first
//   cache} x {1, 4 threads}
// plus a foreign patcher that reports nothing (Open MPI's patcher, libfabric
// memhooks) first, and two negative controls.
//
// Each cell runs in its own child (alarm(30)): the environment is applied,
// then threads run the workload of the issue (mmap 576 KiB, write, get 256
// KiB, put) and the recycled-address case (munmap + mmap at the same address,
// then get), checking every registration they get with the stale oracle
// (tests/common/stale_oracle.h: frames from pagemap as root, a nonce through
// tee() as nobody). In "libucm after", libucm patches libc between two phases
// while each thread keeps a cached region whose memory it then unmaps and maps
// again at the same address: the window in which the patch source is bypassed.
//
// A cell passes when 0 registrations were stale and either the source is an
// exact one (patch, ucm, uffd) with caching on, or caching is off
// (regcache_notifier_caching_safe() == 0, 0 hits) with exactly one warning.
//
// NEGATIVE CONTROLS (expected to see stale registrations, proving the oracle
// and workload can fail): "lying-external" (foreign patcher, uffd blocked,
// and the host declares regcache_notifier_set_external(1) but reports
// nothing: the old blind caching), "none" (REGCACHE_MONITOR=none with no
// reports) and "ucm-muted" (libucm first or after, the import installed but
// its events dropped by a test seam: what ucm_import.cc prevents).
//
// Usage: policy_matrix [cell-name-substring]. Exit 0 when every selected cell
// passes (a cell needing libucm is skipped, with a line, if libucm is absent).
#include <dlfcn.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "notifier/internal.h"
#include "notifier/policy.h"
#include "tests/common/stale_oracle.h"
#include "tests/notifier/policy/env.h"

namespace {

using regcache::testing::StaleOracle;

enum class Ucm { kNone, kFirst, kAfter, kForeign };

struct Cell {
  bool root;
  bool uffd_blocked;
  Ucm other;
  int threads;
  int control = 0;  // 1: lying external, 2: MONITOR=none, 3: ucm muted
  std::string Name() const {
    static const char *const kOther[] = {"no-patcher", "ucm-first", "ucm-after",
                                         "foreign-first"};
    std::string n = std::string(root ? "root" : "nobody") + "/" +
                    (uffd_blocked ? "uffd-blocked" : "uffd-allowed") + "/" +
                    kOther[static_cast<int>(other)] + "/" +
                    std::to_string(threads) + "t";
    if (control == 1) n += "/control-lying-external";
    if (control == 2) n += "/control-monitor-none";
    if (control == 3) n += "/control-ucm-muted";
    return n;
  }
};

// Lines at warn or error level (the blind cells must have exactly one).
std::atomic<int> g_warnings{0};
std::atomic<int> g_errors{0};
char g_first_warning[512];

void LogHook(void *, int level, const char *msg) {
  if (level == REGCACHE_LOG_ERROR) g_errors++;
  if (level <= REGCACHE_LOG_WARN && g_warnings.fetch_add(1) == 0)
    snprintf(g_first_warning, sizeof(g_first_warning), "%s", msg);
}

constexpr size_t kMap = 576 << 10;
constexpr size_t kGet = 256 << 10;
constexpr size_t kOff = 64 << 10;

struct Counts {
  std::atomic<long> gets{0}, stale{0}, errors{0};
};

// One get of [p+kOff, +kGet): checked, put.
void GetCheck(regcache_t *c, StaleOracle *o, char *p, Counts *n) {
  regcache_region_t *r = nullptr;
  int rc = regcache_get(c, p + kOff, kGet, REGCACHE_ACCESS_LOCAL_WRITE, &r);
  if (rc != 0) {
    n->errors++;
    return;
  }
  n->gets++;
  if (o->IsStale(r)) n->stale++;
  regcache_put(c, r);
}

// The loop, plus the recycled address. Returns the last mapping,
// still mapped and cached (for the phase after libucm patched).
char *Workload(regcache_t *c, StaleOracle *o, int iters, Counts *n) {
  char *keep = nullptr;
  for (int i = 0; i < iters; ++i) {
    auto *p = static_cast<char *>(mmap(nullptr, kMap, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) {
      n->errors++;
      continue;
    }
    memset(p, i, kMap);
    GetCheck(c, o, p, n);
    GetCheck(c, o, p, n);  // a hit when caching
    // Same address again: the cached registration must not be handed out.
    munmap(p, kMap);
    auto *q = static_cast<char *>(
        mmap(p, kMap, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
    if (q == MAP_FAILED) continue;  // another thread took the address
    memset(q, i + 1, kMap);
    GetCheck(c, o, q, n);
    if (i + 1 == iters) {
      keep = q;
    } else {
      munmap(q, kMap);
    }
  }
  return keep;
}

void RunThreads(int threads, regcache_t *c, StaleOracle *o, int iters,
                Counts *n, std::vector<char *> *keep) {
  std::vector<std::thread> ts;
  keep->assign(threads, nullptr);
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] { (*keep)[t] = Workload(c, o, iters, n); });
  for (auto &t : ts) t.join();
}

// The child: exit 0 pass, 1 fail, 77 skip. Prints one line.
int Child(const Cell &cell) {
  alarm(30);
  const std::string name = cell.Name();
  if (!cell.root && !regcache::testing::DropToNobody()) {
    printf("SKIP %s: cannot setuid nobody\n", name.c_str());
    return 77;
  }
  if (cell.uffd_blocked && !regcache::testing::BlockUserfaultfd()) {
    printf("FAIL %s: seccomp filter not installed\n", name.c_str());
    return 1;
  }
  if (cell.other == Ucm::kForeign && !regcache::testing::PatchMunmapForeign()) {
    printf("FAIL %s: foreign patch failed\n", name.c_str());
    return 1;
  }
  if (cell.other == Ucm::kFirst && !regcache::testing::LoadUcmAndPatch()) {
    printf("SKIP %s: libucm.so.0 not loadable\n", name.c_str());
    return 77;
  }
  regcache_set_log_handler(LogHook, nullptr);
  if (cell.control == 2) regcache_config_set("MONITOR", "none");
  if (cell.control == 1) regcache_notifier_set_external(1);
  if (cell.control == 3) regcache::notifier::sources::UcmMuteForTesting(true);
  StaleOracle o;
  regcache_t *c = nullptr;
  if (regcache_create(o.driver(), nullptr, &c) != 0) {
    printf("FAIL %s: regcache_create\n", name.c_str());
    return 1;
  }
  const int iters = cell.threads == 1 ? 100 : 50;
  Counts n;
  std::vector<char *> keep;
  RunThreads(cell.threads, c, &o, iters, &n, &keep);
  if (cell.other == Ucm::kAfter) {
    if (!regcache::testing::LoadUcmAndPatch()) {
      printf("SKIP %s: libucm.so.0 not loadable\n", name.c_str());
      return 77;
    }
    // The window: each kept region is cached (patch), libucm has just
    // bypassed our hooks; unmap, map again at the same address, get.
    for (char *p : keep) {
      if (p == nullptr) continue;
      munmap(p, kMap);
      auto *q = static_cast<char *>(
          mmap(p, kMap, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
      if (q == MAP_FAILED) continue;
      memset(q, 0x5a, kMap);
      GetCheck(c, &o, q, &n);
      munmap(q, kMap);
    }
    RunThreads(cell.threads, c, &o, iters, &n, &keep);
  }
  for (char *p : keep)
    if (p != nullptr) munmap(p, kMap);
  const int safe = regcache_notifier_caching_safe();
  const char *src = regcache_notifier_source();
  regcache_stats_t st{};
  regcache_get_stats(c, &st);
  regcache_destroy(c);
  const bool exact =
      !strcmp(src, "patch") || !strcmp(src, "ucm") || !strcmp(src, "uffd");
  const int warns = g_warnings.load();
  bool ok;
  if (cell.control != 0) {
    ok = n.stale > 0;  // the control must see what the protection prevents
  } else if (safe == 1) {
    ok = n.stale == 0 && n.errors == 0 && exact && g_errors == 0;
  } else {
    ok = n.stale == 0 && n.errors == 0 && safe == 0 && warns == 1 &&
         st.hits == 0;
  }
  printf(
      "%s %-48s source %-5s caching %-3s gets %5ld hits %5lu stale %3ld "
      "errors %ld warnings %d%s%s\n",
      ok ? "PASS" : "FAIL", name.c_str(), src, safe == 1 ? "on" : "off",
      n.gets.load(), static_cast<unsigned long>(st.hits), n.stale.load(),
      n.errors.load(), warns, warns ? ": " : "", warns ? g_first_warning : "");
  fflush(stdout);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char **argv) {
  if (REGCACHE_UNDER_TSAN) {
    printf(
        "SKIP: under ThreadSanitizer no automatic source installs (patch, "
        "uffd and ucm refuse), so every cell is the blind one\n");
    return 77;
  }
  const char *filter = argc > 1 ? argv[1] : nullptr;
  std::vector<Cell> cells;
  for (bool root : {true, false})
    for (bool blocked : {false, true})
      for (Ucm other : {Ucm::kNone, Ucm::kFirst, Ucm::kAfter, Ucm::kForeign})
        for (int threads : {1, 4})
          cells.push_back({root, blocked, other, threads});
  cells.push_back({false, true, Ucm::kForeign, 1, 1});
  cells.push_back({true, false, Ucm::kNone, 1, 2});
  cells.push_back({false, true, Ucm::kFirst, 1, 3});
  cells.push_back({false, true, Ucm::kAfter, 1, 3});
  int failed = 0, run = 0, skipped = 0;
  for (const Cell &cell : cells) {
    if (filter && cell.Name().find(filter) == std::string::npos) continue;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      int rc = Child(cell);
      fflush(stdout);
      _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ++run;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
      ++skipped;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ++failed;
      if (!WIFEXITED(status))
        printf("FAIL %s: child died (signal %d)\n", cell.Name().c_str(),
               WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
  }
  printf("%d cells, %d failed, %d skipped\n", run, failed, skipped);
  return failed ? 1 : 0;
}

// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/fork_test.cc - fork() at any moment of the parent gives the
// child a fresh notifier and caches that never hand out the parent's
// registrations (issue 13 item 1). Run once per event source (ctest sets
// REGCACHE_MONITOR: patch, uffd, none); a case whose source is not active in
// this build (e.g. patch under TSan) is skipped.
//
// Every child runs under alarm(): a hang is a SIGALRM death, reported as such.
// Staleness is judged by tests/common/stale_oracle.h. In a child, an oracle
// made by the parent reads the PARENT's /proc/<pid>/pagemap (the file was
// opened as /proc/self in the parent), so children force it into nonce mode
// and make their own oracle for new caches.
//
// Negative controls: internal::g_atfork_off_for_testing turns the fork
// handlers off; the same children then hang (a range in flight in the parent
// never ends in the child) or get stale or foreign registrations.
#include <gtest/gtest.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "notifier/address_space.h"
#include "tests/common/fork_child.h"
#include "tests/common/source_cache.h"
#include "tests/common/stale_oracle.h"

namespace regcache::notifier {
namespace {

using namespace std::chrono_literals;
using regcache::testing::StaleOracle;

constexpr size_t kLen = 64 * 1024;

// Child exit codes.
enum ChildRc : int {
  kOk = 0,
  kStale = 2,
  kFailed = 3,        // an API call failed
  kForeignDereg = 4,  // the child deregistered a registration of the parent
};

constexpr auto Explicit = regcache::testing::ExplicitSourceActive;

constexpr auto Unmap = regcache::testing::UnmapOnActiveSource;

char *MapFilled(int byte, void *at = nullptr) {
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (at != nullptr ? MAP_FIXED : 0);
  void *p = mmap(at, kLen, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  memset(p, byte, kLen);
  return static_cast<char *>(p);
}

using regcache::testing::ChildOk;
using regcache::testing::Describe;
using regcache::testing::RunChild;

// What every child does with a brand-new cache: register, unmap, map anew at
// the same address, register again: completes, never stale. Also gets
// `also` (memory the parent had a range in flight on) when given.
int FreshCacheCycle(void *also = nullptr) {
  StaleOracle o;  // the child's own: its pagemap is this process's
  if (o.driver() == nullptr) return kFailed;
  regcache_t *c = nullptr;
  if (regcache_create(o.driver(), nullptr, &c) != 0) return kFailed;
  int rc = kOk;
  char *y = MapFilled(1);
  regcache_region_t *r = nullptr;
  if (y == nullptr || regcache_get(c, y, kLen, 0, &r) != 0) {
    rc = kFailed;
  } else {
    if (o.IsStale(r)) rc = kStale;
    regcache_put(c, r);
    if (Unmap(y, kLen) != 0 || MapFilled(2, y) != y) rc = kFailed;
    if (rc == kOk && regcache_get(c, y, kLen, 0, &r) == 0) {
      if (o.IsStale(r)) rc = kStale;
      regcache_put(c, r);
    } else if (rc == kOk) {
      rc = kFailed;
    }
  }
  if (rc == kOk && also != nullptr) {
    if (regcache_get(c, also, kLen, 0, &r) != 0) {
      rc = kFailed;
    } else {
      if (o.IsStale(r)) rc = kStale;
      regcache_put(c, r);
    }
  }
  regcache_destroy(c);
  if (y != nullptr) munmap(y, kLen);
  return rc;
}

// The inherited cache `inh` (on the parent's oracle `po`) in the child: the
// child writes `b` (its own copy now), a get must register anew (not stale),
// and the child never deregisters the parent's registrations: after
// destroying the cache, deregistrations made here == registrations made here.
int InheritedCacheCycle(StaleOracle *po, regcache_t *inh, char *b,
                        regcache_region_t *held) {
  po->ForceNonceMode();
  const uint64_t r0 = po->registrations(), d0 = po->deregistrations();
  int rc = kOk;
  if (held != nullptr) {
    regcache_put(inh, held);  // the parent's region: no driver call
    if (po->deregistrations() != d0) rc = kForeignDereg;
  }
  memset(b, 7, kLen);
  regcache_region_t *r = nullptr;
  if (regcache_get(inh, b, kLen, 0, &r) != 0) return kFailed;
  if (po->IsStale(r)) rc = kStale;
  regcache_put(inh, r);
  regcache_destroy(inh);
  if (rc == kOk && po->deregistrations() - d0 != po->registrations() - r0)
    rc = kForeignDereg;
  return rc;
}

// uffd in a forked child sees unmaps only once the uffd source re-creates
// its context and watches the child's own mappings after fork (issue 12 item
// 3, uffd.cc/procmap.cc). Until then the cases whose children unmap memory
// skip under uffd, with this reason; the probe is the plain case (no other
// thread, nothing in flight).
bool ForkedChildSeesUnmaps() {
  static const bool ok = [] {
    int st = RunChild([]() -> int { return FreshCacheCycle(); }, 10);
    return ChildOk(st);
  }();
  return ok;
}
#define SKIP_IF_CHILD_BLIND()                                               \
  if (std::string(regcache_notifier_source()) == "uffd" &&                  \
      !ForkedChildSeesUnmaps())                                             \
  GTEST_SKIP() << "uffd is blind in a forked child even with no fork race " \
                  "(issue 12 item 3: the uffd source's re-install after fork)"

class Fork : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(oracle_.driver(), nullptr);
    const std::string skip =
        regcache::testing::CreateOnRequestedSource(oracle_.driver(), &inh_);
    if (!skip.empty()) GTEST_SKIP() << skip;
    b_ = MapFilled(3);
    ASSERT_NE(b_, nullptr);
    regcache_region_t *r = nullptr;
    ASSERT_EQ(regcache_get(inh_, b_, kLen, 0, &r), 0);  // cached, unused
    regcache_put(inh_, r);
  }
  void TearDown() override {
    internal::g_atfork_off_for_testing = false;
    if (inh_ != nullptr) regcache_destroy(inh_);
    if (b_ != nullptr) munmap(b_, kLen);
  }

  StaleOracle oracle_;
  regcache_t *inh_ = nullptr;
  char *b_ = nullptr;
};

// Another thread is between regcache_notify_unmap_start(X) and _end when
// fork() runs. (Before the fix the child's first get waited forever.)
int ForkWhileBracketOpen(Fork *, regcache_t *inh, StaleOracle *po, char *b,
                         unsigned timeout_s) {
  char *x = MapFilled(4);
  std::atomic<int> stage{0};
  std::thread a([&] {
    regcache_notify_unmap_start(x, kLen);
    stage = 1;
    while (stage.load() != 2) std::this_thread::sleep_for(1ms);
    regcache_notify_unmap_end(x, kLen);
  });
  while (stage.load() != 1) std::this_thread::sleep_for(1ms);
  int status = RunChild(
      [&]() -> int {
        int rc = FreshCacheCycle(x);  // x overlaps the parent's open bracket
        if (rc != kOk) return rc;
        if (regcache_notifier_quiesce() != 0) return kFailed;
        if (regcache_notifier_resume() != 0) return kFailed;
        return InheritedCacheCycle(po, inh, b, nullptr);
      },
      timeout_s);
  stage = 2;
  a.join();
  munmap(x, kLen);
  return status;
}

TEST_F(Fork, WhileAnotherThreadIsInsideABracket) {
  SKIP_IF_CHILD_BLIND();
  int st = ForkWhileBracketOpen(this, inh_, &oracle_, b_, 10);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
}

TEST_F(Fork, NegativeControlWhileInsideABracketHangsWithoutHandlers) {
  SKIP_IF_CHILD_BLIND();
  internal::g_atfork_off_for_testing = true;
  int st = ForkWhileBracketOpen(this, inh_, &oracle_, b_, 3);
  EXPECT_FALSE(ChildOk(st)) << "the child completed without the fork handlers: "
                               "this test cannot see the defect";
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) << Describe(st);
}

// Another thread is inside a callback of an unmap of Z when fork() runs:
// patch: inside the hooked munmap; uffd: on the monitor thread, inside its
// hold; none: inside regcache_notify_unmapped. The child unregisters the very
// subscription that was running (it must not wait for the parent's callback)
// and runs a fresh cache cycle on Z's address range.
struct Blocker {
  std::atomic<int> in{0};
  std::atomic<bool> go{false};
  static void Start(void *arg, const void *, size_t) {
    auto *b = static_cast<Blocker *>(arg);
    b->in = 1;
    while (!b->go.load()) usleep(1000);
  }
};
const regcache_notifier_ops_t kBlockerOps = {&Blocker::Start, nullptr, nullptr};

TEST_F(Fork, WhileAnotherThreadIsInsideAnUnmapCallback) {
  SKIP_IF_CHILD_BLIND();
  char *z = MapFilled(5);
  ASSERT_NE(z, nullptr);
  Blocker bl;
  regcache_notifier_t *sub = nullptr;
  ASSERT_EQ(regcache_notifier_register_range(&kBlockerOps, &bl, z, kLen, &sub),
            0);
  std::thread a([&] {
    if (Explicit())
      regcache_notify_unmapped(z, kLen);
    else
      munmap(z, kLen);
  });
  for (int i = 0; i < 5000 && bl.in.load() == 0; ++i)
    std::this_thread::sleep_for(1ms);
  ASSERT_EQ(bl.in.load(), 1) << "the unmap's callback never ran";
  int st = RunChild(
      [&]() -> int {
        if (regcache_notifier_unregister(sub) != 0) return kFailed;
        int rc = FreshCacheCycle(z);  // the parent's range in flight
        if (rc != kOk) return rc;
        return InheritedCacheCycle(&oracle_, inh_, b_, nullptr);
      },
      10);
  bl.go = true;
  a.join();
  EXPECT_EQ(regcache_notifier_unregister(sub), 0);
  if (Explicit()) munmap(z, kLen);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
}

// Another thread holds a quiesce when fork() runs: the child is not quiesced
// (nobody there could resume it), so its unmaps proceed.
TEST_F(Fork, WhileAnotherThreadHoldsAQuiesce) {
  SKIP_IF_CHILD_BLIND();
  std::atomic<int> stage{0};
  std::thread q([&] {
    if (regcache_notifier_quiesce() != 0) return;
    stage = 1;
    while (stage.load() != 2) std::this_thread::sleep_for(1ms);
    regcache_notifier_resume();
  });
  while (stage.load() != 1) std::this_thread::sleep_for(1ms);
  int st = RunChild([]() -> int { return FreshCacheCycle(); }, 10);
  stage = 2;
  q.join();
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
}

// The forking thread holds a region of an inherited cache: its put in the
// child calls no driver, a get registers anew, destroy deregisters only the
// child's own.
TEST_F(Fork, InheritedCacheForgetsTheParentsRegistrations) {
  regcache_region_t *held = nullptr;
  ASSERT_EQ(regcache_get(inh_, b_, kLen, 0, &held), 0);
  int st = RunChild(
      [&]() -> int { return InheritedCacheCycle(&oracle_, inh_, b_, held); },
      10);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
  EXPECT_FALSE(oracle_.IsStale(held));  // the parent's region is untouched
  regcache_put(inh_, held);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(inh_, b_, kLen, 0, &r), 0);
  EXPECT_FALSE(oracle_.IsStale(r));
  regcache_put(inh_, r);
}

TEST_F(Fork, NegativeControlInheritedCacheIsStaleWithoutHandlers) {
  internal::g_atfork_off_for_testing = true;
  int st = RunChild(
      [&]() -> int { return InheritedCacheCycle(&oracle_, inh_, b_, nullptr); },
      10);
  EXPECT_TRUE(WIFEXITED(st) &&
              (WEXITSTATUS(st) == kStale || WEXITSTATUS(st) == kForeignDereg))
      << "without the handlers the child's inherited cache should hand out "
         "the parent's registration; got "
      << Describe(st);
}

// Threads free and register memory while the main thread forks 300 children;
// each child makes a cache, registers, unmaps, re-registers: 0 hangs, 0 stale.
TEST_F(Fork, Storm) {
  SKIP_IF_CHILD_BLIND();
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  ts.emplace_back([&] {  // frees: glibc munmaps blocks above the mmap threshold
    while (!stop.load()) {
      void *p = malloc(512 * 1024);
      memset(p, 1, 4096);
      __asm__ volatile("" : : "r"(p) : "memory");  // not elided
      free(p);
    }
  });
  ts.emplace_back([&] {  // registers, unmaps, registers
    regcache_t *c = nullptr;
    if (regcache_create(oracle_.driver(), nullptr, &c) != 0) return;
    while (!stop.load()) {
      char *p = MapFilled(6);
      if (p == nullptr) break;
      regcache_region_t *r = nullptr;
      if (regcache_get(c, p, kLen, 0, &r) == 0) regcache_put(c, r);
      Unmap(p, kLen);
    }
    regcache_destroy(c);
  });
  const char *n_env = getenv("REGCACHE_TEST_FORK_STORM");
  const int n = n_env != nullptr ? atoi(n_env) : 300;
  int hung = 0, stale = 0, other = 0;
  std::string first_bad;
  for (int i = 0; i < n; ++i) {
    int st = RunChild([]() -> int { return FreshCacheCycle(); }, 10);
    if (ChildOk(st)) continue;
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) {
      ++hung;
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == kStale) {
      ++stale;
    } else {
      ++other;
    }
    if (first_bad.empty()) first_bad = Describe(st);
  }
  stop = true;
  for (auto &t : ts) t.join();
  EXPECT_EQ(hung, 0) << first_bad;
  EXPECT_EQ(stale, 0) << first_bad;
  EXPECT_EQ(other, 0) << first_bad;
}

}  // namespace
}  // namespace regcache::notifier

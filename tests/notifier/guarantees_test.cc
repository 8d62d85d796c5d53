// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/guarantees_test.cc - one test (or a few) per guarantee 1-7 of
// <regcache/notifier.h>, with the explicit source so that every event is ours.
// Threads where the guarantee is about races; these run under TSan in CI.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "tests/notifier/explicit_source_fixture.h"
#include "tests/notifier/test_util.h"

// Counts operator new on threads that enabled counting (guarantee 7). Sanitizer
// runtimes define operator new themselves, so the count is only available in
// plain builds.
#if !defined(REGCACHE_SANITIZE_ADDRESS) && !defined(REGCACHE_SANITIZE_THREAD)
#define NOTIFIER_COUNT_NEW 1
// g++ 12 at -O2 sees the replaced operator new's malloc() meet free() in the
// replaced operator delete after inlining and warns (a false positive: both are
// this file's own replacements).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
thread_local bool t_count_new = false;
thread_local int t_news = 0;
}  // namespace
void *operator new(size_t n) {
  if (t_count_new) ++t_news;
  void *p = malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete(void *p) noexcept { free(p); }
void operator delete(void *p, size_t) noexcept { free(p); }
#else
namespace {
thread_local bool t_count_new = false;
thread_local int t_news = 0;
}  // namespace
#endif

namespace regcache::notifier {
namespace {

using testing::PageSize;
using testing::Recorder;
using namespace std::chrono_literals;

using Guarantees = testing::ExplicitSourceTest;

constexpr uintptr_t kA = 0x100000, kB = 0x200000;

// ---------------------------------------------------------------- 1
TEST_F(Guarantees, G1RegisterMayFailCleanly) {
  Recorder r;
  Subscription *s = reinterpret_cast<Subscription *>(0x1);
  EXPECT_EQ(Register(nullptr, &r, 0, 0, &s), -EINVAL);
  EXPECT_EQ(Register(&Recorder::kOps, &r, 0, 0, nullptr), -EINVAL);
  EXPECT_EQ(Register(&Recorder::kOps, &r, UINTPTR_MAX - 10, 100, &s), -EINVAL);
  // From inside a callback.
  Recorder outer;
  outer.on_start = [](Recorder *self, const void *, size_t) {
    Subscription *x = nullptr;
    Recorder *inner = static_cast<Recorder *>(self->user);
    self->errors.fetch_add(
        Register(&Recorder::kOps, inner, 0, 0, &x) == -EDEADLK ? 0 : 1);
  };
  outer.user = &r;
  Subscription *so = nullptr;
  ASSERT_EQ(Register(&Recorder::kOps, &outer, 0, 0, &so), 0);
  NotifyUnmapped(kA, 4096);
  EXPECT_EQ(outer.errors.load(), 0u);
  ASSERT_EQ(Unregister(so), 0);
  // During/after teardown.
  Teardown();
  EXPECT_EQ(Register(&Recorder::kOps, &r, 0, 0, &s), -ESHUTDOWN);
  EXPECT_EQ(s, reinterpret_cast<Subscription *>(0x1))
      << "failed register wrote *out";
  // No trace: nothing registered above gets any event or a release.
  ResetForTesting();
  NotifyUnmapped(kA, 4096);
  EXPECT_EQ(r.starts.load() + r.ends.load() + r.releases.load(), 0u);
}

TEST_F(Guarantees, G1UnavailableSourceFailsCleanly) {
  ResetForTesting();
  Options o;
  o.source = Source::kPatch;
  ASSERT_EQ(Configure(o), 0);
  Recorder r;
  Subscription *s = nullptr;
  int rc = Register(&Recorder::kOps, &r, 0, 0, &s);
  if (rc == 0) {
    // Installed here: then a different choice must be refused, not silently
    // switched.
    o.source = Source::kUffd;
    EXPECT_EQ(Configure(o), -EBUSY);
    EXPECT_EQ(Unregister(s), 0);
    GTEST_SKIP()
        << "patch source is installable here; failure path not reachable";
  }
  EXPECT_LT(rc, 0);
  EXPECT_EQ(s, nullptr);
  EXPECT_EQ(r.releases.load(), 0u);
}

// ---------------------------------------------------------------- 2
TEST_F(Guarantees, G2RegisterSerializedAgainstRangesInFlight) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> dispatchers;
  for (int t = 0; t < 2; ++t) {
    dispatchers.emplace_back([&stop] {
      while (!stop.load()) {
        InvalidateRangeStart(kA, kA + 4096);
        std::this_thread::yield();
        InvalidateRangeEnd(kA, kA + 4096);
        std::this_thread::sleep_for(
            1us);  // leave the CPU to the registering thread
      }
    });
  }
  uint64_t errors = 0, events = 0;
  for (int i = 0; i < 400 || (events == 0 && i < 100000); ++i) {
    Recorder r;
    Subscription *s = nullptr;
    ASSERT_EQ(
        Register(&Recorder::kOps, &r, i % 2 ? kA : 0, i % 2 ? 4096 : 0, &s), 0);
    if (i % 4 == 0) std::this_thread::sleep_for(20us);
    std::this_thread::yield();
    ASSERT_EQ(Unregister(s), 0);
    errors += r.errors.load();
    events += r.ends.load();
    // Ends never exceed starts; an end without its start is an error in the
    // recorder.
    EXPECT_LE(r.ends.load(), r.starts.load());
  }
  stop = true;
  for (auto &t : dispatchers) t.join();
  EXPECT_EQ(errors, 0u);
  EXPECT_GT(events, 0u) << "the race was not exercised";
}

TEST_F(Guarantees, G2ReadBeginWaitsForRangeThatPredatesTheSubscription) {
  std::atomic<bool> release_range{false}, range_ended{false}, in_flight{false};
  std::thread a([&] {
    InvalidateRangeStart(kA, kA + 4096);
    in_flight = true;
    while (!release_range.load()) std::this_thread::sleep_for(1ms);
    range_ended = true;
    InvalidateRangeEnd(kA, kA + 4096);
  });
  while (!in_flight.load()) std::this_thread::sleep_for(1ms);
  Recorder r;
  Subscription *s = nullptr;
  ASSERT_EQ(Register(&Recorder::kOps, &r, kA, 4096, &s), 0);
  std::atomic<bool> began{false};
  std::thread c([&] {
    ReadBegin(s);
    began = true;
    EXPECT_TRUE(range_ended.load())
        << "ReadBegin returned while the range was in flight";
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(began.load());
  release_range = true;
  a.join();
  c.join();
  EXPECT_EQ(r.ends.load(), 0u) << "end delivered without its start";
  EXPECT_EQ(Unregister(s), 0);
}

// ---------------------------------------------------------------- 3
TEST_F(Guarantees, G3UnregisterAnyTimeNoCallbackAfterReturn) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> dispatchers;
  for (int t = 0; t < 2; ++t) {
    dispatchers.emplace_back([&stop, t] {
      while (!stop.load()) {
        NotifyUnmapped(t ? kA : kB, 4096);
        std::this_thread::yield();
      }
    });
  }
  uint64_t errors = 0, started = 0;
  for (int i = 0; i < 300; ++i) {
    Recorder r;
    r.on_start = [](Recorder *, const void *, size_t) {
      std::this_thread::yield();
    };
    Subscription *s = nullptr;
    ASSERT_EQ(
        Register(&Recorder::kOps, &r, i % 2 ? kA : 0, i % 2 ? 4096 : 0, &s), 0);
    while (r.starts.load() == 0 && i % 3 == 0) std::this_thread::yield();
    ASSERT_EQ(Unregister(s), 0);
    r.no_more_callbacks = true;  // any callback from now on counts as an error
    EXPECT_EQ(r.releases.load(), 1u);
    std::this_thread::sleep_for(50us);
    errors += r.errors.load();
    started += r.starts.load();
  }
  stop = true;
  for (auto &t : dispatchers) t.join();
  EXPECT_EQ(errors, 0u);
  EXPECT_GT(started, 0u);
}

TEST_F(Guarantees, G3UnregisterFromInsideOwnAndOtherCallback) {
  struct Ctx {
    Subscription *self = nullptr;
    Subscription *other = nullptr;
  } ctx;
  Recorder a, b;
  a.user = &ctx;
  a.on_start = [](Recorder *r, const void *, size_t) {
    auto *c = static_cast<Ctx *>(r->user);
    if (c->self != nullptr) {
      EXPECT_EQ(Unregister(c->self), 0);
      EXPECT_EQ(Unregister(c->other), 0);
      c->self = c->other = nullptr;
    }
  };
  ASSERT_EQ(Register(&Recorder::kOps, &a, 0, 0, &ctx.self), 0);
  ASSERT_EQ(Register(&Recorder::kOps, &b, 0, 0, &ctx.other), 0);
  NotifyUnmapped(kA, 4096);
  EXPECT_EQ(a.starts.load(), 1u);
  EXPECT_EQ(a.ends.load(), 0u) << "callback after unregister";
  EXPECT_EQ(a.releases.load(), 1u);
  EXPECT_EQ(b.releases.load(), 1u);
  NotifyUnmapped(kA, 4096);
  EXPECT_EQ(a.starts.load(), 1u);
  EXPECT_LE(b.starts.load(), 1u);
  EXPECT_EQ(a.errors.load() + b.errors.load(), 0u);
}

// ---------------------------------------------------------------- 4
TEST_F(Guarantees, G4ReleaseExactlyOnceTeardownVsUnregister) {
  for (int i = 0; i < 200; ++i) {
    ResetForTesting();
    Recorder r[4];
    Subscription *s[4];
    for (int k = 0; k < 4; ++k) {
      ASSERT_EQ(Register(&Recorder::kOps, &r[k], k % 2 ? kA : 0,
                         k % 2 ? 4096 : 0, &s[k]),
                0);
    }
    std::thread d([] {
      for (int j = 0; j < 20; ++j) NotifyUnmapped(kA, 4096);
    });
    std::thread t([] { Teardown(); });
    for (int k = 0; k < 4; ++k) ASSERT_EQ(Unregister(s[k]), 0);
    t.join();
    d.join();
    for (int k = 0; k < 4; ++k) {
      EXPECT_EQ(r[k].releases.load(), 1u);
      EXPECT_EQ(r[k].errors.load(), 0u) << "callback after release";
    }
  }
}

TEST_F(Guarantees, G4ProcessExitReleasesAndNeverHangs) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    static int wfd = fds[1];
    static Recorder released, stuck;
    released.on_release = [](Recorder *) {
      if (write(wfd, "R", 1) != 1) _exit(3);
    };
    // A callback blocked forever on another thread must not make exit hang.
    stuck.on_start = [](Recorder *, const void *, size_t) {
      for (;;) pause();
    };
    Subscription *a, *b;
    if (Register(&Recorder::kOps, &released, 0, 0, &a) != 0) _exit(4);
    if (Register(&Recorder::kOps, &stuck, kB, 4096, &b) != 0) _exit(5);
    std::thread([] { NotifyUnmapped(kB, 4096); }).detach();
    while (stuck.starts.load() == 0) std::this_thread::sleep_for(1ms);
    exit(0);  // the notifier's destructor runs Teardown
  }
  close(fds[1]);
  int status = 0;
  pid_t w = 0;
  for (int i = 0; i < 500 && w == 0; ++i) {
    w = waitpid(pid, &status, WNOHANG);
    if (w == 0) std::this_thread::sleep_for(10ms);
  }
  if (w == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "process exit hung";
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  char c = 0;
  EXPECT_EQ(read(fds[0], &c, 1), 1);
  EXPECT_EQ(c, 'R') << "release did not run at exit";
  close(fds[0]);
}

// ---------------------------------------------------------------- 5
TEST_F(Guarantees, G5QuiesceWaitsForRangesAndHoldsNewOnes) {
  EXPECT_EQ(Resume(), -EINVAL);
  Recorder r;
  Subscription *s = nullptr;
  ASSERT_EQ(Register(&Recorder::kOps, &r, 0, 0, &s), 0);
  std::atomic<bool> go{false}, a_done{false};
  std::thread a([&] {
    InvalidateRangeStart(kA, kA + 4096);
    while (!go.load()) std::this_thread::sleep_for(1ms);
    a_done = true;
    InvalidateRangeEnd(kA, kA + 4096);
  });
  while (r.starts.load() == 0) std::this_thread::yield();
  std::atomic<bool> quiesced{false};
  std::thread q([&] {
    EXPECT_EQ(Quiesce(), 0);
    EXPECT_TRUE(a_done.load()) << "quiesce returned with a range in flight";
    quiesced = true;
  });
  std::this_thread::sleep_for(30ms);
  EXPECT_FALSE(quiesced.load());
  go = true;
  a.join();
  q.join();
  // Held off until resume.
  std::atomic<bool> c_done{false};
  std::thread c([&] {
    NotifyUnmapped(kB, 4096);
    c_done = true;
  });
  std::this_thread::sleep_for(30ms);
  EXPECT_FALSE(c_done.load()) << "a new range ran while quiesced";
  EXPECT_EQ(r.starts.load(), 1u);
  EXPECT_EQ(Resume(), 0);
  c.join();
  EXPECT_EQ(r.starts.load(), 2u);
  EXPECT_EQ(r.errors.load(), 0u);
  // Not from inside a callback.
  r.on_start = [](Recorder *self, const void *, size_t) {
    if (Quiesce() != -EDEADLK) self->errors.fetch_add(1);
  };
  NotifyUnmapped(kA, 4096);
  EXPECT_EQ(r.errors.load(), 0u);
  EXPECT_EQ(Unregister(s), 0);
}

// ---------------------------------------------------------------- 6
TEST_F(Guarantees, G6SequenceNumbers) {
  Recorder r;
  Subscription *s = nullptr;
  ASSERT_EQ(Register(&Recorder::kOps, &r, kA, 4096, &s), 0);
  uint64_t seq = ReadBegin(s);
  EXPECT_FALSE(ReadRetry(s, seq));
  NotifyUnmapped(kA + 4096, 4096);  // adjacent, not overlapping
  EXPECT_FALSE(ReadRetry(s, seq));
  NotifyUnmapped(kA + 100, 1);
  EXPECT_TRUE(ReadRetry(s, seq));
  seq = ReadBegin(s);
  EXPECT_FALSE(ReadRetry(s, seq));
  // ReadBegin waits while an overlapping invalidation is in flight.
  std::atomic<bool> go{false}, ended{false};
  std::thread a([&] {
    InvalidateRangeStart(kA, kA + 10);
    while (!go.load()) std::this_thread::sleep_for(1ms);
    ended = true;
    InvalidateRangeEnd(kA, kA + 10);
  });
  while (r.starts.load() < 2) std::this_thread::yield();
  EXPECT_TRUE(ReadRetry(s, seq));
  std::thread b([&] {
    ReadBegin(s);
    EXPECT_TRUE(ended.load());
  });
  std::this_thread::sleep_for(30ms);
  go = true;
  a.join();
  b.join();
  EXPECT_EQ(Unregister(s), 0);
}

// The cache's protocol, under a stream of invalidations: never a stale insert.
TEST_F(Guarantees, G6ValidatedInsertNeverStale) {
  constexpr int kSlots = 4;
  std::mutex mu;                      // the "cache lock"
  std::atomic<uint64_t> gen[kSlots];  // the "memory": changes inside start/end
  std::map<int, uint64_t> cache;      // slot -> gen it was registered at
  for (auto &g : gen) g = 0;
  struct Ctx {
    std::mutex *mu;
    std::map<int, uint64_t> *cache;
  } ctx{&mu, &cache};
  static const regcache_notifier_ops_t kOps = {
      [](void *arg, const void *addr, size_t) {
        auto *c = static_cast<Ctx *>(arg);
        std::lock_guard<std::mutex> g(*c->mu);
        c->cache->erase(
            static_cast<int>((reinterpret_cast<uintptr_t>(addr) - kA) / 4096));
      },
      nullptr, nullptr};
  Subscription *whole = nullptr;
  ASSERT_EQ(Register(&kOps, &ctx, 0, 0, &whole), 0);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> stale{0}, inserts{0};
  std::thread unmapper([&] {
    for (int i = 0; !stop.load(); ++i) {
      int k = i % kSlots;
      uintptr_t a = kA + 4096 * k;
      InvalidateRangeStart(a, a + 4096);
      gen[k].fetch_add(1);
      InvalidateRangeEnd(a, a + 4096);
      std::lock_guard<std::mutex> g(mu);
      for (auto &[slot, g0] : cache) {
        if (g0 != gen[slot].load()) stale.fetch_add(1);
      }
    }
  });
  std::vector<std::thread> registrars;
  for (int t = 0; t < 2; ++t) {
    registrars.emplace_back([&, t] {
      for (int i = 0; i < 3000; ++i) {
        int k = (i + t) % kSlots;
        Subscription *s = nullptr;
        static const regcache_notifier_ops_t kNoOps = {nullptr, nullptr,
                                                       nullptr};
        ASSERT_EQ(Register(&kNoOps, nullptr, kA + 4096 * k, 4096, &s), 0);
        uint64_t seq = ReadBegin(s);
        uint64_t pinned = gen[k].load();  // "pin" outside the lock
        {
          std::lock_guard<std::mutex> g(mu);
          if (!ReadRetry(s, seq)) {
            cache[k] = pinned;
            inserts.fetch_add(1);
          }
        }
        Unregister(s);
      }
    });
  }
  for (auto &t : registrars) t.join();
  stop = true;
  unmapper.join();
  EXPECT_EQ(stale.load(), 0u);
  EXPECT_GT(inserts.load(), 0u);
  EXPECT_EQ(Unregister(whole), 0);
}

// ---------------------------------------------------------------- 7
TEST_F(Guarantees, G7DispatchAllocatesNothing) {
#ifndef NOTIFIER_COUNT_NEW
  GTEST_SKIP()
      << "sanitizer runtimes own operator new: cannot count allocations";
#endif
  Recorder r[3];
  Subscription *s[3];
  ASSERT_EQ(Register(&Recorder::kOps, &r[0], 0, 0, &s[0]), 0);
  ASSERT_EQ(Register(&Recorder::kOps, &r[1], kA, 4096, &s[1]), 0);
  ASSERT_EQ(Register(&Recorder::kOps, &r[2], kB, 4096, &s[2]), 0);
  t_count_new = true;
  t_news = 0;
  for (int i = 0; i < 100; ++i) NotifyUnmapped(kA, 8192);
  t_count_new = false;
  EXPECT_EQ(t_news, 0);
  EXPECT_EQ(r[1].starts.load(), 100u);
  EXPECT_EQ(r[2].starts.load(), 0u);
  for (auto *x : s) EXPECT_EQ(Unregister(x), 0);
}

TEST_F(Guarantees,
       G7UnregisterUnderSubscriberLockDoesNotWaitForUnrelatedRanges) {
  // Thread T holds the cache lock and unregisters its (idle) interval
  // subscription, while an unrelated range's whole-space callback waits for
  // that lock. Must not deadlock.
  static std::mutex cache_lock;
  static const regcache_notifier_ops_t kLocking = {
      [](void *, const void *, size_t) {
        std::lock_guard<std::mutex> g(cache_lock);
      },
      nullptr, nullptr};
  Subscription *whole = nullptr, *iv = nullptr;
  ASSERT_EQ(Register(&kLocking, nullptr, 0, 0, &whole), 0);
  static const regcache_notifier_ops_t kNoOps = {nullptr, nullptr, nullptr};
  ASSERT_EQ(Register(&kNoOps, nullptr, kA, 4096, &iv), 0);
  std::atomic<bool> done{false};
  std::thread t([&] {
    std::lock_guard<std::mutex> g(cache_lock);
    std::thread u([] {
      NotifyUnmapped(kB, 4096);
    });  // blocks in the callback on the lock
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(Unregister(iv), 0);
    done = true;
    u.detach();
  });
  for (int i = 0; i < 300 && !done.load(); ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(done.load())
      << "Unregister waited for an unrelated range: deadlock";
  t.join();
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(Unregister(whole), 0);
}

TEST_F(Guarantees, G7CallbackThatUnmapsNests) {
  // The callback itself unmaps (nested dispatch on the same thread), once per
  // event.
  Recorder r;
  r.on_start = [](Recorder *self, const void *addr, size_t) {
    if (reinterpret_cast<uintptr_t>(addr) == kA) {
      void *p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      munmap(p, 4096);           // caught if the patch source is active
      NotifyUnmapped(kB, 4096);  // explicit nested event, always
      self->user = reinterpret_cast<void *>(1);
    }
  };
  Subscription *s = nullptr;
  ASSERT_EQ(Register(&Recorder::kOps, &r, 0, 0, &s), 0);
  NotifyUnmapped(kA, 4096);
  EXPECT_EQ(r.user, reinterpret_cast<void *>(1));
  EXPECT_GE(r.starts.load(), 2u);
  EXPECT_EQ(r.starts.load(), r.ends.load());
  EXPECT_EQ(r.errors.load(), 0u);
  EXPECT_EQ(Unregister(s), 0);
}

}  // namespace
}  // namespace regcache::notifier

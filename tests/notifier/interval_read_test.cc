// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/interval_read_test.cc - ReadBeginInterval / ReadRetryInterval
// (notifier/address_space.h): the subscription-free interval check a cache's
// miss uses with its whole-space subscription (issue 14). Explicit source, so
// every range is the test's own.
//
// Negative control: internal::g_interval_log_off_for_testing stops ranges from
// being logged; the overlap and race cases must then see the missed ranges.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "notifier/address_space.h"
#include "notifier/internal.h"

namespace regcache::notifier {
namespace {

using namespace std::chrono_literals;

constexpr uintptr_t kX = 0x10000000;  // the interval the "cache" registers
constexpr uintptr_t kXLen = 0x10000;
constexpr uintptr_t kY = 0x20000000;  // unrelated memory

class IntervalRead : public ::testing::Test {
 protected:
  void SetUp() override {
    alarm(120);  // never hang: every case is bounded well below this
    ResetForTesting();
    Options o;
    o.source = Source::kNone;
    ASSERT_EQ(Configure(o), 0);
    ASSERT_EQ(EnsureInstalled(), 0);
  }
  void TearDown() override {
    internal::g_interval_log_off_for_testing.store(false);
    internal::g_interval_wait_off_for_testing.store(false);
    ResetForTesting();
    alarm(0);
  }
};

TEST_F(IntervalRead, BadInput) {
  uint64_t t;
  EXPECT_EQ(ReadBeginInterval(kX, kX, &t), -EINVAL);      // empty
  EXPECT_EQ(ReadBeginInterval(kX + 1, kX, &t), -EINVAL);  // reversed
  EXPECT_EQ(ReadBeginInterval(kX, kX + kXLen, nullptr), -EINVAL);
  // Inside a range of this thread: it would wait for itself.
  ASSERT_EQ(NotifyStart(kX, kXLen), 0);
  EXPECT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), -EDEADLK);
  ASSERT_EQ(NotifyEnd(kX, kXLen), 0);
}

TEST_F(IntervalRead, NothingHappenedNoRetry) {
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
  EXPECT_FALSE(ReadRetryInterval(kX, kX + kXLen, t));
  ReadEndInterval();
}

// A range overlapping the interval that begins (and here also ends) between
// begin and retry makes retry true; partial overlaps at either edge count.
TEST_F(IntervalRead, OverlappingRangeSinceBeginRetries) {
  const uintptr_t cases[][2] = {{kX, kXLen},
                                {kX - 4096, 8192},
                                {kX + kXLen - 1, 1},
                                {0, UINTPTR_MAX / 2}};
  for (auto &c : cases) {
    uint64_t t;
    ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
    ASSERT_EQ(NotifyUnmapped(c[0], c[1]), 0);
    EXPECT_TRUE(ReadRetryInterval(kX, kX + kXLen, t))
        << "range " << std::hex << c[0] << " len " << c[1];
    ReadEndInterval();
  }
}

TEST_F(IntervalRead, NegativeControlWithoutLogMissesOverlap) {
  internal::g_interval_log_off_for_testing.store(true);
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
  ASSERT_EQ(NotifyUnmapped(kX, kXLen), 0);
  EXPECT_FALSE(ReadRetryInterval(kX, kX + kXLen, t))
      << "the switch must make the check blind (else this control shows "
         "nothing)";
  ReadEndInterval();
}

// Ranges that do not overlap (other memory, or touching the interval's edges
// from outside at page granularity) do not make retry true.
TEST_F(IntervalRead, UnrelatedRangesDoNotRetry) {
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
  for (int i = 0; i < 100; ++i)
    ASSERT_EQ(NotifyUnmapped(kY, 4096 * (i + 1)), 0);
  ASSERT_EQ(NotifyUnmapped(kX - 4096, 4096), 0);   // the page before
  ASSERT_EQ(NotifyUnmapped(kX + kXLen, 4096), 0);  // the page after
  EXPECT_FALSE(ReadRetryInterval(kX, kX + kXLen, t));
  ReadEndInterval();
}

// Ranges log only while a read is in flight: after ReadEndInterval a range
// costs no log entry (the munmap path pays one load), and a failed begin
// leaves nothing counted.
TEST_F(IntervalRead, LogsOnlyWhileAReadIsInFlight) {
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
  ReadEndInterval();
  EXPECT_EQ(ReadBeginInterval(kX, kX, &t), -EINVAL);
  ASSERT_EQ(NotifyUnmapped(kX, kXLen), 0);  // not logged
  uint64_t t2;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t2), 0);
  EXPECT_EQ(t2, t) << "a range was logged with no read in flight";
  ASSERT_EQ(NotifyUnmapped(kX, kXLen), 0);  // logged
  EXPECT_TRUE(ReadRetryInterval(kX, kX + kXLen, t2));
  ReadEndInterval();
}

// The documented bounded false positive: more ranges anywhere in the process
// than the log holds since the token.
TEST_F(IntervalRead, LogOverflowIsConservative) {
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
  for (unsigned i = 0; i < kIntervalLogEntries - 1; ++i)
    ASSERT_EQ(NotifyUnmapped(kY, 4096), 0);
  EXPECT_FALSE(ReadRetryInterval(kX, kX + kXLen, t));
  ASSERT_EQ(NotifyUnmapped(kY, 4096), 0);
  EXPECT_FALSE(ReadRetryInterval(kX, kX + kXLen, t));  // exactly full
  ASSERT_EQ(NotifyUnmapped(kY, 4096), 0);
  EXPECT_TRUE(ReadRetryInterval(kX, kX + kXLen, t));  // wrapped: cannot tell
  ReadEndInterval();
}

// A range on the interval in flight when begin is called (began before it):
// begin waits for its end; a range in flight on other memory never delays it.
TEST_F(IntervalRead, BeginWaitsOnlyForOverlappingRangesInFlight) {
  std::atomic<int> phase{0};
  std::thread holder([&] {
    ASSERT_EQ(NotifyStart(kY, kXLen), 0);  // unrelated, held all along
    ASSERT_EQ(NotifyStart(kX, kXLen), 0);
    phase.store(1);
    while (phase.load() < 2) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(50ms);  // begin must still be waiting
    phase.store(3);
    ASSERT_EQ(NotifyEnd(kX, kXLen), 0);
    while (phase.load() < 4) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(NotifyEnd(kY, kXLen), 0);
  });
  while (phase.load() < 1) std::this_thread::sleep_for(1ms);
  phase.store(2);
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
  EXPECT_EQ(phase.load(), 3) << "begin returned while an overlapping range "
                                "was in flight";
  EXPECT_FALSE(ReadRetryInterval(kX, kX + kXLen, t));
  ReadEndInterval();
  // The range on Y is still open: a begin on other memory returns at once.
  uint64_t t2;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(ReadBeginInterval(kX + 0x100000, kX + 0x100000 + kXLen, &t2), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  ReadEndInterval();
  phase.store(4);
  holder.join();
}

// The cache's protocol under races. A whole-space subscriber counts the start
// and end callbacks of ranges overlapping X. A reader: begin; read the count;
// (the "registration"); read the count again; retry. If an overlapping range
// started or ended in between, it was in flight during the registration (the
// memory may have changed under it): it either began after the token (it
// logged itself first: retry must be true) or was in flight at begin (begin
// must have waited for its end). Ranges on Y must not make retry true once
// the writers settle (separate case below).
struct Counter {
  std::atomic<uint64_t> overlapping{0};
  static void Event(void *arg, const void *addr, size_t len) {
    auto a = reinterpret_cast<uintptr_t>(addr);
    if (a < kX + kXLen && kX < a + len)
      static_cast<Counter *>(arg)->overlapping.fetch_add(1);
  }
};
const regcache_notifier_ops_t kCounterOps = {Counter::Event, Counter::Event,
                                             nullptr};

// Returns the number of retries that were false although an overlapping range
// started or ended between begin and retry.
uint64_t RaceMissed(std::chrono::milliseconds how_long, uint64_t *retries,
                    uint64_t *checks) {
  Counter c;
  Subscription *sub;
  EXPECT_EQ(Register(&kCounterOps, &c, 0, 0, &sub), 0);
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      uint64_t i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        // Mostly unrelated ranges, every 8th over a part of X, held open
        // for a moment (the memory changes between start and end).
        if (++i % 8 == 0) {
          const uintptr_t a = kX + 4096 * (i % 16);
          NotifyStart(a, 4096);
          for (int spin = 0; spin < 100; ++spin) asm volatile("" ::: "memory");
          NotifyEnd(a, 4096);
        } else {
          NotifyUnmapped(kY + 4096 * w, 4096);
        }
      }
    });
  }
  uint64_t missed = 0;
  const auto end = std::chrono::steady_clock::now() + how_long;
  while (std::chrono::steady_clock::now() < end) {
    uint64_t t;
    if (ReadBeginInterval(kX, kX + kXLen, &t) != 0) {
      ADD_FAILURE() << "ReadBeginInterval failed";
      break;
    }
    const uint64_t c0 = c.overlapping.load(std::memory_order_seq_cst);
    for (int spin = 0; spin < 200; ++spin) asm volatile("" ::: "memory");
    const uint64_t c1 = c.overlapping.load(std::memory_order_seq_cst);
    const bool retry = ReadRetryInterval(kX, kX + kXLen, t);
    ReadEndInterval();
    ++*checks;
    *retries += retry;
    missed += c1 != c0 && !retry;
  }
  stop.store(true);
  for (auto &t : writers) t.join();
  EXPECT_EQ(Unregister(sub), 0);
  return missed;
}

TEST_F(IntervalRead, RaceOverlappingBeginAlwaysRetries) {
  uint64_t retries = 0, checks = 0;
  EXPECT_EQ(RaceMissed(1500ms, &retries, &checks), 0u);
  EXPECT_GT(checks, 100u);
  EXPECT_GT(retries, 0u) << "the writers never overlapped a check";
}

TEST_F(IntervalRead, RaceNegativeControlWithoutLogMisses) {
  internal::g_interval_log_off_for_testing.store(true);
  uint64_t retries = 0, checks = 0;
  EXPECT_GT(RaceMissed(1500ms, &retries, &checks), 0u)
      << "without the log the check must miss overlapping ranges";
}

// Negative control of begin's wait, deterministic: a range on X in flight
// when begin is called (its start callback already ran: a cache would not
// have found the new region) ends during the "registration". With the wait
// off, begin returns at once and retry is false although the memory changed
// under the registration; BeginWaitsOnlyForOverlappingRangesInFlight shows
// begin waiting for exactly this range.
TEST_F(IntervalRead, NegativeControlWithoutBeginWaitMissesRangeInFlight) {
  internal::g_interval_wait_off_for_testing.store(true);
  std::atomic<int> phase{0};
  std::thread holder([&] {
    ASSERT_EQ(NotifyStart(kX, kXLen), 0);
    phase.store(1);
    while (phase.load() < 2) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(NotifyEnd(kX, kXLen), 0);  // the change completes now
    phase.store(3);
  });
  while (phase.load() < 1) std::this_thread::sleep_for(1ms);
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);  // does not wait
  phase.store(2);  // "register" while the range ends
  while (phase.load() < 3) std::this_thread::sleep_for(1ms);
  EXPECT_FALSE(ReadRetryInterval(kX, kX + kXLen, t))
      << "with the wait off the range in flight must go unseen (else this "
         "control shows nothing)";
  ReadEndInterval();
  holder.join();
}

// Non-overlapping ranges alone, from two threads, while a reader checks: no
// retry unless more than the log's capacity began during one check.
TEST_F(IntervalRead, RaceUnrelatedOnlyRarelyRetries) {
  std::atomic<bool> stop{false};
  std::thread w([&] {
    while (!stop.load(std::memory_order_relaxed)) NotifyUnmapped(kY, 4096);
  });
  uint64_t retries = 0, checks = 0;
  const auto end = std::chrono::steady_clock::now() + 500ms;
  while (std::chrono::steady_clock::now() < end) {
    uint64_t t;
    ASSERT_EQ(ReadBeginInterval(kX, kX + kXLen, &t), 0);
    retries += ReadRetryInterval(kX, kX + kXLen, t);
    ReadEndInterval();
    ++checks;
  }
  stop.store(true);
  w.join();
  // A retry here is a range caught between its log slot and its entry, or a
  // wrapped log (a reader descheduled for 256 ranges): rare. Under TSan the
  // reader runs several times slower than the writer's loop, so the log wraps
  // under it far more often (19 % of checks in one CI run): there the bound
  // is only that unrelated ranges do not make most reads retry.
#ifdef REGCACHE_UNDER_TSAN
  EXPECT_LT(retries * 2, checks) << retries << " of " << checks;
#else
  EXPECT_LT(retries * 20, checks) << retries << " of " << checks;
#endif
}

// Under uffd the begin watches the interval, as an interval Register does:
// a hole is -EFAULT, and an unmap of watched memory is logged (once the
// monitor has dispatched it: WaitAsyncEvents, as the cache's lookups do).
TEST(IntervalReadUffd, WatchesAndSeesUnmap) {
  alarm(120);
  ResetForTesting();
  Options o;
  o.source = Source::kUffd;
  ASSERT_EQ(Configure(o), 0);
  if (EnsureInstalled() != 0) {
    ResetForTesting();
    GTEST_SKIP() << "uffd cannot be installed here";
  }
  const size_t len = 4 * 4096;
  void *m = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(m, MAP_FAILED);
  const auto a = reinterpret_cast<uintptr_t>(m);
  uint64_t t;
  ASSERT_EQ(ReadBeginInterval(a, a + len, &t), 0);
  EXPECT_FALSE(ReadRetryInterval(a, a + len, t));
  ASSERT_EQ(munmap(m, len), 0);
  WaitAsyncEvents();
  EXPECT_TRUE(ReadRetryInterval(a, a + len, t));
  ReadEndInterval();
  EXPECT_EQ(ReadBeginInterval(a, a + len, &t), -EFAULT);  // now a hole
  ResetForTesting();
  alarm(0);
}

}  // namespace
}  // namespace regcache::notifier

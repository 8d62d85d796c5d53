// SPDX-License-Identifier: BSD-3-Clause
// The cache's semantics against the test driver (records calls, injects
// failures) and the host driver: hit/miss, merging and its bound, access union,
// CLOCK/LRU order, limits, ENOMEM evict-and-retry, in-use invalidation,
// race-free insert, several caches, stats, release, bad input. Events come
// through the explicit source (regcache_notify_unmapped), so these tests do not
// depend on libc patching.
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "drivers/host/host_driver.h"
#include "notifier/address_space.h"
#include "notifier/procmap.h"
#include "regcache/cache.h"
#include "regcache/page.h"
#include "tests/common/cache_fixture.h"
#include "tests/common/fork_child.h"
#include "tests/regcache/test_driver.h"

namespace {

using regcache::testing::NewTestDriver;
using regcache::testing::TestDriver;

const size_t kPage = regcache::page::Size();

using CacheTest = regcache::testing::CacheFixture;

TEST_F(CacheTest, RegionFitsTheMemoryBudget) {
  EXPECT_LE(sizeof(regcache::core::CachedRegion), 128u);
}

TEST_F(CacheTest, MissThenHit) {
  regcache_t *c = Create();
  regcache_region_t *r1 = Get(c, Page(1) + 100, 200);
  ASSERT_NE(r1, nullptr);
  EXPECT_EQ(regcache_region_addr(r1), Page(1));
  EXPECT_EQ(regcache_region_length(r1), kPage);
  EXPECT_NE(regcache_region_lkey(r1), 0u);
  regcache_put(c, r1);
  regcache_region_t *r2 = Get(c, Page(1) + 8, 16);
  EXPECT_EQ(r2, r1);
  regcache_put(c, r2);
  regcache_stats_t s = Stats(c);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.registrations, 1u);
  EXPECT_EQ(s.regions, 1u);
  EXPECT_EQ(s.bytes, kPage);
  EXPECT_EQ(td_->Registers(), 1u);
  // A range crossing into the next page is not covered: miss, merged with the
  // cached page.
  regcache_region_t *r3 = Get(c, Page(1) + kPage - 1, 2);
  EXPECT_EQ(regcache_region_addr(r3), Page(1));
  EXPECT_EQ(regcache_region_length(r3), 2 * kPage);
  regcache_put(c, r3);
  EXPECT_EQ(Stats(c).misses, 2u);
  EXPECT_EQ(Stats(c).merges, 1u);
  EXPECT_EQ(td_->Live(), 1u);  // the merged-away region was deregistered
}

TEST_F(CacheTest, HitFromAnotherThreadAndFrontTable) {
  regcache_t *c = Create();
  regcache_region_t *r = Get(c, Page(0), kPage);
  std::thread t([&] {
    for (int i = 0; i < 3; ++i) {
      regcache_region_t *x = Get(c, Page(0), 64);
      EXPECT_EQ(x, r);
      regcache_put(c, x);
    }
  });
  t.join();
  regcache_put(c, r);
  EXPECT_EQ(Stats(c).hits, 3u);
  EXPECT_EQ(td_->Registers(), 1u);
}

TEST_F(CacheTest, MergesOverlappingUpToTheBound) {
  regcache_t *c = CreateWith(1000, SIZE_MAX, 4 * kPage);
  regcache_put(c, Get(c, Page(10), 3 * kPage));
  regcache_region_t *r =
      Get(c, Page(12), 2 * kPage);  // overlaps: 4 pages fit the bound
  EXPECT_EQ(regcache_region_addr(r), Page(10));
  EXPECT_EQ(regcache_region_length(r), 4 * kPage);
  regcache_put(c, r);
  r = Get(c, Page(13), 2 * kPage);  // would make 5 pages: registered alone
  EXPECT_EQ(regcache_region_addr(r), Page(13));
  EXPECT_EQ(regcache_region_length(r), 2 * kPage);
  regcache_put(c, r);
  // A request larger than the bound is registered as it is, never merged
  // further.
  r = Get(c, Page(20), 6 * kPage);
  EXPECT_EQ(regcache_region_addr(r), Page(20));
  EXPECT_EQ(regcache_region_length(r), 6 * kPage);
  regcache_put(c, r);
  r = Get(c, Page(25), 2 * kPage);
  EXPECT_EQ(regcache_region_addr(r), Page(25));
  EXPECT_EQ(regcache_region_length(r), 2 * kPage);
  regcache_put(c, r);
  for (auto &call : td_->register_calls) EXPECT_LE(call.len, 6 * kPage);
}

// Regression: folding the only indexed region into a merged one used to reset
// the callback's filter bounds after they were widened for the new region, so
// an unmap of the merged region was filtered out and it stayed cached (stale).
TEST_F(CacheTest, InvalidationOfAMergedRegionIsSeen) {
  regcache_t *c = CreateWith(1000, SIZE_MAX, 64 * kPage);
  regcache_put(c, Get(c, Page(10), kPage));
  regcache_put(c, Get(c, Page(10), 2 * kPage));  // overlaps: merged
  ASSERT_EQ(Stats(c).merges, 1u);
  ASSERT_EQ(regcache_notify_unmapped(Page(10), 2 * kPage), 0);
  EXPECT_EQ(Stats(c).invalidations, 1u);
  size_t regs = td_->Registers();
  regcache_put(c, Get(c, Page(10), kPage));
  EXPECT_EQ(td_->Registers(), regs + 1);  // a miss, not a stale hit
}

// Adjacent regions stay apart, with room in the cache or not: unmapping one
// buffer must not cost its neighbour's registration (malloc'd buffers above
// the mmap threshold are often adjacent mappings).
TEST_F(CacheTest, AdjacentRegionsAreNotGlued) {
  for (size_t max_regions : {size_t{1000}, size_t{2}}) {
    SCOPED_TRACE(max_regions);
    regcache_t *c = CreateWith(max_regions, SIZE_MAX, 64 * kPage);
    regcache_put(c, Get(c, Page(10), kPage));
    regcache_region_t *r = Get(c, Page(11), kPage);
    EXPECT_EQ(regcache_region_addr(r), Page(11));
    EXPECT_EQ(regcache_region_length(r), kPage);
    regcache_put(c, r);
    ASSERT_EQ(regcache_notify_unmapped(Page(11), kPage), 0);
    EXPECT_EQ(Stats(c).invalidations, 1u);
    const size_t regs = td_->Registers();
    regcache_put(c, Get(c, Page(10), kPage));  // still cached
    EXPECT_EQ(td_->Registers(), regs);
    // Overlapping requests are still merged.
    r = Get(c, Page(10) + kPage / 2, kPage);
    EXPECT_EQ(regcache_region_addr(r), Page(10));
    EXPECT_EQ(regcache_region_length(r), 2 * kPage);
    regcache_put(c, r);
    Destroy(c);
  }
}

TEST_F(CacheTest, NoMergeFlag) {
  regcache_t *c = CreateWith(1000, SIZE_MAX, 1 << 20, REGCACHE_FLAG_NO_MERGE);
  regcache_put(c, Get(c, Page(0), kPage));
  regcache_region_t *r = Get(c, Page(1), kPage);
  EXPECT_EQ(regcache_region_addr(r), Page(1));
  EXPECT_EQ(regcache_region_length(r), kPage);
  regcache_put(c, r);
  EXPECT_EQ(td_->Live(), 2u);
}

TEST_F(CacheTest, AccessUnionNoBouncing) {
  // The union of requested flags is what ACCESS_POLICY=requested registers.
  ASSERT_EQ(regcache_config_set("ACCESS_POLICY", "requested"), 0);
  regcache_t *c = Create();
  ASSERT_EQ(regcache_config_set("ACCESS_POLICY", "all"), 0);
  regcache_put(c, Get(c, Page(0), kPage, REGCACHE_ACCESS_LOCAL_WRITE));
  regcache_region_t *r = Get(c, Page(0), kPage, REGCACHE_ACCESS_REMOTE_READ);
  EXPECT_EQ(regcache_region_access(r),
            REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_READ);
  EXPECT_EQ(td_->register_calls.back().access,
            REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_READ);
  regcache_put(c, r);
  // Alternating requests now all hit the one region.
  for (unsigned acc :
       {REGCACHE_ACCESS_LOCAL_WRITE, REGCACHE_ACCESS_REMOTE_READ, 0u}) {
    regcache_region_t *x = Get(c, Page(0), 10, acc);
    EXPECT_EQ(x, r);
    regcache_put(c, x);
  }
  EXPECT_EQ(td_->Registers(), 2u);
  EXPECT_EQ(Stats(c).hits, 3u);
}

TEST_F(CacheTest, AccessPolicyAllRegistersWritableMemoryWithEveryFlag) {
  regcache_t *c = Create();  // default policy: all
  regcache_put(c, Get(c, Page(0), kPage, REGCACHE_ACCESS_LOCAL_WRITE));
  EXPECT_EQ(td_->register_calls.back().access, REGCACHE_ACCESS_ALL);
  // A remote write after a local write is a hit: one registration.
  regcache_region_t *r = Get(c, Page(0), kPage, REGCACHE_ACCESS_REMOTE_WRITE);
  EXPECT_EQ(regcache_region_access(r), REGCACHE_ACCESS_ALL);
  regcache_put(c, r);
  EXPECT_EQ(td_->Registers(), 1u);
  EXPECT_EQ(Stats(c).hits, 1u);
}

TEST_F(CacheTest, AccessPolicyAllFallsBackWhenTheDriverRefuses) {
  regcache_t *c = Create();
  td_->fail_next = 1;  // e.g. a device without remote atomics
  td_->fail_errno = -EACCES;
  regcache_region_t *r = Get(c, Page(0), kPage, REGCACHE_ACCESS_LOCAL_WRITE);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(regcache_region_access(r), REGCACHE_ACCESS_LOCAL_WRITE);
  ASSERT_EQ(td_->register_calls.size(), 2u);
  EXPECT_EQ(td_->register_calls[0].access, REGCACHE_ACCESS_ALL);
  EXPECT_EQ(td_->register_calls[1].access, REGCACHE_ACCESS_LOCAL_WRITE);
  regcache_put(c, r);
  EXPECT_EQ(Stats(c).failures, 0u);
}

TEST_F(CacheTest, AccessPolicyRequested) {
  ASSERT_EQ(regcache_config_set("ACCESS_POLICY", "requested"), 0);
  regcache_t *c = Create();
  ASSERT_EQ(regcache_config_set("ACCESS_POLICY", "all"), 0);
  regcache_put(c, Get(c, Page(0), kPage, REGCACHE_ACCESS_LOCAL_WRITE));
  EXPECT_EQ(td_->register_calls.back().access, REGCACHE_ACCESS_LOCAL_WRITE);
  EXPECT_EQ(regcache_config_set("ACCESS_POLICY", "some"), -EINVAL);
}

TEST_F(CacheTest, EvictsLeastRecentlyUsed) {
  // LRU order (REGCACHE_EVICTION=lru); the adaptive policy: eviction_test.
  ASSERT_EQ(regcache_config_set("EVICTION", "lru"), 0);
  regcache_t *c = CreateWith(3, SIZE_MAX, 0);
  regcache_region_t *a = Get(c, Page(0), kPage);
  regcache_region_t *b = Get(c, Page(2), kPage);
  regcache_region_t *cc = Get(c, Page(4), kPage);
  uint32_t bkey = regcache_region_lkey(b);
  regcache_put(c, a);
  regcache_put(c, b);
  regcache_put(c, cc);
  regcache_put(c, Get(c, Page(0), 1));  // a is used again: b is now the LRU
  regcache_put(c, Get(c, Page(6), kPage));
  EXPECT_EQ(Stats(c).evictions, 1u);
  EXPECT_FALSE(td_->IsLive(bkey));
  size_t regs = td_->Registers();
  regcache_put(c, Get(c, Page(0), 1));
  regcache_put(c, Get(c, Page(4), 1));
  EXPECT_EQ(td_->Registers(), regs);  // a and c still cached
  regcache_put(c, Get(c, Page(2), 1));
  EXPECT_EQ(td_->Registers(), regs + 1);
}

// Exact LRU order, where CLOCK (one "used" bit per region) cannot tell: all
// three were used since the last eviction, in the order c, b, a.
TEST_F(CacheTest, EvictsInExactUseOrderNotClockOrder) {
  // LRU order (REGCACHE_EVICTION=lru); the adaptive policy: eviction_test.
  ASSERT_EQ(regcache_config_set("EVICTION", "lru"), 0);
  regcache_t *c = CreateWith(3, SIZE_MAX, 0);
  regcache_put(c, Get(c, Page(0), kPage));  // a
  regcache_put(c, Get(c, Page(2), kPage));  // b
  regcache_region_t *cc = Get(c, Page(4), kPage);
  const uint32_t ckey = regcache_region_lkey(cc);
  regcache_put(c, cc);
  regcache_put(c, Get(c, Page(4), 1));
  regcache_put(c, Get(c, Page(2), 1));
  regcache_put(c, Get(c, Page(0), 1));
  regcache_put(c, Get(c, Page(6), kPage));  // full: the LRU (c) goes
  EXPECT_EQ(Stats(c).evictions, 1u);
  EXPECT_FALSE(td_->IsLive(ckey));
  const size_t regs = td_->Registers();
  regcache_put(c, Get(c, Page(0), 1));
  regcache_put(c, Get(c, Page(2), 1));
  EXPECT_EQ(td_->Registers(), regs);
}

TEST_F(CacheTest, ByteLimit) {
  // LRU order (REGCACHE_EVICTION=lru); the adaptive policy: eviction_test.
  ASSERT_EQ(regcache_config_set("EVICTION", "lru"), 0);
  regcache_t *c = CreateWith(1000, 2 * kPage, 0);
  regcache_put(c, Get(c, Page(0), kPage));
  regcache_put(c, Get(c, Page(2), kPage));
  regcache_put(c, Get(c, Page(4), kPage));
  regcache_stats_t s = Stats(c);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.bytes, 2 * kPage);
  EXPECT_EQ(td_->Live(), 2u);
}

TEST_F(CacheTest, RegionLargerThanTheByteLimitStaysUntilTheNextMiss) {
  // LRU order (REGCACHE_EVICTION=lru); the adaptive policy: eviction_test.
  ASSERT_EQ(regcache_config_set("EVICTION", "lru"), 0);
  regcache_t *c = CreateWith(4, 2 * kPage, 0);
  regcache_put(c, Get(c, Page(0), 4 * kPage));  // alone over max_bytes
  EXPECT_EQ(td_->Live(), 1u);                   // still cached after its put
  regcache_put(c, Get(c, Page(0), 4 * kPage));
  EXPECT_EQ(td_->Registers(), 1u);  // reused: a hit
  // The next miss makes room first: the big one goes before it registers.
  regcache_put(c, Get(c, Page(8), kPage));
  EXPECT_EQ(td_->Live(), 1u);
  EXPECT_EQ(Stats(c).evictions, 1u);
  EXPECT_LE(Stats(c).peak_bytes, 4 * kPage);
}

TEST_F(CacheTest, ReplacedUnusedRegionsAreDeregisteredBeforeRegistering) {
  regcache_t *c = CreateWith(1000, SIZE_MAX, 64 * kPage);
  regcache_put(c, Get(c, Page(0), 4 * kPage));
  size_t live_during = 99;
  td_->on_register = [&](void *, size_t) { live_during = td_->Live(); };
  regcache_region_t *r = Get(c, Page(2), 8 * kPage);  // overlaps: merged
  td_->on_register = nullptr;
  EXPECT_EQ(regcache_region_length(r), 10 * kPage);
  EXPECT_EQ(live_during, 0u);  // the 4-page region went first
  EXPECT_EQ(Stats(c).peak_bytes, 10 * kPage);
  regcache_put(c, r);
}

// Issue 14: invalidated (dead) regions are deregistered by the next miss, not
// by a hit that left the front table nor by its put, while the registered
// total (indexed + dead) stays within the cache's limits. Every other page:
// no merge.
TEST_F(CacheTest, DeadRegionsAreReapedByTheNextMissNotByHits) {
  regcache_t *c = CreateWith(64, SIZE_MAX, 0);
  regcache_region_t *keep = Get(c, Page(100), kPage);
  regcache_put(c, keep);
  // 20 regions (more than kReapCount = 16).
  for (size_t i = 0; i < 20; ++i) regcache_put(c, Get(c, Page(2 * i), kPage));
  ASSERT_EQ(td_->Live(), 21u);
  ASSERT_EQ(regcache_notify_unmapped(Page(0), 40 * kPage), 0);
  const uint64_t hits = Stats(c).hits;
  // A thread of its own has an empty front table: the get takes the slow
  // path (this one's hashed level may still know page 100).
  regcache_region_t *h = nullptr;
  std::thread([&] { h = Get(c, Page(100), 64); }).join();
  EXPECT_EQ(h, keep);
  EXPECT_EQ(Stats(c).hits, hits + 1);
  EXPECT_EQ(td_->Live(), 21u);  // the slow-path hit left them to a miss
  regcache_put(c, h);
  EXPECT_EQ(td_->Live(), 21u);  // 1 indexed + 20 dead <= 64: so did the put
  regcache_put(c, Get(c, Page(200), kPage));
  EXPECT_EQ(td_->Live(), 2u);  // the miss reaped them
}

// Issue 14: a thread cycling over more regions than the 8 recent front-table
// entries still hits without the cache's lock: the front table's hashed level
// (keyed by a region's start page) knows all 24 (regcache-bench's pool-fit and
// scan cycle over 24 buffers). Inside the thread's own unmap bracket every slow
// path returns -EDEADLK, a lock-free hit does not. Control: a get from a
// region's second page, which neither the 8 recent entries (regions 16..23) nor
// the hashed level (keyed by start pages) hold, takes the slow path.
TEST_F(CacheTest, HitsBeyondTheRecentEntriesStayLockFree) {
  regcache_t *c = CreateWith(1000, SIZE_MAX, 0);
  constexpr size_t kRegions = 24;
  std::vector<regcache_region_t *> regs;
  for (size_t i = 0; i < kRegions; ++i) {
    regs.push_back(Get(c, Page(3 * i), 2 * kPage));  // a gap page: no merge
    regcache_put(c, regs.back());
  }
  static char unrelated[4096] __attribute__((aligned(4096)));
  ASSERT_EQ(regcache_notify_unmap_start(unrelated, sizeof unrelated), 0);
  int rcs[kRegions];
  regcache_region_t *got[kRegions] = {};
  for (size_t i = 0; i < kRegions; ++i) {
    rcs[i] = regcache_get(c, Page(3 * i) + 8, 64, REGCACHE_ACCESS_LOCAL_WRITE,
                          &got[i]);
    if (rcs[i] == 0) regcache_put(c, got[i]);
  }
  regcache_region_t *second = nullptr;
  const int control =
      regcache_get(c, Page(1) + 8, 64, REGCACHE_ACCESS_LOCAL_WRITE, &second);
  if (control == 0) regcache_put(c, second);
  ASSERT_EQ(regcache_notify_unmap_end(unrelated, sizeof unrelated), 0);
  for (size_t i = 0; i < kRegions; ++i) {
    EXPECT_EQ(rcs[i], 0) << "region " << i << " took the slow path";
    EXPECT_EQ(got[i], regs[i]);
  }
  EXPECT_EQ(control, -EDEADLK);
}

// Issue 14: a miss on fresh memory skips the scan of the 8 recent front-table
// entries when the request lies outside their span (hit_path.cc,
// ThreadState::lo/hi). The span must still hold every recent entry: sub-range
// hits (a region's second page, which only the recent entries know) of the
// 8 most recent regions stay lock-free, whichever order they were cached in
// (addresses going down, then up: both ends of the span move) and after the
// ring wrapped (the span recomputed). Control: the 9th most recent region's
// second page is known to neither level and takes the slow path (-EDEADLK
// inside the thread's own unmap bracket).
TEST_F(CacheTest, RecentEntrySpanKeepsSubRangeHitsLockFree) {
  regcache_t *c = CreateWith(1000, SIZE_MAX, 0);
  static char unrelated[4096] __attribute__((aligned(4096)));
  for (const bool down : {true, false}) {
    SCOPED_TRACE(down ? "addresses going down" : "addresses going up");
    constexpr size_t kRegions = 21;  // wraps the ring of 8 twice
    std::vector<regcache_region_t *> regs;
    for (size_t i = 0; i < kRegions; ++i) {
      const size_t at = (down ? 300 - 3 * i : 400 + 3 * i);
      regs.push_back(Get(c, Page(at), 2 * kPage));  // a gap page: no merge
      regcache_put(c, regs.back());
    }
    auto second_page = [&](size_t i) {
      return Page(down ? 300 - 3 * i : 400 + 3 * i) + kPage + 8;
    };
    ASSERT_EQ(regcache_notify_unmap_start(unrelated, sizeof unrelated), 0);
    int rcs[8];
    regcache_region_t *got[8] = {};
    for (size_t k = 0; k < 8; ++k) {
      rcs[k] = regcache_get(c, second_page(kRegions - 1 - k), 64,
                            REGCACHE_ACCESS_LOCAL_WRITE, &got[k]);
      if (rcs[k] == 0) regcache_put(c, got[k]);
    }
    regcache_region_t *old = nullptr;
    const int control = regcache_get(c, second_page(kRegions - 9), 64,
                                     REGCACHE_ACCESS_LOCAL_WRITE, &old);
    if (control == 0) regcache_put(c, old);
    ASSERT_EQ(regcache_notify_unmap_end(unrelated, sizeof unrelated), 0);
    for (size_t k = 0; k < 8; ++k) {
      EXPECT_EQ(rcs[k], 0) << "recent region " << k << " took the slow path";
      EXPECT_EQ(got[k], regs[kRegions - 1 - k]);
    }
    EXPECT_EQ(control, -EDEADLK);
  }
}

TEST_F(CacheTest, ConcurrentMissesOnTheSameMemoryRegisterOnce) {
  regcache_t *c = CreateWith(1000, SIZE_MAX, 0);
  std::thread second;
  regcache_region_t *r2 = nullptr;
  std::atomic<int> calls{0};
  td_->on_register = [&](void *, size_t) {
    if (calls++ != 0) return;
    // The first miss is registering: a second thread misses on the same
    // memory meanwhile.
    second = std::thread([&] { r2 = Get(c, Page(1), 64); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  };
  regcache_region_t *r1 = Get(c, Page(0), 4 * kPage);
  second.join();
  td_->on_register = nullptr;
  EXPECT_EQ(r1, r2);  // the second waited for the first's registration
  EXPECT_EQ(td_->Registers(), 1u);
  regcache_put(c, r1);
  regcache_put(c, r2);
}

TEST_F(CacheTest, InUseRegionsAreNeverEvicted) {
  regcache_t *c = CreateWith(1, SIZE_MAX, 0);
  regcache_region_t *a = Get(c, Page(0), kPage);
  regcache_region_t *b = Get(c, Page(2), kPage);
  EXPECT_EQ(td_->Live(), 2u);  // over the limit while both are held
  EXPECT_EQ(Stats(c).evictions, 0u);
  regcache_put(c, b);  // b unused and over the limit: goes
  EXPECT_EQ(td_->Live(), 1u);
  EXPECT_EQ(Stats(c).evictions, 1u);
  EXPECT_NE(regcache_region_lkey(a), 0u);
  regcache_region_t *a2 = Get(c, Page(0), 1);
  EXPECT_EQ(a2, a);
  regcache_put(c, a2);
  regcache_put(c, a);
  EXPECT_EQ(td_->Live(), 1u);  // a stays cached: within the limit
}

TEST_F(CacheTest, MaxRegionsZeroDisablesCaching) {
  regcache_t *c = CreateWith(0, SIZE_MAX, 0);
  for (int i = 0; i < 3; ++i) {
    regcache_put(c, Get(c, Page(0), kPage));
    EXPECT_EQ(td_->Live(), 0u);
  }
  EXPECT_EQ(td_->Registers(), 3u);
}

TEST_F(CacheTest, EnomemEvictsUnusedAndRetries) {
  td_->cap_bytes = 3 * kPage;  // the "device" holds three pages
  regcache_t *c = CreateWith(1000, SIZE_MAX, 0);
  regcache_put(c, Get(c, Page(0), kPage));
  regcache_put(c, Get(c, Page(2), kPage));
  regcache_region_t *held = Get(c, Page(4), kPage);
  regcache_region_t *r =
      Get(c, Page(6), kPage);  // -ENOMEM, evict two, retry: ok
  ASSERT_NE(r, nullptr);
  regcache_stats_t s = Stats(c);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.failures, 0u);
  EXPECT_EQ(td_->Live(), 2u);
  // Nothing left to evict: the error reaches the caller, state unchanged.
  regcache_region_t *x = nullptr;
  regcache_region_t *y = Get(c, Page(8), kPage);
  EXPECT_EQ(regcache_get(c, Page(10), kPage, 0, &x), -ENOMEM);
  EXPECT_EQ(x, nullptr);
  EXPECT_EQ(Stats(c).failures, 1u);
  regcache_put(c, y);
  regcache_put(c, r);
  regcache_put(c, held);
}

TEST_F(CacheTest, DriverErrorIsReturnedAndNothingCached) {
  regcache_t *c = Create();
  td_->fail_next = 1;
  td_->fail_errno = -EFAULT;
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get(c, Page(0), kPage, 0, &r), -EFAULT);
  EXPECT_EQ(r, nullptr);
  regcache_stats_t s = Stats(c);
  EXPECT_EQ(s.failures, 1u);
  EXPECT_EQ(s.regions, 0u);
  regcache_put(c, Get(c, Page(0), kPage));  // works afterwards
}

TEST_F(CacheTest, InUseInvalidationKeepsHeldRegionUntilPut) {
  regcache_t *c = Create();
  regcache_region_t *old = Get(c, Page(0), 2 * kPage);
  uint32_t old_key = regcache_region_lkey(old);
  ASSERT_EQ(regcache_notify_unmapped(Page(1), 1), 0);
  EXPECT_EQ(Stats(c).invalidations, 1u);
  EXPECT_TRUE(td_->IsLive(old_key));  // still held: stays registered
  EXPECT_EQ(regcache_region_lkey(old), old_key);
  regcache_region_t *fresh =
      Get(c, Page(0), kPage);  // never the invalidated region
  EXPECT_NE(fresh, old);
  EXPECT_EQ(Stats(c).misses, 2u);
  regcache_put(c, old);  // last put of the invalidated region: deregistered now
  EXPECT_FALSE(td_->IsLive(old_key));
  regcache_put(c, fresh);
  regcache_region_t *again = Get(c, Page(0), 1);
  EXPECT_EQ(again, fresh);
  regcache_put(c, again);
}

TEST_F(CacheTest, UnusedInvalidatedRegionIsDeregisteredByTheNextCall) {
  regcache_t *c = Create();
  regcache_region_t *r = Get(c, Page(0), kPage);
  uint32_t key = regcache_region_lkey(r);
  regcache_put(c, r);
  size_t deregs = td_->Deregisters();
  ASSERT_EQ(regcache_notify_unmapped(Page(0), kPage), 0);
  // Deferred: the callback ran inside "munmap" and never calls the driver.
  EXPECT_EQ(td_->Deregisters(), deregs);
  EXPECT_EQ(Stats(c).pending, 1u);
  EXPECT_EQ(regcache_flush(c), 0);
  EXPECT_FALSE(td_->IsLive(key));
  EXPECT_EQ(Stats(c).pending, 0u);
}

TEST_F(CacheTest, UnrelatedUnmapsAreFiltered) {
  regcache_t *c = Create();
  regcache_put(c, Get(c, Page(100), kPage));
  ASSERT_EQ(regcache_notify_unmapped(Page(0), 10 * kPage), 0);
  ASSERT_EQ(regcache_notify_unmapped(Page(101), kPage), 0);
  EXPECT_EQ(Stats(c).invalidations, 0u);
  regcache_put(c, Get(c, Page(100), 1));
  EXPECT_EQ(Stats(c).hits, 1u);
}

TEST_F(CacheTest, InvalidationDuringRegistrationIsNeverInserted) {
  regcache_t *c = Create();
  std::atomic<int> fired{0};
  td_->on_register = [&](void *addr, size_t len) {
    if (fired.fetch_add(1) == 0) regcache_notify_unmapped(addr, len);
  };
  regcache_region_t *r = Get(c, Page(0), kPage);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(td_->Registers(), 2u);  // first registration discarded, second kept
  EXPECT_EQ(td_->Live(), 1u);
  EXPECT_EQ(Stats(c).retries, 1u);
  EXPECT_EQ(regcache_region_lkey(r), 2u);
  regcache_put(c, r);
}

// Negative control of the test above: with the notifier's range log off (the
// interval read a miss validates its insert with), the unmap during the
// registration goes unseen and the stale registration is published.
TEST_F(CacheTest, InvalidationDuringRegistrationNegativeControl) {
  regcache_t *c = Create();
  std::atomic<int> fired{0};
  td_->on_register = [&](void *addr, size_t len) {
    if (fired.fetch_add(1) == 0) regcache_notify_unmapped(addr, len);
  };
  regcache::notifier::internal::g_interval_log_off_for_testing.store(true);
  regcache_region_t *r = Get(c, Page(0), kPage);
  regcache::notifier::internal::g_interval_log_off_for_testing.store(false);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(td_->Registers(), 1u);  // nothing retried
  EXPECT_EQ(Stats(c).retries, 0u);
  EXPECT_EQ(regcache_region_lkey(r), 1u);  // the stale one is in the cache
  regcache_put(c, r);
}

// ACCESS_POLICY=all's writability hint (issue 14): after one PROCMAP_QUERY a
// miss inside the same writable VMAs widens without asking the kernel. A
// protection removed without an event leaves the hint stale: the driver
// refuses the widened access, the ladder narrows it and the hint is dropped.
// A removal the notifier reports (any range over the span) drops it at once.
TEST_F(CacheTest, WritableSpanHintIsDroppedByEventsAndByTheDriversRefusal) {
  if (regcache::notifier::procmap::Init() != 0)
    GTEST_SKIP() << "no PROCMAP_QUERY (Linux < 6.11): every miss widens";
  regcache_t *c = Create();
  const auto first_access = [&](size_t from) {
    return td_->register_calls.at(from).access;
  };
  regcache_put(c, Get(c, Page(0), kPage));  // probe: writable, hint kept
  EXPECT_EQ(td_->register_calls.back().access, REGCACHE_ACCESS_ALL);
  // Unseen protection change: the hint is trusted, the driver says no.
  ASSERT_EQ(mprotect(Page(10), kPage, PROT_READ), 0);
  td_->fail_next = 1;
  td_->fail_errno = -EACCES;
  size_t n = td_->register_calls.size();
  regcache_region_t *r = Get(c, Page(10), kPage);
  ASSERT_NE(r, nullptr);
  ASSERT_EQ(td_->register_calls.size(), n + 2);
  EXPECT_EQ(first_access(n), REGCACHE_ACCESS_ALL);  // hint, no ioctl
  EXPECT_EQ(td_->register_calls.back().access, 0u);
  EXPECT_EQ(regcache_region_access(r), 0u);
  regcache_put(c, r);
  // ... and dropped: the next read-only page is probed, never widened.
  ASSERT_EQ(mprotect(Page(30), kPage, PROT_READ), 0);
  n = td_->register_calls.size();
  regcache_put(c, Get(c, Page(30), kPage));
  ASSERT_EQ(td_->register_calls.size(), n + 1);
  EXPECT_EQ(first_access(n), 0u);
  // A reported change over the span drops it before any miss trusts it.
  regcache_put(c, Get(c, Page(50), kPage));  // probe again: hint kept
  ASSERT_EQ(mprotect(Page(60), kPage, PROT_READ), 0);
  ASSERT_EQ(regcache_notify_unmapped(Page(60), kPage), 0);
  n = td_->register_calls.size();
  regcache_put(c, Get(c, Page(60), kPage));
  ASSERT_EQ(td_->register_calls.size(), n + 1);
  EXPECT_EQ(first_access(n), 0u);
  // Negative control of that: unreported, the same change is widened.
  regcache_put(c, Get(c, Page(80), kPage));  // hint kept
  ASSERT_EQ(mprotect(Page(90), kPage, PROT_READ), 0);
  td_->fail_next = 1;
  td_->fail_errno = -EACCES;
  n = td_->register_calls.size();
  regcache_put(c, Get(c, Page(90), kPage));
  EXPECT_EQ(first_access(n), REGCACHE_ACCESS_ALL);
  for (size_t p : {10, 30, 60, 90})
    ASSERT_EQ(mprotect(Page(p), kPage, PROT_READ | PROT_WRITE), 0);
}

TEST_F(CacheTest, InvalidationFromAnotherThreadWhileRegistering) {
  regcache_t *c = Create();
  std::promise<void> in_register, go;
  std::shared_future<void> go_f = go.get_future().share();
  std::atomic<int> calls{0};
  td_->on_register = [&](void *, size_t) {
    if (calls.fetch_add(1) == 0) {
      in_register.set_value();
      go_f.wait();
    }
  };
  regcache_region_t *r = nullptr;
  std::thread t([&] { r = Get(c, Page(0) + 5, 10); });
  in_register.get_future().wait();
  ASSERT_EQ(regcache_notify_unmapped(Page(0), kPage), 0);
  go.set_value();
  t.join();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(Stats(c).retries, 1u);
  EXPECT_EQ(td_->Registers(), 2u);
  EXPECT_EQ(td_->Live(), 1u);
  EXPECT_EQ(regcache_region_lkey(r),
            2u);  // the registration made after the event
  regcache_put(c, r);
}

TEST_F(CacheTest, MemoryThatKeepsChangingGivesEagain) {
  regcache_t *c = Create();
  td_->on_register = [](void *addr, size_t len) {
    regcache_notify_unmapped(addr, len);
  };
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get(c, Page(0), kPage, 0, &r), -EAGAIN);
  EXPECT_EQ(r, nullptr);
  EXPECT_EQ(td_->Live(), 0u);
  EXPECT_EQ(Stats(c).regions, 0u);
}

TEST_F(CacheTest, SeveralCachesShareTheNotifier) {
  regcache_t *a = Create();
  TestDriver *td2;
  regcache_driver_t *d2 = NewTestDriver(&td2);
  regcache_t *b = Create(nullptr, d2);
  regcache_put(a, Get(a, Page(0), kPage));
  regcache_put(b, Get(b, Page(0), kPage));
  regcache_put(b, Get(b, Page(5), kPage));
  ASSERT_EQ(regcache_notify_unmapped(Page(0), kPage), 0);
  EXPECT_EQ(Stats(a).invalidations, 1u);
  EXPECT_EQ(Stats(b).invalidations, 1u);
  regcache_put(a, Get(a, Page(0), kPage));
  regcache_put(b, Get(b, Page(5), kPage));
  EXPECT_EQ(Stats(a).misses, 2u);
  EXPECT_EQ(Stats(b).hits, 1u);
  EXPECT_EQ(td_->Live(), 1u);
  Destroy(b);
  EXPECT_EQ(td2->Live(), 0u);
  regcache_driver_close(d2);
}

TEST_F(CacheTest, DestroyDeregistersEverything) {
  regcache_t *c = Create();
  regcache_put(c, Get(c, Page(0), kPage));
  regcache_region_t *held = Get(c, Page(4), kPage);
  ASSERT_NE(held, nullptr);
  ASSERT_EQ(regcache_notify_unmapped(Page(4), 1), 0);  // held and invalidated
  regcache_put(c, Get(c, Page(8), kPage));
  Destroy(c);
  EXPECT_EQ(td_->Live(), 0u);
  EXPECT_EQ(td_->bad_deregs, 0);
}

TEST_F(CacheTest, ReleaseDeregistersAndLaterGetFails) {
  regcache_t *c = Create();
  regcache_put(c, Get(c, Page(0), kPage));
  regcache_region_t *held = Get(c, Page(4), kPage);
  regcache::notifier::Teardown();  // what process exit does
  EXPECT_EQ(td_->Live(), 1u);      // only the held one
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get(c, Page(0), kPage, 0, &r), -ESHUTDOWN);
  EXPECT_EQ(regcache_get(c, Page(4), 1, 0, &r),
            -ESHUTDOWN);  // no stale hit either
  regcache_put(c, held);  // safe, and deregisters it
  EXPECT_EQ(td_->Live(), 0u);
  Destroy(c);
  regcache::notifier::ResetForTesting();
}

TEST_F(CacheTest, BadInputChangesNothing) {
  regcache_t *c = Create();
  regcache_region_t *r = reinterpret_cast<regcache_region_t *>(0x1);
  regcache_region_t *keep = r;
  EXPECT_EQ(regcache_get(nullptr, Page(0), 1, 0, &r), -EINVAL);
  EXPECT_EQ(regcache_get(c, Page(0), 1, 0, nullptr), -EINVAL);
  EXPECT_EQ(regcache_get(c, Page(0), 0, 0, &r), -EINVAL);
  EXPECT_EQ(
      regcache_get(c, reinterpret_cast<void *>(UINTPTR_MAX - 10), 100, 0, &r),
      -EINVAL);
  EXPECT_EQ(
      regcache_get(c, reinterpret_cast<void *>(UINTPTR_MAX - 10), 5, 0, &r),
      -EINVAL);
  EXPECT_EQ(regcache_get(c, Page(0), 1, 0x100, &r), -EINVAL);
  EXPECT_EQ(r, keep);
  EXPECT_EQ(regcache_flush(nullptr), -EINVAL);
  EXPECT_EQ(regcache_get_stats(nullptr, nullptr), -EINVAL);
  EXPECT_EQ(regcache_get_stats(c, nullptr), -EINVAL);
  regcache_put(c, nullptr);
  regcache_destroy(nullptr);
  regcache_t *c2 = nullptr;
  EXPECT_EQ(regcache_create(nullptr, nullptr, &c2), -EINVAL);
  EXPECT_EQ(regcache_create(drv_, nullptr, nullptr), -EINVAL);
  regcache_params_t p = {};
  p.field_mask = 1u << 20;
  EXPECT_EQ(regcache_create(drv_, &p, &c2), -EINVAL);
  p.field_mask = REGCACHE_PARAM_FLAGS;
  p.flags = 0x80;
  EXPECT_EQ(regcache_create(drv_, &p, &c2), -EINVAL);
  EXPECT_EQ(c2, nullptr);
  regcache_stats_t s = Stats(c);
  EXPECT_EQ(s.misses + s.hits + s.registrations + s.failures, 0u);
  EXPECT_EQ(td_->Registers(), 0u);
  // The cache still works.
  regcache_put(c, Get(c, Page(0), 1));
  EXPECT_EQ(td_->Live(), 1u);
}

TEST_F(CacheTest, RequestLargerThanDriverMaximumIsEinval) {
  td_->max_region = 4 * kPage;
  regcache_t *c = Create();
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get(c, Page(0), 5 * kPage, 0, &r), -EINVAL);
  regcache_put(c, Get(c, Page(0), 3 * kPage));
  regcache_region_t *x =
      Get(c, Page(3), 2 * kPage);  // merging would exceed the max
  EXPECT_EQ(regcache_region_length(x), 2 * kPage);
  regcache_put(c, x);
}

TEST_F(CacheTest, FlushKeepsHeldRegions) {
  regcache_t *c = Create();
  regcache_region_t *held = Get(c, Page(0), kPage);
  regcache_put(c, Get(c, Page(4), kPage));
  EXPECT_EQ(regcache_flush(c), 0);
  EXPECT_EQ(td_->Live(), 1u);
  regcache_region_t *again = Get(c, Page(0), 1);
  EXPECT_EQ(again, held);
  regcache_put(c, again);
  regcache_put(c, held);
}

TEST_F(CacheTest, StatsArePrinted) {
  regcache_params_t p = {};
  p.field_mask = REGCACHE_PARAM_NAME;
  p.name = "mycache";
  regcache_t *c = Create(&p);
  regcache_put(c, Get(c, Page(0), kPage));
  regcache_put(c, Get(c, Page(0), kPage));
  char buf[2048] = {};
  FILE *f = fmemopen(buf, sizeof(buf) - 1, "w");
  ASSERT_EQ(regcache_print_stats(c, f), 0);
  fclose(f);
  EXPECT_NE(std::string(buf).find("mycache hits 1\n"), std::string::npos)
      << buf;
  EXPECT_NE(std::string(buf).find("mycache misses 1\n"), std::string::npos)
      << buf;
}

TEST_F(CacheTest, StatsAtDestroyWithTunable) {
  ASSERT_EQ(regcache_config_set("STATS", "y"), 0);
  static std::string captured;
  regcache_set_log_handler(
      [](void *, int, const char *msg) { captured += msg; }, nullptr);
  regcache_set_log_level(REGCACHE_LOG_INFO);
  regcache_t *c = Create();
  regcache_put(c, Get(c, Page(0), kPage));
  Destroy(c);
  regcache_set_log_handler(nullptr, nullptr);
  regcache_config_set("STATS", "n");
  EXPECT_NE(captured.find("misses 1"), std::string::npos) << captured;
}

TEST_F(CacheTest, DoublePutIsDetected) {
  regcache_t *c = Create();
  regcache_region_t *r = Get(c, Page(0), kPage);
  regcache_put(c, r);
#ifdef NDEBUG
  static std::string captured;
  regcache_set_log_handler(
      [](void *, int, const char *msg) { captured += msg; }, nullptr);
  regcache_put(c, r);
  regcache_put(c, r);
  regcache_set_log_handler(nullptr, nullptr);
  EXPECT_NE(captured.find("double put"), std::string::npos);
  EXPECT_EQ(captured.find("double put"),
            captured.rfind("double put"));        // logged once
  regcache_region_t *again = Get(c, Page(0), 1);  // state intact
  EXPECT_EQ(again, r);
  regcache_put(c, again);
#else
  EXPECT_DEATH(regcache_put(c, r), "double put");
#endif
}

TEST_F(CacheTest, ConcurrentHitsInvalidationsAndMisses) {
  regcache_t *c = CreateWith(64, SIZE_MAX, 8 * kPage);
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 20000; ++i) {
        char *a = Page(static_cast<size_t>(t * 64 + (i % 16) * 2));
        regcache_region_t *r = nullptr;
        int rc = regcache_get(c, a, kPage, 0, &r);
        if (rc == -EAGAIN) continue;
        ASSERT_EQ(rc, 0);
        ASSERT_LE(reinterpret_cast<char *>(regcache_region_addr(r)), a);
        ASSERT_GE(reinterpret_cast<char *>(regcache_region_addr(r)) +
                      regcache_region_length(r),
                  a + kPage);
        regcache_put(c, r);
      }
    });
  }
  std::thread inv([&] {
    size_t i = 0;
    while (!stop.load()) regcache_notify_unmapped(Page((i++ * 7) % 128), kPage);
  });
  for (auto &t : ts) t.join();
  stop = true;
  inv.join();
  regcache_stats_t s = Stats(c);
  EXPECT_EQ(s.hits + s.misses, 40000u);  // every get is counted once
  EXPECT_GT(s.hits, 0u);
  EXPECT_EQ(regcache_flush(c), 0);
  EXPECT_EQ(td_->Live(), 0u);
  EXPECT_EQ(td_->bad_deregs, 0);
}

// stats.regions is summed over per-thread slots (registration +1 on the
// registering thread, deregistration -1 on whichever thread does it): exact
// with more live threads than slots (the shared slot), after the threads
// exited (their slots reused by the next ones), and when another thread
// deregisters.
TEST_F(CacheTest, RegionsCountOverThreadSlotsAndExits) {
  regcache_t *c = CreateWith(1024, SIZE_MAX, 0);
  constexpr size_t kThreads = 80;  // > the 64 per-thread slots
  for (int round = 0; round < 2; ++round) {
    std::atomic<size_t> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> ts;
    for (size_t t = 0; t < kThreads; ++t) {
      ts.emplace_back([&, t] {
        // All alive at once: the last ones count in the shared slot.
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
        regcache_region_t *r = nullptr;
        ASSERT_EQ(
            regcache_get(c, Page(round * 2 * kThreads + 2 * t), kPage, 0, &r),
            0);
        regcache_put(c, r);
      });
    }
    while (ready.load() != kThreads) std::this_thread::yield();
    go = true;
    for (auto &t : ts) t.join();
    EXPECT_EQ(Stats(c).regions, (round + 1) * kThreads);
    EXPECT_EQ(td_->Live(), (round + 1) * kThreads);
  }
  // Deregistered on this thread (its slot goes below zero; the sum does not).
  ASSERT_EQ(regcache_notify_unmapped(Page(0), 4 * kThreads * kPage), 0);
  EXPECT_EQ(regcache_flush(c), 0);
  EXPECT_EQ(td_->Live(), 0u);
  EXPECT_EQ(Stats(c).regions, 0u);
  regcache_region_t *r = Get(c, Page(1), kPage);
  ASSERT_NE(r, nullptr);
  regcache_put(c, r);
  EXPECT_EQ(Stats(c).regions, 1u);
}

// The fork child drops the parent's registrations from stats.regions (summed
// over the per-thread slots, some of them of parent threads that exited or do
// not exist in the child): 0 there, whatever slots the parent counted them in;
// the child's own registrations then count from 0, and the parent's count is
// unchanged.
TEST_F(CacheTest, RegionsCountInForkChild) {
  regcache_t *c = CreateWith(64, SIZE_MAX, 0);
  // Counted in other threads' slots: one exited, one alive at the fork.
  std::thread([&] {
    regcache_region_t *r = Get(c, Page(0), kPage);
    regcache_put(c, r);
  }).join();
  std::atomic<bool> counted{false}, done{false};
  std::thread alive([&] {
    regcache_region_t *r = Get(c, Page(2), kPage);
    regcache_put(c, r);
    counted = true;
    while (!done.load()) std::this_thread::yield();
  });
  while (!counted.load()) std::this_thread::yield();
  regcache_region_t *held = Get(c, Page(4), kPage);  // held across the fork
  ASSERT_NE(held, nullptr);
  regcache_region_t *r = Get(c, Page(6), kPage);
  regcache_put(c, r);
  ASSERT_EQ(Stats(c).regions, 4u);
  const int status = regcache::testing::RunChild(
      [&] {
        if (Stats(c).regions != 0) return 1;
        regcache_region_t *mine = nullptr;
        if (regcache_get(c, Page(8), kPage, 0, &mine) != 0) return 2;
        regcache_put(c, mine);
        if (Stats(c).regions != 1) return 3;
        regcache_put(c, held);  // the parent's: dropped without the driver
        if (Stats(c).regions != 1) return 4;
        if (regcache_notify_unmapped(Page(8), kPage) != 0) return 5;
        if (regcache_flush(c) != 0) return 6;
        return Stats(c).regions == 0 ? 0 : 7;
      },
      30);
  done = true;
  alive.join();
  EXPECT_TRUE(regcache::testing::ChildOk(status))
      << regcache::testing::Describe(status);
  EXPECT_EQ(Stats(c).regions, 4u);
  regcache_put(c, held);
}

// The same while other threads miss and evict: at the fork some are between
// their registration (counted) and its publication under the mutex the fork
// holds, or between a victim's removal and its deregistration (not yet
// uncounted). Those registrations are the parent's too: the child counts 0
// regions and 0 bytes, not the parent's in-flight ones.
TEST_F(CacheTest, RegionsCountInForkChildWhileThreadsMiss) {
  regcache_t *c = CreateWith(8, SIZE_MAX, 0);
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (size_t t = 0; t < 2; ++t) {
    ts.emplace_back([&, t] {
      for (size_t i = 0; !stop.load(); ++i) {
        regcache_region_t *r = nullptr;
        if (regcache_get(c, Page(t * 256 + 2 * (i % 64)), kPage, 0, &r) == 0)
          regcache_put(c, r);
      }
    });
  }
  std::string why;
  const int failed = regcache::testing::FirstFailingChild(
      100,
      [&] {
        const regcache_stats_t s = Stats(c);
        return s.regions == 0 && s.bytes == 0 ? 0 : 1;
      },
      30, &why);
  stop = true;
  for (auto &t : ts) t.join();
  EXPECT_EQ(failed, -1) << "child " << failed << ": " << why;
}

// ---------------------------------------------------------------- host driver
class HostCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    ASSERT_EQ(regcache_driver_host_open(&drv_), 0);
    EXPECT_STREQ(regcache_driver_name(drv_), "host");
    ASSERT_EQ(regcache_create(drv_, nullptr, &c_), 0);
  }
  void TearDown() override {
    regcache_destroy(c_);
    regcache_driver_close(drv_);
  }
  regcache_driver_t *drv_ = nullptr;
  regcache_t *c_ = nullptr;
};

TEST_F(HostCacheTest, UnmappedIsEfaultReadOnlyIsEacces) {
  void *p =
      mmap(nullptr, 4 * kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get(c_, p, kPage, REGCACHE_ACCESS_LOCAL_WRITE, &r),
            -EACCES);
  EXPECT_EQ(regcache_get(c_, p, kPage, REGCACHE_ACCESS_REMOTE_WRITE, &r),
            -EACCES);
  ASSERT_EQ(regcache_get(c_, p, kPage, REGCACHE_ACCESS_REMOTE_READ, &r), 0);
  // ACCESS_POLICY=all widens only writable memory: read-only keeps its flags.
  EXPECT_EQ(regcache_region_access(r), REGCACHE_ACCESS_REMOTE_READ);
  regcache_put(c_, r);
  r = nullptr;
  ASSERT_EQ(regcache_notify_unmapped(p, 4 * kPage), 0);
  munmap(p, 4 * kPage);
  EXPECT_EQ(regcache_get(c_, p, kPage, 0, &r), -EFAULT);
  EXPECT_EQ(r, nullptr);
  regcache_stats_t s;
  regcache_get_stats(c_, &s);
  EXPECT_EQ(s.failures, 3u);
}

TEST_F(HostCacheTest, MemlockLimitEvictsAndRetries) {
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &old), 0);
  size_t base = regcache::host::PinnedBytes();
  struct rlimit lim = old;
  lim.rlim_cur = base + 8 * kPage;
  ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &lim), 0);
  char *p =
      static_cast<char *>(mmap(nullptr, 32 * kPage, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(c_, p, 6 * kPage, REGCACHE_ACCESS_LOCAL_WRITE, &r), 0);
  regcache_put(c_, r);
  // 6 pinned + 6 more > 8: the driver says -ENOMEM, the cache evicts and
  // retries.
  ASSERT_EQ(regcache_get(c_, p + 16 * kPage, 6 * kPage,
                         REGCACHE_ACCESS_LOCAL_WRITE, &r),
            0);
  regcache_stats_t s;
  regcache_get_stats(c_, &s);
  EXPECT_EQ(s.evictions, 1u);
  regcache_region_t *r2 = nullptr;
  EXPECT_EQ(regcache_get(c_, p, 6 * kPage, 0, &r2),
            -ENOMEM);  // the held one stays
  regcache_put(c_, r);
  ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &old), 0);
  regcache_flush(c_);
  ASSERT_EQ(regcache_notify_unmapped(p, 32 * kPage), 0);
  munmap(p, 32 * kPage);
}

}  // namespace

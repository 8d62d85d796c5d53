// SPDX-License-Identifier: BSD-3-Clause
// The transport calls of <regcache/regcache.h> (issue 18) against the test
// driver: regcache_find (never registers), regcache_get_flags with
// REGCACHE_GET_NO_CACHE (private registration, deregistered at put), per-region
// host storage, and regcache_invalidate (revokes now, held regions live until
// their last put). Each also under concurrent use. Events come through the
// explicit source only (MONITOR=none), so nothing here depends on libc
// patching.
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "regcache/page.h"
#include "tests/common/cache_fixture.h"
#include "tests/regcache/test_driver.h"

namespace {

using regcache::testing::NewTestDriver;
using regcache::testing::TestDriver;

const size_t kPage = regcache::page::Size();

uint64_t Key(const regcache_region_t *r) {
  return reinterpret_cast<uintptr_t>(regcache_region_handle(r));
}

class TransportApiTest : public regcache::testing::CacheFixture {
 protected:
  TransportApiTest() : CacheFixture(256 * kPage) {}
  // The one cache of a test, without merging; host_bytes of host storage per
  // region.
  void Create(size_t host_bytes = 0, size_t max_regions = 1024) {
    regcache_params_t p = NoMergeParams(max_regions, SIZE_MAX);
    if (host_bytes) {
      p.field_mask |= REGCACHE_PARAM_HOST_DATA_BYTES;
      p.host_data_bytes = host_bytes;
    }
    cache_ = CacheFixture::Create(&p);
    ASSERT_NE(cache_, nullptr);
  }
  regcache_region_t *Get(const void *a, size_t len, unsigned flags = 0) {
    regcache_region_t *r = nullptr;
    int rc = regcache_get_flags(cache_, a, len, 0, flags, &r);
    EXPECT_EQ(rc, 0) << regcache_strerror(rc);
    return r;
  }
  uint64_t LastKey() {
    std::lock_guard<std::mutex> g(td_->mu);
    return td_->next_key;
  }
  regcache_stats_t Stats() { return CacheFixture::Stats(cache_); }

  regcache_t *cache_ = nullptr;
};

// ------------------------------------------------------------------ find
TEST_F(TransportApiTest, FindNeverRegisters) {
  Create();
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_find(cache_, Page(0), kPage, 0, &r), -ENOENT);
  EXPECT_EQ(r, nullptr);
  EXPECT_EQ(td_->Registers(), 0u);
  regcache_region_t *g = Get(Page(0), 2 * kPage);
  regcache_put(cache_, g);
  // Inside the cached region: a hit with a reference, same region.
  ASSERT_EQ(regcache_find(cache_, Page(1), 10, 0, &r), 0);
  EXPECT_EQ(r, g);
  // Not covered (extends past it), or more access than registered: -ENOENT.
  regcache_region_t *r2 = nullptr;
  EXPECT_EQ(regcache_find(cache_, Page(1), 2 * kPage, 0, &r2), -ENOENT);
  EXPECT_EQ(td_->Registers(), 1u);
  // The reference holds the region across an invalidation of its memory.
  ASSERT_EQ(regcache_notify_unmapped(Page(0), kPage), 0);
  EXPECT_TRUE(td_->IsLive(Key(r)));
  EXPECT_EQ(regcache_find(cache_, Page(0), kPage, 0, &r2), -ENOENT);
  regcache_put(cache_, r);
  EXPECT_FALSE(td_->IsLive(Key(r)));
  EXPECT_EQ(Stats().hits, 1u);
  EXPECT_EQ(Stats().misses, 1u);
}

TEST_F(TransportApiTest, FindBadInput) {
  Create();
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_find(nullptr, Page(0), 1, 0, &r), -EINVAL);
  EXPECT_EQ(regcache_find(cache_, Page(0), 0, 0, &r), -EINVAL);
  EXPECT_EQ(regcache_find(cache_, Page(0), 1, 0x100, &r), -EINVAL);
  EXPECT_EQ(regcache_find(cache_, Page(0), 1, 0, nullptr), -EINVAL);
  EXPECT_EQ(regcache_find(cache_, reinterpret_cast<void *>(UINTPTR_MAX - 8), 64,
                          0, &r),
            -EINVAL);
}

// ------------------------------------------------------------------ no-cache
TEST_F(TransportApiTest, NoCacheRegistersForThisUseOnly) {
  Create();
  regcache_region_t *c = Get(Page(0), kPage);  // a cached one on the same page
  regcache_region_t *a = Get(Page(0), kPage, REGCACHE_GET_NO_CACHE);
  regcache_region_t *b = Get(Page(0), kPage, REGCACHE_GET_NO_CACHE);
  ASSERT_TRUE(a && b && c);
  EXPECT_NE(a, c);
  EXPECT_NE(a, b);
  EXPECT_NE(Key(a), Key(b));
  EXPECT_EQ(td_->Registers(), 3u);
  EXPECT_EQ(regcache_region_addr(a), Page(0));
  EXPECT_EQ(regcache_region_length(a), kPage);
  // Exactly the requested access, no widening.
  EXPECT_EQ(regcache_region_access(a), 0u);
  regcache_put(cache_, c);
  // Never found, never a hit.
  regcache_region_t *f = nullptr;
  ASSERT_EQ(regcache_find(cache_, Page(0), kPage, 0, &f), 0);
  EXPECT_EQ(f, c);
  regcache_put(cache_, f);
  const uint64_t ka = Key(a), kb = Key(b);
  regcache_put(cache_, a);
  EXPECT_FALSE(td_->IsLive(ka));  // deregistered at its put
  EXPECT_TRUE(td_->IsLive(kb));
  regcache_put(cache_, b);
  EXPECT_FALSE(td_->IsLive(kb));
  EXPECT_TRUE(td_->IsLive(Key(c)));  // the cached one stays
  EXPECT_EQ(td_->Live(), 1u);
}

TEST_F(TransportApiTest, NoCacheFlagsAndErrors) {
  Create();
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get_flags(cache_, Page(0), kPage, 0, 0x2, &r), -EINVAL);
  EXPECT_EQ(
      regcache_get_flags(cache_, Page(0), 0, 0, REGCACHE_GET_NO_CACHE, &r),
      -EINVAL);
  EXPECT_EQ(
      regcache_get_flags(nullptr, Page(0), 1, 0, REGCACHE_GET_NO_CACHE, &r),
      -EINVAL);
  EXPECT_EQ(r, nullptr);
  // flags 0 is regcache_get: cached.
  r = Get(Page(3), kPage, 0);
  regcache_put(cache_, r);
  EXPECT_EQ(td_->Live(), 1u);
  // A driver failure comes back and leaves nothing.
  td_->fail_next = 1;
  td_->fail_errno = -EFAULT;
  EXPECT_EQ(
      regcache_get_flags(cache_, Page(5), kPage, 0, REGCACHE_GET_NO_CACHE, &r),
      -EFAULT);
  EXPECT_EQ(td_->Live(), 1u);
}

TEST_F(TransportApiTest, NoCacheRetriesWhenTheMemoryChangesWhileRegistering) {
  Create();
  int calls = 0;
  td_->on_register = [&](void *a, size_t len) {
    if (calls++ == 0) regcache_notify_unmapped(a, len);
  };
  regcache_region_t *r = Get(Page(0), kPage, REGCACHE_GET_NO_CACHE);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(calls, 2);  // the first registration may map old pages: redone
  EXPECT_EQ(td_->Live(), 1u);
  EXPECT_EQ(Stats().retries, 1u);
  regcache_put(cache_, r);
  EXPECT_EQ(td_->Live(), 0u);
}

TEST_F(TransportApiTest, DestroyDeregistersHeldNoCacheRegions) {
  Create();
  regcache_region_t *r = Get(Page(0), kPage, REGCACHE_GET_NO_CACHE);
  ASSERT_NE(r, nullptr);
  Destroy(cache_);
  cache_ = nullptr;
  EXPECT_EQ(td_->Live(), 0u);
}

// ------------------------------------------------------------------ host data
TEST_F(TransportApiTest, HostDataIsAlignedZeroedAndPerRegion) {
  Create(100);  // rounded up to 128
  regcache_region_t *a = Get(Page(0), kPage);
  regcache_region_t *b = Get(Page(2), kPage);
  auto *ha = static_cast<unsigned char *>(regcache_region_host_data(a));
  auto *hb = static_cast<unsigned char *>(regcache_region_host_data(b));
  ASSERT_TRUE(ha && hb);
  EXPECT_NE(ha, hb);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ha) % 64, 0u);
  for (int i = 0; i < 128; ++i) ASSERT_EQ(ha[i], 0) << i;
  std::memset(ha, 0xab, 128);
  regcache_put(cache_, a);
  // A hit sees what the host stored.
  regcache_region_t *a2 = Get(Page(0), kPage);
  EXPECT_EQ(a2, a);
  EXPECT_EQ(regcache_region_host_data(a2), ha);
  EXPECT_EQ(ha[127], 0xab);
  regcache_put(cache_, a2);
  // A new registration of the same memory (after an invalidation) starts
  // zeroed, also when the slab hands back the same slot.
  ASSERT_EQ(regcache_invalidate(cache_, Page(0), kPage), 1);
  regcache_region_t *a3 = Get(Page(0), kPage);
  auto *h3 = static_cast<unsigned char *>(regcache_region_host_data(a3));
  ASSERT_NE(h3, nullptr);
  for (int i = 0; i < 128; ++i) ASSERT_EQ(h3[i], 0) << i;
  // No-cache regions have it too.
  regcache_region_t *n = Get(Page(4), kPage, REGCACHE_GET_NO_CACHE);
  EXPECT_NE(regcache_region_host_data(n), nullptr);
  regcache_put(cache_, n);
  regcache_put(cache_, a3);
  regcache_put(cache_, b);
  EXPECT_EQ(regcache_region_host_data(nullptr), nullptr);
}

TEST_F(TransportApiTest, NoHostDataByDefaultAndBoundChecked) {
  Create();
  regcache_region_t *a = Get(Page(0), kPage);
  EXPECT_EQ(regcache_region_host_data(a), nullptr);
  regcache_put(cache_, a);
  regcache_params_t p = {};
  p.field_mask = REGCACHE_PARAM_HOST_DATA_BYTES;
  p.host_data_bytes = REGCACHE_HOST_DATA_MAX + 1;
  regcache_t *c = nullptr;
  EXPECT_EQ(regcache_create(drv_, &p, &c), -EINVAL);
  EXPECT_EQ(c, nullptr);
}

// ------------------------------------------------------------------ invalidate
TEST_F(TransportApiTest, InvalidateRevokesNowHeldOnesAtTheirLastPut) {
  Create();
  regcache_region_t *held = Get(Page(0), kPage);
  regcache_region_t *unused = Get(Page(2), kPage);
  regcache_region_t *outside = Get(Page(10), kPage);
  regcache_put(cache_, unused);
  regcache_put(cache_, outside);
  const uint64_t kh = Key(held), ku = Key(unused);
  // Page granularity: a byte in each page is enough.
  ASSERT_EQ(regcache_invalidate(cache_, Page(0) + 5, 2 * kPage), 2);
  EXPECT_FALSE(td_->IsLive(ku));  // unused: deregistered before returning
  EXPECT_TRUE(td_->IsLive(kh));   // held: keys stay valid
  EXPECT_EQ(regcache_region_rkey(held), kh << 8);
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_find(cache_, Page(0), kPage, 0, &r), -ENOENT);
  // Hits stop at once, also the lock-free one (the front table knows both).
  r = Get(Page(0), kPage);
  EXPECT_NE(Key(r), kh);
  regcache_put(cache_, r);
  regcache_put(cache_, held);
  EXPECT_FALSE(td_->IsLive(kh));  // its last put
  r = Get(Page(10), kPage);       // untouched
  EXPECT_EQ(r, outside);
  regcache_put(cache_, r);
  EXPECT_EQ(regcache_invalidate(cache_, Page(100), kPage), 0);
  EXPECT_EQ(regcache_invalidate(cache_, Page(0), 0), -EINVAL);
  EXPECT_EQ(regcache_invalidate(nullptr, Page(0), 1), -EINVAL);
  EXPECT_EQ(
      regcache_invalidate(cache_, reinterpret_cast<void *>(UINTPTR_MAX), 2),
      -EINVAL);
}

// Negative control of the above: without the invalidate the same sequence hits
// the old registration (so the test can tell).
TEST_F(TransportApiTest, WithoutInvalidateTheOldKeyKeepsHitting) {
  Create();
  regcache_region_t *a = Get(Page(0), kPage);
  const uint64_t k = Key(a);
  regcache_put(cache_, a);
  regcache_region_t *r = Get(Page(0), kPage);
  EXPECT_EQ(Key(r), k);
  regcache_put(cache_, r);
}

// ------------------------------------------------------------------ together,
// concurrently: getters (cached and no-cache) and finders on 16 pages while one
// thread keeps invalidating them. Every region handed out must be registered
// while held; after an invalidate returns, a find may only return a region
// registered after the invalidate began; no-cache regions are never shared.
TEST_F(TransportApiTest, ConcurrentFindNoCacheInvalidate) {
  Create(64);
  td_->record_calls = false;
  constexpr int kPages = 16;
  std::atomic<bool> stop{false};
  std::atomic<long> bad{0}, ops{0}, stale_finds{0};
  auto worker = [&](int id) {
    unsigned seed = 12345u + id;
    while (!stop.load(std::memory_order_relaxed)) {
      const int pg = static_cast<int>(rand_r(&seed) % kPages);
      const bool find = rand_r(&seed) % 3 == 0;
      const unsigned flags =
          (!find && rand_r(&seed) % 4 == 0) ? REGCACHE_GET_NO_CACHE : 0;
      regcache_region_t *r = nullptr;
      int rc = find ? regcache_find(cache_, Page(pg), kPage, 0, &r)
                    : regcache_get_flags(cache_, Page(pg), kPage, 0, flags, &r);
      if (rc == -ENOENT) continue;
      if (rc != 0) {
        ADD_FAILURE() << "rc " << rc;
        ++bad;
        continue;
      }
      auto *h = static_cast<std::atomic<long> *>(regcache_region_host_data(r));
      if (flags & REGCACHE_GET_NO_CACHE) {
        // Private: nobody else writes its host storage.
        if (h->exchange(id + 1) != 0) {
          ADD_FAILURE() << "host data of a no-cache region not private";
          ++bad;
        }
      }
      if (!td_->IsLive(Key(r)) || regcache_region_addr(r) != Page(pg)) {
        ADD_FAILURE() << "not live or wrong address, flags " << flags;
        ++bad;
      }
      std::this_thread::yield();
      if (!td_->IsLive(Key(r))) {  // still registered while held
        ADD_FAILURE() << "deregistered while held, flags " << flags;
        ++bad;
      }
      if ((flags & REGCACHE_GET_NO_CACHE) && h->load() != id + 1) {
        ADD_FAILURE() << "host data of a no-cache region changed";
        ++bad;
      }
      regcache_put(cache_, r);
      ++ops;
    }
  };
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) ts.emplace_back(worker, i);
  // At least 3000 rounds and 2000 worker operations (bounded: 10 s).
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int round = 0; (round < 3000 || ops.load() < 2000) &&
                      std::chrono::steady_clock::now() < deadline;
       ++round) {
    const int pg = round % kPages;
    const uint64_t before = LastKey();
    int n = regcache_invalidate(cache_, Page(pg), kPage);
    if (n < 0) ++bad;
    regcache_region_t *r = nullptr;
    if (regcache_find(cache_, Page(pg), kPage, 0, &r) == 0) {
      if (Key(r) <= before) ++stale_finds;
      regcache_put(cache_, r);
    }
    if (round % 64 == 0) std::this_thread::yield();
  }
  stop = true;
  for (auto &t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(stale_finds.load(), 0);
  EXPECT_GE(ops.load(), 2000);
  ASSERT_EQ(regcache_flush(cache_), 0);
  EXPECT_EQ(td_->Live(), 0u);  // nothing leaked: held ones went at their put
  EXPECT_EQ(td_->bad_deregs, 0);
}

}  // namespace

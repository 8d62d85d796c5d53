// SPDX-License-Identifier: BSD-3-Clause
// Every event path: after munmap, madvise(DONTNEED), free, realloc or a brk
// trim of cached memory, the next get on that address is a miss and the host
// driver's pagemap check says the new registration is fresh (while a
// registration held across the event is stale: a NIC would write to the old
// pages).
//
// Built once per event source (REGCACHE_TEST_SOURCE): "explicit" calls
// regcache_notify_unmapped() before each event; "patch" and "uffd" rely on the
// source and skip when it cannot be installed here.
#include <gtest/gtest.h>
#include <malloc.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "drivers/host/host_driver.h"
#include "regcache/page.h"

#ifndef REGCACHE_TEST_SOURCE
#define REGCACHE_TEST_SOURCE "explicit"
#endif

namespace {

using regcache::host::CheckFrames;
using regcache::host::FrameCheck;
using regcache::host::FrameCheckName;

const size_t kPage = regcache::page::Size();
const std::string kMode = REGCACHE_TEST_SOURCE;
const bool kExplicit = kMode == "explicit";

class CacheEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(
        regcache_config_set("MONITOR", kExplicit ? "none" : kMode.c_str()), 0);
    // madvise(DONTNEED) fails with EINVAL on mlock'ed memory (a NIC's pin does
    // not stop it): that test uses the host driver without mlock.
    const bool dontneed =
        std::string(
            ::testing::UnitTest::GetInstance()->current_test_info()->name()) ==
        "MadviseDontneed";
    drv_ = new regcache_driver(regcache::host::NewHostDriver(!dontneed));
    int rc = regcache_create(drv_, nullptr, &c_);
    if (rc != 0)
      GTEST_SKIP() << "source " << kMode
                   << " unavailable: " << regcache_strerror(rc);
    if (!kExplicit && kMode != regcache_notifier_source())
      GTEST_SKIP() << "source " << kMode << " not active ("
                   << regcache_notifier_source() << ")";
  }
  void TearDown() override {
    if (c_) regcache_destroy(c_);
    regcache_driver_close(drv_);
  }

  // Explicit source: the host's hook tells us before the memory changes.
  static void Before(const void *p, size_t len) {
    if (kExplicit) {
      ASSERT_EQ(regcache_notify_unmapped(p, len), 0);
    }
  }
  regcache_region_t *Get(const void *p, size_t len) {
    regcache_region_t *r = nullptr;
    int rc = regcache_get(c_, p, len, REGCACHE_ACCESS_LOCAL_WRITE, &r);
    EXPECT_EQ(rc, 0) << regcache_strerror(rc);
    return r;
  }
  uint64_t Misses() {
    regcache_stats_t s;
    regcache_get_stats(c_, &s);
    return s.misses;
  }
  // Caches [p, p+len), returns a reference held across the event.
  regcache_region_t *CacheAndHold(void *p, size_t len) {
    std::memset(p, 1, len);
    regcache_put(c_, Get(p, len));
    regcache_region_t *held = Get(p, len);
    EXPECT_EQ(CheckFrames(regcache_region_handle(held)) == FrameCheck::kStale,
              false);
    return held;
  }
  // After the event: a miss, a fresh registration; the held one is stale if it
  // moved.
  void ExpectMissAndFresh(void *p, size_t len, regcache_region_t *held,
                          bool expect_stale) {
    std::memset(p, 2, len);
    const uint64_t misses = Misses();
    regcache_region_t *r = Get(p, len);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(Misses(), misses + 1) << "the get after the event must be a miss";
    EXPECT_NE(r, held);
    if (regcache::host::FramesVisible()) {
      EXPECT_EQ(CheckFrames(regcache_region_handle(r)), FrameCheck::kFresh);
      if (expect_stale) {
        EXPECT_EQ(CheckFrames(regcache_region_handle(held)), FrameCheck::kStale)
            << "control: the held registration maps the old pages";
      }
    }
    regcache_put(c_, r);
    regcache_put(c_, held);
  }

  regcache_driver_t *drv_ = nullptr;
  regcache_t *c_ = nullptr;
};

TEST_F(CacheEventsTest, Munmap) {
  const size_t len = 8 * kPage;
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  regcache_region_t *held = CacheAndHold(p, len);
  Before(p, len);
  ASSERT_EQ(munmap(p, len), 0);
  void *q = mmap(p, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  ASSERT_EQ(q, p) << "could not map the same address again";
  ExpectMissAndFresh(q, len, held, true);
  Before(q, len);
  munmap(q, len);
}

TEST_F(CacheEventsTest, MadviseDontneed) {
  const size_t len = 8 * kPage;
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  regcache_region_t *held = CacheAndHold(p, len);
  Before(p, len);
  ASSERT_EQ(madvise(p, len, MADV_DONTNEED), 0);
  ExpectMissAndFresh(p, len, held, true);
  Before(p, len);
  munmap(p, len);
}

TEST_F(CacheEventsTest, FreeThenMalloc) {
  const size_t len = 1 << 20;  // above the mmap threshold: free unmaps it
  char *p = static_cast<char *>(std::malloc(len));
  ASSERT_NE(p, nullptr);
  const uintptr_t old = reinterpret_cast<uintptr_t>(p);
  regcache_region_t *held = CacheAndHold(p, len);
  Before(p, len);
  std::free(p);
  char *q = static_cast<char *>(std::malloc(len));
  ASSERT_NE(q, nullptr);
  ExpectMissAndFresh(q, len, held, reinterpret_cast<uintptr_t>(q) == old);
  Before(q, len);
  std::free(q);
}

TEST_F(CacheEventsTest, Realloc) {
  const size_t len = 1 << 20;
  char *p = static_cast<char *>(std::malloc(len));
  ASSERT_NE(p, nullptr);
  regcache_region_t *held = CacheAndHold(p, len);
  Before(p, len);
  char *q = static_cast<char *>(std::realloc(p, 4 * len));
  ASSERT_NE(q, nullptr);
  // Whether realloc moved the block or grew it in place, the old range was
  // invalidated.
  ExpectMissAndFresh(q, len, held, false);
  Before(q, 4 * len);
  std::free(q);
}

TEST_F(CacheEventsTest, BrkTrim) {
  const size_t len = 512 << 10;
  mallopt(M_MMAP_THRESHOLD, 4 << 20);  // from the brk heap
  mallopt(M_TRIM_THRESHOLD, 64 << 10);
  char *p = static_cast<char *>(std::malloc(len));
  ASSERT_NE(p, nullptr);
  const uintptr_t old = reinterpret_cast<uintptr_t>(p);
  void *top = sbrk(0);
  if (p + len > static_cast<char *>(top) ||
      p < static_cast<char *>(top) - (8 << 20)) {
    std::free(p);
    GTEST_SKIP()
        << "malloc does not use the brk heap here (sanitizer allocator?)";
  }
  // Whole pages inside the block.
  char *a = reinterpret_cast<char *>(
      (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1));
  size_t alen = (len - (a - p)) & ~(kPage - 1);
  alen -= kPage;
  regcache_region_t *held = CacheAndHold(a, alen);
  Before(a, static_cast<char *>(top) - a);
  std::free(p);
  if (sbrk(0) >= top) {
    regcache_put(c_, held);
    GTEST_SKIP() << "free did not trim the heap";
  }
  char *q = static_cast<char *>(std::malloc(len));
  ASSERT_EQ(reinterpret_cast<uintptr_t>(q), old)
      << "the heap grew back elsewhere";
  // No stale control here: the kernel tends to hand the just-freed frames
  // straight back to the regrown heap, so the held registration may well map
  // the same frames again.
  ExpectMissAndFresh(a, alen, held, false);
  std::free(q);
}

}  // namespace

/* SPDX-License-Identifier: BSD-3-Clause */
// tests/common/cache_fixture.h - the gtest fixture of the cache's tests: an
// anonymous arena to register, the test driver (tests/regcache/test_driver.h)
// behind a C handle, and every cache a test creates, destroyed at TearDown.
// MONITOR=none: events come only from the explicit source, so a test built on
// it does not depend on libc patching.
#ifndef REGCACHE_TESTS_COMMON_CACHE_FIXTURE_H_
#define REGCACHE_TESTS_COMMON_CACHE_FIXTURE_H_

#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "regcache/page.h"
#include "tests/regcache/test_driver.h"

namespace regcache::testing {

class CacheFixture : public ::testing::Test {
 protected:
  // The arena is reserved (MAP_NORESERVE): only the pages a test touches or
  // registers cost memory.
  explicit CacheFixture(size_t arena_bytes = size_t{64} << 20)
      : arena_len_(arena_bytes) {}

  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    void *p = mmap(nullptr, arena_len_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    arena_ = static_cast<char *>(p);
    drv_ = NewTestDriver(&td_);
  }
  void TearDown() override {
    for (auto *c : caches_) regcache_destroy(c);
    caches_.clear();
    regcache_config_set("EVICTION", "adaptive");
    regcache_driver_close(drv_);
    if (arena_) munmap(arena_, arena_len_);
  }

  // A cache over drv (default: the test driver), destroyed at TearDown.
  regcache_t *Create(const regcache_params_t *p = nullptr,
                     regcache_driver_t *drv = nullptr) {
    regcache_t *c = nullptr;
    EXPECT_EQ(regcache_create(drv ? drv : drv_, p, &c), 0);
    if (c) caches_.push_back(c);
    return c;
  }
  regcache_t *CreateWith(size_t max_regions, size_t max_bytes, size_t merge,
                         uint64_t flags = 0) {
    regcache_params_t p = {};
    p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MAX_BYTES |
                   REGCACHE_PARAM_MERGE_MAX_BYTES | REGCACHE_PARAM_FLAGS;
    p.max_regions = max_regions;
    p.max_bytes = max_bytes;
    p.merge_max_bytes = merge;
    p.flags = flags;
    return Create(&p);
  }
  // Limits set, merging off: each get gets its own region.
  static regcache_params_t NoMergeParams(size_t max_regions, size_t max_bytes) {
    regcache_params_t p = {};
    p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MAX_BYTES |
                   REGCACHE_PARAM_FLAGS;
    p.max_regions = max_regions;
    p.max_bytes = max_bytes;
    p.flags = REGCACHE_FLAG_NO_MERGE;
    return p;
  }
  // Destroys c before TearDown (a test of destruction itself).
  void Destroy(regcache_t *c) {
    regcache_destroy(c);
    caches_.erase(std::find(caches_.begin(), caches_.end(), c));
  }

  char *Page(size_t i) { return arena_ + i * page::Size(); }
  regcache_region_t *Get(regcache_t *c, const void *a, size_t len,
                         unsigned acc = 0) {
    regcache_region_t *r = nullptr;
    int rc = regcache_get(c, a, len, acc, &r);
    EXPECT_EQ(rc, 0) << regcache_strerror(rc);
    return r;
  }
  regcache_stats_t Stats(regcache_t *c) {
    regcache_stats_t s;
    EXPECT_EQ(regcache_get_stats(c, &s), 0);
    return s;
  }

  char *arena_ = nullptr;
  size_t arena_len_;
  TestDriver *td_ = nullptr;
  regcache_driver_t *drv_ = nullptr;
  std::vector<regcache_t *> caches_;
};

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_COMMON_CACHE_FIXTURE_H_

// SPDX-License-Identifier: BSD-3-Clause
// tests/common/stale_oracle_test.cc - the stale oracle itself: fresh after
// registration, stale once the program's addresses map other pages (the
// registration still holds the old ones), in both modes.
#include "tests/common/stale_oracle.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>

namespace regcache::testing {
namespace {

constexpr size_t kLen = 64 * 4096;

// Registers directly through the driver's callbacks (no cache, no notifier):
// nothing invalidates, so the oracle alone must tell fresh from stale.
class OracleTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) o_.ForceNonceMode();
    ASSERT_NE(o_.driver(), nullptr);
    ASSERT_EQ(regcache_create(o_.driver(), nullptr, &cache_), 0);
    mem_ = static_cast<char *>(mmap(nullptr, kLen, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(mem_, MAP_FAILED);
    std::memset(mem_, 1, kLen);
  }
  void TearDown() override {
    regcache_destroy(cache_);
    munmap(mem_, kLen);
  }
  StaleOracle o_;
  regcache_t *cache_ = nullptr;
  char *mem_ = nullptr;
};

TEST_P(OracleTest, FreshAfterRegistration) {
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(cache_, mem_, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &r),
            0);
  EXPECT_FALSE(o_.IsStale(r));
  regcache_put(cache_, r);
}

TEST_P(OracleTest, DetectsDontneedBehindTheCachesBack) {
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(cache_, mem_, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &r),
            0);
  // The oracle's reference keeps the old frames; the program gets new ones.
  // Held region: the cache's own invalidation does not change what r holds.
  ASSERT_EQ(madvise(mem_ + 4096, 4096, MADV_DONTNEED), 0);
  mem_[4096] = 2;
  EXPECT_TRUE(o_.IsStale(r));
  regcache_put(cache_, r);
}

TEST_P(OracleTest, DetectsRemapAtSameAddress) {
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(cache_, mem_, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &r),
            0);
  void *p = mmap(mem_, kLen, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ASSERT_EQ(p, mem_);
  std::memset(mem_, 3, kLen);
  EXPECT_TRUE(o_.IsStale(r));
  regcache_put(cache_, r);
}

TEST_P(OracleTest, ReadOnlyMemoryWriteAccessIsEacces) {
  ASSERT_EQ(mprotect(mem_, kLen, PROT_READ), 0);
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get(cache_, mem_, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &r),
            -EACCES);
  ASSERT_EQ(mprotect(mem_, kLen, PROT_READ | PROT_WRITE), 0);
}
INSTANTIATE_TEST_SUITE_P(Modes, OracleTest, ::testing::Bool(),
                         [](const auto &i) {
                           return i.param ? "Nonce" : "Frames";
                         });
}  // namespace
}  // namespace regcache::testing

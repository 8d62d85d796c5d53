// SPDX-License-Identifier: BSD-3-Clause
// The header-only C++ API (regcache.hpp): RAII regions, Result/Status, a Driver
// written in C++ adapted through regcache_driver_custom_open. Uses only
// installed headers.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>
#include <regcache/regcache.hpp>

#include <atomic>
#include <cerrno>
#include <memory>

namespace {

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

class CountingDriver : public regcache::Driver {
 public:
  int Register(void *, size_t, unsigned, regcache::Registration *out) override {
    if (fail.exchange(0)) return -ENOMEM;
    int k = ++regs;
    out->handle = reinterpret_cast<void *>(static_cast<uintptr_t>(k));
    out->lkey = static_cast<uint32_t>(k);
    out->rkey = static_cast<uint64_t>(k) << 4;
    return 0;
  }
  int Deregister(void *) override {
    ++deregs;
    return 0;
  }
  std::atomic<int> regs{0}, deregs{0}, fail{0};
};

class CppApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    mem_ = static_cast<char *>(mmap(nullptr, 16 * kPage, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(mem_, MAP_FAILED);
  }
  void TearDown() override { munmap(mem_, 16 * kPage); }
  char *mem_ = nullptr;
};

TEST_F(CppApiTest, HostDriverRegionPutsItselfBack) {
  auto drv = regcache::DriverHandle::Host();
  ASSERT_TRUE(drv.ok()) << drv.status().message();
  EXPECT_STREQ(drv->name(), "host");
  auto cache = regcache::Cache::Create(*drv);
  ASSERT_TRUE(cache.ok()) << cache.status().message();
  {
    auto r = cache->Get(mem_, 100, REGCACHE_ACCESS_LOCAL_WRITE);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->addr(), mem_);
    EXPECT_GE(r->length(), 100u);
    EXPECT_NE(r->lkey(), 0u);
    regcache::Region moved = std::move(*r);
    EXPECT_FALSE(static_cast<bool>(*r));
    EXPECT_TRUE(static_cast<bool>(moved));
  }  // put here
  auto again = cache->Get(mem_, 10);
  ASSERT_TRUE(again.ok());
  auto st = cache->Stats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->hits, 1u);
  EXPECT_EQ(st->misses, 1u);
  again->Reset();
  EXPECT_TRUE(cache->Flush().ok());
  EXPECT_EQ(cache->Stats()->regions, 0u);
}

TEST_F(CppApiTest, CachingSafetyIsAResult) {
  // MONITOR=none (SetUp) is the host's declaration: caching is safe.
  auto safe = regcache::CachingSafe();
  ASSERT_TRUE(safe.ok());
  EXPECT_TRUE(*safe);
  EXPECT_TRUE(regcache::SetExternalUnmapReporting(true).ok());
  EXPECT_TRUE(regcache::SetExternalUnmapReporting(false).ok());
}

TEST_F(CppApiTest, ErrorsAreResults) {
  auto drv = regcache::DriverHandle::Host();
  auto cache = regcache::Cache::Create(*drv);
  ASSERT_TRUE(cache.ok());
  auto bad = cache->Get(mem_, 0);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), -EINVAL);
  regcache::Params p;
  p.flags(0x80);
  auto badc = regcache::Cache::Create(*drv, &p);
  EXPECT_EQ(badc.status().code(), -EINVAL);
}

TEST_F(CppApiTest, CustomDriverInCpp) {
  auto impl = std::make_shared<CountingDriver>();
  auto drv = regcache::DriverHandle::Custom(impl);
  ASSERT_TRUE(drv.ok()) << drv.status().message();
  regcache::Params p;
  p.max_regions(1).merge_max_bytes(0).name("cpp");
  auto cache = regcache::Cache::Create(*drv, &p);
  ASSERT_TRUE(cache.ok()) << cache.status().message();
  {
    auto a = cache->Get(mem_, kPage);
    auto b = cache->Get(mem_ + 4 * kPage, kPage);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->lkey(), 1u);
    EXPECT_EQ(b->rkey(), 2u << 4);
  }
  EXPECT_EQ(impl->regs, 2);
  EXPECT_EQ(impl->deregs, 1);  // max_regions 1: one evicted at its put
  impl->fail = 1;              // ENOMEM once: evict-and-retry succeeds
  {
    auto c = cache->Get(mem_ + 8 * kPage, kPage);
    EXPECT_TRUE(c.ok()) << c.status().message();
  }
  // The cache keeps the Driver object alive even if the handle goes first.
  drv = regcache::DriverHandle();
  auto d = cache->Get(mem_ + 12 * kPage, kPage);
  EXPECT_TRUE(d.ok());
  d->Reset();
  *cache = regcache::Cache();
  EXPECT_EQ(impl->regs.load(), impl->deregs.load());
}

}  // namespace

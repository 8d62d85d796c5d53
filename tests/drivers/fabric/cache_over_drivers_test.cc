// SPDX-License-Identifier: BSD-3-Clause
// The cache's public API over real drivers: the custom driver (host callbacks)
// and the libfabric driver on tcp and shm. Checks what only a real driver
// shows: the region's keys and descriptor are the driver's and move data, every
// registration is deregistered, and the driver's -ENOMEM at its MR limit makes
// the cache evict and retry.
#include <gtest/gtest.h>
#include <regcache/fabric.h>
#include <regcache/regcache.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "tests/drivers/fabric/fabric_test_util.h"

namespace regcache {
namespace {

using testing::FabricStack;

// Host callbacks for the custom driver: count live registrations.
struct Host {
  std::atomic<int> live{0}, regs{0};
  static int Reg(void *ctx, void *, size_t, unsigned, void **handle_p,
                 uint32_t *lkey_p, uint64_t *rkey_p, void **) {
    auto *h = static_cast<Host *>(ctx);
    int n = ++h->regs;
    ++h->live;
    *handle_p = reinterpret_cast<void *>(static_cast<uintptr_t>(n));
    *lkey_p = static_cast<uint32_t>(n);
    *rkey_p = 1000u + n;
    return 0;
  }
  static int Dereg(void *ctx, void *) {
    --static_cast<Host *>(ctx)->live;
    return 0;
  }
};

enum class Kind { kCustom, kTcp, kShm };

void PrintTo(Kind k, std::ostream *os) {
  *os << (k == Kind::kCustom ? "custom"
          : k == Kind::kTcp  ? "fabric_tcp"
                             : "fabric_shm");
}

class CacheOverDriverTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    if (GetParam() == Kind::kCustom) {
      regcache_driver_ops_t ops = {};
      ops.size = sizeof(ops);
      ops.reg = Host::Reg;
      ops.dereg = Host::Dereg;
      ASSERT_EQ(0, regcache_driver_custom_open(&ops, &host_, &driver_));
    } else {
      std::string why = stack_.Open(GetParam() == Kind::kTcp ? "tcp" : "shm",
                                    testing::kSupportedMrMode);
      if (!why.empty()) GTEST_SKIP() << "provider not usable here: " << why;
      ASSERT_EQ(0, regcache_driver_fabric_open2(stack_.domain, stack_.info,
                                                nullptr, &driver_));
    }
  }
  void TearDown() override {
    if (cache_) regcache_destroy(cache_);
    regcache_driver_close(driver_);
    if (GetParam() == Kind::kCustom) {
      EXPECT_EQ(0, host_.live.load()) << "leaked MRs";
    }
  }
  void Create(uint64_t flags = 0) {
    regcache_params_t p = {};
    p.field_mask = REGCACHE_PARAM_FLAGS;
    p.flags = flags;
    ASSERT_EQ(0, regcache_create(driver_, &p, &cache_));
  }
  regcache_stats_t Stats() {
    regcache_stats_t s = {};
    EXPECT_EQ(0, regcache_get_stats(cache_, &s));
    return s;
  }
  bool IsFabric() const { return GetParam() != Kind::kCustom; }

  Host host_;
  FabricStack stack_;
  regcache_driver_t *driver_ = nullptr;
  regcache_t *cache_ = nullptr;
};

struct Mapping {
  explicit Mapping(size_t n) : len(n) {
    p = static_cast<char *>(mmap(nullptr, n, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) p = nullptr;
    if (p) std::memset(p, 0, n);
  }
  ~Mapping() {
    if (p) munmap(p, len);
  }
  char *p;
  size_t len;
};

TEST_P(CacheOverDriverTest, RegionCarriesTheDriversKeysAndHits) {
  Create();
  Mapping m(1 << 20);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(0, regcache_get(cache_, m.p + 100, 5000, REGCACHE_ACCESS_ALL, &r));
  auto *base = static_cast<char *>(regcache_region_addr(r));
  EXPECT_LE(base, m.p + 100);
  EXPECT_GE(base + regcache_region_length(r), m.p + 5100);
  void *handle = regcache_region_handle(r);
  ASSERT_NE(nullptr, handle);
  if (IsFabric()) {
    auto *mr = static_cast<fid_mr *>(handle);
    EXPECT_EQ(fi_mr_key(mr), regcache_region_rkey(r));
    EXPECT_EQ(fi_mr_desc(mr), regcache_region_desc(r));
  } else {
    EXPECT_EQ(1000u + reinterpret_cast<uintptr_t>(handle),
              regcache_region_rkey(r));
  }
  regcache_region_t *again = nullptr;
  ASSERT_EQ(0, regcache_get(cache_, m.p + 200, 100, REGCACHE_ACCESS_REMOTE_READ,
                            &again));
  EXPECT_EQ(handle, regcache_region_handle(again));
  regcache_put(cache_, again);
  regcache_put(cache_, r);
  regcache_stats_t s = Stats();
  EXPECT_EQ(1u, s.registrations);
  EXPECT_GE(s.hits, 1u);
}

TEST_P(CacheOverDriverTest, FiWriteThroughCachedRegions) {
  if (!IsFabric()) GTEST_SKIP() << "needs a fabric";
  std::string why = stack_.OpenEndpoint();
  if (!why.empty()) GTEST_SKIP() << "no loopback endpoint: " << why;
  Create();
  Mapping src(1 << 16), dst(1 << 16);
  for (size_t i = 0; i < src.len; ++i) src.p[i] = static_cast<char>(i * 13 + 5);
  for (int round = 0; round < 3; ++round) {  // rounds 2 and 3 hit the cache
    regcache_region_t *rs = nullptr, *rd = nullptr;
    ASSERT_EQ(0, regcache_get(cache_, src.p + 64, 8192, 0, &rs));
    ASSERT_EQ(0, regcache_get(cache_, dst.p + 4096, 8192,
                              REGCACHE_ACCESS_REMOTE_WRITE, &rd));
    ASSERT_EQ(0, stack_.Write(src.p + 64, 8192, regcache_region_desc(rs),
                              dst.p + 4096, regcache_region_addr(rd),
                              regcache_region_rkey(rd)));
    EXPECT_EQ(0, std::memcmp(src.p + 64, dst.p + 4096, 8192))
        << "round " << round;
    regcache_put(cache_, rs);
    regcache_put(cache_, rd);
    std::memset(dst.p, 0, dst.len);
  }
  EXPECT_EQ(2u, Stats().registrations);
}

TEST_P(CacheOverDriverTest, FlushAndDestroyDeregisterEverything) {
  Create(REGCACHE_FLAG_NO_MERGE);
  Mapping m(64 * 4096);
  for (int i = 0; i < 64; i += 2) {
    regcache_region_t *r = nullptr;
    ASSERT_EQ(
        0, regcache_get(cache_, m.p + i * 4096, 4096, REGCACHE_ACCESS_ALL, &r));
    regcache_put(cache_, r);
  }
  EXPECT_EQ(0, regcache_flush(cache_));
  regcache_stats_t s = Stats();
  EXPECT_EQ(32u, s.registrations);
  EXPECT_EQ(s.registrations, s.deregistrations);
  if (!IsFabric()) {
    EXPECT_EQ(0, host_.live.load());
  }
}

// The fabric driver's mr_cnt (like verbs' max_mr) returns -ENOMEM; the cache
// evicts an unused region and retries instead of failing the get.
TEST_P(CacheOverDriverTest, DriverMrLimitMakesTheCacheEvict) {
  if (!IsFabric()) GTEST_SKIP() << "needs the fabric driver's mr_cnt";
  fi_info *info = fi_dupinfo(stack_.info);
  info->domain_attr->mr_cnt = 4;
  regcache_driver_close(driver_);
  driver_ = nullptr;
  ASSERT_EQ(
      0, regcache_driver_fabric_open2(stack_.domain, info, nullptr, &driver_));
  fi_freeinfo(info);
  Create(REGCACHE_FLAG_NO_MERGE);
  Mapping m(16 * 4096);
  for (int i = 0; i < 16; i += 2) {  // 8 disjoint regions through a 4-MR budget
    regcache_region_t *r = nullptr;
    ASSERT_EQ(
        0, regcache_get(cache_, m.p + i * 4096, 4096, REGCACHE_ACCESS_ALL, &r))
        << i;
    regcache_put(cache_, r);
  }
  regcache_stats_t s = Stats();
  EXPECT_EQ(8u, s.registrations);
  EXPECT_GE(s.evictions, 4u);
  EXPECT_LE(s.regions, 4u);
}

// munmap of cached memory invalidates the region: the driver deregisters memory
// that is already gone, and a new mapping at the same address is registered
// afresh.
TEST_P(CacheOverDriverTest,
       UnmapInvalidatesAndTheDriverDeregistersUnmappedMemory) {
  Create();
  constexpr size_t kLen = 1 << 16;
  void *p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(MAP_FAILED, p);
  std::memset(p, 1, kLen);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(0, regcache_get(cache_, p, kLen, REGCACHE_ACCESS_ALL, &r));
  regcache_put(cache_, r);
  // Without an automatic source (e.g. under TSan, where patch and uffd refuse
  // to install) the contract is explicit notification.
  if (std::strcmp(regcache_notifier_source(), "none") == 0) {
    ASSERT_EQ(0, regcache_notify_unmapped(p, kLen));
  }
  ASSERT_EQ(0, munmap(p, kLen));
  void *q =
      mmap(p, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(MAP_FAILED, q);
  std::memset(q, 2, kLen);
  ASSERT_EQ(0, regcache_get(cache_, q, kLen, REGCACHE_ACCESS_ALL, &r));
  regcache_put(cache_, r);
  EXPECT_EQ(0, regcache_flush(cache_));
  regcache_stats_t s = Stats();
  if (q == p) {
    EXPECT_GE(s.invalidations, 1u);
  }
  EXPECT_EQ(2u, s.registrations);
  EXPECT_EQ(2u, s.deregistrations);
  EXPECT_EQ(0u, s.failures);
  munmap(q, kLen);
}

TEST_P(CacheOverDriverTest, ConcurrentGetsAndPuts) {
  Create();
  constexpr int kThreads = 4, kIters = 500;
  Mapping m(kThreads * 16 * 4096);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        char *a = m.p + (t * 16 + i % 16) * 4096;
        regcache_region_t *r = nullptr;
        if (regcache_get(cache_, a, 4096, REGCACHE_ACCESS_ALL, &r) != 0) {
          ++failures;
          continue;
        }
        if (regcache_region_addr(r) > a) ++failures;
        regcache_put(cache_, r);
      }
    });
  }
  for (auto &th : threads) th.join();
  EXPECT_EQ(0, failures.load());
}

INSTANTIATE_TEST_SUITE_P(Drivers, CacheOverDriverTest,
                         ::testing::Values(Kind::kCustom, Kind::kTcp,
                                           Kind::kShm),
                         [](const ::testing::TestParamInfo<Kind> &i) {
                           return i.param == Kind::kCustom
                                      ? std::string("custom")
                                  : i.param == Kind::kTcp
                                      ? std::string("fabric_tcp")
                                      : std::string("fabric_shm");
                         });

}  // namespace
}  // namespace regcache

// SPDX-License-Identifier: BSD-3-Clause
// Fault injection (label unit; run under ASan/LSan in CI):
//  - a custom driver (the public regcache_driver_custom_open) that fails
//    registration and deregistration with -ENOMEM, -EAGAIN, -EFAULT at a set
//    rate: every failed get returns an error the driver injected during that
//    get, stats.failures counts exactly the failed gets, the cache stays
//    consistent (its regions == the driver's live registrations), flush +
//    destroy deregister every registration exactly once, no leak (LSan);
//  - the host driver under a small RLIMIT_MEMLOCK: eviction + retry succeeds
//    when unused regions can be freed; -ENOMEM comes back cleanly (held regions
//    intact, state unchanged) when they cannot.
// Rate: REGCACHE_FAULT_RATE (default 0.2); ops: REGCACHE_FAULT_OPS (default
// 20000).
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "drivers/host/host_driver.h"
#include "tests/reliability/reliability_util.h"

namespace {

using regcache::reliability::EnvDouble;
using regcache::reliability::PageSize;
using regcache::reliability::Rng;
using regcache::reliability::Stats;
using regcache::reliability::StatsString;

const size_t kPage = PageSize();
constexpr int kErrors[] = {-ENOMEM, -EAGAIN, -EFAULT};

// The faulty driver's state (ctx of the custom ops).
struct Faulty {
  std::mutex mu;
  Rng rng{42};
  double rate = 0.2;
  std::set<void *> live;
  uint64_t regs = 0, reg_fail = 0, deregs = 0, dereg_fail = 0, bad_dereg = 0;
  // Errors injected into registrations, per thread (the get that saw them).
  static thread_local std::vector<int> injected;

  bool Roll() { return static_cast<double>(rng.Below(1000)) < rate * 1000; }
  int Pick() { return kErrors[rng.Below(3)]; }

  static int Reg(void *ctx, void *addr, size_t len, unsigned, void **handle_p,
                 uint32_t *lkey_p, uint64_t *, void **) {
    auto *f = static_cast<Faulty *>(ctx);
    std::lock_guard<std::mutex> g(f->mu);
    if (f->Roll()) {
      int e = f->Pick();
      ++f->reg_fail;
      injected.push_back(e);
      return e;
    }
    // A record on the heap: LSan reports it if the cache never deregisters.
    auto *rec = new uintptr_t[2]{reinterpret_cast<uintptr_t>(addr), len};
    f->live.insert(rec);
    ++f->regs;
    *handle_p = rec;
    *lkey_p = static_cast<uint32_t>(f->regs);
    return 0;
  }
  static int Dereg(void *ctx, void *handle) {
    auto *f = static_cast<Faulty *>(ctx);
    std::lock_guard<std::mutex> g(f->mu);
    if (f->live.erase(handle) != 1) {
      ++f->bad_dereg;  // never registered, or deregistered twice
      return -EINVAL;
    }
    delete[] static_cast<uintptr_t *>(handle);
    ++f->deregs;
    // The device refused, but the cache cannot do anything better than drop
    // the region (it is called once; the driver logs). The handle is gone.
    if (f->Roll()) {
      ++f->dereg_fail;
      return f->Pick();
    }
    return 0;
  }
};
thread_local std::vector<int> Faulty::injected;

class FaultInjection : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    f_.rate = EnvDouble("REGCACHE_FAULT_RATE", 0.2);
    ops_.size = sizeof(ops_);
    ops_.reg = &Faulty::Reg;
    ops_.dereg = &Faulty::Dereg;
    ASSERT_EQ(regcache_driver_custom_open(&ops_, &f_, &drv_), 0);
    regcache_params_t p{};
    p.field_mask = REGCACHE_PARAM_MAX_REGIONS;
    p.max_regions = 32;
    ASSERT_EQ(regcache_create(drv_, &p, &c_), 0);
    buf_len_ = 256 * kPage;
    buf_ = static_cast<char *>(mmap(nullptr, buf_len_, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(buf_, MAP_FAILED);
  }
  void TearDown() override {
    if (c_) regcache_destroy(c_);
    regcache_driver_close(drv_);
    EXPECT_TRUE(f_.live.empty()) << f_.live.size() << " never deregistered";
    EXPECT_EQ(f_.bad_dereg, 0u) << "deregistered twice or never registered";
    EXPECT_EQ(f_.regs, f_.deregs);
    if (buf_) munmap(buf_, buf_len_);
  }

  // One thread's random sequence; returns the number of failed gets.
  uint64_t Run(uint64_t seed, int ops) {
    Rng rng(seed);
    std::vector<regcache_region_t *> held;
    uint64_t failed = 0;
    for (int i = 0; i < ops; ++i) {
      switch (rng.Below(8)) {
        case 0:
          if (!held.empty()) {
            size_t k = rng.Below(held.size());
            regcache_put(c_, held[k]);
            held.erase(held.begin() + static_cast<long>(k));
          }
          break;
        case 1:
          if (rng.Below(8) == 0) {
            EXPECT_EQ(regcache_flush(c_), 0);
          }
          break;
        case 2: {
          size_t off = rng.Below(buf_len_ - kPage);
          EXPECT_EQ(regcache_notify_unmapped(buf_ + off, 1 + rng.Below(kPage)),
                    0);
          break;
        }
        default: {
          const size_t off = rng.Below(buf_len_ - 1);
          const size_t n =
              1 + rng.Below(std::min<size_t>(buf_len_ - off, 8 * kPage));
          Faulty::injected.clear();
          regcache_region_t *r = nullptr;
          const int rc =
              regcache_get(c_, buf_ + off, n, REGCACHE_ACCESS_LOCAL_WRITE, &r);
          if (rc == 0) {
            const auto *a = static_cast<char *>(regcache_region_addr(r));
            EXPECT_TRUE(a <= buf_ + off &&
                        buf_ + off + n <= a + regcache_region_length(r));
            if (held.size() < 8 && rng.Below(2))
              held.push_back(r);
            else
              regcache_put(c_, r);
          } else {
            ++failed;
            EXPECT_EQ(r, nullptr) << "*region_p must be untouched on error";
            bool injected = false;
            for (int e : Faulty::injected) injected |= e == rc;
            EXPECT_TRUE(injected)
                << "get failed with " << regcache_strerror(rc)
                << ", which the driver did not return during that get";
          }
        }
      }
      if (HasFailure()) break;
    }
    for (regcache_region_t *r : held) regcache_put(c_, r);
    return failed;
  }

  void ExpectConsistent() {
    const regcache_stats_t s = Stats(c_);
    std::lock_guard<std::mutex> g(f_.mu);
    EXPECT_EQ(s.regions, f_.live.size()) << StatsString(s);
    EXPECT_EQ(s.registrations - s.deregistrations, f_.live.size())
        << StatsString(s);
  }

  Faulty f_;
  regcache_driver_ops_t ops_{};
  regcache_driver_t *drv_ = nullptr;
  regcache_t *c_ = nullptr;
  char *buf_ = nullptr;
  size_t buf_len_ = 0;
};

TEST_F(FaultInjection, EveryErrorReachesTheCallerAndNothingLeaks) {
  const int ops = static_cast<int>(EnvDouble("REGCACHE_FAULT_OPS", 20000));
  const regcache_stats_t before = Stats(c_);
  const uint64_t failed = Run(7, ops);
  const regcache_stats_t after = Stats(c_);
  EXPECT_GT(failed, 0u) << "the injection must bite";
  EXPECT_EQ(after.failures - before.failures, failed)
      << "stats.failures counts the failed gets";
  ExpectConsistent();
  ASSERT_EQ(regcache_flush(c_), 0);
  const regcache_stats_t s = Stats(c_);
  EXPECT_EQ(s.regions, 0u) << StatsString(s);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_TRUE(f_.live.empty()) << "flush left registrations behind";
  std::printf("regs %llu (failed %llu), deregs %llu (failed %llu); %s\n",
              static_cast<unsigned long long>(f_.regs),
              static_cast<unsigned long long>(f_.reg_fail),
              static_cast<unsigned long long>(f_.deregs),
              static_cast<unsigned long long>(f_.dereg_fail),
              StatsString(s).c_str());
}

TEST_F(FaultInjection, ConcurrentThreads) {
  const int ops = static_cast<int>(EnvDouble("REGCACHE_FAULT_OPS", 20000)) / 2;
  std::atomic<uint64_t> failed{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; ++t)
    ts.emplace_back([&, t] { failed += Run(100 + t, ops); });
  for (auto &t : ts) t.join();
  EXPECT_GT(failed.load(), 0u);
  ExpectConsistent();
  // Destroy without flush: it must deregister everything as well (TearDown).
}

TEST_F(FaultInjection, DestroyWithHeldRegionsDeregistersThem) {
  f_.rate = 0;
  regcache_region_t *r1 = nullptr, *r2 = nullptr;
  ASSERT_EQ(regcache_get(c_, buf_, kPage, 0, &r1), 0);
  ASSERT_EQ(regcache_get(c_, buf_ + 8 * kPage, kPage, 0, &r2), 0);
  regcache_put(c_, r2);
  f_.rate = 1;  // every deregistration fails
  regcache_destroy(c_);
  c_ = nullptr;
  EXPECT_TRUE(f_.live.empty());
  EXPECT_EQ(f_.dereg_fail, 2u);
}

// ---------------------------------------------------------------- RLIMIT
class MemlockLimit : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &saved_), 0);
    ASSERT_EQ(regcache::host::PinnedBytes(), 0u) << "another test left pins";
    ASSERT_EQ(regcache_driver_host_open(&drv_), 0);
    regcache_params_t p{};
    p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MAX_BYTES |
                   REGCACHE_PARAM_FLAGS;
    p.max_regions = 1000;
    p.max_bytes = size_t{1} << 30;  // only the driver's limit bites
    p.flags = REGCACHE_FLAG_NO_MERGE;
    ASSERT_EQ(regcache_create(drv_, &p, &c_), 0);
    buf_ = static_cast<char *>(mmap(nullptr, 64 * kPage, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(buf_, MAP_FAILED);
    struct rlimit rl = saved_;
    rl.rlim_cur = 16 * kPage;  // 4 chunks of 4 pages
    ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &rl), 0);
  }
  void TearDown() override {
    setrlimit(RLIMIT_MEMLOCK, &saved_);
    if (c_) regcache_destroy(c_);
    regcache_driver_close(drv_);
    EXPECT_EQ(regcache::host::PinnedBytes(), 0u);
    munmap(buf_, 64 * kPage);
  }
  char *Chunk(int i) { return buf_ + static_cast<size_t>(i) * 4 * kPage; }

  struct rlimit saved_ {};
  regcache_driver_t *drv_ = nullptr;
  regcache_t *c_ = nullptr;
  char *buf_ = nullptr;
};

TEST_F(MemlockLimit, EvictionAndRetrySucceedWhenUnusedRegionsCanBeFreed) {
  for (int i = 0; i < 16; ++i) {
    regcache_region_t *r = nullptr;
    ASSERT_EQ(regcache_get(c_, Chunk(i), 4 * kPage, 0, &r), 0)
        << "chunk " << i << ": " << StatsString(Stats(c_));
    regcache_put(c_, r);
    EXPECT_LE(regcache::host::PinnedBytes(), 16 * kPage);
  }
  const regcache_stats_t s = Stats(c_);
  EXPECT_GE(s.evictions, 12u) << StatsString(s);
  EXPECT_EQ(s.failures, 0u);
}

TEST_F(MemlockLimit, EnomemComesBackCleanlyWhenNothingCanBeFreed) {
  regcache_region_t *held[4];
  for (int i = 0; i < 4; ++i)
    ASSERT_EQ(regcache_get(c_, Chunk(i), 4 * kPage, 0, &held[i]), 0);
  const regcache_stats_t before = Stats(c_);
  regcache_region_t *r = nullptr;
  EXPECT_EQ(regcache_get(c_, Chunk(8), 4 * kPage, 0, &r), -ENOMEM);
  EXPECT_EQ(r, nullptr);
  const regcache_stats_t after = Stats(c_);
  EXPECT_EQ(after.regions, before.regions) << StatsString(after);
  EXPECT_EQ(after.bytes, before.bytes);
  EXPECT_EQ(after.registrations, before.registrations);
  EXPECT_EQ(after.failures, before.failures + 1);
  // The held regions are intact and still hit.
  for (int i = 0; i < 4; ++i) {
    regcache_region_t *again = nullptr;
    ASSERT_EQ(regcache_get(c_, Chunk(i), kPage, 0, &again), 0);
    EXPECT_EQ(again, held[i]);
    regcache_put(c_, again);
  }
  // One put frees room: the same get now succeeds (by evicting it).
  regcache_put(c_, held[0]);
  ASSERT_EQ(regcache_get(c_, Chunk(8), 4 * kPage, 0, &r), 0);
  regcache_put(c_, r);
  for (int i = 1; i < 4; ++i) regcache_put(c_, held[i]);
}

}  // namespace

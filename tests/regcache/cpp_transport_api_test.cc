// SPDX-License-Identifier: BSD-3-Clause
// The transport calls through the header-only C++ API (regcache.hpp): Find,
// Get with REGCACHE_GET_NO_CACHE, Params::host_data_bytes / Region::host_data,
// Invalidate; and concurrent use through RAII regions. Installed headers only.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>
#include <regcache/regcache.hpp>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <thread>
#include <vector>

namespace {

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

class KeyDriver : public regcache::Driver {
 public:
  int Register(void *, size_t, unsigned, regcache::Registration *out) override {
    const uint64_t k = ++next;
    out->handle = reinterpret_cast<void *>(static_cast<uintptr_t>(k));
    out->lkey = static_cast<uint32_t>(k);
    out->rkey = k;
    ++live;
    return 0;
  }
  int Deregister(void *) override {
    --live;
    return 0;
  }
  std::atomic<uint64_t> next{0};
  std::atomic<long> live{0};
};

struct HostKey {  // what a transport keeps per region
  uint64_t packed_rkey;
  uint32_t flags;
};

class CppTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    mem_ = static_cast<char *>(mmap(nullptr, 32 * kPage, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(mem_, MAP_FAILED);
    impl_ = std::make_shared<KeyDriver>();
    auto d = regcache::DriverHandle::Custom(impl_);
    ASSERT_TRUE(d.ok());
    drv_ = std::move(d.value());
    regcache::Params p;
    p.host_data_bytes(sizeof(HostKey)).flags(REGCACHE_FLAG_NO_MERGE);
    auto c = regcache::Cache::Create(drv_, &p);
    ASSERT_TRUE(c.ok()) << c.status().message();
    cache_ = std::move(c.value());
  }
  void TearDown() override {
    cache_ = regcache::Cache();
    EXPECT_EQ(impl_->live.load(), 0);
    munmap(mem_, 32 * kPage);
  }
  char *mem_ = nullptr;
  std::shared_ptr<KeyDriver> impl_;
  regcache::DriverHandle drv_;
  regcache::Cache cache_;
};

TEST_F(CppTransportTest, FindNoCacheHostDataInvalidate) {
  EXPECT_EQ(cache_.Find(mem_, kPage).status().code(), -ENOENT);
  EXPECT_EQ(impl_->next.load(), 0u);
  uint64_t first_key;
  {
    auto r = cache_.Get(mem_, kPage);
    ASSERT_TRUE(r.ok());
    auto *hk = r->host_data_as<HostKey>();
    ASSERT_NE(hk, nullptr);
    EXPECT_EQ(hk->packed_rkey, 0u);  // zeroed
    hk->packed_rkey = r->rkey() | (uint64_t{1} << 63);
    first_key = r->rkey();
  }
  {
    auto f = cache_.Find(mem_ + 8, 8);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->rkey(), first_key);
    EXPECT_EQ(f->host_data_as<HostKey>()->packed_rkey,
              first_key | (uint64_t{1} << 63));
  }
  {
    auto n = cache_.Get(mem_, kPage, 0, REGCACHE_GET_NO_CACHE);
    ASSERT_TRUE(n.ok());
    EXPECT_NE(n->rkey(), first_key);
    EXPECT_EQ(impl_->live.load(), 2);
  }
  EXPECT_EQ(impl_->live.load(), 1);  // the no-cache one went with its Region
  EXPECT_EQ(cache_.Get(mem_, kPage, 0, 0x80).status().code(), -EINVAL);
  {
    auto held = cache_.Get(mem_, kPage);
    ASSERT_TRUE(held.ok());
    auto n = cache_.Invalidate(mem_, 4 * kPage);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, 1);
    EXPECT_EQ(cache_.Find(mem_, kPage).status().code(), -ENOENT);
    EXPECT_EQ(impl_->live.load(), 1);  // held: still registered
  }
  EXPECT_EQ(impl_->live.load(), 0);  // and gone at its last put
  EXPECT_EQ(cache_.Invalidate(mem_, 0).status().code(), -EINVAL);
}

TEST_F(CppTransportTest, ConcurrentRaiiUse) {
  std::atomic<bool> stop{false};
  std::atomic<long> bad{0}, ops{0};
  auto worker = [&](unsigned seed) {
    while (!stop.load(std::memory_order_relaxed)) {
      char *a = mem_ + (rand_r(&seed) % 16) * kPage;
      switch (rand_r(&seed) % 4) {
        case 0: {
          auto r = cache_.Get(a, kPage, 0, REGCACHE_GET_NO_CACHE);
          if (!r.ok() || r->host_data_as<HostKey>()->flags != 0) ++bad;
          if (r.ok()) r->host_data_as<HostKey>()->flags = 1;
          break;
        }
        case 1: {
          auto r = cache_.Find(a, kPage);
          if (!r.ok() && r.status().code() != -ENOENT) ++bad;
          if (r.ok() && r->addr() != a) ++bad;
          break;
        }
        case 2:
          if (!cache_.Invalidate(a, kPage).ok()) ++bad;
          break;
        default: {
          auto r = cache_.Get(a, kPage);
          if (!r.ok() || r->addr() != a) ++bad;
        }
      }
      ++ops;
    }
  };
  std::vector<std::thread> ts;
  for (unsigned i = 0; i < 3; ++i) ts.emplace_back(worker, 77 + i);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (auto &t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(ops.load(), 100);
  ASSERT_TRUE(cache_.Flush().ok());
  EXPECT_EQ(impl_->live.load(), 0);
}

}  // namespace

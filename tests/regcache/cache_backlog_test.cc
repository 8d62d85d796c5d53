// SPDX-License-Identifier: BSD-3-Clause
// The invalidation backlog is bounded (UCX's inv_q_bounded test, the vLLM
// leak): 40 000 munmap/mmap cycles of cached memory leave at most 100 pending
// items and at most 512 KiB of RSS growth, while a second thread keeps the
// cache lock busy so that many invalidations take the pending-set path instead
// of the try-lock path.
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include "regcache/page.h"
#include "tests/regcache/test_driver.h"

namespace {

const size_t kPage = regcache::page::Size();

size_t RssBytes() {
  FILE *f = std::fopen("/proc/self/statm", "r");
  unsigned long size = 0, rss = 0;
  if (f) {
    if (std::fscanf(f, "%lu %lu", &size, &rss) != 2) rss = 0;
    std::fclose(f);
  }
  return rss * kPage;
}

TEST(CacheBacklog, MunmapMmapCyclesStayBounded) {
  ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
  regcache::testing::TestDriver *td;
  regcache_driver_t *drv = regcache::testing::NewTestDriver(&td);
  td->record_calls = false;
  regcache_t *c = nullptr;
  ASSERT_EQ(regcache_create(drv, nullptr, &c), 0);

  // Background misses and hits on other memory: they hold the cache lock often.
  std::atomic<bool> stop{false};
  void *other = mmap(nullptr, 256 * kPage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(other, MAP_FAILED);
  std::thread busy([&] {
    size_t i = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      regcache_region_t *r = nullptr;
      char *a = static_cast<char *>(other) + (i++ % 128) * 2 * kPage;
      if (regcache_get(c, a, kPage, 0, &r) == 0) regcache_put(c, r);
      if (i % 64 == 0) regcache_flush(c);
    }
  });

  constexpr int kCycles = 40000;
  constexpr int kWarmup = 2000;
  const size_t len = 4 * kPage;
  size_t rss0 = 0;
  uint64_t max_pending = 0;
  for (int i = 0; i < kCycles; ++i) {
    if (i == kWarmup) rss0 = RssBytes();
    void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    regcache_region_t *r = nullptr;
    int rc = regcache_get(c, p, len, REGCACHE_ACCESS_LOCAL_WRITE, &r);
    ASSERT_TRUE(rc == 0 || rc == -EAGAIN) << regcache_strerror(rc);
    if (rc == 0) regcache_put(c, r);
    ASSERT_EQ(regcache_notify_unmapped(p, len), 0);  // the munmap hook
    ASSERT_EQ(munmap(p, len), 0);
    regcache_stats_t s;
    ASSERT_EQ(regcache_get_stats(c, &s), 0);
    if (s.pending > max_pending) max_pending = s.pending;
  }
  stop = true;
  busy.join();
  const size_t rss1 = RssBytes();
  regcache_stats_t s;
  ASSERT_EQ(regcache_get_stats(c, &s), 0);
  std::printf("invalidations %llu, max pending %llu, rss growth %ld bytes\n",
              static_cast<unsigned long long>(s.invalidations),
              static_cast<unsigned long long>(max_pending),
              static_cast<long>(rss1) - static_cast<long>(rss0));
  EXPECT_LE(max_pending, 100u);
#if !defined(REGCACHE_SANITIZE_ADDRESS) && !defined(REGCACHE_SANITIZE_THREAD)
  // (ASan quarantine and TSan shadow of fresh mappings inflate RSS.)
  EXPECT_LE(static_cast<long>(rss1) - static_cast<long>(rss0), 512 * 1024);
#endif
  EXPECT_GE(s.invalidations, static_cast<uint64_t>(kCycles / 2));
  regcache_destroy(c);
  EXPECT_EQ(td->Live(), 0u);
  regcache_driver_close(drv);
  munmap(other, 256 * kPage);
}

}  // namespace

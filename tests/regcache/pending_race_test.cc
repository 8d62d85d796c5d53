// SPDX-License-Identifier: BSD-3-Clause
// Invalidations that arrive while another thread holds the cache's mutex
// (OnInvalidateStart: the pending set's add, a fence, a try-lock; the holder's
// DrainAndUnlock: a fenced unlock, then a seq_cst load of the pending bit) are
// applied before any later get answers. Two threads get and put pages of a
// small buffer (front-table hits, slow hits, misses, evictions: the mutex is
// busy often) while a third replaces a page's frame (MADV_DONTNEED, then a
// write) and notifies the cache (regcache_notify_unmapped, the explicit
// source). A get is checked with the stale oracle (frame numbers: root) when
// no replacement of the region's pages was in progress between its start and
// the end of the check; every such get must hold the current frames.
// Negative control: the same run without the notifications is stale.
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/stale_oracle.h"

namespace {

using regcache::testing::StaleOracle;

constexpr size_t kPages = 32;
constexpr size_t kHot = 6;  // pages most gets and replacements are of
constexpr int kGetters = 2;

struct Result {
  uint64_t checked = 0;  // gets whose pages did not change during them
  uint64_t stale = 0;    // of those, stale ones
  uint64_t errors = 0;
};

// notify: deliver each replacement to the cache (false: negative control).
Result RunRace(bool notify, std::chrono::milliseconds duration) {
  Result res;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  StaleOracle o;
  EXPECT_NE(o.driver(), nullptr);
  if (o.driver() == nullptr) return res;
  regcache_params_t p = {};
  // A small cache: misses evict, so the mutex is held often while the
  // notifications arrive (their try-lock fails: the pending path).
  p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MERGE_MAX_BYTES;
  p.max_regions = 8;
  p.merge_max_bytes = 2 * page;
  regcache_t *c = nullptr;
  EXPECT_EQ(regcache_create(o.driver(), &p, &c), 0);
  if (c == nullptr) return res;
  auto *buf =
      static_cast<char *>(mmap(nullptr, kPages * page, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  EXPECT_NE(buf, MAP_FAILED);
  if (buf == MAP_FAILED) {
    regcache_destroy(c);
    return res;
  }
  for (size_t i = 0; i < kPages; ++i) buf[i * page] = 1;
  // Per page: odd while its frame is being replaced and the cache not yet
  // told (between the madvise and the end of the notification).
  std::vector<std::atomic<uint64_t>> seq(kPages);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> checked{0}, stale{0}, errors{0};

  std::vector<std::thread> getters;
  for (int t = 0; t < kGetters; ++t) {
    getters.emplace_back([&, t] {
      uint64_t before[kPages];
      for (uint64_t i = static_cast<uint64_t>(t) * 5; !stop.load(); ++i) {
        // Mostly the hot pages (front-table hits), every 8th get a cold one
        // (a miss that evicts: the mutex is busy).
        const size_t first =
            i % 8 == 7 ? kHot + (i * 7) % (kPages - kHot) : (i * 5) % kHot;
        const size_t len = (i % 3 == 0 && first + 1 < kPages) ? 2 : 1;
        for (size_t k = 0; k < kPages; ++k) before[k] = seq[k].load();
        regcache_region_t *r = nullptr;
        const int rc = regcache_get(c, buf + first * page, len * page,
                                    REGCACHE_ACCESS_LOCAL_WRITE, &r);
        if (rc == -EAGAIN) continue;  // kept changing while registering
        if (rc != 0) {
          errors.fetch_add(1);
          continue;
        }
        // A registration that raced a replacement may have recorded a page
        // not present (frame 0): the oracle would fall back to its nonce
        // check, which writes into the pages the replacer writes. Such a get
        // is not quiet anyway (the replacement was in progress during it).
        const auto *rec =
            static_cast<const StaleOracle::Record *>(regcache_region_handle(r));
        bool exact = rec != nullptr && !rec->frames.empty();
        for (size_t k = 0; exact && k < rec->frames.size(); ++k)
          exact = rec->frames[k] != 0;
        const bool is_stale = exact && o.IsStale(r);
        // The region's pages (a merge may cover neighbours of the request).
        const auto *ra = static_cast<const char *>(regcache_region_addr(r));
        const size_t lo = static_cast<size_t>(ra - buf) / page;
        const size_t hi = lo + regcache_region_length(r) / page;
        bool quiet = exact && lo < hi && hi <= kPages;
        for (size_t k = lo; quiet && k < hi; ++k)
          quiet = (before[k] & 1) == 0 && seq[k].load() == before[k];
        regcache_put(c, r);
        if (!quiet) continue;
        checked.fetch_add(1);
        if (is_stale) stale.fetch_add(1);
      }
    });
  }
  std::thread replacer([&] {
    for (uint64_t i = 0; !stop.load(); ++i) {
      const size_t k = i % 4 == 3 ? (i * 11) % kPages : (i * 3) % kHot;
      char *pg = buf + k * page;
      seq[k].fetch_add(1);  // odd: changing
      madvise(pg, page, MADV_DONTNEED);
      pg[0] = 1;  // a new frame
      if (notify) regcache_notify_unmapped(pg, page);
      seq[k].fetch_add(1);  // even: the cache was told
      // Let the getters hit the replaced page between replacements.
      if (i % 4 == 3) std::this_thread::yield();
    }
  });
  std::this_thread::sleep_for(duration);
  stop = true;
  for (auto &g : getters) g.join();
  replacer.join();
  regcache_destroy(c);
  munmap(buf, kPages * page);
  res.checked = checked.load();
  res.stale = stale.load();
  res.errors = errors.load();
  std::fprintf(stderr, "notify=%d: %llu gets checked, %llu stale\n", notify,
               static_cast<unsigned long long>(res.checked),
               static_cast<unsigned long long>(res.stale));
  return res;
}

class PendingRaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    StaleOracle o;
    if (!o.HaveFrames())
      GTEST_SKIP() << "needs frame numbers in /proc/self/pagemap (root): the "
                      "nonce check races with the concurrent replacements";
  }
};

TEST_F(PendingRaceTest, InvalidationsWhileTheMutexIsBusyAreNeverMissed) {
  const Result r = RunRace(/*notify=*/true, std::chrono::milliseconds(3000));
  EXPECT_EQ(r.errors, 0u);
  EXPECT_GT(r.checked, 1000u);  // the run checked enough gets to mean much
  EXPECT_EQ(r.stale, 0u) << "of " << r.checked << " checked gets";
}

TEST_F(PendingRaceTest, NegativeControlWithoutNotificationsIsStale) {
  const Result r = RunRace(/*notify=*/false, std::chrono::milliseconds(1000));
  EXPECT_EQ(r.errors, 0u);
  EXPECT_GT(r.checked, 0u);
  EXPECT_GT(r.stale, 0u) << "the oracle must see unnotified replacements";
}

}  // namespace

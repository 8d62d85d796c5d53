// SPDX-License-Identifier: BSD-3-Clause
// Hostile inputs (label unit): every C entry point with NULL, zero, huge and
// wrapping lengths, unknown bits, unmapped memory, PROT_NONE, read-only memory
// asked for write, file-backed and huge-page mappings, a region put twice.
// Asserted: a clear error (the documented errno), no crash, and no change to
// the cache's state (stats compared before/after; a driver error may only add
// one to `failures`).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tests/reliability/reliability_util.h"

namespace {

using regcache::reliability::PageSize;
using regcache::reliability::SameStats;
using regcache::reliability::Stats;
using regcache::reliability::StatsString;

const size_t kPage = PageSize();

class HostileInputs : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
    ASSERT_EQ(regcache_driver_host_open(&drv_), 0);
    ASSERT_EQ(regcache_create(drv_, nullptr, &c_), 0);
    buf_ = static_cast<char *>(mmap(nullptr, 16 * kPage, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(buf_, MAP_FAILED);
    std::memset(buf_, 1, 16 * kPage);
    // Some state to protect: a cached region and a held one.
    regcache_region_t *r = nullptr;
    ASSERT_EQ(regcache_get(c_, buf_, 2 * kPage, 0, &r), 0);
    regcache_put(c_, r);
    ASSERT_EQ(regcache_get(c_, buf_ + 8 * kPage, kPage, 0, &held_), 0);
  }
  void TearDown() override {
    if (held_) regcache_put(c_, held_);
    regcache_destroy(c_);
    regcache_driver_close(drv_);
    munmap(buf_, 16 * kPage);
  }

  // rc must be `want` and the stats exactly unchanged.
  void ExpectInvalid(int rc, int want, const regcache_stats_t &before,
                     const char *what) {
    EXPECT_EQ(rc, want) << what << ": " << regcache_strerror(rc);
    const regcache_stats_t after = Stats(c_);
    EXPECT_TRUE(SameStats(before, after))
        << what << "\n before " << StatsString(before) << "\n after  "
        << StatsString(after);
  }
  // A driver error: want, no region, only `failures` may move (by one).
  void ExpectDriverError(const void *addr, size_t len, unsigned access,
                         int want, const char *what) {
    // Earlier invalidations leave dead regions that the next slow-path call
    // deregisters: drain them first so that only this call is measured.
    ASSERT_EQ(regcache_flush(c_), 0);
    const regcache_stats_t before = Stats(c_);
    regcache_region_t *r = nullptr;
    const int rc = regcache_get(c_, addr, len, access, &r);
    EXPECT_EQ(rc, want) << what << ": " << regcache_strerror(rc);
    EXPECT_EQ(r, nullptr) << what;
    if (rc == 0) regcache_put(c_, r);
    regcache_stats_t after = Stats(c_);
    EXPECT_LE(after.failures, before.failures + 1) << what;
    EXPECT_EQ(after.regions, before.regions) << what;
    EXPECT_EQ(after.bytes, before.bytes) << what;
    EXPECT_EQ(after.registrations, before.registrations) << what;
    EXPECT_EQ(after.deregistrations, before.deregistrations) << what;
    EXPECT_EQ(after.hits, before.hits) << what;
  }

  regcache_driver_t *drv_ = nullptr;
  regcache_t *c_ = nullptr;
  char *buf_ = nullptr;
  regcache_region_t *held_ = nullptr;
};

TEST_F(HostileInputs, GetRejectsBadArgumentsWithoutSideEffects) {
  const regcache_stats_t s = Stats(c_);
  regcache_region_t *r = nullptr;
  ExpectInvalid(regcache_get(nullptr, buf_, 1, 0, &r), -EINVAL, s,
                "NULL cache");
  ExpectInvalid(regcache_get(c_, buf_, 1, 0, nullptr), -EINVAL, s,
                "NULL region_p");
  ExpectInvalid(regcache_get(c_, buf_, 0, 0, &r), -EINVAL, s, "len 0");
  ExpectInvalid(regcache_get(c_, buf_, SIZE_MAX, 0, &r), -EINVAL, s,
                "len SIZE_MAX (wraps)");
  ExpectInvalid(
      regcache_get(c_, reinterpret_cast<void *>(UINTPTR_MAX - 100), 200, 0, &r),
      -EINVAL, s, "wrapping range");
  ExpectInvalid(
      regcache_get(c_, reinterpret_cast<void *>(UINTPTR_MAX - 100), 50, 0, &r),
      -EINVAL, s, "range whose page alignment wraps");
  ExpectInvalid(regcache_get(c_, buf_, 1, 0x10, &r), -EINVAL, s,
                "unknown access bit");
  ExpectInvalid(regcache_get(c_, buf_, 1, ~0u, &r), -EINVAL, s,
                "all access bits");
  EXPECT_EQ(r, nullptr);
}

TEST_F(HostileInputs, GetOfBadMemoryIsTheDriversError) {
  ExpectDriverError(nullptr, 1, 0, -EFAULT, "NULL address, page 0");
  // A fresh hole is the first place the next small mmap lands: the sanitizer
  // runtime or the logger may map into it between our munmap and the get, and
  // then the memory is mapped and success is the right answer. So the hole is
  // checked again after the get (msync: ENOMEM when any page is unmapped) and
  // the case is retried with a new hole when it was filled (bounded).
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 20) << "every hole was filled before the get";
    void *gone = mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(gone, MAP_FAILED);
    ASSERT_EQ(munmap(gone, 4 * kPage), 0);
    ASSERT_EQ(regcache_flush(c_), 0);
    const regcache_stats_t before = Stats(c_);
    regcache_region_t *r = nullptr;
    const int rc = regcache_get(c_, gone, 4 * kPage, 0, &r);
    if (rc == 0) regcache_put(c_, r);
    const bool still_a_hole =
        msync(gone, 4 * kPage, MS_ASYNC) != 0 && errno == ENOMEM;
    if (!still_a_hole) continue;
    EXPECT_EQ(rc, -EFAULT) << "unmapped: " << regcache_strerror(rc);
    const regcache_stats_t after = Stats(c_);
    EXPECT_EQ(after.regions, before.regions) << "unmapped";
    EXPECT_EQ(after.registrations, before.registrations) << "unmapped";
    break;
  }
  // Partly mapped: the tail is gone.
  void *half = mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(half, MAP_FAILED);
  ASSERT_EQ(munmap(static_cast<char *>(half) + 2 * kPage, 2 * kPage), 0);
  ExpectDriverError(half, 4 * kPage, 0, -EFAULT, "partly unmapped");
  munmap(half, 2 * kPage);

  void *none =
      mmap(nullptr, 2 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(none, MAP_FAILED);
  ExpectDriverError(none, kPage, 0, -EFAULT, "PROT_NONE");
  ExpectDriverError(none, kPage, REGCACHE_ACCESS_LOCAL_WRITE, -EFAULT,
                    "PROT_NONE for write");
  munmap(none, 2 * kPage);

  void *ro =
      mmap(nullptr, 2 * kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(ro, MAP_FAILED);
  ExpectDriverError(ro, kPage, REGCACHE_ACCESS_LOCAL_WRITE, -EACCES,
                    "read-only asked for local write");
  ExpectDriverError(ro, kPage, REGCACHE_ACCESS_REMOTE_WRITE, -EACCES,
                    "read-only asked for remote write");
  ExpectDriverError(ro, kPage, REGCACHE_ACCESS_REMOTE_ATOMIC, -EACCES,
                    "read-only asked for atomic");
  // Read access to read-only memory is fine.
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(c_, ro, kPage, REGCACHE_ACCESS_REMOTE_READ, &r), 0);
  regcache_put(c_, r);
  ASSERT_EQ(regcache_notify_unmapped(ro, 2 * kPage), 0);
  munmap(ro, 2 * kPage);

  // Huge lengths that do not wrap: beyond any mapping.
  ExpectDriverError(buf_, size_t{1} << 40, 0, -EFAULT, "1 TiB from a buffer");
}

TEST_F(HostileInputs, FileBackedMappingsRegister) {
  char path[] = "/tmp/regcache-hostile-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(4 * kPage)), 0);
  for (int flags : {MAP_SHARED, MAP_PRIVATE}) {
    char *m = static_cast<char *>(
        mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, flags, fd, 0));
    ASSERT_NE(m, MAP_FAILED);
    std::memset(m, 3, 4 * kPage);
    regcache_region_t *r = nullptr;
    ASSERT_EQ(
        regcache_get(c_, m + 10, 3 * kPage, REGCACHE_ACCESS_LOCAL_WRITE, &r), 0)
        << (flags == MAP_SHARED ? "shared" : "private");
    regcache_put(c_, r);
    const uint64_t inval = Stats(c_).invalidations;
    ASSERT_EQ(regcache_notify_unmapped(m, 4 * kPage), 0);
    EXPECT_GT(Stats(c_).invalidations, inval);
    munmap(m, 4 * kPage);
  }
  close(fd);
  // A read-only file mapping asked for write.
  fd = open("/proc/self/exe", O_RDONLY);
  ASSERT_GE(fd, 0);
  void *ro = mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(ro, MAP_FAILED);
  ExpectDriverError(ro, kPage, REGCACHE_ACCESS_LOCAL_WRITE, -EACCES,
                    "read-only file mapping asked for write");
  ASSERT_EQ(regcache_notify_unmapped(ro, kPage), 0);
  munmap(ro, kPage);
  close(fd);
}

TEST_F(HostileInputs, HugePageMappings) {
  const size_t huge = size_t{2} << 20;
  void *m = mmap(nullptr, huge, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (m == MAP_FAILED)
    GTEST_SKIP() << "no hugetlb pages available (vm.nr_hugepages = 0): "
                 << std::strerror(errno);
  std::memset(m, 4, huge);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(c_, static_cast<char *>(m) + 4096 * 3, 100,
                         REGCACHE_ACCESS_LOCAL_WRITE, &r),
            0);
  regcache_put(c_, r);
  ASSERT_EQ(regcache_notify_unmapped(m, huge), 0);
  munmap(m, huge);
}

TEST_F(HostileInputs, TransparentHugePages) {
  // THP (madvise mode) is usually available even without hugetlb pages.
  const size_t huge = size_t{4} << 20;
  char *m = static_cast<char *>(mmap(nullptr, huge, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(m, MAP_FAILED);
  madvise(m, huge, MADV_HUGEPAGE);
  std::memset(m, 5, huge);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(c_, m + (3 << 20), 100, 0, &r), 0);
  regcache_put(c_, r);
  ASSERT_EQ(regcache_notify_unmapped(m, huge), 0);
  munmap(m, huge);
}

TEST_F(HostileInputs, OtherEntryPointsRejectNull) {
  const regcache_stats_t s = Stats(c_);
  regcache_stats_t st;
  ExpectInvalid(regcache_flush(nullptr), -EINVAL, s, "flush(NULL)");
  ExpectInvalid(regcache_get_stats(nullptr, &st), -EINVAL, s, "stats(NULL,)");
  ExpectInvalid(regcache_get_stats(c_, nullptr), -EINVAL, s, "stats(,NULL)");
  ExpectInvalid(regcache_print_stats(nullptr, stderr), -EINVAL, s,
                "print_stats(NULL,)");
  ExpectInvalid(regcache_print_stats(c_, nullptr), -EINVAL, s,
                "print_stats(,NULL)");
  regcache_put(c_, nullptr);  // no-op
  regcache_put(nullptr, nullptr);
  regcache_destroy(nullptr);
  regcache_driver_close(nullptr);
  EXPECT_EQ(regcache_driver_name(nullptr), nullptr);
  EXPECT_EQ(regcache_region_lkey(nullptr), 0u);
  EXPECT_EQ(regcache_region_rkey(nullptr), 0u);
  EXPECT_EQ(regcache_region_desc(nullptr), nullptr);
  EXPECT_EQ(regcache_region_addr(nullptr), nullptr);
  EXPECT_EQ(regcache_region_length(nullptr), 0u);
  EXPECT_EQ(regcache_region_access(nullptr), 0u);
  EXPECT_EQ(regcache_region_handle(nullptr), nullptr);
  regcache_version(nullptr, nullptr, nullptr);

  regcache_t *c2 = nullptr;
  ExpectInvalid(regcache_create(nullptr, nullptr, &c2), -EINVAL, s,
                "create(NULL driver)");
  ExpectInvalid(regcache_create(drv_, nullptr, nullptr), -EINVAL, s,
                "create(NULL cache_p)");
  regcache_params_t p{};
  p.field_mask = REGCACHE_PARAM_NAME;
  p.name = nullptr;
  int rc = regcache_create(drv_, &p, &c2);
  EXPECT_TRUE(rc == 0 || rc == -EINVAL) << regcache_strerror(rc);
  if (rc == 0) regcache_destroy(c2);
  EXPECT_EQ(c2 == nullptr, rc != 0);

  EXPECT_EQ(regcache_driver_host_open(nullptr), -EINVAL);
  regcache_driver_t *d = nullptr;
  EXPECT_EQ(regcache_driver_custom_open(nullptr, nullptr, &d), -EINVAL);
  regcache_driver_ops_t ops{};
  ops.size = sizeof(ops);
  EXPECT_EQ(regcache_driver_custom_open(&ops, nullptr, &d), -EINVAL)
      << "missing callbacks";
  ops.size = 1;
  ops.reg = [](void *, void *, size_t, unsigned, void **, uint32_t *,
               uint64_t *, void **) { return 0; };
  ops.dereg = [](void *, void *) { return 0; };
  EXPECT_EQ(regcache_driver_custom_open(&ops, nullptr, &d), -EINVAL)
      << "table too small";
  ops.size = sizeof(ops);
  EXPECT_EQ(regcache_driver_custom_open(&ops, nullptr, nullptr), -EINVAL);
  EXPECT_EQ(d, nullptr);

  // Notifier entry points.
  EXPECT_EQ(regcache_notify_unmapped(nullptr, 0), 0);
  ExpectInvalid(
      regcache_notify_unmapped(reinterpret_cast<void *>(UINTPTR_MAX - 10), 100),
      -EINVAL, s, "notify wrapping");
  regcache_notifier_t *n = nullptr;
  EXPECT_EQ(regcache_notifier_register(nullptr, nullptr, &n), -EINVAL);
  regcache_notifier_ops_t nops{};
  EXPECT_EQ(regcache_notifier_register(&nops, nullptr, nullptr), -EINVAL);
  EXPECT_EQ(regcache_notifier_register_range(&nops, nullptr, buf_, 0, &n),
            -EINVAL);
  EXPECT_EQ(
      regcache_notifier_register_range(
          &nops, nullptr, reinterpret_cast<void *>(UINTPTR_MAX - 10), 100, &n),
      -EINVAL);
  EXPECT_EQ(regcache_notifier_unregister(nullptr), -EINVAL);
  uint64_t seq;
  EXPECT_EQ(regcache_notifier_read_begin(nullptr, &seq), -EINVAL);
  EXPECT_LT(regcache_notifier_read_retry(nullptr, 0), 0);
  EXPECT_EQ(regcache_notifier_resume(), -EINVAL) << "resume without quiesce";
  EXPECT_NE(regcache_notifier_source(), nullptr);

  // Library-wide calls.
  EXPECT_NE(regcache_strerror(0), nullptr);
  EXPECT_NE(regcache_strerror(-123456), nullptr);
  EXPECT_NE(regcache_strerror(INT32_MIN), nullptr);
  EXPECT_NE(regcache_strerror(77), nullptr);
  EXPECT_EQ(regcache_set_log_level(99), -EINVAL);
  EXPECT_EQ(regcache_set_log_level(-1), -EINVAL);
  EXPECT_EQ(regcache_config_set("NO_SUCH_TUNABLE", "1"), -ENOENT);
  EXPECT_LT(regcache_config_set(nullptr, "1"), 0);
  EXPECT_LT(regcache_config_set("MAX_REGIONS", nullptr), 0);
  EXPECT_EQ(regcache_config_set("MAX_REGIONS", "-5x"), -EINVAL);
  char buf[4];
  EXPECT_LT(regcache_config_get(nullptr, buf, sizeof buf), 0);
  EXPECT_EQ(regcache_config_get("NO_SUCH_TUNABLE", buf, sizeof buf), -ENOENT);
  EXPECT_GT(regcache_config_get("MONITOR", buf, sizeof buf), 0)
      << "truncation still reports the full length";
  EXPECT_EQ(std::strlen(buf), 3u) << "NUL-terminated within buflen";
  EXPECT_LT(regcache_config_print(nullptr, 0), 0);
  EXPECT_TRUE(SameStats(s, Stats(c_)));
}

TEST_F(HostileInputs, RegionPutToTheWrongCacheGoesToItsOwner) {
  regcache_t *other = nullptr;
  ASSERT_EQ(regcache_create(drv_, nullptr, &other), 0);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(c_, buf_ + 12 * kPage, kPage, 0, &r), 0);
  regcache_put(other, r);  // logged once, put to c_
  regcache_destroy(other);
  regcache_put(c_, held_);
  held_ = nullptr;
  ASSERT_EQ(regcache_flush(c_), 0);
  EXPECT_EQ(Stats(c_).regions, 0u) << "the region was put back to its owner";
}

#ifndef NDEBUG
// Debug builds abort with a message on a double put.
TEST_F(HostileInputs, DoublePutAbortsInDebugBuilds) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        regcache_region_t *r = nullptr;
        if (regcache_get(c_, buf_ + 4 * kPage, kPage, 0, &r) == 0) {
          regcache_put(c_, r);
          regcache_put(c_, r);
        }
      },
      "double put");
}
#else
// Release builds log once and ignore it: the state is unchanged.
TEST_F(HostileInputs, DoublePutIsIgnoredInReleaseBuilds) {
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(c_, buf_ + 4 * kPage, kPage, 0, &r), 0);
  regcache_put(c_, r);
  const regcache_stats_t s = Stats(c_);
  regcache_put(c_, r);
  regcache_put(c_, r);
  EXPECT_TRUE(SameStats(s, Stats(c_))) << StatsString(Stats(c_));
  // The held region is still fine.
  regcache_region_t *again = nullptr;
  ASSERT_EQ(regcache_get(c_, buf_ + 8 * kPage, 1, 0, &again), 0);
  EXPECT_EQ(again, held_);
  regcache_put(c_, again);
}
#endif

}  // namespace

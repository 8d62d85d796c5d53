// SPDX-License-Identifier: BSD-3-Clause
// libregcache-fi-monitor (drivers/fabric/fi_monitor.cc) on the host, without an
// RDMA device: no host provider of libfabric 1.17 uses the MR cache (tcp and
// shm register nothing through it), so the monitor is imported into the real
// libfabric (fi_import) and its callbacks are driven directly, the way
// util_mem_monitor.c / util_mr_cache.c drive them. libfabric's notify is
// wrapped to record each call and whether the memory was still mapped then.
//
// Negative control: the same binary under REGCACHE_FI_MONITOR_DROP=1 (ctest
// fi_monitor_drop_test) must record no notification and count drops.
#include <gtest/gtest.h>
#include <malloc.h>
#include <rdma/fabric.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext.h>
#include <regcache/fi_monitor.h>
#include <regcache/notifier.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

struct Call {
  uintptr_t addr;
  size_t len;
  bool mapped;  // the first page was still mapped when notify ran
};
std::mutex g_mu;
std::vector<Call> g_calls;
fi_ops_mem_notify *g_real = nullptr;  // libfabric's import_ops
fi_ops_mem_notify g_wrap;

bool Mapped(const void *p) {
  unsigned char v;
  return mincore(const_cast<void *>(p), kPage, &v) == 0;
}

void RecordingNotify(fid_mem_monitor *m, const void *addr, size_t len) {
  const bool mapped = Mapped(addr);
  {
    std::lock_guard<std::mutex> g(g_mu);
    g_calls.push_back({reinterpret_cast<uintptr_t>(addr), len, mapped});
  }
  g_real->notify(m, addr, len);  // libfabric's own (no MR cache: a no-op walk)
}

bool Dropping() {
  const char *v = getenv("REGCACHE_FI_MONITOR_DROP");
  return v && !strcmp(v, "1");
}

class FiMonitorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(regcache_fi_monitor_import(), 0);
    // libfabric initializes its monitors (and the imported one's cache list)
    // in fi_ini, on the first fi_getinfo; it starts a monitor only after that.
    fi_info *info = nullptr;
    if (fi_getinfo(FI_VERSION(1, 13), nullptr, nullptr, 0, nullptr, &info) == 0)
      fi_freeinfo(info);
    auto *mon = static_cast<fid_mem_monitor *>(regcache_fi_monitor_fid());
    ASSERT_NE(mon->import_ops, nullptr);  // set by libfabric's import
    g_real = mon->import_ops;
    g_wrap = *g_real;
    g_wrap.notify = RecordingNotify;
    mon->import_ops = &g_wrap;
    mon->export_ops->start(mon);  // libfabric does this when a cache is added
  }
  void SetUp() override {
    mon_ = static_cast<fid_mem_monitor *>(regcache_fi_monitor_fid());
    std::lock_guard<std::mutex> g(g_mu);
    g_calls.clear();
  }
  std::vector<Call> Calls() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_calls;
  }
  bool PatchSource() {
    return std::string(regcache_notifier_source()) == "patch";
  }
  // Under ThreadSanitizer neither patch nor uffd installs (docs/notifier.md):
  // the source is "none" and no automatic event exists to forward.
  bool NoAutomaticSource() {
    return std::string(regcache_notifier_source()) == "none";
  }
  fid_mem_monitor *mon_ = nullptr;
};

TEST_F(FiMonitorTest, OursIsInEffectAndLaterImportsAreRefused) {
  regcache_fi_monitor_stats_t s;
  ASSERT_EQ(regcache_fi_monitor_stats(&s), 0);
  EXPECT_EQ(s.imported, 1);
  EXPECT_EQ(regcache_fi_monitor_import(), 0);  // idempotent
  // What Open MPI 4.1 does in MPI_Init: its import now fails, ours stays.
  static fi_ops_mem_monitor other_ops = {};
  other_ops.size = sizeof(other_ops);
  static fid_mem_monitor other = {};
  other.fid.fclass = FI_CLASS_MEM_MONITOR;
  other.export_ops = &other_ops;
  EXPECT_EQ(fi_import(FI_VERSION(1, 13), "mr_cache", nullptr, 0, 0, &other.fid,
                      nullptr),
            -FI_EBUSY);
  EXPECT_EQ(regcache_fi_monitor_stats(nullptr), -EINVAL);
}

TEST_F(FiMonitorTest, MunmapOfASubscribedIntervalNotifiesBeforeTheChange) {
  if (NoAutomaticSource())
    GTEST_SKIP() << "no automatic event source in this build (sanitizer)";
  char *p = static_cast<char *>(mmap(nullptr, 8 * kPage, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(mon_->export_ops->subscribe(mon_, p + kPage, 2 * kPage), 0);
  EXPECT_TRUE(mon_->export_ops->valid(mon_, p + kPage, 2 * kPage));
  regcache_fi_monitor_stats_t before, after;
  regcache_fi_monitor_stats(&before);
  // Not overlapping the interval: nothing to tell libfabric.
  ASSERT_EQ(munmap(p + 6 * kPage, 2 * kPage), 0);
  EXPECT_TRUE(Calls().empty());
  ASSERT_EQ(munmap(p, 4 * kPage), 0);
  regcache_fi_monitor_stats(&after);
  const auto calls = Calls();
  if (Dropping()) {
    EXPECT_TRUE(calls.empty());
    EXPECT_EQ(after.dropped, before.dropped + 1);
    EXPECT_TRUE(mon_->export_ops->valid(mon_, p + kPage, 2 * kPage));
    return;
  }
  ASSERT_EQ(calls.size(), 1u) << "source " << regcache_notifier_source();
  EXPECT_EQ(calls[0].addr, reinterpret_cast<uintptr_t>(p));
  EXPECT_EQ(calls[0].len, 4 * kPage);
  if (PatchSource()) {
    EXPECT_TRUE(calls[0].mapped) << "notified after the unmap";
  }
  EXPECT_EQ(after.delivered, before.delivered + 1);
  // The sequence check: invalidated since subscribed.
  EXPECT_FALSE(mon_->export_ops->valid(mon_, p + kPage, 2 * kPage));
}

TEST_F(FiMonitorTest, MadviseDontneedAndFreeNotify) {
  if (Dropping()) GTEST_SKIP() << "covered by the munmap case";
  if (NoAutomaticSource())
    GTEST_SKIP() << "no automatic event source in this build (sanitizer)";
  char *p = static_cast<char *>(mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(mon_->export_ops->subscribe(mon_, p, 4 * kPage), 0);
  ASSERT_EQ(madvise(p, kPage, MADV_DONTNEED), 0);
  EXPECT_EQ(Calls().size(), 1u);
  EXPECT_FALSE(mon_->export_ops->valid(mon_, p, 4 * kPage));
  munmap(p, 4 * kPage);
#ifdef REGCACHE_SANITIZE_ADDRESS
  GTEST_SKIP() << "ASan's allocator: free() is not glibc's and unmaps nothing";
#endif
  // free() of an mmap'ed chunk (threshold fixed so it stays mmap'ed).
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  const size_t n = 1 << 20;
  char *b = static_cast<char *>(malloc(n));
  ASSERT_NE(b, nullptr);
  memset(b, 1, n);
  ASSERT_EQ(mon_->export_ops->subscribe(mon_, b, n), 0);
  const size_t before = Calls().size();
  free(b);
  EXPECT_EQ(Calls().size(), before + 1);
}

TEST_F(FiMonitorTest, IntervalsAreCountedAndReclaimed) {
  if (Dropping()) GTEST_SKIP() << "covered by the munmap case";
  if (NoAutomaticSource())
    GTEST_SKIP() << "no automatic event source in this build (sanitizer)";
  char *p = static_cast<char *>(mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  regcache_fi_monitor_stats_t s0, s;
  regcache_fi_monitor_stats(&s0);
  // libfabric 1.17 subscribes each new entry, also the same range again after
  // an eviction: one interval, two references.
  ASSERT_EQ(mon_->export_ops->subscribe(mon_, p, kPage), 0);
  ASSERT_EQ(mon_->export_ops->subscribe(mon_, p, kPage), 0);
  regcache_fi_monitor_stats(&s);
  EXPECT_EQ(s.intervals, s0.intervals + 1);
  mon_->export_ops->unsubscribe(mon_, p, kPage);
  EXPECT_TRUE(mon_->export_ops->valid(mon_, p, kPage));
  mon_->export_ops->unsubscribe(mon_, p, kPage);
  EXPECT_FALSE(mon_->export_ops->valid(mon_, p, kPage));
  regcache_fi_monitor_stats(&s);
  EXPECT_EQ(s.intervals, s0.intervals);
  // Many invalidated intervals do not accumulate.
  for (int i = 0; i < 500; ++i) {
    char *q = static_cast<char *>(mmap(nullptr, kPage, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(q, MAP_FAILED);
    ASSERT_EQ(mon_->export_ops->subscribe(mon_, q, kPage), 0);
    munmap(q, kPage);
  }
  regcache_fi_monitor_stats(&s);
  EXPECT_EQ(s.intervals, s0.intervals);
  munmap(p, 2 * kPage);
}

// Explicit events (regcache_notify_unmapped: every build, TSan included) while
// two threads subscribe, check and unsubscribe intervals, as libfabric's
// threads do under its mm_lock: every notification that reached libfabric is
// counted, and an interval subscribed before an overlapping event is invalid
// after it.
TEST_F(FiMonitorTest, ConcurrentSubscribeValidAndEvents) {
  if (Dropping()) GTEST_SKIP() << "covered by the munmap case";
  constexpr int kSlots = 32;
  char *p =
      static_cast<char *>(mmap(nullptr, kSlots * kPage, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  regcache_fi_monitor_stats_t s0, s1;
  regcache_fi_monitor_stats(&s0);
  const size_t calls0 = Calls().size();
  std::atomic<bool> stop{false};
  std::atomic<long> ops{0};
  auto churn = [&](unsigned seed) {
    while (!stop.load(std::memory_order_relaxed)) {
      char *a = p + (rand_r(&seed) % kSlots) * kPage;
      mon_->export_ops->subscribe(mon_, a, kPage);
      (void)mon_->export_ops->valid(mon_, a, kPage);
      if (rand_r(&seed) % 2) mon_->export_ops->unsubscribe(mon_, a, kPage);
      ++ops;
    }
  };
  std::thread t1(churn, 1u), t2(churn, 2u);
  unsigned seed = 3;
  // At least 3000 events and 2000 subscriber operations (bounded: 10 s).
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int i = 0; (i < 3000 || ops.load() < 2000) &&
                  std::chrono::steady_clock::now() < deadline;
       ++i) {
    char *a = p + (rand_r(&seed) % kSlots) * kPage;
    ASSERT_EQ(regcache_notify_unmapped(a, kPage), 0);
  }
  stop = true;
  t1.join();
  t2.join();
  regcache_fi_monitor_stats(&s1);
  EXPECT_GE(ops.load(), 2000);
  EXPECT_EQ(s1.delivered - s0.delivered, Calls().size() - calls0);
  // Sequentially: subscribed, then an overlapping event -> invalid.
  ASSERT_EQ(mon_->export_ops->subscribe(mon_, p, 2 * kPage), 0);
  EXPECT_TRUE(mon_->export_ops->valid(mon_, p, 2 * kPage));
  ASSERT_EQ(regcache_notify_unmapped(p + kPage, 1), 0);
  EXPECT_FALSE(mon_->export_ops->valid(mon_, p, 2 * kPage));
  munmap(p, kSlots * kPage);
}

}  // namespace

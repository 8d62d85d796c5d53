// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/policy/ucm_events_test.cc - the ucm source (importing UCX
// libucm's events) sees every path libucm hooks, with start BEFORE the memory
// changes and end after it.
//
// Each case runs in its own process (gtest_discover_tests): UCX's libucs is
// loaded first, which makes libucm patch libc (its bistro mode), so `auto`
// must pick ucm. "Before the change" is checked inside the start callback: the
// watched page is still mapped (mincore) and still holds its bytes (madvise
// DONTNEED zeroes an anonymous page); "after" inside the end callback: the
// page is gone (or zeroed).
#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/policy.h"
#include "tests/notifier/policy/env.h"

namespace regcache::notifier {
namespace {

constexpr size_t kPage = 4096;

// Atomics only: the callbacks run inside libucm's hooks.
struct Seen {
  std::atomic<uintptr_t> lo{0}, hi{0};  // the watched page
  std::atomic<int> starts{0}, ends{0};
  std::atomic<int> mapped_at_start{0}, intact_at_start{0};
  std::atomic<int> gone_at_end{0};
  std::atomic<bool> check_content{false};
};
Seen g_seen;

bool Mapped(uintptr_t a) {
  unsigned char v;
  return mincore(reinterpret_cast<void *>(a), kPage, &v) == 0;
}

bool Overlaps(const void *addr, size_t len) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  uintptr_t lo = g_seen.lo.load(), hi = g_seen.hi.load();
  return lo < hi && a < hi && lo < a + len;
}

void OnStart(void *, const void *addr, size_t len) {
  if (!Overlaps(addr, len)) return;
  uintptr_t lo = g_seen.lo.load();
  g_seen.starts++;
  if (Mapped(lo)) {
    g_seen.mapped_at_start++;
    if (g_seen.check_content.load() &&
        *reinterpret_cast<volatile unsigned char *>(lo) == 0xAB)
      g_seen.intact_at_start++;
  }
}

void OnEnd(void *, const void *addr, size_t len) {
  if (!Overlaps(addr, len)) return;
  uintptr_t lo = g_seen.lo.load();
  g_seen.ends++;
  if (!Mapped(lo) || (g_seen.check_content.load() &&
                      *reinterpret_cast<volatile unsigned char *>(lo) != 0xAB))
    g_seen.gone_at_end++;
}

const regcache_notifier_ops_t kOps = {OnStart, OnEnd, nullptr};

class UcmEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (REGCACHE_UNDER_TSAN || REGCACHE_UNDER_ASAN)
      GTEST_SKIP() << "the ucm source refuses ThreadSanitizer; under "
                      "AddressSanitizer libucm's hooks and the sanitizer's "
                      "interceptors both patch libc (not a supported mix)";
    if (!testing::LoadUcmAndPatch())
      GTEST_SKIP() << "UCX (libucs.so.0 / libucm.so.0) not installed";
    ResetForTesting();
    Options o;
    o.source = Source::kAuto;
    ASSERT_EQ(Configure(o), 0);
    ASSERT_EQ(Register(&kOps, nullptr, 0, 0, &sub_), 0);
    ASSERT_EQ(ActiveSource(), Source::kUcm)
        << "libucm patched libc first: auto must import its events";
    ASSERT_TRUE(CachingSafe());
  }
  void TearDown() override {
    if (sub_ != nullptr) Unregister(sub_);
    g_seen.lo = g_seen.hi = 0;
    g_seen.starts = g_seen.ends = 0;
    g_seen.mapped_at_start = g_seen.intact_at_start = g_seen.gone_at_end = 0;
    g_seen.check_content = false;
  }
  char *Map(size_t len) {
    auto *p = static_cast<char *>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    EXPECT_NE(p, MAP_FAILED);
    memset(p, 0xAB, len);
    return p;
  }
  void WatchPage(const void *p, bool content = false) {
    g_seen.check_content = content;
    g_seen.lo = reinterpret_cast<uintptr_t>(p);
    g_seen.hi = reinterpret_cast<uintptr_t>(p) + kPage;
  }
  void ExpectBracketed(bool content = false) {
    EXPECT_GE(g_seen.starts.load(), 1);
    EXPECT_EQ(g_seen.starts.load(), g_seen.ends.load());
    EXPECT_EQ(g_seen.mapped_at_start.load(), g_seen.starts.load())
        << "start must come before the memory changes";
    if (content) {
      EXPECT_EQ(g_seen.intact_at_start.load(), g_seen.starts.load());
    }
    EXPECT_GE(g_seen.gone_at_end.load(), 1) << "end must come after";
  }
  Subscription *sub_ = nullptr;
};

TEST_F(UcmEventsTest, Munmap) {
  char *p = Map(4 * kPage);
  WatchPage(p + kPage);
  ASSERT_EQ(munmap(p, 4 * kPage), 0);
  ExpectBracketed();
}

TEST_F(UcmEventsTest, MremapMayMove) {
  char *p = Map(4 * kPage);
  WatchPage(p);
  void *q = mremap(p, 4 * kPage, 64 * kPage, MREMAP_MAYMOVE);
  ASSERT_NE(q, MAP_FAILED);
  if (q == p) {
    // Grown in place: nothing was unmapped; the range was still reported.
    EXPECT_GE(g_seen.starts.load(), 1);
  } else {
    ExpectBracketed();
  }
  munmap(q, 64 * kPage);
}

TEST_F(UcmEventsTest, MremapShrinkReportsTheTail) {
  char *p = Map(4 * kPage);
  WatchPage(p + 3 * kPage);
  ASSERT_EQ(mremap(p, 4 * kPage, kPage, 0), p);
  ExpectBracketed();
  munmap(p, kPage);
}

TEST_F(UcmEventsTest, MadviseDontneed) {
  char *p = Map(4 * kPage);
  WatchPage(p + kPage, /*content=*/true);
  ASSERT_EQ(madvise(p, 4 * kPage, MADV_DONTNEED), 0);
  ExpectBracketed(/*content=*/true);
  munmap(p, 4 * kPage);
}

TEST_F(UcmEventsTest, MadviseKeepingPagesIsNotReported) {
  char *p = Map(4 * kPage);
  WatchPage(p);
  ASSERT_EQ(madvise(p, 4 * kPage, MADV_WILLNEED), 0);
  EXPECT_EQ(g_seen.starts.load(), 0);
  munmap(p, 4 * kPage);
}

TEST_F(UcmEventsTest, MmapFixedOverMemory) {
  char *p = Map(4 * kPage);
  WatchPage(p, /*content=*/true);
  void *q = mmap(p, 4 * kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ASSERT_EQ(q, p);
  ExpectBracketed(/*content=*/true);
  munmap(p, 4 * kPage);
}

TEST_F(UcmEventsTest, Shmdt) {
  int id = shmget(IPC_PRIVATE, 4 * kPage, IPC_CREAT | 0600);
  ASSERT_GE(id, 0);
  auto *p = static_cast<char *>(shmat(id, nullptr, 0));
  shmctl(id, IPC_RMID, nullptr);
  ASSERT_NE(p, reinterpret_cast<char *>(-1));
  memset(p, 0xAB, 4 * kPage);
  WatchPage(p + 2 * kPage);
  ASSERT_EQ(shmdt(p), 0);
  ExpectBracketed();
}

TEST_F(UcmEventsTest, BrkShrink) {
  // glibc's sbrk calls brk's entry, which libucm hooks.
  char *old = static_cast<char *>(sbrk(0));
  ASSERT_NE(sbrk(4 * kPage), reinterpret_cast<void *>(-1));
  char *page = reinterpret_cast<char *>(
      (reinterpret_cast<uintptr_t>(old) + kPage - 1) & ~(kPage - 1));
  memset(page, 0xAB, kPage);
  WatchPage(page);
  ASSERT_NE(sbrk(-4 * static_cast<intptr_t>(kPage)),
            reinterpret_cast<void *>(-1));
  ExpectBracketed();
}

TEST_F(UcmEventsTest, FreeOfAnMmappedChunk) {
  auto *p = static_cast<char *>(malloc(8 << 20));  // above the mmap threshold
  ASSERT_NE(p, nullptr);
  memset(p, 0xAB, 8 << 20);
  char *page = reinterpret_cast<char *>(
      (reinterpret_cast<uintptr_t>(p) + 2 * kPage) & ~(kPage - 1));
  WatchPage(page);
  free(p);
  ExpectBracketed();
}

TEST_F(UcmEventsTest, ForkedChildSeesUnmapsThroughTheImport) {
  // libucm's hooks and our handlers are process memory: a child inherits
  // both, with its own address space (unlike a uffd context).
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(10);
    char *p = Map(4 * kPage);
    WatchPage(p + kPage);
    if (munmap(p, 4 * kPage) != 0) _exit(2);
    _exit(g_seen.starts.load() >= 1 &&
                  g_seen.mapped_at_start.load() == g_seen.starts.load() &&
                  g_seen.gone_at_end.load() >= 1
              ? 0
              : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST_F(UcmEventsTest, MutedImportSeesNothing) {
  // Negative control of the checks above: the seam drops the events.
  sources::UcmMuteForTesting(true);
  char *p = Map(4 * kPage);
  WatchPage(p);
  ASSERT_EQ(munmap(p, 4 * kPage), 0);
  EXPECT_EQ(g_seen.starts.load(), 0);
  sources::UcmMuteForTesting(false);
}

}  // namespace
}  // namespace regcache::notifier

// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/uffd_exact_test.cc - the userfaultfd source is exact:
//
//   KernelProbeContract   the kernel behaviour the source relies on (no
//                         library): UFFDIO_ZEROPAGE with length 0 says -EAGAIN
//                         while a watched unmap's event is unread, -EINVAL
//                         otherwise.
//   FourThreadsRecycle    4 threads x 200: mmap 576 KiB, write, get 256 KiB,
//                         put, munmap. Another thread's mapping often lands on
//                         the address just unmapped; no get may return the old
//                         registration (stale oracle). 20 runs.
//   NegativeControl       the same with the probe switched off (the window of
//                         the old design): stale registrations appear.
//   OneTebibyte           -EFAULT, and no mapping inside the span got watched.
//   AppOwnUffd            memory the application watches with its own
//                         userfaultfd: an uncached registration (registered,
//                         used, deregistered at put), not an error.
//   ForkChild*            in a fork child (alarm-bounded) a new cache and the
//                         inherited one see unmaps: the child has a monitor
//                         of its own.
//
// Each case runs in its own process (gtest_discover_tests); all skip when the
// uffd source cannot be installed here (no userfaultfd, or a sanitizer).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/userfaultfd.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "notifier/internal.h"
#include "notifier/sources.h"
#include "tests/common/stale_oracle.h"

namespace {

using regcache::testing::StaleOracle;
namespace src = regcache::notifier::sources;

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

int OpenRawUffd() {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0)
    fd = static_cast<int>(
        syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1 /* USER_MODE */));
  if (fd < 0) return -1;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_EVENT_UNMAP;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int ZeropageProbe(int fd) {
  uffdio_zeropage z{};
  return ioctl(fd, UFFDIO_ZEROPAGE, &z) == 0 ? 0 : errno;
}

TEST(UffdKernel, KernelProbeContract) {
  if (REGCACHE_UNDER_ASAN || REGCACHE_UNDER_TSAN)
    GTEST_SKIP() << "a munmap blocked on an unread event inside the "
                    "sanitizer's interceptor can hang the reader "
                    "(docs/notifier.md, Sanitizers)";
  int fd = OpenRawUffd();
  if (fd < 0) GTEST_SKIP() << "no userfaultfd here";
  const size_t len = 16 * kPage;
  char *p = static_cast<char *>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(p);
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) {
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    ASSERT_EQ(ioctl(fd, UFFDIO_REGISTER, &reg), 0) << strerror(errno);
  }
  EXPECT_EQ(ZeropageProbe(fd), EINVAL) << "idle: validate_range(len 0)";
  // The unmapping thread blocks until we read its event.
  std::thread t([p, len] { munmap(p, len); });
  int seen = 0;
  for (int i = 0; i < 2000 && seen != EAGAIN; ++i) {
    seen = ZeropageProbe(fd);
    if (seen != EAGAIN) usleep(1000);
  }
  EXPECT_EQ(seen, EAGAIN) << "an unread UNMAP must hold mmap_changing";
  uffd_msg m{};
  ssize_t n = -1;
  for (int i = 0; i < 2000 && n != static_cast<ssize_t>(sizeof(m)); ++i) {
    n = read(fd, &m, sizeof(m));
    if (n != static_cast<ssize_t>(sizeof(m))) usleep(1000);
  }
  ASSERT_EQ(n, static_cast<ssize_t>(sizeof(m)));
  EXPECT_EQ(m.event, UFFD_EVENT_UNMAP);
  t.join();  // munmap returned: the kernel decremented mmap_changing first
  EXPECT_EQ(ZeropageProbe(fd), EINVAL);
  close(fd);
}

class UffdCache : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", "uffd"), 0);
    ASSERT_NE(o_.driver(), nullptr);
    int rc = regcache_create(o_.driver(), nullptr, &c_);
    if (rc != 0) GTEST_SKIP() << "uffd unavailable: " << regcache_strerror(rc);
    if (std::strcmp(regcache_notifier_source(), "uffd") != 0)
      GTEST_SKIP() << "uffd not active (" << regcache_notifier_source() << ")";
  }
  void TearDown() override {
    src::UffdSetExactForTesting(true);
    if (c_) regcache_destroy(c_);
  }
  uint64_t Misses() {
    regcache_stats_t s;
    regcache_get_stats(c_, &s);
    return s.misses;
  }

  struct Round {
    uint64_t gets = 0, stale = 0, errors = 0;
  };
  // The program: 4 threads x 200 of mmap 576 KiB, write, get 256 KiB,
  // check, put, munmap.
  Round RunRecycle(int threads = 4, int iters = 200) {
    Round total;
    std::atomic<uint64_t> gets{0}, stale{0}, errors{0};
    std::atomic<int> ready{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        ready.fetch_add(1);
        while (ready.load() < threads) std::this_thread::yield();
        const size_t map_len = 576 * 1024, get_len = 256 * 1024;
        for (int i = 0; i < iters; ++i) {
          char *p =
              static_cast<char *>(mmap(nullptr, map_len, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
          if (p == MAP_FAILED) {
            errors.fetch_add(1);
            continue;
          }
          std::memset(p, t * 31 + i, map_len);
          regcache_region_t *r = nullptr;
          int rc =
              regcache_get(c_, p, get_len, REGCACHE_ACCESS_LOCAL_WRITE, &r);
          gets.fetch_add(1);
          if (rc != 0) {
            errors.fetch_add(1);
          } else {
            if (o_.IsStale(r)) stale.fetch_add(1);
            regcache_put(c_, r);
          }
          munmap(p, map_len);
        }
      });
    }
    for (auto &th : ts) th.join();
    total.gets = gets.load();
    total.stale = stale.load();
    total.errors = errors.load();
    return total;
  }

  StaleOracle o_;
  regcache_t *c_ = nullptr;
};

int EnvInt(const char *name, int def) {
  const char *v = std::getenv(name);
  return v ? std::atoi(v) : def;
}

TEST_F(UffdCache, FourThreadsRecycleNeverStale) {
  const int runs = EnvInt("REGCACHE_UFFD_EXACT_RUNS", 20);
  uint64_t gets = 0, stale = 0, errors = 0;
  for (int run = 0; run < runs; ++run) {
    Round r = RunRecycle();
    gets += r.gets;
    stale += r.stale;
    errors += r.errors;
  }
  const src::UffdStats st = src::UffdGetStats();
  std::printf(
      "[uffd exact] %d runs, %llu gets, %llu stale, %llu errors; events %llu, "
      "busy probes %llu, flushes %llu\n",
      runs, static_cast<unsigned long long>(gets),
      static_cast<unsigned long long>(stale),
      static_cast<unsigned long long>(errors),
      static_cast<unsigned long long>(st.events),
      static_cast<unsigned long long>(st.busy_probes),
      static_cast<unsigned long long>(st.flushes));
  EXPECT_EQ(stale, 0u) << "a get returned a registration of unmapped memory";
  EXPECT_EQ(errors, 0u);
}

TEST_F(UffdCache, NegativeControlWithoutProbeIsStale) {
  src::UffdSetExactForTesting(false);
  uint64_t stale = 0, gets = 0;
  for (int run = 0; run < 40 && stale == 0; ++run) {
    Round r = RunRecycle();
    stale += r.stale;
    gets += r.gets;
  }
  std::printf("[uffd control] probe off: %llu stale of %llu gets\n",
              static_cast<unsigned long long>(stale),
              static_cast<unsigned long long>(gets));
  EXPECT_GT(stale, 0u)
      << "the oracle must see the window when the probe is off";
}

TEST_F(UffdCache, OneTebibyteIsEfaultAndWatchesNothing) {
  // A mapping at the start of the span, and another one inside it after a
  // hole: before, the source watched the second before failing with -EINVAL.
  const size_t len = 16 * kPage;
  char *a = static_cast<char *>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(a, MAP_FAILED);
  char *b = nullptr;
  for (size_t off = size_t{64} << 20; off < (size_t{1} << 39) && !b;
       off += size_t{64} << 20) {
    void *q = mmap(a + off, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (q == a + off)
      b = static_cast<char *>(q);
    else if (q != MAP_FAILED)
      munmap(q, len);
  }
  ASSERT_NE(b, nullptr) << "no free address inside the span";
  std::memset(a, 1, len);
  std::memset(b, 1, len);
  regcache_region_t *r = nullptr;
  EXPECT_EQ(
      regcache_get(c_, a, size_t{1} << 40, REGCACHE_ACCESS_LOCAL_WRITE, &r),
      -EFAULT);
  // b is not watched by the library: our own userfaultfd may register it.
  int fd = OpenRawUffd();
  ASSERT_GE(fd, 0);
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(b);
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  EXPECT_EQ(ioctl(fd, UFFDIO_REGISTER, &reg), 0)
      << "the failed request watched a mapping inside its span: "
      << strerror(errno);
  close(fd);
  munmap(b, len);
  munmap(a, len);
}

TEST_F(UffdCache, MemoryTheAppWatchesIsRegisteredUncached) {
  const size_t len = 16 * kPage;
  char *p = static_cast<char *>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  std::memset(p, 1, len);
  // The application's own userfaultfd watches p (WP mode, nothing protected,
  // so nothing ever faults to it).
  int fd = OpenRawUffd();
  ASSERT_GE(fd, 0);
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(p);
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  ASSERT_EQ(ioctl(fd, UFFDIO_REGISTER, &reg), 0) << strerror(errno);
  const uint64_t live = o_.live();
  for (int i = 0; i < 3; ++i) {
    const uint64_t misses = Misses();
    regcache_region_t *r = nullptr;
    ASSERT_EQ(regcache_get(c_, p, len, REGCACHE_ACCESS_LOCAL_WRITE, &r), 0)
        << "registered, not refused";
    EXPECT_EQ(Misses(), misses + 1) << "never a hit: nothing is cached";
    EXPECT_LE(regcache_region_addr(r), static_cast<void *>(p));
    EXPECT_FALSE(o_.IsStale(r));
    EXPECT_EQ(o_.live(), live + 1);
    regcache_put(c_, r);
    EXPECT_EQ(o_.live(), live) << "deregistered at put";
  }
  close(fd);
  munmap(p, len);
}

// ---------------------------------------------------------------- fork
// Checks one cache in the child: memory mapped in the child is cached (a
// second get hits), and once unmapped and mapped again at the same address a
// get is a miss (the child's monitor saw the unmap), with a fresh registration
// when `o` can tell. Returns the number of failed checks.
int ChildRoundTrip(regcache_t *c, StaleOracle *o) {
  int fails = 0;
  const size_t len = 64 * kPage;
  for (int i = 0; i < 20; ++i) {
    char *p = static_cast<char *>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) return fails + 1;
    std::memset(p, 1, len);
    regcache_region_t *r = nullptr;
    if (regcache_get(c, p, len, REGCACHE_ACCESS_LOCAL_WRITE, &r) != 0)
      return fails + 1;
    regcache_put(c, r);
    // Cached in the child (not merely registered uncached every time).
    regcache_stats_t h0, h1;
    regcache_get_stats(c, &h0);
    if (regcache_get(c, p, len, REGCACHE_ACCESS_LOCAL_WRITE, &r) != 0)
      return fails + 1;
    regcache_get_stats(c, &h1);
    if (h1.misses != h0.misses) {
      std::fprintf(stderr, "child: memory is not cached\n");
      ++fails;
    }
    regcache_put(c, r);
    munmap(p, len);
    void *q = mmap(p, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (q != p) {
      if (q != MAP_FAILED) munmap(q, len);
      continue;  // the address was taken meanwhile: nothing to check
    }
    std::memset(p, 2, len);
    regcache_stats_t s0, s1;
    regcache_get_stats(c, &s0);
    if (regcache_get(c, p, len, REGCACHE_ACCESS_LOCAL_WRITE, &r) != 0)
      return fails + 1;
    regcache_get_stats(c, &s1);
    if (s1.misses != s0.misses + 1) {
      std::fprintf(stderr, "child: get after munmap+mmap was a hit\n");
      ++fails;
    }
    if (o != nullptr && o->IsStale(r)) {
      std::fprintf(stderr, "child: stale registration\n");
      ++fails;
    }
    regcache_put(c, r);
    munmap(p, len);
  }
  return fails;
}

int WaitChild(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

TEST_F(UffdCache, ForkChildNewCacheSeesUnmaps) {
  // The parent has used the source (so the inherited state is the real one).
  ASSERT_EQ(RunRecycle(1, 4).errors, 0u);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(60);      // never hang the suite
    StaleOracle o;  // the child's own pagemap
    regcache_t *c = nullptr;
    if (regcache_create(o.driver(), nullptr, &c) != 0) _exit(10);
    int fails = ChildRoundTrip(c, &o);
    if (src::UffdGetStats().restarts < 1) {
      std::fprintf(stderr, "child: no monitor of its own\n");
      ++fails;
    }
    regcache_destroy(c);
    _exit(fails > 9 ? 9 : fails);
  }
  EXPECT_EQ(WaitChild(pid), 0);
}

TEST_F(UffdCache, ForkChildInheritedCacheSeesUnmaps) {
  ASSERT_EQ(RunRecycle(1, 4).errors, 0u);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(60);
    // The inherited cache's driver reads the parent's pagemap: only the
    // hit/miss check applies here.
    int fails = ChildRoundTrip(c_, nullptr);
    _exit(fails > 9 ? 9 : fails);
  }
  EXPECT_EQ(WaitChild(pid), 0);
}

// The monitor threads block every signal: a process-directed signal that the
// program's own threads block stays pending, never handled on a monitor
// thread, until a program thread unblocks it. Control: with
// kUffdTestSignalsUnblocked the monitor starts with its creator's mask (here
// nothing blocked) and one of its threads handles the signal.
std::atomic<pid_t> g_handler_tid{0};
void RecordHandlerTid(int) { g_handler_tid.store(gettid()); }

// Blocks SIGUSR2 in this thread (the test's only thread besides the
// monitor's), sends it to the process, waits up to 200 ms for a handler to
// run, unblocks it: the thread that handled it.
pid_t ThreadHandlingAProcessSignal() {
  g_handler_tid.store(0);
  struct sigaction sa {};
  sa.sa_handler = RecordHandlerTid;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR2, &sa, nullptr);
  sigset_t usr2, saved;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &usr2, &saved);
  kill(getpid(), SIGUSR2);
  for (int i = 0; i < 200 && g_handler_tid.load() == 0; ++i) usleep(1000);
  pthread_sigmask(SIG_SETMASK, &saved, nullptr);  // runs it here if pending
  signal(SIGUSR2, SIG_DFL);
  return g_handler_tid.load();
}

TEST_F(UffdCache, MonitorThreadsHandleNoSignal) {
  EXPECT_EQ(ThreadHandlingAProcessSignal(), gettid())
      << "a uffd monitor thread ran the program's signal handler";
}

TEST(UffdSignals, NegativeControlUnmaskedMonitorHandlesTheSignal) {
  src::g_uffd_test_off.fetch_or(src::kUffdTestSignalsUnblocked);
  ASSERT_EQ(regcache_config_set("MONITOR", "uffd"), 0);
  StaleOracle o;
  regcache_t *c = nullptr;
  const int rc = regcache_create(o.driver(), nullptr, &c);
  if (rc != 0) GTEST_SKIP() << "uffd unavailable: " << regcache_strerror(rc);
  if (std::strcmp(regcache_notifier_source(), "uffd") != 0) {
    regcache_destroy(c);
    GTEST_SKIP() << "uffd not active (" << regcache_notifier_source() << ")";
  }
  const pid_t tid = ThreadHandlingAProcessSignal();
  EXPECT_NE(tid, 0);
  EXPECT_NE(tid, gettid()) << "the control expects a monitor thread to run it";
  regcache_destroy(c);
}

}  // namespace

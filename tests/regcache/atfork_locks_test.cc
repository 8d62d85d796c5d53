// SPDX-License-Identifier: BSD-3-Clause
// tests/regcache/atfork_locks_test.cc - fork() while another thread holds (or
// hammers) one of regcache/'s own locks never blocks the child (issue 13: the
// library's init mutex, regcache/library.cc; the log sink's mutex,
// regcache/log.cc; the tunables' mutex, regcache/tunables.cc). The host
// driver's pin table has its twin in tests/drivers/host/host_fork_test.cc.
//
// Every child runs under alarm() (tests/common/fork_child.h): a hang is a
// SIGALRM death. Negative controls switch the lock's atfork child handler off
// (test-only switches) and must see the child hang.
#include <gtest/gtest.h>
#include <regcache/regcache.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "regcache/library.h"
#include "regcache/log.h"
#include "regcache/tunables.h"
#include "tests/common/fork_child.h"

namespace regcache {
namespace {

using namespace std::chrono_literals;
using testing::ChildHung;
using testing::ChildOk;
using testing::Describe;
using testing::FirstFailingChild;
using testing::ForkWhileHeld;
using testing::RunChild;
using testing::WithAtforkOff;

// The child's use of the init mutex: LibraryInit (every regcache_* call that
// needs the library runs it first).
int InitChild() { return LibraryInit() == 0 ? 0 : 3; }

int ForkWhileInitHeld(unsigned timeout_s) {
  return ForkWhileHeld(InitMutexForTesting(), InitChild, timeout_s);
}

TEST(AtforkLocks, InitMutexHeldByAnotherThread) {
  ASSERT_EQ(LibraryInit(), 0);
  int st = ForkWhileInitHeld(10);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
}

TEST(AtforkLocks, InitMutexNegativeControlHangs) {
  ASSERT_EQ(LibraryInit(), 0);
  int st = WithAtforkOff(SetInitAtforkOffForTesting,
                         [] { return ForkWhileInitHeld(2); });
  EXPECT_TRUE(ChildHung(st)) << Describe(st);
}

// Hammered: in a child (a process of its own), a thread takes the init mutex
// in a loop (LibraryInit) while the child forks 100 grandchildren that each
// run LibraryInit under alarm().
TEST(AtforkLocks, InitMutexHammered) {
#if defined(REGCACHE_SANITIZE_THREAD)
  GTEST_SKIP() << "the child starts a thread and forks again: TSan does not "
                  "support threads after a multi-threaded fork (the plain and "
                  "ASan builds run it)";
#endif
  int st = RunChild(
      [] {
        std::atomic<bool> stop{false};
        std::thread t([&] {
          while (!stop.load()) (void)LibraryInit();
        });
        int bad = 0;
        for (int i = 0; i < 100 && bad == 0; ++i) {
          int s = RunChild(InitChild, 10);
          if (!ChildOk(s)) bad = ChildHung(s) ? 9 : 8;
        }
        stop.store(true);
        t.join();
        return bad;
      },
      60);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
}

// ---- the tunables' mutex. Its prepare step used to take it: a holder whose
// free() waits in the patch hook for a quiescer's resume then deadlocked the
// quiescer's fork. Now prepare does not take it and the child re-initialises
// it. The holder here keeps it for up to 5 s: with a prepare that takes it,
// the fork itself would wait those 5 s (the deadlock, bounded).
int TunablesChild() {
  std::string v;
  return tunables::GetString("STATS", &v) == 0 ? 0 : 3;
}

TEST(AtforkLocks, TunablesMutexHeldByAnotherThread) {
  std::atomic<bool> release{false}, held{false}, timed_out{false};
  std::thread t([&] {
    std::lock_guard<std::mutex> g(tunables::MutexForTesting());
    held.store(true);
    // Bounded: released right after the fork, or after 5 s.
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (!release.load()) {
      if (std::chrono::steady_clock::now() > until) {
        timed_out.store(true);
        break;
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  while (!held.load()) std::this_thread::sleep_for(1ms);
  const int st = RunChild(TunablesChild, 10);
  release.store(true);
  t.join();
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
  EXPECT_FALSE(timed_out.load()) << "fork waited for the tunables' holder";
}

TEST(AtforkLocks, TunablesMutexNegativeControlHangs) {
  const int st = WithAtforkOff(tunables::SetAtforkOffForTesting, [] {
    return ForkWhileHeld(tunables::MutexForTesting(), TunablesChild, 2);
  });
  EXPECT_TRUE(ChildHung(st)) << Describe(st);
}

// Hammered: a thread changes an override without pause while this thread
// forks 100 children; each reads it and must see one whole value (the child
// may inherit the state mid-change: tunables.cc's copy-on-write invariant).
TEST(AtforkLocks, TunablesHammered) {
  std::atomic<bool> stop{false};
  std::thread t([&] {
    for (unsigned i = 0; !stop.load(); ++i)
      (void)tunables::Set("STATS", (i & 1) ? "y" : "n");
  });
  int bad = -1;
  for (int i = 0; i < 100; ++i) {
    const int st = RunChild(
        [] {
          std::string v;
          if (tunables::GetString("STATS", &v) != 0) return 3;
          return v == "y" || v == "n" ? 0 : 4;
        },
        10);
    if (!ChildOk(st)) {
      bad = i;
      ADD_FAILURE() << "fork " << i << ": " << Describe(st);
      break;
    }
  }
  stop.store(true);
  t.join();
  tunables::ClearOverridesForTesting();
  EXPECT_EQ(bad, -1);
}

// ---- the log sink: a host handler that is running (the sink's mutex held)
// when another thread forks.
std::atomic<int> g_in_handler{0};
std::atomic<bool> g_handler_release{false};

void BlockingHandler(void *, int, const char *) {
  g_in_handler.store(1);
  // Bounded: released by the test right after its fork.
  while (!g_handler_release.load()) std::this_thread::sleep_for(1ms);
}

void CountingHandler(void *arg, int, const char *) {
  static_cast<std::atomic<int> *>(arg)->fetch_add(1);
}

// The child installs its own handler (takes the sink's mutex) and logs one
// line through it.
int SinkChild() {
  std::atomic<int> n{0};
  log::SetHandler(CountingHandler, &n);
  log::Write(REGCACHE_LOG_ERROR, "from the child");
  log::SetHandler(nullptr, nullptr);
  return n.load() == 1 ? 0 : 4;
}

int ForkWhileSinkBusy(unsigned timeout_s) {
  g_in_handler.store(0);
  g_handler_release.store(false);
  log::SetHandler(BlockingHandler, nullptr);
  std::thread t([] { log::Write(REGCACHE_LOG_ERROR, "held"); });
  while (g_in_handler.load() == 0) std::this_thread::sleep_for(1ms);
  int status = RunChild(SinkChild, timeout_s);
  g_handler_release.store(true);
  t.join();
  log::SetHandler(nullptr, nullptr);
  return status;
}

TEST(AtforkLocks, LogSinkBusyInAnotherThread) {
  int st = ForkWhileSinkBusy(10);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
}

TEST(AtforkLocks, LogSinkNegativeControlHangs) {
  int st = WithAtforkOff(log::SetSinkAtforkOffForTesting,
                         [] { return ForkWhileSinkBusy(2); });
  EXPECT_TRUE(ChildHung(st)) << Describe(st);
}

// Hammered: a thread logs through a handler without pause while this thread
// forks 100 children that each log a line.
TEST(AtforkLocks, LogSinkHammered) {
  std::atomic<int> n{0};
  log::SetHandler(CountingHandler, &n);
  std::atomic<bool> stop{false};
  std::thread t([&] {
    while (!stop.load()) log::Write(REGCACHE_LOG_ERROR, "hammer");
  });
  std::string why;
  const int bad = FirstFailingChild(100, SinkChild, 10, &why);
  stop.store(true);
  t.join();
  log::SetHandler(nullptr, nullptr);
  EXPECT_EQ(bad, -1) << "fork " << bad << ": " << why;
  EXPECT_GT(n.load(), 0);
}

}  // namespace
}  // namespace regcache

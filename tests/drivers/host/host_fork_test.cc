// SPDX-License-Identifier: BSD-3-Clause
// tests/drivers/host/host_fork_test.cc - fork() while another thread holds (or
// hammers) the host driver's pin table (drivers/host/host_driver.cc, FORK;
// issue 13) never blocks the child's registrations; the child starts with an
// empty table (mlock is not inherited), and a registration of the parent
// deregistered in the child leaves the child's table alone.
//
// Every child runs under alarm() (tests/common/fork_child.h). The negative
// control switches the table's atfork child handler off and must see the
// child hang.
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>

#include <atomic>
#include <string>
#include <thread>

#include "drivers/host/host_driver.h"
#include "tests/common/fork_child.h"

namespace regcache::host {
namespace {

using testing::ChildHung;
using testing::ChildOk;
using testing::Describe;
using testing::FirstFailingChild;
using testing::ForkWhileHeld;
using testing::RunChild;
using testing::WithAtforkOff;

constexpr size_t kLen = 16 * 4096;

struct Mapping {
  Mapping() {
    p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
             -1, 0);
  }
  ~Mapping() {
    if (p != MAP_FAILED) munmap(p, kLen);
  }
  void *p;
};

// The child: register and deregister once through a new driver; 0 on success.
int RegisterChild() {
  Mapping m;
  if (m.p == MAP_FAILED) return 5;
  auto d = NewHostDriver(/*lock_pages=*/false);
  PortRegistration reg;
  if (d->Register(m.p, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &reg) != 0) return 3;
  if (LiveRegistrations() != 1) return 6;  // the parent's pins are not here
  if (d->Deregister(reg) != 0) return 4;
  return LiveRegistrations() == 0 ? 0 : 7;
}

int ForkWhilePinsHeld(unsigned timeout_s) {
  return ForkWhileHeld(PinsMutexForTesting(), RegisterChild, timeout_s);
}

TEST(HostFork, PinTableHeldByAnotherThread) {
  int st = ForkWhilePinsHeld(10);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
}

TEST(HostFork, PinTableNegativeControlHangs) {
  int st = WithAtforkOff(SetPinsAtforkOffForTesting,
                         [] { return ForkWhilePinsHeld(2); });
  EXPECT_TRUE(ChildHung(st)) << Describe(st);
}

// A thread registers and deregisters without pause while this thread forks
// 100 children that register; and one registration of the parent, live across
// the forks, is deregistered in the last child without touching its table.
TEST(HostFork, PinTableHammered) {
  Mapping held;
  ASSERT_NE(held.p, MAP_FAILED);
  auto d = NewHostDriver(false);
  PortRegistration parent_reg;
  ASSERT_EQ(d->Register(held.p, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &parent_reg),
            0);
  std::atomic<bool> stop{false};
  std::thread t([&] {
    Mapping m;
    auto td = NewHostDriver(false);
    while (!stop.load()) {
      PortRegistration r;
      if (td->Register(m.p, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &r) == 0)
        td->Deregister(r);
    }
  });
  std::string why;
  const int bad = FirstFailingChild(100, RegisterChild, 10, &why);
  stop.store(true);
  t.join();
  EXPECT_EQ(bad, -1) << "fork " << bad << ": " << why;
  int st = RunChild(
      [&] {
        if (LiveRegistrations() != 0) return 6;
        if (d->Deregister(parent_reg) != 0) return 4;
        return LiveRegistrations() == 0 ? RegisterChild() : 7;
      },
      10);
  EXPECT_TRUE(ChildOk(st)) << Describe(st);
  EXPECT_EQ(d->Deregister(parent_reg), 0);
}

}  // namespace
}  // namespace regcache::host

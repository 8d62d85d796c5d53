// SPDX-License-Identifier: BSD-3-Clause
// The verbs driver. Argument checks and the access/ODP-cap logic run
// everywhere; the rest needs an RDMA device and skips without one (this host
// has none: run it in the rxe guest, tests/rxe, or on a machine with an HCA).
#include <gtest/gtest.h>
#include <regcache/verbs.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "drivers/verbs/verbs_driver.h"
#include "regcache/driver_port.h"
#include "regcache/tunables.h"

namespace regcache {
namespace {

TEST(VerbsDriverOpen, RejectsBadArguments) {
  regcache_driver_t *d = nullptr;
  EXPECT_EQ(-EINVAL, regcache_driver_verbs_open(nullptr, &d));
  ibv_pd no_context = {};  // a PD without a device context
  EXPECT_EQ(-EINVAL, regcache_driver_verbs_open(&no_context, &d));
  EXPECT_EQ(nullptr, d);
  int odp = -1;
  EXPECT_EQ(-EINVAL, regcache_driver_verbs_odp(nullptr, &odp));
  EXPECT_EQ(-1, odp);
  EXPECT_EQ(-EINVAL,
            regcache_driver_verbs_limits(nullptr, nullptr, nullptr, nullptr));
}

TEST(VerbsDriverOpen, QueriesRejectOtherDrivers) {
  regcache_driver_ops_t ops = {};
  ops.size = sizeof(ops);
  ops.reg = [](void *, void *, size_t, unsigned, void **, uint32_t *,
               uint64_t *, void **) { return 0; };
  ops.dereg = [](void *, void *) { return 0; };
  regcache_driver_t *custom = nullptr;
  ASSERT_EQ(0, regcache_driver_custom_open(&ops, nullptr, &custom));
  int odp = -1;
  EXPECT_EQ(-EINVAL, regcache_driver_verbs_odp(custom, &odp));
  EXPECT_EQ(-EINVAL,
            regcache_driver_verbs_limits(custom, nullptr, nullptr, nullptr));
  custom->Unref();
}

TEST(VerbsDriverAccess, RemoteWriteAndAtomicImplyLocalWrite) {
  using verbs::AccessFlags;
  EXPECT_EQ(0, AccessFlags(0));
  EXPECT_EQ(IBV_ACCESS_LOCAL_WRITE, AccessFlags(REGCACHE_ACCESS_LOCAL_WRITE));
  EXPECT_EQ(IBV_ACCESS_REMOTE_READ, AccessFlags(REGCACHE_ACCESS_REMOTE_READ));
  EXPECT_EQ(IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE,
            AccessFlags(REGCACHE_ACCESS_REMOTE_WRITE));
  EXPECT_EQ(IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_LOCAL_WRITE,
            AccessFlags(REGCACHE_ACCESS_REMOTE_ATOMIC));
  EXPECT_EQ(IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
                IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC,
            AccessFlags(REGCACHE_ACCESS_ALL));
}

TEST(VerbsDriverOdp, NeedsEveryRcCapability) {
  ibv_odp_caps caps = {};
  EXPECT_FALSE(verbs::OdpCapsSufficient(caps));  // rxe on Linux 6.1: empty caps
  caps.general_caps = IBV_ODP_SUPPORT;
  caps.per_transport_caps.rc_odp_caps =
      IBV_ODP_SUPPORT_SEND | IBV_ODP_SUPPORT_RECV | IBV_ODP_SUPPORT_WRITE |
      IBV_ODP_SUPPORT_READ;
  EXPECT_FALSE(verbs::OdpCapsSufficient(caps))
      << "no atomic ODP: the cache may ask for it";
  caps.per_transport_caps.rc_odp_caps |= IBV_ODP_SUPPORT_ATOMIC;
  EXPECT_TRUE(verbs::OdpCapsSufficient(caps));
  caps.general_caps = 0;
  EXPECT_FALSE(verbs::OdpCapsSufficient(caps));
  caps.general_caps = IBV_ODP_SUPPORT;
  caps.per_transport_caps.rc_odp_caps = 0;
  caps.per_transport_caps.ud_odp_caps = ~0u;  // UD caps do not count
  EXPECT_FALSE(verbs::OdpCapsSufficient(caps));
}

// ---------------------------------------------------------------- with a
// device

class VerbsDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    errno = 0;
    ibv_device **list = ibv_get_device_list(&n);
    if (list == nullptr || n == 0) {
      std::string why = list ? "no devices" : std::strerror(errno);
      if (list) ibv_free_device_list(list);
      GTEST_SKIP()
          << "no RDMA device (ibv_get_device_list: " << why
          << "): the verbs driver is tested in the rxe guest (tests/rxe) or on "
             "a machine with an HCA";
    }
    ctx_ = ibv_open_device(list[0]);
    ibv_free_device_list(list);
    ASSERT_NE(nullptr, ctx_) << "ibv_open_device: " << std::strerror(errno);
    pd_ = ibv_alloc_pd(ctx_);
    ASSERT_NE(nullptr, pd_) << "ibv_alloc_pd: " << std::strerror(errno);
    ASSERT_EQ(0, ibv_query_device(ctx_, &attr_));
    buf_len_ = 1 << 20;
    buf_ = static_cast<char *>(mmap(nullptr, buf_len_, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(MAP_FAILED, buf_);
    std::memset(buf_, 1, buf_len_);
  }
  void TearDown() override {
    if (driver_) driver_->Unref();
    if (buf_ && buf_ != MAP_FAILED) munmap(buf_, buf_len_);
    if (pd_) ibv_dealloc_pd(pd_);
    if (ctx_) ibv_close_device(ctx_);
    unsetenv("REGCACHE_ODP");
  }
  void OpenDriver(const verbs::Options &o = {}) {
    ASSERT_EQ(0, verbs::Open(pd_, o, &driver_));
  }
  DriverPort &D() { return *driver_->impl; }

  ibv_context *ctx_ = nullptr;
  ibv_pd *pd_ = nullptr;
  ibv_device_attr attr_ = {};
  char *buf_ = nullptr;
  size_t buf_len_ = 0;
  regcache_driver_t *driver_ = nullptr;
};

TEST_F(VerbsDeviceTest, ReportsDeviceLimitsAndOdpDecision) {
  ASSERT_EQ(0, regcache_driver_verbs_open(pd_, &driver_));
  EXPECT_STREQ("verbs", D().Name());
  uint64_t max_mr_size = 0, max_mr = 0, live = 1;
  ASSERT_EQ(
      0, regcache_driver_verbs_limits(driver_, &max_mr_size, &max_mr, &live));
  EXPECT_EQ(attr_.max_mr_size, max_mr_size);
  EXPECT_EQ(static_cast<uint64_t>(attr_.max_mr), max_mr);
  EXPECT_EQ(0u, live);
  ibv_device_attr_ex ex = {};
  bool supported = ibv_query_device_ex(ctx_, nullptr, &ex) == 0 &&
                   verbs::OdpCapsSufficient(ex.odp_caps);
  int odp = -1;
  ASSERT_EQ(0, regcache_driver_verbs_odp(driver_, &odp));
  EXPECT_EQ(supported ? 1 : 0, odp);  // REGCACHE_ODP=auto (the default)
  EXPECT_EQ(supported, D().OnDemand());
}

TEST_F(VerbsDeviceTest, OdpModesFallBackToPinningWithoutSupport) {
  ibv_device_attr_ex ex = {};
  bool supported = ibv_query_device_ex(ctx_, nullptr, &ex) == 0 &&
                   verbs::OdpCapsSufficient(ex.odp_caps);
  for (const char *mode : {"off", "on", "auto"}) {
    setenv("REGCACHE_ODP", mode, 1);
    regcache_driver_t *d = nullptr;
    ASSERT_EQ(0, regcache_driver_verbs_open(pd_, &d)) << mode;
    int odp = -1;
    ASSERT_EQ(0, regcache_driver_verbs_odp(d, &odp));
    EXPECT_EQ(std::strcmp(mode, "off") != 0 && supported ? 1 : 0, odp) << mode;
    // Registration works either way.
    PortRegistration r;
    ASSERT_EQ(0, d->impl->Register(buf_, 4096, REGCACHE_ACCESS_ALL, &r))
        << mode;
    auto *mr = static_cast<ibv_mr *>(r.handle);  // the handle is the MR
    ASSERT_NE(nullptr, mr);
    EXPECT_EQ(buf_, mr->addr);
    EXPECT_EQ(0, d->impl->Deregister(r));
    d->Unref();
  }
  setenv("REGCACHE_ODP", "sometimes", 1);
  regcache_driver_t *d = nullptr;
  EXPECT_EQ(-EINVAL, regcache_driver_verbs_open(pd_, &d));
  EXPECT_EQ(nullptr, d);
}

TEST_F(VerbsDeviceTest, RegistersWithTheRequestedAccess) {
  OpenDriver();
  for (unsigned access = 0; access <= REGCACHE_ACCESS_ALL; ++access) {
    PortRegistration r;
    ASSERT_EQ(0, D().Register(buf_, buf_len_, access, &r))
        << "access " << access;
    auto *mr = static_cast<ibv_mr *>(r.handle);
    ASSERT_NE(nullptr, mr);
    EXPECT_EQ(buf_, mr->addr);
    EXPECT_EQ(buf_len_, mr->length);
    EXPECT_EQ(mr->lkey, r.lkey);
    EXPECT_EQ(mr->rkey, r.rkey);
    EXPECT_EQ(nullptr, r.desc);
    EXPECT_EQ(0, D().Deregister(r));
  }
}

TEST_F(VerbsDeviceTest, MaxMrGivesEnomemUntilOneIsReleased) {
  verbs::Options o;
  o.max_mr = 2;
  OpenDriver(o);
  PortRegistration r[3];
  ASSERT_EQ(0, D().Register(buf_, 4096, 0, &r[0]));
  ASSERT_EQ(0, D().Register(buf_ + 4096, 4096, 0, &r[1]));
  EXPECT_EQ(-ENOMEM, D().Register(buf_ + 8192, 4096, 0, &r[2]));
  uint64_t live = 0;
  ASSERT_EQ(0, regcache_driver_verbs_limits(driver_, nullptr, nullptr, &live));
  EXPECT_EQ(2u, live);
  EXPECT_EQ(0, D().Deregister(r[0]));
  EXPECT_EQ(0, D().Register(buf_ + 8192, 4096, 0, &r[2]));
  EXPECT_EQ(0, D().Deregister(r[1]));
  EXPECT_EQ(0, D().Deregister(r[2]));
}

TEST_F(VerbsDeviceTest, MaxMrSizeIsEnforcedAndReported) {
  verbs::Options o;
  o.max_mr_size = 64 * 1024;
  OpenDriver(o);
  EXPECT_EQ(64u * 1024, D().MaxRegionBytes());
  PortRegistration r;
  EXPECT_EQ(-EINVAL, D().Register(buf_, 128 * 1024, 0, &r));
  ASSERT_EQ(0, D().Register(buf_, 64 * 1024, 0, &r));
  EXPECT_EQ(0, D().Deregister(r));
}

TEST_F(VerbsDeviceTest, UnmappedMemoryFailsAndDeregAfterUnmapSucceeds) {
  OpenDriver();
  void *p = mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(MAP_FAILED, p);
  std::memset(p, 2, 1 << 16);
  PortRegistration r;
  ASSERT_EQ(0, D().Register(p, 1 << 16, REGCACHE_ACCESS_ALL, &r));
  ASSERT_EQ(0, munmap(p, 1 << 16));
  EXPECT_EQ(0, D().Deregister(r));
  PortRegistration bad;
  EXPECT_EQ(-EFAULT, D().Register(p, 1 << 16, REGCACHE_ACCESS_ALL, &bad));
}

TEST_F(VerbsDeviceTest, ForkedChildLeavesParentMrsAloneAndOpensItsOwn) {
  OpenDriver();
  PortRegistration r;
  ASSERT_EQ(0, D().Register(buf_, 4096, REGCACHE_ACCESS_ALL, &r));
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    PortRegistration c;
    if (D().Register(buf_ + 4096, 4096, 0, &c) != -EPERM) code |= 1;
    if (D().Deregister(r) != 0) code |= 2;  // must not destroy the parent's MR
    int n = 0;
    ibv_device **list = ibv_get_device_list(&n);
    ibv_context *ctx = list && n ? ibv_open_device(list[0]) : nullptr;
    ibv_pd *pd = ctx ? ibv_alloc_pd(ctx) : nullptr;
    regcache_driver_t *mine = nullptr;
    if (pd == nullptr || regcache_driver_verbs_open(pd, &mine) != 0) {
      code |= 4;
    } else {
      if (mine->impl->Register(buf_ + 4096, 4096, REGCACHE_ACCESS_ALL, &c) !=
              0 ||
          mine->impl->Deregister(c) != 0) {
        code |= 8;
      }
      mine->Unref();
    }
    if (pd) ibv_dealloc_pd(pd);
    if (ctx) ibv_close_device(ctx);
    if (list) ibv_free_device_list(list);
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(pid, waitpid(pid, &status, 0));
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(0, WEXITSTATUS(status))
      << "1: child registration not refused, 2: child "
         "dereg failed, 4: child open failed, 8: child "
         "registration failed";
  // The parent's MR is intact: its own deregistration succeeds.
  EXPECT_EQ(0, D().Deregister(r));
}

}  // namespace
}  // namespace regcache

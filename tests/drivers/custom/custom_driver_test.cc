// SPDX-License-Identifier: BSD-3-Clause
// The custom driver: the host's reg/dereg callbacks behind the DriverPort
// interface.
#include <gtest/gtest.h>
#include <regcache/regcache.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <thread>
#include <vector>

#include "regcache/driver_port.h"

namespace regcache {
namespace {

// A host transport's registration: records every call.
struct Host {
  std::atomic<int> regs{0}, deregs{0}, live{0};
  int fail_with = 0;
  // Atomics: ConcurrentCallers calls back from several threads.
  std::atomic<void *> last_addr{nullptr};
  std::atomic<size_t> last_len{0};
  std::atomic<unsigned> last_access{0};
  std::atomic<void *> last_dereg{nullptr};

  static int Reg(void *ctx, void *addr, size_t len, unsigned access,
                 void **handle_p, uint32_t *lkey_p, uint64_t *rkey_p,
                 void **desc_p) {
    auto *h = static_cast<Host *>(ctx);
    if (h->fail_with) return h->fail_with;
    int n = ++h->regs;
    ++h->live;
    h->last_addr = addr;
    h->last_len = len;
    h->last_access = access;
    *handle_p = reinterpret_cast<void *>(static_cast<uintptr_t>(0x1000 + n));
    *lkey_p = 100 + n;
    *rkey_p = 1000 + n;
    *desc_p = reinterpret_cast<void *>(static_cast<uintptr_t>(0x2000 + n));
    return 0;
  }
  static int Dereg(void *ctx, void *handle) {
    auto *h = static_cast<Host *>(ctx);
    ++h->deregs;
    --h->live;
    h->last_dereg = handle;
    return 0;
  }
};

regcache_driver_ops_t Ops() {
  regcache_driver_ops_t ops = {};
  ops.size = sizeof(ops);
  ops.reg = Host::Reg;
  ops.dereg = Host::Dereg;
  return ops;
}

TEST(CustomDriverOpen, ChecksTheTable) {
  Host host;
  regcache_driver_t *d = nullptr;
  regcache_driver_ops_t ops = Ops();
  EXPECT_EQ(-EINVAL, regcache_driver_custom_open(nullptr, &host, &d));
  EXPECT_EQ(-EINVAL, regcache_driver_custom_open(&ops, &host, nullptr));
  for (size_t size :
       {size_t{0}, sizeof(size_t), offsetof(regcache_driver_ops_t, dereg),
        sizeof(regcache_driver_ops_t) - 1}) {
    ops.size = size;
    EXPECT_EQ(-EINVAL, regcache_driver_custom_open(&ops, &host, &d))
        << "size " << size;
  }
  ops = Ops();
  ops.reg = nullptr;
  EXPECT_EQ(-EINVAL, regcache_driver_custom_open(&ops, &host, &d));
  ops = Ops();
  ops.dereg = nullptr;
  EXPECT_EQ(-EINVAL, regcache_driver_custom_open(&ops, &host, &d));
  EXPECT_EQ(nullptr, d);
}

TEST(CustomDriverOpen, AcceptsALargerTableFromANewerHeader) {
  struct NewerOps {
    regcache_driver_ops_t v01;
    int (*future)(void *);  // a later version's extra callback
  } newer = {};
  newer.v01 = Ops();
  newer.v01.size = sizeof(newer);
  newer.future = [](void *) { return 0; };
  Host host;
  regcache_driver_t *d = nullptr;
  ASSERT_EQ(0, regcache_driver_custom_open(&newer.v01, &host, &d));
  EXPECT_STREQ("custom", d->impl->Name());
  d->Unref();
}

TEST(CustomDriver, PassesArgumentsAndResultsThrough) {
  Host host;
  regcache_driver_ops_t ops = Ops();
  regcache_driver_t *d = nullptr;
  ASSERT_EQ(0, regcache_driver_custom_open(&ops, &host, &d));
  ops.reg = nullptr;  // the driver copied the table at open
  char buf[64];
  PortRegistration r;
  ASSERT_EQ(
      0, d->impl->Register(buf, sizeof(buf), REGCACHE_ACCESS_REMOTE_READ, &r));
  EXPECT_EQ(buf, host.last_addr.load());
  EXPECT_EQ(sizeof(buf), host.last_len.load());
  EXPECT_EQ(REGCACHE_ACCESS_REMOTE_READ, host.last_access.load());
  EXPECT_EQ(reinterpret_cast<void *>(0x1001), r.handle);
  EXPECT_EQ(101u, r.lkey);
  EXPECT_EQ(1001u, r.rkey);
  EXPECT_EQ(reinterpret_cast<void *>(0x2001), r.desc);
  EXPECT_FALSE(d->impl->OnDemand());
  EXPECT_EQ(SIZE_MAX, d->impl->MaxRegionBytes());
  ASSERT_EQ(0, d->impl->Deregister(r));
  EXPECT_EQ(r.handle, host.last_dereg.load());
  d->Unref();
}

TEST(CustomDriver, OutputsTheCallbackLeavesAloneReadZero) {
  regcache_driver_ops_t ops = Ops();
  ops.reg = [](void *, void *, size_t, unsigned, void **handle_p, uint32_t *,
               uint64_t *, void **) {
    *handle_p = reinterpret_cast<void *>(0x42);
    return 0;
  };
  regcache_driver_t *d = nullptr;
  Host host;
  ASSERT_EQ(0, regcache_driver_custom_open(&ops, &host, &d));
  PortRegistration r;
  r.lkey = 7;
  r.rkey = 7;
  r.desc = &r;
  char buf[8];
  ASSERT_EQ(0, d->impl->Register(buf, sizeof(buf), 0, &r));
  EXPECT_EQ(0u, r.lkey);
  EXPECT_EQ(0u, r.rkey);
  EXPECT_EQ(nullptr, r.desc);
  d->Unref();
}

TEST(CustomDriver, ErrorsPropagateAsNegativeErrno) {
  Host host;
  regcache_driver_ops_t ops = Ops();
  regcache_driver_t *d = nullptr;
  ASSERT_EQ(0, regcache_driver_custom_open(&ops, &host, &d));
  char buf[8];
  PortRegistration r;
  r.handle = &r;
  host.fail_with = -ENOMEM;
  EXPECT_EQ(-ENOMEM, d->impl->Register(buf, sizeof(buf), 0, &r));
  EXPECT_EQ(&r, r.handle) << "untouched on error";
  host.fail_with = EFAULT;  // a host that returns a positive errno
  EXPECT_EQ(-EFAULT, d->impl->Register(buf, sizeof(buf), 0, &r));
  d->Unref();

  ops.dereg = [](void *, void *) { return -EBUSY; };
  ASSERT_EQ(0, regcache_driver_custom_open(&ops, &host, &d));
  EXPECT_EQ(-EBUSY, d->impl->Deregister(r));
  d->Unref();
}

TEST(CustomDriver, ConcurrentCallers) {
  Host host;
  regcache_driver_ops_t ops = Ops();
  regcache_driver_t *d = nullptr;
  ASSERT_EQ(0, regcache_driver_custom_open(&ops, &host, &d));
  constexpr int kThreads = 4, kIters = 2000;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  static char buf[kThreads][64];
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        PortRegistration r;
        if (d->impl->Register(buf[t], 64, 0, &r) != 0) ++failures;
        if (d->impl->Deregister(r) != 0) ++failures;
      }
    });
  }
  for (auto &th : threads) th.join();
  EXPECT_EQ(0, failures.load());
  EXPECT_EQ(kThreads * kIters, host.regs.load());
  EXPECT_EQ(kThreads * kIters, host.deregs.load());
  EXPECT_EQ(0, host.live.load());
  d->Unref();
}

}  // namespace
}  // namespace regcache

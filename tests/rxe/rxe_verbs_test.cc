// SPDX-License-Identifier: BSD-3-Clause
// tests/rxe/rxe_verbs_test.cc - the cache on the verbs driver with a real
// device (rxe0 in the guest, or an HCA): get/put with RDMA WRITE and READ
// through cached MRs between two RC QPs, the ODP fallback to pinning, and
// fork() with cached MRs.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "tests/rxe/rdma_harness.h"
#include "tests/rxe/rxe_cache_util.h"

namespace regcache_rxe {
namespace {

constexpr size_t kLen = 256 * 1024;

uint8_t *MapAnon(size_t len) {
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t *>(p);
}

TEST(RxeVerbsCache, GetPutWriteReadThroughCachedMrs) {
  RXE_SKIP_IF_NO_DEVICE();
  VerbsCache vc;
  ASSERT_EQ("", vc.Open());
  uint8_t *buf = MapAnon(kLen);
  ASSERT_NE(nullptr, buf);
  std::memset(buf, 0, kLen);

  regcache_region_t *r = nullptr;
  ASSERT_EQ(0, regcache_get(vc.cache, buf, kLen, kRemoteAccess, &r));
  ASSERT_NE(nullptr, r);
  // The region covers the range, and its keys are the MR's.
  auto *base = static_cast<uint8_t *>(regcache_region_addr(r));
  EXPECT_LE(base, buf);
  EXPECT_GE(base + regcache_region_length(r), buf + kLen);
  auto *mr = static_cast<ibv_mr *>(regcache_region_handle(r));
  ASSERT_NE(nullptr, mr);
  EXPECT_EQ(vc.lb.pd(), mr->pd);
  EXPECT_EQ(mr->lkey, regcache_region_lkey(r));
  EXPECT_EQ(uint64_t{mr->rkey}, regcache_region_rkey(r));
  EXPECT_EQ(regcache_region_addr(r), mr->addr);
  EXPECT_EQ(regcache_region_length(r), mr->length);
  EXPECT_EQ(kRemoteAccess, regcache_region_access(r) & kRemoteAccess);

  // RDMA WRITE into the cached MR (remote side: rkey).
  FillPattern(vc.lb.staging(), kLen, 1);
  ASSERT_EQ("", vc.WriteTo(buf, kLen, r));
  EXPECT_EQ(0u, CountWrongBytes(buf, kLen, 1));
  // RDMA READ from the cached MR.
  FillPattern(buf, kLen, 2);
  std::memset(vc.lb.staging(), 0, kLen);
  ASSERT_EQ(
      "", vc.lb.ReadToStaging(kLen, reinterpret_cast<uintptr_t>(buf),
                              static_cast<uint32_t>(regcache_region_rkey(r))));
  EXPECT_EQ(0u, CountWrongBytes(vc.lb.staging(), kLen, 2));
  // The cached MR as the local side (lkey): WRITE from it into the staging MR,
  // on QP 1.
  FillPattern(buf, kLen, 3);
  ASSERT_EQ("", vc.lb.Write(buf, regcache_region_lkey(r), kLen,
                            reinterpret_cast<uintptr_t>(vc.lb.staging()),
                            vc.lb.staging_rkey(), 1));
  EXPECT_EQ(0u, CountWrongBytes(vc.lb.staging(), kLen, 3));
  const uint32_t lkey = regcache_region_lkey(r);
  const uint64_t rkey = regcache_region_rkey(r);
  regcache_put(vc.cache, r);

  // A second get of the same memory (and of a sub-range) is a hit with the same
  // keys.
  const regcache_stats_t before = vc.Stats();
  regcache_region_t *r2 = nullptr;
  ASSERT_EQ(0, regcache_get(vc.cache, buf + 4096, 8192,
                            REGCACHE_ACCESS_REMOTE_WRITE, &r2));
  EXPECT_EQ(lkey, regcache_region_lkey(r2));
  EXPECT_EQ(rkey, regcache_region_rkey(r2));
  const regcache_stats_t after = vc.Stats();
  EXPECT_EQ(before.hits + 1, after.hits);
  EXPECT_EQ(before.registrations, after.registrations);
  FillPattern(vc.lb.staging(), 8192, 4);
  ASSERT_EQ("", vc.WriteTo(buf + 4096, 8192, r2));
  EXPECT_EQ(0u, CountWrongBytes(buf + 4096, 8192, 4));
  regcache_put(vc.cache, r2);

  // Other memory gets another MR with other keys; both work at once.
  uint8_t *buf2 = MapAnon(kLen);
  ASSERT_NE(nullptr, buf2);
  regcache_region_t *a = nullptr;
  regcache_region_t *b = nullptr;
  ASSERT_EQ(0, regcache_get(vc.cache, buf, kLen, kRemoteAccess, &a));
  ASSERT_EQ(0, regcache_get(vc.cache, buf2, kLen, kRemoteAccess, &b));
  EXPECT_NE(regcache_region_rkey(a), regcache_region_rkey(b));
  FillPattern(vc.lb.staging(), kLen, 5);
  ASSERT_EQ("", vc.WriteTo(buf2, kLen, b));
  EXPECT_EQ(0u, CountWrongBytes(buf2, kLen, 5));
  // WRITE from region a (local) into region b (remote): both keys from the
  // cache.
  FillPattern(buf, kLen, 6);
  ASSERT_EQ("", vc.lb.Write(buf, regcache_region_lkey(a), kLen,
                            reinterpret_cast<uintptr_t>(buf2),
                            static_cast<uint32_t>(regcache_region_rkey(b))));
  EXPECT_EQ(0u, CountWrongBytes(buf2, kLen, 6));
  regcache_put(vc.cache, a);
  regcache_put(vc.cache, b);

  // Flush deregisters every unused MR.
  ASSERT_EQ(0, regcache_flush(vc.cache));
  uint64_t live = ~0ull;
  ASSERT_EQ(0,
            regcache_driver_verbs_limits(vc.driver, nullptr, nullptr, &live));
  EXPECT_EQ(0u, live);
  munmap(buf, kLen);
  munmap(buf2, kLen);
}

// rxe on Debian's 6.1 kernel has no ODP: the verbs driver must see that and
// pin.
TEST(RxeVerbsCache, NoOdpOnRxeSoTheDriverPinsAndTheCacheInvalidates) {
  RXE_SKIP_IF_NO_DEVICE();
  VerbsCache vc;
  ASSERT_EQ("", vc.Open());
  ibv_device_attr_ex attr{};
  ASSERT_EQ(0, ibv_query_device_ex(vc.lb.context(), nullptr, &attr));
  const bool device_odp = (attr.odp_caps.general_caps & IBV_ODP_SUPPORT) != 0;
  int odp = -1;
  ASSERT_EQ(0, regcache_driver_verbs_odp(vc.driver, &odp));
  if (vc.lb.device_name().rfind("rxe", 0) == 0) {
    EXPECT_FALSE(device_odp)
        << "rxe reports ODP support: is this kernel newer than 6.1?";
    EXPECT_EQ(0, odp) << "the driver must fall back to pinning on rxe";
    // The device really refuses ODP registrations.
    uint8_t *p = MapAnon(4096);
    ASSERT_NE(nullptr, p);
    errno = 0;
    ibv_mr *m = ibv_reg_mr(vc.lb.pd(), p, 4096,
                           IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_ON_DEMAND);
    EXPECT_EQ(nullptr, m);
    if (m != nullptr) ibv_dereg_mr(m);
    munmap(p, 4096);
  } else if (!device_odp) {
    EXPECT_EQ(0, odp);
  }
  // The same decision with REGCACHE_ODP=on (fallback with a warning) and off.
  for (const char *mode : {"on", "off", "auto"}) {
    ASSERT_EQ(0, regcache_config_set("ODP", mode));
    regcache_driver_t *d = nullptr;
    ASSERT_EQ(0, regcache_driver_verbs_open(vc.lb.pd(), &d))
        << "REGCACHE_ODP=" << mode;
    int o = -1;
    ASSERT_EQ(0, regcache_driver_verbs_odp(d, &o));
    if (!device_odp || std::strcmp(mode, "off") == 0) {
      EXPECT_EQ(0, o) << mode;
    }
    regcache_driver_close(d);
  }
  if (odp != 0)
    GTEST_SKIP()
        << "this device uses ODP; the pinning checks below do not apply";

  // Pinned registrations: data moves, and an unmap invalidates the region (an
  // ODP cache could keep it; a pinning one must not).
  uint8_t *buf = MapAnon(kLen);
  ASSERT_NE(nullptr, buf);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(0, regcache_get(vc.cache, buf, kLen, kRemoteAccess, &r));
  FillPattern(vc.lb.staging(), kLen, 11);
  ASSERT_EQ("", vc.WriteTo(buf, kLen, r));
  EXPECT_EQ(0u, CountWrongBytes(buf, kLen, 11));
  regcache_put(vc.cache, r);
  const regcache_stats_t before = vc.Stats();
  regcache_notify_unmapped(buf, kLen);  // works with every event source
  ASSERT_EQ(0, munmap(buf, kLen));
  const regcache_stats_t after = vc.Stats();
  EXPECT_GT(after.invalidations, before.invalidations)
      << "a pinned (non-ODP) region must be invalidated when its memory is "
         "unmapped";
}

// fork() with cached MRs. The parent's registered pages must stay its own (the
// kernel copies DMA-pinned pages for the child on >= 5.13), the parent's cache
// keeps working, the child cannot use the inherited driver (-EPERM, by the
// driver's contract) but can build its own device, PD, driver and cache and
// move data.
TEST(RxeVerbsCache, ForkWithCachedMrs) {
  RXE_SKIP_IF_NO_DEVICE();
  VerbsCache vc;
  ASSERT_EQ("", vc.Open());
  uint8_t *buf = MapAnon(kLen);
  ASSERT_NE(nullptr, buf);
  std::memset(buf, 1, kLen);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(0, regcache_get(vc.cache, buf, kLen, kRemoteAccess, &r));
  FillPattern(vc.lb.staging(), kLen, 21);
  ASSERT_EQ("", vc.WriteTo(buf, kLen, r));
  ASSERT_EQ(0u, CountWrongBytes(buf, kLen, 21));
  const uint64_t rkey_before_fork = regcache_region_rkey(r);
  regcache_put(vc.cache, r);  // cached, unused

  int go[2];
  int done[2];
  ASSERT_EQ(0, pipe(go));
  ASSERT_EQ(0, pipe(done));
  fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    // Child: no gtest assertions; the exit status says which step failed.
    close(go[1]);
    close(done[0]);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(10);
    uint8_t *mine = MapAnon(kLen);
    if (mine == nullptr) _exit(11);
    regcache_region_t *x = nullptr;
    const int inherited = regcache_get(vc.cache, mine, kLen, kRemoteAccess, &x);
    if (inherited == 0) regcache_put(vc.cache, x);
    if (inherited != -EPERM) {
      std::fprintf(
          stderr,
          "child: get through the inherited cache gave %d, not -EPERM\n",
          inherited);
      _exit(12);
    }
    {
      VerbsCache own;
      if (std::string e = own.Open(); !e.empty()) {
        std::fprintf(stderr, "child: own device/cache: %s\n", e.c_str());
        _exit(13);
      }
      for (uint64_t seed = 30; seed < 40; ++seed) {
        regcache_region_t *y = nullptr;
        if (int rc = regcache_get(own.cache, mine, kLen, kRemoteAccess, &y)) {
          std::fprintf(stderr, "child: regcache_get: %s\n",
                       regcache_strerror(rc));
          _exit(14);
        }
        FillPattern(own.lb.staging(), kLen, seed);
        if (std::string e = own.WriteTo(mine, kLen, y); !e.empty()) {
          std::fprintf(stderr, "child: RDMA WRITE: %s\n", e.c_str());
          _exit(15);
        }
        if (CountWrongBytes(mine, kLen, seed) != 0) _exit(16);
        regcache_put(own.cache, y);
      }
      const regcache_stats_t s = own.Stats();
      if (s.registrations != 1 || s.hits != 9) _exit(17);
    }
    // The child also writes its copy of the parent's buffer: that must not
    // reach the parent's pages.
    std::memset(buf, 0x42, kLen);
    if (write(done[1], "x", 1) != 1) _exit(18);
    _exit(0);
  }
  close(go[0]);
  close(done[1]);
  // While the child is alive (pages shared copy-on-write), the parent writes
  // its buffer with the CPU, then moves data into it with RDMA through the
  // cached MR: both must land in the parent's own pages.
  std::memset(buf, 2, kLen);
  regcache_region_t *r2 = nullptr;
  ASSERT_EQ(0, regcache_get(vc.cache, buf, kLen, kRemoteAccess, &r2));
  EXPECT_EQ(rkey_before_fork, regcache_region_rkey(r2))
      << "the cached MR is reused";
  FillPattern(vc.lb.staging(), kLen, 22);
  ASSERT_EQ("", vc.WriteTo(buf, kLen, r2));
  EXPECT_EQ(0u, CountWrongBytes(buf, kLen, 22))
      << "parent after fork, child alive";
  ASSERT_EQ(1, write(go[1], "x", 1));
  char c;
  ASSERT_EQ(1, read(done[0], &c, 1))
      << "the child died before finishing (see its stderr)";
  int status = 0;
  ASSERT_EQ(pid, waitpid(pid, &status, 0));
  ASSERT_TRUE(WIFEXITED(status))
      << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(0, WEXITSTATUS(status))
      << "child step failed (exit code = step, see the test)";

  // The parent's cached MR still moves data into the parent's memory.
  FillPattern(vc.lb.staging(), kLen, 23);
  ASSERT_EQ("", vc.WriteTo(buf, kLen, r2));
  EXPECT_EQ(0u, CountWrongBytes(buf, kLen, 23))
      << "parent after the child exited";
  regcache_put(vc.cache, r2);
  // And new registrations in the parent work.
  uint8_t *buf2 = MapAnon(kLen);
  ASSERT_NE(nullptr, buf2);
  regcache_region_t *r3 = nullptr;
  ASSERT_EQ(0, regcache_get(vc.cache, buf2, kLen, kRemoteAccess, &r3));
  FillPattern(vc.lb.staging(), kLen, 24);
  ASSERT_EQ("", vc.WriteTo(buf2, kLen, r3));
  EXPECT_EQ(0u, CountWrongBytes(buf2, kLen, 24));
  regcache_put(vc.cache, r3);
  close(go[1]);
  close(done[0]);
}

}  // namespace
}  // namespace regcache_rxe

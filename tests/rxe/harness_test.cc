// SPDX-License-Identifier: BSD-3-Clause
// tests/rxe/harness_test.cc - the rxe test bed itself, with raw verbs only (no
// cache): the loopback harness moves data both ways, recovers from a failed
// completion, and the stale-MR hazard the cache exists to prevent is observable
// on this device.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>

#include "tests/rxe/rdma_harness.h"

namespace regcache_rxe {
namespace {

constexpr size_t kLen = 64 * 1024;
constexpr int kAccess =
    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

void *MapAnon(size_t len, void *at = nullptr) {
  void *p = mmap(
      at, len, PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | (at != nullptr ? MAP_FIXED_NOREPLACE : 0),
      -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

TEST(RxeHarness, OpensDeviceAndConnectsTwoQps) {
  RXE_SKIP_IF_NO_DEVICE();
  Loopback lb;
  ASSERT_EQ("", lb.Open());
  EXPECT_GE(lb.gid_index(), 0);
  if (lb.device_name() == "rxe0") {
    EXPECT_TRUE(lb.roce());
    EXPECT_EQ(1, lb.gid_index())
        << "rxe0 on rxd0: the RoCEv2 IPv4 GID is index 1";
  }
  std::printf("device %s, gid index %d, %s\n", lb.device_name().c_str(),
              lb.gid_index(), lb.roce() ? "RoCE" : "InfiniBand");
}

TEST(RxeHarness, RawMrWriteAndRead) {
  RXE_SKIP_IF_NO_DEVICE();
  Loopback lb;
  ASSERT_EQ("", lb.Open());
  auto *buf = static_cast<uint8_t *>(MapAnon(kLen));
  ASSERT_NE(nullptr, buf);
  std::memset(buf, 0, kLen);
  ibv_mr *mr = ibv_reg_mr(lb.pd(), buf, kLen, kAccess);
  ASSERT_NE(nullptr, mr) << std::strerror(errno);

  for (uint64_t seed = 1; seed <= 8; ++seed) {
    FillPattern(lb.staging(), kLen, seed);
    ASSERT_EQ("", lb.WriteFromStaging(kLen, reinterpret_cast<uintptr_t>(buf),
                                      mr->rkey));
    ASSERT_EQ(0u, CountWrongBytes(buf, kLen, seed))
        << "RDMA WRITE, seed " << seed;
    FillPattern(buf, kLen, seed + 100);
    std::memset(lb.staging(), 0, kLen);
    ASSERT_EQ(
        "", lb.ReadToStaging(kLen, reinterpret_cast<uintptr_t>(buf), mr->rkey));
    ASSERT_EQ(0u, CountWrongBytes(lb.staging(), kLen, seed + 100))
        << "RDMA READ, seed " << seed;
  }
  // A 1-byte write into the middle, through QP 1 this time.
  FillPattern(lb.staging(), kLen, 7);
  ASSERT_EQ("", lb.Write(lb.staging(), lb.staging_lkey(), 1,
                         reinterpret_cast<uintptr_t>(buf) + 4097, mr->rkey, 1));
  EXPECT_EQ(lb.staging()[0], buf[4097]);
  ibv_dereg_mr(mr);
  munmap(buf, kLen);
}

TEST(RxeHarness, BadRkeyFailsAndHarnessRecovers) {
  RXE_SKIP_IF_NO_DEVICE();
  Loopback lb;
  ASSERT_EQ("", lb.Open());
  auto *buf = static_cast<uint8_t *>(MapAnon(kLen));
  ASSERT_NE(nullptr, buf);
  ibv_mr *mr = ibv_reg_mr(lb.pd(), buf, kLen, kAccess);
  ASSERT_NE(nullptr, mr);
  const uint32_t rkey = mr->rkey;
  ASSERT_EQ(0, ibv_dereg_mr(mr));
  FillPattern(lb.staging(), kLen, 3);
  EXPECT_NE("",
            lb.WriteFromStaging(kLen, reinterpret_cast<uintptr_t>(buf), rkey))
      << "a write through a deregistered rkey must fail";
  EXPECT_EQ(1u, lb.failed_completions());
  mr = ibv_reg_mr(lb.pd(), buf, kLen, kAccess);
  ASSERT_NE(nullptr, mr);
  ASSERT_EQ("", lb.WriteFromStaging(kLen, reinterpret_cast<uintptr_t>(buf),
                                    mr->rkey));
  EXPECT_EQ(0u, CountWrongBytes(buf, kLen, 3));
  ibv_dereg_mr(mr);
  munmap(buf, kLen);
}

// The hazard itself, with no cache: an MR outlives the munmap of its memory;
// new memory mapped at the same address is not what the MR points at. A write
// through the old rkey succeeds and lands in the old (still pinned, now
// invisible) pages.
TEST(RxeHarness, StaleRawMrWritesIntoInvisiblePages) {
  RXE_SKIP_IF_NO_DEVICE();
  Loopback lb;
  ASSERT_EQ("", lb.Open());
  size_t wrong_total = 0;
  constexpr int kCycles = 20;
  for (int c = 0; c < kCycles; ++c) {
    auto *buf = static_cast<uint8_t *>(MapAnon(kLen));
    ASSERT_NE(nullptr, buf);
    std::memset(buf, 0xaa, kLen);
    ibv_mr *mr = ibv_reg_mr(lb.pd(), buf, kLen, kAccess);
    ASSERT_NE(nullptr, mr);
    ASSERT_EQ(0, munmap(buf, kLen));
    ASSERT_EQ(buf, MapAnon(kLen, buf))
        << "could not map again at the same address";
    std::memset(buf, 0, kLen);  // pattern bytes are odd: 0 never matches
    FillPattern(lb.staging(), kLen, 1000 + c);
    ASSERT_EQ("", lb.WriteFromStaging(kLen, reinterpret_cast<uintptr_t>(buf),
                                      mr->rkey))
        << "the stale MR is still valid for the device";
    wrong_total += CountWrongBytes(buf, kLen, 1000 + c);
    ASSERT_EQ(0, ibv_dereg_mr(mr))
        << "dereg of an MR whose memory is gone must succeed";
    munmap(buf, kLen);
  }
  std::printf("stale raw MR: %zu wrong bytes of %zu written\n", wrong_total,
              kLen * kCycles);
  EXPECT_EQ(kLen * kCycles, wrong_total)
      << "every byte written through a stale MR should miss the program's "
         "memory";
}

}  // namespace
}  // namespace regcache_rxe

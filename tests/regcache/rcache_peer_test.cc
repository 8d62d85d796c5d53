// SPDX-License-Identifier: BSD-3-Clause
// tests/regcache/rcache_peer_test.cc - UCX's test_rcache cases about merging
// and protections, ported: merge_expand_prot, merge_inv, merge_with_unwritable
// and merge_merge_unwritable (UCX runs each as UCS_MT_TEST_F with 6 threads:
// each thread runs the body on memory of its own, mapped and unmapped each
// time, so a thread's mapping often lands where another thread's just was).
//
// Every get is also checked with the stale oracle (tests/common): a region
// whose pinned frames are not the ones now mapped at its addresses is a stale
// registration of another thread's unmapped memory. Built once per event
// source (REGCACHE_TEST_SOURCE: patch, uffd); skips where it cannot be
// installed. The negative control of the uffd case is
// notifier_uffd_exact_test's NegativeControlWithoutProbeIsStale.
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "notifier/sources.h"
#include "regcache/page.h"
#include "tests/common/stale_oracle.h"

#ifndef REGCACHE_TEST_SOURCE
#define REGCACHE_TEST_SOURCE "patch"
#endif

namespace {

using regcache::testing::StaleOracle;

const size_t kPage = regcache::page::Size();
const std::string kMode = REGCACHE_TEST_SOURCE;
constexpr unsigned kRead = REGCACHE_ACCESS_REMOTE_READ;
constexpr unsigned kWrite =
    REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_WRITE;
constexpr int kThreads = 6;  // as UCX's UCS_MT_TEST_F(..., 6)
constexpr int kIters = 40;

class RcachePeer : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(regcache_config_set("MONITOR", kMode.c_str()), 0);
    ASSERT_NE(o_.driver(), nullptr);
    int rc = regcache_create(o_.driver(), nullptr, &c_);
    if (rc != 0)
      GTEST_SKIP() << "source " << kMode
                   << " unavailable: " << regcache_strerror(rc);
    if (kMode != regcache_notifier_source())
      GTEST_SKIP() << "source " << kMode << " not active ("
                   << regcache_notifier_source() << ")";
  }
  void TearDown() override {
    if (c_) regcache_destroy(c_);
    EXPECT_EQ(stale_.load(), 0u) << "stale registrations";
    EXPECT_EQ(errors_.load(), 0u) << first_error_;
  }

  void Fail(const std::string &what) {
    if (errors_.fetch_add(1) == 0) first_error_ = what;
  }
  // get + oracle check; nullptr (and a failure) when the get fails.
  // `writable`: the nonce check (no frame numbers) writes into the pages.
  regcache_region_t *Get(void *p, size_t len, unsigned access,
                         bool writable = true) {
    regcache_region_t *r = nullptr;
    int rc = regcache_get(c_, p, len, access, &r);
    if (rc != 0) {
      Fail("get failed: " + std::string(regcache_strerror(rc)));
      return nullptr;
    }
    if ((writable || o_.HaveFrames()) && o_.IsStale(r)) stale_.fetch_add(1);
    return r;
  }
  // uffd's whole-space invalidations so far (0 with patch).
  static uint64_t Flushes() {
    return kMode == "uffd" ? regcache::notifier::sources::UffdGetStats().flushes
                           : 0;
  }
  static uintptr_t Start(const regcache_region_t *r) {
    return reinterpret_cast<uintptr_t>(regcache_region_addr(r));
  }
  static uintptr_t End(const regcache_region_t *r) {
    return Start(r) + regcache_region_length(r);
  }
  void *Map(size_t len, int prot) {
    void *p = mmap(nullptr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      Fail("mmap failed");
      return nullptr;
    }
    if (prot & PROT_WRITE) std::memset(p, 0x5a, len);
    return p;
  }
  template <class Body>
  void RunMt(Body body) {
    std::atomic<int> ready{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&] {
        ready.fetch_add(1);
        while (ready.load() < kThreads) std::this_thread::yield();
        for (int i = 0; i < kIters; ++i) body();
      });
    }
    for (auto &th : ts) th.join();
  }

  // The bodies of UCX's cases, one iteration each.
  void ExpandProt() {
    const uint64_t f0 = Flushes();
    const size_t size1 = 10 * kPage, size2 = 8 * kPage;
    char *mem = static_cast<char *>(Map(size1 + size2, PROT_READ | PROT_WRITE));
    if (!mem) return;
    regcache_region_t *r1 = Get(mem, size1 + size2 / 2, kRead);
    char *ptr2 = mem + size1;
    regcache_region_t *r2 = Get(ptr2, size2, kWrite);
    if (r1 && r2) {
      if (!(regcache_region_access(r2) & REGCACHE_ACCESS_LOCAL_WRITE))
        Fail("merge_expand_prot: region2 is not writable");
      if (End(r2) < reinterpret_cast<uintptr_t>(ptr2 + size2))
        Fail("merge_expand_prot: region2 does not cover its request");
      // UCX: only if region1 is still in the page table. Ours can have been
      // invalidated by uffd's whole-space fallback (docs/notifier.md).
      if (Start(r2) > reinterpret_cast<uintptr_t>(mem) && Flushes() == f0)
        Fail("merge_expand_prot: region2 was not merged with region1");
    }
    if (r1) regcache_put(c_, r1);
    if (r2) regcache_put(c_, r2);
    munmap(mem, size1 + size2);
  }

  void Inv() {
    const uint64_t f0 = Flushes();
    const size_t size1 = 256 * 1024, size2 = 512 * 1024, pad = 64 * 1024;
    char *mem = static_cast<char *>(Map(pad + size2, PROT_READ | PROT_WRITE));
    if (!mem) return;
    regcache_region_t *r1 = Get(mem, size1, kWrite);
    if (!r1) {
      munmap(mem, pad + size2);
      return;
    }
    const uint64_t key1 = regcache_region_rkey(r1);
    regcache_put(c_, r1);
    regcache_region_t *r2 = Get(mem + pad, size2, kWrite);
    if (r2) {
      if (regcache_region_rkey(r2) == key1)
        Fail("merge_inv: region2 is region1 (not re-registered)");
      if (End(r2) < reinterpret_cast<uintptr_t>(mem + pad + size2))
        Fail("merge_inv: region2 does not cover its request");
      if (Start(r2) > reinterpret_cast<uintptr_t>(mem) && Flushes() == f0)
        Fail("merge_inv: region2 was not merged with region1");
      regcache_put(c_, r2);
    }
    munmap(mem, pad + size2);
  }

  void WithUnwritable() {
    const size_t size1 = 10 * kPage, size2 = 8 * kPage;
    char *mem = static_cast<char *>(Map(size1 + size2, PROT_READ));
    if (!mem) return;
    regcache_region_t *r1 =
        Get(mem, size1 + size2 / 2, kRead, /*writable=*/false);
    char *ptr2 = mem + size1;
    if (mprotect(ptr2, size2, PROT_WRITE) != 0) Fail("mprotect");
    regcache_region_t *r2 = Get(ptr2, size2, kWrite, /*writable=*/false);
    if (r1 && r2) {
      if (Start(r2) < reinterpret_cast<uintptr_t>(ptr2))
        Fail("merge_with_unwritable: region2 merged with read-only pages");
      if (!(regcache_region_access(r2) & REGCACHE_ACCESS_LOCAL_WRITE))
        Fail("merge_with_unwritable: region2 is not writable");
    }
    if (r1) regcache_put(c_, r1);
    if (r2) regcache_put(c_, r2);
    munmap(mem, size1 + size2);
  }

  void MergeUnwritable() {
    const size_t size1 = 10 * kPage, size2 = 8 * kPage;
    char *mem = static_cast<char *>(Map(size1 + size2, PROT_READ | PROT_WRITE));
    if (!mem) return;
    regcache_region_t *r1 = Get(mem, size1 + size2 / 2, kRead | kWrite);
    char *ptr2 = mem + size1;
    if (mprotect(ptr2, size2, PROT_READ) != 0) Fail("mprotect");
    regcache_region_t *r2 = Get(ptr2, size2, kRead, /*writable=*/false);
    if (r1 && r2) {
      if (Start(r2) < reinterpret_cast<uintptr_t>(ptr2))
        Fail("merge_merge_unwritable: region2 merged with region1");
      if (regcache_region_access(r2) & kWrite)
        Fail("merge_merge_unwritable: region2 writable on read-only pages");
    }
    if (r1) regcache_put(c_, r1);
    if (r2) regcache_put(c_, r2);
    munmap(mem, size1 + size2);
  }

  StaleOracle o_;
  regcache_t *c_ = nullptr;
  std::atomic<uint64_t> stale_{0}, errors_{0};
  std::string first_error_;
};

// Expand the access of a new region to support the existing ones: region2
// (write) overlaps region1 (read) and is merged with it.
TEST_F(RcachePeer, MergeExpandProt) {
  RunMt([this] { ExpandProt(); });
}

// Merging with an unused region replaces (invalidates) it at once.
TEST_F(RcachePeer, MergeInv) {
  RunMt([this] { Inv(); });
}

// Do not merge with pages the new access cannot have: region1 (read) is on
// read-only pages, region2 (write) on write-only ones.
TEST_F(RcachePeer, MergeWithUnwritable) {
  RunMt([this] { WithUnwritable(); });
}

// Do not widen our region's access beyond what our pages allow: region2 (read)
// on pages made read-only after region1 (read+write) was cached.
TEST_F(RcachePeer, MergeMergeUnwritable) {
  RunMt([this] { MergeUnwritable(); });
}

// Negative control (uffd): with the probe switched off (the old window), the
// same programs see stale registrations; the cases above then fail.
TEST_F(RcachePeer, UffdControlWithoutProbeSeesStale) {
  if (kMode != "uffd") GTEST_SKIP() << "uffd only";
  regcache::notifier::sources::UffdSetExactForTesting(false);
  for (int round = 0; round < 20 && stale_.load() == 0; ++round) {
    RunMt([this] {
      Inv();
      ExpandProt();
    });
  }
  regcache::notifier::sources::UffdSetExactForTesting(true);
  errors_.store(0);  // wrong merges are expected too in the window
  EXPECT_GT(stale_.exchange(0), 0u)
      << "the oracle must see stale registrations without the probe";
}

}  // namespace

// SPDX-License-Identifier: BSD-3-Clause
// tests/rxe/rxe_fabric_test.cc - the fabric driver on libfabric's verbs
// provider over rxe0 (verbs;ofi_rxm, RDM, connected through rdma_cm on the
// dummy netdev's address): RMA writes through regions from the cache, keys,
// descriptors and data checked. rxe's CQs are smaller than ofi_rxm's default:
// FI_UNIVERSE_SIZE=16 (rxe-run.sh exports it; set here too when absent).
#include <gtest/gtest.h>
#include <regcache/fabric.h>
#include <regcache/regcache.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/drivers/fabric/fabric_test_util.h"
#include "tests/rxe/rdma_harness.h"

namespace regcache_rxe {
namespace {

constexpr size_t kLen = 256 * 1024;

// fi_getinfo for verbs;ofi_rxm on the device's IPv4 address
// (REGCACHE_RXE_FI_NODE, default 192.0.2.1, the guest's rxd0).
std::string OpenVerbs(regcache::testing::FabricStack *st) {
  setenv("FI_UNIVERSE_SIZE", "16", 0);
  const char *node = std::getenv("REGCACHE_RXE_FI_NODE");
  if (node == nullptr || *node == '\0') node = "192.0.2.1";
  fi_info *hints = fi_allocinfo();
  hints->fabric_attr->prov_name = strdup("verbs;ofi_rxm");
  hints->ep_attr->type = FI_EP_RDM;
  hints->caps = FI_MSG | FI_RMA;
  hints->domain_attr->mr_mode =
      static_cast<int>(regcache::testing::kSupportedMrMode);
  hints->domain_attr->threading = FI_THREAD_SAFE;
  int rc =
      fi_getinfo(FI_VERSION(1, 17), node, nullptr, FI_SOURCE, hints, &st->info);
  fi_freeinfo(hints);
  if (rc)
    return std::string("fi_getinfo(verbs;ofi_rxm, ") + node +
           "): " + fi_strerror(-rc);
  rc = fi_fabric(st->info->fabric_attr, &st->fabric, nullptr);
  if (rc) return std::string("fi_fabric: ") + fi_strerror(-rc);
  rc = fi_domain(st->fabric, st->info, &st->domain, nullptr);
  if (rc) return std::string("fi_domain: ") + fi_strerror(-rc);
  return st->OpenEndpoint();
}

TEST(RxeFabric, RmaWriteThroughCachedRegionsOnVerbsProvider) {
  RXE_SKIP_IF_NO_DEVICE();
  regcache::testing::FabricStack st;
  ASSERT_EQ("", OpenVerbs(&st));
  std::printf("provider %s, domain %s, mr_mode 0x%llx\n",
              st.info->fabric_attr->prov_name, st.info->domain_attr->name,
              static_cast<unsigned long long>(st.info->domain_attr->mr_mode));
  regcache_driver_t *drv = nullptr;
  ASSERT_EQ(0, regcache_driver_fabric_open2(st.domain, st.info, st.ep, &drv));
  uint64_t mode = 0;
  ASSERT_EQ(0, regcache_driver_fabric_mr_mode(drv, &mode));
  EXPECT_EQ(st.info->domain_attr->mr_mode, mode);
  regcache_t *cache = nullptr;
  ASSERT_EQ(0, regcache_create(drv, nullptr, &cache));

  auto *src = static_cast<uint8_t *>(mmap(nullptr, kLen, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  auto *dst = static_cast<uint8_t *>(mmap(nullptr, kLen, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(MAP_FAILED, src);
  ASSERT_NE(MAP_FAILED, dst);
  uint64_t first_key = 0;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    std::memset(dst, 0, kLen);
    FillPattern(src, kLen, seed);
    regcache_region_t *rs = nullptr;
    regcache_region_t *rd = nullptr;
    ASSERT_EQ(0,
              regcache_get(cache, src, kLen, REGCACHE_ACCESS_LOCAL_WRITE, &rs));
    ASSERT_EQ(0, regcache_get(
                     cache, dst, kLen,
                     REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_WRITE,
                     &rd));
    auto *mr = static_cast<fid_mr *>(regcache_region_handle(rd));
    ASSERT_NE(nullptr, mr);
    EXPECT_EQ(fi_mr_key(mr), regcache_region_rkey(rd));
    EXPECT_EQ(fi_mr_desc(static_cast<fid_mr *>(regcache_region_handle(rs))),
              regcache_region_desc(rs));
    if (seed == 1) first_key = regcache_region_rkey(rd);
    EXPECT_EQ(first_key, regcache_region_rkey(rd)) << "the cached MR is reused";
    // Whole buffer, then a piece at an offset inside the region.
    ASSERT_EQ(0, st.Write(src, kLen, regcache_region_desc(rs), dst,
                          regcache_region_addr(rd), regcache_region_rkey(rd)));
    EXPECT_EQ(0u, CountWrongBytes(dst, kLen, seed)) << "seed " << seed;
    FillPattern(src, 4096, seed + 50);
    ASSERT_EQ(0, st.Write(src, 4096, regcache_region_desc(rs), dst + 12345,
                          regcache_region_addr(rd), regcache_region_rkey(rd)));
    EXPECT_EQ(0u, CountWrongBytes(dst + 12345, 4096, seed + 50));
    regcache_put(cache, rs);
    regcache_put(cache, rd);
  }
  regcache_stats_t s{};
  ASSERT_EQ(0, regcache_get_stats(cache, &s));
  EXPECT_EQ(2u, s.registrations);
  EXPECT_EQ(14u, s.hits);
  regcache_destroy(cache);
  regcache_driver_close(drv);
  munmap(src, kLen);
  munmap(dst, kLen);
}

}  // namespace
}  // namespace regcache_rxe

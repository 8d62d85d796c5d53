/* SPDX-License-Identifier: BSD-3-Clause */
// tests/rxe/rxe_cache_util.h - a regcache cache on the verbs driver over the
// loopback harness's PD, for the rxe tests.
#ifndef REGCACHE_TESTS_RXE_RXE_CACHE_UTIL_H_
#define REGCACHE_TESTS_RXE_RXE_CACHE_UTIL_H_

#include <regcache/regcache.h>
#include <regcache/verbs.h>

#include <string>

#include "tests/rxe/rdma_harness.h"

namespace regcache_rxe {

constexpr unsigned kRemoteAccess = REGCACHE_ACCESS_LOCAL_WRITE |
                                   REGCACHE_ACCESS_REMOTE_WRITE |
                                   REGCACHE_ACCESS_REMOTE_READ;

// Device + PD + QPs (Loopback), a verbs driver on the PD and one cache on the
// driver. Destruction order: cache, driver, then the harness (PD, device).
struct VerbsCache {
  Loopback lb;
  regcache_driver_t *driver = nullptr;
  regcache_t *cache = nullptr;

  VerbsCache() = default;
  VerbsCache(const VerbsCache &) = delete;
  VerbsCache &operator=(const VerbsCache &) = delete;
  ~VerbsCache() { Close(); }

  // params may be NULL (defaults). Returns "" or what failed.
  std::string Open(const regcache_params_t *params = nullptr,
                   size_t staging = 1u << 20) {
    if (std::string e = lb.Open(staging); !e.empty()) return e;
    if (int rc = regcache_driver_verbs_open(lb.pd(), &driver)) {
      return std::string("regcache_driver_verbs_open: ") +
             regcache_strerror(rc);
    }
    if (int rc = regcache_create(driver, params, &cache)) {
      return std::string("regcache_create: ") + regcache_strerror(rc);
    }
    return "";
  }
  void Close() {
    regcache_destroy(cache);
    cache = nullptr;
    regcache_driver_close(driver);
    driver = nullptr;
  }
  regcache_stats_t Stats() const {
    regcache_stats_t s{};
    regcache_get_stats(cache, &s);
    return s;
  }
  // RDMA WRITE of the staging buffer's first len bytes to `target` through
  // region's rkey.
  std::string WriteTo(const void *target, size_t len,
                      const regcache_region_t *region) {
    return lb.WriteFromStaging(
        len, reinterpret_cast<uintptr_t>(target),
        static_cast<uint32_t>(regcache_region_rkey(region)));
  }
};

}  // namespace regcache_rxe

#endif  // REGCACHE_TESTS_RXE_RXE_CACHE_UTIL_H_

// SPDX-License-Identifier: BSD-3-Clause
// The C API of <regcache/regcache.h> for caches, regions, drivers and stats:
// input validation, then the core (regcache/cache.h). Library-wide calls
// (version, errors, logging, tunables, notifier) are in library.cc;
// regcache_driver_host_open is in drivers/host/, regcache_driver_custom_open in
// drivers/custom/.
#include <regcache/regcache.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "regcache/cache.h"
#include "regcache/driver_port.h"
#include "regcache/library.h"
#include "regcache/log.h"
#include "regcache/protection_check.h"

namespace {

using regcache::core::CacheCore;
using regcache::core::CachedRegion;

CacheCore *ToCache(regcache_t *c) { return reinterpret_cast<CacheCore *>(c); }
const CachedRegion *ToRegion(const regcache_region_t *r) {
  return reinterpret_cast<const CachedRegion *>(r);
}

}  // namespace

extern "C" {

REGCACHE_API const char *regcache_driver_name(const regcache_driver_t *driver) {
  return driver ? driver->impl->Name() : nullptr;
}

REGCACHE_API void regcache_driver_close(regcache_driver_t *driver) {
  if (driver) driver->Unref();
}

REGCACHE_API int regcache_create(regcache_driver_t *driver,
                                 const regcache_params_t *params,
                                 regcache_t **cache_p) {
  if (driver == nullptr || cache_p == nullptr) return -EINVAL;
  int rc = regcache::LibraryInit();
  if (rc) return rc;
  regcache::core::CacheConfig p;
  rc = regcache::core::ResolveParams(params, &p);
  if (rc) return rc;
  CacheCore *c = nullptr;
  rc = CacheCore::Create(driver, p, &c);
  regcache::log::
      FlushDeferred();  // e.g. the blind warning of the source install
  if (rc == 0) *cache_p = reinterpret_cast<regcache_t *>(c);
  return rc;
}

REGCACHE_API void regcache_destroy(regcache_t *cache) {
  if (cache) ToCache(cache)->Destroy();
}

REGCACHE_API int regcache_get(regcache_t *cache, const void *addr, size_t len,
                              unsigned access, regcache_region_t **region_p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  // The page-aligned range must not wrap either: keep one page of headroom.
  if (cache == nullptr || region_p == nullptr || len == 0 ||
      (access & ~REGCACHE_ACCESS_ALL) || a + len < a ||
      a + len > UINTPTR_MAX - (uintptr_t{1} << 16))
    return -EINVAL;
  CachedRegion *r = nullptr;
  int rc =
      regcache::core::GetCheckingProtection(ToCache(cache), a, len, access, &r);
  if (rc == 0) *region_p = reinterpret_cast<regcache_region_t *>(r);
  return rc;
}

// ---- transport calls (issue 18)
namespace {
// regcache_get's input rules (the page-aligned range must not wrap either).
bool BadRange(uintptr_t a, size_t len) {
  return len == 0 || a + len < a ||
         a + len > UINTPTR_MAX - (uintptr_t{1} << 16);
}
}  // namespace

REGCACHE_API int regcache_find(regcache_t *cache, const void *addr, size_t len,
                               unsigned access, regcache_region_t **region_p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (cache == nullptr || region_p == nullptr ||
      (access & ~REGCACHE_ACCESS_ALL) || BadRange(a, len))
    return -EINVAL;
  CachedRegion *r = nullptr;
  int rc = regcache::core::FindCheckingProtection(ToCache(cache), a, len,
                                                  access, &r);
  if (rc == 0) *region_p = reinterpret_cast<regcache_region_t *>(r);
  return rc;
}

REGCACHE_API int regcache_get_flags(regcache_t *cache, const void *addr,
                                    size_t len, unsigned access, unsigned flags,
                                    regcache_region_t **region_p) {
  if (flags & ~REGCACHE_GET_NO_CACHE) return -EINVAL;
  if (!(flags & REGCACHE_GET_NO_CACHE))
    return regcache_get(cache, addr, len, access, region_p);
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (cache == nullptr || region_p == nullptr ||
      (access & ~REGCACHE_ACCESS_ALL) || BadRange(a, len))
    return -EINVAL;
  CachedRegion *r = nullptr;
  int rc = ToCache(cache)->GetUncached(a, len, access, &r);
  if (rc == 0) *region_p = reinterpret_cast<regcache_region_t *>(r);
  return rc;
}

REGCACHE_API int regcache_invalidate(regcache_t *cache, const void *addr,
                                     size_t len) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (cache == nullptr || len == 0 || a + len < a) return -EINVAL;
  return ToCache(cache)->Invalidate(a, len);
}

REGCACHE_API void *regcache_region_host_data(const regcache_region_t *region) {
  return region ? ToRegion(region)->host : nullptr;
}

REGCACHE_API void regcache_put(regcache_t *cache, regcache_region_t *region) {
  if (region == nullptr) return;
  CachedRegion *r = reinterpret_cast<CachedRegion *>(region);
  CacheCore *owner = r->cache;
  if (owner == nullptr) {
    // Already deregistered and back in the slab: a put too many. The header's
    // contract: debug builds abort, release builds log once and ignore it.
#ifndef NDEBUG
    std::fprintf(stderr,
                 "[regcache] fatal: regcache_put: region %p is not held "
                 "(double put)\n",
                 static_cast<void *>(region));
    std::abort();
#endif
    REGCACHE_LOG_ONCE(
        ERROR, "regcache_put: region {} is not held (double put); ignored",
        static_cast<void *>(region));
    return;
  }
  if (cache != nullptr && ToCache(cache) != owner) {
    REGCACHE_LOG_ONCE(
        ERROR, "regcache_put: region {} belongs to cache {}, not the one given",
        static_cast<void *>(region), owner->name());
  }
  owner->Put(r);
}

REGCACHE_API int regcache_flush(regcache_t *cache) {
  if (cache == nullptr) return -EINVAL;
  return ToCache(cache)->Flush();
}

REGCACHE_API uint32_t regcache_region_lkey(const regcache_region_t *region) {
  return region ? ToRegion(region)->reg.lkey : 0;
}

REGCACHE_API uint64_t regcache_region_rkey(const regcache_region_t *region) {
  return region ? ToRegion(region)->reg.rkey : 0;
}

REGCACHE_API void *regcache_region_desc(const regcache_region_t *region) {
  return region ? ToRegion(region)->reg.desc : nullptr;
}

REGCACHE_API void *regcache_region_addr(const regcache_region_t *region) {
  return region ? reinterpret_cast<void *>(ToRegion(region)->start) : nullptr;
}

REGCACHE_API size_t regcache_region_length(const regcache_region_t *region) {
  return region ? ToRegion(region)->end - ToRegion(region)->start : 0;
}

REGCACHE_API unsigned regcache_region_access(const regcache_region_t *region) {
  return region ? ToRegion(region)->access : 0;
}

REGCACHE_API void *regcache_region_handle(const regcache_region_t *region) {
  return region ? ToRegion(region)->reg.handle : nullptr;
}

REGCACHE_API int regcache_get_stats(regcache_t *cache,
                                    regcache_stats_t *stats_p) {
  if (cache == nullptr || stats_p == nullptr) return -EINVAL;
  ToCache(cache)->GetStats(stats_p);
  return 0;
}

REGCACHE_API int regcache_print_stats(regcache_t *cache, FILE *stream) {
  if (cache == nullptr || stream == nullptr) return -EINVAL;
  return ToCache(cache)->PrintStats(stream);
}

}  // extern "C"

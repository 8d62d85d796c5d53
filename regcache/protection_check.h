/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/protection_check.h - a hit under the uffd source answers from the
// memory's current protection (issue 12, mprotect).
//
// The patch source hooks mprotect: removing access invalidates the overlapping
// regions, so the next get re-registers and the driver answers from the new
// protection (-EACCES for write of read-only memory, -EFAULT for PROT_NONE).
// userfaultfd sends no event for mprotect. So under uffd a region a hit hands
// out (CacheCore::Get's front table or slow-path lookup, a concurrent miss's
// region, or Find) is checked (notifier/protection.h): do its pages
// still lie in VMAs allowing its registered access (write for LOCAL_WRITE,
// REMOTE_WRITE, REMOTE_ATOMIC; read otherwise)? When not, the region is put
// back, its range invalidated (the seed's mprotect semantics: every region
// overlapping it) and the get misses, so the driver refuses or registers from
// the new protection. A registration the get has just made
// (CacheCore::kRegistered) is not checked: the driver registered it from the
// protection now (a device refuses write access to read-only memory; an
// access widened on a stale writability hint is refused likewise, cache.h).
// Patch, ucm and none: one relaxed load and a branch on a hit, nothing more
// on a miss.
// Without PROCMAP_QUERY (Linux < 6.11) the kernel cannot tell cheaply: the
// documented miss stays (docs/notifier.md).
#ifndef REGCACHE_REGCACHE_PROTECTION_CHECK_H_
#define REGCACHE_REGCACHE_PROTECTION_CHECK_H_

#include <cstddef>
#include <cstdint>

#include "notifier/protection.h"
#include "regcache/cache.h"

namespace regcache::core {

// Out-of-line halves (protection_check.cc): rc is Get's or Find's result.
int RecheckGet(CacheCore *c, uintptr_t addr, size_t len, unsigned access,
               CachedRegion **out, int rc);
int RecheckFind(CacheCore *c, uintptr_t addr, size_t len, unsigned access,
                CachedRegion **out, int rc);

// CacheCore::Get, then (uffd only) the protection check of a region it took
// from the cache. 0 or a negative errno.
inline int GetCheckingProtection(CacheCore *c, uintptr_t addr, size_t len,
                                 unsigned access, CachedRegion **out) {
  const int rc = c->Get(addr, len, access, out);
  if (rc != 0) return rc == CacheCore::kRegistered ? 0 : rc;
  if (!notifier::HitNeedsProtectionCheck()) [[likely]]
    return 0;
  return RecheckGet(c, addr, len, access, out, rc);
}

// CacheCore::Find, then (uffd only) the same check: -ENOENT when it fails.
inline int FindCheckingProtection(CacheCore *c, uintptr_t addr, size_t len,
                                  unsigned access, CachedRegion **out) {
  const int rc = c->Find(addr, len, access, out);
  if (rc != 0 || !notifier::HitNeedsProtectionCheck()) [[likely]]
    return rc;
  return RecheckFind(c, addr, len, access, out, rc);
}

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_PROTECTION_CHECK_H_

// SPDX-License-Identifier: BSD-3-Clause
// regcache/protection_check.cc - see protection_check.h.
#include "regcache/protection_check.h"

#include <regcache/regcache.h>

#include <cerrno>

#include "regcache/region.h"

namespace regcache::core {
namespace {

constexpr unsigned kWriteKinds = REGCACHE_ACCESS_LOCAL_WRITE |
                                 REGCACHE_ACCESS_REMOTE_WRITE |
                                 REGCACHE_ACCESS_REMOTE_ATOMIC;

// Whether r may stay handed out: its pages still allow its registered access.
// "Cannot tell" (no PROCMAP_QUERY) keeps it: the documented miss.
bool StillAllowed(const CachedRegion *r) {
  if (!notifier::ProtectionCheckActive()) return true;
  return notifier::RangeAllows(r->start, r->end,
                               (r->access & kWriteKinds) != 0) != 0;
}

// Puts r back and revokes every region overlapping it (as the patch source's
// mprotect hook would have).
void Revoke(CacheCore *c, CachedRegion *r) {
  const uintptr_t start = r->start, end = r->end;
  c->Put(r);
  c->Invalidate(start, end - start);
}

}  // namespace

int RecheckGet(CacheCore *c, uintptr_t addr, size_t len, unsigned access,
               CachedRegion **out, int rc) {
  // Each failed check revokes what it saw, so the next Get misses and
  // registers from the current protection. Another thread may publish a
  // region registered before the change in between; after kTries such
  // rounds, a private registration made now answers (never a cached one
  // that failed the check).
  constexpr int kTries = 3;
  for (int i = 0;; ++i) {
    if (rc == CacheCore::kRegistered) return 0;  // made now: not checked
    if (rc != 0 || StillAllowed(*out)) return rc;
    Revoke(c, *out);
    *out = nullptr;
    if (i + 1 == kTries) return c->GetUncached(addr, len, access, out);
    rc = c->Get(addr, len, access, out);
  }
}

int RecheckFind(CacheCore *c, uintptr_t, size_t, unsigned, CachedRegion **out,
                int rc) {
  if (rc != 0 || StillAllowed(*out)) return rc;
  Revoke(c, *out);
  *out = nullptr;
  return -ENOENT;
}

}  // namespace regcache::core

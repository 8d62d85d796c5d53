/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/protection.h - what the uffd source cannot hear about mprotect, asked
// of the kernel instead (issue 12: "mprotect that removes access invalidates
// overlapping regions, and a later get answers from the new protection").
//
// The patch source hooks mprotect/pkey_mprotect and invalidates the range when
// access is removed. userfaultfd sends no event for mprotect, so under uffd a
// cached registration keeps the access it was registered with (the frames do
// not change: docs/notifier.md's event table). A cache validates each hit
// under uffd instead: HitNeedsProtectionCheck() says whether it must, and
// RangeAllows() asks PROCMAP_QUERY (Linux >= 6.11) whether the hit's memory
// still allows the registration's access. Without PROCMAP_QUERY (e.g. Linux
// 6.1) nothing cheap tells (a /proc/self/maps read per hit costs ~100x a hit):
// RangeAllows answers "cannot tell" and the documented miss stays.
//
// Guard pages (MADV_GUARD_INSTALL) are page-table markers, not VMA state:
// PROCMAP_QUERY does not show them, so this check does not see them either.
#ifndef REGCACHE_NOTIFIER_PROTECTION_H_
#define REGCACHE_NOTIFIER_PROTECTION_H_

#include <atomic>
#include <cstdint>

#include "notifier/address_space.h"

namespace regcache::notifier {

// Cheap gate for a cache's hit: true when the uffd source is installed (one
// relaxed load of a word the lookup has just read). The cache then calls
// ProtectionCheckActive() and RangeAllows() out of line.
inline bool HitNeedsProtectionCheck() {
  return (internal::g_async_in_flight.load(std::memory_order_relaxed) &
          internal::kAsyncProbe) != 0;
}
// True when the active source cannot see mprotect (uffd) and the check is not
// switched off for a test (sources.h, kUffdTestNoProtectionCheck).
bool ProtectionCheckActive();
// Does every page of [start, end) lie in VMAs that allow the access? write:
// VM_WRITE (what get_user_pages asks for FOLL_WRITE), else VM_READ. 1 yes, 0
// no (a VMA without it, or a hole), -1 cannot tell (no PROCMAP_QUERY). One
// PROCMAP_QUERY ioctl per VMA in the range. Allocates nothing, takes no lock.
int RangeAllows(uintptr_t start, uintptr_t end, bool write);

}  // namespace regcache::notifier

#endif  // REGCACHE_NOTIFIER_PROTECTION_H_

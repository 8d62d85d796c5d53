/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/region_index.h - the ordered index of a cache's regions.
//
// INVARIANT: an intrusive treap (CachedRegion::left/right) of non-overlapping,
// page-aligned, non-empty regions, ordered by start; heap-ordered by
// CachedRegion::prio (parents >= children; a hash of the region's slab address,
// drawn once per slot by the slab: expected O(log n) depth without rebalancing
// state, and no key recomputed at insert or erase). Every indexed region is
// valid (region.h) and belongs to the owning cache; count() and bytes() are the
// number and total length of indexed regions. Check() walks the whole tree and
// verifies all of this (tests; debug builds after each change while the tree is
// small).
// LOCK RULE: not thread-safe; the owning cache's mutex guards every call
// (CacheCore::index_ is GUARDED_BY(mu_)). Nothing here allocates, frees or
// calls out: it runs inside munmap callbacks.
#ifndef REGCACHE_REGCACHE_REGION_INDEX_H_
#define REGCACHE_REGCACHE_REGION_INDEX_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "regcache/region.h"

namespace regcache::core {

class RegionIndex {
 public:
  // REQUIRES: r does not overlap an indexed region; r is owned by the caller.
  void Insert(CachedRegion *r);
  // REQUIRES: r is indexed.
  void Erase(CachedRegion *r);

  // The indexed region with the greatest start <= key, or nullptr.
  CachedRegion *Floor(uintptr_t key) const;
  // The indexed region with the least start >= key, or nullptr.
  CachedRegion *LowerBound(uintptr_t key) const;
  // The lowest indexed region overlapping [start, end), or nullptr.
  CachedRegion *FirstOverlap(uintptr_t start, uintptr_t end) const;
  // The indexed region covering [start, end) with at least `access`, or
  // nullptr (regions do not overlap: only Floor(start) can).
  CachedRegion *FindCovering(uintptr_t start, uintptr_t end,
                             unsigned access) const;

  CachedRegion *root() const { return root_; }
  bool empty() const { return root_ == nullptr; }
  size_t count() const { return count_; }
  size_t bytes() const { return bytes_; }
  // Inserts so far. A reader that saw nothing overlap a range, under the
  // cache's lock, and sees the same count later (under it again) knows that
  // still nothing overlaps it: only Insert adds regions.
  uint64_t inserts() const { return inserts_; }

  // The invariant walker: "" if the invariant holds, else what is broken.
  // O(n). owner: the cache every region must belong to (nullptr: any).
  std::string Check(const void *owner = nullptr) const;

  // The heap key for a region at r's address (the slab stores it in r->prio).
  static uint32_t DrawPriority(const CachedRegion *r);

 private:
  static void Split(CachedRegion *t, uintptr_t key, CachedRegion **l,
                    CachedRegion **r);
  static CachedRegion *Merge(CachedRegion *a, CachedRegion *b);
  // Debug builds: Check() after a change while the tree is this small.
  static constexpr size_t kCheckBelow = 64;
  void DebugCheck() const;

  CachedRegion *root_ = nullptr;
  size_t count_ = 0;
  size_t bytes_ = 0;
  uint64_t inserts_ = 0;
};

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_REGION_INDEX_H_

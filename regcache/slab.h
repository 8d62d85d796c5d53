/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/slab.h - the process-wide type-stable slab of regions.
//
// INVARIANT: regions are carved from 64 KiB mmap'ed chunks that are never
// unmapped, so a stale CachedRegion pointer held by some thread's front table
// stays dereferenceable forever; the generation in the region word tells
// incarnations apart (region.h). mmap rather than malloc: the memory must never
// go back to any allocator. A free region is on the free list only, with no
// cache, no links and no references.
// LOCK RULE: the slab's own mutex guards the free list and the counts. Its
// holders never block (growing maps without MAP_FIXED: no notifier range, no
// callback), so the fork handlers may hold it across fork().
#ifndef REGCACHE_REGCACHE_SLAB_H_
#define REGCACHE_REGCACHE_SLAB_H_

#include <cstddef>

#include "regcache/region.h"
#include "regcache/region_list.h"
#include "regcache/thread_annotations.h"

namespace regcache::core {

class Slab {
 public:
  // The process's slab (leaked: regions must outlive every thread and cache).
  static Slab &Get();

  // A region owned by the caller, or nullptr (mmap failed).
  CachedRegion *Alloc() REGCACHE_EXCLUDES(mu_);
  // Up to n regions (at least one unless mmap failed) under one lock, pushed
  // on *out; how many.
  size_t AllocBatch(RegionBatch *out, size_t n) REGCACHE_EXCLUDES(mu_);
  // Back to the free list. REQUIRES: no references, in no index or list.
  void Free(CachedRegion *r) REGCACHE_EXCLUDES(mu_);
  size_t Total() REGCACHE_EXCLUDES(mu_);
  size_t FreeCount() REGCACHE_EXCLUDES(mu_);

  // fork(): held from prepare to the parent/child handler, so the child gets
  // the free list consistent and the lock free.
  void ForkLock() REGCACHE_ACQUIRE(mu_) { mu_.Lock(); }
  void ForkUnlock() REGCACHE_RELEASE(mu_) { mu_.Unlock(); }

 private:
  static constexpr size_t kChunk = 64 * 1024;
  bool GrowLocked() REGCACHE_REQUIRES(mu_);

  Mutex mu_;
  CachedRegion *free_ REGCACHE_GUARDED_BY(mu_) = nullptr;
  size_t total_ REGCACHE_GUARDED_BY(mu_) = 0;
  size_t nfree_ REGCACHE_GUARDED_BY(mu_) = 0;
};

// Process-wide slab statistics (tests: regions are recycled, memory never
// returned).
size_t SlabRegionsAllocated();
size_t SlabRegionsFree();

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_SLAB_H_

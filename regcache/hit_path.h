/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/hit_path.h - the per-thread front table (internal to the cache).
//
// INVARIANT: each thread has at most one ThreadState, heap-allocated on its
// first slow path and found through one initial-exec TLS pointer; its entries
// (8 recent ones and a hashed level of 64 sets x 2 keyed by a region's start
// page) {cache id, range, access, region, generation} are hints only: an entry
// is used only if the region's word still has that generation and is valid, and
// the region's range still covers the request (generations are 32 bits; the
// range check makes a wrapped one harmless). Cache ids are never reused.
// LOCK RULE: a thread's table is read and written by that thread only (no
// lock). The hit-slot bitmap is a process-wide atomic.
#ifndef REGCACHE_REGCACHE_HIT_PATH_H_
#define REGCACHE_REGCACHE_HIT_PATH_H_

#include <cstdint>

#include "regcache/region.h"

namespace regcache::core {

// Fork child: only the forking thread exists; the hit-counter slots of the
// parent's other threads are free again.
void HitSlotsAfterFork();

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_HIT_PATH_H_

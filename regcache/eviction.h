/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/eviction.h - which unused region a full cache gives up, and whether
// a missed region is worth a cached one at all (internal).
//
// Two modes (REGCACHE_EVICTION, docs/cache.md "Eviction"):
//
// lru: least recently used first, by the use stamps the cache hands out
//   (CachedRegion::last_use); every miss is cached. UCX's decisions, exactly.
//
// adaptive (default): LRU made scan- and loop-resistant by admission control
//   with an adaptive allowance for first-time regions (the idea of ARC, with
//   admission instead of a second list), and cost-aware by GreedyDual-Size
//   credit:
//   * Every cached region is COLD (cached on its first use, never used again
//     since) or HOT (used again: a hit, a merge, or a miss that LRU of this
//     capacity would have hit). A hit sets the region word's accessed bit
//     without any lock; eviction's sample promotes such a cold region.
//   * GHOSTS: a direct-mapped table remembers, for regions that left the cache
//     by eviction or were not admitted, the use stamp they last had and whether
//     they were hot (4 bytes per entry, one entry per max_regions up to 2^20,
//     tag-checked). A miss whose ghost says it was used within the last
//     max_regions stamps (so LRU would have hit) is HOT and always admitted.
//   * A cold miss that needs room is admitted only while fewer than
//     `cold_target` cold regions are cached, or when the victim has not been
//     used for `stale` stamps; otherwise it is registered for this use only
//     (the cache hands it out uncached and deregisters it at its last put).
//     A loop over more buffers than the cache holds, or a one-off scan, thus
//     leaves the cached set alone: hits = capacity / pool instead of 0.
//   * Warm-up: the first max_regions / 4 such decisions (at most 4 096, none
//     below 16 regions) cache the miss as LRU would: a cache that rarely
//     needs room is not thrashing, and refusing there only loses coverage.
//   * cold_target adapts as ARC's p: +1 when a ghost of a cold or rejected
//     region comes back within LRU reach (recency would have paid), -1 when a
//     ghost of an evicted hot region does (we gave up a reused one).
//   * Victim: the unused region with the smallest key = last use stamp +
//     credit, cold ones first while more than cold_target are cached. credit
//     (GreedyDual-Size) = (value - 1) * regions cached, value = a miss's cost
//     (regcache/cost_model.h) relative to a one-page miss, divided by the
//     region's share of the binding limit relative to one region slot: a
//     region that costs k times more to register survives about k rounds of
//     the LRU order; equal-cost regions keep plain LRU order.
//
// Bounded: every call is O(1) except Sample/Before, which the cache calls once
// per sampled region (kEvictSample per eviction, as before). Nothing here runs
// on the lock-free hit path, and nothing allocates after Init.
//
// LOCK RULE: every member function except the constructor, destructor and
// ready() is called with the owning cache's mu_ held; the object has no lock of
// its own and its data (below) is the cache's, guarded by that mu_. It reads
// CachedRegion::last_use (atomic, written by hits without the lock: a stale
// stamp only makes the choice approximate) and writes CachedRegion::evict_cold
// (only under mu_).
#ifndef REGCACHE_REGCACHE_EVICTION_H_
#define REGCACHE_REGCACHE_EVICTION_H_

#include <cstddef>
#include <cstdint>
#include <memory>

namespace regcache::core {

struct CachedRegion;

enum class EvictionMode : uint8_t { kLru = 0, kAdaptive = 1 };

class Eviction {
 public:
  // Allocates the ghost table (adaptive mode; at cache creation, no lock
  // held). ready() is false if that failed.
  Eviction(EvictionMode mode, size_t max_regions, size_t max_bytes);
  ~Eviction();
  Eviction(const Eviction &) = delete;
  Eviction &operator=(const Eviction &) = delete;

  bool ready() const { return mode_ == EvictionMode::kLru || ghosts_; }
  EvictionMode mode() const { return mode_; }

  // ---- victim selection (the cache's EvictLocked)
  // Starts choosing among `count` indexed regions.
  void BeginPass(size_t count);
  // Every sampled region, with its word: a cold region used since is promoted.
  void Sample(CachedRegion *r, uint64_t word);
  // Whether unused region a goes before unused region b.
  bool Before(const CachedRegion *a, const CachedRegion *b) const;
  // The region Before() ranks first among the unused ones of the first
  // `sample` regions of the CLOCK list from head (nullptr: none). Promotes as
  // Sample does.
  CachedRegion *PeekVictim(CachedRegion *head, int sample, size_t count);

  // ---- membership
  void Inserted(CachedRegion *r, bool hot);
  // r left the index by eviction (its ghost is recorded) or otherwise
  // (invalidated, folded into a merge: the memory or the range is gone).
  void Evicted(const CachedRegion *r);
  void Removed(const CachedRegion *r);

  // ---- admission of a miss on [start, end) (page-aligned)
  struct Verdict {
    bool admit;  // false: register for this use only, do not cache
    bool hot;    // Inserted(..., hot)
  };
  // `now`: the cache's use clock. `overlaps`: the plan merges or replaces
  // cached regions (always admitted). `need_room`: the cache is full without
  // evicting. `victim`: PeekVictim's answer.
  // `saved_hits`: hits so far on regions this policy kept by not caching a
  // miss (the cache counts them: CachedRegion::evict_saved).
  Verdict Admit(uintptr_t start, uintptr_t end, uint64_t now, bool overlaps,
                bool need_room, CachedRegion *victim, uint64_t saved_hits);

  // Introspection for tests and stats.
  size_t cold() const { return ncold_; }
  size_t cold_target() const { return cold_target_; }
  uint64_t rejected() const { return rejected_; }

 private:
  double Key(const CachedRegion *r) const;
  uint32_t *Ghost(uintptr_t start, uintptr_t end, uint32_t *tag) const;
  void Remember(uintptr_t start, uintptr_t end, uint64_t stamp, bool hot);

  // Immutable after construction.
  const EvictionMode mode_;
  const size_t max_regions_;
  const double slot_bytes_;  // max_bytes / max_regions: one slot's byte share
  const uint64_t window_;    // stamps within which LRU would have hit
  const uint64_t stale_;     // stamps after which an unused region is dead
  std::unique_ptr<uint32_t[]> ghosts_;
  const size_t ghost_mask_;
  const uint64_t duel_period_;  // decisions between halvings of the duel
  const uint64_t warmup_;       // first decisions that always cache (LRU's)

  // Guarded by the cache's mu_ (see LOCK RULE).
  size_t ncold_ = 0;        // cold regions in the index
  size_t cold_target_ = 0;  // ARC's p
  size_t count_ = 0;        // indexed regions at BeginPass
  bool prefer_cold_ = false;
  uint64_t rejected_ = 0;
  uint64_t regret_ = 0;      // misses on not-cached regions LRU would have hit
  uint64_t saved_base_ = 0;  // saved_hits already discounted (halvings)
  uint64_t decisions_ = 0;   // admission decisions that needed room
  bool ghosts_written_ = false;  // Remember has written a ghost
};

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_EVICTION_H_

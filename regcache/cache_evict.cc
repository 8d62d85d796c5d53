// SPDX-License-Identifier: BSD-3-Clause
// A cache's eviction under its lock: choosing victims by the policy's sample
// (eviction.h) until the limits hold, the over-limit attention bit, and
// Flush. Lock rule: every function here but Flush requires mu_ (asserted).
#include <algorithm>
#include <cerrno>

#include "regcache/cache.h"
#include "regcache/log.h"
#include "regcache/page.h"

namespace regcache::core {

void CacheCore::EvictLocked(RegionBatch *victims, bool all, size_t room_regions,
                            size_t room_bytes) {
  mu_.AssertHeld();
  // Within the limits with the room asked for (every miss asks twice, and
  // almost always is): nothing to evict, no sample on the stack.
  if (all || index_.count() + room_regions > params_.max_regions ||
      index_.bytes() + room_bytes > params_.max_bytes) [[unlikely]]
    EvictSampledLocked(victims, all, room_regions, room_bytes);
  ResetBoundsIfEmptyLocked();
  UpdateOverLimitLocked();
}

void CacheCore::EvictSampledLocked(RegionBatch *victims, bool all,
                                   size_t room_regions, size_t room_bytes) {
  mu_.AssertHeld();
  // Every CAS below fails only when a hit raced us, and each pass either
  // evicts or rotates a sample to the tail: the budget bounds the work when
  // everything is in use.
  size_t budget = 2 * index_.count() + kEvictSample;
  while (clock_.head() && budget > 0) {
    if (!all && index_.count() + room_regions <= params_.max_regions &&
        index_.bytes() + room_bytes <= params_.max_bytes)
      break;
    evict_.BeginPass(index_.count());
    // The least recently used unused region among the kEvictSample oldest in
    // CLOCK order: exact LRU (UCX's policy, which takes a lock on every get
    // and put for it) in a cache of at most kEvictSample regions, and an
    // approximation beyond, where the head of the list holds regions not
    // used since they were last sampled.
    CachedRegion *sample[kEvictSample];
    int n = 0;
    CachedRegion *victim = nullptr;
    uint64_t vw = 0;
    for (CachedRegion *r = clock_.head(); r && n < kEvictSample; r = r->next) {
      sample[n++] = r;
      const uint64_t w = r->word.load(std::memory_order_acquire);
      evict_.Sample(r, w);
      if (CachedRegion::Refs(w) != 0) continue;
      if (all) {  // everything unused goes: no need to compare
        victim = r;
        vw = w;
        break;
      }
      if (victim == nullptr || evict_.Before(r, victim)) {
        victim = r;
        vw = w;
      }
    }
    budget -= std::min<size_t>(budget, n);
    // Second chance for the others: the ones in use or used since they were
    // last looked at go behind the rest, so that the next sample starts with
    // regions that have not been.
    for (int i = 0; i < n; ++i) {
      CachedRegion *r = sample[i];
      if (r == victim) continue;
      const uint64_t w = r->word.load(std::memory_order_relaxed);
      if (CachedRegion::Refs(w) == 0 && !(w & CachedRegion::kAccessed))
        continue;
      if (w & CachedRegion::kAccessed)
        r->word.fetch_and(~CachedRegion::kAccessed, std::memory_order_relaxed);
      clock_.Unlink(r);
      clock_.PushBack(r);
    }
    if (victim == nullptr) continue;  // all in use: look at the next ones
    // Unused and valid: the word must still be exactly vw (no reference
    // taken since), else a hit raced us; look again.
    const uint64_t nw = CachedRegion::Word(CachedRegion::Gen(vw) + 1, 0, 0);
    if (!victim->word.compare_exchange_strong(vw, nw, std::memory_order_acq_rel,
                                              std::memory_order_relaxed))
      continue;
    index_.Erase(victim);
    clock_.Unlink(victim);
    evict_.Evicted(victim);
    victims->Push(victim);
    Count(stats_.evictions);
  }
}

void CacheCore::UpdateOverLimitLocked() {
  // Lazy byte limit: a miss makes room before registering, so a region larger
  // than max_bytes may stay cached alone until the next miss needs room (as
  // UCX does); evicting it at its put made every reuse a miss (growing
  // workload at 8 MiB). The count limit (a device resource) is kept at put.
  // kOverLimit changes only under mu_: the read-modify-write (a locked
  // instruction, twice per miss) only when the bit changes.
  const bool over = index_.count() > params_.max_regions ||
                    (index_.bytes() > params_.max_bytes && index_.count() > 1);
  const bool was =
      (attention_.load(std::memory_order_relaxed) & kOverLimit) != 0;
  if (over == was) return;
  if (over) {
    attention_.fetch_or(kOverLimit, std::memory_order_relaxed);
  } else {
    attention_.fetch_and(~uint32_t{kOverLimit}, std::memory_order_relaxed);
  }
}

int CacheCore::Flush() {
  RegionBatch victims;
  LockAndDrain();
  EvictLocked(&victims, true);
  DrainAndUnlock();
  DeregisterList(&victims);
  ReapDead();
  return 0;
}

}  // namespace regcache::core

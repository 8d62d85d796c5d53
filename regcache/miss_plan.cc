// SPDX-License-Identifier: BSD-3-Clause
// The lookup-plan step's decisions (miss.h): which range and access a miss
// registers (merging with overlapping regions), and whether the eviction
// policy caches it. Both under the cache's mutex.
#include <algorithm>

#include "regcache/cache.h"

namespace regcache::core {

CacheCore::Plan CacheCore::PlanLocked(uintptr_t start, uintptr_t end,
                                      unsigned access) const {
  mu_.AssertHeld();
  Plan p{start, end, access, 0};
  const size_t bound =
      std::min(params_.merge_max_bytes, driver()->MaxRegionBytes());
  bool grew = true;
  while (grew) {
    grew = false;
    CachedRegion *r = index_.Floor(p.start);
    if (r == nullptr || r->end < p.start) r = index_.LowerBound(p.start);
    for (; r && r->start <= p.end; r = index_.LowerBound(r->start + 1)) {
      const bool overlaps = r->start < p.end && r->end > p.start;
      // Overlapping regions leave the index when ours is inserted whether or
      // not they are merged; taking their access now avoids flag bouncing (UCX
      // #10090).
      if (overlaps) p.access |= r->access;
      if (r->start >= p.start && r->end <= p.end) continue;
      // Adjacent (touching, not overlapping) regions stay apart: separately
      // allocated buffers are often adjacent mappings, and a glued pair would
      // lose both registrations when one buffer is freed (docs/cache.md).
      if (!overlaps) continue;
      const uintptr_t ns = std::min(p.start, r->start);
      const uintptr_t ne = std::max(p.end, r->end);
      if (ne - ns <= bound) {
        p.start = ns;
        p.end = ne;
        p.access |= r->access;
        grew = true;
        break;  // the range grew: rescan, it may touch more regions now
      }
    }
  }
  return p;
}

Eviction::Verdict CacheCore::AdmitLocked(const Plan &plan, bool overlaps) {
  if (evict_.mode() == EvictionMode::kLru) return {true, true};
  const size_t len = plan.end - plan.start;
  const size_t count = index_.count(), bytes = index_.bytes();
  // A miss the policy does not cache stays registered while it is held: only
  // where the byte limit (pinned memory) holds with it; else room is made.
  const bool need_room =
      (count + 1 > params_.max_regions || bytes + len > params_.max_bytes) &&
      bytes + len <= params_.max_bytes;
  CachedRegion *victim =
      need_room && !overlaps
          ? evict_.PeekVictim(clock_.head(), kEvictSample, count)
          : nullptr;
  return evict_.Admit(plan.start, plan.end,
                      use_clock_.load(std::memory_order_relaxed), overlaps,
                      need_room, victim,
                      evict_saved_hits_.load(std::memory_order_relaxed));
}

}  // namespace regcache::core

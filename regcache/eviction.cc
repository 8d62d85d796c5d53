// SPDX-License-Identifier: BSD-3-Clause
// regcache/eviction.cc - the eviction policy (design and lock rule:
// eviction.h; measurements: docs/cache.md "Eviction").
#include "regcache/eviction.h"

#include <algorithm>
#include <new>

#include "regcache/cache.h"
#include "regcache/cost_model.h"

namespace regcache::core {
namespace {

// Ghost entry: bit 31 valid | bits 30..25 tag | bit 24 not cached (rejected)
// | bit 23 hot | bits 22..0 stamp.
constexpr uint32_t kGhostValid = uint32_t{1} << 31;
constexpr int kTagShift = 25;
constexpr uint32_t kTagMask = 0x3f;
constexpr uint32_t kGhostRejected = uint32_t{1} << 24;
constexpr uint32_t kGhostHot = uint32_t{1} << 23;
constexpr uint32_t kStampMask = (uint32_t{1} << 23) - 1;
constexpr size_t kMinGhosts = 1024;
constexpr size_t kMaxGhosts = size_t{1} << 20;

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// max_regions may be "inf" (SIZE_MAX): products of it must not wrap.
uint64_t Bounded(size_t max_regions) {
  return std::min<uint64_t>(max_regions, uint64_t{1} << 32);
}

size_t GhostEntries(size_t max_regions) {
  // One entry per region of capacity (rounded down to a power of two): a
  // ghost only matters while it is within LRU reach, i.e. for about
  // max_regions stamps.
  size_t n = kMinGhosts;
  while (n * 2 <= std::min(max_regions, kMaxGhosts)) n *= 2;
  return n;
}

}  // namespace

Eviction::Eviction(EvictionMode mode, size_t max_regions, size_t max_bytes)
    : mode_(mode),
      max_regions_(max_regions),
      slot_bytes_(max_regions ? static_cast<double>(max_bytes) /
                                    static_cast<double>(max_regions)
                              : 1.0),
      window_(std::min<uint64_t>(max_regions, kStampMask / 2)),
      stale_(16 * Bounded(max_regions) + 1024),
      ghosts_(mode == EvictionMode::kAdaptive
                  ? new (std::nothrow) uint32_t[GhostEntries(max_regions)]()
                  : nullptr),
      ghost_mask_(GhostEntries(max_regions) - 1),
      duel_period_(8 * std::max<uint64_t>(Bounded(max_regions), 64)),
      // Below 16 regions a quarter is 0..3 decisions, where one more LRU
      // decision only moves the trajectory (flags at 4 regions: 6 hits below
      // LRU's with one): none there.
      // At most 4 096 (the default capacity's quarter): with MAX_REGIONS=inf
      // the byte limit binds and a quarter of 2^32 would never end.
      warmup_(max_regions >= 16
                  ? std::min<uint64_t>(Bounded(max_regions) / 4, 4096)
                  : 0) {}

Eviction::~Eviction() = default;

void Eviction::BeginPass(size_t count) {
  count_ = count;
  // ARC's REPLACE: take from the cold side while it holds more than its
  // target, else from the whole cache in key order.
  prefer_cold_ = ncold_ > cold_target_;
}

void Eviction::Sample(CachedRegion *r, uint64_t word) {
  if (mode_ == EvictionMode::kLru) return;
  if ((word & CachedRegion::kAccessed) && r->evict_cold) {
    r->evict_cold = 0;
    --ncold_;
  }
}

double Eviction::Key(const CachedRegion *r) const {
  const double stamp =
      static_cast<double>(r->last_use.load(std::memory_order_relaxed));
  const size_t len = r->end - r->start;
  // GreedyDual-Size: a miss's cost relative to a one-page miss, per share of
  // the limit that binds (one region slot, or slot_bytes_ of max_bytes).
  const double cost = cost::MissUs(len) / cost::MissUs(4096);
  const double share = std::max(1.0, static_cast<double>(len) / slot_bytes_);
  // Half a round of the LRU order per unit of extra value: with a full round
  // the churn workload lost hits at 4 regions (it kept large buffers that
  // malloc frees soon after), with half it loses none and mixed keeps its
  // saving (docs/cache.md "Eviction").
  return stamp + 0.5 * (cost / share - 1.0) * static_cast<double>(count_);
}

bool Eviction::Before(const CachedRegion *a, const CachedRegion *b) const {
  if (mode_ == EvictionMode::kLru)
    return a->last_use.load(std::memory_order_relaxed) <
           b->last_use.load(std::memory_order_relaxed);
  if (prefer_cold_ && a->evict_cold != b->evict_cold) return a->evict_cold;
  return Key(a) < Key(b);
}

CachedRegion *Eviction::PeekVictim(CachedRegion *head, int sample,
                                   size_t count) {
  BeginPass(count);
  CachedRegion *victim = nullptr;
  int n = 0;
  for (CachedRegion *r = head; r && n < sample; r = r->next, ++n) {
    const uint64_t w = r->word.load(std::memory_order_acquire);
    Sample(r, w);
    if (CachedRegion::Refs(w) != 0) continue;
    if (victim == nullptr || Before(r, victim)) victim = r;
  }
  // Promotions above may have changed the preference.
  BeginPass(count);
  return victim;
}

void Eviction::Inserted(CachedRegion *r, bool hot) {
  r->evict_saved.store(0, std::memory_order_relaxed);
  r->evict_cold = mode_ == EvictionMode::kAdaptive && !hot;
  if (r->evict_cold) ++ncold_;
}

void Eviction::Removed(const CachedRegion *r) {
  if (r->evict_cold) --ncold_;
}

void Eviction::Evicted(const CachedRegion *r) {
  Removed(r);
  if (mode_ == EvictionMode::kLru) return;
  Remember(r->start, r->end, r->last_use.load(std::memory_order_relaxed),
           !r->evict_cold);
}

uint32_t *Eviction::Ghost(uintptr_t start, uintptr_t end, uint32_t *tag) const {
  const uint64_t h = Mix(start ^ (uint64_t{end} << 29 | uint64_t{end} >> 35));
  *tag = static_cast<uint32_t>(h >> 57) & kTagMask;
  return &ghosts_[h & ghost_mask_];
}

void Eviction::Remember(uintptr_t start, uintptr_t end, uint64_t stamp,
                        bool hot) {
  uint32_t tag;
  uint32_t *g = Ghost(start, end, &tag);
  ghosts_written_ = true;
  *g = kGhostValid | tag << kTagShift | (hot ? kGhostHot : 0) |
       (static_cast<uint32_t>(stamp) & kStampMask);
}

Eviction::Verdict Eviction::Admit(uintptr_t start, uintptr_t end, uint64_t now,
                                  bool overlaps, bool need_room,
                                  CachedRegion *victim, uint64_t saved_hits) {
  if (mode_ == EvictionMode::kLru) return {true, true};
  bool hot = overlaps;
  uint32_t tag = 0, none = 0;
  // Until the first ghost is written (the first eviction) the table is all
  // zero: no hash, and no read of a random line of it per miss.
  uint32_t *g = ghosts_written_ ? Ghost(start, end, &tag) : &none;
  if ((*g & kGhostValid) && ((*g >> kTagShift) & kTagMask) == tag) {
    const uint64_t age = (static_cast<uint32_t>(now) - *g) & kStampMask;
    if (age <= window_) {
      // LRU of this capacity would have hit: a reuse.
      hot = true;
      if (*g & kGhostRejected) ++regret_;
      if (*g & kGhostHot) {
        if (cold_target_ > 0) --cold_target_;  // we evicted a reused one
      } else if (cold_target_ < max_regions_) {
        ++cold_target_;  // a first-time region came back soon: recency pays
      }
    }
    *g = 0;  // consumed
  }
  if (!need_room || hot || victim == nullptr) return {true, hot};
  if (ncold_ < cold_target_) return {true, false};
  const uint64_t last = victim->last_use.load(std::memory_order_relaxed);
  if (now > last && now - last > stale_)
    return {true, false};  // the victim has not been used for ages
  // The duel with LRU: not caching a miss has so far cost more hits (misses
  // LRU would have hit) than it saved (hits on the regions it kept): cache it.
  // Both counts are halved every duel_period_ decisions, so that an early
  // loss (or a ghost's false match) does not switch the policy off for good.
  if (++decisions_ % duel_period_ == 0) {
    regret_ /= 2;
    saved_base_ = saved_hits - (saved_hits - saved_base_) / 2;
  }
  if (regret_ > saved_hits - saved_base_) return {true, false};
  // Warm-up: the first warmup_ decisions are LRU's (cache it, evict the
  // victim). A cache that needs room only a few times in its life is not
  // thrashing; refusing there loses coverage that later merges would have
  // used (subrange at 64 regions: 17 such decisions in 10 000 gets, and the
  // regions refusals kept were merged into 32 MiB registrations: +1.3 %
  // modeled time against LRU). A loop or a scan pays warmup_ misses once.
  if (decisions_ <= warmup_) return {true, false};
  Remember(start, end, now, false);
  *Ghost(start, end, &tag) |= kGhostRejected;
  victim->evict_saved.store(1, std::memory_order_relaxed);
  ++rejected_;
  return {false, false};
}

}  // namespace regcache::core

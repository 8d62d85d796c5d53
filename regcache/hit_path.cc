// SPDX-License-Identifier: BSD-3-Clause
// The lock-free hit path (Get's front-table hit, Put) and the per-thread front
// table it reads (hit_path.h). docs/cache.md "Hit path".
#include "regcache/hit_path.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "notifier/address_space.h"
#include "regcache/cache.h"
#include "regcache/log.h"

namespace regcache::core {
namespace {

struct FrontEntry {
  uint64_t cache_id;  // 0: empty. Cache ids are never reused.
  uintptr_t start, end;
  CachedRegion *region;
  uint32_t gen;
  uint32_t access;
};

// The second level of the front table: kFrontSets sets of two entries,
// direct-mapped by the page number of a region's start (Fibonacci hashing:
// buffers laid out at a fixed stride land in distinct sets). A request is
// looked up by the page of its own address, so it finds the region that
// starts at that page: the common reuse of a message buffer from its start.
// The 8 scanned entries above stay first: they cover any sub-range of the
// few most recent regions (subrange, growing). Without this level a thread
// cycling over more than 8 buffers (pool-fit: 24, scan: 24, mixed: 68) took
// the cache mutex and the index on every hit (regcache-bench, docs/bench.md).
constexpr int kFrontSetBits = 6;
constexpr int kFrontSets = 1 << kFrontSetBits;

inline unsigned FrontSet(uintptr_t addr) {
  return static_cast<unsigned>(((addr >> 12) * 0x9E3779B97F4A7C15ull) >>
                               (64 - kFrontSetBits));
}

struct ThreadState {
  FrontEntry e[kFrontEntries] = {};
  FrontEntry set[kFrontSets][2] = {};  // at 320 bytes: a set's pair is 80
  // [lo, hi) holds every entry of e written since the last exact
  // recomputation (Remember: a superset between them). A request outside it
  // cannot be covered by a recent entry: a miss on fresh memory (the common
  // miss) skips the scan of e. After set: keeps set's layout on lines.
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  unsigned next = 0;
  int slot = 0;
};

constexpr int kSlotsForThreads = 64;
std::atomic<uint64_t> g_slot_bits{0};

// A slot's counters are written by its owner with a plain load and store
// (CountInSlot): the next owner must read the last value the previous one
// stored, or its first store loses those counts (for regions, a gauge, for
// good). Release at ReleaseSlot, acquire at AcquireSlot: the previous owner's
// stores happen before the next owner's loads (x86 orders this anyway; the
// C++ model and weaker CPUs need the pair). Once per thread: no cost that
// matters.
int AcquireSlot() {
  uint64_t b = g_slot_bits.load(std::memory_order_relaxed);
  while (b != ~uint64_t{0}) {
    int i = __builtin_ctzll(~b);
    if (g_slot_bits.compare_exchange_weak(b, b | (uint64_t{1} << i),
                                          std::memory_order_acquire,
                                          std::memory_order_relaxed))
      return i;
  }
  return kSlotsForThreads;  // shared slot, counted with atomic RMW
}

void ReleaseSlot(int i) {
  if (i < kSlotsForThreads)
    g_slot_bits.fetch_and(~(uint64_t{1} << i), std::memory_order_release);
}

// initial-exec: one pointer of static TLS (a dlopen'ed library can afford it)
// avoids __tls_get_addr on the hit path. The state itself is heap-allocated on
// the first slow path. Defined in this unit, next to its only readers, so no
// TLS wrapper call is needed.
thread_local ThreadState *t_state __attribute__((tls_model("initial-exec"))) =
    nullptr;

struct ThreadStateOwner {
  ~ThreadStateOwner() {
    ThreadState *s = t_state;
    t_state = nullptr;
    if (s) {
      ReleaseSlot(s->slot);
      delete s;
    }
  }
};
thread_local ThreadStateOwner t_owner;

ThreadState *GetThreadState() {
  if (t_state) return t_state;
  auto *s = new (std::nothrow) ThreadState;
  if (s == nullptr) return nullptr;
  s->slot = AcquireSlot();
  t_state = s;
  // odr-use: registers the destructor for this thread
  static_cast<void>(&t_owner);
  return s;
}

}  // namespace

void HitSlotsAfterFork() {
  g_slot_bits.store(t_state != nullptr && t_state->slot < kSlotsForThreads
                        ? uint64_t{1} << t_state->slot
                        : 0,
                    std::memory_order_relaxed);
}

void CacheCore::CountInSlot(std::atomic<uint64_t> HitSlot::*member,
                            uint64_t delta) {
  static_assert(kSlots == kSlotsForThreads);
  ThreadState *ts = t_state;
  const int slot = ts ? ts->slot : kSlotsForThreads;
  auto &n = hit_slots_[slot].*member;
  if (slot < kSlotsForThreads) {
    n.store(n.load(std::memory_order_relaxed) + delta,
            std::memory_order_relaxed);
  } else {
    n.fetch_add(delta, std::memory_order_relaxed);
  }
}

// CountInSlot(&HitSlot::n), written out: the hit path's own copy.
void CacheCore::CountHit() {
  ThreadState *ts = t_state;
  const int slot = ts ? ts->slot : kSlotsForThreads;
  auto &n = hit_slots_[slot].n;
  if (slot < kSlotsForThreads) {
    n.store(n.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  } else {
    n.fetch_add(1, std::memory_order_relaxed);
  }
}

// LRU order: a region gets a new stamp from the cache's use clock when it is
// handed out, unless it already holds one of the touch_slack_ + 1 newest
// stamps (touch_slack_ = max_regions / 16, 0 below 16 regions: exact LRU
// there). Such a region ranks among the newest sixteenth of a full cache, so
// skipping the stamp changes an eviction only if one miss evicts more than
// 15/16 of the cache (a byte limit can); in exchange a thread reusing its
// regions does not write the shared clock on every hit (the 2-thread hit loop
// never writes it).
void CacheCore::Touch(CachedRegion *r) {
  if (r->evict_saved.load(std::memory_order_relaxed) &&
      r->evict_saved.exchange(0, std::memory_order_relaxed))
    evict_saved_hits_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t now = use_clock_.load(std::memory_order_relaxed);
  if (now - r->last_use.load(std::memory_order_relaxed) <= touch_slack_) return;
  Stamp(r);
}

void CacheCore::Stamp(CachedRegion *r) {
  r->last_use.store(use_clock_.fetch_add(1, std::memory_order_relaxed) + 1,
                    std::memory_order_relaxed);
}

void CacheCore::StampLocked(CachedRegion *r) {
  mu_.AssertHeld();
  const uint64_t t = use_clock_.load(std::memory_order_relaxed) + 1;
  use_clock_.store(t, std::memory_order_relaxed);
  r->last_use.store(t, std::memory_order_relaxed);
}

void CacheCore::Remember(CachedRegion *r, uint64_t word, bool fresh) {
  ThreadState *ts = GetThreadState();
  if (ts == nullptr) return;
  // An entry for the same region, or for this cache's region at the same
  // start, is replaced rather than duplicated.
  auto same = [&](const FrontEntry &e) {
    return e.region == r || (e.cache_id == id_ && e.start == r->start);
  };
  FrontEntry *slot = nullptr;
  if (!fresh) {
    for (auto &e : ts->e) {
      if (same(e)) {
        slot = &e;
        break;
      }
    }
  }
  const bool ring = slot == nullptr;
  if (ring) slot = &ts->e[ts->next++ % kFrontEntries];
  const FrontEntry fe{id_,      r->start, r->end, r, CachedRegion::Gen(word),
                      r->access};
  *slot = fe;
  // The recent entries' span: widened here, recomputed once per round of
  // the ring (entries replaced since may have held its ends: a superset,
  // which only costs a scan).
  if (ring && ts->next % kFrontEntries == 0) {
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (const FrontEntry &e : ts->e) {
      const bool used = e.cache_id != 0;
      lo = used && e.start < lo ? e.start : lo;
      hi = used && e.end > hi ? e.end : hi;
    }
    ts->lo = lo;
    ts->hi = hi;
  } else {
    ts->lo = std::min(ts->lo, fe.start);
    ts->hi = std::max(ts->hi, fe.end);
  }
  // The set of the region's start page: most recent first; the same entry
  // moves to the front instead of taking both ways.
  FrontEntry *way = ts->set[FrontSet(r->start)];
  if (!same(way[0])) way[1] = way[0];
  way[0] = fe;
}

namespace {
// Whether a front-table entry is of this cache and covers the request.
inline bool Applies(const FrontEntry &e, uint64_t cache_id, uintptr_t addr,
                    uintptr_t end, unsigned access) {
  return e.cache_id == cache_id && e.start <= addr && end <= e.end &&
         (access & ~e.access) == 0;
}
}  // namespace

// The entry that applies: the region referenced (*out) if it still names a
// valid region of that generation. false: the region changed (the caller
// then takes the slow path).
bool CacheCore::TryFront(const void *entry, uintptr_t addr, uintptr_t end,
                         unsigned access, CachedRegion **out) {
  const FrontEntry &e = *static_cast<const FrontEntry *>(entry);
  CachedRegion *r = e.region;
  const uint64_t want =
      (static_cast<uint64_t>(e.gen) << CachedRegion::kGenShift) |
      CachedRegion::kValid;
  uint64_t w = r->word.load(std::memory_order_relaxed);
  while ((w & ~(CachedRegion::kRefMask | CachedRegion::kAccessed)) == want &&
         CachedRegion::Refs(w) < CachedRegion::kRefMask) {
    if (r->word.compare_exchange_weak(w, (w + 1) | CachedRegion::kAccessed,
                                      std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
      // The generation is 32 bits: after 2^32 reuses of this slot a stale
      // entry could match again. The range check makes that harmless (a
      // matching region is a correct answer whatever its history).
      if (r->cache == this && r->start <= addr && end <= r->end &&
          (access & ~r->access) == 0) {
        Touch(r);
        CountHit();
        *out = r;
        return true;
      }
      r->cache->Put(r);
      return false;
    }
  }
  return false;
}

int CacheCore::Get(uintptr_t addr, size_t len, unsigned access,
                   CachedRegion **out) {
  ThreadState *ts = t_state;
  // FastPathOk: false while the uffd source is still delivering a munmap that
  // has already returned, or when another library overwrote the patch source's
  // hooks (docs/notifier.md); GetSlow synchronizes with the notifier first.
  if (ts != nullptr &&
      !(attention_.load(std::memory_order_acquire) & kHitSlowMask) &&
      notifier::FastPathOk()) {
    const uintptr_t end = addr + len;
    // The hashed set first: one probe finds a buffer reused from its start
    // among up to 128; then the 8 recent entries, which cover sub-ranges. An
    // entry whose region changed since (evicted, invalidated, merged into a
    // bigger one) is forgotten and the search goes on: another entry may
    // know the region that replaced it.
    for (FrontEntry &e : ts->set[FrontSet(addr)]) {
      if (!Applies(e, id_, addr, end, access)) continue;
      if (TryFront(&e, addr, end, access, out)) return 0;
      e.cache_id = 0;
    }
    if (ts->lo <= addr && end <= ts->hi) {
      for (FrontEntry &e : ts->e) {
        if (!Applies(e, id_, addr, end, access)) continue;
        if (TryFront(&e, addr, end, access, out)) return 0;
        e.cache_id = 0;
      }
    }
  }
  return GetSlow(addr, len, access, out);
}

void CacheCore::Put(CachedRegion *r) {
  uint64_t w = r->word.load(std::memory_order_relaxed);
  do {
    if (CachedRegion::Refs(w) == 0) {
      DoublePut(r);
      return;
    }
  } while (!r->word.compare_exchange_weak(w, w - 1, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
  // From here r may be evicted and recycled by another thread unless we hold
  // the last reference of an invalidated region (then it is ours to
  // deregister).
  const bool last = CachedRegion::Refs(w) == 1;
  if (last && !(w & CachedRegion::kValid)) {
    ReleaseOrphan(r);
    return;
  }
  const uint32_t a = attention_.load(std::memory_order_relaxed);
  if ((a & kDeadMany) || (last && (a & kOverLimit))) PutSlow();
}

void CacheCore::PutSlow() {
  RegionBatch victims;
  LockAndDrain();
  if (attention_.load(std::memory_order_relaxed) & kOverLimit)
    EvictLocked(&victims, false);
  DrainAndUnlock();
  DeregisterList(&victims);
  ReapDead();
}

void CacheCore::ReleaseOrphan(CachedRegion *r) {
  LockAndDrain();
  const bool parents = r->forked;
  OrphanUnlinkLocked(r);
  DrainAndUnlock();
  if (parents) {
    DropForked(r);  // registered by the parent before fork(): no driver call
  } else {
    DeregisterOne(r);
  }
  ReapDead();
}

void CacheCore::DoublePut(CachedRegion *r) {
#ifndef NDEBUG
  std::fprintf(stderr,
               "[regcache] fatal: regcache_put: region %p of cache %s put more "
               "often than it was got (double put)\n",
               static_cast<void *>(r), name().c_str());
  std::abort();
#else
  static std::atomic<bool> logged{false};
  if (!logged.exchange(true))
    REGCACHE_LOG(
        ERROR,
        "regcache_put: region {} of cache {} put more often than it was got "
        "(double put); ignored (logged once)",
        static_cast<void *>(r), name());
#endif
}

}  // namespace regcache::core

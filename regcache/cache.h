/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/cache.h - the registration cache's core (internal; the C API wraps
// it).
//
// Design (docs/cache.md has the long version):
//
// REGIONS live in type-stable memory: a process-wide slab of 128-byte Region
// objects that is never returned to the OS, so a stale pointer always points at
// some Region and may be probed with atomics. Each region has one packed atomic
// word
//   bits 63..32 generation | bit 31 valid | bit 30 accessed | bits 29..0 user
//   references.
// The generation is bumped whenever the region leaves the index (invalidation,
// eviction, displacement by a merge), so a stale pointer plus the generation it
// was seen with can never take a reference on a different incarnation.
//
// HIT PATH (no lock shared between threads). Each thread has a small front
// table of {cache id, range, access, region, generation} entries. A hit is: one
// load of the cache's attention word (pending invalidations or dead regions
// force the slow path), a scan of the front table, one CAS on the region word
// that succeeds only if the generation matches and the region is valid (it also
// sets the accessed bit), and a re-check of the region's range against the
// request (makes 32-bit generation wrap harmless). Hits are counted in
// per-thread slots of the cache.
//
// PUT is one CAS decrement of the reference count (CAS, not fetch_sub, so a
// double put is detected instead of corrupting the word). The last put of an
// invalidated region deregisters it; a put that finds the cache over its limits
// evicts.
//
// INDEX: non-overlapping, page-aligned regions ordered by start in an intrusive
// treap, plus an intrusive CLOCK list (second-chance approximation of LRU) of
// all indexed regions, both under mu_. Nothing under mu_ allocates, frees,
// calls the driver or the notifier's Register/Unregister: those may re-enter
// the notifier (free -> munmap -> callback -> this cache) and deadlock.
//
// INVALIDATION: one whole-space notifier subscription per cache.
// invalidate_range_start filters by the atomic [lo_, hi_) bounds of everything
// ever indexed, then try-locks mu_: success -> overlapping regions leave the
// index at once (generation bump); unused ones go to the dead list. Failure ->
// the range goes into a bounded, coalescing, allocation-free pending set and
// the attention word's kPending bit is set; whoever holds or next takes mu_
// applies it before using the index and before unlocking. Dead regions are
// deregistered by the next cache call outside the lock, never inside the
// callback.
//
// MISS: plan under mu_ (page-align, merge with overlapping regions up to
// merge_max_bytes, union of access), then outside the lock: notifier range
// subscription on the planned range, seq = ReadBegin, driver Register, lock,
// ReadRetry(seq) ? undo and retry : insert (overlapping regions leave the
// index; held ones stay registered until their last put), unlock,
// unsubscribe. Adjacent (touching) regions are not merged: separately
// allocated buffers are often adjacent mappings, and one free() would cost
// the neighbour's registration.
//
// FORK: every live cache is on a process-wide list. pthread_atfork handlers
// lock that list, every cache's mu_ and the slab in prepare (their holders
// never block while holding them, so the wait is bounded) and unlock them
// after; in the child, before unlocking, every inherited cache forgets the
// parent's registrations: indexed, dead and orphaned regions leave without a
// driver call (a verbs MR belongs to the parent's context: deregistering it
// through the shared uverbs fd would destroy the parent's MR; pinned pages
// were copied for the child), counted as invalidations. Regions the forking
// thread still holds become kWhereForked orphans: their last put frees them,
// again without the driver. Misses other threads had in flight are forgotten.
// The child's gets then register anew; new caches are unaffected.
//
// EVICTION: least recently used first. Each handed-out region carries a stamp
// of the cache's use clock (Touch; the hit path writes the shared clock only
// when the set of recent regions changes); eviction compares the stamps of
// the kEvictSample oldest regions in CLOCK order: exact LRU up to that many
// regions, CLOCK-approximated beyond. The policy (regcache/eviction.h,
// REGCACHE_EVICTION) ranks that sample and decides whether a miss is cached
// at all (adaptive: loops and scans keep the reused set; lru: UCX's choices).
#ifndef REGCACHE_REGCACHE_CACHE_H_
#define REGCACHE_REGCACHE_CACHE_H_

#include <regcache/notifier.h>
#include <regcache/regcache.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "regcache/driver_port.h"
#include "regcache/eviction.h"
#include "regcache/thread_annotations.h"

namespace regcache::notifier {
class Subscription;
}  // namespace regcache::notifier

namespace regcache::core {

class Cache;

// One cached registration. Fields other than `word` are written only by the
// thread that owns the region exclusively (allocation until publication, or
// after it left the index with no references) or under the owning cache's mu_,
// and are immutable while the region is valid.
struct alignas(64) Region {
  std::atomic<uint64_t> word{0};
  Cache *cache = nullptr;
  uintptr_t start = 0;  // page-aligned
  uintptr_t end = 0;    // page-aligned, exclusive
  unsigned access = 0;
  uint32_t where =
      0;  // kWhere* below: which list the region is on (debug + asserts)
  Registration reg;
  Region *left = nullptr;  // treap children (index)
  Region *right = nullptr;
  Region *prev = nullptr;  // CLOCK list / orphan list
  Region *next =
      nullptr;  // CLOCK list / orphan list / dead list / slab free list
  // When it was last handed out (Cache::Touch): eviction takes the least
  // recently used. Written by every get, also on the lock-free hit path, so
  // atomic; only eviction reads it.
  std::atomic<uint64_t> last_use{0};
  // Host storage (params host_data_bytes; nullptr when 0): allocated zeroed
  // with the region by AllocRegion, freed by FreeRegion; the host's while the
  // region is held.
  void *host = nullptr;
  // Eviction's cold/hot class (regcache/eviction.h); under the cache's mu_.
  uint8_t evict_cold = 0;
  // Set (under mu_) when the policy kept this region instead of caching a
  // miss; its next hit clears it (lock-free, Touch) and counts for the policy.
  std::atomic<uint8_t> evict_saved{0};

  static constexpr uint64_t kRefMask = (uint64_t{1} << 30) - 1;
  static constexpr uint64_t kAccessed = uint64_t{1} << 30;
  static constexpr uint64_t kValid = uint64_t{1} << 31;
  static constexpr int kGenShift = 32;
  static uint32_t Gen(uint64_t w) {
    return static_cast<uint32_t>(w >> kGenShift);
  }
  static uint64_t Refs(uint64_t w) { return w & kRefMask; }

  enum : uint32_t {
    kWhereFree = 0,
    kWhereOwned,
    kWhereIndex,
    kWhereOrphan,
    kWhereDead,
    kWhereForked  // orphan registered by the parent before fork(): no driver
  };
};
static_assert(sizeof(Region) <= 128,
              "a cached region must cost at most 128 bytes");

// Resolved cache parameters (params, else REGCACHE_* tunables, else defaults).
struct Params {
  size_t max_regions = 0;
  size_t max_bytes = 0;
  size_t merge_max_bytes = 0;
  // ACCESS_POLICY=all (default): register writable memory with
  // REGCACHE_ACCESS_ALL; requested: with the union of the requested flags.
  bool access_all = true;
  bool print_stats = false;
  // REGCACHE_EVICTION (regcache/eviction.h).
  EvictionMode eviction = EvictionMode::kAdaptive;
  std::string name;
  size_t host_data_bytes = 0;  // per region, rounded up to 64; 0: none
};

// Fills *out from p (may be NULL) and the tunables. 0 or -EINVAL.
int ResolveParams(const regcache_params_t *p, Params *out);
// MAX_BYTES=auto: 3/4 of RLIMIT_MEMLOCK when finite, else 1/4 of physical RAM.
size_t AutoMaxBytes();

class Cache {
 public:
  // Takes a reference on drv (dropped by Destroy). 0, -ENOMEM or the notifier's
  // error.
  static int Create(regcache_driver *drv, const Params &params, Cache **out);
  // Unsubscribes, deregisters everything (held regions too) and deletes this.
  void Destroy();

  // REQUIRES: validated input (len > 0, no wrap after page alignment, known
  // access bits).
  int Get(uintptr_t addr, size_t len, unsigned access, Region **out);
  void Put(Region *r);
  int Flush();
  void GetStats(regcache_stats_t *s);
  int PrintStats(FILE *f);

  const std::string &name() const { return params_.name; }
  Driver *driver() const { return drv_->impl.get(); }
  uint64_t id() const { return id_; }

  // ---- Transport calls (regcache_find / _get_flags / _invalidate; issue 18).
  // Same input rules as Get. Find: a covering valid region, referenced, or
  // -ENOENT. GetUncached: a private registration, deregistered at its put.
  // Invalidate: revokes overlapping regions; returns how many.
  int Find(uintptr_t addr, size_t len, unsigned access, Region **out);
  int GetUncached(uintptr_t addr, size_t len, unsigned access, Region **out);
  int Invalidate(uintptr_t addr, size_t len);

  // Notifier callbacks (public for the C thunks).
  void OnInvalidateStart(uintptr_t start, size_t len);
  void OnRelease();

  Cache(const Cache &) = delete;
  Cache &operator=(const Cache &) = delete;

  // fork() handlers (pthread_atfork; see FORK above). Public for the C thunks.
  static void AtforkPrepare();
  static void AtforkParent();
  static void AtforkChild();

 private:
  struct Plan {
    uintptr_t start, end;
    unsigned access;
    size_t merged;  // regions folded into the plan
  };
  // A singly linked list through Region::next, built under mu_ and consumed
  // outside it.
  struct List {
    Region *head = nullptr;
    size_t n = 0;
    void Push(Region *r) {
      r->next = head;
      head = r;
      ++n;
    }
  };
  // Bounded, coalescing, allocation-free set of ranges that arrived while mu_
  // was busy.
  class PendingSet {
   public:
    static constexpr int kMax = 16;
    struct Range {
      uintptr_t start, end;
    };
    // Records [start, end) and sets kPending in *attention (under the set's
    // spin lock, so FinishDrain cannot clear the bit of a range it did not
    // take).
    void Add(uintptr_t start, uintptr_t end, std::atomic<uint32_t> *attention);
    // Moves everything into out (kMax entries); returns the count.
    int Take(Range *out);
    // After the taken ranges were applied: clears kPending unless ranges
    // arrived since.
    void FinishDrain(std::atomic<uint32_t> *attention);
    int Size();
    // Fork child: empties the set and releases its lock (its holder may have
    // been another thread, which does not exist in the child).
    void ResetAfterFork() {
      n_ = 0;
      SpinUnlock();
    }

   private:
    void SpinLock();
    void SpinUnlock() { lock_.clear(std::memory_order_release); }
    std::atomic_flag lock_ = ATOMIC_FLAG_INIT;
    Range r_[kMax];
    int n_ = 0;
  };

  enum : uint32_t { kPending = 1, kDead = 2, kOverLimit = 4 };
  static constexpr uint32_t kHitSlowMask = kPending | kDead;
  static constexpr uint32_t kPutSlowMask = kDead | kOverLimit;
  static constexpr int kSlots =
      64;  // per-thread hit counters; slot kSlots is shared

  Cache(regcache_driver *drv, const Params &params);
  ~Cache();

  int GetSlow(uintptr_t addr, size_t len, unsigned access, Region **out);
  // Registers [start, end) into nr without caching it (the event source cannot
  // watch that memory, or it is blind): the region is in no index, and its
  // last put deregisters it.
  int RegisterUncached(Region *nr, uintptr_t start, uintptr_t end,
                       unsigned access, Region **out) REGCACHE_EXCLUDES(mu_);
  void PutSlow();
  void ReleaseOrphan(Region *r);
  // Blind notifier (see cache.cc "blind mode"): hands out a registered
  // region without indexing it.
  void HandOutUncached(Region *r) REGCACHE_EXCLUDES(mu_);
  // Stats of one new registration of len bytes (registrations, bytes, peak).
  void CountRegistered(uint64_t len);
  void DoublePut(Region *r);
  void CountHit();
  void Remember(Region *r, uint64_t word);

  // Lock / unlock that apply pending invalidations first.
  void LockAndDrain() REGCACHE_ACQUIRE(mu_);
  void DrainAndUnlock() REGCACHE_RELEASE(mu_);
  void DrainPendingLocked() REGCACHE_REQUIRES(mu_);
  void InvalidateLocked(uintptr_t start, uintptr_t end) REGCACHE_REQUIRES(mu_);

  // Index (treap by start) and CLOCK list.
  void IndexInsertLocked(Region *r) REGCACHE_REQUIRES(mu_);
  void IndexEraseLocked(Region *r) REGCACHE_REQUIRES(mu_);
  Region *FloorLocked(uintptr_t key) const REGCACHE_REQUIRES(mu_);
  Region *LowerBoundLocked(uintptr_t key) const REGCACHE_REQUIRES(mu_);
  Region *FirstOverlapLocked(uintptr_t start, uintptr_t end) const
      REGCACHE_REQUIRES(mu_);
  Region *FindCoveringLocked(uintptr_t start, uintptr_t end,
                             unsigned access) const REGCACHE_REQUIRES(mu_);
  void ClockAppendLocked(Region *r) REGCACHE_REQUIRES(mu_);
  void ClockUnlinkLocked(Region *r) REGCACHE_REQUIRES(mu_);
  void OrphanLinkLocked(Region *r) REGCACHE_REQUIRES(mu_);
  void OrphanUnlinkLocked(Region *r) REGCACHE_REQUIRES(mu_);

  Plan PlanLocked(uintptr_t start, uintptr_t end, unsigned access) const
      REGCACHE_REQUIRES(mu_);
  // Takes r out of the index: generation bump; unused -> *unused, held ->
  // orphan list.
  void RetireLocked(Region *r, List *unused) REGCACHE_REQUIRES(mu_);
  // Evicts unused regions, least recently used first (exact among the
  // kEvictSample oldest in CLOCK order), until within limits (all unused ones
  // if `all`).
  // With room_regions/room_bytes: until that much more also fits (a miss makes
  // room for its region before registering it).
  void EvictLocked(List *victims, bool all, size_t room_regions = 0,
                   size_t room_bytes = 0) REGCACHE_REQUIRES(mu_);
  void UpdateOverLimitLocked() REGCACHE_REQUIRES(mu_);
  bool TryRefLocked(Region *r, uint64_t *word_out) REGCACHE_REQUIRES(mu_);

  // Outside the lock.
  void ReapDead() REGCACHE_EXCLUDES(mu_);
  void DeregisterList(List *l) REGCACHE_EXCLUDES(mu_);
  void DeregisterOne(Region *r) REGCACHE_EXCLUDES(mu_);
  // The process-wide list of caches (fork handlers).
  void ListLink();
  void ListUnlink();
  // Frees r to the slab without the driver (a registration of the parent).
  static void DropForked(Region *r);
  // Fork child, mu_ held since prepare: forgets the parent's registrations and
  // misses in flight; returns the regions to free (outside every lock).
  void ForkChildLocked(List *drop) REGCACHE_REQUIRES(mu_);
  void MaybePrintStatsOnce();
  // A slab region plus its host storage (params_.host_data_bytes), and back.
  Region *AllocRegion();
  static void FreeRegion(Region *r);

  // Read on every hit and put: kept on its own cache line.
  alignas(64) std::atomic<uint32_t> attention_{0};
  const uint64_t id_;
  const uint64_t touch_slack_;  // see Touch()

  // The LRU clock: the newest stamp handed to a region (Touch). Written only
  // when the set of recently used regions changes: its own cache line.
  alignas(64) std::atomic<uint64_t> use_clock_{0};
  void Touch(Region *r);
  // Hits on regions the policy kept by not caching a miss (evict_saved):
  // written by hits without the lock, rarely (once per such decision).
  std::atomic<uint64_t> evict_saved_hits_{0};
  void Stamp(Region *r);  // a new stamp, always

  alignas(64) mutable Mutex mu_;
  Region *root_ REGCACHE_GUARDED_BY(mu_) = nullptr;
  Region *clock_head_ REGCACHE_GUARDED_BY(mu_) = nullptr;  // oldest
  Region *clock_tail_ REGCACHE_GUARDED_BY(mu_) = nullptr;  // newest
  Region *orphans_ REGCACHE_GUARDED_BY(mu_) = nullptr;
  List dead_ REGCACHE_GUARDED_BY(mu_);
  size_t count_ REGCACHE_GUARDED_BY(mu_) = 0;  // indexed regions
  size_t bytes_ REGCACHE_GUARDED_BY(mu_) = 0;  // indexed bytes
  size_t orphan_count_ REGCACHE_GUARDED_BY(mu_) = 0;
  uint64_t slow_hits_ REGCACHE_GUARDED_BY(mu_) = 0;
  // Misses being registered (outside the lock): a concurrent miss covered by
  // one waits for it (inflight_done_ changes) and looks up again, instead of
  // registering the same memory twice. A miss finding no free slot just
  // registers unpublished.
  static constexpr int kInFlight = 8;
  struct InFlight {
    uintptr_t start, end;
    unsigned access;
    bool used;
    // Set by Invalidate (regcache_invalidate) when it overlaps this miss: the
    // registration in flight predates the revoke and must not be published.
    bool revoked;
  };
  InFlight inflight_[kInFlight] REGCACHE_GUARDED_BY(mu_) = {};
  std::atomic<uint32_t> inflight_done_{0};
  // Invalidate calls so far (under mu_): a miss that found no in-flight slot
  // retries when it changed while it registered.
  uint64_t revokes_ REGCACHE_GUARDED_BY(mu_) = 0;
  void EndInFlight(int slot) REGCACHE_EXCLUDES(mu_);
  // Regions compared per eviction (docs/cache.md "Eviction").
  static constexpr int kEvictSample = 32;
  // The policy choosing victims and admitting misses (lock rule: eviction.h).
  Eviction evict_ REGCACHE_GUARDED_BY(mu_);
  // Whether a miss on plan must make room, and whether the policy caches it.
  Eviction::Verdict AdmitLocked(const Plan &plan, bool overlaps)
      REGCACHE_REQUIRES(mu_);

  PendingSet pending_;
  // Bounds of everything indexed since the index was last empty: the callback's
  // filter.
  std::atomic<uintptr_t> lo_{UINTPTR_MAX};
  std::atomic<uintptr_t> hi_{0};
  std::atomic<bool> shutdown_{false};
  std::atomic<bool> stats_printed_{false};

  regcache_driver *const drv_;
  const Params params_;
  notifier::Subscription *sub_ = nullptr;

  // Slow-path counters (relaxed).
  std::atomic<uint64_t> misses_{0}, merges_{0}, evictions_{0},
      invalidations_{0}, registrations_{0}, deregistrations_{0}, retries_{0},
      failures_{0}, reg_regions_{0}, reg_bytes_{0}, peak_bytes_{0};

  struct alignas(64) HitSlot {
    std::atomic<uint64_t> n{0};
  };
  HitSlot hit_slots_[kSlots + 1];

  // The process-wide list of live caches (fork handlers); guarded by the
  // list's mutex in cache.cc. Last: off every line the hit path reads.
  Cache *list_prev_ = nullptr;
  Cache *list_next_ = nullptr;
};

// Front-table size per thread (entries are scanned linearly).
inline constexpr int kFrontEntries = 8;

// Process-wide slab statistics (tests: regions are recycled, memory never
// returned).
size_t SlabRegionsAllocated();
size_t SlabRegionsFree();

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_CACHE_H_

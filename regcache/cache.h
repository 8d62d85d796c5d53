/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/cache.h - the registration cache's core (internal; the C API wraps
// it). docs/cache.md has the long version; each unit's header states its own
// invariant and lock rule:
//
//   region.h        one cached registration and its packed atomic word
//   slab.h          the type-stable slab regions come from
//   region_index.h  the ordered index (treap) with its invariant walker
//   region_list.h   the CLOCK / orphan lists and batches of regions
//   pending_set.h   invalidations that arrived while mu_ was busy
//   eviction.h      the eviction / admission policy
//   hit_path.cc     the per-thread front table, Get's lock-free hit, Put
//   miss.{h,cc}     the miss pipeline: lookup-plan -> register -> publish
//                   (miss_plan.cc: merge and admission; miss_read.cc: the
//                   interval read, the writability probe and hint)
//   cache.cc        life cycle, locking, invalidation, eviction glue,
//                   transport calls; cache_fork.cc fork(); stats.cc stats;
//                   params.cc the resolved parameters
//
// INVARIANT (this class): every region of the cache is in exactly one place:
// the index and the CLOCK list (valid), the orphan list (left the index while
// held, or handed out uncached), the dead list (left the index unused, waits
// for deregistration), a batch a thread took out of the lock, or a miss's
// hands (registered, not yet published). count/bytes of the index equal the
// CLOCK list's. [lo_, hi_) covers every indexed region.
// LOCK RULE: one mutex, mu_, guards the index, the lists, the in-flight misses
// and the policy. Nothing under mu_ allocates or frees heap memory, calls the
// driver, or calls the notifier's Register/Unregister: any of these may unmap
// memory, re-enter the notifier (free -> munmap -> callback -> this cache) and
// deadlock. The callback only try-locks mu_ (else the pending set). Whoever
// holds mu_ applies pending ranges before using the index and before
// unlocking (LockAndDrain / DrainAndUnlock).
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
#include "regcache/page.h"
#include "regcache/pending_set.h"
#include "regcache/region.h"
#include "regcache/region_index.h"
#include "regcache/region_list.h"
#include "regcache/stats_fields.h"
#include "regcache/thread_annotations.h"

namespace regcache::notifier {
class Subscription;
}  // namespace regcache::notifier

namespace regcache::core {

struct Miss;

// Resolved cache parameters (params, else REGCACHE_* tunables, else defaults).
struct CacheConfig {
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
int ResolveParams(const regcache_params_t *p, CacheConfig *out);
// MAX_BYTES=auto: 3/4 of RLIMIT_MEMLOCK when finite, else 1/4 of physical RAM.
size_t AutoMaxBytes();

class CacheCore {
 public:
  // Takes a reference on drv (dropped by Destroy). 0, -ENOMEM or the notifier's
  // error.
  static int Create(regcache_driver *drv, const CacheConfig &params,
                    CacheCore **out);
  // Unsubscribes, deregisters everything (held regions too) and deletes this.
  void Destroy();

  // REQUIRES: validated input (len > 0, no wrap after page alignment, known
  // access bits). 0: *out came from the cache (a hit, or a concurrent miss's
  // region); kRegistered: *out is a registration this call made (a miss: the
  // driver answered from the memory's protection now, so the uffd protection
  // check skips it, protection_check.h); else a negative errno.
  static constexpr int kRegistered = 1;
  int Get(uintptr_t addr, size_t len, unsigned access, CachedRegion **out);
  void Put(CachedRegion *r);
  int Flush();
  void GetStats(regcache_stats_t *s);
  int PrintStats(FILE *f);

  const std::string &name() const { return params_.name; }
  DriverPort *driver() const { return drv_->impl.get(); }
  uint64_t id() const { return id_; }

  // ---- Transport calls (regcache_find / _get_flags / _invalidate; issue 18).
  // Same input rules as Get. Find: a covering valid region, referenced, or
  // -ENOENT. GetUncached: a private registration, deregistered at its put.
  // Invalidate: revokes overlapping regions; returns how many.
  int Find(uintptr_t addr, size_t len, unsigned access, CachedRegion **out);
  int GetUncached(uintptr_t addr, size_t len, unsigned access,
                  CachedRegion **out);
  int Invalidate(uintptr_t addr, size_t len);

  // Tests: "" if the index and the lists hold their invariants, else what is
  // broken (RegionIndex::Check plus the CLOCK list's count and bytes).
  std::string CheckInvariants() REGCACHE_EXCLUDES(mu_);

  // Notifier callbacks (public for the C thunks).
  void OnInvalidateStart(uintptr_t start, size_t len);
  void OnRelease();

  CacheCore(const CacheCore &) = delete;
  CacheCore &operator=(const CacheCore &) = delete;

  // fork() handlers (pthread_atfork; cache_fork.cc). Public for the C thunks.
  static void AtforkPrepare();
  static void AtforkParent();
  static void AtforkChild();

 private:
  friend struct Miss;
  struct Plan {
    uintptr_t start, end;
    unsigned access;
    size_t merged;  // regions folded into the plan
  };

  // The attention word's bits (read on every hit and put).
  // kDead: dead regions wait for deregistration (the next miss reaps them,
  // with the unused regions its plan replaces; find, flush and the blind and
  // no-cache gets too; a hit off the front table does not);
  // kDeadMany: at least kReapCount of them (kReapBytes) wait AND the index's
  // regions plus the dead ones exceed max_regions (max_bytes): puts reap them
  // too, so dead registrations never hold the device's regions (pinned
  // bytes) past the cache's limits by more than that floor. Below that, hits
  // and their puts stay lock-free after an invalidation, and the next miss
  // pays the deregistration, as UCX's gc list does (churn: ~2x UCX's ns per
  // hit while puts reaped past 16 regions / 1 MiB regardless of the limits,
  // ~2.7x while slow-path hits reaped too).
  enum : uint32_t { kPending = 1, kDead = 2, kOverLimit = 4, kDeadMany = 8 };
  static constexpr size_t kReapCount = 16;
  static constexpr size_t kReapBytes = size_t{1} << 20;
  // Hits take the slow path only while invalidations wait to be applied: a
  // dead region is out of the index already (generation bumped, no hit can
  // take it), and the put that follows the hit reaps it (kPutSlowMask). Until
  // 2026-11-30 kDead was here too, and every hit after an invalidation took
  // the lock until the next slow call (churn: ~1 400 vs UCX's ~300 ns/hit).
  static constexpr uint32_t kHitSlowMask = kPending;
  static constexpr uint32_t kPutSlowMask = kDeadMany | kOverLimit;
  // Per-thread hit counters; slot kSlots is shared by threads beyond.
  static constexpr int kSlots = 64;

  CacheCore(regcache_driver *drv, const CacheConfig &params);
  ~CacheCore();

  // ---- hit path (hit_path.cc)
  void CountHit();
  struct HitSlot;
  // + delta in this thread's slot (HitSlot): member is &HitSlot::n,
  // ::misses, ::registrations or ::regions. delta wraps: a count that goes
  // down (regions) adds uint64_t(-n); GetStats' sum wraps back.
  void CountInSlot(std::atomic<uint64_t> HitSlot::*member, uint64_t delta = 1);
  // Enters r (its generation from word) in this thread's front table. fresh:
  // r was just published by this thread's miss, so no recent entry can be
  // for it at its current generation: the next recent entry is overwritten
  // without looking for one (an older entry for the same slot or start is
  // stale, and Get forgets it when it meets it).
  void Remember(CachedRegion *r, uint64_t word, bool fresh = false);
  // The front-table entry (a FrontEntry, private to hit_path.cc) that
  // covers the request: true and *out referenced if its region is unchanged.
  bool TryFront(const void *entry, uintptr_t addr, uintptr_t end,
                unsigned access, CachedRegion **out);
  void DoublePut(CachedRegion *r);
  void PutSlow();
  void ReleaseOrphan(CachedRegion *r);
  // LRU stamps (see hit_path.cc).
  void Touch(CachedRegion *r);
  void Stamp(CachedRegion *r);  // a new stamp, always
  // Stamp for a holder of mu_ (the miss's publication): a load and a store
  // of the clock instead of a locked add. Every other holder's stamp is
  // ordered by mu_; only a hit's Touch (lock-free fetch_add) can fall in
  // between, and then two regions share a stamp (the clock may step back by
  // that one increment): equally old to the eviction sample, whose LRU order
  // is approximate anyway (touch_slack_), and its age tests handle a stamp
  // above the clock (eviction.cc).
  void StampLocked(CachedRegion *r) REGCACHE_REQUIRES(mu_);

  // ---- miss pipeline (miss.cc, miss_plan.cc; EndInFlight and
  // HandOutUncached in cache.cc, CountRegistered and DropBytes in stats.cc)
  int GetSlow(uintptr_t addr, size_t len, unsigned access, CachedRegion **out);
  // The prologue every registering call shares: not inside a range, not shut
  // down, within the driver's size. Fills the page-aligned request.
  int CheckRequest(uintptr_t addr, size_t len, bool sync, uintptr_t *start,
                   uintptr_t *end) REGCACHE_EXCLUDES(mu_);
  Plan PlanLocked(uintptr_t start, uintptr_t end, unsigned access) const
      REGCACHE_REQUIRES(mu_);
  // Whether a miss on plan must make room, and whether the policy caches it.
  Eviction::Verdict AdmitLocked(const Plan &plan, bool overlaps)
      REGCACHE_REQUIRES(mu_);
  void EndInFlight(int slot) REGCACHE_EXCLUDES(mu_);
  // Stats of one new registration of len bytes (registrations, regions,
  // bytes).
  void CountRegistered(uint64_t len);
  // stats_.bytes -= len, recording the value before as peak_bytes if higher.
  void DropBytes(uint64_t len);
  // Hands out a registered region without indexing it: not valid, one
  // reference, on the orphan list (Destroy finds it); its last put
  // deregisters it (ReleaseOrphan).
  void HandOutUncached(CachedRegion *r) REGCACHE_EXCLUDES(mu_);

  // ---- locking (cache.cc): lock / unlock that apply pending invalidations.
  void LockAndDrain() REGCACHE_ACQUIRE(mu_);
  void DrainAndUnlock() REGCACHE_RELEASE(mu_);
  void DrainPendingLocked() REGCACHE_REQUIRES(mu_);
  void InvalidateLocked(uintptr_t start, uintptr_t end) REGCACHE_REQUIRES(mu_);

  // ---- index and lists (cache.cc)
  // Enters the index and the CLOCK list. REQUIRES: r valid (published).
  void IndexLocked(CachedRegion *r) REGCACHE_REQUIRES(mu_);
  // Takes r out of the index: generation bump; unused -> *unused, held ->
  // orphan list.
  void RetireLocked(CachedRegion *r, RegionBatch *unused)
      REGCACHE_REQUIRES(mu_);
  // Out of the index and the CLOCK list (the word is the caller's business).
  void UnindexLocked(CachedRegion *r) REGCACHE_REQUIRES(mu_);
  void ResetBoundsIfEmptyLocked() REGCACHE_REQUIRES(mu_);
  void OrphanLinkLocked(CachedRegion *r) REGCACHE_REQUIRES(mu_);
  void OrphanUnlinkLocked(CachedRegion *r) REGCACHE_REQUIRES(mu_);
  bool TryRefLocked(CachedRegion *r, uint64_t *word_out) REGCACHE_REQUIRES(mu_);
  // Debug builds: the invariants above, where cheap (small caches).
  void DebugCheckLocked() const REGCACHE_REQUIRES(mu_);
  std::string CheckLocked() const REGCACHE_REQUIRES(mu_);

  // ---- eviction glue (cache_evict.cc)
  // Evicts unused regions, least recently used first (exact among the
  // kEvictSample oldest in CLOCK order), until within limits (all unused ones
  // if `all`). With room_regions/room_bytes: until that much more also fits
  // (a miss makes room for its region before registering it).
  void EvictLocked(RegionBatch *victims, bool all, size_t room_regions = 0,
                   size_t room_bytes = 0) REGCACHE_REQUIRES(mu_);
  // EvictLocked's sampling loop, when something must go.
  void EvictSampledLocked(RegionBatch *victims, bool all, size_t room_regions,
                          size_t room_bytes) REGCACHE_REQUIRES(mu_);
  void UpdateOverLimitLocked() REGCACHE_REQUIRES(mu_);
  // Moves the dead regions into *into (the caller deregisters them outside
  // the lock) and clears kDead / kDeadMany.
  void TakeDeadLocked(RegionBatch *into) REGCACHE_REQUIRES(mu_);

  // ---- outside the lock (cache.cc)
  void ReapDead() REGCACHE_EXCLUDES(mu_);
  void DeregisterList(RegionBatch *l) REGCACHE_EXCLUDES(mu_);
  void DeregisterOne(CachedRegion *r) REGCACHE_EXCLUDES(mu_);
  // A slab region plus its host storage (params_.host_data_bytes), and back.
  // With `spare` (a cached miss, no host storage): up to kStashRefill - 1
  // more regions under the same slab lock, pushed on *spare for stash_.
  CachedRegion *AllocRegion(RegionBatch *spare = nullptr);
  static void FreeRegion(CachedRegion *r);

  // ---- fork (cache_fork.cc)
  void ListLink();
  void ListUnlink();
  // Frees r to the slab without the driver (a registration of the parent).
  static void DropForked(CachedRegion *r);
  // Fork child, mu_ held since prepare: forgets the parent's registrations and
  // misses in flight; returns the regions to free (outside every lock).
  void ForkChildLocked(RegionBatch *drop) REGCACHE_REQUIRES(mu_);

  // ---- stats (stats.cc)
  void MaybePrintStatsOnce();

  // Read on every hit and put: kept on its own cache line.
  alignas(64) std::atomic<uint32_t> attention_{0};
  const uint64_t id_;
  const uint64_t touch_slack_;  // see Touch()

  // The LRU clock: the newest stamp handed to a region (Touch). Written only
  // when the set of recently used regions changes: its own cache line.
  alignas(64) std::atomic<uint64_t> use_clock_{0};
  // Hits on regions the policy kept by not caching a miss (evict_saved):
  // written by hits without the lock, rarely (once per such decision).
  std::atomic<uint64_t> evict_saved_hits_{0};

  alignas(64) mutable Mutex mu_;
  RegionIndex index_ REGCACHE_GUARDED_BY(mu_);
  // Every indexed region, oldest first (second-chance order for eviction).
  RegionList clock_ REGCACHE_GUARDED_BY(mu_);
  // Left the index while held, or handed out uncached: deregistered (or
  // dropped, if forked) by their last put.
  RegionList orphans_ REGCACHE_GUARDED_BY(mu_);
  // Left the index unused from inside a callback: the next call outside the
  // lock deregisters them (kDead set while non-empty).
  RegionBatch dead_ REGCACHE_GUARDED_BY(mu_);
  size_t dead_bytes_ REGCACHE_GUARDED_BY(mu_) = 0;
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
  // Slots of inflight_ in use: a miss with none in flight (the common one)
  // skips the scan for a covering one.
  int inflight_used_ REGCACHE_GUARDED_BY(mu_) = 0;
  std::atomic<uint32_t> inflight_done_{0};
  // Free slab regions kept for this cache's misses (none when regions carry
  // host storage): a miss takes one under mu_ in its plan step instead of
  // taking the slab's lock each time; one that finds none takes kStashRefill
  // from the slab under one lock and leaves the rest here when it publishes
  // (at most kStashMax kept). Never registered, never indexed, not counted as
  // regions of the cache; Destroy gives them back to the slab.
  static constexpr size_t kStashRefill = 8;
  static constexpr size_t kStashMax = 2 * kStashRefill;
  RegionBatch stash_ REGCACHE_GUARDED_BY(mu_);
  // Misses waiting for inflight_done_ to change (counted in under mu_ before
  // they unlock to wait, out when they lock again): a miss ending its slot
  // bumps and notifies only while one waits (one locked instruction and the
  // waiter-table probe less per miss otherwise).
  uint32_t inflight_waiters_ REGCACHE_GUARDED_BY(mu_) = 0;
  // Invalidate calls so far (under mu_): a miss that found no in-flight slot
  // retries when it changed while it registered.
  uint64_t revokes_ REGCACHE_GUARDED_BY(mu_) = 0;
  // Regions compared per eviction (docs/cache.md "Eviction").
  static constexpr int kEvictSample = 32;
  // The policy choosing victims and admitting misses (lock rule: eviction.h).
  Eviction evict_ REGCACHE_GUARDED_BY(mu_);

  PendingSet pending_;
  // Bounds of everything indexed since the index was last empty: the
  // callback's filter. Widened under mu_ before the insert's sequence check;
  // reset only when the index becomes empty (docs/cache.md "Invalidation").
  std::atomic<uintptr_t> lo_{UINTPTR_MAX};
  std::atomic<uintptr_t> hi_{0};
  // [start, end) lies outside the bounds, so it overlaps no indexed region.
  bool OutsideBounds(uintptr_t start, uintptr_t end,
                     std::memory_order order) const {
    return end <= lo_.load(order) || start >= hi_.load(order);
  }
  // ACCESS_POLICY=all's writability hint: the last run of writable VMAs a
  // miss's PROCMAP_QUERY found, packed (first page << 29 | pages, at most
  // 2^29 pages), 0: none. A miss inside it widens without the ioctl. The
  // whole-space callback clears it when any range overlaps it (before its
  // filter: one more load per munmap); a stale hint (a protection removed
  // unseen, e.g. mprotect under the uffd or explicit source) only makes the
  // driver refuse the widened access: the fallback ladder narrows it and
  // clears the hint. A hint, not an invariant: correctness of what is cached
  // rests on the interval read alone.
  std::atomic<uint64_t> wspan_{0};
  static constexpr int kSpanPagesBits = 29;
  // log2 of the page size, read once: the whole-space callback decodes the
  // hint on every munmap (a multiplication by page::Size() there went
  // through its static's guard twice).
  const int page_shift_ = __builtin_ctzl(page::Size());
  bool InWritableSpan(uintptr_t start, uintptr_t end) const;
  void RememberWritableSpan(uintptr_t lo, uintptr_t hi);
  void ForgetWritableSpanOver(uintptr_t start, uintptr_t end);
  std::atomic<bool> shutdown_{false};
  std::atomic<bool> stats_printed_{false};

  regcache_driver *const drv_;
  const CacheConfig params_;
  notifier::Subscription *sub_ = nullptr;

  // Slow-path counters (relaxed): one per REGCACHE_STATS_COUNTERS field.
  struct Counters {
#define REGCACHE_COUNTER_FIELD(f) std::atomic<uint64_t> f{0};
    REGCACHE_STATS_COUNTERS(REGCACHE_COUNTER_FIELD)
#undef REGCACHE_COUNTER_FIELD
  };
  Counters stats_;
  void Count(std::atomic<uint64_t> &c, uint64_t n = 1) {
    c.fetch_add(n, std::memory_order_relaxed);
  }

  // Per-thread counters: a thread bumps its own slot with a plain load and
  // store (no locked instruction); slot kSlots, shared, with an atomic add.
  // GetStats sums them: hits, and the misses and registrations of cached
  // misses (added to stats_'s, which count the rarer paths).
  struct alignas(64) HitSlot {
    std::atomic<uint64_t> n{0};
    std::atomic<uint64_t> misses{0};
    std::atomic<uint64_t> registrations{0};
    // Registered regions (indexed, dead or orphan): + at registration, - at
    // deregistration, on whichever thread does it (a slot's own sum may
    // wrap below zero; the sum over slots is exact).
    std::atomic<uint64_t> regions{0};
  };
  HitSlot hit_slots_[kSlots + 1];
  // The sum of one counter over every slot (wrapping: see HitSlot::regions).
  uint64_t SlotSum(std::atomic<uint64_t> HitSlot::*member) const;

  // The process-wide list of live caches (fork handlers); guarded by the
  // list's mutex in cache_fork.cc. Last: off every line the hit path reads.
  CacheCore *list_prev_ = nullptr;
  CacheCore *list_next_ = nullptr;
};

// Front-table size per thread (entries are scanned linearly; a second,
// hashed level follows them: hit_path.cc).
inline constexpr int kFrontEntries = 8;

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_CACHE_H_

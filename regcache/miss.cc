// SPDX-License-Identifier: BSD-3-Clause
// The miss pipeline: lookup-plan -> register -> publish (miss.h), shared by a
// cached miss, a blind notifier's get and the no-cache get. docs/cache.md
// "Miss".
#include "regcache/miss.h"

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <cerrno>

#include "notifier/address_space.h"
#include "regcache/cache.h"
#include "regcache/log.h"
#include "regcache/page.h"

namespace regcache::core {
namespace {

// A registration the memory changed under is retried; the miss gives up
// (-EAGAIN) only after kMaxInsertRetries retries AND kRetryBudgetNs since the
// first: a storm of invalidations of the memory (another thread unmapping or
// notifying it in a loop) is waited out for a bounded time, as the kernel's
// interval-notifier users retry within a timeout, rather than answered by
// the first unlucky few (an eviction test under ASan met 8 in a row). Past
// the first kMaxInsertRetries each retry yields the CPU first, so that the
// invalidating thread can run (2 cores: it may be waiting for ours).
constexpr int kMaxInsertRetries = 8;
constexpr int64_t kRetryBudgetNs = 100'000'000;  // 100 ms

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

// One miss from request to answer. Its steps are member functions so that the
// state they share (the plan, the region being registered, the fallbacks
// already tried) is in one place.
struct Miss {
  static constexpr int kRetry = 1;    // Publish: register again
  static constexpr int kPlanned = 1;  // LookupOrPlan: go on and register

  Miss(CacheCore *cache, uintptr_t a, size_t len, unsigned acc, uintptr_t rs,
       uintptr_t re, bool index_it)
      : c(cache),
        addr(a),
        end(a + len),
        access(acc),
        req_start(rs),
        req_end(re),
        cached(index_it),
        plan{rs, re, acc, 0} {}
  ~Miss() {
    // Spare slab regions publication did not stash (an early exit).
    while (CachedRegion *r = spare.Pop()) CacheCore::FreeRegion(r);
  }

  int Run(CachedRegion **out);
  // Under mu_: a covering region (0, *out referenced), a covering miss in
  // flight (wait outside the lock, look again), or a plan (kPlanned) with
  // room made for it. -ESHUTDOWN.
  int LookupOrPlan(CachedRegion **out);
  // Outside the lock: begin the interval read, register, down the
  // fallback ladder until it succeeds or runs out. 0 (nr filled and counted)
  // or the error.
  int Register();
  // The sequence check, then index / hand out / use a covering region: 0
  // (*out), kRetry or an error.
  int Publish(CachedRegion **out);
  int PublishIndexed(CachedRegion **out);
  // The memory changed while we registered: undo; kRetry or -EAGAIN.
  int Retry();
  // The one failure tail: the unpublished region goes back, counted.
  int Fail(int rc);
  // Every exit of publication but a retry: ends the in-flight slot under the
  // lock it holds anyway, unlocks, then wakes the misses waiting for it (one
  // lock round trip less than EndInFlight).
  void UnlockEnded() REGCACHE_NO_THREAD_SAFETY_ANALYSIS;

  CacheCore *const c;
  const uintptr_t addr, end;  // the request
  const unsigned access;
  const uintptr_t req_start, req_end;  // page-aligned
  // Index the registration (false: blind notifier, no-cache get, or memory
  // the source cannot watch: handed out uncached, deregistered at its put).
  bool cached;
  CacheCore::Plan plan;
  unsigned needed_access = 0;  // what the plan needs before widening
  // Validate the insert with an interval read (false only for memory the
  // source cannot watch).
  bool watch = true;
  int slot = -1;                 // in-flight slot, -1: none
  uint64_t revokes_at_plan = 0;  // c->revokes_ when the plan was made
  // Nothing indexed overlapped the request when the plan was made (the plan
  // is the request), and c->index_.inserts() then: while the count is the
  // same at publication, nothing covers or overlaps the plan still, and
  // PublishIndexed skips both lookups.
  bool plan_clear = false;
  uint64_t inserts_at_plan = 0;
  Eviction::Verdict verdict{true, true};
  RegionBatch early;  // unused regions to deregister before registering
  CachedRegion *nr = nullptr;
  RegionBatch spare;  // slab regions taken with nr, for c->stash_
  MissRead read;
  bool evicted_all = false;
  bool unmerged = true;
  bool widened_by_hint = false;  // access widened on the cached span alone
  // Publication handed out a concurrent miss's region, not nr.
  bool reused = false;
  int retries = 0;
  int64_t first_retry_ns = 0;  // when the first retry began (NowNs)
};

int Miss::LookupOrPlan(CachedRegion **out) REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  bool waited = false;
  for (;;) {
    c->LockAndDrain();
    if (waited) --c->inflight_waiters_;
    waited = false;
    if (c->shutdown_.load(std::memory_order_relaxed)) {
      c->DrainAndUnlock();
      return -ESHUTDOWN;
    }
    // Nothing indexed overlaps the request (the common miss): nothing covers
    // it either (no second descent), and the plan is the request, no merge
    // to look for. The callback's filter bounds hold every indexed region
    // (CheckLocked): a request outside them (fresh memory, mapped below or
    // above everything cached) overlaps nothing, without a descent.
    CachedRegion *first =
        c->OutsideBounds(req_start, req_end, std::memory_order_relaxed)
            ? nullptr
            : c->index_.FirstOverlap(req_start, req_end);
    uint64_t w;
    CachedRegion *r =
        first ? c->index_.FindCovering(addr, end, access) : nullptr;
    if (r && c->TryRefLocked(r, &w)) {
      c->Touch(r);
      ++c->slow_hits_;
      c->DrainAndUnlock();
      c->Remember(r, w);
      *out = r;
      return 0;
    }
    // Another thread is registering memory covering ours: wait for it, outside
    // the lock, then look again (its region, or a miss of our own if it
    // failed or was invalidated).
    bool covered = false;
    if (c->inflight_used_ != 0) {
      for (const CacheCore::InFlight &f : c->inflight_)
        covered |= f.used && f.start <= req_start && req_end <= f.end &&
                   (access & ~f.access) == 0;
    }
    if (covered) {
      const uint32_t seen = c->inflight_done_.load(std::memory_order_relaxed);
      ++c->inflight_waiters_;  // that miss's end bumps inflight_done_
      waited = true;
      c->DrainAndUnlock();
      // Bounded by that miss: it ends (EndInFlight bumps the counter) after
      // its own bounded register / publish steps, or the fork child resets.
      c->inflight_done_.wait(seen, std::memory_order_acquire);
      continue;
    }
    if (first != nullptr) {
      plan = c->PlanLocked(req_start, req_end, access);
      first = c->index_.FirstOverlap(plan.start, plan.end);
    } else {
      plan = {req_start, req_end, access, 0};
    }
    plan_clear = first == nullptr;
    inserts_at_plan = c->index_.inserts();
    revokes_at_plan = c->revokes_;
    for (int i = 0; i < CacheCore::kInFlight; ++i) {
      if (!c->inflight_[i].used) {
        c->inflight_[i] = {plan.start, plan.end, plan.access, true, false};
        ++c->inflight_used_;
        slot = i;
        break;
      }
    }
    // Before registering (peak pinned bytes): unused regions the new one
    // replaces leave now rather than after, and unused ones are evicted to
    // make room for it. Held ones are folded at insert as before. If the
    // registration then fails, this cost only cached regions.
    const bool overlaps = first != nullptr;
    size_t folded_early = 0;
    for (CachedRegion *o = first; o && o->start < plan.end;) {
      CachedRegion *next = c->index_.LowerBound(o->start + 1);
      if (CachedRegion::Refs(o->word.load(std::memory_order_relaxed)) == 0) {
        c->RetireLocked(o, &early);
        ++folded_early;
      }
      o = next;
    }
    if (folded_early) c->Count(c->stats_.merges, folded_early);
    // Dead regions (invalidated, out of the index) are deregistered here,
    // by a miss, with the unused ones it replaces: a hit that took the slow
    // path (not in the thread's front table) does not pay for them, as a
    // UCX hit does not pay for its gc list.
    c->TakeDeadLocked(&early);
    verdict = c->AdmitLocked(plan, overlaps);
    if (verdict.admit) c->EvictLocked(&early, false, 1, plan.end - plan.start);
    nr = c->stash_.Pop();  // nullptr: Run takes it from the slab
    c->DrainAndUnlock();
    return kPlanned;
  }
}

int Miss::Register() {
  DriverPort *const d = c->driver();
  for (;;) {
    const size_t plen = plan.end - plan.start;
    if (watch) {
      int rc = read.Begin(plan.start, plan.end);
      if (rc == -EBUSY) {
        // The source cannot watch it (another userfaultfd owns it, or uffd
        // cannot see its pages drop: shared or file-backed memory, a fresh
        // REMOVE): never cache it blind. Register the request alone,
        // unwatched, uncached (a REGCACHE_GET_NO_CACHE get of it too).
        cached = false;
        watch = false;
        plan = {req_start, req_end, access, 0};
        needed_access = access;
        unmerged = true;
        evicted_all = false;
        continue;
      }
      if (rc) return rc;
    }
    PortRegistration reg;
    int rc = d->Register(reinterpret_cast<void *>(plan.start), plen,
                         plan.access, &reg);
    if (rc == 0) {
      c->CountRegistered(plen);
      nr->cache = c;
      nr->start = plan.start;
      nr->end = plan.end;
      nr->access = plan.access;
      nr->reg = reg;
      return 0;
    }
    read.End();
    // The fallback ladder, each rung at most once.
    if ((rc == -ENOMEM || rc == -EAGAIN) && !evicted_all) {
      // Pinned-memory or device limit: give back every unused registration.
      evicted_all = true;
      c->Flush();
      continue;
    }
    if ((rc == -EACCES || rc == -EINVAL || rc == -EOPNOTSUPP) &&
        plan.access != needed_access) {
      // Widened to every access but the memory does not allow it (-EACCES)
      // or the device lacks a capability (ibv_reg_mr says -EINVAL or
      // -EOPNOTSUPP, e.g. no remote atomics): register what was needed. A
      // writability hint that said otherwise is stale: forget it.
      if (widened_by_hint) c->ForgetWritableSpanOver(plan.start, plan.end);
      plan.access = needed_access;
      continue;
    }
    if (!unmerged && rc != -ENOMEM && rc != -EAGAIN) {
      // The merged range may include memory the request does not (a neighbour
      // unmapped without an event, or with other protections): retry with the
      // request alone.
      unmerged = true;
      plan = {req_start, req_end, access, 0};
      continue;
    }
    return rc;
  }
}

int Miss::Retry() {
  c->Count(c->stats_.retries);
  if (retries++ == 0) first_retry_ns = NowNs();
  if (retries >= kMaxInsertRetries &&
      NowNs() - first_retry_ns >= kRetryBudgetNs) {
    REGCACHE_LOG(ERROR,
                 "cache {}: region 0x{:x} len {} kept changing while "
                 "registering ({} retries in {} ms)",
                 c->name(), plan.start, plan.end - plan.start, retries,
                 (NowNs() - first_retry_ns) / 1'000'000);
    c->DeregisterOne(nr);
    nr = nullptr;
    return Fail(-EAGAIN);
  }
  // Keep the slab region, drop the registration.
  const size_t plen = nr->end - nr->start;
  c->driver()->Deregister(nr->reg);
  nr->reg = PortRegistration();
  c->Count(c->stats_.deregistrations);
  c->CountInSlot(&CacheCore::HitSlot::regions, ~uint64_t{0});
  c->DropBytes(plen);
  // Bounded by kRetryBudgetNs above; not a wait for anything.
  if (retries >= kMaxInsertRetries) sched_yield();
  return kRetry;
}

void Miss::UnlockEnded() {
  const bool ended = slot >= 0;
  if (ended) {
    c->inflight_[slot].used = false;
    --c->inflight_used_;
  }
  const bool wake = ended && c->inflight_waiters_ != 0;
  slot = -1;
  c->DrainAndUnlock();
  if (wake) {
    c->inflight_done_.fetch_add(1, std::memory_order_release);
    c->inflight_done_.notify_all();
  }
}

int Miss::Fail(int rc) {
  if (nr != nullptr) CacheCore::FreeRegion(nr);
  nr = nullptr;
  c->Count(c->stats_.failures);
  return rc;
}

int Miss::Publish(CachedRegion **out) {
  if (cached) return PublishIndexed(out);
  const bool changed = read.Changed();
  read.End();
  if (changed) return Retry();
  c->HandOutUncached(nr);
  *out = nr;
  return 0;
}

int Miss::PublishIndexed(CachedRegion **out)
    REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  RegionBatch victims;
  c->LockAndDrain();
  if (c->shutdown_.load(std::memory_order_relaxed)) {
    UnlockEnded();
    read.End();
    c->DeregisterOne(nr);
    nr = nullptr;
    return -ESHUTDOWN;
  }
  while (spare.head != nullptr && c->stash_.n < CacheCore::kStashMax)
    c->stash_.Push(spare.Pop());
  // Widen the callback's filter before checking the log, with seq_cst stores:
  // against OnInvalidateStart's seq_cst loads of the bounds, which follow the
  // range's seq_cst increment of the log (LogRange), either that callback
  // sees the new bounds or ReadRetryInterval's seq_cst load of the log sees
  // the range (all four in one total order). Bounds that already cover the
  // plan need no store: the store that widened them was seq_cst too and
  // happened before this (mu_), so the same order holds; they are reset only
  // while the index is empty, under mu_, which we hold until the insert. One
  // locked instruction only when widening (the fence it replaces was one on
  // every miss).
  if (plan.start < c->lo_.load(std::memory_order_relaxed))
    c->lo_.store(plan.start, std::memory_order_seq_cst);
  if (plan.end > c->hi_.load(std::memory_order_relaxed))
    c->hi_.store(plan.end, std::memory_order_seq_cst);
  // A regcache_invalidate of this range since the miss began revokes the
  // registration too (its keys predate the revoke).
  const bool revoked =
      slot >= 0 ? c->inflight_[slot].revoked : c->revokes_ != revokes_at_plan;
  if (slot >= 0) c->inflight_[slot].revoked = false;  // the retry starts anew
  revokes_at_plan = c->revokes_;
  if (read.Changed() || revoked) {
    // The memory changed while we registered it: this registration may map
    // old pages.
    c->DrainAndUnlock();
    read.End();
    return Retry();
  }
  if (!notifier::CachingSafe()) [[unlikely]] {
    // Became blind while we registered (the patch source was overwritten
    // and nothing could take over): hand this registration out uncached.
    // The switch set the blind flag before invalidating everything, so a
    // region inserted before this check is invalidated by that.
    UnlockEnded();
    read.End();
    c->HandOutUncached(nr);
    *out = nr;
    return 0;
  }
  // No insert since the plan, which nothing overlapped: no other miss won,
  // nothing to fold (regions only left the index since).
  const bool clear = plan_clear && c->index_.inserts() == inserts_at_plan;
  uint64_t w;
  if (CachedRegion *other =
          clear ? nullptr : c->index_.FindCovering(addr, end, access);
      other && c->TryRefLocked(other, &w)) {
    c->Touch(other);
    // A concurrent miss on the same memory won: use its region, drop ours
    // (still counted as this call's miss).
    UnlockEnded();
    read.End();
    c->DeregisterOne(nr);
    nr = nullptr;
    c->Remember(other, w);
    reused = true;
    *out = other;
    return 0;
  }
  CachedRegion *const r = nr;
  nr = nullptr;  // published: no longer ours to free
  if (!verdict.admit) {
    // The policy does not cache it (eviction.h): handed out as a held
    // orphan, never indexed, deregistered by its last put.
    c->StampLocked(r);
    r->HandOutOrphan();
    c->OrphanLinkLocked(r);
    UnlockEnded();
    read.End();
    *out = r;
    return 0;
  }
  size_t folded = 0;
  while (CachedRegion *o =
             clear ? nullptr : c->index_.FirstOverlap(plan.start, plan.end)) {
    c->RetireLocked(o, &victims);
    ++folded;
  }
  if (folded) c->Count(c->stats_.merges, folded);
  c->StampLocked(r);  // unconditionally: a recycled slot keeps its old stamp
  w = r->PublishHeld();
  c->IndexLocked(r);
  c->evict_.Inserted(r, verdict.hot);
  c->EvictLocked(&victims, false);
  UnlockEnded();
  c->Remember(r, w, /*fresh=*/true);
  read.End();
  c->DeregisterList(&victims);
  *out = r;
  return 0;
}

int Miss::Run(CachedRegion **out) {
  if (cached) {
    const int rc = LookupOrPlan(out);
    if (rc != kPlanned) return rc;  // 0: a cached region (or an error)
  }
  // Failure exits before publication end the in-flight slot here (the
  // publishing exits ended it under their own lock: UnlockEnded).
  struct EndGuard {
    Miss *m;
    ~EndGuard() {
      if (m->slot >= 0) m->c->EndInFlight(m->slot);
    }
  } end_guard{this};
  c->DeregisterList(&early);
  needed_access = plan.access;
  if (cached) {
    c->CountInSlot(&CacheCore::HitSlot::misses);
    // The access the plan needs (request, union of overlapping regions); with
    // ACCESS_POLICY=all writable memory is registered with every access so
    // that a later request with other flags is a hit (UCX's and libfabric's
    // model).
    if (c->params_.access_all && plan.access != REGCACHE_ACCESS_ALL) {
      uintptr_t lo = 0, hi = 0;
      if (c->InWritableSpan(plan.start, plan.end)) {
        plan.access = REGCACHE_ACCESS_ALL;
        widened_by_hint = true;
      } else if (const int w = WritableMemory(plan.start, plan.end, &lo, &hi);
                 w != 0) {
        plan.access = REGCACHE_ACCESS_ALL;
        if (w == 1) c->RememberWritableSpan(lo, hi);
      }
    }
    // Access widening (ACCESS_POLICY=all) has its own rung of the ladder.
    unmerged = plan.start == req_start && plan.end == req_end &&
               needed_access == access;
  }
  if (nr == nullptr) nr = c->AllocRegion(cached ? &spare : nullptr);
  if (nr == nullptr) return Fail(-ENOMEM);
  for (;;) {
    int rc = Register();
    if (rc) return Fail(rc);
    rc = Publish(out);
    if (rc != kRetry) return rc == 0 && !reused ? CacheCore::kRegistered : rc;
  }
}

// ---------------------------------------------------------------- CacheCore side
int CacheCore::CheckRequest(uintptr_t addr, size_t len, bool sync,
                            uintptr_t *start, uintptr_t *end) {
  // Between its own regcache_notify_unmap_start/end (or inside a callback) a
  // thread's registration would wait for itself.
  if (notifier::InRange()) return -EDEADLK;
  // An asynchronous source (uffd) may still be delivering the invalidation of
  // memory the caller already unmapped, or the patch source may have been
  // overwritten: settle both before the index is read.
  if (sync) notifier::SyncForLookup();
  if (shutdown_.load(std::memory_order_acquire)) return -ESHUTDOWN;
  *start = page::Down(addr);
  *end = page::Up(addr + len);
  if (*end - *start > driver()->MaxRegionBytes()) {
    REGCACHE_LOG(ERROR,
                 "cache {}: region 0x{:x} len {} exceeds the driver's max {}",
                 name(), addr, len, driver()->MaxRegionBytes());
    return -EINVAL;
  }
  return 0;
}

int CacheCore::GetSlow(uintptr_t addr, size_t len, unsigned access,
                       CachedRegion **out) {
  uintptr_t start, end;
  if (int rc = CheckRequest(addr, len, /*sync=*/true, &start, &end)) return rc;
  // NO BLIND CACHING (notifier/policy.h): while no source sees every unmap
  // the cache neither looks up nor keeps regions; each get registers the
  // request and its last put deregisters it. Checked again at publication.
  const bool blind = !notifier::CachingSafe();
  // Dead regions: a cached get deregisters them once it knows it misses
  // (LookupOrPlan), so that a hit off the front table does not pay for them.
  if (blind) {
    ReapDead();
    Count(stats_.misses);
  }
  Miss m(this, addr, len, access, start, end, /*index_it=*/!blind);
  return m.Run(out);
}

int CacheCore::GetUncached(uintptr_t addr, size_t len, unsigned access,
                           CachedRegion **out) {
  uintptr_t start, end;
  if (int rc = CheckRequest(addr, len, /*sync=*/false, &start, &end)) return rc;
  ReapDead();
  Miss m(this, addr, len, access, start, end, /*index_it=*/false);
  const int rc = m.Run(out);
  return rc == kRegistered ? 0 : rc;
}

}  // namespace regcache::core

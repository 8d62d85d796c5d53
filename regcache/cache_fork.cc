// SPDX-License-Identifier: BSD-3-Clause
// fork(): the process-wide list of live caches and the pthread_atfork
// handlers (docs/cache.md "fork").
//
// Prepare takes the list lock, then every cache's mu_ in list order, then the
// slab; parent and child release them. Bounded: holders of these never block
// while holding them (nothing under mu_ allocates, frees, unmaps, calls the
// driver or the notifier's Register/Unregister; callbacks only try-lock mu_),
// and the forking thread holds none of them (fork is not called from inside
// the cache). In the child, before releasing them, each inherited cache drops
// the parent's registrations without the driver.
#include <pthread.h>

#include <algorithm>

#include "notifier/address_space.h"
#include "regcache/cache.h"
#include "regcache/hit_path.h"
#include "regcache/slab.h"

namespace regcache::core {
namespace {

// Every live cache (Create links, Destroy unlinks). Holders of g_caches_mu
// never block (list updates only), and nothing takes it with a cache's mu_
// held, except the prepare handler, which takes the caches' mutexes in list
// order while holding it.
Mutex g_caches_mu;
CacheCore *g_caches REGCACHE_GUARDED_BY(g_caches_mu) = nullptr;

// Set by prepare when the handlers are off for a test (negative controls);
// read by the parent/child handler of the same fork. Tests fork from one
// thread at a time.
bool g_fork_skipped = false;

}  // namespace

void CacheCore::ListLink() {
  MutexLock l(&g_caches_mu);
  list_next_ = g_caches;
  if (g_caches) g_caches->list_prev_ = this;
  g_caches = this;
}

void CacheCore::ListUnlink() {
  MutexLock l(&g_caches_mu);
  if (list_prev_) {
    list_prev_->list_next_ = list_next_;
  } else {
    g_caches = list_next_;
  }
  if (list_next_) list_next_->list_prev_ = list_prev_;
  list_prev_ = list_next_ = nullptr;
}

void CacheCore::DropForked(CachedRegion *r) {
  r->reg = PortRegistration();
  FreeRegion(r);  // the child's copy of the host storage is its own
}

void CacheCore::ForkChildLocked(RegionBatch *drop) {
  mu_.AssertHeld();
  // Ranges that arrived while mu_ was busy concern regions that go now; the
  // ranges themselves belonged to the parent's threads.
  pending_.ResetAfterFork();
  attention_.fetch_and(~uint32_t{kPending}, std::memory_order_relaxed);
  const size_t indexed = index_.count();
  RegionBatch gone;
  while (CachedRegion *r = index_.root()) RetireLocked(r, &gone);
  Count(stats_.invalidations, indexed);
  // Retired unused ones, the parent's dead list, and orphans nobody holds (a
  // parent thread was between its last put and ReleaseOrphan) leave; held
  // orphans stay until their last put, marked so that it skips the driver.
  // All of them stop counting as registrations of this process (orphans
  // marked by an earlier fork already did).
  auto take = [&](RegionBatch *l) {
    while (CachedRegion *r = l->Pop()) drop->Push(r);
  };
  take(&gone);
  take(&dead_);
  for (CachedRegion *r = orphans_.head(), *next; r != nullptr; r = next) {
    next = r->next;
    if (CachedRegion::Refs(r->word.load(std::memory_order_relaxed)) == 0) {
      OrphanUnlinkLocked(r);
      drop->Push(r);
    } else {
      r->forked = true;
    }
  }
  // Every registration counted so far is the parent's: those above, and
  // those of parent threads caught between their count and the lists (a miss
  // registered, waiting for mu_ to publish; a victim taken off the lists, not
  // yet deregistered), which no list here holds and no thread here finishes.
  // So the child's counts go to 0, not down by n (that left those counted
  // for good). One thread now: the slots' sum is exact.
  CountInSlot(&HitSlot::regions, uint64_t{0} - SlotSum(&HitSlot::regions));
  DropBytes(stats_.bytes.load(std::memory_order_relaxed));
  dead_bytes_ = 0;
  attention_.fetch_and(~uint32_t{kDead | kDeadMany}, std::memory_order_relaxed);
  // Misses in flight on the parent's threads never finish here.
  for (InFlight &f : inflight_) f = {};
  inflight_used_ = 0;
  inflight_done_.fetch_add(1, std::memory_order_relaxed);
  inflight_waiters_ = 0;  // they were the parent's threads
  wspan_.store(0, std::memory_order_relaxed);
  lo_.store(UINTPTR_MAX, std::memory_order_relaxed);
  hi_.store(0, std::memory_order_relaxed);
  UpdateOverLimitLocked();
}

void CacheCore::AtforkPrepare() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  g_fork_skipped = notifier::internal::g_atfork_off_for_testing.load(
      std::memory_order_relaxed);
  if (g_fork_skipped) return;
  g_caches_mu.Lock();
  for (CacheCore *c = g_caches; c != nullptr; c = c->list_next_) c->mu_.Lock();
  Slab::Get().ForkLock();
}

void CacheCore::AtforkParent() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  if (g_fork_skipped) return;
  Slab::Get().ForkUnlock();
  for (CacheCore *c = g_caches; c != nullptr; c = c->list_next_)
    c->mu_.Unlock();
  g_caches_mu.Unlock();
}

void CacheCore::AtforkChild() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  if (g_fork_skipped) return;
  HitSlotsAfterFork();
  RegionBatch drop;
  for (CacheCore *c = g_caches; c != nullptr; c = c->list_next_)
    c->ForkChildLocked(&drop);
  Slab::Get().ForkUnlock();
  for (CacheCore *c = g_caches; c != nullptr; c = c->list_next_)
    c->mu_.Unlock();
  g_caches_mu.Unlock();
  while (CachedRegion *r = drop.Pop()) DropForked(r);
}

namespace {
__attribute__((constructor)) void CacheAtforkInit() {
  pthread_atfork(CacheCore::AtforkPrepare, CacheCore::AtforkParent,
                 CacheCore::AtforkChild);
}
}  // namespace

}  // namespace regcache::core

// SPDX-License-Identifier: BSD-3-Clause
// The cache's life cycle, locking, invalidation, index glue, and the
// transport calls Find / Invalidate (eviction: cache_evict.cc). The hit path is hit_path.cc, the miss
// pipeline miss.cc (cache.h lists the units).
#include "regcache/cache.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "notifier/address_space.h"
#include "regcache/log.h"
#include "regcache/page.h"
#include "regcache/slab.h"

namespace regcache::core {
namespace {

std::atomic<uint64_t> g_next_cache_id{1};

// Depth of our invalidate_range_start callbacks on this thread.
// (notifier::InCallback() is also true inside release, where deregistering is
// fine.)
thread_local int t_invalidating = 0;

// Notifier thunks of the whole-space subscription.
void WholeStart(void *arg, const void *addr, size_t len) {
  static_cast<CacheCore *>(arg)->OnInvalidateStart(
      reinterpret_cast<uintptr_t>(addr), len);
}
void WholeRelease(void *arg) { static_cast<CacheCore *>(arg)->OnRelease(); }
const regcache_notifier_ops_t kWholeOps = {WholeStart, nullptr, WholeRelease};

}  // namespace

// ---------------------------------------------------------------- life cycle
CacheCore::CacheCore(regcache_driver *drv, const CacheConfig &params)
    : id_(g_next_cache_id.fetch_add(1, std::memory_order_relaxed)),
      touch_slack_(params.max_regions / 16),
      evict_(params.eviction, params.max_regions, params.max_bytes),
      drv_(drv),
      params_(params) {}

CacheCore::~CacheCore() = default;

int CacheCore::Create(regcache_driver *drv, const CacheConfig &params,
                      CacheCore **out) {
  CacheConfig p = params;
  auto *c = new (std::nothrow) CacheCore(drv, p);
  if (c == nullptr) return -ENOMEM;
  if (c->params_.name.empty()) {
    // Name is const after construction; build the default before publishing.
    p.name = "cache" + std::to_string(c->id_);
    delete c;
    c = new (std::nothrow) CacheCore(drv, p);
    if (c == nullptr) return -ENOMEM;
  }
  bool policy_ready;
  {
    MutexLock l(&c->mu_);
    policy_ready = c->evict_.ready();  // its ghost table was allocated
  }
  if (!policy_ready) {
    delete c;
    return -ENOMEM;
  }
  // Listed before it can receive callbacks, unlisted after its subscription
  // ended: whenever a callback may be inside this cache, the fork handlers
  // know it (its mu_ and pending set must not be left held in a child).
  c->ListLink();
  notifier::Subscription *sub = nullptr;
  int rc = notifier::Register(&kWholeOps, c, 0, 0, &sub);
  if (rc) {
    c->ListUnlink();
    REGCACHE_LOG(ERROR, "regcache_create: cannot subscribe to the notifier: {}",
                 regcache_strerror(rc));
    delete c;
    return rc;
  }
  c->sub_ = sub;
  drv->Ref();
  REGCACHE_LOG(DEBUG,
               "cache {} created on driver {}: max_regions {} max_bytes {} "
               "merge_max_bytes {}",
               c->name(), drv->impl->Name(), p.max_regions, p.max_bytes,
               p.merge_max_bytes);
  *out = c;
  return 0;
}

void CacheCore::Destroy() {
  // Unregister runs OnRelease unless teardown already did: everything unused
  // goes.
  if (sub_) notifier::Unregister(sub_);
  sub_ = nullptr;
  shutdown_.store(true, std::memory_order_seq_cst);
  RegionBatch held, dead, forked;
  LockAndDrain();
  InvalidateLocked(0, UINTPTR_MAX);
  while (CachedRegion *r = orphans_.head()) {
    const bool parents = r->forked;
    OrphanUnlinkLocked(r);
    (parents ? forked : held).Push(r);
  }
  dead = dead_.Take();
  dead_bytes_ = 0;
  attention_.fetch_and(~uint32_t{kDead | kDeadMany}, std::memory_order_relaxed);
  RegionBatch stash = stash_.Take();
  DrainAndUnlock();
  while (CachedRegion *r = stash.Pop()) FreeRegion(r);
  ListUnlink();  // unsubscribed and unlocked: no fork handler needs it now
  if (held.n) {
    REGCACHE_LOG(
        WARN,
        "cache {} destroyed with {} region(s) still held; deregistering them",
        name(), held.n);
    // A later put of these is a caller bug; zero the count (and bump the
    // generation) so that it is reported as a double put rather than corrupting
    // a recycled region.
    for (CachedRegion *r = held.head; r; r = r->next) r->ResetWord();
  }
  DeregisterList(&held);
  DeregisterList(&dead);
  // The parent's registrations still held in this forked child: no driver.
  while (CachedRegion *r = forked.Pop()) {
    r->ResetWord();
    DropForked(r);
  }
  MaybePrintStatsOnce();
  regcache_driver *d = drv_;
  delete this;
  d->Unref();
}

// ---------------------------------------------------------------- locking
void CacheCore::LockAndDrain() {
  mu_.Lock();
  DrainPendingLocked();
}

// Applies pending ranges before unlocking, then re-checks: a range that arrived
// between the drain and the unlock (its try-lock failed on us) is applied by
// taking the lock again if nobody else holds it. If somebody does, they will
// (or the next get will: the pending bit keeps hits off the fast path until it
// is applied). Bounded: each round either applies ranges or returns.
void CacheCore::DrainAndUnlock() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  for (;;) {
    DrainPendingLocked();
    DebugCheckLocked();
    // The seq_cst load after UnlockFenced's barrier pairs with
    // OnInvalidateStart's add, fence, try-lock: either it sees the range's
    // bit, or its try-lock sees the mutex free.
    mu_.UnlockFenced();
    if (!(attention_.load(std::memory_order_seq_cst) & kPending)) return;
    if (!mu_.TryLock()) return;
  }
}

void CacheCore::DrainPendingLocked() {
  mu_.AssertHeld();
  if (!(attention_.load(std::memory_order_acquire) & kPending)) return;
  PendingSet::Range ranges[PendingSet::kMax];
  int n = pending_.Take(ranges);
  for (int i = 0; i < n; ++i) InvalidateLocked(ranges[i].start, ranges[i].end);
  pending_.FinishDrain(&attention_, kPending);
}

void CacheCore::InvalidateLocked(uintptr_t start, uintptr_t end) {
  mu_.AssertHeld();
  // munmap and madvise work on whole pages: a region sharing a page with the
  // range is affected even if it does not share a byte.
  const page::Span s = page::Cover(start, end);
  size_t n = 0;
  while (CachedRegion *r = index_.FirstOverlap(s.start, s.end)) {
    const size_t dead_before = dead_.n, len = r->end - r->start;
    RetireLocked(r, &dead_);
    if (dead_.n != dead_before) dead_bytes_ += len;
    ++n;
  }
  ResetBoundsIfEmptyLocked();
  if (n) Count(stats_.invalidations, n);
  if (dead_.head) {
    const bool many = (dead_.n >= kReapCount &&
                       index_.count() + dead_.n > params_.max_regions) ||
                      (dead_bytes_ >= kReapBytes &&
                       index_.bytes() + dead_bytes_ > params_.max_bytes);
    attention_.fetch_or(kDead | (many ? uint32_t{kDeadMany} : 0u),
                        std::memory_order_release);
  }
}

// ---------------------------------------------------------------- index glue
void CacheCore::IndexLocked(CachedRegion *r) {
  mu_.AssertHeld();
  index_.Insert(r);
  clock_.PushBack(r);
}

void CacheCore::UnindexLocked(CachedRegion *r) {
  index_.Erase(r);
  clock_.Unlink(r);
  evict_.Removed(r);
}

void CacheCore::ResetBoundsIfEmptyLocked() {
  // Only when the index is empty: the insert path folds regions after it
  // widened [lo_, hi_) for its new region, and a reset there would let the
  // callback skip invalidations of that region (a stale registration;
  // CacheTest.InvalidationOfAMergedRegionIsSeen).
  if (!index_.empty()) return;
  lo_.store(UINTPTR_MAX, std::memory_order_relaxed);
  hi_.store(0, std::memory_order_relaxed);
}

void CacheCore::OrphanLinkLocked(CachedRegion *r) { orphans_.PushFront(r); }

void CacheCore::OrphanUnlinkLocked(CachedRegion *r) { orphans_.Unlink(r); }

bool CacheCore::TryRefLocked(CachedRegion *r, uint64_t *word_out) {
  const uint64_t nw = r->TryRef(-1);
  if (nw == 0) return false;
  *word_out = nw;
  return true;
}

void CacheCore::RetireLocked(CachedRegion *r, RegionBatch *unused) {
  UnindexLocked(r);
  // No filter-bounds reset here (ResetBoundsIfEmptyLocked says why).
  const uint64_t w = r->Retire();
  if (CachedRegion::Refs(w) == 0) {
    unused->Push(r);
  } else {
    OrphanLinkLocked(r);  // its last put deregisters it
  }
}

std::string CacheCore::CheckLocked() const {
  std::string err = index_.Check(this);
  if (!err.empty()) return err;
  if (clock_.size() != index_.count())
    return "CLOCK list holds " + std::to_string(clock_.size()) +
           " regions, the index " + std::to_string(index_.count());
  if (!index_.empty() &&
      (lo_.load(std::memory_order_relaxed) > index_.LowerBound(0)->start ||
       hi_.load(std::memory_order_relaxed) < index_.Floor(UINTPTR_MAX)->end))
    return "the callback's filter bounds do not cover the index";
  return "";
}

void CacheCore::DebugCheckLocked() const {
#if REGCACHE_DCHECK_IS_ON
  // Cheap only while small: O(n) per unlock.
  if (index_.count() < 64) {
    const std::string err = CheckLocked();
    REGCACHE_DCHECK(err.empty(), err.c_str());
  }
#endif
}

std::string CacheCore::CheckInvariants() {
  MutexLock l(&mu_);
  return CheckLocked();
}

// ---------------------------------------------------------------- deferred
// deregistration (outside the lock)
void CacheCore::ReapDead() {
  if (!(attention_.load(std::memory_order_acquire) & kDead)) return;
  LockAndDrain();
  RegionBatch l;
  TakeDeadLocked(&l);
  // May refill dead_ and set kDead again: the next call takes those.
  DrainAndUnlock();
  DeregisterList(&l);
}

void CacheCore::TakeDeadLocked(RegionBatch *into) {
  // kDead and kDeadMany are set (InvalidateLocked) and cleared only under
  // mu_: with dead_ empty they are clear already (every miss comes here), and
  // the read-modify-write is skipped.
  if (dead_.head == nullptr) return;
  while (CachedRegion *r = dead_.Pop()) into->Push(r);
  dead_bytes_ = 0;
  attention_.fetch_and(~uint32_t{kDead | kDeadMany}, std::memory_order_relaxed);
}

void CacheCore::DeregisterList(RegionBatch *l) {
  while (CachedRegion *r = l->Pop()) DeregisterOne(r);
}

void CacheCore::DeregisterOne(CachedRegion *r) {
  const size_t len = r->end - r->start;
  driver()->Deregister(r->reg);  // the driver logs its own failures
  Count(stats_.deregistrations);
  CountInSlot(&HitSlot::regions, ~uint64_t{0});
  DropBytes(len);
  r->reg = PortRegistration();
  FreeRegion(r);
}

CachedRegion *CacheCore::AllocRegion(RegionBatch *spare) {
  if (spare != nullptr && params_.host_data_bytes == 0) {
    Slab::Get().AllocBatch(spare, kStashRefill);
    return spare->Pop();
  }
  CachedRegion *r = Slab::Get().Alloc();
  if (r == nullptr || params_.host_data_bytes == 0) return r;
  // Outside mu_ (allocation may unmap and re-enter the notifier). Zeroed: a
  // recycled region must not show the previous host's keys.
  void *h = std::aligned_alloc(64, params_.host_data_bytes);
  if (h == nullptr) {
    Slab::Get().Free(r);
    return nullptr;
  }
  std::memset(h, 0, params_.host_data_bytes);
  r->host = h;
  return r;
}

void CacheCore::FreeRegion(CachedRegion *r) {
  void *h = r->host;
  r->host = nullptr;
  Slab::Get().Free(r);
  std::free(h);
}

// ------------------------------------------- misses in flight, uncached gets
void CacheCore::EndInFlight(int slot) {
  LockAndDrain();
  inflight_[slot].used = false;
  --inflight_used_;
  const bool wake = inflight_waiters_ != 0;
  DrainAndUnlock();
  if (!wake) return;
  inflight_done_.fetch_add(1, std::memory_order_release);
  inflight_done_.notify_all();
}

void CacheCore::HandOutUncached(CachedRegion *r) {
  LockAndDrain();
  OrphanLinkLocked(r);
  r->HandOutOrphan();
  DrainAndUnlock();
}

// ---------------------------------------------------------------- notifier
// callbacks
void CacheCore::OnInvalidateStart(uintptr_t start, size_t len) {
  if (len == 0) return;
  uintptr_t end = start + len;
  if (end < start) end = UINTPTR_MAX;
  // Cheap filter: unrelated munmaps cost three loads and never touch the
  // lock (the third: the writability hint, which any change over it voids).
  // The bounds' loads are seq_cst, after the range's seq_cst log increment
  // (LogRange, while a miss reads): the Dekker pair with the publication's
  // seq_cst widening then its log check (Miss::PublishIndexed). On x86 a
  // seq_cst load is a plain load: no fence on the munmap path.
  ForgetWritableSpanOver(start, end);
  if (OutsideBounds(start, end, std::memory_order_seq_cst)) return;
  ++t_invalidating;
  struct Leave {
    ~Leave() { --t_invalidating; }
  } leave;
  if (mu_.TryLock()) {
    DrainPendingLocked();
    InvalidateLocked(start, end);
    DrainAndUnlock();
    return;
  }
  // Never block inside munmap: the lock holder (or the next cache call) applies
  // it.
  pending_.Add(start, end, &attention_, kPending);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (mu_.TryLock()) DrainAndUnlock();
}

void CacheCore::OnRelease() {
  shutdown_.store(true, std::memory_order_seq_cst);
  if (mu_.TryLock()) {
    DrainPendingLocked();
    InvalidateLocked(0, UINTPTR_MAX);
    DrainAndUnlock();
  } else {
    pending_.Add(0, UINTPTR_MAX, &attention_, kPending);
  }
  // Deregistration may allocate and unmap: never from inside an invalidation
  // callback (release may run nested in one if some subscriber unregisters us
  // from there).
  if (t_invalidating == 0) ReapDead();
  MaybePrintStatsOnce();
}

// ---------------------------------------------------------------- transport
// calls (issue 18): find and invalidate. They reuse the index, the orphan list
// and the insert protocol but change none of them.
int CacheCore::Find(uintptr_t addr, size_t len, unsigned access,
                    CachedRegion **out) {
  // As GetSlow: inside a bracket or callback the lookup could wait for the
  // range the thread itself is delivering.
  if (notifier::InRange()) return -EDEADLK;
  // Settle an asynchronous source's in-flight invalidation (uffd) before the
  // index is read, else find could return a region of memory already gone.
  notifier::SyncForLookup();
  ReapDead();
  const uintptr_t end = addr + len;
  LockAndDrain();
  if (shutdown_.load(std::memory_order_relaxed)) {
    DrainAndUnlock();
    return -ESHUTDOWN;
  }
  uint64_t w;
  CachedRegion *r = index_.FindCovering(addr, end, access);
  if (r == nullptr || !TryRefLocked(r, &w)) {
    DrainAndUnlock();
    return -ENOENT;
  }
  Touch(r);
  ++slow_hits_;
  DrainAndUnlock();
  Remember(r, w);  // a get right after the find hits without the lock
  *out = r;
  return 0;
}

int CacheCore::Invalidate(uintptr_t addr, size_t len) {
  LockAndDrain();
  const size_t before = index_.count();
  InvalidateLocked(addr, addr + len);  // page-aligns; bumps generations
  // Misses in flight over the range registered before this call: they retry
  // instead of publishing a registration the caller has just revoked.
  ++revokes_;
  const uintptr_t lo = page::Down(addr), hi = page::Up(addr + len);
  for (InFlight &f : inflight_)
    if (f.used && f.start < hi && lo < f.end) f.revoked = true;
  const int revoked = static_cast<int>(before - index_.count());
  DrainAndUnlock();
  // Deregistration must not run inside a memory-event callback (or between
  // the thread's own unmap bracket): the next cache call reaps them then.
  if (!notifier::InRange()) ReapDead();
  return revoked;
}

}  // namespace regcache::core

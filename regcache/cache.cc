// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/cache.h"

#include <linux/capability.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "notifier/address_space.h"
#include "notifier/procmap.h"
#include "regcache/log.h"
#include "regcache/tunables.h"

namespace regcache::core {
namespace {

uintptr_t PageSize() {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  return page;
}
uintptr_t PageDown(uintptr_t a) { return a & ~(PageSize() - 1); }
// Saturates at the last page boundary instead of wrapping.
uintptr_t PageUp(uintptr_t a) {
  if (a > UINTPTR_MAX - (PageSize() - 1)) return PageDown(UINTPTR_MAX);
  return PageDown(a + PageSize() - 1);
}

// ---------------------------------------------------------------- type-stable
// slab Regions are carved from 64 KiB mmap'ed chunks that are never unmapped,
// so a stale Region pointer held by some thread's front table stays
// dereferenceable forever; the generation in the region word tells incarnations
// apart. mmap rather than malloc: the memory must never go back to any
// allocator.
class Slab {
 public:
  Region *Alloc() {
    MutexLock l(&mu_);
    if (free_ == nullptr && !GrowLocked()) return nullptr;
    Region *r = free_;
    free_ = r->next;
    r->next = nullptr;
    r->where = Region::kWhereOwned;
    --nfree_;
    return r;
  }
  void Free(Region *r) {
    r->where = Region::kWhereFree;
    r->left = r->right = r->prev = nullptr;
    r->cache = nullptr;
    MutexLock l(&mu_);
    r->next = free_;
    free_ = r;
    ++nfree_;
  }
  size_t Total() {
    MutexLock l(&mu_);
    return total_;
  }
  size_t Free() {
    MutexLock l(&mu_);
    return nfree_;
  }
  // fork(): held from prepare to the parent/child handler, so the child gets
  // the free list consistent and the lock free. Holders never block (GrowLocked
  // maps without MAP_FIXED: no notifier range, no callback).
  void ForkLock() REGCACHE_ACQUIRE(mu_) { mu_.Lock(); }
  void ForkUnlock() REGCACHE_RELEASE(mu_) { mu_.Unlock(); }

 private:
  static constexpr size_t kChunk = 64 * 1024;
  bool GrowLocked() REGCACHE_REQUIRES(mu_) {
    void *p = mmap(nullptr, kChunk, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    auto *regions = static_cast<Region *>(p);
    const size_t n = kChunk / sizeof(Region);
    for (size_t i = 0; i < n; ++i) {
      Region *r = new (&regions[i]) Region;
      r->next = free_;
      free_ = r;
    }
    total_ += n;
    nfree_ += n;
    return true;
  }
  Mutex mu_;
  Region *free_ REGCACHE_GUARDED_BY(mu_) = nullptr;
  size_t total_ REGCACHE_GUARDED_BY(mu_) = 0;
  size_t nfree_ REGCACHE_GUARDED_BY(mu_) = 0;
};

Slab &TheSlab() {
  static Slab *s =
      new Slab;  // leaked: regions must outlive every thread and cache
  return *s;
}

// ---------------------------------------------------------------- per-thread
// state
struct FrontEntry {
  uint64_t cache_id;  // 0: empty. Cache ids are never reused.
  uintptr_t start, end;
  Region *region;
  uint32_t gen;
  uint32_t access;
};

struct ThreadState {
  FrontEntry e[kFrontEntries] = {};
  unsigned next = 0;
  int slot = 0;
};

constexpr int kSlotsForThreads = 64;
std::atomic<uint64_t> g_slot_bits{0};

int AcquireSlot() {
  uint64_t b = g_slot_bits.load(std::memory_order_relaxed);
  while (b != ~uint64_t{0}) {
    int i = __builtin_ctzll(~b);
    if (g_slot_bits.compare_exchange_weak(b, b | (uint64_t{1} << i),
                                          std::memory_order_relaxed))
      return i;
  }
  return kSlotsForThreads;  // shared slot, counted with atomic RMW
}

void ReleaseSlot(int i) {
  if (i < kSlotsForThreads)
    g_slot_bits.fetch_and(~(uint64_t{1} << i), std::memory_order_relaxed);
}

// initial-exec: one pointer of static TLS (a dlopen'ed library can afford it)
// avoids
// __tls_get_addr on the hit path. The state itself is heap-allocated on first
// slow path.
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
  static_cast<void>(
      &t_owner);  // odr-use: registers the destructor for this thread
  return s;
}

std::atomic<uint64_t> g_next_cache_id{1};

// Every live cache (Create links, Destroy unlinks), for the fork handlers.
// Holders of g_caches_mu never block (list updates only), and nothing takes it
// with a cache's mu_ held, except the prepare handler, which takes the caches'
// mutexes in list order while holding it.
Mutex g_caches_mu;
Cache *g_caches REGCACHE_GUARDED_BY(g_caches_mu) = nullptr;

// Depth of our invalidate_range_start callbacks on this thread.
// (notifier::InCallback() is also true inside release, where deregistering is
// fine.)
thread_local int t_invalidating = 0;

// ---------------------------------------------------------------- notifier
// thunks
void WholeStart(void *arg, const void *addr, size_t len) {
  static_cast<Cache *>(arg)->OnInvalidateStart(
      reinterpret_cast<uintptr_t>(addr), len);
}
void WholeRelease(void *arg) { static_cast<Cache *>(arg)->OnRelease(); }
const regcache_notifier_ops_t kWholeOps = {WholeStart, nullptr, WholeRelease};

// The per-miss interval subscription exists only for its sequence number (and,
// with the uffd source, to get the interval watched); its callbacks have
// nothing to do.
void RangeStart(void *, const void *, size_t) {}
const regcache_notifier_ops_t kRangeOps = {RangeStart, nullptr, nullptr};

constexpr int kMaxInsertRetries = 8;

// ACCESS_POLICY=all: is every page of [start, end) in a writable mapping? 1
// yes, 0 no (read-only or a hole), -1 cannot tell (kernel without
// PROCMAP_QUERY, or many VMAs). Asking the kernel first (0.3-0.7 us, far below
// a registration) keeps the driver from logging an error for read-only memory
// we only tried to widen.
int WritableMemory(uintptr_t start, uintptr_t end) {
  namespace pm = notifier::procmap;
  if (pm::Init() != 0) return -1;
  uintptr_t cur = start;
  for (int i = 0; i < 8 && cur < end; ++i) {
    pm::Vma v;
    int rc = pm::Query(cur, /*covering_or_next=*/false, &v);
    if (rc == -ENOENT) return 0;
    if (rc != 0) return -1;
    if (!(v.flags & 2)) return 0;  // PROCMAP_QUERY_VMA_WRITABLE
    cur = v.end;
  }
  return cur >= end ? 1 : -1;
}

uint64_t TreapPriority(const Region *r) {
  uint64_t x = reinterpret_cast<uintptr_t>(r);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

void TreapSplit(Region *t, uintptr_t key, Region **l, Region **r) {
  if (t == nullptr) {
    *l = *r = nullptr;
  } else if (t->start < key) {
    TreapSplit(t->right, key, &t->right, r);
    *l = t;
  } else {
    TreapSplit(t->left, key, l, &t->left);
    *r = t;
  }
}

Region *TreapMerge(Region *a, Region *b) {
  if (a == nullptr) return b;
  if (b == nullptr) return a;
  if (TreapPriority(a) > TreapPriority(b)) {
    a->right = TreapMerge(a->right, b);
    return a;
  }
  b->left = TreapMerge(a, b->left);
  return b;
}

}  // namespace

size_t SlabRegionsAllocated() { return TheSlab().Total(); }
size_t SlabRegionsFree() { return TheSlab().Free(); }

// ---------------------------------------------------------------- params
// The kernel does not apply RLIMIT_MEMLOCK to a process with CAP_IPC_LOCK
// (root, usually): sizing the cache from it there would only starve it (a
// 16 MiB pool against root's default 8 MiB limit never hit in the rxe e2e run).
bool HasCapIpcLock() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &hdr, data) != 0) return false;
  return (data[0].effective & (1u << CAP_IPC_LOCK)) != 0;
}

size_t AutoMaxBytes() {
  struct rlimit rl;
  if (!HasCapIpcLock() && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
      rl.rlim_cur != RLIM_INFINITY)
    return static_cast<size_t>(rl.rlim_cur / 4 * 3);
  long pages = sysconf(_SC_PHYS_PAGES);
  if (pages <= 0) return size_t{1} << 30;
  return static_cast<size_t>(pages) * PageSize() / 4;
}

int ResolveParams(const regcache_params_t *p, Params *out) {
  constexpr uint64_t kKnown =
      REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MAX_BYTES |
      REGCACHE_PARAM_MERGE_MAX_BYTES | REGCACHE_PARAM_FLAGS |
      REGCACHE_PARAM_NAME | REGCACHE_PARAM_HOST_DATA_BYTES;
  const uint64_t mask = p ? p->field_mask : 0;
  if (mask & ~kKnown) {
    REGCACHE_LOG(ERROR, "regcache_create: unknown field_mask bits 0x{:x}",
                 mask & ~kKnown);
    return -EINVAL;
  }
  if ((mask & REGCACHE_PARAM_FLAGS) &&
      (p->flags & ~uint64_t{REGCACHE_FLAG_NO_MERGE})) {
    REGCACHE_LOG(ERROR, "regcache_create: unknown flags 0x{:x}", p->flags);
    return -EINVAL;
  }
  int rc;
  size_t v = 0;
  bool is_auto = false;
  if (mask & REGCACHE_PARAM_MAX_REGIONS) {
    out->max_regions = p->max_regions;
  } else {
    if ((rc = tunables::GetSize("MAX_REGIONS", &v))) return rc;
    out->max_regions = v;
  }
  if (mask & REGCACHE_PARAM_MAX_BYTES) {
    out->max_bytes = p->max_bytes;
  } else {
    if ((rc = tunables::GetSize("MAX_BYTES", &v, &is_auto))) return rc;
    out->max_bytes = is_auto ? AutoMaxBytes() : v;
  }
  if (mask & REGCACHE_PARAM_MERGE_MAX_BYTES) {
    out->merge_max_bytes = p->merge_max_bytes;
  } else {
    if ((rc = tunables::GetSize("MERGE_MAX_BYTES", &v))) return rc;
    out->merge_max_bytes = v;
  }
  if ((mask & REGCACHE_PARAM_FLAGS) && (p->flags & REGCACHE_FLAG_NO_MERGE))
    out->merge_max_bytes = 0;
  if ((mask & REGCACHE_PARAM_NAME) && p->name) out->name = p->name;
  if (mask & REGCACHE_PARAM_HOST_DATA_BYTES) {
    if (p->host_data_bytes > REGCACHE_HOST_DATA_MAX) {
      REGCACHE_LOG(ERROR, "regcache_create: host_data_bytes {} exceeds {}",
                   p->host_data_bytes, REGCACHE_HOST_DATA_MAX);
      return -EINVAL;
    }
    out->host_data_bytes = (p->host_data_bytes + 63) & ~size_t{63};
  }
  if ((rc = tunables::GetBool("STATS", &out->print_stats))) return rc;
  int policy = 0;
  if ((rc = tunables::GetEnum("ACCESS_POLICY", &policy))) return rc;
  out->access_all = policy == 0;  // "all|requested"
  int eviction = 0;
  if ((rc = tunables::GetEnum("EVICTION", &eviction))) return rc;
  out->eviction = eviction == 0 ? EvictionMode::kAdaptive
                                : EvictionMode::kLru;  // "adaptive|lru"
  return 0;
}

// ---------------------------------------------------------------- pending set
void Cache::PendingSet::SpinLock() {
  while (lock_.test_and_set(std::memory_order_acquire)) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

void Cache::PendingSet::Add(uintptr_t start, uintptr_t end,
                            std::atomic<uint32_t> *attention) {
  SpinLock();
  // Coalesce with every overlapping or adjacent range (repeat: the union may
  // now touch more). Allocation-free: this runs inside munmap.
  bool merged = true;
  while (merged) {
    merged = false;
    for (int i = 0; i < n_; ++i) {
      if (r_[i].start <= end && start <= r_[i].end) {
        start = std::min(start, r_[i].start);
        end = std::max(end, r_[i].end);
        r_[i] = r_[--n_];
        merged = true;
        break;
      }
    }
  }
  if (n_ == kMax) {
    // Full: fold everything into one covering range. Over-invalidating only
    // costs cache hits; the bound is what keeps munmap-heavy programs from
    // growing a backlog.
    for (int i = 0; i < n_; ++i) {
      start = std::min(start, r_[i].start);
      end = std::max(end, r_[i].end);
    }
    n_ = 0;
  }
  r_[n_++] = {start, end};
  attention->fetch_or(kPending, std::memory_order_seq_cst);
  SpinUnlock();
}

int Cache::PendingSet::Take(Range *out) {
  SpinLock();
  int n = n_;
  std::copy(r_, r_ + n_, out);
  n_ = 0;
  SpinUnlock();
  return n;
}

void Cache::PendingSet::FinishDrain(std::atomic<uint32_t> *attention) {
  SpinLock();
  if (n_ == 0)
    attention->fetch_and(~uint32_t{kPending}, std::memory_order_release);
  SpinUnlock();
}

int Cache::PendingSet::Size() {
  SpinLock();
  int n = n_;
  SpinUnlock();
  return n;
}

// ---------------------------------------------------------------- life cycle
Cache::Cache(regcache_driver *drv, const Params &params)
    : id_(g_next_cache_id.fetch_add(1, std::memory_order_relaxed)),
      touch_slack_(params.max_regions / 16),
      evict_(params.eviction, params.max_regions, params.max_bytes),
      drv_(drv),
      params_(params) {}

Cache::~Cache() = default;

int Cache::Create(regcache_driver *drv, const Params &params, Cache **out) {
  Params p = params;
  auto *c = new (std::nothrow) Cache(drv, p);
  if (c == nullptr) return -ENOMEM;
  if (c->params_.name.empty()) {
    // Name is const after construction; build the default before publishing.
    p.name = "cache" + std::to_string(c->id_);
    delete c;
    c = new (std::nothrow) Cache(drv, p);
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

void Cache::ListLink() {
  MutexLock l(&g_caches_mu);
  list_next_ = g_caches;
  if (g_caches) g_caches->list_prev_ = this;
  g_caches = this;
}

void Cache::ListUnlink() {
  MutexLock l(&g_caches_mu);
  if (list_prev_) {
    list_prev_->list_next_ = list_next_;
  } else {
    g_caches = list_next_;
  }
  if (list_next_) list_next_->list_prev_ = list_prev_;
  list_prev_ = list_next_ = nullptr;
}

void Cache::Destroy() {
  // Unregister runs OnRelease unless teardown already did: everything unused
  // goes.
  if (sub_) notifier::Unregister(sub_);
  sub_ = nullptr;
  shutdown_.store(true, std::memory_order_seq_cst);
  List held, dead, forked;
  LockAndDrain();
  InvalidateLocked(0, UINTPTR_MAX);
  while (orphans_) {
    Region *r = orphans_;
    const bool parents = r->where == Region::kWhereForked;
    OrphanUnlinkLocked(r);
    (parents ? forked : held).Push(r);
  }
  dead = dead_;
  dead_ = List();
  attention_.fetch_and(~uint32_t{kDead}, std::memory_order_relaxed);
  DrainAndUnlock();
  ListUnlink();  // unsubscribed and unlocked: no fork handler needs it now
  if (held.n) {
    REGCACHE_LOG(
        WARN,
        "cache {} destroyed with {} region(s) still held; deregistering them",
        name(), held.n);
    // A later put of these is a caller bug; zero the count (and bump the
    // generation) so that it is reported as a double put rather than corrupting
    // a recycled region.
    for (Region *r = held.head; r; r = r->next) {
      uint64_t w = r->word.load(std::memory_order_relaxed);
      r->word.store((static_cast<uint64_t>(Region::Gen(w) + 1))
                        << Region::kGenShift,
                    std::memory_order_release);
    }
  }
  DeregisterList(&held);
  DeregisterList(&dead);
  // The parent's registrations still held in this forked child: no driver.
  while (Region *r = forked.head) {
    forked.head = r->next;
    uint64_t w = r->word.load(std::memory_order_relaxed);
    r->word.store((static_cast<uint64_t>(Region::Gen(w) + 1))
                      << Region::kGenShift,
                  std::memory_order_release);
    DropForked(r);
  }
  MaybePrintStatsOnce();
  regcache_driver *d = drv_;
  delete this;
  d->Unref();
}

// ---------------------------------------------------------------- locking
void Cache::LockAndDrain() {
  mu_.Lock();
  DrainPendingLocked();
}

// Applies pending ranges before unlocking, then re-checks: a range that arrived
// between the drain and the unlock (its try-lock failed on us) is applied by
// taking the lock again if nobody else holds it. If somebody does, they will
// (or the next get will: the pending bit keeps hits off the fast path until it
// is applied).
void Cache::DrainAndUnlock() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  for (;;) {
    DrainPendingLocked();
    mu_.Unlock();
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!(attention_.load(std::memory_order_relaxed) & kPending)) return;
    if (!mu_.TryLock()) return;
  }
}

void Cache::DrainPendingLocked() {
  if (!(attention_.load(std::memory_order_acquire) & kPending)) return;
  PendingSet::Range ranges[PendingSet::kMax];
  int n = pending_.Take(ranges);
  for (int i = 0; i < n; ++i) InvalidateLocked(ranges[i].start, ranges[i].end);
  pending_.FinishDrain(&attention_);
}

void Cache::InvalidateLocked(uintptr_t start, uintptr_t end) {
  // munmap and madvise work on whole pages: a region sharing a page with the
  // range is affected even if it does not share a byte.
  start = PageDown(start);
  end = PageUp(end);
  if (end == PageDown(UINTPTR_MAX)) end = UINTPTR_MAX;
  size_t n = 0;
  while (Region *r = FirstOverlapLocked(start, end)) {
    RetireLocked(r, &dead_);
    ++n;
  }
  if (count_ == 0) {
    lo_.store(UINTPTR_MAX, std::memory_order_relaxed);
    hi_.store(0, std::memory_order_relaxed);
  }
  if (n) invalidations_.fetch_add(n, std::memory_order_relaxed);
  if (dead_.head) attention_.fetch_or(kDead, std::memory_order_release);
}

// ---------------------------------------------------------------- index
void Cache::IndexInsertLocked(Region *r) {
  r->left = r->right = nullptr;
  Region *l, *g;
  TreapSplit(root_, r->start, &l, &g);
  root_ = TreapMerge(TreapMerge(l, r), g);
}

void Cache::IndexEraseLocked(Region *r) {
  Region *l, *m, *g;
  TreapSplit(root_, r->start, &l, &m);
  TreapSplit(m, r->start + 1, &m, &g);
  // Starts are unique (regions do not overlap), so m is r.
  root_ = TreapMerge(l, g);
  r->left = r->right = nullptr;
}

Region *Cache::FloorLocked(uintptr_t key) const {
  Region *best = nullptr;
  for (Region *t = root_; t;) {
    if (t->start <= key) {
      best = t;
      t = t->right;
    } else {
      t = t->left;
    }
  }
  return best;
}

Region *Cache::LowerBoundLocked(uintptr_t key) const {
  Region *best = nullptr;
  for (Region *t = root_; t;) {
    if (t->start >= key) {
      best = t;
      t = t->left;
    } else {
      t = t->right;
    }
  }
  return best;
}

Region *Cache::FirstOverlapLocked(uintptr_t start, uintptr_t end) const {
  Region *r = FloorLocked(start);
  if (r && r->end > start) return r;
  r = LowerBoundLocked(start);
  if (r && r->start < end) return r;
  return nullptr;
}

Region *Cache::FindCoveringLocked(uintptr_t start, uintptr_t end,
                                  unsigned access) const {
  Region *r = FloorLocked(start);
  if (r && r->end >= end && (access & ~r->access) == 0) return r;
  return nullptr;
}

void Cache::ClockAppendLocked(Region *r) {
  r->next = nullptr;
  r->prev = clock_tail_;
  if (clock_tail_) {
    clock_tail_->next = r;
  } else {
    clock_head_ = r;
  }
  clock_tail_ = r;
}

void Cache::ClockUnlinkLocked(Region *r) {
  if (r->prev) {
    r->prev->next = r->next;
  } else {
    clock_head_ = r->next;
  }
  if (r->next) {
    r->next->prev = r->prev;
  } else {
    clock_tail_ = r->prev;
  }
  r->prev = r->next = nullptr;
}

void Cache::OrphanLinkLocked(Region *r) {
  r->where = Region::kWhereOrphan;
  r->prev = nullptr;
  r->next = orphans_;
  if (orphans_) orphans_->prev = r;
  orphans_ = r;
  ++orphan_count_;
}

void Cache::OrphanUnlinkLocked(Region *r) {
  if (r->prev) {
    r->prev->next = r->next;
  } else {
    orphans_ = r->next;
  }
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = nullptr;
  r->where = Region::kWhereOwned;
  --orphan_count_;
}

bool Cache::TryRefLocked(Region *r, uint64_t *word_out) {
  uint64_t w = r->word.load(std::memory_order_relaxed);
  while ((w & Region::kValid) && Region::Refs(w) < Region::kRefMask) {
    uint64_t nw = (w + 1) | Region::kAccessed;
    if (r->word.compare_exchange_weak(w, nw, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
      *word_out = nw;
      return true;
    }
  }
  return false;
}

void Cache::RetireLocked(Region *r, List *unused) {
  IndexEraseLocked(r);
  ClockUnlinkLocked(r);
  evict_.Removed(r);
  --count_;
  bytes_ -= r->end - r->start;
  // No filter-bounds reset here: the insert path retires the regions it folds
  // after it widened [lo_, hi_) for the new region, and resetting them then
  // would let the callback skip invalidations of the region being inserted
  // (a stale registration). InvalidateLocked and EvictLocked reset them.
  uint64_t w = r->word.load(std::memory_order_relaxed);
  uint64_t nw;
  do {
    nw = (static_cast<uint64_t>(Region::Gen(w) + 1) << Region::kGenShift) |
         Region::Refs(w);
  } while (!r->word.compare_exchange_weak(w, nw, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
  if (Region::Refs(w) == 0) {
    r->where = Region::kWhereDead;
    unused->Push(r);
  } else {
    OrphanLinkLocked(r);  // its last put deregisters it
  }
}

Cache::Plan Cache::PlanLocked(uintptr_t start, uintptr_t end,
                              unsigned access) const {
  Plan p{start, end, access, 0};
  const size_t bound =
      std::min(params_.merge_max_bytes, driver()->MaxRegionBytes());
  bool grew = true;
  while (grew) {
    grew = false;
    Region *r = FloorLocked(p.start);
    if (r == nullptr || r->end < p.start) r = LowerBoundLocked(p.start);
    for (; r && r->start <= p.end; r = LowerBoundLocked(r->start + 1)) {
      const bool overlaps = r->start < p.end && r->end > p.start;
      // Overlapping regions leave the index when ours is inserted whether or
      // not they are merged; taking their access now avoids flag bouncing (UCX
      // #10090).
      if (overlaps) p.access |= r->access;
      if (r->start >= p.start && r->end <= p.end) continue;
      // Adjacent (touching, not overlapping) regions stay apart: separately
      // allocated buffers are often adjacent mappings, and a glued pair would
      // lose both registrations when one buffer is freed. Measured
      // (docs/bench.md): gluing gained hits only where several requests cover
      // one allocation, and lost them wherever malloc placed two buffers side
      // by side; overlapping requests are merged anyway.
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

// ---------------------------------------------------------------- eviction
void Cache::EvictLocked(List *victims, bool all, size_t room_regions,
                        size_t room_bytes) {
  // Every CAS below fails only when a hit raced us, and each pass either
  // evicts or rotates a sample to the tail: the budget bounds the work when
  // everything is in use.
  size_t budget = 2 * count_ + kEvictSample;
  while (clock_head_ && budget > 0) {
    if (!all && count_ + room_regions <= params_.max_regions &&
        bytes_ + room_bytes <= params_.max_bytes)
      break;
    evict_.BeginPass(count_);
    // The least recently used unused region among the kEvictSample oldest in
    // CLOCK order: exact LRU (UCX's policy, which takes a lock on every get
    // and put for it) in a cache of at most kEvictSample regions, and an
    // approximation beyond, where the head of the list holds regions not
    // used since they were last sampled.
    Region *sample[kEvictSample];
    int n = 0;
    Region *victim = nullptr;
    uint64_t vw = 0;
    for (Region *r = clock_head_; r && n < kEvictSample; r = r->next) {
      sample[n++] = r;
      const uint64_t w = r->word.load(std::memory_order_acquire);
      evict_.Sample(r, w);
      if (Region::Refs(w) != 0) continue;
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
      Region *r = sample[i];
      if (r == victim) continue;
      const uint64_t w = r->word.load(std::memory_order_relaxed);
      if (Region::Refs(w) == 0 && !(w & Region::kAccessed)) continue;
      if (w & Region::kAccessed)
        r->word.fetch_and(~Region::kAccessed, std::memory_order_relaxed);
      ClockUnlinkLocked(r);
      ClockAppendLocked(r);
    }
    if (victim == nullptr) continue;  // all in use: look at the next ones
    const uint64_t nw = static_cast<uint64_t>(Region::Gen(vw) + 1)
                        << Region::kGenShift;
    if (!victim->word.compare_exchange_strong(vw, nw, std::memory_order_acq_rel,
                                              std::memory_order_relaxed))
      continue;  // a hit raced us; look again
    IndexEraseLocked(victim);
    ClockUnlinkLocked(victim);
    evict_.Evicted(victim);
    --count_;
    bytes_ -= victim->end - victim->start;
    victim->where = Region::kWhereDead;
    victims->Push(victim);
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
  if (count_ == 0) {
    lo_.store(UINTPTR_MAX, std::memory_order_relaxed);
    hi_.store(0, std::memory_order_relaxed);
  }
  UpdateOverLimitLocked();
}

Eviction::Verdict Cache::AdmitLocked(const Plan &plan, bool overlaps) {
  if (evict_.mode() == EvictionMode::kLru) return {true, true};
  const size_t len = plan.end - plan.start;
  // A miss the policy does not cache stays registered while it is held: only
  // where the byte limit (pinned memory) holds with it; else room is made.
  const bool need_room =
      (count_ + 1 > params_.max_regions || bytes_ + len > params_.max_bytes) &&
      bytes_ + len <= params_.max_bytes;
  Region *victim = need_room && !overlaps
                       ? evict_.PeekVictim(clock_head_, kEvictSample, count_)
                       : nullptr;
  return evict_.Admit(plan.start, plan.end,
                      use_clock_.load(std::memory_order_relaxed), overlaps,
                      need_room, victim,
                      evict_saved_hits_.load(std::memory_order_relaxed));
}

void Cache::UpdateOverLimitLocked() {
  // Lazy byte limit: a miss makes room before registering, so a region larger
  // than max_bytes may stay cached alone until the next miss needs room (as
  // UCX does); evicting it at its put made every reuse a miss (growing
  // workload at 8 MiB). The count limit (a device resource) is kept at put.
  if (count_ > params_.max_regions ||
      (bytes_ > params_.max_bytes && count_ > 1)) {
    attention_.fetch_or(kOverLimit, std::memory_order_relaxed);
  } else {
    attention_.fetch_and(~uint32_t{kOverLimit}, std::memory_order_relaxed);
  }
}

// ---------------------------------------------------------------- get / put
void Cache::CountHit() {
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
void Cache::Touch(Region *r) {
  if (r->evict_saved.load(std::memory_order_relaxed) &&
      r->evict_saved.exchange(0, std::memory_order_relaxed))
    evict_saved_hits_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t now = use_clock_.load(std::memory_order_relaxed);
  if (now - r->last_use.load(std::memory_order_relaxed) <= touch_slack_) return;
  Stamp(r);
}

void Cache::Stamp(Region *r) {
  r->last_use.store(use_clock_.fetch_add(1, std::memory_order_relaxed) + 1,
                    std::memory_order_relaxed);
}

void Cache::Remember(Region *r, uint64_t word) {
  ThreadState *ts = GetThreadState();
  if (ts == nullptr) return;
  FrontEntry *slot = nullptr;
  for (auto &e : ts->e) {
    if (e.region == r || (e.cache_id == id_ && e.start == r->start)) {
      slot = &e;
      break;
    }
  }
  if (slot == nullptr) slot = &ts->e[ts->next++ % kFrontEntries];
  *slot = {id_, r->start, r->end, r, Region::Gen(word), r->access};
}

int Cache::Get(uintptr_t addr, size_t len, unsigned access, Region **out) {
  ThreadState *ts = t_state;
  // FastPathOk: false while the uffd source is still delivering a munmap that
  // has already returned, or when another library overwrote the patch source's
  // hooks (docs/notifier.md); GetSlow synchronizes with the notifier first.
  if (ts != nullptr &&
      !(attention_.load(std::memory_order_acquire) & kHitSlowMask) &&
      notifier::FastPathOk()) {
    const uintptr_t end = addr + len;
    for (const FrontEntry &e : ts->e) {
      if (e.cache_id != id_ || addr < e.start || end > e.end ||
          (access & ~e.access))
        continue;
      Region *r = e.region;
      const uint64_t want =
          (static_cast<uint64_t>(e.gen) << Region::kGenShift) | Region::kValid;
      uint64_t w = r->word.load(std::memory_order_relaxed);
      while ((w & ~(Region::kRefMask | Region::kAccessed)) == want &&
             Region::Refs(w) < Region::kRefMask) {
        if (r->word.compare_exchange_weak(w, (w + 1) | Region::kAccessed,
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
            return 0;
          }
          r->cache->Put(r);
          break;
        }
      }
      break;
    }
  }
  return GetSlow(addr, len, access, out);
}

int Cache::GetSlow(uintptr_t addr, size_t len, unsigned access, Region **out) {
  const uintptr_t end = addr + len;
  // Between its own regcache_notify_unmap_start/end (or inside a callback) a
  // thread's registration would wait for itself.
  if (notifier::InRange()) return -EDEADLK;
  // An asynchronous source (uffd) may still be delivering the invalidation of
  // memory the caller already unmapped, or the patch source may have been
  // overwritten: settle both before the index is read.
  notifier::SyncForLookup();
  ReapDead();
  if (shutdown_.load(std::memory_order_acquire)) return -ESHUTDOWN;
  Driver *const d = driver();
  const uintptr_t req_start = PageDown(addr);
  const uintptr_t req_end = PageUp(end);
  if (req_end - req_start > d->MaxRegionBytes()) {
    REGCACHE_LOG(ERROR,
                 "cache {}: region 0x{:x} len {} exceeds the driver's max {}",
                 name(), addr, len, d->MaxRegionBytes());
    return -EINVAL;
  }

  // NO BLIND CACHING (notifier/policy.h): while no source sees every unmap
  // the cache neither looks up nor keeps regions; each get registers the
  // request and its last put deregisters it. Checked again at insert.
  if (!notifier::CachingSafe()) {
    // Blind: every get is a miss registered for this use only.
    misses_.fetch_add(1, std::memory_order_relaxed);
    return GetUncached(addr, len, access, out);
  }

  Plan plan;
  List early;  // unused regions to deregister before registering
  int slot = -1;
  uint64_t revokes_at_plan = 0;  // revokes_ when the plan was made
  Eviction::Verdict verdict{true, true};
  for (;;) {
    LockAndDrain();
    if (shutdown_.load(std::memory_order_relaxed)) {
      DrainAndUnlock();
      return -ESHUTDOWN;
    }
    uint64_t w;
    Region *r = FindCoveringLocked(addr, end, access);
    if (r && TryRefLocked(r, &w)) {
      Touch(r);
      ++slow_hits_;
      DrainAndUnlock();
      Remember(r, w);
      *out = r;
      return 0;
    }
    // Another thread is registering memory covering ours: wait for it, outside
    // the lock, then look again (its region, or a miss of our own if it
    // failed or was invalidated).
    bool covered = false;
    for (const InFlight &f : inflight_)
      covered |= f.used && f.start <= req_start && req_end <= f.end &&
                 (access & ~f.access) == 0;
    if (covered) {
      const uint32_t seen = inflight_done_.load(std::memory_order_relaxed);
      DrainAndUnlock();
      inflight_done_.wait(seen, std::memory_order_acquire);
      continue;
    }
    plan = PlanLocked(req_start, req_end, access);
    revokes_at_plan = revokes_;
    for (int i = 0; i < kInFlight; ++i) {
      if (!inflight_[i].used) {
        inflight_[i] = {plan.start, plan.end, plan.access, true, false};
        slot = i;
        break;
      }
    }
    // Before registering (peak pinned bytes): unused regions the new one
    // replaces leave now rather than after, and unused ones are evicted to
    // make room for it. Held ones are folded at insert as before. If the
    // registration then fails, this cost only cached regions.
    const bool overlaps = FirstOverlapLocked(plan.start, plan.end) != nullptr;
    size_t folded_early = 0;
    for (Region *o = FirstOverlapLocked(plan.start, plan.end);
         o && o->start < plan.end;) {
      Region *next = LowerBoundLocked(o->start + 1);
      if (Region::Refs(o->word.load(std::memory_order_relaxed)) == 0) {
        RetireLocked(o, &early);
        ++folded_early;
      }
      o = next;
    }
    if (folded_early)
      merges_.fetch_add(folded_early, std::memory_order_relaxed);
    verdict = AdmitLocked(plan, overlaps);
    if (verdict.admit) EvictLocked(&early, false, 1, plan.end - plan.start);
    DrainAndUnlock();
    break;
  }
  struct EndGuard {
    Cache *c;
    int slot;
    ~EndGuard() {
      if (slot >= 0) c->EndInFlight(slot);
    }
  } end_guard{this, slot};
  DeregisterList(&early);
  misses_.fetch_add(1, std::memory_order_relaxed);
  // The access the plan needs (request, union of overlapping regions); with
  // ACCESS_POLICY=all writable memory is registered with every access so that
  // a later request with other flags is a hit (UCX's and libfabric's model).
  const unsigned needed_access = plan.access;
  if (params_.access_all && plan.access != REGCACHE_ACCESS_ALL &&
      WritableMemory(plan.start, plan.end) != 0)
    plan.access = REGCACHE_ACCESS_ALL;

  Region *nr = AllocRegion();
  if (nr == nullptr) {
    failures_.fetch_add(1, std::memory_order_relaxed);
    return -ENOMEM;
  }
  bool evicted_all = false;
  // Access widening (ACCESS_POLICY=all) has its own fallback below.
  bool unmerged =
      plan.start == req_start && plan.end == req_end && needed_access == access;
  int retries = 0;
  for (;;) {
    const size_t plen = plan.end - plan.start;
    notifier::Subscription *sub = nullptr;
    int rc = notifier::Register(&kRangeOps, nullptr, plan.start, plen, &sub);
    if (rc == -EBUSY)  // the source cannot watch it: never cache it blind
      return RegisterUncached(nr, req_start, req_end, access, out);
    if (rc) {
      FreeRegion(nr);
      failures_.fetch_add(1, std::memory_order_relaxed);
      return rc;
    }
    const uint64_t seq = notifier::ReadBegin(sub);
    Registration reg;
    rc = d->Register(reinterpret_cast<void *>(plan.start), plen, plan.access,
                     &reg);
    if (rc) {
      notifier::Unregister(sub);
      if ((rc == -ENOMEM || rc == -EAGAIN) && !evicted_all) {
        // Pinned-memory or device limit: give back every unused registration,
        // once.
        evicted_all = true;
        List victims;
        LockAndDrain();
        EvictLocked(&victims, true);
        DrainAndUnlock();
        DeregisterList(&victims);
        continue;
      }
      if ((rc == -EACCES || rc == -EINVAL || rc == -EOPNOTSUPP) &&
          plan.access != needed_access) {
        // Widened to every access but the memory does not allow it (-EACCES)
        // or the device lacks a capability (ibv_reg_mr says -EINVAL or
        // -EOPNOTSUPP, e.g. no remote atomics): register what was needed.
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
      FreeRegion(nr);
      failures_.fetch_add(1, std::memory_order_relaxed);
      return rc;
    }
    CountRegistered(plen);
    nr->cache = this;
    nr->start = plan.start;
    nr->end = plan.end;
    nr->access = plan.access;
    nr->reg = reg;

    List victims;
    LockAndDrain();
    if (shutdown_.load(std::memory_order_relaxed)) {
      DrainAndUnlock();
      notifier::Unregister(sub);
      DeregisterOne(nr);
      return -ESHUTDOWN;
    }
    // Widen the callback's filter before checking the sequence. Paired with the
    // fence in OnInvalidateStart: either that callback sees the new bounds, or
    // ReadRetry sees its invalidation.
    if (plan.start < lo_.load(std::memory_order_relaxed))
      lo_.store(plan.start, std::memory_order_relaxed);
    if (plan.end > hi_.load(std::memory_order_relaxed))
      hi_.store(plan.end, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // A regcache_invalidate of this range since the miss began revokes the
    // registration too (its keys predate the revoke).
    const bool revoked =
        slot >= 0 ? inflight_[slot].revoked : revokes_ != revokes_at_plan;
    if (slot >= 0) inflight_[slot].revoked = false;  // the retry starts anew
    revokes_at_plan = revokes_;
    if (notifier::ReadRetry(sub, seq) || revoked) {
      // The memory changed while we registered it: this registration may map
      // old pages.
      DrainAndUnlock();
      notifier::Unregister(sub);
      retries_.fetch_add(1, std::memory_order_relaxed);
      if (++retries >= kMaxInsertRetries) {
        DeregisterOne(nr);
        failures_.fetch_add(1, std::memory_order_relaxed);
        REGCACHE_LOG(
            ERROR,
            "cache {}: region 0x{:x} len {} kept changing while registering",
            name(), plan.start, plen);
        return -EAGAIN;
      }
      d->Deregister(nr->reg);
      deregistrations_.fetch_add(1, std::memory_order_relaxed);
      reg_regions_.fetch_sub(1, std::memory_order_relaxed);
      reg_bytes_.fetch_sub(plen, std::memory_order_relaxed);
      continue;
    }
    if (!notifier::CachingSafe()) [[unlikely]] {
      // Became blind while we registered (the patch source was overwritten
      // and nothing could take over): hand this registration out uncached.
      // The switch set the blind flag before invalidating everything, so a
      // region inserted before this check is invalidated by that.
      DrainAndUnlock();
      notifier::Unregister(sub);
      DeregisterList(&victims);
      HandOutUncached(nr);
      *out = nr;
      return 0;
    }
    uint64_t w;
    if (Region *other = FindCoveringLocked(addr, end, access);
        other && TryRefLocked(other, &w)) {
      Touch(other);
      // A concurrent miss on the same memory won: use its region, drop ours
      // (still counted as this call's miss).
      DrainAndUnlock();
      notifier::Unregister(sub);
      DeregisterOne(nr);
      Remember(other, w);
      *out = other;
      return 0;
    }
    if (!verdict.admit) {
      // The policy does not cache it (eviction.h): handed out as a held
      // orphan, never indexed, deregistered by its last put.
      Stamp(nr);
      const uint64_t gen =
          Region::Gen(nr->word.load(std::memory_order_relaxed));
      w = (gen << Region::kGenShift) | 1;
      nr->word.store(w, std::memory_order_release);
      OrphanLinkLocked(nr);
      DrainAndUnlock();
      notifier::Unregister(sub);
      *out = nr;
      return 0;
    }
    size_t folded = 0;
    while (Region *o = FirstOverlapLocked(plan.start, plan.end)) {
      RetireLocked(o, &victims);
      ++folded;
    }
    if (folded) merges_.fetch_add(folded, std::memory_order_relaxed);
    const uint64_t gen = Region::Gen(nr->word.load(std::memory_order_relaxed));
    w = (gen << Region::kGenShift) | Region::kValid | 1;
    nr->where = Region::kWhereIndex;
    Stamp(nr);  // unconditionally: a recycled slot keeps its old stamp
    nr->word.store(w, std::memory_order_release);
    IndexInsertLocked(nr);
    ClockAppendLocked(nr);
    evict_.Inserted(nr, verdict.hot);
    ++count_;
    bytes_ += plen;
    EvictLocked(&victims, false);
    DrainAndUnlock();
    Remember(nr, w);
    notifier::Unregister(sub);
    DeregisterList(&victims);
    *out = nr;
    return 0;
  }
}

// ---------------------------------------------------------------- blind mode
// The notifier is blind (no source sees every unmap, no external
// declaration): a region that never enters the index. It sits on the orphan
// list (so Destroy finds it) without kValid, so lookups never see it and its
// last put deregisters it (Put -> ReleaseOrphan): max_regions 0 behaviour,
// without even the hits on regions held by another thread.
// Hands out a registered region (counted: CountRegistered) with one
// reference: not valid, never indexed nor found; its put is the last put of
// an invalidated region (ReleaseOrphan deregisters it); on the orphan list so
// that Destroy deregisters it if never put.
void Cache::CountRegistered(uint64_t len) {
  registrations_.fetch_add(1, std::memory_order_relaxed);
  reg_regions_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t now =
      reg_bytes_.fetch_add(len, std::memory_order_relaxed) + len;
  uint64_t peak = peak_bytes_.load(std::memory_order_relaxed);
  while (now > peak && !peak_bytes_.compare_exchange_weak(peak, now)) {
  }
}

void Cache::HandOutUncached(Region *r) {
  LockAndDrain();
  OrphanLinkLocked(r);
  const uint64_t gen = Region::Gen(r->word.load(std::memory_order_relaxed));
  r->word.store((static_cast<uint64_t>(gen) << Region::kGenShift) | 1,
                std::memory_order_release);
  DrainAndUnlock();
}

// Registers [start, end) into nr (owned by the caller, not indexed) and hands
// it out uncached: for a blind notifier, and for memory the event source
// cannot watch (another userfaultfd owns it).
int Cache::RegisterUncached(Region *nr, uintptr_t start, uintptr_t end,
                            unsigned access, Region **out) {
  Registration reg;
  int rc = driver()->Register(reinterpret_cast<void *>(start), end - start,
                              access, &reg);
  if (rc == -ENOMEM || rc == -EAGAIN) {
    // Regions cached before the notifier went blind may still hold pinned
    // memory: give back every unused one, once.
    List victims;
    LockAndDrain();
    EvictLocked(&victims, true);
    DrainAndUnlock();
    DeregisterList(&victims);
    rc = driver()->Register(reinterpret_cast<void *>(start), end - start,
                            access, &reg);
  }
  if (rc) {
    FreeRegion(nr);
    failures_.fetch_add(1, std::memory_order_relaxed);
    return rc;
  }
  CountRegistered(end - start);
  nr->cache = this;
  nr->start = start;
  nr->end = end;
  nr->access = access;
  nr->reg = reg;
  HandOutUncached(nr);
  REGCACHE_LOG(DEBUG, "cache {}: region 0x{:x} len {} registered uncached",
               name(), start, end - start);
  *out = nr;
  return 0;
}

void Cache::EndInFlight(int slot) {
  LockAndDrain();
  inflight_[slot].used = false;
  DrainAndUnlock();
  inflight_done_.fetch_add(1, std::memory_order_release);
  inflight_done_.notify_all();
}

void Cache::Put(Region *r) {
  uint64_t w = r->word.load(std::memory_order_relaxed);
  do {
    if (Region::Refs(w) == 0) {
      DoublePut(r);
      return;
    }
  } while (!r->word.compare_exchange_weak(w, w - 1, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
  // From here r may be evicted and recycled by another thread unless we hold
  // the last reference of an invalidated region (then it is ours to
  // deregister).
  const bool last = Region::Refs(w) == 1;
  if (last && !(w & Region::kValid)) {
    ReleaseOrphan(r);
    return;
  }
  const uint32_t a = attention_.load(std::memory_order_relaxed);
  if ((a & kDead) || (last && (a & kOverLimit))) PutSlow();
}

void Cache::PutSlow() {
  List victims;
  LockAndDrain();
  if (attention_.load(std::memory_order_relaxed) & kOverLimit)
    EvictLocked(&victims, false);
  DrainAndUnlock();
  DeregisterList(&victims);
  ReapDead();
}

void Cache::ReleaseOrphan(Region *r) {
  LockAndDrain();
  const bool parents = r->where == Region::kWhereForked;
  OrphanUnlinkLocked(r);
  DrainAndUnlock();
  if (parents) {
    DropForked(r);  // registered by the parent before fork(): no driver call
  } else {
    DeregisterOne(r);
  }
  ReapDead();
}

void Cache::DoublePut(Region *r) {
#ifndef NDEBUG
  std::fprintf(stderr,
               "[regcache] fatal: regcache_put: region %p of cache %s put more "
               "often than it "
               "was got (double put)\n",
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

int Cache::Flush() {
  List victims;
  LockAndDrain();
  EvictLocked(&victims, true);
  DrainAndUnlock();
  DeregisterList(&victims);
  ReapDead();
  return 0;
}

// ---------------------------------------------------------------- deferred
// deregistration
void Cache::ReapDead() {
  if (!(attention_.load(std::memory_order_acquire) & kDead)) return;
  LockAndDrain();
  List l = dead_;
  dead_ = List();
  attention_.fetch_and(~uint32_t{kDead}, std::memory_order_relaxed);
  DrainAndUnlock();  // may refill dead_ and set kDead again: the next call
                     // takes those
  DeregisterList(&l);
}

void Cache::DeregisterList(List *l) {
  while (Region *r = l->head) {
    l->head = r->next;
    DeregisterOne(r);
  }
  l->n = 0;
}

void Cache::DeregisterOne(Region *r) {
  const size_t len = r->end - r->start;
  driver()->Deregister(r->reg);  // the driver logs its own failures
  deregistrations_.fetch_add(1, std::memory_order_relaxed);
  reg_regions_.fetch_sub(1, std::memory_order_relaxed);
  reg_bytes_.fetch_sub(len, std::memory_order_relaxed);
  r->reg = Registration();
  FreeRegion(r);
}

void Cache::DropForked(Region *r) {
  r->reg = Registration();
  FreeRegion(r);  // the child's copy of the host storage is its own
}

// ---------------------------------------------------------------- fork
void Cache::ForkChildLocked(List *drop) {
  // Ranges that arrived while mu_ was busy concern regions that go now; the
  // ranges themselves belonged to the parent's threads.
  pending_.ResetAfterFork();
  attention_.fetch_and(~uint32_t{kPending}, std::memory_order_relaxed);
  const size_t indexed = count_;
  List gone;
  while (root_ != nullptr) RetireLocked(root_, &gone);
  invalidations_.fetch_add(indexed, std::memory_order_relaxed);
  // Retired unused ones, the parent's dead list, and orphans nobody holds (a
  // parent thread was between its last put and ReleaseOrphan) leave; held
  // orphans stay until their last put, marked so that it skips the driver.
  // All of them stop counting as registrations of this process (orphans
  // marked by an earlier fork already did).
  uint64_t n = 0, bytes = 0;
  auto take = [&](List *l) {
    while (Region *r = l->head) {
      l->head = r->next;
      ++n;
      bytes += r->end - r->start;
      drop->Push(r);
    }
    *l = List();
  };
  take(&gone);
  take(&dead_);
  for (Region *r = orphans_, *next; r != nullptr; r = next) {
    next = r->next;
    if (r->where != Region::kWhereForked) {
      ++n;
      bytes += r->end - r->start;
    }
    if (Region::Refs(r->word.load(std::memory_order_relaxed)) == 0) {
      OrphanUnlinkLocked(r);
      drop->Push(r);
    } else {
      r->where = Region::kWhereForked;
    }
  }
  reg_regions_.fetch_sub(
      std::min<uint64_t>(n, reg_regions_.load(std::memory_order_relaxed)),
      std::memory_order_relaxed);
  reg_bytes_.fetch_sub(
      std::min<uint64_t>(bytes, reg_bytes_.load(std::memory_order_relaxed)),
      std::memory_order_relaxed);
  attention_.fetch_and(~uint32_t{kDead}, std::memory_order_relaxed);
  // Misses in flight on the parent's threads never finish here.
  for (InFlight &f : inflight_) f = {};
  inflight_done_.fetch_add(1, std::memory_order_relaxed);
  lo_.store(UINTPTR_MAX, std::memory_order_relaxed);
  hi_.store(0, std::memory_order_relaxed);
  UpdateOverLimitLocked();
}

// Prepare: the list, then every cache's mu_ in list order, then the slab.
// Bounded: holders of these never block while holding them (nothing under mu_
// allocates, frees, unmaps, calls the driver or the notifier's
// Register/Unregister; callbacks only try-lock mu_), and the forking thread
// holds none of them (fork is not called from inside the cache).
// Set by prepare when the handlers are off for a test (negative controls);
// read by the parent/child handler of the same fork. Tests fork from one
// thread at a time.
bool g_fork_skipped = false;

void Cache::AtforkPrepare() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  g_fork_skipped = notifier::internal::g_atfork_off_for_testing.load(
      std::memory_order_relaxed);
  if (g_fork_skipped) return;
  g_caches_mu.Lock();
  for (Cache *c = g_caches; c != nullptr; c = c->list_next_) c->mu_.Lock();
  TheSlab().ForkLock();
}

void Cache::AtforkParent() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  if (g_fork_skipped) return;
  TheSlab().ForkUnlock();
  for (Cache *c = g_caches; c != nullptr; c = c->list_next_) c->mu_.Unlock();
  g_caches_mu.Unlock();
}

void Cache::AtforkChild() REGCACHE_NO_THREAD_SAFETY_ANALYSIS {
  if (g_fork_skipped) return;
  // Hit counter slots of the parent's other threads are free again.
  g_slot_bits.store(t_state != nullptr && t_state->slot < kSlotsForThreads
                        ? uint64_t{1} << t_state->slot
                        : 0,
                    std::memory_order_relaxed);
  List drop;
  for (Cache *c = g_caches; c != nullptr; c = c->list_next_)
    c->ForkChildLocked(&drop);
  TheSlab().ForkUnlock();
  for (Cache *c = g_caches; c != nullptr; c = c->list_next_) c->mu_.Unlock();
  g_caches_mu.Unlock();
  while (Region *r = drop.head) {
    drop.head = r->next;
    DropForked(r);
  }
}

namespace {
__attribute__((constructor)) void CacheAtforkInit() {
  pthread_atfork(Cache::AtforkPrepare, Cache::AtforkParent, Cache::AtforkChild);
}
}  // namespace

// ---------------------------------------------------------------- notifier
// callbacks
void Cache::OnInvalidateStart(uintptr_t start, size_t len) {
  if (len == 0) return;
  uintptr_t end = start + len;
  if (end < start) end = UINTPTR_MAX;
  // Cheap filter: unrelated munmaps cost two loads and never touch the lock.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (end <= lo_.load(std::memory_order_relaxed) ||
      start >= hi_.load(std::memory_order_relaxed))
    return;
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
  pending_.Add(start, end, &attention_);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (mu_.TryLock()) DrainAndUnlock();
}

void Cache::OnRelease() {
  shutdown_.store(true, std::memory_order_seq_cst);
  if (mu_.TryLock()) {
    DrainPendingLocked();
    InvalidateLocked(0, UINTPTR_MAX);
    DrainAndUnlock();
  } else {
    pending_.Add(0, UINTPTR_MAX, &attention_);
  }
  // Deregistration may allocate and unmap: never from inside an invalidation
  // callback (release may run nested in one if some subscriber unregisters us
  // from there).
  if (t_invalidating == 0) ReapDead();
  MaybePrintStatsOnce();
}

// ---------------------------------------------------------------- stats
void Cache::GetStats(regcache_stats_t *s) {
  std::memset(s, 0, sizeof(*s));
  uint64_t hits = 0;
  for (const auto &slot : hit_slots_)
    hits += slot.n.load(std::memory_order_relaxed);
  {
    MutexLock l(&mu_);
    hits += slow_hits_;
    s->pending = dead_.n + orphan_count_;
  }
  s->pending += static_cast<uint64_t>(pending_.Size());
  s->hits = hits;
  s->misses = misses_.load(std::memory_order_relaxed);
  s->merges = merges_.load(std::memory_order_relaxed);
  s->evictions = evictions_.load(std::memory_order_relaxed);
  s->invalidations = invalidations_.load(std::memory_order_relaxed);
  s->registrations = registrations_.load(std::memory_order_relaxed);
  s->deregistrations = deregistrations_.load(std::memory_order_relaxed);
  s->regions = reg_regions_.load(std::memory_order_relaxed);
  s->bytes = reg_bytes_.load(std::memory_order_relaxed);
  s->retries = retries_.load(std::memory_order_relaxed);
  s->peak_bytes = peak_bytes_.load(std::memory_order_relaxed);
  s->failures = failures_.load(std::memory_order_relaxed);
}

namespace {
std::string FormatStats(const std::string &name, const regcache_stats_t &s) {
  return fmt::format(
      "cache {} stats: hits {} misses {} merges {} evictions {} invalidations "
      "{} "
      "registrations {} deregistrations {} regions {} bytes {} pending {} "
      "retries {} "
      "peak_bytes {} failures {}",
      name, s.hits, s.misses, s.merges, s.evictions, s.invalidations,
      s.registrations, s.deregistrations, s.regions, s.bytes, s.pending,
      s.retries, s.peak_bytes, s.failures);
}
}  // namespace

int Cache::PrintStats(FILE *f) {
  regcache_stats_t s;
  GetStats(&s);
  const std::pair<const char *, uint64_t> rows[] = {
      {"hits", s.hits},
      {"misses", s.misses},
      {"merges", s.merges},
      {"evictions", s.evictions},
      {"invalidations", s.invalidations},
      {"registrations", s.registrations},
      {"deregistrations", s.deregistrations},
      {"regions", s.regions},
      {"bytes", s.bytes},
      {"pending", s.pending},
      {"retries", s.retries},
      {"peak_bytes", s.peak_bytes},
      {"failures", s.failures},
  };
  for (const auto &[k, v] : rows) {
    if (std::fprintf(f, "%s %s %llu\n", name().c_str(), k,
                     static_cast<unsigned long long>(v)) < 0)
      return -EIO;
  }
  return 0;
}

void Cache::MaybePrintStatsOnce() {
  if (!params_.print_stats || stats_printed_.exchange(true)) return;
  regcache_stats_t s;
  GetStats(&s);
  std::string line = FormatStats(name(), s);
  if (log::Enabled(REGCACHE_LOG_INFO)) {
    log::Write(REGCACHE_LOG_INFO, line);
  } else {
    std::fprintf(stderr, "[regcache] %s\n", line.c_str());
  }
}

// ---------------------------------------------------------------- transport
// calls (issue 18): host storage, find, uncached get, invalidate. Kept apart
// from Get/Put: they reuse the index, the orphan list and the insert protocol
// but change none of them.
Region *Cache::AllocRegion() {
  Region *r = TheSlab().Alloc();
  if (r == nullptr || params_.host_data_bytes == 0) return r;
  // Outside mu_ (allocation may unmap and re-enter the notifier). Zeroed: a
  // recycled region must not show the previous host's keys.
  void *h = std::aligned_alloc(64, params_.host_data_bytes);
  if (h == nullptr) {
    TheSlab().Free(r);
    return nullptr;
  }
  std::memset(h, 0, params_.host_data_bytes);
  r->host = h;
  return r;
}

void Cache::FreeRegion(Region *r) {
  void *h = r->host;
  r->host = nullptr;
  TheSlab().Free(r);
  std::free(h);
}

int Cache::Find(uintptr_t addr, size_t len, unsigned access, Region **out) {
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
  Region *r = FindCoveringLocked(addr, end, access);
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

int Cache::GetUncached(uintptr_t addr, size_t len, unsigned access,
                       Region **out) {
  if (notifier::InRange()) return -EDEADLK;
  ReapDead();
  if (shutdown_.load(std::memory_order_acquire)) return -ESHUTDOWN;
  Driver *const d = driver();
  const uintptr_t start = PageDown(addr);
  const uintptr_t end = PageUp(addr + len);
  const size_t plen = end - start;
  if (plen > d->MaxRegionBytes()) {
    REGCACHE_LOG(ERROR,
                 "cache {}: region 0x{:x} len {} exceeds the driver's max {}",
                 name(), addr, len, d->MaxRegionBytes());
    return -EINVAL;
  }
  Region *nr = AllocRegion();
  if (nr == nullptr) {
    failures_.fetch_add(1, std::memory_order_relaxed);
    return -ENOMEM;
  }
  bool evicted_all = false;
  // Bounded like the insert path: each retry means the memory changed while it
  // was being registered.
  for (int retries = 0;; ++retries) {
    notifier::Subscription *sub = nullptr;
    int rc = notifier::Register(&kRangeOps, nullptr, start, plen, &sub);
    if (rc == -EBUSY)  // the source cannot watch it: register it all the same
      return RegisterUncached(nr, start, end, access, out);
    if (rc == 0) {
      const uint64_t seq = notifier::ReadBegin(sub);
      rc = d->Register(reinterpret_cast<void *>(start), plen, access, &nr->reg);
      const bool changed = rc == 0 && notifier::ReadRetry(sub, seq);
      notifier::Unregister(sub);
      if (changed) {
        d->Deregister(nr->reg);
        nr->reg = Registration();
        retries_.fetch_add(1, std::memory_order_relaxed);
        if (retries + 1 < kMaxInsertRetries) continue;
        rc = -EAGAIN;
      }
    }
    if (rc == 0) break;
    if ((rc == -ENOMEM || rc == -EAGAIN) && !evicted_all &&
        retries + 1 < kMaxInsertRetries) {
      // Pinned-memory or device limit: unused cached registrations go, once.
      evicted_all = true;
      Flush();
      continue;
    }
    FreeRegion(nr);
    failures_.fetch_add(1, std::memory_order_relaxed);
    return rc;
  }
  CountRegistered(plen);
  nr->cache = this;
  nr->start = start;
  nr->end = end;
  nr->access = access;
  HandOutUncached(nr);
  *out = nr;
  return 0;
}

int Cache::Invalidate(uintptr_t addr, size_t len) {
  LockAndDrain();
  const size_t before = count_;
  InvalidateLocked(addr, addr + len);  // page-aligns; bumps generations
  // Misses in flight over the range registered before this call: they retry
  // instead of publishing a registration the caller has just revoked.
  ++revokes_;
  const uintptr_t lo = PageDown(addr), hi = PageUp(addr + len);
  for (InFlight &f : inflight_)
    if (f.used && f.start < hi && lo < f.end) f.revoked = true;
  const int revoked = static_cast<int>(before - count_);
  DrainAndUnlock();
  // Deregistration must not run inside a memory-event callback (or between
  // the thread's own unmap bracket): the next cache call reaps them then.
  if (!notifier::InRange()) ReapDead();
  return revoked;
}

}  // namespace regcache::core

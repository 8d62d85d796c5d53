// SPDX-License-Identifier: BSD-3-Clause
// drivers/fabric/fi_monitor.cc - libregcache-fi-monitor.so: regcache's notifier
// as libfabric's imported memory monitor (contract: regcache/fi_monitor.h).
//
// Uses regcache's public C API only (libregcache.so), so it stays a separate,
// optional library that a program preloads or links.
//
// How libfabric 1.17 drives a monitor (prov/util/src/util_mem_monitor.c,
// util_mr_cache.c): start when the first MR cache is added, stop after the
// last; subscribe(addr, len) under its mm_lock after an entry was registered
// and inserted; valid(addr, len) under mm_lock on every cache hit (false: the
// entry is dropped and re-registered); unsubscribe is never called by 1.17's
// cache ("we remain subscribed"), so intervals are reference counted, deduped
// and reclaimed here once invalidated. import_ops->notify takes libfabric's
// mm_list_rwlock and mm_lock and uncaches every overlapping entry.
//
// Lock rule: mu_ guards the interval set. It is never held while calling into
// libfabric, allocating or freeing (munmap callbacks take it, and a free under
// it could re-enter the callback on the same thread). Interval nodes are
// allocated before taking it and freed after releasing it (std::multimap node
// handles), so the callback's critical section is a bounded scan. Deadlock
// freedom with libfabric: subscribe/valid run under mm_lock and take mu_ only;
// the callback takes mu_, releases it, then takes mm_lock (inside notify):
// no cycle.
#include <rdma/fabric.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext.h>
#include <regcache/fi_monitor.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include <unistd.h>

#include "regcache/thread_annotations.h"

namespace {

struct Interval {
  uintptr_t end;
  uint64_t refs;  // subscribe calls not yet matched by an unsubscribe
  bool stale;     // an invalidation overlapped it since it was subscribed
};
using IntervalMap = std::multimap<uintptr_t, Interval>;  // by start

struct Monitor {
  // The object libfabric sees. fid.context/ops and import_ops are libfabric's
  // (set by ofi_monitor_import).
  fid_mem_monitor fid{};
  fi_ops_mem_monitor ops{};

  regcache::Mutex mu;
  IntervalMap live REGCACHE_GUARDED_BY(mu);
  IntervalMap graveyard REGCACHE_GUARDED_BY(mu);  // nodes to free outside mu
  size_t stale REGCACHE_GUARDED_BY(mu) = 0;       // stale nodes still in `live`
  uintptr_t max_len REGCACHE_GUARDED_BY(mu) = 0;  // longest interval

  regcache::Mutex import_mu;  // serializes Import (never taken in callbacks)
  regcache_notifier_t *notifier REGCACHE_GUARDED_BY(import_mu) = nullptr;
  std::atomic<bool> imported{false}, running{false}, drop{false};
  std::atomic<uint64_t> delivered{0}, dropped{0}, subscribes{0},
      unsubscribes{0}, invalid{0};
};

// Leaked on purpose: notifier callbacks and libfabric's cleanup may run during
// exit, after static destructors.
Monitor &M() {
  static Monitor *m = new Monitor;
  return *m;
}

// There is one monitor per process (libfabric imports one): f is always &M().fid.
Monitor *Of(fid_mem_monitor *) { return &M(); }

// Moves stale intervals to the graveyard when they are many (each sweep is
// O(n); n is bounded by libfabric's cache size, 1024 entries by default).
void SweepLocked(Monitor *m) REGCACHE_REQUIRES(m->mu) {
  if (m->stale < 64 && m->stale * 2 < m->live.size()) return;
  for (auto it = m->live.begin(); it != m->live.end();) {
    auto next = std::next(it);
    if (it->second.stale) m->graveyard.insert(m->live.extract(it));
    it = next;
  }
  m->stale = 0;
}

// Frees the graveyard's nodes outside mu.
void FreeGraveyard(Monitor *m) {
  IntervalMap dead;
  {
    regcache::MutexLock g(&m->mu);
    dead.swap(m->graveyard);
  }
}

IntervalMap::iterator FindExactLocked(Monitor *m, uintptr_t start,
                                      uintptr_t end) REGCACHE_REQUIRES(m->mu) {
  auto [lo, hi] = m->live.equal_range(start);
  for (auto it = lo; it != hi; ++it)
    if (it->second.end == end && !it->second.stale) return it;
  return m->live.end();
}

// ---- export_ops: called by libfabric.
int Start(fid_mem_monitor *f) {
  Of(f)->running.store(true, std::memory_order_release);
  return 0;
}

void Stop(fid_mem_monitor *f) {
  Of(f)->running.store(false, std::memory_order_release);
}

int Subscribe(fid_mem_monitor *f, const void *addr, size_t len) {
  Monitor *m = Of(f);
  m->subscribes.fetch_add(1, std::memory_order_relaxed);
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  uintptr_t end = start + len;
  if (end < start) end = UINTPTR_MAX;
  IntervalMap fresh;  // the node, allocated before taking mu
  fresh.emplace(start, Interval{end, 1, false});
  {
    regcache::MutexLock g(&m->mu);
    auto it = FindExactLocked(m, start, end);
    if (it != m->live.end()) {
      ++it->second.refs;  // same range again: 1.17 re-subscribes per entry
    } else {
      m->live.insert(fresh.extract(fresh.begin()));
      if (end - start > m->max_len) m->max_len = end - start;
    }
    SweepLocked(m);
  }
  FreeGraveyard(m);
  return 0;  // `fresh` (empty or unused node) is freed here, outside mu
}

void Unsubscribe(fid_mem_monitor *f, const void *addr, size_t len) {
  Monitor *m = Of(f);
  m->unsubscribes.fetch_add(1, std::memory_order_relaxed);
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  uintptr_t end = start + len;
  if (end < start) end = UINTPTR_MAX;
  {
    regcache::MutexLock g(&m->mu);
    auto it = FindExactLocked(m, start, end);
    if (it != m->live.end() && --it->second.refs == 0)
      m->graveyard.insert(m->live.extract(it));
  }
  // May run inside our own invalidation callback (libfabric unsubscribes
  // while handling notify in other versions): freeing there is tolerated by
  // the notifier's callback rules; 1.17 never does it.
  FreeGraveyard(m);
}

// The sequence check: true while no invalidation overlapped the interval
// since libfabric subscribed it. An interval that is gone (reclaimed after an
// invalidation) is not valid either.
bool Valid(fid_mem_monitor *f, const void *addr, size_t len) {
  Monitor *m = Of(f);
  if (m->drop.load(std::memory_order_relaxed)) return true;  // blind (tests)
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  uintptr_t end = start + len;
  if (end < start) end = UINTPTR_MAX;
  bool ok;
  {
    regcache::MutexLock g(&m->mu);
    ok = FindExactLocked(m, start, end) != m->live.end();
  }
  if (!ok) m->invalid.fetch_add(1, std::memory_order_relaxed);
  return ok;
}

// ---- regcache notifier callback: before the memory in [addr, addr+len)
// changes (patch and explicit sources; after it with uffd).
void OnInvalidateStart(void *arg, const void *addr, size_t len) {
  auto *m = static_cast<Monitor *>(arg);
  if (len == 0 || !m->running.load(std::memory_order_acquire)) return;
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  uintptr_t end = start + len;
  if (end < start) end = UINTPTR_MAX;
  bool hit = false;
  {
    regcache::MutexLock g(&m->mu);
    if (m->live.empty()) return;
    const uintptr_t from = start > m->max_len ? start - m->max_len : 0;
    for (auto it = m->live.lower_bound(from);
         it != m->live.end() && it->first < end; ++it) {
      if (it->second.end > start) {
        if (!it->second.stale) ++m->stale;
        it->second.stale = true;
        hit = true;
      }
    }
  }
  if (!hit) return;
  if (m->drop.load(std::memory_order_relaxed)) {
    m->dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // import_ops is set by libfabric at import and never changes afterwards.
  if (m->fid.import_ops && m->fid.import_ops->notify) {
    m->fid.import_ops->notify(&m->fid, addr, len);
    m->delivered.fetch_add(1, std::memory_order_relaxed);
  }
}

void OnRelease(void *) {}

const regcache_notifier_ops_t kOps = {OnInvalidateStart, nullptr, OnRelease};

bool EnvYes(const char *name) {
  const char *v = getenv(name);
  return v && (!strcmp(v, "1") || !strcmp(v, "y") || !strcmp(v, "yes") ||
               !strcmp(v, "on") || !strcmp(v, "true"));
}

void PrintStatsAtExit() {
  regcache_fi_monitor_stats_t s;
  regcache_fi_monitor_stats(&s);
  fprintf(stderr,
          "[regcache] fi-monitor stats: pid %d imported %d source %s delivered "
          "%llu dropped %llu subscribes %llu unsubscribes %llu invalid %llu "
          "intervals %llu\n",
          static_cast<int>(getpid()), s.imported, regcache_notifier_source(),
          static_cast<unsigned long long>(s.delivered),
          static_cast<unsigned long long>(s.dropped),
          static_cast<unsigned long long>(s.subscribes),
          static_cast<unsigned long long>(s.unsubscribes),
          static_cast<unsigned long long>(s.invalid),
          static_cast<unsigned long long>(s.intervals));
}

}  // namespace

extern "C" {

REGCACHE_FI_MONITOR_API int regcache_fi_monitor_import(void) {
  Monitor *m = &M();
  regcache::MutexLock g(&m->import_mu);
  if (m->imported.load(std::memory_order_acquire)) return 0;
  m->drop.store(EnvYes("REGCACHE_FI_MONITOR_DROP"), std::memory_order_relaxed);
  if (m->notifier == nullptr) {
    // Before the import: once libfabric has it, events must already flow.
    int rc = regcache_notifier_register(&kOps, m, &m->notifier);
    if (rc) return rc;
  }
  m->ops.size = sizeof(m->ops);
  m->ops.start = Start;
  m->ops.stop = Stop;
  m->ops.subscribe = Subscribe;
  m->ops.unsubscribe = Unsubscribe;
  m->ops.valid = Valid;
  m->fid.fid.fclass = FI_CLASS_MEM_MONITOR;
  m->fid.export_ops = &m->ops;
  int rc = fi_import(FI_VERSION(1, 13), "mr_cache", nullptr, 0, 0, &m->fid.fid,
                     nullptr);
  if (rc) return rc;  // -FI_EBUSY == -EBUSY, -FI_ENOSYS == -ENOSYS
  m->imported.store(true, std::memory_order_release);
  static std::atomic<bool> registered{false};
  if (EnvYes("REGCACHE_STATS") && !registered.exchange(true))
    atexit(PrintStatsAtExit);
  return 0;
}

REGCACHE_FI_MONITOR_API int regcache_fi_monitor_stats(
    regcache_fi_monitor_stats_t *s) {
  if (s == nullptr) return -EINVAL;
  Monitor *m = &M();
  std::memset(s, 0, sizeof(*s));
  s->delivered = m->delivered.load(std::memory_order_relaxed);
  s->dropped = m->dropped.load(std::memory_order_relaxed);
  s->subscribes = m->subscribes.load(std::memory_order_relaxed);
  s->unsubscribes = m->unsubscribes.load(std::memory_order_relaxed);
  s->invalid = m->invalid.load(std::memory_order_relaxed);
  s->imported = m->imported.load(std::memory_order_relaxed) ? 1 : 0;
  s->running = m->running.load(std::memory_order_relaxed) ? 1 : 0;
  regcache::MutexLock g(&m->mu);
  for (const auto &kv : m->live) s->intervals += kv.second.stale ? 0 : 1;
  return 0;
}

REGCACHE_FI_MONITOR_API void *regcache_fi_monitor_fid(void) { return &M().fid; }

}  // extern "C"

namespace {
// LD_PRELOAD=libregcache-fi-monitor.so: import before the program (or its MPI)
// opens any libfabric domain. Only when preloaded, so that a program linking the
// library keeps control of when it imports.
__attribute__((constructor)) void PreloadImport() {
  const char *pre = getenv("LD_PRELOAD");
  if (pre == nullptr || strstr(pre, "regcache-fi-monitor") == nullptr) return;
  // Open MPI's memory patcher (opened in MPI_Init) overwrites libc's munmap
  // entry, where regcache's patch source has its hook, and calls the syscall
  // itself: regcache would only notice at its next own registration. Keep it
  // out unless the user decided otherwise (then see docs/integrating.md).
  const char *keep = getenv("REGCACHE_FI_MONITOR_OMPI_PATCHER");
  if (!(keep && !strcmp(keep, "keep")))
    setenv("OMPI_MCA_memory", "^patcher", /*overwrite=*/0);
  int rc = regcache_fi_monitor_import();
  if (rc)
    fprintf(stderr,
            "[regcache] fi-monitor: import into libfabric failed: %s (%d); "
            "libfabric keeps its own monitor\n",
            regcache_strerror(rc), rc);
}
}  // namespace

/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/uffd_internal.h - what the units of the uffd source share: the
// context and monitor state with its lock, the remove-grace table's lock, and
// the services one unit gives another. The design (what a subscription means
// here, what is refused, REMOVE before the zap, the monitor, EXACT LOOKUPS,
// fork) is at the top of uffd.cc.
//
// Units: uffd.cc (install / uninstall / watch / lookups, fork, stats),
// uffd_monitor.cc (the context, the monitor threads, reading and dispatching
// events), uffd_watch.cc (registering mappings with the context, refusing
// what uffd cannot see), uffd_remove_grace.cc (recent REMOVE events).
#ifndef REGCACHE_NOTIFIER_UFFD_INTERNAL_H_
#define REGCACHE_NOTIFIER_UFFD_INTERNAL_H_

#include <pthread.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "notifier/sources.h"

// The uffd source's internals live in an inline namespace: found by
// unqualified lookup from regcache::notifier::sources (the bodies read as when
// they were one file), with symbols of their own (the patch source's units
// have theirs: both have a g_mu).
namespace regcache::notifier::sources {
inline namespace uffd_impl {

#pragma GCC visibility push(hidden)

constexpr int kThreads = 2;

// Lock rule: g_mu serializes install, uninstall, restart and watching. The
// monitor threads never take it. Never held while waiting for the monitor.
extern std::mutex g_mu;
// guarded by g_mu (each monitor thread reads its copy)
extern int g_fd;
extern int g_stop_fd;  // guarded by g_mu
extern pthread_t g_threads[kThreads];
extern int g_nthreads;    // guarded by g_mu
extern bool g_installed;  // guarded by g_mu
// The context for lock-free probes: g_fd while the monitor runs, -1 otherwise
// (before install, after uninstall, in a fork child until it restarts).
extern std::atomic<int> g_probe_fd;
// Set by the fork child handler (the source is installed but has no context in
// this process); cleared by a successful restart. Read without g_mu by lookups.
extern std::atomic<bool> g_need_restart;
// Counters (UffdGetStats), relaxed.
extern std::atomic<uint64_t> g_events;
extern std::atomic<uint64_t> g_refused;

// Lock rule: g_recent_mu is a leaf lock held for one scan of the table. Taken
// by whoever dispatches (monitor threads, a lookup draining the queue) and by
// Watch (under g_mu). Nothing else is taken or waited for while it is held.
extern std::mutex g_recent_mu;

inline long NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

// Recent REMOVE events (uffd_remove_grace.cc).
// Remembers [lo, hi) as removed now. Before its dispatch (REMOVE IS BEFORE
// THE ZAP).
void RememberRemove(uintptr_t lo, uintptr_t hi);
// True if [lo, hi) overlaps a REMOVE dispatched less than kRemoveGraceNs ago.
bool OverlapsRecentRemove(uintptr_t lo, uintptr_t hi);

// The monitor (uffd_monitor.cc).
// Reads and dispatches what is queued now, inside a hold (the monitor's inner
// loop). Also run by a lookup that waits for the kernel (UffdSyncForLookup).
void DrainQueued(int fd);
// REQUIRES g_mu. Opens a context and starts the monitor threads / stops them
// and closes it.
int StartLocked();
void StopLocked();

// Watching (uffd_watch.cc).
// REQUIRES g_mu. Watches the whole VMAs under [start, end) if all of it is
// mapped and may be watched. 0, -EFAULT (a hole: nothing is watched), -EBUSY
// (a mapping cannot be watched, or is refused: nothing is watched), -ENOMEM.
int WatchLocked(uintptr_t start, uintptr_t end);
// REQUIRES g_mu. Watches a live interval again in a fork child
// (internal::ForEachLiveInterval's callback); logs what it cannot watch.
void RewatchOne(void *, uintptr_t start, uintptr_t end);

#pragma GCC visibility pop

}  // namespace uffd_impl
}  // namespace regcache::notifier::sources

#endif  // REGCACHE_NOTIFIER_UFFD_INTERNAL_H_

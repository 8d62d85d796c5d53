// SPDX-License-Identifier: BSD-3-Clause
// notifier/uffd.cc - the userfaultfd event source.
//
// One userfaultfd context per process, features EVENT_UNMAP | EVENT_REMOVE |
// EVENT_REMAP (+ WP_ASYNC when the kernel has it, which lets file-backed and
// SysV mappings be registered). Never EVENT_FORK (fork would block until the
// event is read, and the child's unmaps would block on a context nobody reads).
// Mappings are registered in WP mode with nothing write-protected: MISSING mode
// would send first-touch faults to the monitor, break THP and make kernel-mode
// access (GUP in ibv_reg_mr) fail under USER_MODE_ONLY. Whole VMAs are
// registered, never sub-ranges (sub-ranges split VMAs, and mremap of a split
// mapping fails with EFAULT). UFFD_USER_MODE_ONLY is used when not root (or on
// EPERM).
//
// WHAT A SUBSCRIPTION MEANS HERE. The kernel reports events only for registered
// (watched) mappings. An interval subscription watches the mappings under its
// interval, and they stay watched after the subscription ends (until they are
// unmapped): the cache's registration outlives its temporary interval
// subscription, and its whole-space subscription still has to hear about that
// memory. A whole-space subscriber therefore sees every event of every watched
// mapping, not every unmap of the process. Memory that cannot be watched
// (another userfaultfd owns it, or the kernel cannot watch its type) makes the
// interval Register fail with -EBUSY; the cache registers it uncached.
//
// WHAT UFFD CANNOT SEE IS REFUSED, NOT CACHED. The kernel sends no event when
// the pages of a file are dropped through the file (fallocate PUNCH_HOLE and
// friends, truncate: from this or any other process, or a fork child's
// MADV_REMOVE of shared anonymous memory), nor for shmdt / shmat(SHM_REMAP).
// Those zap every mapping of the file: shared ones, and private ones too
// (truncate zaps private copies). So Watch refuses (-EBUSY: registered
// uncached) any mapping that is shared (MAP_SHARED file, memfd, shmem, SysV)
// or backed by a file (MAP_PRIVATE of a file, MAP_HUGETLB): only private
// anonymous memory is cached under uffd.
//
// REMOVE IS BEFORE THE ZAP, BY AN UNBOUNDED TIME. madvise(DONTNEED) queues
// REMOVE, sleeps until our read(), decrements mmap_changing, retakes the mmap
// lock and only then zaps. A registration made between our dispatch of REMOVE
// and that zap pins pages about to be zapped, and nothing the kernel exposes
// says when the zap has happened. So a REMOVE is remembered (g_recent, with
// its time) before it is dispatched, and for kRemoveGraceNs afterwards Watch
// refuses memory that overlaps it: a get racing the program's own madvise
// registers uncached (correct for that one use; deregistered at its put),
// later gets cache again. The ordering that makes this complete: the record
// is stored before BeginRange moves the sequences. A miss reads its sequence,
// then watches (ReadBegin), then registers, then checks the sequence: if its
// watch missed the record, the record (and the dispatch after it) came later,
// so the sequence moved and the miss retries, and its retry sees the record.
// Inexact only if the madvising thread, woken by our read, waits more than
// kRemoveGraceNs for a CPU before it zaps.
//
// THE MONITOR. Two threads run the same loop: poll() -> EnterHold() (the
// in-flight window: registrations made from now on wait in ReadBegin) ->
// non-blocking read() of up to 16 events -> start/end for each -> ExitHold().
// The unmapping thread is released by read(), i.e. inside the hold. Two
// threads, because a callback running on a monitor thread that itself unmaps
// watched memory blocks until somebody reads that event: the other thread does
// (one level of such nesting is tolerated; docs/notifier.md).
//
// EXACT LOOKUPS (closing "the window"). UNMAP is queued after the kernel has
// removed the mapping, so between the removal and our start callback another
// thread may map the same address again and look the old registration up.
// The kernel itself tracks that interval: userfaultfd_unmap_prep() (and
// mremap_userfaultfd_prep(), userfaultfd_remove()) increments the context's
// mmap_changing under the mmap write lock BEFORE the mapping changes, and
// userfaultfd_event_wait_completion() decrements it in the unmapping thread
// only after a read() has dequeued the event. UFFDIO_ZEROPAGE checks
// mmap_changing first thing and returns -EAGAIN while it is non-zero (Linux
// 4.18+, unchanged through 6.18; checked in 6.1 and on this 6.18 host by
// uffd_exact_test's KernelProbeContract). Probe() asks exactly that, with a
// valid argument of length 0, so that when nothing is changing the next check
// (validate_range: len == 0) fails with -EINVAL and nothing is done. (An
// invalid pointer does not work: since "fix uninitialized output field for
// -EAGAIN race" the -EAGAIN path writes to the argument and fails with -EFAULT
// too.)
//
// A lookup (notifier::FastPathOk / SyncForLookup) that wants to trust its index
// probes FIRST and reads g_async_in_flight SECOND. Why that is exact: let U be
// an unmap of watched memory whose mapping removal happened before the lookup
// (e.g. the lookup's thread mapped the recycled address). U's prep came before
// the removal, hence before the probe. Either the probe sees mmap_changing != 0
// (we wait and probe again), or it sees U's decrement, which follows the read()
// that dequeued U's event, which a monitor thread made inside its hold, after
// EnterHold() incremented g_async_in_flight. So the load that follows the
// probe sees that increment or the later decrement of ExitHold(), which comes
// after U was dispatched. Non-zero: wait for the monitor (WaitAsyncEvents);
// zero: U's start callbacks have run and the index no longer holds U's
// registrations. The kernel's side of the chain is ordered by the event queue
// lock and the wake-up (full barriers); ours by an acquire fence after the
// ioctl (x86: loads are not reordered with loads; arm64: dmb ishld).
//
// Bound of the wait: each change holds mmap_changing for as long as the
// monitor takes to read its event. Only a continuous stream of overlapping
// changes of watched memory on other threads can keep it non-zero; after
// kProbeDeadline of that the lookup invalidates every subscriber's ranges
// (one whole-space range, as for an overwritten patch): exact, because every
// registration made before it is gone, at the cost of the cache's contents.
//
// fork: a child that used the inherited fd would operate on the parent's mm
// (measured), and the child's mappings are not watched by anyone (the kernel
// drops uffd registrations at fork without EVENT_FORK). The atfork child
// handler forgets the context; the next lookup (SyncForLookup) or interval
// Register in the child creates a new one (outside any hook), starts new
// monitor threads and watches again the intervals of the subscriptions that
// are live (procmap reopens /proc/self/maps for the child by itself).
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/procmap.h"
#include "notifier/sources.h"
#include "notifier/uffd_internal.h"

namespace regcache::notifier::sources {

std::atomic<uint32_t> g_uffd_test_off{0};
std::atomic<void (*)(uintptr_t, uintptr_t)> g_uffd_after_remove_for_testing{
    nullptr};

inline namespace uffd_impl {

// The state uffd_internal.h declares (its lock rules are there).
std::mutex g_mu;
int g_fd = -1;
int g_stop_fd = -1;
pthread_t g_threads[kThreads];
int g_nthreads = 0;
bool g_installed = false;
std::atomic<int> g_probe_fd{-1};
std::atomic<bool> g_need_restart{false};
std::atomic<uint64_t> g_events{0};
std::atomic<uint64_t> g_refused{0};

}  // namespace uffd_impl

namespace {

// How long a lookup waits for the kernel to stop changing watched mappings
// before it invalidates everything instead (see "Bound of the wait").
// Measured on the 2-vCPU VM (load average 10-14 from other builds), 4 threads
// unmapping watched memory in a loop: waits up to 8-32 ms (the unmapping
// thread, woken by the read, waits for a CPU before it decrements).
constexpr long kProbeDeadlineNs = 50L * 1000 * 1000;

bool g_atfork = false;            // guarded by g_mu
std::atomic<bool> g_exact{true};  // tests: false brings the window back
std::atomic<bool> g_restart_failed_logged{false};
std::atomic<bool> g_deadline_logged{false};
std::atomic<uint64_t> g_busy_probes{0};
std::atomic<uint64_t> g_flushes{0};
std::atomic<uint64_t> g_restarts{0};

// 0: no watched mapping is changing; -EAGAIN: one is (its event is not read
// yet); other -errno: the probe cannot tell (no context). Keeps errno.
int Probe(int fd) {
  if (fd < 0) return -EBADF;
  const int saved = errno;
  uffdio_zeropage z{};  // len 0: -EINVAL right after the mmap_changing check
  int rc = ioctl(fd, UFFDIO_ZEROPAGE, &z) == 0 ? -EIO
           : errno == EINVAL                   ? 0
                                               : -errno;
  errno = saved;
  // The kernel's read of mmap_changing before our next load (of
  // g_async_in_flight). A compiler barrier on x86, dmb ishld on arm64.
  std::atomic_thread_fence(std::memory_order_acquire);
  return rc;
}

void AtforkChild() {
  // Only this thread exists in the child. Do not touch the inherited context
  // (it is the parent's mm); forget it and start afresh on next use. Raw
  // closes only: async-signal-safe.
  if (g_fd >= 0) close(g_fd);
  if (g_stop_fd >= 0) close(g_stop_fd);
  g_fd = g_stop_fd = -1;
  g_nthreads = 0;
  g_probe_fd.store(-1, std::memory_order_relaxed);
  // The monitor threads did not survive: a hold they had open never closes.
  // Keep kAsyncProbe so that lookups take the slow path, which restarts us.
  internal::g_async_in_flight.store(g_installed ? internal::kAsyncProbe : 0,
                                    std::memory_order_relaxed);
  if (g_installed) g_need_restart.store(true, std::memory_order_relaxed);
  new (&g_mu) std::mutex();         // the parent's holder does not exist here
  new (&g_recent_mu) std::mutex();  // nor does a dispatcher holding this one
}

// REQUIRES g_mu. In a fork child: a context, monitor threads, and the live
// interval subscriptions watched again.
int RestartLocked() {
  if (!g_need_restart.load(std::memory_order_relaxed)) return 0;
  int rc = StartLocked();
  if (rc != 0) {
    if (!g_restart_failed_logged.exchange(true)) {
      internal::Logf(internal::kLogError,
                     "notifier: uffd: cannot start the monitor in this fork "
                     "child (%s): memory is registered uncached",
                     strerror(-rc));
    }
    return rc;
  }
  g_restarts.fetch_add(1, std::memory_order_relaxed);
  procmap::Init();
  internal::ForEachLiveInterval(RewatchOne, nullptr);
  return 0;
}

// An invalidation of everything (the deadline fallback): every registration
// made before it is gone.
void InvalidateEverything() {
  g_flushes.fetch_add(1, std::memory_order_relaxed);
  internal::Frame f;
  internal::BeginRange(&f, 0, UINTPTR_MAX);
  internal::EndRange(&f);
}

}  // namespace

int UffdInstall() {
#if REGCACHE_UNDER_ASAN
  internal::Logf(internal::kLogWarn,
                 "notifier: uffd source unavailable under AddressSanitizer: "
                 "munmap/madvise of watched memory hangs waiting for the "
                 "monitor (observed in tests/notifier under the asan preset)");
  return -ENOSYS;
#endif
#if REGCACHE_UNDER_TSAN
  internal::Logf(internal::kLogWarn,
                 "notifier: uffd source unavailable under ThreadSanitizer: the "
                 "sanitizer's munmap/madvise interceptors hold runtime locks "
                 "across the syscall that the monitor thread needs to read the "
                 "event (munmap hangs observed)");
  return -ENOSYS;
#endif
  std::lock_guard<std::mutex> g(g_mu);
  if (g_installed) return 0;
  int rc = StartLocked();
  if (rc != 0) return rc;
  if (!g_atfork) {
    pthread_atfork(nullptr, nullptr, AtforkChild);
    g_atfork = true;
  }
  g_installed = true;
  // From now on every lookup probes before it trusts its index.
  internal::g_async_in_flight.fetch_or(internal::kAsyncProbe,
                                       std::memory_order_seq_cst);
  return 0;
}

void UffdUninstall() {
  std::lock_guard<std::mutex> g(g_mu);
  if (!g_installed) return;
  internal::g_async_in_flight.fetch_and(~internal::kAsyncProbe,
                                        std::memory_order_seq_cst);
  StopLocked();
  g_installed = false;
  g_need_restart.store(false, std::memory_order_relaxed);
}

int UffdWatch(uintptr_t start, uintptr_t end) {
  std::lock_guard<std::mutex> g(g_mu);
  if (!g_installed) return -ENOSYS;
  // A fork child that cannot have a monitor cannot see changes: -EBUSY makes
  // the cache register uncached instead of caching blind.
  if (RestartLocked() != 0) return -EBUSY;
  int rc = WatchLocked(start, end);
  if (rc == 0 && OverlapsRecentRemove(start, end)) {
    // A madvise of this memory may not have zapped yet (REMOVE IS BEFORE THE
    // ZAP): register it uncached. Watched all the same (harmless).
    g_refused.fetch_add(1, std::memory_order_relaxed);
    return -EBUSY;
  }
  return rc;
}

void UffdSyncForLookup() {
  if ((internal::g_async_in_flight.load(std::memory_order_seq_cst) &
       internal::kAsyncProbe) == 0)
    return;  // uffd not installed
  // A monitor thread (inside its hold) or a callback would wait for itself.
  if (InRange()) return;
  if (g_need_restart.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_installed && RestartLocked() != 0) {
      // No monitor in this child: nothing cached can be trusted.
      InvalidateEverything();
      return;
    }
  }
  if (!g_exact.load(std::memory_order_relaxed)) return;
  // Wait until no watched mapping is changing (reason: its event is not read
  // yet, and the index may still hold its registrations). Bound: the monitor
  // reads each event promptly; kProbeDeadlineNs against a continuous stream of
  // changes by other threads, then InvalidateEverything().
  long deadline = 0;
  for (unsigned i = 0;; ++i) {
    int rc = Probe(g_probe_fd.load(std::memory_order_acquire));
    if (rc == 0) return;  // SyncForLookup waits for the monitor next
    if (rc != -EAGAIN) {
      // The context is gone (uninstalled concurrently): nothing can be told.
      InvalidateEverything();
      return;
    }
    g_busy_probes.fetch_add(1, std::memory_order_relaxed);
    if (i == 0) {
      deadline = NowNs() + kProbeDeadlineNs;
    } else if (NowNs() > deadline) {
      if (!g_deadline_logged.exchange(true)) {
        internal::Logf(internal::kLogInfo,
                       "notifier: uffd: watched mappings kept changing for "
                       "%ld ms; invalidating every registration instead of "
                       "waiting (logged once)",
                       kProbeDeadlineNs / 1000000);
      }
      InvalidateEverything();
      return;
    }
    // Read what is queued ourselves (no need to wait until a monitor thread
    // runs); the unmapping thread decrements after that read: let it run.
    // Sleep soon rather than yield: on 2 vCPUs, 4 threads unmapping, 16
    // yields before sleeping gave 112 deadline fallbacks in 16 000 gets,
    // 4 yields gave 2-30 (the yielding waiters took the CPU the woken
    // unmapping threads needed to decrement).
    pollfd pf = {g_probe_fd.load(std::memory_order_acquire), POLLIN, 0};
    if (pf.fd >= 0 && poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN)) {
      DrainQueued(pf.fd);
    } else if (i < 4) {
      sched_yield();
    } else {
      timespec ts = {0, i < 32 ? 20 * 1000L : 200 * 1000L};
      nanosleep(&ts, nullptr);
    }
  }
}

void UffdSetExactForTesting(bool on) {
  g_exact.store(on, std::memory_order_seq_cst);
}

UffdStats UffdGetStats() {
  UffdStats s;
  s.events = g_events.load(std::memory_order_relaxed);
  s.busy_probes = g_busy_probes.load(std::memory_order_relaxed);
  s.flushes = g_flushes.load(std::memory_order_relaxed);
  s.restarts = g_restarts.load(std::memory_order_relaxed);
  s.refused = g_refused.load(std::memory_order_relaxed);
  return s;
}

int UffdProbeForTesting() {
  return Probe(g_probe_fd.load(std::memory_order_acquire));
}

const SourceOps kUffdOps = {Source::kUffd, "uffd",    UffdInstall,
                            UffdUninstall, UffdWatch, UffdSyncForLookup,
                            nullptr,       nullptr};

}  // namespace regcache::notifier::sources

namespace regcache::notifier::internal {

// FastPathOk()'s out-of-line half: g_async_in_flight was non-zero (uffd is
// installed, or a hold is open). Probe first, load second (EXACT LOOKUPS).
bool AsyncFastPathOk() {
  uint32_t w = g_async_in_flight.load(std::memory_order_seq_cst);
  if ((w & kAsyncProbe) && sources::g_exact.load(std::memory_order_relaxed)) {
    if (sources::Probe(sources::g_probe_fd.load(std::memory_order_relaxed)) !=
        0)
      return false;
    w = g_async_in_flight.load(std::memory_order_seq_cst);
  }
  return (w & ~kAsyncProbe) == 0 && PatchIntact();
}

}  // namespace regcache::notifier::internal

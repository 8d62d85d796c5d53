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
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/procmap.h"
#include "notifier/sources.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

namespace regcache::notifier::sources {

std::atomic<uint32_t> g_uffd_test_off{0};
std::atomic<void (*)(uintptr_t, uintptr_t)> g_uffd_after_remove_for_testing{
    nullptr};

namespace {

constexpr int kThreads = 2;
// How long a lookup waits for the kernel to stop changing watched mappings
// before it invalidates everything instead (see "Bound of the wait").
// Measured on the 2-vCPU VM (load average 10-14 from other builds), 4 threads
// unmapping watched memory in a loop: waits up to 8-32 ms (the unmapping
// thread, woken by the read, waits for a CPU before it decrements).
constexpr long kProbeDeadlineNs = 50L * 1000 * 1000;

// Lock rule: g_mu serializes install, uninstall, restart and watching. The
// monitor threads never take it. Never held while waiting for the monitor.
std::mutex g_mu;
int g_fd = -1;       // guarded by g_mu (each monitor thread reads its copy)
int g_stop_fd = -1;  // guarded by g_mu
pthread_t g_threads[kThreads];
int g_nthreads = 0;        // guarded by g_mu
bool g_installed = false;  // guarded by g_mu
bool g_atfork = false;     // guarded by g_mu
// The context for lock-free probes: g_fd while the monitor runs, -1 otherwise
// (before install, after uninstall, in a fork child until it restarts).
std::atomic<int> g_probe_fd{-1};
// Set by the fork child handler (the source is installed but has no context in
// this process); cleared by a successful restart. Read without g_mu by lookups.
std::atomic<bool> g_need_restart{false};
std::atomic<bool> g_exact{true};  // tests: false brings the window back
std::atomic<bool> g_restart_failed_logged{false};
std::atomic<bool> g_deadline_logged{false};
std::atomic<uint64_t> g_events{0};
std::atomic<uint64_t> g_busy_probes{0};
std::atomic<uint64_t> g_flushes{0};
std::atomic<uint64_t> g_restarts{0};
std::atomic<uint64_t> g_refused{0};

// How long after its dispatch a REMOVE keeps overlapping registrations
// uncached (see REMOVE IS BEFORE THE ZAP). The madvising thread zaps as soon
// as it runs after our read; the longest wait for a CPU measured for such a
// woken thread on the 2-vCPU VM under load average 10-14 was 8-32 ms (EXACT
// LOOKUPS, FourThreadsRecycle): 8x margin.
constexpr long kRemoveGraceNs = 250L * 1000 * 1000;
constexpr int kRecent = 32;
struct RecentRemove {
  uintptr_t lo = 0, hi = 0;  // empty when lo == hi
  long t_ns = 0;             // dispatch time (CLOCK_MONOTONIC)
};
// Lock rule: g_recent_mu is a leaf lock held for one scan of the table. Taken
// by whoever dispatches (monitor threads, a lookup draining the queue) and by
// Watch (under g_mu). Nothing else is taken or waited for while it is held.
std::mutex g_recent_mu;
RecentRemove g_recent[kRecent];  // guarded by g_recent_mu
// Where an entry still inside its grace goes when the table is full: the hull
// of every such entry, with the newest time (conservative: never forgets).
RecentRemove g_recent_hull;  // guarded by g_recent_mu

long NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

void RememberRemove(uintptr_t lo, uintptr_t hi) {
  const long now = NowNs();
  std::lock_guard<std::mutex> g(g_recent_mu);
  RecentRemove *oldest = &g_recent[0];
  for (RecentRemove &r : g_recent) {
    if (r.lo == r.hi || now - r.t_ns > kRemoveGraceNs) {
      r = {lo, hi, now};
      return;
    }
    if (r.t_ns < oldest->t_ns) oldest = &r;
  }
  // Full of entries inside their grace: fold the oldest into the hull.
  RecentRemove &h = g_recent_hull;
  if (h.lo == h.hi || now - h.t_ns > kRemoveGraceNs) {
    h = *oldest;
  } else {
    h.lo = h.lo < oldest->lo ? h.lo : oldest->lo;
    h.hi = h.hi > oldest->hi ? h.hi : oldest->hi;
    h.t_ns = h.t_ns > oldest->t_ns ? h.t_ns : oldest->t_ns;
  }
  *oldest = {lo, hi, now};
}

// True if [lo, hi) overlaps a REMOVE dispatched less than kRemoveGraceNs ago.
bool OverlapsRecentRemove(uintptr_t lo, uintptr_t hi) {
  if (g_uffd_test_off.load(std::memory_order_relaxed) & kUffdTestNoRemoveGrace)
    return false;
  const long now = NowNs();
  std::lock_guard<std::mutex> g(g_recent_mu);
  auto hit = [&](const RecentRemove &r) {
    return r.lo < hi && lo < r.hi && now - r.t_ns <= kRemoveGraceNs;
  };
  if (hit(g_recent_hull)) return true;
  for (const RecentRemove &r : g_recent)
    if (hit(r)) return true;
  return false;
}

// The last REMOVE this thread dispatched (for g_uffd_after_remove_for_testing).
thread_local uintptr_t t_last_remove_lo = 0, t_last_remove_hi = 0;

void Dispatch(const uffd_msg &m) {
  uintptr_t lo = 0, hi = 0;
  switch (m.event) {
    case UFFD_EVENT_UNMAP:
      lo = m.arg.remove.start;
      hi = m.arg.remove.end;
      break;
    case UFFD_EVENT_REMOVE:
      lo = m.arg.remove.start;
      hi = m.arg.remove.end;
      // Before BeginRange moves any sequence (REMOVE IS BEFORE THE ZAP).
      RememberRemove(lo, hi);
      break;
    case UFFD_EVENT_REMAP:  // the old range moved away
      lo = m.arg.remap.from;
      hi = m.arg.remap.from + m.arg.remap.len;
      break;
    default:
      return;  // page faults cannot happen: nothing is write-protected
  }
  internal::Frame f;
  internal::BeginRange(&f, lo, hi);
  internal::EndRange(&f);
  g_events.fetch_add(1, std::memory_order_relaxed);
  if (m.event == UFFD_EVENT_REMOVE) {
    t_last_remove_lo = lo;
    t_last_remove_hi = hi;
  }
}

struct MonitorArgs {
  int fd;
  int stop;
};
MonitorArgs g_args;  // written before the threads start (guarded by g_mu)

// Reads and dispatches what is queued now, inside a hold (the monitor's inner
// loop). Also run by a lookup that waits for the kernel (UffdSyncForLookup):
// it does not have to wait until a monitor thread is scheduled.
void DrainQueued(int fd) {
  uffd_msg msgs[16];
  // In the hold BEFORE read(): the read is what releases the unmapping
  // thread and lets mmap_changing drop (see EXACT LOOKUPS above).
  unsigned slot = internal::EnterHold();
  for (;;) {
    ssize_t r = read(fd, msgs, sizeof(msgs));
    if (r <= 0) break;  // EAGAIN: the other thread got it
    for (size_t i = 0; i < static_cast<size_t>(r) / sizeof(uffd_msg); ++i)
      Dispatch(msgs[i]);
    if (static_cast<size_t>(r) < sizeof(msgs)) break;
  }
  internal::ExitHold(slot);
}

void *MonitorMain(void *arg) {
  const MonitorArgs a = *static_cast<MonitorArgs *>(arg);
  for (;;) {
    pollfd p[2] = {{a.fd, POLLIN, 0}, {a.stop, POLLIN, 0}};
    int n = poll(p, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      internal::Logf(internal::kLogError, "notifier: uffd poll: %s",
                     strerror(errno));
      return nullptr;
    }
    if (p[1].revents != 0) return nullptr;
    if (p[0].revents & (POLLERR | POLLNVAL)) return nullptr;
    if ((p[0].revents & POLLIN) == 0) continue;
    t_last_remove_hi = 0;
    DrainQueued(a.fd);
    if (t_last_remove_hi != 0) [[unlikely]] {
      // Tests: the window a racing registration lands in (dispatched, out of
      // the hold, the madvising thread released by our read, its zap maybe
      // not done yet).
      if (auto *hook =
              g_uffd_after_remove_for_testing.load(std::memory_order_acquire))
        hook(t_last_remove_lo, t_last_remove_hi);
    }
  }
}

int OpenUffd(int *fd_out) {
  int flags = O_CLOEXEC | O_NONBLOCK;
  long fd = -1;
  if (geteuid() == 0) fd = syscall(SYS_userfaultfd, flags);
  if (fd < 0) fd = syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
  if (fd < 0) {
    // Kernels that restrict the syscall may still offer /dev/userfaultfd.
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
      fd = ioctl(dev, _IO(0xAA, 0x00) /* USERFAULTFD_IOC_NEW */, flags);
      close(dev);
    }
  }
  if (fd < 0) return errno == ENOSYS ? -ENOSYS : -errno;
  const uint64_t base = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE |
                        UFFD_FEATURE_EVENT_REMAP;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = base | UFFD_FEATURE_WP_ASYNC;
  if (ioctl(static_cast<int>(fd), UFFDIO_API, &api) != 0) {
    // A failed UFFDIO_API poisons the fd (a second one gives EINVAL): start
    // again.
    close(static_cast<int>(fd));
    fd = syscall(SYS_userfaultfd,
                 flags | (geteuid() == 0 ? 0 : UFFD_USER_MODE_ONLY));
    if (fd < 0) return -errno;
    api = {};
    api.api = UFFD_API;
    api.features = base;
    if (ioctl(static_cast<int>(fd), UFFDIO_API, &api) != 0) {
      int err = errno;
      close(static_cast<int>(fd));
      return -err;
    }
  }
  *fd_out = static_cast<int>(fd);
  return 0;
}

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

// REQUIRES g_mu.
void StopLocked() {
  g_probe_fd.store(-1, std::memory_order_seq_cst);
  if (g_stop_fd >= 0) {
    uint64_t one = 1;
    if (write(g_stop_fd, &one, sizeof(one)) < 0) {
      // eventfd writes cannot fail with a small count; nothing to do
    }
  }
  for (int i = 0; i < g_nthreads; ++i) pthread_join(g_threads[i], nullptr);
  g_nthreads = 0;
  if (g_fd >= 0) close(g_fd);  // releases any thread blocked on an unread event
  if (g_stop_fd >= 0) close(g_stop_fd);
  g_fd = g_stop_fd = -1;
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

// REQUIRES g_mu.
int StartLocked() {
  int fd = -1;
  int rc = OpenUffd(&fd);
  if (rc != 0) return rc;
  int stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop < 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  g_fd = fd;
  g_stop_fd = stop;
  g_args = {fd, stop};
  procmap::Init();  // optional (fallback: /proc/self/maps)
  for (int i = 0; i < kThreads; ++i) {
    rc = -pthread_create(&g_threads[i], nullptr, MonitorMain, &g_args);
    if (rc != 0) {
      StopLocked();
      return rc;
    }
    ++g_nthreads;
    pthread_setname_np(g_threads[i], "regcache-uffd");
  }
  g_probe_fd.store(fd, std::memory_order_seq_cst);
  g_need_restart.store(false, std::memory_order_seq_cst);
  return 0;
}

int RegisterRange(uintptr_t s, uintptr_t e) {
  uffdio_register reg{};
  reg.range.start = s;
  reg.range.len = e - s;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(g_fd, UFFDIO_REGISTER, &reg) != 0) return -errno;
  return 0;
}

// A UFFDIO_REGISTER error as Watch reports it: the mapping exists but cannot
// be watched (EBUSY: another userfaultfd owns it; EINVAL: a type the kernel
// cannot watch, e.g. VM_PFNMAP, or file/SysV without WP_ASYNC; EPERM: shared
// mapping without VM_MAYWRITE) -> -EBUSY; gone meanwhile -> -EFAULT.
int WatchError(int rc, uintptr_t s, uintptr_t e) {
  internal::Logf(internal::kLogDebug,
                 "notifier: uffd cannot watch mapping %#lx-%#lx: %s",
                 static_cast<unsigned long>(s), static_cast<unsigned long>(e),
                 strerror(-rc));
  if (rc == -EBUSY || rc == -EINVAL || rc == -EPERM) return -EBUSY;
  if (rc == -ENOMEM || rc == -EFAULT) return rc;
  return -EBUSY;
}

// A mapping whose pages can be dropped without any event reaching us: shared
// (file, memfd, shmem, SysV: truncate, PUNCH_HOLE, shmdt, another process) or
// file-backed (truncate zaps private copies too; MAP_HUGETLB memory is a
// hugetlbfs file). See WHAT UFFD CANNOT SEE.
constexpr uint64_t kVmaShared = 8;  // PROCMAP_QUERY_VMA_SHARED
bool Unseeable(bool shared, uint64_t inode) {
  if (g_uffd_test_off.load(std::memory_order_relaxed) & kUffdTestNoRefuseUnseen)
    return false;
  return shared || inode != 0;
}

int RefuseUnseeable(uintptr_t s, uintptr_t e, bool shared) {
  g_refused.fetch_add(1, std::memory_order_relaxed);
  internal::Logf(internal::kLogDebug,
                 "notifier: uffd does not watch %s mapping %#lx-%#lx (its "
                 "pages can be dropped through the file without an event): "
                 "registered uncached",
                 shared ? "shared" : "file-backed",
                 static_cast<unsigned long>(s), static_cast<unsigned long>(e));
  return -EBUSY;
}

// /proc/self/maps fallback for kernels without PROCMAP_QUERY (may allocate: not
// on the munmap path). Two passes: first that [start, end) is mapped without a
// hole (else -EFAULT, nothing watched) and that every mapping may be watched
// (else -EBUSY), then watch.
int WatchByMaps(uintptr_t start, uintptr_t end) {
  for (int pass = 0; pass < 2; ++pass) {
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == nullptr) return -errno;
    char line[512];
    uintptr_t covered = start;
    int rc = 0;
    bool unseeable = false, unseeable_shared = false;
    uintptr_t us = 0, ue = 0;
    while (rc == 0 && covered < end &&
           fgets(line, sizeof(line), f) != nullptr) {
      unsigned long s, e, off, ino;
      char perms[8];
      unsigned dmaj, dmin;
      if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &s, &e, perms, &off, &dmaj,
                 &dmin, &ino) != 7)
        continue;
      if (e <= covered) continue;
      if (s > covered) break;  // a hole
      if (pass == 0 && !unseeable && Unseeable(perms[3] == 's', ino)) {
        unseeable = true;
        unseeable_shared = perms[3] == 's';
        us = s;
        ue = e;
      }
      if (pass == 1) {
        rc = RegisterRange(s, e);
        if (rc != 0) rc = WatchError(rc, s, e);
      }
      covered = e;
    }
    fclose(f);
    if (rc != 0) return rc;
    if (covered < end) return -EFAULT;
    if (unseeable) return RefuseUnseeable(us, ue, unseeable_shared);
  }
  return 0;
}

// REQUIRES g_mu. Watches the whole VMAs under [start, end) if all of it is
// mapped and may be watched. 0, -EFAULT (a hole: nothing is watched), -EBUSY
// (a mapping cannot be watched, or is refused: nothing is watched), -ENOMEM.
int WatchLocked(uintptr_t start, uintptr_t end) {
  procmap::Vma v;
  int q = procmap::Query(start, true, &v);
  if (q == -EBADF || q == -ENOTTY || q == -EINVAL)
    return WatchByMaps(start, end);
  // Pass 1: mapped without a hole, every mapping private anonymous. A 1 TiB
  // request must fail here, before any of the unrelated mappings inside its
  // span is watched.
  uintptr_t at = start;
  bool unseeable = false;
  procmap::Vma u{};
  while (at < end) {
    if (procmap::Query(at, true, &v) != 0 || v.start > at) return -EFAULT;
    if (!unseeable && Unseeable((v.flags & kVmaShared) != 0, v.inode)) {
      unseeable = true;
      u = v;
    }
    at = v.end;
  }
  if (unseeable)
    return RefuseUnseeable(u.start, u.end, (u.flags & kVmaShared) != 0);
  // Pass 2: watch.
  at = start;
  while (at < end && procmap::Query(at, true, &v) == 0 && v.start < end) {
    int rc = RegisterRange(v.start, v.end);
    if (rc != 0) return WatchError(rc, v.start, v.end);
    at = v.end;
  }
  return 0;
}

void RewatchOne(void *, uintptr_t start, uintptr_t end) {
  int rc = WatchLocked(start, end);
  if (rc != 0) {
    internal::Logf(internal::kLogWarn,
                   "notifier: uffd: after fork, cannot watch the interval "
                   "%#lx-%#lx of a live subscription again: %s",
                   static_cast<unsigned long>(start),
                   static_cast<unsigned long>(end), strerror(-rc));
  }
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

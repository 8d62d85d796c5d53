// SPDX-License-Identifier: BSD-3-Clause
// notifier/uffd_monitor.cc - the uffd context and its monitor threads:
// opening the userfaultfd, the threads' poll -> hold -> read -> dispatch loop
// (uffd.cc, THE MONITOR), starting and stopping them.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/procmap.h"
#include "notifier/sources.h"
#include "notifier/uffd_internal.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

namespace regcache::notifier::sources {
inline namespace uffd_impl {

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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
  // The monitor threads block every signal (a thread starts with its
  // creator's mask): a process-directed signal (SIGALRM, SIGCHLD, a
  // profiler's SIGPROF, a launcher's SIGUSR1) is never handled on one of
  // them. The program's handler would run on a thread it does not know,
  // possibly inside a delivery (a callback depth it does not expect), and
  // would interrupt the monitor's poll. Synchronous faults are not blockable
  // and stay fatal as on any thread.
  sigset_t all, saved;
  sigfillset(&all);
  const bool mask = (g_uffd_test_off.load(std::memory_order_relaxed) &
                     kUffdTestSignalsUnblocked) == 0;
  if (mask) pthread_sigmask(SIG_SETMASK, &all, &saved);
  for (int i = 0; i < kThreads; ++i) {
    rc = -pthread_create(&g_threads[i], nullptr, MonitorMain, &g_args);
    if (rc != 0) break;
    ++g_nthreads;
    pthread_setname_np(g_threads[i], "regcache-uffd");
  }
  if (mask) pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  if (rc != 0) {
    StopLocked();
    return rc;
  }
  g_probe_fd.store(fd, std::memory_order_seq_cst);
  g_need_restart.store(false, std::memory_order_seq_cst);
  return 0;
}

}  // namespace uffd_impl
}  // namespace regcache::notifier::sources

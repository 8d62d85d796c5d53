// SPDX-License-Identifier: BSD-3-Clause
// notifier/uffd.cc - the userfaultfd event source.
//
// One userfaultfd context per process, features EVENT_UNMAP | EVENT_REMOVE |
// EVENT_REMAP
// (+ WP_ASYNC when the kernel has it, which lets file-backed and SysV mappings
// be registered). Never EVENT_FORK (fork would block until the event is read,
// and the child's unmaps would block on a context nobody reads). Mappings are
// registered in WP mode with nothing write-protected: MISSING mode would send
// first-touch faults to the monitor, break THP and make kernel-mode access (GUP
// in ibv_reg_mr) fail under USER_MODE_ONLY. Whole VMAs are registered, never
// sub-ranges (sub-ranges split VMAs, and mremap of a split mapping fails with
// EFAULT). UFFD_USER_MODE_ONLY is used when not root (or on EPERM).
//
// WHAT A SUBSCRIPTION MEANS HERE. The kernel reports events only for registered
// (watched) mappings. An interval subscription watches the mappings under its
// interval, and they stay watched after the subscription ends (until they are
// unmapped): the cache's registration outlives its temporary interval
// subscription, and its whole-space subscription still has to hear about that
// memory. A whole-space subscriber therefore sees every event of every watched
// mapping, not every unmap of the process.
//
// THE MONITOR. Two threads run the same loop: poll() -> EnterHold() (the
// in-flight window: registrations made from now on wait in ReadBegin) ->
// non-blocking read() of up to 16 events -> start/end for each -> ExitHold().
// The unmapping thread is released by read(), i.e. inside the hold. Two
// threads, because a callback running on a monitor thread that itself unmaps
// watched memory blocks until somebody reads that event: the other thread does
// (one level of such nesting is tolerated; docs/notifier.md).
//
// THE WINDOW THIS SOURCE LEAVES. UNMAP arrives after the unmap (REMOVE before
// the zap). Between the kernel removing the pages and our start callback,
// another thread may look up and use a registration of the old range, and the
// address may already be mapped again. The pinned pages stay pinned (no other
// process's memory is exposed), but data may go to the old pages. Registrations
// of the new mapping are safe: they wait in ReadBegin while the hold is open,
// or see their sequence bumped.
//
// fork: a child that used the inherited fd would operate on the parent's mm
// (measured), so the atfork child handler closes it; the next Register in the
// child starts afresh.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>

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
namespace {

constexpr int kThreads = 2;

std::mutex g_mu;  // install/uninstall/watch
int g_fd = -1;
int g_stop_fd = -1;
pthread_t g_threads[kThreads];
int g_nthreads = 0;
bool g_installed = false;     // guarded by g_mu
bool g_need_restart = false;  // fork child: re-create on next use
bool g_atfork = false;
std::atomic<uint64_t> g_events{0};

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
      break;
    case UFFD_EVENT_REMAP:  // the old range moved away (an UNMAP of it follows
                            // too)
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
}

void *MonitorMain(void *) {
  int fd = g_fd;
  int stop = g_stop_fd;
  uffd_msg msgs[16];
  for (;;) {
    pollfd p[2] = {{fd, POLLIN, 0}, {stop, POLLIN, 0}};
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

void StopLocked() {
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
  // (it is the parent's mm); forget it and start afresh on next use.
  if (g_fd >= 0) close(g_fd);
  if (g_stop_fd >= 0) close(g_stop_fd);
  g_fd = g_stop_fd = -1;
  g_nthreads = 0;
  if (g_installed) g_need_restart = true;
  new (&g_mu) std::mutex();  // the parent's holder does not exist here
}

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
  procmap::Init();  // optional (fallback: /proc/self/maps)
  for (int i = 0; i < kThreads; ++i) {
    rc = -pthread_create(&g_threads[i], nullptr, MonitorMain, nullptr);
    if (rc != 0) {
      StopLocked();
      return rc;
    }
    ++g_nthreads;
    pthread_setname_np(g_threads[i], "regcache-uffd");
  }
  g_need_restart = false;
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

// /proc/self/maps fallback for kernels without PROCMAP_QUERY (may allocate: not
// on the munmap path).
int WatchByMaps(uintptr_t start, uintptr_t end) {
  FILE *f = fopen("/proc/self/maps", "re");
  if (f == nullptr) return -errno;
  char line[512];
  int rc = 0;
  while (rc == 0 && fgets(line, sizeof(line), f) != nullptr) {
    unsigned long s, e;
    if (sscanf(line, "%lx-%lx", &s, &e) != 2) continue;
    if (e <= start || s >= end) continue;
    rc = RegisterRange(s, e);
  }
  fclose(f);
  return rc;
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
  return 0;
}

void UffdUninstall() {
  std::lock_guard<std::mutex> g(g_mu);
  if (!g_installed) return;
  StopLocked();
  g_installed = false;
}

int UffdWatch(uintptr_t start, uintptr_t end) {
  std::lock_guard<std::mutex> g(g_mu);
  if (!g_installed) return -ENOSYS;
  if (g_need_restart) {
    int rc = StartLocked();
    if (rc != 0) return rc;
  }
  procmap::Vma v;
  int q = procmap::Query(start, true, &v);
  if (q == -EBADF || q == -ENOTTY || q == -EINVAL)
    return WatchByMaps(start, end);
  uintptr_t at = start;
  while (at < end && procmap::Query(at, true, &v) == 0 && v.start < end) {
    int rc = RegisterRange(v.start, v.end);
    if (rc != 0) {
      internal::Logf(internal::kLogDebug,
                     "notifier: uffd cannot watch mapping %#lx-%#lx: %s",
                     static_cast<unsigned long>(v.start),
                     static_cast<unsigned long>(v.end), strerror(-rc));
      return rc;
    }
    at = v.end;
  }
  return 0;
}

}  // namespace regcache::notifier::sources

// SPDX-License-Identifier: BSD-3-Clause
// notifier/procmap.cc - PROCMAP_QUERY wrapper (see procmap.h).
#include "notifier/procmap.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace regcache::notifier::procmap {
namespace {

// The /proc/self/maps fd PROCMAP_QUERY goes through. It describes the mm of
// the process that opened it (the mm is taken at open), so a fork child must
// open its own: ChildReopen does, in the atfork child handler.
std::atomic<int> g_fd{-1};
std::atomic<bool> g_atfork{false};

int OpenMaps() {
  return static_cast<int>(
      syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC));
}

// Runs in the child only (one thread); raw syscalls: async-signal-safe.
void ChildReopen() {
  int old = g_fd.load(std::memory_order_relaxed);
  if (old < 0) return;
  syscall(SYS_close, old);
  int fd = OpenMaps();
  g_fd.store(fd >= 0 ? fd : -1, std::memory_order_release);
}

}  // namespace

int Init() {
  if (!g_atfork.exchange(true)) pthread_atfork(nullptr, nullptr, ChildReopen);
  if (g_fd.load(std::memory_order_acquire) >= 0) return 0;
  int fd = OpenMaps();
  if (fd < 0) return -errno;
  Vma v;
  if (int rc = QueryFd(fd, 0, kCoveringOrNext, &v); rc != 0) {
    syscall(SYS_close, fd);
    return rc;
  }
  int expected = -1;
  if (!g_fd.compare_exchange_strong(expected, fd)) syscall(SYS_close, fd);
  return 0;
}

int Query(uintptr_t addr, bool covering_or_next, Vma *out) {
  // errno is set by syscall(), which the hooks save and restore.
  return QueryFd(g_fd.load(std::memory_order_acquire), addr,
                 covering_or_next ? kCoveringOrNext : 0, out);
}

}  // namespace regcache::notifier::procmap

// SPDX-License-Identifier: BSD-3-Clause
// notifier/procmap.cc - PROCMAP_QUERY wrapper (see procmap.h).
#include "notifier/procmap.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace regcache::notifier::procmap {
namespace {

// From <linux/fs.h> of Linux 6.11 (not in the installed 6.1 headers).
struct procmap_query {
  uint64_t size;
  uint64_t query_flags;
  uint64_t query_addr;
  uint64_t vma_start;
  uint64_t vma_end;
  uint64_t vma_flags;
  uint64_t vma_page_size;
  uint64_t vma_offset;
  uint64_t inode;
  uint32_t dev_major;
  uint32_t dev_minor;
  uint32_t vma_name_size;
  uint32_t build_id_size;
  uint64_t vma_name_addr;
  uint64_t build_id_addr;
};
constexpr unsigned long kProcmapQuery = _IOWR('f', 17, struct procmap_query);
constexpr uint64_t kCoveringOrNext = 0x10;

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
  procmap_query q{};
  q.size = sizeof(q);
  q.query_flags = kCoveringOrNext;
  q.query_addr = 0;
  if (syscall(SYS_ioctl, fd, kProcmapQuery, &q) != 0) {
    int err = errno;
    syscall(SYS_close, fd);
    return -err;
  }
  int expected = -1;
  if (!g_fd.compare_exchange_strong(expected, fd)) syscall(SYS_close, fd);
  return 0;
}

void Reset() {
  int fd = g_fd.exchange(-1);
  if (fd >= 0) syscall(SYS_close, fd);
}

int Query(uintptr_t addr, bool covering_or_next, Vma *out) {
  int fd = g_fd.load(std::memory_order_acquire);
  if (fd < 0) return -EBADF;
  procmap_query q{};
  q.size = sizeof(q);
  q.query_flags = covering_or_next ? kCoveringOrNext : 0;
  q.query_addr = addr;
  // Raw syscall: errno is set by syscall(), which the hooks save and restore.
  if (syscall(SYS_ioctl, fd, kProcmapQuery, &q) != 0)
    return errno == ENOENT ? -ENOENT : -errno;
  out->start = q.vma_start;
  out->end = q.vma_end;
  out->flags = q.vma_flags;
  out->offset = q.vma_offset;
  out->inode = q.inode;
  out->dev_major = q.dev_major;
  out->dev_minor = q.dev_minor;
  return 0;
}

}  // namespace regcache::notifier::procmap

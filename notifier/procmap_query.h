/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/procmap_query.h - the one PROCMAP_QUERY wrapper (Linux >= 6.11): the
// VMA covering an address, or the next one, from an fd of /proc/self/maps.
// Header-only, allocates nothing, takes no lock: usable inside memory hooks.
//
// The fd is a parameter: it describes the mm of the process that opened it, so
// each user keeps (and re-opens in a fork child) its own, or opens one per call
// (procmap.cc's shared one; the patch source's own, re-opened in its atfork
// child handler; the host driver's per-call one). The ioctl is made through
// `ioctl_fn(fd, request, arg)` returning 0 or a negative errno: by default
// libc's syscall(); the patch source passes its raw `syscall` instruction.
//
// The installed uapi headers predate PROCMAP_QUERY, so the structure is
// defined here, from <linux/fs.h> of Linux 6.11.
#ifndef REGCACHE_NOTIFIER_PROCMAP_QUERY_H_
#define REGCACHE_NOTIFIER_PROCMAP_QUERY_H_

#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace regcache::notifier::procmap {

struct Vma {
  uintptr_t start;
  uintptr_t end;
  uint64_t flags;  // kVma* below
  uint64_t offset;
  uint64_t inode;
  uint32_t dev_major;
  uint32_t dev_minor;
};

// query_flags
constexpr uint64_t kCoveringOrNext =
    0x10;                               // PROCMAP_QUERY_COVERING_OR_NEXT_VMA
constexpr uint64_t kFileBacked = 0x20;  // PROCMAP_QUERY_FILE_BACKED_VMA
// Vma::flags (PROCMAP_QUERY_VMA_*)
constexpr uint64_t kVmaRead = 1, kVmaWrite = 2, kVmaExec = 4, kVmaShared = 8;

struct RawQuery {  // struct procmap_query
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
constexpr unsigned long kProcmapQuery = _IOWR('f', 17, RawQuery);

// libc's syscall(): 0 or -errno.
inline long LibcIoctl(int fd, unsigned long request, void *arg) {
  return syscall(SYS_ioctl, fd, request, arg) == 0 ? 0 : -errno;
}

// The VMA containing addr (flags kCoveringOrNext: the first at or above it;
// kFileBacked: file-backed ones only). 0, -ENOENT (none), or another -errno
// (-ENOTTY / -EINVAL: no PROCMAP_QUERY; -EBADF: no fd).
template <class IoctlFn = long (*)(int, unsigned long, void *)>
inline int QueryFd(int fd, uintptr_t addr, uint64_t flags, Vma *out,
                   IoctlFn ioctl_fn = &LibcIoctl) {
  if (fd < 0) return -EBADF;
  RawQuery q{};
  q.size = sizeof(q);
  q.query_flags = flags;
  q.query_addr = addr;
  const long r = ioctl_fn(fd, kProcmapQuery, &q);
  if (r != 0) return static_cast<int>(r);
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

#endif  // REGCACHE_NOTIFIER_PROCMAP_QUERY_H_

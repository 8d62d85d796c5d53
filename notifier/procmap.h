/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/procmap.h - VMA lookups without allocating (PROCMAP_QUERY, Linux
// >= 6.11).
//
// Used from the munmap path (shmdt needs the segment's extent) and by the uffd
// source (which registers whole VMAs). The installed uapi headers predate
// PROCMAP_QUERY, so the structure is defined here.
#ifndef REGCACHE_NOTIFIER_PROCMAP_H_
#define REGCACHE_NOTIFIER_PROCMAP_H_

#include <cstdint>

namespace regcache::notifier::procmap {

struct Vma {
  uintptr_t start;
  uintptr_t end;
  uint64_t flags;  // PROCMAP_QUERY_VMA_* (read 1, write 2, exec 4, shared 8)
  uint64_t offset;
  uint64_t inode;
  uint32_t dev_major;
  uint32_t dev_minor;
};

// Opens /proc/self/maps once (raw syscalls) and checks PROCMAP_QUERY works. 0
// or -errno (-ENOTTY: kernel without PROCMAP_QUERY). Idempotent; thread-safe.
// The fd describes the mm of the process that opened it: a fork child reopens
// it in an atfork child handler (installed by the first Init), so Query in a
// child describes the child.
int Init();
// Forgets the fd.
void Reset();
// The VMA containing addr (covering_or_next: the first one at or above addr).
// 0, -ENOENT (none), or -errno. Allocates nothing; safe inside munmap hooks.
int Query(uintptr_t addr, bool covering_or_next, Vma *out);

}  // namespace regcache::notifier::procmap

#endif  // REGCACHE_NOTIFIER_PROCMAP_H_

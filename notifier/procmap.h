/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/procmap.h - VMA lookups without allocating (PROCMAP_QUERY, Linux
// >= 6.11) through one process-wide fd of /proc/self/maps.
//
// Used from the munmap path (shmdt needs the segment's extent), by the uffd
// source (which registers whole VMAs) and by the cache (is a range writable).
// The query itself, and Vma, are procmap_query.h's.
#ifndef REGCACHE_NOTIFIER_PROCMAP_H_
#define REGCACHE_NOTIFIER_PROCMAP_H_

#include <cstdint>

#include "notifier/procmap_query.h"

namespace regcache::notifier::procmap {

// Opens /proc/self/maps once (raw syscalls) and checks PROCMAP_QUERY works. 0
// or -errno (-ENOTTY: kernel without PROCMAP_QUERY). Idempotent; thread-safe.
// The fd describes the mm of the process that opened it: a fork child reopens
// it in an atfork child handler (installed by the first Init), so Query in a
// child describes the child.
int Init();
// The VMA containing addr (covering_or_next: the first one at or above addr).
// 0, -ENOENT (none), or -errno. Allocates nothing; safe inside munmap hooks.
int Query(uintptr_t addr, bool covering_or_next, Vma *out);

}  // namespace regcache::notifier::procmap

#endif  // REGCACHE_NOTIFIER_PROCMAP_H_

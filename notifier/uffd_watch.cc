// SPDX-License-Identifier: BSD-3-Clause
// notifier/uffd_watch.cc - watching mappings: registering whole VMAs with the
// context (WP mode, nothing write-protected), through PROCMAP_QUERY or
// /proc/self/maps, and refusing what uffd cannot see (uffd.cc, WHAT UFFD
// CANNOT SEE IS REFUSED, NOT CACHED).
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "notifier/internal.h"
#include "notifier/procmap.h"
#include "notifier/sources.h"
#include "notifier/uffd_internal.h"

namespace regcache::notifier::sources {
inline namespace uffd_impl {

namespace {

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

}  // namespace

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

}  // namespace uffd_impl
}  // namespace regcache::notifier::sources

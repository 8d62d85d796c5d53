// SPDX-License-Identifier: BSD-3-Clause
// notifier/patch_file_hooks.cc - the patch hooks' VMA lookups (PROCMAP_QUERY,
// without allocating; also shmdt's) and the file hooks: fallocate, ftruncate,
// truncate drop page-cache pages of files that may be mapped here.
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <atomic>
#include <cstdint>

#include "notifier/patch_internal.h"

#if defined(__x86_64__)

namespace regcache::notifier::sources {
inline namespace patch_impl {

// ---- VMA lookups for the hooks (shmdt, files), without allocating: our own
// PROCMAP_QUERY fd on /proc/self/maps, so that the query can skip anonymous
// VMAs (PROCMAP_QUERY_FILE_BACKED_VMA) and so that a fork child re-opens it in
// PatchAtforkChild (an fd inherited from the parent describes the parent's
// mm). -1 until install, or when PROCMAP_QUERY is unavailable (Linux < 6.11):
// the hooks then fall back to wider ranges.
std::atomic<int> g_maps_fd{-1};

// The ioctl through the raw `syscall` instruction (procmap_query.h's QueryFd).
long RawIoctl(int fd, unsigned long request, void *arg) {
  return RawSyscall6(SYS_ioctl, fd, static_cast<long>(request),
                     reinterpret_cast<long>(arg), 0, 0, 0);
}

int OpenMaps() {
  long fd = RawSyscall6(SYS_openat, AT_FDCWD,
                        reinterpret_cast<long>("/proc/self/maps"),
                        O_RDONLY | O_CLOEXEC, 0, 0, 0);
  if (Failed(fd)) return -1;
  procmap::Vma probe;
  if (procmap::QueryFd(static_cast<int>(fd), 0, procmap::kCoveringOrNext,
                       &probe, RawIoctl) != 0) {
    RawSyscall6(SYS_close, fd, 0, 0, 0, 0, 0);
    return -1;
  }
  return static_cast<int>(fd);
}

// The VMA containing addr (next: the first at or above it; file: file-backed
// ones only). 0, -ENOENT (none), or another -errno (no information).
int QueryVma(uintptr_t addr, bool next, bool file, Vma *out) {
  return procmap::QueryFd(
      g_maps_fd.load(std::memory_order_acquire), addr,
      (next ? procmap::kCoveringOrNext : 0) | (file ? procmap::kFileBacked : 0),
      out, RawIoctl);
}

// ---- files: page-cache pages of mapped files dropped by the file's size or
// hole changes (truncate_pagecache / unmap_mapping_range in the kernel, which
// zaps every mapping of the file, shared and private, in every process).
//
// The hook knows the file (fd or path), not the mappings. FileSpan walks this
// process's VMAs (PROCMAP_QUERY: one ioctl per VMA, no allocation, Linux >=
// 6.11) and returns the hull of the addresses that map the file's pages
// [off_lo, off_hi). Matched on the inode number alone (st_dev differs from the
// VMA's device on btrfs subvolumes): another file with the same inode number
// only adds spurious invalidations. Without PROCMAP_QUERY, the whole address
// space.
//
// The walk costs about 1 us per file-backed VMA (measured: 73 us per
// ftruncate shrink with 136 VMAs; 310 us before anonymous VMAs were skipped),
// too much for every ftruncate of a file this process never mapped (a
// database truncating its journal). So it only runs for inodes in
// g_mapped_inodes: a 1024-bit Bloom filter of every inode mapped in this
// process, filled from the VMAs at install and by the mmap hook (one fstat
// per file mmap) since. A mapping made without libc's mmap after install
// (ld.so mapping a library for dlopen, a raw syscall) is not in it: a
// registration of such memory is not protected against truncation of its
// file (docs/notifier.md lists it).
//
// Race: another thread may mmap the file between the walk (or the filter
// check) and the call and register the new mapping before the call zaps it.
// The mmap hook counts file mappings (g_file_mmaps, after setting the filter
// bit); when the count moved during the call, the walk is repeated after it
// and the mapping gets a start/end pair after the fact, so no registration
// made in that window stays cached.
constexpr size_t kInodeBits = 1024;
std::atomic<uint64_t> g_mapped_inodes[kInodeBits / 64];
std::atomic<uint64_t> g_file_mmaps{0};

namespace {

inline size_t InodeBit(uint64_t ino) {
  return static_cast<size_t>((ino * 0x9E3779B97F4A7C15ull) >> 54);  // 10 bits
}

}  // namespace

void NoteMappedInode(uint64_t ino) {
  size_t b = InodeBit(ino);
  g_mapped_inodes[b / 64].fetch_or(uint64_t{1} << (b % 64),
                                   std::memory_order_seq_cst);
}

namespace {

bool MaybeMapped(uint64_t ino) {
  size_t b = InodeBit(ino);
  return g_mapped_inodes[b / 64].load(std::memory_order_seq_cst) &
         (uint64_t{1} << (b % 64));
}

}  // namespace

// Every file-backed VMA now (at install). Without PROCMAP_QUERY nothing is
// noted: FileSpan then invalidates the whole space anyway, and the filter
// must not rule that out, so every bit is set.
void NoteAllMappedInodes() {
  Vma v{};
  uintptr_t at = 0;
  for (;;) {
    int rc = QueryVma(at, true, true, &v);
    if (rc == -ENOENT) return;
    if (rc != 0 || v.end <= at) {
      for (auto &w : g_mapped_inodes) w.store(~uint64_t{0});
      return;
    }
    if (v.inode != 0) NoteMappedInode(v.inode);
    at = v.end;
  }
}

namespace {

void FileSpan(uint64_t ino, uint64_t off_lo, uint64_t off_hi, uintptr_t *lo,
              uintptr_t *hi) {
  *lo = kTop;
  *hi = 0;
  Vma v{};
  uintptr_t at = 0;
  for (;;) {
    int rc = QueryVma(at, true, true, &v);
    if (rc == -ENOENT) break;
    if (rc != 0 || v.end <= at) {  // no VMA information: everything
      *lo = 0;
      *hi = kTop;
      return;
    }
    at = v.end;
    if (v.inode != ino) continue;
    uint64_t vlo = v.offset, vhi = v.offset + (v.end - v.start);
    uint64_t l = off_lo > vlo ? off_lo : vlo;
    uint64_t h = off_hi < vhi ? off_hi : vhi;
    if (l >= h) continue;
    uintptr_t s = v.start + PageDown(l - vlo);
    uintptr_t e = v.start + PageUp(h - vlo);
    if (e > v.end) e = v.end;
    *lo = s < *lo ? s : *lo;
    *hi = e > *hi ? e : *hi;
  }
  if (*lo >= *hi) *lo = *hi = 0;
}

// Brackets fn with the mappings of inode ino's pages [off_lo, off_hi).
template <class Fn>
long FileHook(uint64_t ino, uint64_t off_lo, uint64_t off_hi, Fn fn) {
  int *err = ErrnoPtr();
  int saved = *err;
  uint64_t count = g_file_mmaps.load(std::memory_order_seq_cst);
  uintptr_t lo = 0, hi = 0;
  if (MaybeMapped(ino)) FileSpan(ino, off_lo, off_hi, &lo, &hi);
  *err = saved;
  long r = Around(lo, hi, fn);
  if (!Failed(r) && g_file_mmaps.load(std::memory_order_seq_cst) != count &&
      MaybeMapped(ino)) {
    saved = *err;
    uintptr_t lo2, hi2;
    FileSpan(ino, off_lo, off_hi, &lo2, &hi2);
    if (lo2 < hi2 && (lo2 < lo || hi2 > hi)) NotifyAfter(lo2, hi2);
    *err = saved;
  }
  return r;
}

}  // namespace

// FALLOC_FL_KEEP_SIZE alone (or 0) only allocates: no page changes. Every
// other mode (PUNCH_HOLE, ZERO_RANGE, COLLAPSE_RANGE, INSERT_RANGE,
// UNSHARE_RANGE, WRITE_ZEROES, future ones) may drop or move page-cache pages;
// COLLAPSE and INSERT shift everything after offset.
extern "C" int HookFallocate(int fd, int mode, off_t off, off_t len) {
  auto call = [&] {
    return RawSyscall6(SYS_fallocate, fd, mode, static_cast<long>(off),
                       static_cast<long>(len), 0, 0);
  };
  constexpr int kKeepSize = 0x01, kCollapse = 0x08, kInsert = 0x20;
  struct stat st;
  long r;
  if ((mode & ~kKeepSize) == 0 || TestOff(kPatchPathFile) || off < 0 ||
      len <= 0 ||
      RawSyscall6(SYS_fstat, fd, reinterpret_cast<long>(&st), 0, 0, 0, 0) !=
          0) {
    r = call();  // allocation only, or the kernel will refuse the call
  } else {
    uint64_t lo = PageDown(static_cast<uint64_t>(off));
    uint64_t hi =
        (mode & (kCollapse | kInsert))
            ? UINT64_MAX
            : EndOf(static_cast<uintptr_t>(off), static_cast<size_t>(len));
    r = FileHook(st.st_ino, lo, hi, call);
  }
  return static_cast<int>(Ret(r, -1L));
}

// Shrinking drops the pages from the new end on (the page holding the new end
// keeps its frame, only its tail is zeroed; it is included anyway). stat_call
// fills the file's stat (0 on success); call truncates.
template <class StatFn, class Fn>
int TruncateHook(off_t len, StatFn stat_call, Fn call) {
  struct stat st;
  long r;
  if (len >= 0 && !TestOff(kPatchPathFile) && stat_call(&st) == 0 &&
      len < st.st_size) {
    r = FileHook(st.st_ino, PageDown(static_cast<uint64_t>(len)), UINT64_MAX,
                 call);
  } else {
    r = call();
  }
  return static_cast<int>(Ret(r, -1L));
}

extern "C" int HookFtruncate(int fd, off_t len) {
  return TruncateHook(
      len,
      [&](struct stat *st) {
        return RawSyscall6(SYS_fstat, fd, reinterpret_cast<long>(st), 0, 0, 0,
                           0);
      },
      [&] {
        return RawSyscall6(SYS_ftruncate, fd, static_cast<long>(len), 0, 0, 0,
                           0);
      });
}

extern "C" int HookTruncate(const char *path, off_t len) {
  return TruncateHook(
      len,
      [&](struct stat *st) {
        return RawSyscall6(SYS_stat, reinterpret_cast<long>(path),
                           reinterpret_cast<long>(st), 0, 0, 0, 0);
      },
      [&] {
        return RawSyscall6(SYS_truncate, reinterpret_cast<long>(path),
                           static_cast<long>(len), 0, 0, 0, 0);
      });
}

}  // namespace patch_impl
}  // namespace regcache::notifier::sources

#endif  // __x86_64__

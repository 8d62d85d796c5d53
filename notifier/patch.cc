// SPDX-License-Identifier: BSD-3-Clause
// notifier/patch.cc - the patch event source: libc's memory entry points jump
// to our hooks.
//
// WHY PATCH CODE. glibc calls __munmap/__mremap/__madvise/__brk directly from
// free(), realloc(), heap trimming and thread-stack release; those are the same
// code as the exported munmap/... (weak aliases) and have no relocation, so
// interposition and GOT patching miss them (measured,
// ../shared/docs/memory-events.md). Overwriting the entry of the one function
// body catches every caller.
//
// WHAT IS HOOKED (docs/notifier.md, "Event sources", has the full table): every
// libc call after which the frames mapped at some address may differ, or the
// access the program granted shrinks (the kernel's mmu_notifier would fire):
// munmap, mremap, mmap(MAP_FIXED), brk, shmat(SHM_REMAP), shmdt (the whole
// segment, across holes), madvise / process_madvise (every advice not on the
// harmless allowlist), mprotect / pkey_mprotect that remove read or write,
// remap_file_pages, and the file calls that drop page-cache pages of mapped
// files: fallocate (anything but plain allocation), ftruncate / truncate
// that shrink.
//
// HOW (x86_64). Each patched entry gets a 5-byte `jmp rel32` to a 16-byte slot
// in a trampoline page that we map within +-2 GiB of libc; the slot holds
// `movabs r11, <hook>; jmp r11` (the 13-byte absolute jump, which needs no
// proximity).
//
// NO PAGE IS EVER WRITABLE AND EXECUTABLE (W^X). libc's text is never made
// writable. Once per code page that holds an entry, the page is replaced by a
// shared copy with the same bytes, mapped r-x, in one mmap(MAP_FIXED) or
// mremap (atomic for other threads: it runs under the mmap lock; a thread
// fetching from the page waits for it and then finds the same bytes). The copy
// is a page of one memfd ("regcache-libc-code", one fd for all pages), or
// shared anonymous memory when memfds cannot be mapped executable
// (vm.memfd_noexec). Writes go through a temporary rw- second mapping of that
// page (an mmap of the memfd; else mremap with old_size 0, which duplicates a
// shared mapping, mprotect'ed from r-x straight to rw-), unmapped right after.
// Not /proc/self/mem: the kernel copies through it with memcpy (`rep movsb` on
// FSRM CPUs), which is not one atomic store, so another thread could fetch a
// torn jump; and /proc may be missing. Cost: the page shows in
// /proc/self/maps as "/memfd:regcache-libc-code (deleted)" instead of libc
// (profilers attribute samples in it to no file); the memfd takes one fd
// (if the program closes it, writes fall back to the mremap duplicate); and
// the page is shared with fork children: the atfork child handler gives the
// child a private copy, so that the parent re-patching or restoring never
// changes the child's libc (PatchAtforkChild).
//
// WHY THIS IS SAFE WHILE OTHER THREADS RUN (the failure mode of libfabric
// #7569/#10943):
//   * The 5 new bytes are written with ONE aligned 8-byte atomic store
//     (function entries are 16-byte aligned; the other 3 bytes are rewritten
//     with their own values). A thread fetching the entry sees either the old
//     or the new instruction bytes, never a mix. A 13-byte write would be
//     torn: no store covers it atomically.
//   * Only bytes 0..4 change. For munmap, mprotect, madvise, brk, shmdt,
//     shmat, ftruncate, truncate the first instruction is the 5-byte
//     `mov $nr, %eax` (fallocate's is a 7-byte cmpb), and the `syscall`
//     starts at or after byte 5: a thread sleeping in the syscall returns past
//     byte 7, which we never touch. (With a 13-byte patch, a thread blocked in
//     munmap during installation would return into the middle of the movabs.)
//   * Residual risk: mremap, mmap, pkey_mprotect, process_madvise and
//     remap_file_pages start with shorter instructions (3 or 4 bytes). A thread
//     that was preempted exactly between their first and second instruction
//     while we patch resumes inside the jmp's displacement. That needs a
//     preemption at one specific instruction boundary during a microsecond
//     window, once per process; no syscall sits in those bytes. Documented in
//     docs/notifier.md.
//   * The trampoline page is written rw-, then made r-x before any entry jumps
//     to it, and is never unmapped, so a thread that entered it before a
//     restore completes safely; restore is the same atomic store in reverse.
//   * Before patching, every entry is checked: a jump or int3 at the entry
//     means another patcher owns it (UCX libucm in bistro mode, Open MPI,
//     libfabric memhooks): we refuse with -EALREADY and one error line,
//     instead of overwriting them (libfabric PR #6474: two patchers
//     overwriting each other corrupted data). An unknown prologue also
//     refuses. The entries added for issue 12 (mprotect and later in
//     g_targets) are optional: one that is missing, unknown or owned by
//     someone else is skipped with one warning naming the path left uncovered.
//
// HOOKS run the raw syscall themselves (the original prologue is gone), with
// start before and end after, and restore errno like libc. brk updates libc's
// __curbrk as glibc's brk does. sbrk is not patched: glibc's sbrk calls brk
// (tested), so patching it as well would only reimplement its __libc_initial
// checks. fallocate is a cancellation point in glibc; the hook is not (it
// issues the syscall directly).
//
// UNLOADING. libregcache is linked with -z nodelete (regcache/CMakeLists.txt):
// dlclose never unmaps this code, so a thread inside a hook, or one about to
// jump through a patched entry, always finds it (issue 13). The entries are
// restored at process exit (PatchFini), or by ResetForTesting.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/procmap_query.h"
#include "notifier/sources.h"

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#ifndef SHM_REMAP
#define SHM_REMAP 040000
#endif

namespace regcache::notifier::sources {

std::atomic<uint32_t> g_patch_test_off{0};

#if defined(__x86_64__)

namespace {

using internal::BeginRange;
using internal::EndRange;
using internal::Frame;

constexpr uintptr_t kPage = 4096;
// The top of the range that stands for "the whole address space".
constexpr uintptr_t kTop = UINTPTR_MAX & ~(kPage - 1);
inline uintptr_t PageDown(uintptr_t a) { return a & ~(kPage - 1); }
inline uintptr_t PageUp(uintptr_t a) {
  return a > UINTPTR_MAX - (kPage - 1) ? kTop : (a + kPage - 1) & ~(kPage - 1);
}
// [a, a+len) page-aligned, saturating instead of wrapping.
inline uintptr_t EndOf(uintptr_t a, size_t len) {
  return len > UINTPTR_MAX - a ? kTop : PageUp(a + len);
}

// Raw syscall: returns the kernel's value (-errno on failure).
inline long RawSyscall6(long nr, long a1, long a2, long a3, long a4, long a5,
                        long a6) {
  long ret;
  register long r10 __asm__("r10") = a4;
  register long r8 __asm__("r8") = a5;
  register long r9 __asm__("r9") = a6;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8),
                     "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}
inline bool Failed(long r) { return r < 0 && r > -4096; }

template <class T = long>
inline T Ret(long r, T fail) {
  if (Failed(r)) {
    errno = static_cast<int>(-r);
    return fail;
  }
  return (T)r;
}

// True when the test-only switch turned this hook's invalidation off.
inline bool TestOff(uint32_t path) {
  return g_patch_test_off.load(std::memory_order_relaxed) & path;
}

// Notifies [start, end) around fn; errno is preserved across the callbacks.
//
// The hooks are hot (laid out next to BeginRange/EndRange in .text.hot, see
// address_space.cc) and errno is reached through a per-thread pointer cached
// on first use instead of a call to __errno_location through the PLT on every
// range: after the kernel's munmap each extra code line (PLT stub, libc's
// __errno_location) and GOT line is a cache miss.
__attribute__((tls_model("initial-exec"))) thread_local int *t_errno = nullptr;

inline int *ErrnoPtr() {
  int *e = t_errno;
  if (e == nullptr) [[unlikely]] {
    e = &errno;
    t_errno = e;
  }
  return e;
}

template <class Fn>
inline long Around(uintptr_t start, uintptr_t end, Fn fn) {
  Frame f;
  int *err = ErrnoPtr();
  int saved = *err;
  BeginRange(&f, start, end);
  *err = saved;
  long r = fn();
  saved = *err;
  EndRange(&f);
  *err = saved;
  return r;
}

// A start/end pair with nothing in between: for memory that changed without
// us bracketing it (see FileHook's second walk).
void NotifyAfter(uintptr_t start, uintptr_t end) {
  if (start >= end) return;
  Around(start, end, [] { return 0L; });
}

void **g_curbrk = nullptr;  // libc's __curbrk

extern "C" __attribute__((hot)) int HookMunmap(void *addr, size_t len) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  long r = Around(PageDown(a), PageUp(a + len), [&] {
    return RawSyscall6(SYS_munmap, static_cast<long>(a), static_cast<long>(len),
                       0, 0, 0, 0);
  });
  return static_cast<int>(Ret(r, -1L));
}

// Advices known to leave every mapped frame in place and every access as it
// was (bit n = advice n). Everything else, including advices this code does not
// know, invalidates: DONTNEED, FREE, REMOVE, DONTNEED_LOCKED (zap), PAGEOUT
// (reclaims: the page may be unmapped into the swap cache), COLLAPSE (copies
// into a new huge page), MERGEABLE / UNMERGEABLE (KSM merges or breaks shared
// pages: new frames), GUARD_INSTALL (zaps, then faults SIGSEGV), GUARD_REMOVE
// (kept invalidating: no frames to lose, but nothing proves it harmless on
// every kernel), HWPOISON / SOFT_OFFLINE (replace or kill the frame).
constexpr uint64_t Bit(int a) { return uint64_t{1} << a; }
constexpr uint64_t kHarmlessAdvice =
    Bit(MADV_NORMAL) | Bit(MADV_RANDOM) | Bit(MADV_SEQUENTIAL) |
    Bit(MADV_WILLNEED) |  // readahead / swap-in: fills holes only
    Bit(10) /*DONTFORK*/ | Bit(11) /*DOFORK*/ | Bit(14) /*HUGEPAGE*/ |
    Bit(15) /*NOHUGEPAGE: does not split existing huge pages*/ |
    Bit(16) /*DONTDUMP*/ | Bit(17) /*DODUMP*/ | Bit(18) /*WIPEONFORK*/ |
    Bit(19) /*KEEPONFORK: both only act in a fork child*/ |
    Bit(20) /*COLD: deactivates on the LRU, unmaps nothing*/ |
    Bit(22) /*POPULATE_READ: faults holes in*/ |
    Bit(23) /*POPULATE_WRITE: as a write by the program*/;
inline bool HarmlessAdvice(int advice) {
  return advice >= 0 && advice < 64 && (kHarmlessAdvice & Bit(advice)) != 0;
}

extern "C" __attribute__((hot)) int HookMadvise(void *addr, size_t len,
                                                int advice) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto call = [&] {
    return RawSyscall6(SYS_madvise, static_cast<long>(a),
                       static_cast<long>(len), advice, 0, 0, 0);
  };
  long r;
  if (!HarmlessAdvice(advice) && !TestOff(kPatchPathMadvise)) {
    r = Around(PageDown(a), EndOf(a, len), call);
  } else {
    r = call();
  }
  return static_cast<int>(Ret(r, -1L));
}

// process_madvise(pidfd, iov, vlen, advice, flags): the pidfd may be our own
// process (any advice since Linux 6.13 for self). Whether it is would take a
// look at /proc; instead every range of a non-harmless advice is bracketed,
// whoever the target (a spurious invalidation for another process's ranges,
// which process_madvise of a foreign pid makes rare). The iovecs are copied
// with process_vm_readv (a bad pointer gives an error, never a fault here);
// more than 16 of them, or unreadable ones, bracket the whole space.
extern "C" long HookProcessMadvise(int pidfd, const struct iovec *iov,
                                   size_t vlen, int advice, unsigned flags) {
  auto call = [&] {
    return RawSyscall6(SYS_process_madvise, pidfd, reinterpret_cast<long>(iov),
                       static_cast<long>(vlen), advice,
                       static_cast<long>(flags), 0);
  };
  if (HarmlessAdvice(advice) || TestOff(kPatchPathProcessMadvise) ||
      vlen == 0) {
    return Ret(call(), -1L);
  }
  uintptr_t lo = 0, hi = kTop;
  constexpr size_t kMaxIov = 16;
  struct iovec copy[kMaxIov];
  if (vlen <= kMaxIov) {
    struct iovec local = {copy, vlen * sizeof(struct iovec)};
    struct iovec remote = {const_cast<struct iovec *>(iov),
                           vlen * sizeof(struct iovec)};
    long pid = RawSyscall6(SYS_getpid, 0, 0, 0, 0, 0, 0);
    long got =
        RawSyscall6(SYS_process_vm_readv, pid, reinterpret_cast<long>(&local),
                    1, reinterpret_cast<long>(&remote), 1, 0);
    if (got == static_cast<long>(vlen * sizeof(struct iovec))) {
      lo = kTop;
      hi = 0;
      for (size_t i = 0; i < vlen; ++i) {
        uintptr_t b = reinterpret_cast<uintptr_t>(copy[i].iov_base);
        if (copy[i].iov_len == 0) continue;
        uintptr_t e = EndOf(b, copy[i].iov_len);
        lo = PageDown(b) < lo ? PageDown(b) : lo;
        hi = e > hi ? e : hi;
      }
    }
  }
  return Ret(Around(lo, hi, call), -1L);
}

// Access is removed unless both read and write remain (removing exec changes
// nothing a registration uses). Adding access needs no invalidation.
inline bool RemovesAccess(int prot) {
  return (prot & (PROT_READ | PROT_WRITE)) != (PROT_READ | PROT_WRITE);
}

// mprotect that removes read or write: the kernel's change_protection() runs
// inside invalidate_range_start/end (mmu_notifier, 2008); so do we, so that a
// registration keeping write (or any) access to memory the program made
// read-only (or PROT_NONE) is dropped and the next get re-registers against
// the new protection.
extern "C" int HookMprotect(void *addr, size_t len, int prot) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto call = [&] {
    return RawSyscall6(SYS_mprotect, static_cast<long>(a),
                       static_cast<long>(len), prot, 0, 0, 0);
  };
  long r;
  if (RemovesAccess(prot) && !TestOff(kPatchPathMprotect)) {
    r = Around(PageDown(a), EndOf(a, len), call);
  } else {
    r = call();
  }
  return static_cast<int>(Ret(r, -1L));
}

// pkey_mprotect: as mprotect; a protection key other than -1 also counts as
// removing access (the key's rights may deny it).
extern "C" int HookPkeyMprotect(void *addr, size_t len, int prot, int pkey) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto call = [&] {
    // glibc: pkey -1 is plain mprotect (works without pkey support).
    return pkey == -1 ? RawSyscall6(SYS_mprotect, static_cast<long>(a),
                                    static_cast<long>(len), prot, 0, 0, 0)
                      : RawSyscall6(SYS_pkey_mprotect, static_cast<long>(a),
                                    static_cast<long>(len), prot, pkey, 0, 0);
  };
  long r;
  if ((RemovesAccess(prot) || pkey != -1) && !TestOff(kPatchPathMprotect)) {
    r = Around(PageDown(a), EndOf(a, len), call);
  } else {
    r = call();
  }
  return static_cast<int>(Ret(r, -1L));
}

// remap_file_pages (deprecated; since Linux 4.0 emulated by mapping the file
// again over [addr, addr+size)): the range's frames change.
extern "C" int HookRemapFilePages(void *addr, size_t size, int prot,
                                  size_t pgoff, int flags) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto call = [&] {
    return RawSyscall6(SYS_remap_file_pages, static_cast<long>(a),
                       static_cast<long>(size), prot, static_cast<long>(pgoff),
                       flags, 0);
  };
  long r = TestOff(kPatchPathRemapFilePages)
               ? call()
               : Around(PageDown(a), EndOf(a, size), call);
  return static_cast<int>(Ret(r, -1L));
}

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

using Vma = procmap::Vma;
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

inline size_t InodeBit(uint64_t ino) {
  return static_cast<size_t>((ino * 0x9E3779B97F4A7C15ull) >> 54);  // 10 bits
}
void NoteMappedInode(uint64_t ino) {
  size_t b = InodeBit(ino);
  g_mapped_inodes[b / 64].fetch_or(uint64_t{1} << (b % 64),
                                   std::memory_order_seq_cst);
}
bool MaybeMapped(uint64_t ino) {
  size_t b = InodeBit(ino);
  return g_mapped_inodes[b / 64].load(std::memory_order_seq_cst) &
         (uint64_t{1} << (b % 64));
}
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
// keeps its frame, only its tail is zeroed; it is included anyway).
extern "C" int HookFtruncate(int fd, off_t len) {
  auto call = [&] {
    return RawSyscall6(SYS_ftruncate, fd, static_cast<long>(len), 0, 0, 0, 0);
  };
  struct stat st;
  long r;
  if (len >= 0 && !TestOff(kPatchPathFile) &&
      RawSyscall6(SYS_fstat, fd, reinterpret_cast<long>(&st), 0, 0, 0, 0) ==
          0 &&
      len < st.st_size) {
    r = FileHook(st.st_ino, PageDown(static_cast<uint64_t>(len)), UINT64_MAX,
                 call);
  } else {
    r = call();
  }
  return static_cast<int>(Ret(r, -1L));
}

extern "C" int HookTruncate(const char *path, off_t len) {
  auto call = [&] {
    return RawSyscall6(SYS_truncate, reinterpret_cast<long>(path),
                       static_cast<long>(len), 0, 0, 0, 0);
  };
  struct stat st;
  long r;
  if (len >= 0 && !TestOff(kPatchPathFile) &&
      RawSyscall6(SYS_stat, reinterpret_cast<long>(path),
                  reinterpret_cast<long>(&st), 0, 0, 0, 0) == 0 &&
      len < st.st_size) {
    r = FileHook(st.st_ino, PageDown(static_cast<uint64_t>(len)), UINT64_MAX,
                 call);
  } else {
    r = call();
  }
  return static_cast<int>(Ret(r, -1L));
}

// glibc's mremap is variadic: new_address is read only with MREMAP_FIXED
// (otherwise glibc passes NULL); the x86_64 calling convention passes it in r8,
// so a 5-argument hook is compatible, provided r8 is ignored without
// MREMAP_FIXED as glibc does (it holds whatever the caller left there, and
// the kernel rejects an unaligned hint for MREMAP_DONTUNMAP with EINVAL).
extern "C" void *HookMremap(void *old_addr, size_t old_len, size_t new_len,
                            int flags, void *new_addr) {
  if (!(flags & MREMAP_FIXED)) new_addr = nullptr;
  uintptr_t a = reinterpret_cast<uintptr_t>(old_addr);
  uintptr_t lo = 0, hi = 0;
  if (flags & (MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) {
    lo = PageDown(a);  // may move: the whole old range may go away
    hi = PageUp(a + old_len);
  } else if (new_len < old_len) {
    lo = PageUp(a + new_len);  // shrink in place: the tail goes away
    hi = PageUp(a + old_len);
  }
  long r = Around(lo, hi, [&] {
    uintptr_t n = reinterpret_cast<uintptr_t>(new_addr);
    if (flags & MREMAP_FIXED) {  // the destination is replaced too
      return Around(PageDown(n), PageUp(n + new_len), [&] {
        return RawSyscall6(
            SYS_mremap, static_cast<long>(a), static_cast<long>(old_len),
            static_cast<long>(new_len), flags, static_cast<long>(n), 0);
      });
    }
    return RawSyscall6(SYS_mremap, static_cast<long>(a),
                       static_cast<long>(old_len), static_cast<long>(new_len),
                       flags, static_cast<long>(n), 0);
  });
  return Ret<void *>(r, MAP_FAILED);
}

extern "C" int HookBrk(void *addr) {
  uintptr_t want = reinterpret_cast<uintptr_t>(addr);
  uintptr_t cur =
      g_curbrk != nullptr ? reinterpret_cast<uintptr_t>(*g_curbrk) : 0;
  uintptr_t lo = 0, hi = 0;
  if (cur != 0 && want != 0 && want < cur) {
    lo = PageUp(want);
    hi = PageUp(cur);
  }
  long r = Around(lo, hi, [&] {
    return RawSyscall6(SYS_brk, static_cast<long>(want), 0, 0, 0, 0, 0);
  });
  if (g_curbrk != nullptr) *g_curbrk = reinterpret_cast<void *>(r);
  if (static_cast<uintptr_t>(r) < want) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

// The span shmdt(addr) detaches. The kernel (ipc/shm.c ksys_shmdt) removes
// every VMA of the segment's file from addr up to addr + the segment's size,
// skipping holes the program unmapped in between: not just the run of VMAs
// that starts at addr. The VMA's inode number is the segment's id (newseg()
// sets i_ino = shmid), so IPC_STAT gives the size without allocating. If that
// fails (no read permission on the segment), the hull of every VMA of that
// inode above addr; without VMA information, everything above addr
// (libfabric's choice): spurious invalidations are harmless, missed ones are
// not.
void ShmExtent(uintptr_t addr, uintptr_t *lo, uintptr_t *hi) {
  Vma v{};
  *lo = PageDown(addr);
  *hi = kTop;
  if (QueryVma(addr, false, false, &v) != 0) return;
  uint64_t inode = v.inode;
  struct shmid_ds ds;
  if (RawSyscall6(SYS_shmctl, static_cast<long>(inode), IPC_STAT,
                  reinterpret_cast<long>(&ds), 0, 0, 0) == 0 &&
      ds.shm_segsz > 0) {
    *hi = EndOf(*lo, ds.shm_segsz);
    if (v.end > *hi) *hi = v.end;
    return;
  }
  *hi = v.end;
  uintptr_t at = v.end;
  Vma n{};
  for (;;) {
    int rc = QueryVma(at, true, true, &n);
    if (rc == -ENOENT) break;
    if (rc != 0 || n.end <= at) {
      *hi = kTop;
      return;
    }
    if (n.inode == inode) *hi = n.end;
    at = n.end;
  }
}

extern "C" int HookShmdt(const void *addr) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  uintptr_t lo = 0, hi = 0;
  int saved = errno;
  if (!TestOff(kPatchPathShmdt)) ShmExtent(a, &lo, &hi);
  errno = saved;
  long r = Around(lo, hi, [&] {
    return RawSyscall6(SYS_shmdt, static_cast<long>(a), 0, 0, 0, 0, 0);
  });
  return static_cast<int>(Ret(r, -1L));
}

extern "C" void *HookShmat(int shmid, const void *addr, int flags) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  uintptr_t lo = 0, hi = 0;
  if ((flags & SHM_REMAP) && a != 0) {
    struct shmid_ds ds;
    if (RawSyscall6(SYS_shmctl, shmid, IPC_STAT, reinterpret_cast<long>(&ds), 0,
                    0, 0) == 0) {
      uintptr_t base = (flags & SHM_RND) ? a & ~(kPage - 1) : a;
      lo = PageDown(base);
      hi = PageUp(base + ds.shm_segsz);
    }
  }
  long r = Around(lo, hi, [&] {
    return RawSyscall6(SYS_shmat, shmid, static_cast<long>(a), flags, 0, 0, 0);
  });
  return Ret<void *>(r, reinterpret_cast<void *>(-1));
}

extern "C" void *HookMmap(void *addr, size_t len, int prot, int flags, int fd,
                          off_t off) {
  if (off & static_cast<off_t>(kPage - 1)) {  // as glibc's mmap64
    errno = EINVAL;
    return MAP_FAILED;
  }
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  uintptr_t lo = 0, hi = 0;
  if (flags & MAP_FIXED) {  // replaces whatever was mapped there
    lo = PageDown(a);
    hi = PageUp(a + len);
  }
  long r = Around(lo, hi, [&] {
    return RawSyscall6(SYS_mmap, static_cast<long>(a), static_cast<long>(len),
                       prot, flags, fd, static_cast<long>(off));
  });
  if (!(flags & MAP_ANONYMOUS) && !Failed(r)) {
    // A file mapping: note its inode for the file hooks (FileHook).
    struct stat st;
    if (RawSyscall6(SYS_fstat, fd, reinterpret_cast<long>(&st), 0, 0, 0, 0) ==
        0)
      NoteMappedInode(st.st_ino);
    g_file_mmaps.fetch_add(1, std::memory_order_seq_cst);
  }
  return Ret<void *>(r, MAP_FAILED);
}

struct Target {
  const char *name;
  void *hook;
  bool required;  // false: skipped with a warning when it cannot be patched
  uint8_t *entry = nullptr;
  uint64_t orig = 0;     // original first 8 bytes
  uint64_t patched = 0;  // what we stored
  bool active = false;
};

// munmap first: its entry is the sentinel (SetGuardLocked). The *64 names are
// aliases of the same code on x86_64 (skipped as duplicates when so).
Target g_targets[] = {
    {"munmap", reinterpret_cast<void *>(&HookMunmap), true},
    {"mremap", reinterpret_cast<void *>(&HookMremap), true},
    {"madvise", reinterpret_cast<void *>(&HookMadvise), true},
    {"brk", reinterpret_cast<void *>(&HookBrk), true},
    {"shmdt", reinterpret_cast<void *>(&HookShmdt), true},
    {"shmat", reinterpret_cast<void *>(&HookShmat), true},
    {"mmap", reinterpret_cast<void *>(&HookMmap), true},
    {"mprotect", reinterpret_cast<void *>(&HookMprotect), false},
    {"pkey_mprotect", reinterpret_cast<void *>(&HookPkeyMprotect), false},
    {"process_madvise", reinterpret_cast<void *>(&HookProcessMadvise), false},
    {"remap_file_pages", reinterpret_cast<void *>(&HookRemapFilePages), false},
    {"fallocate", reinterpret_cast<void *>(&HookFallocate), false},
    {"fallocate64", reinterpret_cast<void *>(&HookFallocate), false},
    {"ftruncate", reinterpret_cast<void *>(&HookFtruncate), false},
    {"ftruncate64", reinterpret_cast<void *>(&HookFtruncate), false},
    {"truncate", reinterpret_cast<void *>(&HookTruncate), false},
    {"truncate64", reinterpret_cast<void *>(&HookTruncate), false},
};
constexpr size_t kTargets = sizeof(g_targets) / sizeof(g_targets[0]);
static_assert(kTargets * 16 <= kPage, "one trampoline page");

// Lock rule: g_mu guards g_targets' mutable fields, g_tramp, g_pages,
// g_npages, g_installed. Taken by install/uninstall/verify only (never by a
// hook). Not held across fork by an atfork handler (that would order it before
// the core's install mutex, which is taken first everywhere else): the child
// handler re-creates it instead.
std::mutex g_mu;
uint8_t *g_tramp = nullptr;  // never unmapped once mapped
bool g_installed = false;
// libc code pages we replaced with a shared copy (see the top of the file);
// only those can be written through an alias. One per target at most. Page i
// is page i of the memfd g_code_fd when `in_memfd`, else shared anonymous
// memory (memfd_create unavailable, or exec mappings of memfds refused by
// vm.memfd_noexec).
struct CodePage {
  uintptr_t page;
  bool in_memfd;
};
CodePage g_pages[kTargets];
size_t g_npages = 0;
int g_code_fd = -1;                       // the memfd; -1 when none
uint64_t g_code_ino = 0, g_code_dev = 0;  // to recognize it if the program
                                          // closed it and reused the number
bool g_atfork_registered = false;

// Another patcher's jump at the entry (jmp rel32/rel8, jmp [rip], movabs
// r11/rax, int3).
bool LooksPatched(const uint8_t *p) {
  return p[0] == 0xE9 || p[0] == 0xEB || p[0] == 0xCC ||
         (p[0] == 0xFF && p[1] == 0x25) || (p[0] == 0x49 && p[1] == 0xBB) ||
         (p[0] == 0x48 && p[1] == 0xB8);
}

// First instructions we know how to patch over (glibc 2.3x x86_64 wrappers).
bool KnownPrologue(const uint8_t *p) {
  return p[0] == 0xB8 ||                                    // mov $imm32, %eax
         (p[0] == 0x48 && p[1] == 0x83 && p[2] == 0xEC) ||  // sub $imm8, %rsp
         (p[0] == 0x41 && p[1] == 0x89 && p[2] == 0xCA) ||  // mov %ecx, %r10d
         (p[0] == 0x49 && p[1] == 0x89 && p[2] == 0xCA) ||  // mov %rcx, %r10
         (p[0] == 0x80 && p[1] == 0x3D) ||  // cmpb $imm8, rel32(%rip): 7 bytes
         (p[0] == 0xF3 && p[1] == 0x0F && p[2] == 0x1E &&
          p[3] == 0xFA);  // endbr64
}

// Maps one page within +-2 GiB of [lo, hi) (for rel32 jumps). nullptr if none
// found.
uint8_t *MapNear(uintptr_t lo, uintptr_t hi) {
  constexpr uintptr_t kStep = 1 << 20;
  constexpr uintptr_t kReach = (uintptr_t{1} << 31) - (uintptr_t{64} << 20);
  for (uintptr_t d = kStep; d < kReach; d += kStep) {
    for (uintptr_t cand : {PageDown(lo) - d, PageUp(hi) + d}) {
      if (cand < (uintptr_t{1} << 16)) continue;
      long r = RawSyscall6(
          SYS_mmap, static_cast<long>(cand), kPage, PROT_READ | PROT_WRITE,
          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      if (!Failed(r)) return reinterpret_cast<uint8_t *>(r);
    }
  }
  return nullptr;
}

// Copies the code page at `page` into dst. Word-sized atomic loads: another
// thread may be storing an entry of this page through an alias (a fork child
// re-privatizing while its parent patches). `own_view`: a fork child; the
// parent may already have rewritten an entry of this still-shared page since
// fork, so this process's own view (the state inherited at fork) is written
// into the copy.
void CopyPage(uint64_t *dst, uintptr_t page, bool own_view) {
  auto *src = reinterpret_cast<const uint64_t *>(page);
  for (size_t i = 0; i < kPage / 8; ++i)
    dst[i] = __atomic_load_n(src + i, __ATOMIC_RELAXED);
  if (!own_view) return;
  for (const Target &t : g_targets) {
    uintptr_t e = reinterpret_cast<uintptr_t>(t.entry);
    if (t.entry == nullptr || t.orig == 0 || PageDown(e) != page) continue;
    dst[(e - page) / 8] = t.active ? t.patched : t.orig;
  }
}

// Replaces the code page at `page` by an anonymous copy, shared or private,
// mapped r-x, in one mremap (atomic for other threads, see the top of the
// file). The copy is made rw-, filled, then made r-x before it moves: no
// mapping is ever w and x at once.
int ReplaceWithAnon(uintptr_t page, bool shared) {
  long a =
      RawSyscall6(SYS_mmap, 0, kPage, PROT_READ | PROT_WRITE,
                  (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
  if (Failed(a)) return static_cast<int>(a);
  CopyPage(reinterpret_cast<uint64_t *>(a), page, !shared);
  long r = RawSyscall6(SYS_mprotect, a, kPage, PROT_READ | PROT_EXEC, 0, 0, 0);
  if (!Failed(r)) {
    r = RawSyscall6(SYS_mremap, a, kPage, kPage, MREMAP_MAYMOVE | MREMAP_FIXED,
                    static_cast<long>(page), 0);
    if (!Failed(r)) return 0;
  }
  RawSyscall6(SYS_munmap, a, kPage, 0, 0, 0, 0);
  return static_cast<int>(r);
}

// The same with page `slot` of the memfd: filled through a rw- mapping of it,
// then mapped r-x over the code page with one mmap(MAP_FIXED) (atomic like the
// mremap). Creates the memfd on first use.
int ReplaceWithMemfdLocked(uintptr_t page, size_t slot) {
  if (g_code_fd < 0) {
    // MFD_EXEC (Linux >= 6.3): executable even where vm.memfd_noexec = 1
    // makes memfds non-executable by default; older kernels reject the flag.
    constexpr long kMfdExec = 0x10;
    const long name = reinterpret_cast<long>("regcache-libc-code");
    long fd =
        RawSyscall6(SYS_memfd_create, name, MFD_CLOEXEC | kMfdExec, 0, 0, 0, 0);
    if (fd == -EINVAL)
      fd = RawSyscall6(SYS_memfd_create, name, MFD_CLOEXEC, 0, 0, 0, 0);
    if (Failed(fd)) return static_cast<int>(fd);
    struct stat st;
    if (RawSyscall6(SYS_fstat, fd, reinterpret_cast<long>(&st), 0, 0, 0, 0)) {
      RawSyscall6(SYS_close, fd, 0, 0, 0, 0, 0);
      return -EBADF;
    }
    g_code_fd = static_cast<int>(fd);
    g_code_ino = st.st_ino;
    g_code_dev = st.st_dev;
  }
  long off = static_cast<long>(slot * kPage);
  long r = RawSyscall6(SYS_ftruncate, g_code_fd, off + static_cast<long>(kPage),
                       0, 0, 0, 0);
  if (Failed(r)) return static_cast<int>(r);
  long a = RawSyscall6(SYS_mmap, 0, kPage, PROT_READ | PROT_WRITE, MAP_SHARED,
                       g_code_fd, off);
  if (Failed(a)) return static_cast<int>(a);
  CopyPage(reinterpret_cast<uint64_t *>(a), page, false);
  RawSyscall6(SYS_munmap, a, kPage, 0, 0, 0, 0);
  r = RawSyscall6(SYS_mmap, static_cast<long>(page), kPage,
                  PROT_READ | PROT_EXEC, MAP_SHARED | MAP_FIXED, g_code_fd,
                  off);
  return Failed(r) ? static_cast<int>(r) : 0;
}

// Makes the code page `page` writable through an alias (replacing it by a
// shared copy the first time). Returns its index in g_pages, or -errno.
int SharePageLocked(uintptr_t page) {
  for (size_t i = 0; i < g_npages; ++i)
    if (g_pages[i].page == page) return static_cast<int>(i);
  if (g_npages == kTargets) return -ENOMEM;  // cannot happen: one per target
  // The memfd first: its alias is a plain mmap, which works everywhere
  // (valgrind refuses the mremap duplicate of shared anonymous memory).
  bool in_memfd = ReplaceWithMemfdLocked(page, g_npages) == 0;
  if (!in_memfd) {
    int rc = ReplaceWithAnon(page, true);
    if (rc != 0) return rc;
  }
  g_pages[g_npages] = {page, in_memfd};
  return static_cast<int>(g_npages++);
}

// A temporary rw- mapping of shared code page i: the memfd's page when the fd
// is still ours (the program may have closed it and reused the number), else
// a duplicate of the mapping (mremap with old_size 0, r-x like the original)
// mprotect'ed straight to rw-. Never w and x at once.
long MapAliasLocked(size_t i) {
  const CodePage &cp = g_pages[i];
  struct stat st;
  if (cp.in_memfd && g_code_fd >= 0 &&
      RawSyscall6(SYS_fstat, g_code_fd, reinterpret_cast<long>(&st), 0, 0, 0,
                  0) == 0 &&
      st.st_ino == g_code_ino && st.st_dev == g_code_dev) {
    long a = RawSyscall6(SYS_mmap, 0, kPage, PROT_READ | PROT_WRITE, MAP_SHARED,
                         g_code_fd, static_cast<long>(i * kPage));
    if (!Failed(a)) return a;
  }
  long a = RawSyscall6(SYS_mremap, static_cast<long>(cp.page), 0, kPage,
                       MREMAP_MAYMOVE, 0, 0);
  if (Failed(a)) return a;
  long r = RawSyscall6(SYS_mprotect, a, kPage, PROT_READ | PROT_WRITE, 0, 0, 0);
  if (Failed(r)) {
    RawSyscall6(SYS_munmap, a, kPage, 0, 0, 0, 0);
    return r;
  }
  return a;
}

// Stores `word` at the 8-aligned `entry` through a temporary rw- alias of its
// shared page: one atomic store, then the alias goes.
int WriteEntry(uint8_t *entry, uint64_t word) {
  uintptr_t page = PageDown(reinterpret_cast<uintptr_t>(entry));
  int i = SharePageLocked(page);
  if (i < 0) return i;
  long alias = MapAliasLocked(static_cast<size_t>(i));
  if (Failed(alias)) return static_cast<int>(alias);
  // 8 bytes of an 8-aligned entry never cross a page.
  auto *w = reinterpret_cast<uint64_t *>(
      alias + static_cast<long>(reinterpret_cast<uintptr_t>(entry) - page));
  __atomic_store_n(w, word, __ATOMIC_SEQ_CST);
  // x86 keeps instruction fetch coherent with stores to the same physical
  // page, whatever the virtual address.
  RawSyscall6(SYS_munmap, alias, kPage, 0, 0, 0, 0);
  return 0;
}

// Fork child: the shared code pages would stay shared with the parent, whose
// later patch/restore would then rewrite this process's libc too. Give the
// child private copies (single-threaded here; the bytes are whole entries,
// old or new, either valid code) and drop the inherited memfd. g_mu may have
// been held by a parent thread at fork: re-create it (nothing else can hold
// it in the child).
void PatchAtforkChild() {
  new (&g_mu) std::mutex();
  for (size_t i = 0; i < g_npages; ++i) ReplaceWithAnon(g_pages[i].page, false);
  g_npages = 0;  // private now: the next write re-shares the page
  if (g_code_fd >= 0) RawSyscall6(SYS_close, g_code_fd, 0, 0, 0, 0, 0);
  g_code_fd = -1;
  int maps = g_maps_fd.exchange(-1);
  if (maps >= 0) {
    RawSyscall6(SYS_close, maps, 0, 0, 0, 0, 0);
    g_maps_fd.store(OpenMaps());  // this process's own mm
  }
}

// PatchIntact's lock-free copy of the active targets' (entry, patched) pairs,
// a seqlock: written only under g_mu, by SetGuardLocked (install) and
// ClearGuardLocked (emptied before uninstall or abandon changes a target), so
// it holds exactly the active targets while g_installed. A reader that sees
// the sequence odd or changed answers from g_targets under g_mu instead.
struct IntactView {
  std::atomic<uint32_t> seq{0};  // odd while being rewritten
  std::atomic<size_t> n{0};
  std::atomic<uint64_t *> entry[kTargets] = {};
  std::atomic<uint64_t> patched[kTargets] = {};
} g_view;

void WriteViewLocked(bool installed) {
  const uint32_t s = g_view.seq.load(std::memory_order_relaxed);
  g_view.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  size_t n = 0;
  for (const Target &t : g_targets) {
    if (!installed || !t.active) continue;
    g_view.entry[n].store(reinterpret_cast<uint64_t *>(t.entry),
                          std::memory_order_relaxed);
    g_view.patched[n].store(t.patched, std::memory_order_relaxed);
    ++n;
  }
  g_view.n.store(n, std::memory_order_relaxed);
  g_view.seq.store(s + 2, std::memory_order_release);
}

void SetGuardLocked() {
  // munmap's entry is the sentinel lock-free lookups check (FastPathOk()).
  internal::g_patch_guard_word = g_targets[0].patched;
  internal::g_patch_guard.store(
      reinterpret_cast<uint64_t *>(g_targets[0].entry),
      std::memory_order_release);
  WriteViewLocked(true);
}

void ClearGuardLocked() {
  internal::g_patch_guard.store(nullptr, std::memory_order_release);
  WriteViewLocked(false);
}

void RestoreLocked() {
  ClearGuardLocked();
  for (Target &t : g_targets) {
    if (!t.active) continue;
    uint64_t now = __atomic_load_n(reinterpret_cast<uint64_t *>(t.entry),
                                   __ATOMIC_SEQ_CST);
    if (now != t.patched) {
      internal::Logf(
          internal::kLogError,
          "notifier: libc %s was re-patched by someone else; leaving it alone",
          t.name);
    } else if (int rc = WriteEntry(t.entry, t.orig); rc != 0) {
      internal::Logf(internal::kLogError,
                     "notifier: cannot restore libc %s: %s", t.name,
                     strerror(-rc));
      continue;
    }
    t.active = false;
  }
  g_installed = false;
}

// Why a target is skipped, or 0 to patch it. Required targets make install
// fail instead.
int CheckTargetLocked(Target &t, void *libc, uintptr_t *lo, uintptr_t *hi) {
  t.entry = static_cast<uint8_t *>(dlsym(libc, t.name));
  if (t.entry == nullptr) return -ENOSYS;
  for (const Target &o : g_targets) {
    if (&o == &t) break;
    if (o.entry == t.entry) {  // an alias of an earlier target
      t.entry = nullptr;
      return -EEXIST;
    }
  }
  if (LooksPatched(t.entry)) return -EALREADY;
  if (!KnownPrologue(t.entry) || (reinterpret_cast<uintptr_t>(t.entry) & 7))
    return -ENOEXEC;
  uintptr_t e = reinterpret_cast<uintptr_t>(t.entry);
  *lo = e < *lo ? e : *lo;
  *hi = e + 16 > *hi ? e + 16 : *hi;
  return 0;
}

}  // namespace

int PatchInstall() {
#if REGCACHE_UNDER_TSAN
  internal::Logf(internal::kLogWarn,
                 "notifier: patch source unavailable under ThreadSanitizer: "
                 "hooks would run instrumented code inside the sanitizer's own "
                 "mmap/munmap interceptors and thread start-up (SEGV in "
                 "__tsan::MemoryAccess observed)");
  return -ENOSYS;
#endif
  std::lock_guard<std::mutex> g(g_mu);
  if (g_installed) return 0;
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (libc == nullptr) return -ENOSYS;
  // Resolve in libc itself: RTLD_DEFAULT could give an interposer (e.g. a
  // sanitizer's).
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  bool skip[kTargets] = {};
  for (size_t i = 0; i < kTargets; ++i) {
    Target &t = g_targets[i];
    int rc = CheckTargetLocked(t, libc, &lo, &hi);
    if (rc == 0) continue;
    skip[i] = true;
    if (rc == -EEXIST || (!t.required && rc == -ENOSYS)) continue;
    if (rc == -EALREADY && t.required) {
      // Info: what replaces the patch source (ucm, uffd, or no caching with
      // one warning) is policy.cc's decision and message.
      internal::Logf(internal::kLogInfo,
                     "notifier: patch: libc %s is already patched by another "
                     "library (UCX libucm, Open MPI, libfabric memhooks?)",
                     t.name);
      dlclose(libc);
      return -EALREADY;
    }
    if (t.required) {
      internal::Logf(internal::kLogWarn,
                     "notifier: patch: %s of libc %s; not patching",
                     rc == -ENOSYS ? "no symbol"
                                   : "unknown prologue or "
                                     "alignment",
                     t.name);
      dlclose(libc);
      return -ENOSYS;
    }
    internal::Logf(internal::kLogWarn,
                   "notifier: patch: not hooking libc %s (%s): changes it "
                   "makes are not seen",
                   t.name,
                   rc == -EALREADY ? "patched by another library"
                                   : "unknown prologue or alignment");
  }
  g_curbrk = static_cast<void **>(dlsym(libc, "__curbrk"));
  dlclose(libc);  // RTLD_NOLOAD took a reference; libc stays loaded regardless
  if (g_curbrk == nullptr) return -ENOSYS;
  if (g_tramp == nullptr) {
    g_tramp = MapNear(lo, hi);
    if (g_tramp == nullptr) return -ENOMEM;
    for (size_t i = 0; i < kTargets; ++i) {
      uint8_t *s = g_tramp + 16 * i;
      uint64_t hook = reinterpret_cast<uint64_t>(g_targets[i].hook);
      s[0] = 0x49;  // movabs $hook, %r11
      s[1] = 0xBB;
      memcpy(s + 2, &hook, 8);
      s[10] = 0x41;  // jmp *%r11
      s[11] = 0xFF;
      s[12] = 0xE3;
      s[13] = s[14] = s[15] = 0xCC;
    }
    long r = RawSyscall6(SYS_mprotect, reinterpret_cast<long>(g_tramp), kPage,
                         PROT_READ | PROT_EXEC, 0, 0, 0);
    if (Failed(r)) return static_cast<int>(r);
  }
  // For shmdt's extent and the file hooks' mappings (before any hook runs);
  // without it they over-invalidate (everything above addr / the whole space).
  if (g_maps_fd.load() < 0) g_maps_fd.store(OpenMaps());
  if (!g_atfork_registered) {
    if (int rc = pthread_atfork(nullptr, nullptr, &PatchAtforkChild); rc != 0)
      return -rc;
    g_atfork_registered = true;
  }
  for (size_t i = 0; i < kTargets; ++i) {
    Target &t = g_targets[i];
    if (skip[i]) continue;
    int64_t rel = reinterpret_cast<int64_t>(g_tramp + 16 * i) -
                  (reinterpret_cast<int64_t>(t.entry) + 5);
    if (rel < INT32_MIN || rel > INT32_MAX) {
      RestoreLocked();
      return -ENOMEM;
    }
    t.orig = __atomic_load_n(reinterpret_cast<uint64_t *>(t.entry),
                             __ATOMIC_SEQ_CST);
    uint8_t bytes[8];
    memcpy(bytes, &t.orig, 8);
    bytes[0] = 0xE9;
    int32_t rel32 = static_cast<int32_t>(rel);
    memcpy(bytes + 1, &rel32, 4);
    memcpy(&t.patched, bytes, 8);
    int rc = WriteEntry(t.entry, t.patched);
    if (rc != 0) {
      internal::Logf(internal::kLogWarn,
                     "notifier: patch: cannot write libc %s: %s", t.name,
                     strerror(-rc));
      RestoreLocked();
      return rc;
    }
    t.active = true;
  }
  // The file hooks' filter: every file mapped now (later ones go through the
  // mmap hook, patched above).
  NoteAllMappedInodes();
  g_installed = true;
  SetGuardLocked();
  return 0;
}

bool PatchIntact(const char **which) {
  // Every miss asks (VerifySources): the common answer, intact, from the
  // view without g_mu (a mutex round trip was ~60 of a miss's ~2 400
  // instructions). Every active entry is still compared (ANOTHER PATCHER).
  // Damaged, or the view changing under us: the locked compare below
  // decides, and names the entry.
  if (const uint32_t s = g_view.seq.load(std::memory_order_acquire);
      (s & 1) == 0) {
    const size_t n = g_view.n.load(std::memory_order_relaxed);
    uint64_t diff = 0;  // no branch per entry: damage is the rare answer
    for (size_t i = 0; i < n; ++i)
      diff |= __atomic_load_n(g_view.entry[i].load(std::memory_order_relaxed),
                              __ATOMIC_SEQ_CST) ^
              g_view.patched[i].load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (diff == 0 && g_view.seq.load(std::memory_order_relaxed) == s)
      return true;
  }
  std::lock_guard<std::mutex> g(g_mu);
  if (!g_installed) return true;
  for (const Target &t : g_targets) {
    if (!t.active) continue;
    if (__atomic_load_n(reinterpret_cast<uint64_t *>(t.entry),
                        __ATOMIC_SEQ_CST) != t.patched) {
      if (which) *which = t.name;
      return false;
    }
  }
  return true;
}

void PatchAbandon() {
  std::lock_guard<std::mutex> g(g_mu);
  ClearGuardLocked();
  // The entries now belong to whoever overwrote them: restoring our saved
  // bytes would break that library, so nothing is written.
  for (Target &t : g_targets) t.active = false;
  g_installed = false;
}

void PatchUninstall() {
  std::lock_guard<std::mutex> g(g_mu);
  if (g_installed) RestoreLocked();
}

namespace {
// Runs at exit after the library's default-priority destructor (which tears the
// address space down): lower destructor priorities run later. Not at dlclose:
// the library is -z nodelete, its code stays and so may the patch (a library
// that also restored at dlclose would have to wait for every thread to leave
// the hooks, which nothing can bound).
__attribute__((destructor(200))) void PatchFini() { PatchUninstall(); }
}  // namespace

#else  // !__x86_64__

int PatchInstall() { return -ENOSYS; }
void PatchUninstall() {}
bool PatchIntact(const char **) { return true; }
void PatchAbandon() {}

#endif

const SourceOps kPatchOps = {Source::kPatch, "patch",     PatchInstall,
                             PatchUninstall, nullptr,     nullptr,
                             PatchIntact,    PatchAbandon};

}  // namespace regcache::notifier::sources

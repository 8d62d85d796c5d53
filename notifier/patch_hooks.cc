// SPDX-License-Identifier: BSD-3-Clause
// notifier/patch_hooks.cc - the patch source's memory hooks: munmap, mremap,
// madvise, process_madvise, mprotect, pkey_mprotect, remap_file_pages, brk,
// shmdt, shmat, mmap (what each brackets, and why, is beside it; the file
// hooks are in patch_file_hooks.cc).
#include <errno.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>

#include "notifier/patch_internal.h"

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#ifndef SHM_REMAP
#define SHM_REMAP 040000
#endif

#if defined(__x86_64__)

namespace regcache::notifier::sources {
inline namespace patch_impl {

// A start/end pair with nothing in between: for memory that changed without
// us bracketing it (see FileHook's second walk).
void NotifyAfter(uintptr_t start, uintptr_t end) {
  if (start >= end) return;
  Around(start, end, [] { return 0L; });
}

// The hooks' errno pointer (patch_internal.h, ErrnoPtr).
constinit __attribute__((tls_model("initial-exec"))) thread_local int *t_errno =
    nullptr;

extern "C" __attribute__((hot)) int HookMunmap(void *addr, size_t len) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  long r = Around(PageDown(a), PageUp(a + len), [&] {
    return RawSyscall6(SYS_munmap, static_cast<long>(a), static_cast<long>(len),
                       0, 0, 0, 0);
  });
  return static_cast<int>(Ret(r, -1L));
}

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace patch_impl
}  // namespace regcache::notifier::sources

#endif  // __x86_64__

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
// HOW (x86_64). Each patched entry gets a 5-byte `jmp rel32` to a 16-byte slot
// in a trampoline page that we map within +-2 GiB of libc; the slot holds
// `movabs r11, <hook>; jmp r11` (the 13-byte absolute jump, which needs no
// proximity).
//
// WHY THIS IS SAFE WHILE OTHER THREADS RUN (the failure mode of libfabric
// #7569/#10943):
//   * The 5 new bytes are written with ONE aligned 8-byte atomic store
//   (function entries
//     are 16-byte aligned; the other 3 bytes are rewritten with their own
//     values). A thread fetching the entry sees either the old or the new
//     instruction bytes, never a mix. A 13-byte write would be torn: no store
//     covers it atomically.
//   * Only bytes 0..4 change. For munmap, madvise, brk, shmdt, shmat the first
//   instruction
//     is the 5-byte `mov $nr, %eax`, and the `syscall` starts at byte 5: a
//     thread sleeping in the syscall returns to byte 7, which we never touch.
//     (With a 13-byte patch, a thread blocked in munmap during installation
//     would return into the middle of the movabs.)
//   * Residual risk: mremap and mmap start with shorter instructions (4 and 3
//   bytes). A
//     thread that was preempted exactly between their first and second
//     instruction while we patch resumes inside the jmp's displacement. That
//     needs a preemption at one specific instruction boundary during a
//     microsecond window, once per process; no syscall sits in those bytes.
//     Documented in docs/notifier.md.
//   * The page is made RWX (never RW: other threads are executing on it),
//   patched, and
//     restored to R-X. The trampoline page is never unmapped, so a thread that
//     entered it before a restore completes safely; restore is the same atomic
//     store in reverse.
//   * Before patching, every entry is checked: a jump or int3 at the entry
//   means another
//     patcher owns it (UCX libucm in bistro mode, Open MPI, libfabric
//     memhooks): we refuse with -EALREADY and one error line, instead of
//     overwriting them (libfabric PR #6474: two patchers overwriting each other
//     corrupted data). An unknown prologue also refuses.
//
// HOOKS run the raw syscall themselves (the original prologue is gone), with
// start before and end after, and restore errno like libc. brk updates libc's
// __curbrk as glibc's brk does. sbrk is not patched: glibc's sbrk calls brk
// (tested), so patching it as well would only reimplement its __libc_initial
// checks.
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/procmap.h"
#include "notifier/sources.h"

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#ifndef SHM_REMAP
#define SHM_REMAP 040000
#endif

namespace regcache::notifier::sources {

#if defined(__x86_64__)
namespace {

using internal::BeginRange;
using internal::EndRange;
using internal::Frame;

constexpr uintptr_t kPage = 4096;
inline uintptr_t PageDown(uintptr_t a) { return a & ~(kPage - 1); }
inline uintptr_t PageUp(uintptr_t a) {
  return a > UINTPTR_MAX - (kPage - 1) ? UINTPTR_MAX & ~(kPage - 1)
                                       : (a + kPage - 1) & ~(kPage - 1);
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

template <class T = long>
inline T Ret(long r, T fail) {
  if (r < 0 && r > -4096) {
    errno = static_cast<int>(-r);
    return fail;
  }
  return (T)r;
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

void **g_curbrk = nullptr;  // libc's __curbrk

extern "C" __attribute__((hot)) int HookMunmap(void *addr, size_t len) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  long r = Around(PageDown(a), PageUp(a + len), [&] {
    return RawSyscall6(SYS_munmap, static_cast<long>(a), static_cast<long>(len),
                       0, 0, 0, 0);
  });
  return static_cast<int>(Ret(r, -1L));
}

extern "C" __attribute__((hot)) int HookMadvise(void *addr, size_t len,
                                                int advice) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto call = [&] {
    return RawSyscall6(SYS_madvise, static_cast<long>(a),
                       static_cast<long>(len), advice, 0, 0, 0);
  };
  long r;
  if (advice == MADV_DONTNEED || advice == MADV_FREE || advice == MADV_REMOVE ||
      advice == MADV_DONTNEED_LOCKED) {
    r = Around(PageDown(a), PageUp(a + len), call);
  } else {
    r = call();
  }
  return static_cast<int>(Ret(r, -1L));
}

// glibc's mremap is variadic (new_address only read with
// MREMAP_FIXED/DONTUNMAP); the x86_64 calling convention passes it in r8 either
// way, so a 5-argument hook is compatible.
extern "C" void *HookMremap(void *old_addr, size_t old_len, size_t new_len,
                            int flags, void *new_addr) {
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

// The extent of the SysV segment attached at addr: consecutive VMAs with the
// same inode.
void ShmExtent(uintptr_t addr, uintptr_t *lo, uintptr_t *hi) {
  procmap::Vma v;
  if (procmap::Query(addr, false, &v) != 0) {
    // No VMA information: invalidate everything above addr (libfabric's
    // choice); spurious invalidations are harmless, missed ones are not.
    *lo = PageDown(addr);
    *hi = UINTPTR_MAX & ~(kPage - 1);
    return;
  }
  *lo = v.start;
  *hi = v.end;
  uint64_t inode = v.inode;
  procmap::Vma n;
  while (procmap::Query(*hi, false, &n) == 0 && n.start == *hi &&
         n.inode == inode)
    *hi = n.end;
}

extern "C" int HookShmdt(const void *addr) {
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  uintptr_t lo, hi;
  int saved = errno;
  ShmExtent(a, &lo, &hi);
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
  return Ret<void *>(r, MAP_FAILED);
}

struct Target {
  const char *name;
  void *hook;
  uint8_t *entry = nullptr;
  uint64_t orig = 0;     // original first 8 bytes
  uint64_t patched = 0;  // what we stored
  bool active = false;
};

Target g_targets[] = {
    {"munmap", reinterpret_cast<void *>(&HookMunmap)},
    {"mremap", reinterpret_cast<void *>(&HookMremap)},
    {"madvise", reinterpret_cast<void *>(&HookMadvise)},
    {"brk", reinterpret_cast<void *>(&HookBrk)},
    {"shmdt", reinterpret_cast<void *>(&HookShmdt)},
    {"shmat", reinterpret_cast<void *>(&HookShmat)},
    {"mmap", reinterpret_cast<void *>(&HookMmap)},
};
constexpr size_t kTargets = sizeof(g_targets) / sizeof(g_targets[0]);

std::mutex g_mu;
uint8_t *g_tramp = nullptr;  // never unmapped once mapped
bool g_installed = false;

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
      if (r >= 0 || r < -4095) return reinterpret_cast<uint8_t *>(r);
    }
  }
  return nullptr;
}

int SetProt(uint8_t *entry, int prot) {
  uintptr_t p = PageDown(reinterpret_cast<uintptr_t>(entry));
  // 8 bytes of an 8-aligned entry never cross a page.
  long r =
      RawSyscall6(SYS_mprotect, static_cast<long>(p), kPage, prot, 0, 0, 0);
  return r < 0 ? static_cast<int>(r) : 0;
}

int WriteEntry(uint8_t *entry, uint64_t word) {
  int rc = SetProt(entry, PROT_READ | PROT_WRITE | PROT_EXEC);
  if (rc != 0) return rc;
  __atomic_store_n(reinterpret_cast<uint64_t *>(entry), word, __ATOMIC_SEQ_CST);
  __builtin___clear_cache(reinterpret_cast<char *>(entry),
                          reinterpret_cast<char *>(entry + 8));
  return SetProt(entry, PROT_READ | PROT_EXEC);
}

void SetGuardLocked() {
  // munmap's entry is the sentinel lock-free lookups check (FastPathOk()).
  internal::g_patch_guard_word = g_targets[0].patched;
  internal::g_patch_guard.store(
      reinterpret_cast<uint64_t *>(g_targets[0].entry),
      std::memory_order_release);
}

void ClearGuardLocked() {
  internal::g_patch_guard.store(nullptr, std::memory_order_release);
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
  for (Target &t : g_targets) {
    t.entry = static_cast<uint8_t *>(dlsym(libc, t.name));
    if (t.entry == nullptr) {
      internal::Logf(internal::kLogWarn, "notifier: patch: libc has no %s",
                     t.name);
      dlclose(libc);
      return -ENOSYS;
    }
    uintptr_t e = reinterpret_cast<uintptr_t>(t.entry);
    lo = e < lo ? e : lo;
    hi = e + 16 > hi ? e + 16 : hi;
  }
  g_curbrk = static_cast<void **>(dlsym(libc, "__curbrk"));
  dlclose(libc);  // RTLD_NOLOAD took a reference; libc stays loaded regardless
  if (g_curbrk == nullptr) return -ENOSYS;
  for (Target &t : g_targets) {
    if (LooksPatched(t.entry)) {
      internal::Logf(
          internal::kLogError,
          "notifier: libc %s is already patched by another library (UCX "
          "libucm, "
          "Open MPI or libfabric memhooks?); refusing the patch source. Use "
          "REGCACHE_MONITOR=uffd, or none with regcache_notify_unmapped() "
          "called "
          "from that library's hooks",
          t.name);
      return -EALREADY;
    }
    if (!KnownPrologue(t.entry) ||
        (reinterpret_cast<uintptr_t>(t.entry) & 7) != 0) {
      internal::Logf(internal::kLogWarn,
                     "notifier: patch: unknown prologue or alignment of libc "
                     "%s; not patching",
                     t.name);
      return -ENOSYS;
    }
  }
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
    if (r < 0) return static_cast<int>(r);
  }
  for (size_t i = 0; i < kTargets; ++i) {
    Target &t = g_targets[i];
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
                     "notifier: patch: mprotect of libc %s: %s", t.name,
                     strerror(-rc));
      RestoreLocked();
      return rc;
    }
    t.active = true;
  }
  procmap::Init();  // for shmdt's extent; without it shmdt over-invalidates
  g_installed = true;
  SetGuardLocked();
  return 0;
}

bool PatchIntact(const char **which) {
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
// Runs after the library's default-priority destructor (which tears the address
// space down): lower destructor priorities run later. Restoring here matters
// for dlclose(), which would otherwise leave libc jumping into unmapped hook
// code.
__attribute__((destructor(200))) void PatchFini() { PatchUninstall(); }
}  // namespace

#else  // !__x86_64__

int PatchInstall() { return -ENOSYS; }
void PatchUninstall() {}
bool PatchIntact(const char **) { return true; }
void PatchAbandon() {}

#endif

}  // namespace regcache::notifier::sources

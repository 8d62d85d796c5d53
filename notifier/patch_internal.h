/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/patch_internal.h - what the units of the patch source share
// (x86_64 only): raw syscalls and page arithmetic for code that must not call
// libc's patched entry points, the bracket a hook puts around its syscall, the
// hooks themselves, the target table and its lock, and the services one unit
// gives another. The design is at the top of patch.cc.
//
// Units: patch.cc (the target table, install / verify / uninstall),
// patch_hooks.cc (the memory hooks), patch_file_hooks.cc (the hooks' VMA
// lookups and the file hooks), patch_x86.cc (recognizing entry prologues and
// other patchers' jumps), patch_code_write.cc (writing libc's code: W^X pages,
// atomic entry stores, the fork child's private copies).
#ifndef REGCACHE_NOTIFIER_PATCH_INTERNAL_H_
#define REGCACHE_NOTIFIER_PATCH_INTERNAL_H_

#include <errno.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/procmap_query.h"
#include "notifier/sources.h"

#if defined(__x86_64__)

// The patch source's internals live in an inline namespace: found by
// unqualified lookup from regcache::notifier::sources (the bodies read as when
// they were one file), with symbols of their own (the uffd source's units
// have theirs: both have a g_mu).
namespace regcache::notifier::sources {
inline namespace patch_impl {

// Hidden: shared by the patch units only, reached without the GOT (the hooks
// are on the munmap path).
#pragma GCC visibility push(hidden)

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
// REGCACHE_HOT in address_space_state.h) and errno is reached through a
// per-thread pointer cached on first use instead of a call to __errno_location
// through the PLT on every range: after the kernel's munmap each extra code
// line (PLT stub, libc's __errno_location) and GOT line is a cache miss.
extern constinit __attribute__((
    tls_model("initial-exec"))) thread_local int *t_errno;  // patch_hooks.cc

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
// us bracketing it (see FileHook's second walk). patch_hooks.cc.
void NotifyAfter(uintptr_t start, uintptr_t end);

// libc's __curbrk (HookBrk keeps it as glibc's brk does). Set by PatchInstall
// (under g_mu) before any entry is patched; read by HookBrk.
extern void **g_curbrk;

// The hooks (patch_hooks.cc, patch_file_hooks.cc): libc's entry points jump to
// them through the trampoline. Each runs the raw syscall between BeginRange
// and EndRange of what it changes, and sets errno as libc would.
extern "C" int HookMunmap(void *addr, size_t len);
extern "C" int HookMadvise(void *addr, size_t len, int advice);
extern "C" long HookProcessMadvise(int pidfd, const struct iovec *iov,
                                   size_t vlen, int advice, unsigned flags);
extern "C" int HookMprotect(void *addr, size_t len, int prot);
extern "C" int HookPkeyMprotect(void *addr, size_t len, int prot, int pkey);
extern "C" int HookRemapFilePages(void *addr, size_t size, int prot,
                                  size_t pgoff, int flags);
extern "C" int HookFallocate(int fd, int mode, off_t off, off_t len);
extern "C" int HookFtruncate(int fd, off_t len);
extern "C" int HookTruncate(const char *path, off_t len);
extern "C" void *HookMremap(void *old_addr, size_t old_len, size_t new_len,
                            int flags, void *new_addr);
extern "C" int HookBrk(void *addr);
extern "C" int HookShmdt(const void *addr);
extern "C" void *HookShmat(int shmid, const void *addr, int flags);
extern "C" void *HookMmap(void *addr, size_t len, int prot, int flags, int fd,
                          off_t off);
// ld.so's _dl_debug_state (patch_dl_hook.cc): brackets dlclose's unmapping.
extern "C" void HookDlDebugState();
// ld.so's _r_debug (the first namespace's r_debug_extended), for the hook's
// r_state. Set by PatchInstall (under g_mu) before the entry is patched.
extern void *g_r_debug;

// VMA lookups for the hooks (patch_file_hooks.cc). g_maps_fd: our own
// PROCMAP_QUERY fd on /proc/self/maps; -1 until install, or when
// PROCMAP_QUERY is unavailable (Linux < 6.11). Set by PatchInstall and the
// fork child handler; read by the hooks (acquire).
extern std::atomic<int> g_maps_fd;
int OpenMaps();
using Vma = procmap::Vma;
// The VMA containing addr (next: the first at or above it; file: file-backed
// ones only). 0, -ENOENT (none), or another -errno (no information).
int QueryVma(uintptr_t addr, bool next, bool file, Vma *out);
// The file hooks' filter of mapped inodes (patch_file_hooks.cc): the mmap
// hook notes each file it maps and counts file mappings (g_file_mmaps);
// install notes every file mapped then. Lock-free.
extern std::atomic<uint64_t> g_file_mmaps;
void NoteMappedInode(uint64_t ino);
void NoteAllMappedInodes();

// One patched entry point. name, hook, required: constant; the rest under
// g_mu (entry, orig, patched set by install; active while our jump is there).
struct Target {
  const char *name;
  void *hook;
  bool required;  // false: skipped with a warning when it cannot be patched
  bool in_ldso = false;  // resolved in ld.so (LD_SO) instead of libc
  uint8_t *entry = nullptr;
  uint64_t orig = 0;     // original first 8 bytes
  uint64_t patched = 0;  // what we stored
  bool active = false;
};

// The entries to patch (patch.cc), one trampoline slot each. kTargets is the
// number of rows of g_targets (a row too many does not compile).
constexpr size_t kTargets = 18;
static_assert(kTargets * 16 <= kPage, "one trampoline page");
extern Target g_targets[kTargets];

// Lock rule: g_mu guards g_targets' mutable fields, g_tramp and g_installed
// (patch.cc), g_pages, g_npages and the memfd (patch_code_write.cc). Taken by
// install/uninstall/verify only (never by a hook). Not held across fork by an
// atfork handler (that would order it before the core's install mutex, which is
// taken first everywhere else): the child handler re-creates it instead.
extern std::mutex g_mu;

// x86-64 code recognition (patch_x86.cc).
// Another patcher's jump at the entry (jmp rel32/rel8, jmp [rip], movabs
// r11/rax, int3).
bool LooksPatched(const uint8_t *p);
// First instructions we know how to patch over (glibc 2.3x x86_64 wrappers).
bool KnownPrologue(const uint8_t *p);

// Writing libc's code (patch_code_write.cc). REQUIRES g_mu held, but for
// PatchAtforkChild (the fork child handler: single-threaded).
// Maps one page within +-2 GiB of [lo, hi) (for rel32 jumps). nullptr if none
// found.
uint8_t *MapNear(uintptr_t lo, uintptr_t hi);
// Stores `word` at the 8-aligned `entry` through a temporary rw- alias of its
// shared page: one atomic store, then the alias goes.
int WriteEntry(uint8_t *entry, uint64_t word);
// The fork child handler (registered by PatchInstall): private code pages,
// the child's own maps fd, a fresh g_mu.
void PatchAtforkChild();

#pragma GCC visibility pop

}  // namespace patch_impl
}  // namespace regcache::notifier::sources

#endif  // __x86_64__

#endif  // REGCACHE_NOTIFIER_PATCH_INTERNAL_H_

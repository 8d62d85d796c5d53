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
#include <pthread.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>

#include "notifier/address_space.h"
#include "notifier/internal.h"
#include "notifier/patch_internal.h"
#include "notifier/sources.h"

namespace regcache::notifier::sources {

std::atomic<uint32_t> g_patch_test_off{0};

#if defined(__x86_64__)

inline namespace patch_impl {

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
    // Not libc: ld.so unmaps a dlclose'd object with its own munmap, which
    // no libc hook sees (patch_dl_hook.cc).
    {"_dl_debug_state", reinterpret_cast<void *>(&HookDlDebugState), false,
     true},
};

std::mutex g_mu;
void **g_curbrk = nullptr;  // libc's __curbrk

}  // namespace patch_impl

namespace {

uint8_t *g_tramp = nullptr;  // never unmapped once mapped
bool g_installed = false;
bool g_atfork_registered = false;

// PatchIntact's lock-free copy of the active targets' (entry, patched) pairs,
// a seqlock: written only under g_mu, by SetGuardLocked (install) and
// ClearGuardLocked (emptied before uninstall or abandon changes a target), so
// it holds exactly the active targets while g_installed. A reader that sees
// the sequence odd or changed answers from g_targets under g_mu instead.
// Every one of the kTargets slots is compared, always: a slot without an
// active target names g_view_pad with 0 expected (a fixed trip count the
// compilers unroll: no loop branch whose exit the predictor must learn, and
// half the instructions of the loop over the active count).
uint64_t g_view_pad = 0;  // never written
struct IntactView {
  std::atomic<uint32_t> seq{0};  // odd while being rewritten
  std::atomic<uint64_t *> entry[kTargets] = {};
  std::atomic<uint64_t> patched[kTargets] = {};
  // Constant-initialized (constinit below): the view is valid before any
  // constructor can install the patch.
  template <size_t... I>
  constexpr explicit IntactView(std::index_sequence<I...>)
      : entry{((void)I, &g_view_pad)...} {}
};
constinit IntactView g_view{std::make_index_sequence<kTargets>{}};

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
  for (; n < kTargets; ++n) {
    g_view.entry[n].store(&g_view_pad, std::memory_order_relaxed);
    g_view.patched[n].store(0, std::memory_order_relaxed);
  }
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
int CheckTargetLocked(Target &t, void *libc, void *ldso, uintptr_t *lo,
                      uintptr_t *hi) {
  if (t.in_ldso) {
    // A handle of ld.so finds nothing through dlsym (its map has no search
    // list): the global scope, and dladdr says whether that is ld.so. The
    // hook reads _r_debug: without it, nothing to patch.
    if (g_r_debug == nullptr) return -ENOSYS;
    t.entry = static_cast<uint8_t *>(dlsym(RTLD_DEFAULT, t.name));
    Dl_info info;
    if (t.entry == nullptr || dladdr(t.entry, &info) == 0 ||
        info.dli_fbase != ldso)
      t.entry = nullptr;
  } else {
    t.entry = static_cast<uint8_t *>(dlsym(libc, t.name));
  }
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
  // ld.so's load address and its _r_debug, for _dl_debug_state (none: that
  // target is skipped).
  void *ldso = reinterpret_cast<void *>(getauxval(AT_BASE));
  g_r_debug = ldso ? dlsym(RTLD_DEFAULT, "_r_debug") : nullptr;
  // Resolve in libc itself: RTLD_DEFAULT could give an interposer (e.g. a
  // sanitizer's).
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  bool skip[kTargets] = {};
  for (size_t i = 0; i < kTargets; ++i) {
    Target &t = g_targets[i];
    int rc = CheckTargetLocked(t, libc, ldso, &lo, &hi);
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
      internal::Logf(
          internal::kLogWarn, "notifier: patch: %s of libc %s; not patching",
          rc == -ENOSYS ? "no symbol" : "unknown prologue or alignment",
          t.name);
      dlclose(libc);
      return -ENOSYS;
    }
    internal::Logf(internal::kLogWarn,
                   "notifier: patch: not hooking %s %s (%s): changes it "
                   "makes are not seen",
                   t.in_ldso ? "ld.so" : "libc", t.name,
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
    uint64_t diff = 0;  // no branch per entry: damage is the rare answer
#pragma GCC unroll 18
    for (size_t i = 0; i < kTargets; ++i)
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

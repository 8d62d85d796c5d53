// SPDX-License-Identifier: BSD-3-Clause
// notifier/ucm_import.cc - the ucm event source: imports UCX libucm's memory
// events when libucm owns libc's entry points.
//
// WHY. UCX's libucm patches libc's munmap/mremap/madvise/brk/sbrk/shmat/shmdt/
// mmap entries itself (its "bistro" mode, the default on x86_64 and aarch64)
// and calls the raw syscalls from its hooks. In a process where libucm patched
// first, our patch source cannot install (the entries are taken) and, if
// libucm patches after us, ours is silently bypassed. Both leave the cache
// blind unless we listen to libucm.
//
// WHAT WE SUBSCRIBE TO (checked against UCX v1.13.1 src/ucm/event/event.c and
// src/ucm/mmap/install.c). libucm's hooks (ucm_munmap, ucm_mremap, ucm_madvise,
// ucm_brk, ucm_sbrk, ucm_shmat, ucm_shmdt, ucm_mmap) take libucm's event
// read-lock, dispatch the aggregate UCM_EVENT_VM_UNMAPPED (a pre-event only),
// then dispatch the NATIVE event to a handler list sorted by priority in which
// libucm's own handler at priority 0 performs the syscall. A native handler
// with a negative priority therefore runs before the memory changes and one
// with a positive priority after it, on the same thread, with the same
// ucm_event_t, under the same read-lock (so no handler can be added or removed
// in between: ucm_set_event_handler takes the write lock). We register one of
// each and turn them into BeginRange/EndRange: the same bracket as the patch
// source, so no thread can register the old pages between the event and the
// change, which a VM_UNMAPPED pre-event alone cannot prevent.
//
// COVERAGE (each reported before the change; checked by
// tests/notifier/policy/ucm_events_test.cc): munmap; mremap (the old range,
// or its tail when shrinking in place; libucm's hook drops mremap's 5th
// argument, so with MREMAP_FIXED the whole address space is invalidated);
// madvise with any advice not known to keep the pages (DONTNEED, FREE, REMOVE,
// DONTNEED_LOCKED, guard pages, unknown advices); brk/sbrk shrinking;
// shmdt (the attached segment's extent); shmat(SHM_REMAP); mmap(MAP_FIXED).
// Not imported: UCM_EVENT_MEM_TYPE_FREE (device memory: regcache caches host
// memory only), and unmaps a host reports to libucm with ucm_vm_munmap() (its
// "external events": such a host should call regcache_notify_unmap_start/end
// too).
//
// libucm is never linked: dlopen(RTLD_NOLOAD) finds it only when the process
// has loaded it, and libucm makes itself unloadable once it has installed
// hooks (ucm_prevent_dl_unload). The handlers stay registered until
// UcmUninstall (tests, or a later explicit source choice).
#include <dlfcn.h>
#include <errno.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "notifier/internal.h"
#include "notifier/policy.h"
#include "notifier/procmap.h"
#include "notifier/sources.h"

#ifndef SHM_REMAP
#define SHM_REMAP 040000
#endif

namespace regcache::notifier::sources {
namespace {

using internal::BeginRange;
using internal::EndRange;
using internal::Frame;

// The subset of <ucm/api/ucm.h> we use, copied so that building regcache
// needs no UCX headers. ucm's ABI (event bits, ucm_event_t layout, handler
// signature) has been stable since UCX 1.4.
constexpr int kUcmMmap = 1 << 0;
constexpr int kUcmMunmap = 1 << 1;
constexpr int kUcmMremap = 1 << 2;
constexpr int kUcmShmat = 1 << 3;
constexpr int kUcmShmdt = 1 << 4;
constexpr int kUcmSbrk = 1 << 5;
constexpr int kUcmMadvise = 1 << 6;
constexpr int kUcmBrk = 1 << 7;
// kUcmSbrk separately, with kUcmNoInstall: libucm hooks sbrk at start-up
// (its bistro mode patches every entry when libucs initializes it) and glibc's
// sbrk then never reaches brk's entry, but asking for SBRK events makes libucm
// re-test its sbrk hook, which fails in UCX 1.13 (UCS_ERR_UNSUPPORTED,
// measured). NO_INSTALL adds the handler without that test; if the sbrk hook
// is not installed, glibc's sbrk calls brk's entry, which is (UCM_EVENT_BRK).
constexpr int kUcmNative = kUcmMmap | kUcmMunmap | kUcmMremap | kUcmShmat |
                           kUcmShmdt | kUcmMadvise | kUcmBrk;
constexpr int kUcmNoInstall = 1 << 24;  // UCM_EVENT_FLAG_NO_INSTALL

union UcmEvent {
  struct {
    void *result;
    void *address;
    size_t size;
    int prot;
    int flags;
    int fd;
    off_t offset;
  } mmap;
  struct {
    int result;
    void *address;
    size_t size;
  } munmap;
  struct {
    void *result;
    void *address;
    size_t old_size;
    size_t new_size;
    int flags;
  } mremap;
  struct {
    void *result;
    int shmid;
    const void *shmaddr;
    int shmflg;
  } shmat;
  struct {
    int result;
    const void *shmaddr;
  } shmdt;
  struct {
    void *result;
    intptr_t increment;
  } sbrk;
  struct {
    int result;
    void *addr;
    size_t length;
    int advice;
  } madvise;
  struct {
    int result;
    void *addr;
  } brk;
};
using UcmCallback = void (*)(int event_type, UcmEvent *event, void *arg);
using SetHandlerFn = int (*)(int events, int priority, UcmCallback cb,
                             void *arg);  // ucs_status_t: 0 is UCS_OK
using UnsetHandlerFn = void (*)(int events, UcmCallback cb, void *arg);

// Far from the priorities UCX itself uses (its rcache registers VM_UNMAPPED at
// 1000, its tests at -1..-5): ours bracket everything, and priority 0 (the
// syscall) always sits between them.
constexpr int kPrePriority = INT_MIN / 2;
constexpr int kPostPriority = INT_MAX / 2;

constexpr uintptr_t kPage = 4096;
inline uintptr_t PageDown(uintptr_t a) { return a & ~(kPage - 1); }
inline uintptr_t PageUp(uintptr_t a) {
  return a > UINTPTR_MAX - (kPage - 1) ? UINTPTR_MAX & ~(kPage - 1)
                                       : (a + kPage - 1) & ~(kPage - 1);
}

std::mutex g_mu;  // install / uninstall
SetHandlerFn g_set = nullptr;
UnsetHandlerFn g_unset = nullptr;
bool g_installed = false;  // guarded by g_mu
// Test seam (negative controls): false makes the handlers drop every event.
std::atomic<bool> g_deliver{true};
void **g_curbrk = nullptr;  // libc's __curbrk (brk/sbrk extents)

// Per-thread stack of open brackets: the post handler ends the frame its pre
// handler opened for the same event (the ucm_event_t lives on the hooked
// call's stack, so its address identifies the dispatch). initial-exec TLS: no
// allocation on first touch inside a hook.
constexpr int kMaxOpen = 8;
struct Open {
  Frame f;
  const void *event;
};
__attribute__((tls_model("initial-exec"))) thread_local Open t_open[kMaxOpen];
__attribute__((tls_model("initial-exec"))) thread_local int t_nopen;

// madvise advices that keep the pages mapped at the range (everything else,
// unknown future advices included, invalidates: a spurious invalidation costs
// a re-registration, a missed one is a stale registration).
bool AdviceKeepsPages(int advice) {
  switch (advice) {
    case MADV_NORMAL:
    case MADV_RANDOM:
    case MADV_SEQUENTIAL:
    case MADV_WILLNEED:
    case MADV_DONTFORK:
    case MADV_DOFORK:
    case MADV_MERGEABLE:
    case MADV_UNMERGEABLE:
    case MADV_HUGEPAGE:
    case MADV_NOHUGEPAGE:
    case MADV_DONTDUMP:
    case MADV_DODUMP:
    case 18:  // MADV_WIPEONFORK: the child's copy only
    case 19:  // MADV_KEEPONFORK
    case 20:  // MADV_COLD: reclaim skips pinned pages
    case 21:  // MADV_PAGEOUT: likewise
    case 22:  // MADV_POPULATE_READ
    case 23:  // MADV_POPULATE_WRITE
      return true;
    default:
      return false;
  }
}

// shmdt detaches every piece of the segment attached at addr (also after a
// hole): from addr to the end of the last VMA of the same inode within the
// segment's reach. Without VMA information: everything above addr.
void ShmdtExtent(uintptr_t addr, uintptr_t *lo, uintptr_t *hi) {
  procmap::Vma v;
  *lo = PageDown(addr);
  *hi = UINTPTR_MAX & ~(kPage - 1);
  if (procmap::Query(addr, false, &v) != 0) return;
  const uint64_t inode = v.inode;
  uintptr_t end = v.end;
  procmap::Vma n;
  // Bounded walk: a segment's pieces are the next few VMAs of its inode.
  for (int i = 0; i < 64 && procmap::Query(end, true, &n) == 0; ++i) {
    if (n.inode != inode) break;
    end = n.end;
  }
  *hi = end;
}

// The range a native event is about to change ([0, 0) when none).
void RangeOf(int type, const UcmEvent *e, uintptr_t *lo, uintptr_t *hi) {
  *lo = *hi = 0;
  switch (type) {
    case kUcmMmap:
      if ((e->mmap.flags & MAP_FIXED) && e->mmap.address != nullptr) {
        uintptr_t a = reinterpret_cast<uintptr_t>(e->mmap.address);
        *lo = PageDown(a);
        *hi = PageUp(a + e->mmap.size);
      }
      break;
    case kUcmMunmap: {
      uintptr_t a = reinterpret_cast<uintptr_t>(e->munmap.address);
      *lo = PageDown(a);
      *hi = PageUp(a + e->munmap.size);
      break;
    }
    case kUcmMremap: {
      uintptr_t a = reinterpret_cast<uintptr_t>(e->mremap.address);
      if (e->mremap.flags & MREMAP_FIXED) {
        // libucm does not pass new_address on: the destination is unknown.
        *lo = 0;
        *hi = UINTPTR_MAX;
      } else if (e->mremap.flags & (MREMAP_MAYMOVE | 4 /* DONTUNMAP */)) {
        *lo = PageDown(a);
        *hi = PageUp(a + e->mremap.old_size);
      } else if (e->mremap.new_size < e->mremap.old_size) {
        *lo = PageUp(a + e->mremap.new_size);
        *hi = PageUp(a + e->mremap.old_size);
      }
      break;
    }
    case kUcmShmat:
      if ((e->shmat.shmflg & SHM_REMAP) && e->shmat.shmaddr != nullptr) {
        struct shmid_ds ds;
        uintptr_t a = reinterpret_cast<uintptr_t>(e->shmat.shmaddr);
        // SHMLBA is the page size on x86_64 (a libc call: not in a hook).
        if (e->shmat.shmflg & SHM_RND) a &= ~(kPage - 1);
        if (syscall(SYS_shmctl, e->shmat.shmid, IPC_STAT, &ds) == 0) {
          *lo = PageDown(a);
          *hi = PageUp(a + ds.shm_segsz);
        } else {
          *lo = PageDown(a);
          *hi = UINTPTR_MAX & ~(kPage - 1);
        }
      }
      break;
    case kUcmShmdt:
      ShmdtExtent(reinterpret_cast<uintptr_t>(e->shmdt.shmaddr), lo, hi);
      break;
    case kUcmBrk: {
      uintptr_t want = reinterpret_cast<uintptr_t>(e->brk.addr);
      uintptr_t cur =
          g_curbrk ? reinterpret_cast<uintptr_t>(*g_curbrk) : uintptr_t{0};
      if (cur != 0 && want != 0 && want < cur) {
        *lo = PageUp(want);
        *hi = PageUp(cur);
      }
      break;
    }
    case kUcmSbrk: {
      uintptr_t cur =
          g_curbrk ? reinterpret_cast<uintptr_t>(*g_curbrk) : uintptr_t{0};
      intptr_t inc = e->sbrk.increment;
      if (cur != 0 && inc < 0 && static_cast<uintptr_t>(-inc) <= cur) {
        *lo = PageUp(cur - static_cast<uintptr_t>(-inc));
        *hi = PageUp(cur);
      }
      break;
    }
    case kUcmMadvise:
      if (!AdviceKeepsPages(e->madvise.advice)) {
        uintptr_t a = reinterpret_cast<uintptr_t>(e->madvise.addr);
        *lo = PageDown(a);
        *hi = PageUp(a + e->madvise.length);
      }
      break;
    default:
      break;
  }
}

// Runs before libucm's syscall (priority < 0). errno is preserved: libucm's
// hook returns the syscall's errno to its caller.
void PreHandler(int type, UcmEvent *e, void *) {
  int saved = errno;
  uintptr_t lo, hi;
  RangeOf(type, e, &lo, &hi);
  if (!g_deliver.load(std::memory_order_relaxed)) [[unlikely]]
    lo = hi = 0;
  if (t_nopen < kMaxOpen) {
    Open &o = t_open[t_nopen++];
    o.event = e;
    BeginRange(&o.f, lo, hi);  // an empty range opens an inactive frame
  } else if (lo < hi) {
    // Nested deeper than any hook chain we know: deliver start and end now
    // (an invalidation before the change, without the bracket's hold).
    Frame f;
    BeginRange(&f, lo, hi);
    EndRange(&f);
  }
  errno = saved;
}

// Runs after libucm's syscall (priority > 0).
void PostHandler(int, UcmEvent *e, void *) {
  // Only the frame our pre handler opened for this very dispatch: a handler
  // pair registered between a pre and its post cannot happen (libucm's
  // read-lock is held across the dispatch), but a dispatch nested too deep
  // opened none.
  if (t_nopen == 0 || t_open[t_nopen - 1].event != e) return;
  int saved = errno;
  Open &o = t_open[--t_nopen];
  EndRange(&o.f);
  errno = saved;
}

void *UcmHandle() {
  // RTLD_NOLOAD: only a libucm the process already loaded (never load UCX).
  void *h = dlopen("libucm.so.0", RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen("libucm.so", RTLD_NOW | RTLD_NOLOAD);
  return h;
}

}  // namespace

bool UcmLoaded() {
  void *h = UcmHandle();
  if (h == nullptr) return false;
  dlclose(h);
  return true;
}

bool UcmOwnsEntries() {
#if defined(__x86_64__)
  void *h = UcmHandle();
  if (h == nullptr) return false;
  void *sym = dlsym(h, "ucm_set_event_handler");
  dlclose(h);
  Dl_info ucm_info;
  if (sym == nullptr || dladdr(sym, &ucm_info) == 0) return false;
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (libc == nullptr) return false;
  const auto *p = static_cast<const uint8_t *>(dlsym(libc, "munmap"));
  dlclose(libc);
  if (p == nullptr) return false;
  // libucm's bistro patch on x86_64: `jmp rel32`, or `movabs $hook, %rax;
  // jmp *%rax` (bistro_x86_64.c).
  uintptr_t target = 0;
  if (p[0] == 0xE9) {
    int32_t rel;
    memcpy(&rel, p + 1, 4);
    target = reinterpret_cast<uintptr_t>(p) + 5 + rel;
  } else if (p[0] == 0x48 && p[1] == 0xB8 && p[10] == 0xFF && p[11] == 0xE0) {
    memcpy(&target, p + 2, 8);
  } else {
    return false;
  }
  Dl_info t;
  return dladdr(reinterpret_cast<void *>(target), &t) != 0 &&
         t.dli_fbase == ucm_info.dli_fbase;
#else
  return false;
#endif
}

int UcmInstall() {
#if REGCACHE_UNDER_TSAN
  // Same reason as the patch source: our handlers would run instrumented code
  // inside libucm's hooks, called from the sanitizer's own mmap/munmap
  // interceptors.
  internal::Logf(internal::kLogWarn,
                 "notifier: ucm source unavailable under ThreadSanitizer");
  return -ENOSYS;
#endif
  std::lock_guard<std::mutex> g(g_mu);
  if (g_installed) return 0;
  void *h = UcmHandle();
  if (h == nullptr) {
    internal::Logf(internal::kLogInfo,
                   "notifier: ucm: libucm.so.0 is not loaded in this process");
    return -ENOSYS;
  }
  g_set = reinterpret_cast<SetHandlerFn>(dlsym(h, "ucm_set_event_handler"));
  g_unset =
      reinterpret_cast<UnsetHandlerFn>(dlsym(h, "ucm_unset_event_handler"));
  // Keep our reference: libucm must outlive the handlers it calls.
  if (g_set == nullptr || g_unset == nullptr) {
    dlclose(h);
    internal::Logf(internal::kLogWarn,
                   "notifier: ucm: libucm lacks ucm_set_event_handler");
    return -ENOSYS;
  }
  if (g_curbrk == nullptr) {
    if (void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD)) {
      g_curbrk = static_cast<void **>(dlsym(libc, "__curbrk"));
      dlclose(libc);
    }
  }
  procmap::Init();  // shmdt's extent; without it shmdt over-invalidates
  // Post first: a dispatch running between the two registrations then gets
  // a post without a pre, which PostHandler ignores; the other order could
  // open a frame nobody closes.
  int st = g_set(kUcmNative, kPostPriority, &PostHandler, nullptr);
  if (st == 0)
    st = g_set(kUcmSbrk | kUcmNoInstall, kPostPriority, &PostHandler, nullptr);
  if (st != 0) {
    g_unset(kUcmNative | kUcmSbrk, &PostHandler, nullptr);
    internal::Logf(internal::kLogWarn,
                   "notifier: ucm: ucm_set_event_handler failed (ucs_status "
                   "%d): libucm events disabled (UCX_MEM_EVENTS=no?) or its "
                   "hooks not installable",
                   st);
    return -ENOSYS;
  }
  st = g_set(kUcmNative, kPrePriority, &PreHandler, nullptr);
  if (st == 0)
    st = g_set(kUcmSbrk | kUcmNoInstall, kPrePriority, &PreHandler, nullptr);
  if (st != 0) {
    g_unset(kUcmNative | kUcmSbrk, &PreHandler, nullptr);
    g_unset(kUcmNative | kUcmSbrk, &PostHandler, nullptr);
    internal::Logf(internal::kLogWarn,
                   "notifier: ucm: ucm_set_event_handler failed (ucs_status "
                   "%d)",
                   st);
    return -ENOSYS;
  }
  g_installed = true;
  return 0;
}

void UcmMuteForTesting(bool mute) {
  g_deliver.store(!mute, std::memory_order_relaxed);
}

void UcmUninstall() {
  std::lock_guard<std::mutex> g(g_mu);
  if (!g_installed) return;
  // Pre first (the mirror of install): no frame opens after this, and a
  // dispatch in flight holds libucm's read-lock, so unset waits for its post.
  g_unset(kUcmNative | kUcmSbrk, &PreHandler, nullptr);
  g_unset(kUcmNative | kUcmSbrk, &PostHandler, nullptr);
  g_installed = false;
}

const SourceOps kUcmOps = {Source::kUcm, "ucm",   UcmInstall, UcmUninstall,
                           nullptr,      nullptr, nullptr,    nullptr};

}  // namespace regcache::notifier::sources

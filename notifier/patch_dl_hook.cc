// SPDX-License-Identifier: BSD-3-Clause
// notifier/patch_dl_hook.cc - the patch source's dlclose hook: ld.so's
// _dl_debug_state.
//
// WHY. dlclose unmaps the object's segments (its .data and .bss too, which a
// program may have registered) with ld.so's own munmap, a syscall inside
// ld.so that no libc entry point sees; new memory mapped there later would
// hit the unloaded object's registration. ld.so calls _dl_debug_state (the
// debugger interface, r_debug.r_brk; its body is one `ret` followed by
// padding) with r_state == RT_DELETE after the object's destructors and
// before it unmaps anything, and again with RT_CONSISTENT when it is done
// (glibc elf/dl-close.c). The hook brackets that window: a range over the
// whole address space begins at RT_DELETE and ends at the next call. Which
// objects go is not public (l_map_used is ld.so's internal field), so the
// whole space is invalidated: every cached region is dropped at each dlclose
// that unloads something, and a get waits for the unload to finish. dlclose
// is rare in MPI programs (component loading at start-up, at exit); being
// wrong for it is not an option.
//
// SERIALIZED BY ld.so. _dl_debug_state is called only under ld.so's
// dl_load_lock (dlopen, dlclose) or before any thread exists (start-up), so
// the open range needs no lock; it is per thread anyway (BeginRange's frame
// must end on its thread), and a dlclose never forks between the two calls.
// Namespaces (dlmopen): since glibc 2.35 each namespace has its own r_debug,
// chained from _r_debug (r_version >= 2, r_debug_extended.r_next); any of them
// in RT_DELETE opens the bracket.
#include <link.h>

#include <cstdint>

#include "notifier/patch_internal.h"

#if defined(__x86_64__)

namespace regcache::notifier::sources {
inline namespace patch_impl {

void *g_r_debug = nullptr;

namespace {

// glibc >= 2.35's layout of _r_debug (elf/link.h, r_version 2).
struct RDebugExtended {
  struct r_debug base;
  RDebugExtended *r_next;
};

bool AnyNamespaceDeleting() {
  const auto *d = static_cast<const RDebugExtended *>(g_r_debug);
  for (int n = 0; d != nullptr && n < 256; ++n) {  // bounded: a corrupt chain
    if (d->base.r_state == r_debug::RT_DELETE) return true;
    if (d->base.r_version < 2) break;
    d = d->r_next;
  }
  return false;
}

constinit
    __attribute__((tls_model("initial-exec"))) thread_local Frame t_dl_frame{};
constinit
    __attribute__((tls_model("initial-exec"))) thread_local bool t_dl_open =
        false;

}  // namespace

extern "C" void HookDlDebugState() {
  int *err = ErrnoPtr();
  const int saved = *err;
  if (t_dl_open) {
    t_dl_open = false;
    EndRange(&t_dl_frame);
  }
  if (g_r_debug != nullptr && AnyNamespaceDeleting() &&
      !TestOff(kPatchPathDlclose)) {
    BeginRange(&t_dl_frame, 0, kTop);
    t_dl_open = true;
  }
  *err = saved;
}

}  // namespace patch_impl
}  // namespace regcache::notifier::sources

#endif  // __x86_64__

// SPDX-License-Identifier: BSD-3-Clause
// notifier/patch_code_write.cc - writing libc's code without ever making a
// page writable and executable (patch.cc, "NO PAGE IS EVER WRITABLE AND
// EXECUTABLE"): the trampoline page near libc, the shared copies of libc's
// code pages, the temporary rw- aliases, the one atomic store per entry, and
// the fork child's private copies.
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <new>

#include "notifier/patch_internal.h"

#if defined(__x86_64__)

namespace regcache::notifier::sources {
inline namespace patch_impl {

namespace {

// Guarded by g_mu (patch_internal.h), reset by the fork child handler.
// libc code pages we replaced with a shared copy (see the top of patch.cc);
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
int g_code_fd = -1;  // the memfd; -1 when none
// The memfd's identity: to recognize it if the program closed it and reused
// the number.
uint64_t g_code_ino = 0, g_code_dev = 0;

}  // namespace

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

namespace {

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
// mapped r-x, in one mremap (atomic for other threads, see the top of
// patch.cc). The copy is made rw-, filled, then made r-x before it moves: no
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

}  // namespace

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

}  // namespace patch_impl
}  // namespace regcache::notifier::sources

#endif  // __x86_64__

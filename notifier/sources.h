/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/sources.h - the automatic event sources (internal to notifier/).
//
// Each source turns memory changes into internal::BeginRange/EndRange pairs.
// Installed once, on the first Register() (under the core's install mutex,
// never under the writer mutex: installing may allocate, map memory and start
// threads).
#ifndef REGCACHE_NOTIFIER_SOURCES_H_
#define REGCACHE_NOTIFIER_SOURCES_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "notifier/address_space.h"

namespace regcache::notifier::sources {

// ---- the ops table (as libfabric's memory monitors): one row per automatic
// source. The core (source_install.cc and the other address-space units)
// reaches a source only through it:
// installing the configured one, uninstalling, watching an interval
// subscription's memory, syncing a lookup, checking that it is still intact.
// Adding a source = its own file defining its SourceOps + one entry in
// kSourceTable (sources.cc); REGCACHE_MONITOR=auto's order is policy.cc's.
// Every hook but install/uninstall may be null (nothing to do). All run under
// the install mutex except sync_for_lookup (any thread, outside hooks and
// callbacks) and watch (the Register caller).
struct SourceOps {
  Source id;
  const char *name;  // as REGCACHE_MONITOR spells it
  int (*install)();  // 0 or a negative errno (the contract of XxxInstall)
  void (*uninstall)();
  int (*watch)(uintptr_t start, uintptr_t end);  // see UffdWatch
  void (*sync_for_lookup)();                     // see UffdSyncForLookup
  bool (*intact)(const char **which);            // see PatchIntact
  void (*abandon)();                             // see PatchAbandon
};
extern const SourceOps kPatchOps;  // patch.cc
extern const SourceOps kUffdOps;   // uffd.cc
extern const SourceOps kUcmOps;    // ucm_import.cc
// Every automatic source, and its length.
extern const SourceOps *const kSourceTable[];
extern const size_t kSourceCount;
// The row of s; nullptr for kAuto and kNone.
const SourceOps *Find(Source s);

// patch: overwrites libc's entry points (x86_64 only). 0, or -ENOSYS (not
// x86_64 / symbol missing / unknown prologue), -EALREADY (another library
// patched them), -EPERM/-EACCES (mprotect refused), -ENOMEM (no trampoline page
// near libc).
int PatchInstall();
// Restores libc's original bytes. Safe while other threads run (see patch.cc).
void PatchUninstall();

// True while every entry still holds our jump (or nothing is installed). On
// false, *which names the first overwritten function.
bool PatchIntact(const char **which);
// Forgets the patch without writing anything: another library has overwritten
// our jumps and owns the entries now.
void PatchAbandon();

// Test-only switch (negative controls): a hook whose bit is set still makes
// its call but delivers no invalidation. Only the paths added for issue 12;
// munmap & co. are not switchable (their hooks stay one load shorter).
constexpr uint32_t kPatchPathMprotect = 1;         // mprotect, pkey_mprotect
constexpr uint32_t kPatchPathMadvise = 2;          // madvise (every advice)
constexpr uint32_t kPatchPathProcessMadvise = 4;   // process_madvise
constexpr uint32_t kPatchPathFile = 8;             // fallocate, (f)truncate
constexpr uint32_t kPatchPathShmdt = 16;           // shmdt
constexpr uint32_t kPatchPathRemapFilePages = 32;  // remap_file_pages
constexpr uint32_t kPatchPathDlclose = 64;  // ld.so's _dl_debug_state (dlclose)
extern std::atomic<uint32_t> g_patch_test_off;

// uffd: userfaultfd monitor threads. 0, or -ENOSYS/-EPERM (no userfaultfd),
// -errno. Sets internal::kAsyncProbe: from then on every lookup probes the
// kernel before it trusts its index (uffd.cc, EXACT LOOKUPS).
int UffdInstall();
// Closes the fd (releasing any thread blocked on an event) and joins the
// monitor threads. REQUIRES: no lookup concurrently (tests, process exit).
void UffdUninstall();
// Makes the mappings under [start, end) watched (whole VMAs), for an interval
// subscription. 0; -EFAULT when part of [start, end) is not mapped (checked
// before anything is watched); -EBUSY when a mapping cannot be watched (another
// userfaultfd owns it, a type the kernel cannot watch, or a fork child that
// cannot start a monitor): its changes would not be seen, so the caller must
// not cache it. Also -EBUSY (refused by us, although the kernel could watch it)
// for a shared or file-backed mapping (uffd gets no event when its pages are
// dropped through the file) and for memory a madvise REMOVE covered within the
// last 250 ms (its zap may still be ahead). -ENOMEM.
int UffdWatch(uintptr_t start, uintptr_t end);
// For SyncForLookup(), outside any hook or callback: in a fork child, creates
// the context and monitor again (and watches the live intervals again); then
// waits until no watched mapping is changing in the kernel (bounded: after
// 50 ms of continuous changes it invalidates every subscriber's ranges
// instead). No-op when uffd is not installed or on a monitor thread. The
// caller then waits for the monitor (WaitAsyncEvents).
void UffdSyncForLookup();

// Tests only (negative controls): a set bit switches one protection off.
// kUffdTestNoRefuseUnseen: Watch accepts shared and file-backed mappings
// (whose pages can be dropped without an event). kUffdTestNoRemoveGrace: a
// registration racing a madvise(DONTNEED) is cached (REMOVE comes before the
// zap). kUffdTestNoProtectionCheck: a cache's hit is not checked against the
// memory's current protection (notifier/protection.h).
// kUffdTestSignalsUnblocked: monitor threads start with the creator's signal
// mask (read when the monitor starts).
constexpr uint32_t kUffdTestNoRefuseUnseen = 1;
constexpr uint32_t kUffdTestNoRemoveGrace = 2;
constexpr uint32_t kUffdTestNoProtectionCheck = 4;
constexpr uint32_t kUffdTestSignalsUnblocked = 8;
extern std::atomic<uint32_t> g_uffd_test_off;
// Tests only: called on a monitor thread after it dispatched a REMOVE and left
// its hold (the window REMOVE IS BEFORE THE ZAP describes), with its range.
extern std::atomic<void (*)(uintptr_t, uintptr_t)>
    g_uffd_after_remove_for_testing;
// Tests only. false turns the probe off: lookups trust the index while an
// UNMAP may still be unread (the window comes back; negative controls).
void UffdSetExactForTesting(bool on);
struct UffdStats {
  uint64_t events;       // events dispatched
  uint64_t busy_probes;  // probes that found a change in progress (slow path)
  uint64_t flushes;      // whole-space invalidations after the deadline
  uint64_t restarts;     // monitors re-created in fork children
  uint64_t refused;      // Watch calls refused: unseeable mapping or a
                         // REMOVE of it within its grace (registered uncached)
};
UffdStats UffdGetStats();
// The probe itself: 0 (nothing changing), -EAGAIN (a change's event is
// unread), -EBADF (no context).
int UffdProbeForTesting();

}  // namespace regcache::notifier::sources

#endif  // REGCACHE_NOTIFIER_SOURCES_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/sources.h - the automatic event sources (internal to notifier/).
//
// Each source turns memory changes into internal::BeginRange/EndRange pairs.
// Installed once, on the first Register() (under the core's install mutex,
// never under the writer mutex: installing may allocate, map memory and start
// threads).
#ifndef REGCACHE_NOTIFIER_SOURCES_H_
#define REGCACHE_NOTIFIER_SOURCES_H_

#include <cstddef>
#include <cstdint>

namespace regcache::notifier::sources {

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

// uffd: userfaultfd monitor thread. 0, or -ENOSYS/-EPERM (no userfaultfd),
// -errno.
int UffdInstall();
// Closes the fd (releasing any thread blocked on an event) and joins the
// monitor thread.
void UffdUninstall();
// Makes the mappings under [start, end) watched (whole VMAs). 0 or -errno.
// Ranges with no mapping are not an error (nothing to watch); mappings that
// cannot be watched are logged once and reported as 0 (the subscription still
// gets explicit events).
int UffdWatch(uintptr_t start, uintptr_t end);

}  // namespace regcache::notifier::sources

#endif  // REGCACHE_NOTIFIER_SOURCES_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/policy.h - which event source `auto` installs, and whether caching
// is safe with the one installed (internal to notifier/).
//
// THE RULE. A cache may keep a registration after its put only while some
// source sees every unmap of the process before the memory changes (patch,
// ucm, uffd), or while the host has declared that it reports unmaps itself
// (REGCACHE_MONITOR=none chosen explicitly, or
// regcache_notifier_set_external()). Otherwise the notifier is BLIND: the
// cache registers at get and deregisters at put (caching off), and one warning
// says why and what to do. Blindness is decided when `auto` finds no source,
// or later when another library overwrites the patch source and neither the
// ucm import nor uffd can take over.
//
// AUTO'S ORDER (docs/notifier.md, "Choosing a source"):
//   1. patch                           libc's entries are ours;
//   2. ucm    if the entries were already patched by UCX's libucm (its events
//             are imported; see ucm_import.cc);
//   3. uffd   if userfaultfd is allowed;
//   4. ucm    if libucm is loaded and the entries are not another patcher's
//             (libucm then patches them itself);
//   5. none   blind (unless declared external).
// When the patch source is overwritten later: ucm if libucm owns the entries
// now, else uffd, else blind.
//
// Locking: InstallAuto and AfterPatchLost run under the core's install mutex
// (g_install_mu, address_space_state.h), never under its writer mutex. The
// state read by CachingSafe() is two atomics (read on every cache miss).
#ifndef REGCACHE_NOTIFIER_POLICY_H_
#define REGCACHE_NOTIFIER_POLICY_H_

#include "notifier/address_space.h"

namespace regcache::notifier {

namespace sources {
// ucm: imports UCX libucm's memory events (notifier/ucm_import.cc). libucm is
// never linked: it is found with dlopen(RTLD_NOLOAD) only when the process
// already loaded it.
//
// True when libucm is loaded in this process.
bool UcmLoaded();
// True when libc's munmap entry jumps into libucm (libucm's bistro hooks own
// libc's entry points).
bool UcmOwnsEntries();
// Registers the pre/post handlers with libucm. 0, or -ENOSYS (libucm not
// loaded, a symbol missing, or libucm refused: events disabled, hooks not
// installable; the reason in the log).
int UcmInstall();
void UcmUninstall();
// Tests only (negative controls): true makes the imported events empty, as if
// libucm's hooks reported nothing.
void UcmMuteForTesting(bool mute);
}  // namespace sources

namespace policy {

// Installs a source for REGCACHE_MONITOR=auto and returns which. Never fails:
// kNone means blind (logged once at warn, unless external was declared).
// REQUIRES: the install mutex.
Source InstallAuto();
// The patch source was overwritten by another library (`which` entry) and has
// been abandoned: installs the best replacement and returns it (kNone:
// blind). REQUIRES: the install mutex.
Source AfterPatchLost(const char *which);
// Explicit REGCACHE_MONITOR=<source>: a none chosen by the host is a
// declaration that it reports unmaps itself; any other explicit source is not
// blind.
void SetConfigured(Source s);

// True while caching is safe: not blind, or the host declared external.
bool CachingSafe();
// regcache_notifier_set_external(): the host reports every unmap of memory it
// registers through the explicit source.
void SetExternal(bool on);
bool External();
// Why the notifier is blind ("" when it is not). Static storage.
const char *BlindReason();

// Tests: forget blindness, the one-warning flag and the external declaration.
void ResetForTesting();

}  // namespace policy
}  // namespace regcache::notifier

#endif  // REGCACHE_NOTIFIER_POLICY_H_

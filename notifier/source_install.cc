// SPDX-License-Identifier: BSD-3-Clause
// notifier/source_install.cc - the event sources seen from the address space:
// configuring and installing one (once, under g_install_mu), checking that a
// patch is still intact and falling back when it is not, and the waits a
// cache's slow path makes for the asynchronous (uffd) source.
#include <cerrno>
#include <cstdint>
#include <cstring>

#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"
#include "notifier/policy.h"
#include "notifier/range_window.h"
#include "notifier/sources.h"

namespace regcache::notifier {

namespace internal {
// Here, beside WaitAsyncEvents (every cache miss): see address_space.cc.
std::atomic<uint32_t> g_async_in_flight{0};
}  // namespace internal

int InstallSourceLocked() {
  if (g_installed) return 0;
  Source want = g_configured;
  int rc = 0;
  Source got = Source::kNone;
  if (want == Source::kAuto) {
    // The order and the blind rule live in notifier/policy.cc.
    got = policy::InstallAuto();
  } else if (const sources::SourceOps *ops = sources::Find(want)) {
    rc = ops->install();
    got = want;
  }
  if (rc != 0) {
    internal::Logf(internal::kLogError,
                   "notifier: cannot install event source %s: %s",
                   SourceName(want), strerror(-rc));
    return rc;
  }
  if (want != Source::kAuto) policy::SetConfigured(want);
  if (want == Source::kNone) {
    internal::Logf(internal::kLogInfo,
                   "notifier: event source none (explicit only)");
  } else if (want != Source::kAuto) {
    internal::Logf(internal::kLogInfo, "notifier: event source %s",
                   SourceName(got));
  }
  g_active.store(got, std::memory_order_release);
  g_installed = true;
  return 0;
}

void UninstallSourcesLocked() {
  if (!g_installed) return;
  if (const sources::SourceOps *ops =
          sources::Find(g_active.load(std::memory_order_acquire)))
    ops->uninstall();
  g_active.store(Source::kNone, std::memory_order_release);
  g_installed = false;
}

const char *SourceName(Source s) {
  if (s == Source::kAuto) return "auto";
  if (const sources::SourceOps *ops = sources::Find(s)) return ops->name;
  return "none";
}

int Configure(const Options &opts) {
  if (opts.log != nullptr) g_log.store(opts.log, std::memory_order_release);
  InstallLock g;
  if (g_installed) {
    if (opts.source == g_configured ||
        opts.source == g_active.load(std::memory_order_acquire)) {
      return 0;
    }
    return -EBUSY;
  }
  g_configured = opts.source;
  return 0;
}

// Process exit: every subscriber gets release exactly once, from here (the
// shared library's destructor, or the executable's when linked statically).
// Runs after the atexit handlers and static destructors registered after this
// library was loaded, before patch.cc's priority-200 destructor restores libc's
// code. Never waits for ranges in flight on other threads.
__attribute__((destructor)) static void NotifierFini() { Teardown(); }

void VerifySources() {
  // Only a source that another library can overwrite (patch) has intact().
  const sources::SourceOps *ops =
      sources::Find(g_active.load(std::memory_order_acquire));
  if (ops == nullptr || ops->intact == nullptr) return;
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return;
  const char *which = nullptr;
  // The common answer (intact) without the install lock: intact() takes the
  // source's own lock, and a switch racing with this read leaves nothing for
  // us to do (it abandoned or re-checked under the install lock). Only a
  // damaged patch is checked again under the install lock before acting.
  // Every entry is still compared on every call (ANOTHER PATCHER).
  if (ops->intact(&which)) return;
  {
    InstallLock g;
    if (g_active.load(std::memory_order_acquire) != ops->id ||
        ops->intact(&which))
      return;
    ops->abandon();
    // ucm if libucm took the entries, else uffd, else blind (policy.cc).
    Source now = policy::AfterPatchLost(which);
    g_active.store(now, std::memory_order_release);
  }
  // Everything cached may have been unmapped unseen.
  Frame f;
  internal::BeginRange(&f, 0, UINTPTR_MAX);
  internal::EndRange(&f);
}

void SyncForLookup() {
  VerifySources();
  // uffd: first until the kernel has no unread change of a watched mapping,
  // then until the monitor has delivered what it read (this order; uffd.cc).
  // Every source's (not only the active one's: uffd's is a no-op unless it is
  // installed, and must run in a fork child that has not re-created it yet).
  for (size_t i = 0; i < sources::kSourceCount; ++i)
    if (sources::kSourceTable[i]->sync_for_lookup != nullptr)
      sources::kSourceTable[i]->sync_for_lookup();
  WaitAsyncEvents();
}

void WaitAsyncEvents() {
  // A monitor thread (inside its hold) or a callback would wait for itself.
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return;
  if (!AsyncEventsInFlight()) return;
  WaitUntil([] { return !AsyncEventsInFlight(); });
}

Source ActiveSource() { return g_active.load(std::memory_order_acquire); }

int EnsureInstalled() {
  std::lock_guard<std::mutex> g(g_install_mu);
  return InstallSourceLocked();
}

bool CachingSafe() { return policy::CachingSafe(); }

}  // namespace regcache::notifier

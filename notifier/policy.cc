// SPDX-License-Identifier: BSD-3-Clause
// notifier/policy.cc - auto's choice of event source and the blind state (see
// policy.h for the rule and the order).
#include "notifier/policy.h"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "notifier/internal.h"
#include "notifier/sources.h"

namespace regcache::notifier::policy {
namespace {

// g_blind: no installed source sees every unmap. g_external: the host said it
// reports unmaps itself. Written under the install mutex (g_blind) or by any
// thread (g_external); read lock-free by CachingSafe().
std::atomic<bool> g_blind{false};
std::atomic<bool> g_external{false};
// The one warning per process (a blind process that sees a second reason,
// e.g. patch lost after auto, does not warn twice).
std::atomic<bool> g_warned{false};
// Why (guarded by the install mutex for writers; readers read it only after
// seeing g_blind, which is stored with release after the text).
char g_reason[160] = "";

const char *Err(int rc) { return rc == 0 ? "ok" : strerror(-rc); }

void BecomeBlind() {
  g_blind.store(true, std::memory_order_seq_cst);
  if (g_external.load(std::memory_order_seq_cst)) {
    internal::Logf(internal::kLogInfo,
                   "notifier: no source sees every unmap (%s); caching stays "
                   "on: the host declared it reports unmaps "
                   "(regcache_notifier_set_external)",
                   g_reason);
    return;
  }
  if (g_warned.exchange(true, std::memory_order_relaxed)) return;
  // One line (internal::Logf's buffer is 256 bytes): the reason and the fixes;
  // docs/notifier.md "Choosing a source" has the long form.
  internal::Logf(internal::kLogWarn,
                 "notifier: blind (%s): caching OFF, every get registers "
                 "anew. Fix: allow userfaultfd, load regcache first, or "
                 "MONITOR=none + regcache_notify_unmap_*",
                 g_reason);
}

}  // namespace

void SetConfigured(Source s) {
  (void)s;  // an explicit source is never blind: it installs or Register fails
  g_blind.store(false, std::memory_order_seq_cst);
  g_reason[0] = '\0';
}

Source InstallAuto() {
  g_blind.store(false, std::memory_order_seq_cst);
  g_reason[0] = '\0';
  const int prc = sources::PatchInstall();
  if (prc == 0) {
    internal::Logf(internal::kLogInfo,
                   "notifier: event source patch (libc entry points)");
    return Source::kPatch;
  }
  // Another patcher owns libc's entries. If it is libucm, import its events:
  // they come before and after the syscall, like ours.
  bool tried_ucm = false;
  int crc = 0;
  if (prc == -EALREADY && sources::UcmOwnsEntries()) {
    tried_ucm = true;
    crc = sources::UcmInstall();
    if (crc == 0) {
      internal::Logf(internal::kLogInfo,
                     "notifier: event source ucm (libc already patched by "
                     "UCX libucm: importing its events)");
      return Source::kUcm;
    }
  }
  const int urc = sources::UffdInstall();
  if (urc == 0) {
    internal::Logf(internal::kLogInfo,
                   "notifier: event source uffd (patch unavailable: %s)",
                   Err(prc));
    return Source::kUffd;
  }
  // libucm loaded but its hooks not installed yet (nobody asked it for
  // events): let it patch, unless the entries belong to another patcher
  // (libucm would overwrite that library's hooks).
  if (prc != -EALREADY && !tried_ucm && sources::UcmLoaded()) {
    tried_ucm = true;
    crc = sources::UcmInstall();
    if (crc == 0) {
      internal::Logf(internal::kLogInfo,
                     "notifier: event source ucm (patch: %s; uffd: %s; UCX "
                     "libucm loaded: importing its events)",
                     Err(prc), Err(urc));
      return Source::kUcm;
    }
  }
  snprintf(
      g_reason, sizeof(g_reason), "patch: %s; uffd: %s%s%s",
      prc == -EALREADY ? "libc already patched by another library" : Err(prc),
      Err(urc), tried_ucm ? "; ucm: " : "", tried_ucm ? Err(crc) : "");
  BecomeBlind();
  return Source::kNone;
}

Source AfterPatchLost(const char *which) {
  Source now = Source::kNone;
  bool tried_ucm = false;
  int crc = 0, urc = 0;
  if (sources::UcmOwnsEntries()) {
    tried_ucm = true;
    crc = sources::UcmInstall();
    if (crc == 0) now = Source::kUcm;
  }
  if (now == Source::kNone) {
    urc = sources::UffdInstall();
    if (urc == 0) now = Source::kUffd;
  }
  // Blind: the one warning below carries the reason; ucm: nothing lost.
  internal::Logf(
      now == Source::kUffd ? internal::kLogWarn : internal::kLogInfo,
      "notifier: libc %s was overwritten by another patcher%s: patch source "
      "abandoned; now %s; invalidating every registration (unmaps may have "
      "been missed)",
      which ? which : "?",
      now == Source::kUcm ? " (UCX libucm: importing its events)" : "",
      SourceName(now));
  if (now == Source::kNone) {
    snprintf(g_reason, sizeof(g_reason),
             "patch: libc %s overwritten by another library%s%s; uffd: %s",
             which ? which : "?", tried_ucm ? "; ucm: " : "",
             tried_ucm ? Err(crc) : "", Err(urc));
    BecomeBlind();
  }
  return now;
}

bool CachingSafe() {
  return !g_blind.load(std::memory_order_seq_cst) ||
         g_external.load(std::memory_order_seq_cst);
}

void SetExternal(bool on) { g_external.store(on, std::memory_order_seq_cst); }

bool External() { return g_external.load(std::memory_order_seq_cst); }

const char *BlindReason() {
  return g_blind.load(std::memory_order_acquire) ? g_reason : "";
}

void ResetForTesting() {
  g_blind.store(false, std::memory_order_seq_cst);
  g_external.store(false, std::memory_order_seq_cst);
  g_warned.store(false, std::memory_order_relaxed);
  g_reason[0] = '\0';
}

}  // namespace regcache::notifier::policy

// SPDX-License-Identifier: BSD-3-Clause
// notifier/c_api.cc - the notifier's C API (<regcache/notifier.h>): argument
// checks and the translation to the address space (address_space.h). The
// library's initialisation (which configures the notifier from the tunables)
// and its logger are the host's: reached through SetHostHooks (c_api.h).
#include "notifier/c_api.h"

#include <regcache/notifier.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "notifier/address_space.h"
#include "notifier/policy.h"

namespace regcache::notifier {
namespace {

// Set once at load by the host library (before any call can run); read
// without a lock.
std::atomic<int (*)()> g_host_init{nullptr};
std::atomic<void (*)()> g_host_flush{nullptr};

}  // namespace

void SetHostHooks(const HostHooks &hooks) {
  g_host_init.store(hooks.init, std::memory_order_release);
  g_host_flush.store(hooks.flush_log, std::memory_order_release);
}

int HostInit() {
  int (*f)() = g_host_init.load(std::memory_order_acquire);
  return f != nullptr ? f() : 0;
}

void HostFlushLog() {
  if (void (*f)() = g_host_flush.load(std::memory_order_acquire)) f();
}

}  // namespace regcache::notifier

extern "C" {

REGCACHE_API int regcache_notifier_register(const regcache_notifier_ops_t *ops,
                                            void *arg,
                                            regcache_notifier_t **notifier_p) {
  if (ops == nullptr || notifier_p == nullptr) return -EINVAL;
  int rc = regcache::notifier::HostInit();
  if (rc) return rc;
  regcache::notifier::Subscription *sub = nullptr;
  rc = regcache::notifier::Register(ops, arg, 0, 0, &sub);
  regcache::notifier::HostFlushLog();
  if (rc == 0) *notifier_p = reinterpret_cast<regcache_notifier_t *>(sub);
  return rc;
}

REGCACHE_API int regcache_notifier_register_range(
    const regcache_notifier_ops_t *ops, void *arg, const void *addr, size_t len,
    regcache_notifier_t **notifier_p) {
  if (ops == nullptr || notifier_p == nullptr || len == 0) return -EINVAL;
  uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  if (start + len < start) return -EINVAL;
  int rc = regcache::notifier::HostInit();
  if (rc) return rc;
  regcache::notifier::Subscription *sub = nullptr;
  rc = regcache::notifier::Register(ops, arg, start, len, &sub);
  regcache::notifier::HostFlushLog();
  if (rc == 0) *notifier_p = reinterpret_cast<regcache_notifier_t *>(sub);
  return rc;
}

REGCACHE_API int regcache_notifier_unregister(regcache_notifier_t *notifier) {
  if (notifier == nullptr) return -EINVAL;
  return regcache::notifier::Unregister(
      reinterpret_cast<regcache::notifier::Subscription *>(notifier));
}

REGCACHE_API int regcache_notifier_read_begin(regcache_notifier_t *notifier,
                                              uint64_t *seq_p) {
  if (notifier == nullptr || seq_p == nullptr) return -EINVAL;
  if (regcache::notifier::InRange()) return -EDEADLK;
  *seq_p = regcache::notifier::ReadBegin(
      reinterpret_cast<regcache::notifier::Subscription *>(notifier));
  return 0;
}

REGCACHE_API int regcache_notifier_read_retry(
    const regcache_notifier_t *notifier, uint64_t seq) {
  if (notifier == nullptr) return -EINVAL;
  return regcache::notifier::ReadRetry(
             reinterpret_cast<const regcache::notifier::Subscription *>(
                 notifier),
             seq)
             ? 1
             : 0;
}

REGCACHE_API int regcache_notify_unmapped(const void *addr, size_t len) {
  uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  if (start + len < start) return -EINVAL;
  if (len == 0) return 0;
  return regcache::notifier::NotifyUnmapped(start, len);
}

REGCACHE_API int regcache_notify_unmap_start(const void *addr, size_t len) {
  return regcache::notifier::NotifyStart(reinterpret_cast<uintptr_t>(addr),
                                         len);
}

REGCACHE_API int regcache_notify_unmap_end(const void *addr, size_t len) {
  return regcache::notifier::NotifyEnd(reinterpret_cast<uintptr_t>(addr), len);
}

REGCACHE_API int regcache_notifier_quiesce(void) {
  if (regcache::notifier::InCallback()) return -EDEADLK;
  return regcache::notifier::Quiesce();
}

REGCACHE_API int regcache_notifier_resume(void) {
  return regcache::notifier::Resume();
}

REGCACHE_API const char *regcache_notifier_source(void) {
  return regcache::notifier::SourceName(regcache::notifier::ActiveSource());
}

REGCACHE_API int regcache_notifier_set_external(int on) {
  if (on != 0 && on != 1) return -EINVAL;
  regcache::notifier::policy::SetExternal(on == 1);
  return 0;
}

REGCACHE_API int regcache_notifier_caching_safe(void) {
  int rc = regcache::notifier::HostInit();
  if (rc) return rc;
  if (regcache::notifier::InCallback()) return -EDEADLK;
  // Installing is what the first cache would do anyway; the query must not
  // answer for a source that has not been chosen yet.
  rc = regcache::notifier::EnsureInstalled();
  if (rc) return rc;
  // A patch overwritten since is settled first (the switch it may cause is
  // the one the next cache miss would make).
  regcache::notifier::VerifySources();
  const bool safe = regcache::notifier::CachingSafe();
  regcache::notifier::HostFlushLog();
  return safe ? 1 : 0;
}

REGCACHE_API const char *regcache_notifier_blind_reason(void) {
  return regcache::notifier::policy::BlindReason();
}

}  // extern "C"

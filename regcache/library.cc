// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/library.h"

#include <regcache/notifier.h>
#include <regcache/regcache.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "notifier/address_space.h"
#include "notifier/policy.h"
#include "regcache/config_print.h"
#include "regcache/environment.h"
#include "regcache/log.h"
#include "regcache/tunables.h"

namespace regcache {
namespace {

// Called from memory hooks too: the non-allocating path.
void NotifierLog(int level, const char *msg) { log::WriteFromHook(level, msg); }

std::mutex g_init_mu;
bool g_initialized = false;

}  // namespace

int LibraryInit() {
  std::lock_guard<std::mutex> g(g_init_mu);
  if (g_initialized) return 0;
  int rc = log::InitFromTunables();
  if (rc) return rc;
  int idx = 0;
  rc = tunables::GetEnum("MONITOR", &idx);
  if (rc) return rc;
  static constexpr notifier::Source kSources[] = {
      notifier::Source::kAuto, notifier::Source::kPatch,
      notifier::Source::kUffd, notifier::Source::kNone,
      notifier::Source::kUcm};  // the order of MONITOR's choices
  notifier::Options opts;
  opts.source = kSources[idx];
  opts.log = NotifierLog;
  rc = notifier::Configure(opts);
  if (rc) return rc;
  environment::WarnUnknownVariables();
  g_initialized = true;
  return 0;
}

}  // namespace regcache

extern "C" {

REGCACHE_API void regcache_version(unsigned *major, unsigned *minor,
                                   unsigned *patch) {
  if (major) *major = REGCACHE_VERSION_MAJOR;
  if (minor) *minor = REGCACHE_VERSION_MINOR;
  if (patch) *patch = REGCACHE_VERSION_PATCH;
}

REGCACHE_API const char *regcache_strerror(int err) {
  if (err == 0) return "success";
  if (err > 0 || err < -4095) return "unknown error (not a negative errno)";
  switch (-err) {
    case EINVAL:
      return "invalid argument";
    case ENOMEM:
      return "out of memory (or RLIMIT_MEMLOCK / device registration limit)";
    case ESHUTDOWN:
      return "address space torn down: the library is shutting down";
    case EAGAIN:
      return "resource temporarily unavailable (memory kept changing; retry)";
    case EFAULT:
      return "bad address: memory not mapped";
    case EACCES:
      return "permission denied: memory not writable for the requested access";
    case ENOENT:
      return "no such tunable";
    case EBUSY:
      return "busy: already configured differently";
    case EDEADLK:
      return "not allowed from inside a notifier callback";
    case ENOSYS:
      return "event source not available on this system";
    case EALREADY:
      return "another library already patched these functions";
    default:
      return strerrordesc_np(-err) ? strerrordesc_np(-err) : "unknown error";
  }
}

REGCACHE_API void regcache_set_log_handler(regcache_log_func_t fn, void *arg) {
  regcache::log::SetHandler(fn, arg);
}

REGCACHE_API int regcache_set_log_level(int level) {
  return regcache::log::SetLevel(level);
}

REGCACHE_API int regcache_config_set(const char *name, const char *value) {
  if (name == nullptr || value == nullptr) return -EINVAL;
  return regcache::tunables::Set(name, value);
}

REGCACHE_API int regcache_config_get(const char *name, char *buf,
                                     size_t buflen) {
  if (name == nullptr || (buf == nullptr && buflen > 0)) return -EINVAL;
  std::string v;
  int rc = regcache::tunables::GetString(name, &v);
  if (rc) return rc;
  if (buflen > 0) {
    size_t n = std::min(buflen - 1, v.size());
    std::memcpy(buf, v.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int>(v.size());
}

REGCACHE_API int regcache_config_check(void) {
  regcache::environment::WarnUnknownVariables();
  return regcache::tunables::CheckAll();
}

REGCACHE_API int regcache_config_print(FILE *stream, unsigned flags) {
  if ((flags & ~REGCACHE_CONFIG_PRINT_HELP) == 0)  // the 0.1 format, unchanged
    return regcache::tunables::Print(stream,
                                     flags & REGCACHE_CONFIG_PRINT_HELP);
  return regcache::config::Print(stream, flags);
}

// ---------------------------------------------------------------- notifier C
// API
REGCACHE_API int regcache_notifier_register(const regcache_notifier_ops_t *ops,
                                            void *arg,
                                            regcache_notifier_t **notifier_p) {
  if (ops == nullptr || notifier_p == nullptr) return -EINVAL;
  int rc = regcache::LibraryInit();
  if (rc) return rc;
  regcache::notifier::Subscription *sub = nullptr;
  rc = regcache::notifier::Register(ops, arg, 0, 0, &sub);
  regcache::log::FlushDeferred();
  if (rc == 0) *notifier_p = reinterpret_cast<regcache_notifier_t *>(sub);
  return rc;
}

REGCACHE_API int regcache_notifier_register_range(
    const regcache_notifier_ops_t *ops, void *arg, const void *addr, size_t len,
    regcache_notifier_t **notifier_p) {
  if (ops == nullptr || notifier_p == nullptr || len == 0) return -EINVAL;
  uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  if (start + len < start) return -EINVAL;
  int rc = regcache::LibraryInit();
  if (rc) return rc;
  regcache::notifier::Subscription *sub = nullptr;
  rc = regcache::notifier::Register(ops, arg, start, len, &sub);
  regcache::log::FlushDeferred();
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
  int rc = regcache::LibraryInit();
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
  regcache::log::FlushDeferred();
  return safe ? 1 : 0;
}

REGCACHE_API const char *regcache_notifier_blind_reason(void) {
  return regcache::notifier::policy::BlindReason();
}

}  // extern "C"

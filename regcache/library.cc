// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/library.h"

#include <regcache/regcache.h>

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "notifier/address_space.h"
#include "notifier/c_api.h"
#include "regcache/config_print.h"
#include "regcache/environment.h"
#include "regcache/log.h"
#include "regcache/tunables.h"

namespace regcache {
namespace {

// Called from memory hooks too: the non-allocating path.
void NotifierLog(int level, const char *msg) { log::WriteFromHook(level, msg); }

// g_init_mu serialises LibraryInit; g_initialized (written under it) says it
// completed. Lock rule: held across the whole of LibraryInit, which logs (the
// sink's mutex), reads tunables (their mutex) and calls notifier::Configure
// (the notifier's install mutex): g_init_mu is outside all three.
std::mutex g_init_mu;
bool g_initialized = false;  // guarded by g_init_mu

// FORK. A thread may be inside LibraryInit when another forks: the child would
// inherit g_init_mu locked by a thread it does not have, and its first
// regcache_* call would block forever. Discipline: the child re-initialises
// it (InitAtforkChild); prepare does not take it. Why not take it in prepare:
// its holder may be waiting for a quiescer's resume (a free() inside
// LibraryInit reaches the patch hook, whose range waits while another thread
// has quiesced), and the notifier lets such ranges through a fork only from
// its own prepare handler, which must then run first; but the notifier's
// prepare takes its install mutex, which a LibraryInit holder also waits for
// (Configure). Either order could deadlock a quiescer that forks.
// The child's state is then consistent: g_initialized is set last, so a child
// forked mid-init runs LibraryInit again, and every step of it is idempotent
// (the log level and file are set once, Configure with the same source returns
// 0, an unknown-variable warning is repeated at most once).
//
// Order of the process's atfork handlers (prepare runs in reverse order of
// registration, parent/child in order of registration). Constructors of
// priority 101 register, before every default-priority one, the child-only
// handlers of this mutex, of the log sink's mutex (regcache/log.cc), of the
// tunables' mutex (regcache/tunables.cc, same discipline) and of the host
// driver's pin table (drivers/host/host_driver.cc): none has a prepare step,
// and their child steps run before every other child step, which may log or
// read tunables. Default-priority constructors then register, in link order,
// the notifier's (prepare: install mutex, then g_mu) and the caches' (prepare:
// the list, every cache's mu_, the slab). So prepare takes: caches, notifier
// install mutex, g_mu; the parent and child steps release them in the reverse.
std::atomic<bool> g_init_atfork_off{false};

void InitAtforkChild() {
  if (g_init_atfork_off.load(std::memory_order_relaxed)) return;
  // No other thread exists: no one can hold it. pthread_mutex_init (not a
  // placement new) so that sanitizers' shadow state is reset too.
  pthread_mutex_init(g_init_mu.native_handle(), nullptr);
}

__attribute__((constructor(101))) void InitAtforkRegister() {
  pthread_atfork(nullptr, nullptr, InitAtforkChild);
}

// The notifier's C API (notifier/c_api.cc) runs LibraryInit before it
// installs a source and flushes deferred log lines after: the notifier depends
// on nothing of ours, so regcache hands it these at load.
__attribute__((constructor)) void NotifierHostHooksRegister() {
  notifier::SetHostHooks({&LibraryInit, &log::FlushDeferred});
}

}  // namespace

std::mutex &InitMutexForTesting() { return g_init_mu; }
void SetInitAtforkOffForTesting(bool off) {
  g_init_atfork_off.store(off, std::memory_order_relaxed);
}

// REGCACHE_MONITOR's source: its choice (validated by GetEnum) looked up by
// name in the notifier's source table, so no second list keeps the order of
// the choices. -EINVAL if a choice names no source (tunables_test checks that
// none does).
int MonitorSource(notifier::Source *out) {
  int idx = 0;
  int rc = tunables::GetEnum("MONITOR", &idx);
  if (rc) return rc;
  const char *c = tunables::Find("MONITOR")->choices;
  for (; idx > 0 && c; --idx) {
    c = std::strchr(c, '|');
    if (c) ++c;
  }
  if (!c) return -EINVAL;
  const std::string name(c, std::strcspn(c, "|"));
  return notifier::SourceFromName(name.c_str(), out) ? 0 : -EINVAL;
}

int LibraryInit() {
  std::lock_guard<std::mutex> g(g_init_mu);
  if (g_initialized) return 0;
  int rc = log::InitFromTunables();
  if (rc) return rc;
  notifier::Options opts;
  rc = MonitorSource(&opts.source);
  if (rc) return rc;
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

}  // extern "C"

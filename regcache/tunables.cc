// SPDX-License-Identifier: BSD-3-Clause
// regcache/tunables.cc - the tunables' state and reads: in-process overrides
// (regcache_config_set), the environment (secure_getenv; ignored under
// AT_SECURE), typed reads, the warnings logged once, the fork child handler.
// The table is in tunables_table.cc, the parsers in tunables_parse.cc.
#include "regcache/tunables.h"

#include <pthread.h>
#include <sys/auxv.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <string_view>

#include "regcache/log.h"
#include "regcache/tunables_internal.h"

namespace regcache::tunables {
namespace {

using Overrides = std::map<std::string, std::string>;

// FORK. A thread may hold mu when another forks: the child would inherit it
// locked by a thread it does not have, and its first regcache_create (which
// reads tunables) would block forever. Discipline (as regcache/library.cc's
// g_init_mu): prepare does NOT take mu; the child re-initialises it
// (AtforkChild). Why not take it in prepare: a holder's free() may trim the
// heap and reach the patch hook, whose range waits while another thread has
// quiesced; the notifier lets such ranges through a fork only from its own
// prepare handler, which runs after ours (prepare runs in reverse order of
// registration), so a quiescer that forked would wait in our prepare for a
// holder that waits for the quiescer's resume (issue 13).
// So the child may inherit the state mid-change; what it sees stays whole:
// INVARIANT: *overrides is never changed in place. A change builds a new map
// and publishes it with one pointer store (under mu), then frees the old one:
// a child sees the old map or the new one. `reported` (which warnings were
// logged) is changed in place with reported_busy set (under mu): a child
// forked then starts with an empty set (a warning may be repeated once).
// LOCK RULE: every read and change of the state is under mu.
struct State {
  std::mutex mu;
  std::atomic<const Overrides *> overrides{new Overrides};
  std::set<std::string> reported;  // bad values already logged
  std::atomic<bool> reported_busy{false};
};

State &S() {
  static State *s = new State;  // leaked: read during exit-time teardown
  return *s;
}

// REQUIRES: S().mu held. Whether key was not reported yet (now it is).
bool FirstReport(std::string key) {
  S().reported_busy.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const bool first = S().reported.insert(std::move(key)).second;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  S().reported_busy.store(false, std::memory_order_relaxed);
  return first;
}

// REQUIRES: S().mu held.
void ClearReported() {
  S().reported_busy.store(true, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  S().reported.clear();
  std::atomic_thread_fence(std::memory_order_seq_cst);
  S().reported_busy.store(false, std::memory_order_relaxed);
}

// REQUIRES: S().mu held. Publishes next (whole) and frees the old map.
void ReplaceOverrides(const Overrides *next) {
  const Overrides *old =
      S().overrides.exchange(next, std::memory_order_seq_cst);
  delete old;
}

std::atomic<bool> g_atfork_off{false};

void AtforkChild() {
  if (g_atfork_off.load(std::memory_order_relaxed)) return;
  // No other thread exists: no one can hold it. pthread_mutex_init (not a
  // placement new) so that sanitizers' shadow state is reset too.
  pthread_mutex_init(S().mu.native_handle(), nullptr);
  // Forked while another thread changed the set: it may be half-linked.
  // Start empty (the old nodes are leaked, once per such fork).
  if (S().reported_busy.load(std::memory_order_relaxed)) {
    new (&S().reported) std::set<std::string>();
    S().reported_busy.store(false, std::memory_order_relaxed);
  }
}

// Priority 101 (as library.cc's init mutex): the child step runs before every
// default-priority child step, which may read tunables.
__attribute__((constructor(101))) void TunablesAtforkInit() {
  S();  // constructed before any fork
  pthread_atfork(nullptr, nullptr, AtforkChild);
}
// Secure-execution mode (AT_SECURE: setuid/setgid, file capabilities, an LSM
// transition). A test seam can force it (SetSecureForTesting).
int g_force_secure = -1;  // -1: ask the kernel

bool Secure() {
  if (g_force_secure >= 0) return g_force_secure != 0;
  return getauxval(AT_SECURE) != 0;
}

// The variable EnvLookup() found ignored (secure mode) and ReportIgnored()
// is to warn about, on this thread; nullptr when there is none.
thread_local const Spec *t_ignored = nullptr;

// Whether NAME=... is in the environment, without reading its value: under
// AT_SECURE only to say that it is ignored.
bool IsSet(const std::string &name) {
  for (char **e = environ; e != nullptr && *e != nullptr; ++e)
    if (std::strncmp(*e, name.c_str(), name.size()) == 0 &&
        (*e)[name.size()] == '=')
      return true;
  return false;
}

// THE one place the environment is read (every REGCACHE_* variable comes
// through here). Under AT_SECURE the environment belongs to a less privileged
// caller: a setuid program would otherwise let it turn invalidation off
// (REGCACHE_MONITOR=none) or redirect logs, so it is ignored (secure_getenv
// returns NULL there), with one warning per variable that was set.
// REQUIRES: S().mu held (the reported set). The warning is not logged here,
// under the mutex, but by ReportIgnored() after the caller unlocked (a log
// handler may call back into regcache_config_*).
const char *EnvLookup(const Spec &s) {
  std::string name = std::string("REGCACHE_") + s.name;
  if (!Secure()) return secure_getenv(name.c_str());
  if (IsSet(name) && FirstReport("secure:" + name)) t_ignored = &s;
  return nullptr;
}

// REQUIRES: S().mu not held.
void ReportIgnored() {
  const Spec *s = t_ignored;
  if (s == nullptr) return;
  t_ignored = nullptr;
  log::Write(REGCACHE_LOG_WARN,
             fmt::format("REGCACHE_{} is ignored: secure-execution mode "
                         "(setuid/setgid or capabilities); use "
                         "regcache_config_set() from the program",
                         s->name));
}

}  // namespace

void SetSecureForTesting(int secure) {
  std::lock_guard<std::mutex> g(S().mu);
  g_force_secure = secure;
  ClearReported();
}

namespace {

// Current raw value and where it came from. REQUIRES: S().mu held.
std::string RawLocked(const Spec &s, const char **origin) {
  const Overrides &o = *S().overrides.load(std::memory_order_relaxed);
  auto it = o.find(s.name);
  if (it != o.end()) {
    *origin = "regcache_config_set";
    return it->second;
  }
  if (const char *e = EnvLookup(s)) {
    *origin = "environment";
    return e;
  }
  *origin = "default";
  return s.default_value;
}

int Read(const char *name, int *enum_index, size_t *size_out, bool *is_auto,
         std::string *raw_out) {
  const Spec *s = Find(name);
  if (!s) return -ENOENT;
  std::string raw;
  const char *origin = nullptr;
  bool first_report = false;
  int rc;
  {
    std::lock_guard<std::mutex> g(S().mu);
    raw = RawLocked(*s, &origin);
    rc = Validate(*s, raw, enum_index, size_out, is_auto);
    if (raw_out) *raw_out = raw;
    if (rc != 0) first_report = FirstReport(std::string(s->name) + "=" + raw);
  }
  ReportIgnored();
  if (rc == 0) return 0;
  if (first_report) {
    log::Write(REGCACHE_LOG_ERROR,
               fmt::format(
                   "invalid value '{}' for REGCACHE_{} (from {}); accepted: {}",
                   raw, s->name, origin, Accepted(*s)));
  }
  return -EINVAL;
}

}  // namespace
int GetString(const char *name, std::string *out) {
  const Spec *s = Find(name);
  if (!s) return -ENOENT;
  {
    std::lock_guard<std::mutex> g(S().mu);
    const char *origin;
    *out = RawLocked(*s, &origin);
  }
  ReportIgnored();
  return 0;
}

int GetBool(const char *name, bool *out) {
  const Spec *s = Find(name);
  if (!s) return -ENOENT;
  if (s->type != Type::kBool) return -EINVAL;
  std::string raw;
  int rc = Read(name, nullptr, nullptr, nullptr, &raw);
  if (rc == 0) ParseBool(raw, out);
  return rc;
}

int GetEnum(const char *name, int *index_out) {
  const Spec *s = Find(name);
  if (!s) return -ENOENT;
  if (s->type != Type::kEnum) return -EINVAL;
  return Read(name, index_out, nullptr, nullptr, nullptr);
}

int GetSize(const char *name, size_t *out, bool *is_auto) {
  const Spec *s = Find(name);
  if (!s) return -ENOENT;
  if (s->type != Type::kSize && s->type != Type::kUint) return -EINVAL;
  bool a = false;
  size_t v = 0;
  int rc = Read(name, nullptr, &v, &a, nullptr);
  if (rc) return rc;
  if (is_auto) *is_auto = a;
  if (!a) *out = v;
  return 0;
}

int Set(const char *name, const char *value) {
  const Spec *s = Find(name);
  if (!s) return -ENOENT;
  if (value == nullptr) return -EINVAL;
  int rc = Validate(*s, value, nullptr, nullptr, nullptr);
  if (rc) {
    log::Write(REGCACHE_LOG_ERROR,
               fmt::format("invalid value '{}' for REGCACHE_{}; accepted: {}",
                           value, s->name, Accepted(*s)));
    return rc;
  }
  std::lock_guard<std::mutex> g(S().mu);
  auto *next = new Overrides(*S().overrides.load(std::memory_order_relaxed));
  (*next)[s->name] = value;
  ReplaceOverrides(next);
  return 0;
}

int GetOrigin(const char *name, std::string *value, const char **origin) {
  const Spec *s = Find(name);
  if (!s || !value || !origin) return s ? -EINVAL : -ENOENT;
  std::lock_guard<std::mutex> g(S().mu);
  *value = RawLocked(*s, origin);
  return 0;
}
int CheckAll() {
  int result = 0;
  for (const auto &s : Specs()) {
    int rc = Read(s.name, nullptr, nullptr, nullptr, nullptr);
    if (rc) result = rc;
  }
  return result;
}

void ClearOverridesForTesting() {
  std::lock_guard<std::mutex> g(S().mu);
  ReplaceOverrides(new Overrides);
  ClearReported();
}

std::mutex &MutexForTesting() { return S().mu; }
void SetAtforkOffForTesting(bool off) {
  g_atfork_off.store(off, std::memory_order_relaxed);
}

int Print(FILE *stream, bool with_help) {
  if (!stream) return -EINVAL;
  static const char *kTypeName[] = {"bool", "enum", "size", "count", "string"};
  for (const auto &s : Specs()) {
    std::string v;
    GetString(s.name, &v);
    if (with_help) {
      std::fprintf(stream, "#\n# %s\n#\n# syntax:  %s: %s\n# default: %s\n#\n",
                   s.help, kTypeName[static_cast<int>(s.type)], Accepted(s),
                   s.default_value);
    }
    std::fprintf(stream, "REGCACHE_%s=%s\n", s.name, v.c_str());
  }
  return 0;
}

}  // namespace regcache::tunables

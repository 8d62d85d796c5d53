// SPDX-License-Identifier: BSD-3-Clause
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

namespace regcache::tunables {
namespace {

// THE table. Later features add their rows here and nowhere else.
constexpr Spec kTable[] = {
    {"LOG_LEVEL", Type::kEnum, "warn",
     "Library log level. Log lines go to stderr, or to the handler set with "
     "regcache_set_log_handler().",
     "off|error|warn|info|debug|trace"},
    {"LOG_FILE", Type::kString, "",
     "Write log lines to this file (appending) instead of stderr; %h is "
     "replaced by the host name, %p by the process id, %% by %. Read once, "
     "when the library initializes. A handler set with "
     "regcache_set_log_handler() still takes precedence.",
     nullptr},
    {"MONITOR", Type::kEnum, "auto",
     "How the notifier sees memory being unmapped: patch (patch libc's "
     "munmap/mremap/madvise/brk/shmdt/mmap entry points), uffd (userfaultfd "
     "monitor thread), ucm (import the events of UCX's libucm, when the "
     "process loaded it), none (the host reports unmaps with "
     "regcache_notify_unmap_start/end; caching stays on), auto (patch; ucm if "
     "libucm patched libc first; uffd; ucm if libucm is loaded; else no "
     "source: caching is turned off, with one warning).",
     "auto|patch|uffd|none|ucm"},
    {"MAX_REGIONS", Type::kUint, "16384",
     "Most regions a cache keeps registered. Beyond it, unused regions are "
     "deregistered in REGCACHE_EVICTION's order (regions in use are never "
     "evicted, and a miss the policy does not cache is held uncached, so "
     "the "
     "count can exceed the limit while they are held). Default: well under the "
     "max_mr of common HCAs (rxe 524287, mlx5 ~16M) and 16x libfabric's 1024, "
     "which is known to thrash. 0 disables caching.",
     nullptr},
    {"MAX_BYTES", Type::kSize, "auto",
     "Most registered (pinned) bytes a cache keeps; beyond it, unused regions "
     "are deregistered in REGCACHE_EVICTION's order. auto: 3/4 of "
     "RLIMIT_MEMLOCK when "
     "that limit is finite and applies (no CAP_IPC_LOCK), else 1/4 of "
     "physical RAM.",
     "auto"},
    {"MERGE_MAX_BYTES", Type::kSize, "64m",
     "A region formed by merging overlapping regions never grows "
     "beyond this "
     "many bytes (a request larger than this is registered as it is). 0 "
     "disables merging.",
     nullptr},
    {"EVICTION", Type::kEnum, "adaptive",
     "Which unused regions a full cache deregisters, and whether a miss is "
     "cached. adaptive: least recently used first, but a region used once is "
     "cached only while first-time regions have proven worth it (a reuse LRU "
     "would have hit), so loops over more buffers than fit and one-off scans "
     "keep the reused set; costlier (larger) regions are kept longer, by "
     "their modeled registration cost. lru: least recently used first, every "
     "miss cached (UCX's decisions).",
     "adaptive|lru"},
    {"ACCESS_POLICY", Type::kEnum, "all",
     "Access a cache registers memory with. all: writable memory gets every "
     "access (local write, remote read, write and atomic), so requests with "
     "different flags share one registration, as UCX and libfabric do; a key "
     "then allows remote writes even where the application asked for local "
     "access only (it grants nothing until the application sends the rkey). "
     "Read-only memory, or a driver refusing, falls back to the requested "
     "access. requested: only the union of the requested flags.",
     "all|requested"},
    {"ODP", Type::kEnum, "auto",
     "On-demand paging for the verbs driver (read when a driver is opened). "
     "auto: register "
     "with IBV_ACCESS_ON_DEMAND (nothing pinned) when the device's RC ODP caps "
     "cover send, "
     "recv, write, read and atomic, else pin (one info line). on: the same, "
     "but the "
     "fallback to pinning is a warning. off: always pin.",
     "auto|on|off"},
    {"STATS", Type::kBool, "n",
     "Print each cache's statistics to the log (info level, or stderr) when it "
     "is "
     "destroyed or the process exits.",
     nullptr},
};

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

std::string Lower(std::string v) {
  for (auto &c : v)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return v;
}

bool HasChoice(const char *choices, const std::string &v, int *index) {
  if (choices == nullptr) return false;
  std::string_view all(choices);
  int i = 0;
  size_t pos = 0;
  while (pos <= all.size()) {
    size_t bar = all.find('|', pos);
    if (bar == std::string_view::npos) bar = all.size();
    if (all.substr(pos, bar - pos) == v) {
      if (index) *index = i;
      return true;
    }
    ++i;
    pos = bar + 1;
  }
  return false;
}

const char *Accepted(const Spec &s) {
  switch (s.type) {
    case Type::kBool:
      return "y|n|yes|no|1|0|on|off|true|false";
    case Type::kEnum:
      return s.choices;
    case Type::kSize:
      return s.choices ? "a size like 4096, 64k, 256m, 2g, or inf, or auto"
                       : "a size like 4096, 64k, 256m, 2g, or inf";
    case Type::kUint:
      return s.choices ? "a non-negative integer, inf, or auto"
                       : "a non-negative integer, or inf";
    case Type::kString:
      return "any text (empty: unset)";
  }
  return "";
}

// Validates v for s. 0 or -EINVAL.
int Validate(const Spec &s, const std::string &raw, int *enum_index,
             size_t *size_out, bool *is_auto) {
  std::string v = Lower(raw);
  switch (s.type) {
    case Type::kBool: {
      bool b;
      return ParseBool(v, &b);
    }
    case Type::kEnum:
      return HasChoice(s.choices, v, enum_index) ? 0 : -EINVAL;
    case Type::kSize:
    case Type::kUint: {
      if (v == "auto") {
        if (!s.choices) return -EINVAL;
        if (is_auto) *is_auto = true;
        return 0;
      }
      size_t n;
      int rc;
      if (s.type == Type::kSize) {
        rc = ParseSize(v, &n);
      } else if (v == "inf") {
        n = SIZE_MAX;
        rc = 0;
      } else {
        char *end = nullptr;
        errno = 0;
        unsigned long long x = std::strtoull(v.c_str(), &end, 10);
        rc = (v.empty() || v[0] == '-' || *end != '\0' || errno) ? -EINVAL : 0;
        n = static_cast<size_t>(x);
      }
      if (rc == 0 && size_out) *size_out = n;
      if (rc == 0 && is_auto) *is_auto = false;
      return rc;
    }
    case Type::kString:
      return 0;
  }
  return -EINVAL;
}

// Secure-execution mode (AT_SECURE: setuid/setgid, file capabilities, an LSM
// transition). A test seam can force it (SetSecureForTesting).
int g_force_secure = -1;  // -1: ask the kernel

bool Secure() {
  if (g_force_secure >= 0) return g_force_secure != 0;
  return getauxval(AT_SECURE) != 0;
}

// THE one place the environment is read (every REGCACHE_* variable comes
// through here). Under AT_SECURE the environment belongs to a less privileged
// caller: a setuid program would otherwise let it turn invalidation off
// (REGCACHE_MONITOR=none) or redirect logs, so it is ignored (secure_getenv
// returns NULL there), with one warning per variable that was set.
// REQUIRES: S().mu held (the reported set). The warning is not logged here,
// under the mutex, but by ReportIgnored() after the caller unlocked (a log
// handler may call back into regcache_config_*).
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

const Spec *Table(size_t *count) {
  *count = sizeof(kTable) / sizeof(kTable[0]);
  return kTable;
}

const Spec *Find(const char *name) {
  if (name == nullptr) return nullptr;
  std::string_view n(name);
  if (n.substr(0, 9) == "REGCACHE_") n.remove_prefix(9);
  for (const auto &s : kTable) {
    if (n == s.name) return &s;
  }
  return nullptr;
}

int ParseBool(const std::string &raw, bool *out) {
  std::string v = Lower(raw);
  if (v == "y" || v == "yes" || v == "1" || v == "on" || v == "true") {
    *out = true;
    return 0;
  }
  if (v == "n" || v == "no" || v == "0" || v == "off" || v == "false") {
    *out = false;
    return 0;
  }
  return -EINVAL;
}

int ParseSize(const std::string &raw, size_t *out) {
  std::string v = Lower(raw);
  if (v == "inf") {
    *out = SIZE_MAX;
    return 0;
  }
  if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0])))
    return -EINVAL;
  char *end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (errno) return -EINVAL;
  std::string_view unit(end);
  if (!unit.empty() && unit.back() == 'b') unit.remove_suffix(1);
  unsigned shift = 0;
  if (unit.empty())
    shift = 0;
  else if (unit == "k")
    shift = 10;
  else if (unit == "m")
    shift = 20;
  else if (unit == "g")
    shift = 30;
  else if (unit == "t")
    shift = 40;
  else
    return -EINVAL;
  if (shift && n > (SIZE_MAX >> shift)) return -EINVAL;
  *out = static_cast<size_t>(n) << shift;
  return 0;
}

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

const char *AcceptedValues(const Spec &s) { return Accepted(s); }

int CheckAll() {
  int result = 0;
  for (const auto &s : kTable) {
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
  for (const auto &s : kTable) {
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

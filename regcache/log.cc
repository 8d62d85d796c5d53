// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/log.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>

#include "notifier/address_space.h"

namespace regcache::log {

std::atomic<int> g_level{REGCACHE_LOG_WARN};

namespace {

spdlog::level::level_enum ToSpd(int level) {
  switch (level) {
    case REGCACHE_LOG_ERROR:
      return spdlog::level::err;
    case REGCACHE_LOG_WARN:
      return spdlog::level::warn;
    case REGCACHE_LOG_INFO:
      return spdlog::level::info;
    case REGCACHE_LOG_DEBUG:
      return spdlog::level::debug;
    default:
      return spdlog::level::trace;
  }
}

int FromSpd(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::critical:
    case spdlog::level::err:
      return REGCACHE_LOG_ERROR;
    case spdlog::level::warn:
      return REGCACHE_LOG_WARN;
    case spdlog::level::info:
      return REGCACHE_LOG_INFO;
    case spdlog::level::debug:
      return REGCACHE_LOG_DEBUG;
    default:
      return REGCACHE_LOG_TRACE;
  }
}

// Where lines go when no handler is set: stderr, or the REGCACHE_LOG_FILE
// descriptor once InitFromTunables opened it (never closed: exit-time teardown
// still logs).
std::atomic<int> g_fd{STDERR_FILENO};
// True while a host handler is installed: the hook path then defers.
std::atomic<bool> g_has_handler{false};

// write(2) the whole buffer, retrying on EINTR and short writes. Bounded: each
// iteration writes at least one byte or gives up.
void WriteAll(int fd, const char *p, size_t n) noexcept {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // nowhere to report a failing log sink
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// ---- the deferred ring: lines from hook context while a handler is set.
// Slot states: 0 free, 1 being written or read, 2 holds a line. A writer that
// finds its slot busy drops the line and counts it (never waits).
constexpr size_t kSlots = 16;
constexpr size_t kSlotText = 240;
struct Slot {
  std::atomic<int> state{0};
  int level = 0;
  char text[kSlotText] = {};
};
Slot g_ring[kSlots];
std::atomic<unsigned> g_ring_next{0};
std::atomic<bool> g_ring_pending{false};
std::atomic<size_t> g_dropped{0};

// The sink: the host's handler, else the file descriptor.
//
// Lock rule: mutex_ (spdlog's base_sink) is held across each line, the host's
// handler included, and across Set. The handler is kept as two slots and an
// index (written under mutex_): Set fills the slot not in use, then flips the
// index, so the pair (fn, arg) that any moment shows is one that was set.
//
// FORK: a thread may be inside a line (in the host's handler, for as long as
// that takes) when another forks; the child would inherit mutex_ locked by a
// thread it does not have, and its first log line would block forever. The
// child re-initialises it (AtforkChild) instead of prepare taking it, because
// its holder runs the host's code, which may wait for anything. What the
// child inherits is consistent: the handler pair is whole (above); the
// formatter's cached time is plain data at worst a second old. A fork from
// inside a log handler is not supported. The order among all atfork handlers
// is written in regcache/library.cc (FORK).
class Sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  void Set(regcache_log_func_t fn, void *arg) {
    std::lock_guard<std::mutex> g(this->mutex_);
    const unsigned next = 1 - cur_.load(std::memory_order_relaxed);
    handler_[next] = {fn, arg};
    cur_.store(next, std::memory_order_release);
    g_has_handler.store(fn != nullptr, std::memory_order_release);
  }
  // Atfork child only: no other thread exists. pthread_mutex_init (not a
  // placement new) so that sanitizers' shadow state is reset too.
  void ReinitInChild() {
    pthread_mutex_init(this->mutex_.native_handle(), nullptr);
  }

 protected:
  void sink_it_(const spdlog::details::log_msg &msg) override {
    const Handler h = handler_[cur_.load(std::memory_order_acquire)];
    if (h.fn) {
      std::string text(msg.payload.data(), msg.payload.size());
      h.fn(h.arg, FromSpd(msg.level), text.c_str());
      return;
    }
    spdlog::memory_buf_t buf;
    formatter_->format(msg, buf);
    WriteAll(g_fd.load(std::memory_order_acquire), buf.data(), buf.size());
  }
  void flush_() override {}

 private:
  struct Handler {
    regcache_log_func_t fn = nullptr;
    void *arg = nullptr;
  };
  Handler handler_[2];  // GUARDED_BY(mutex_) for writes; see Set
  std::atomic<unsigned> cur_{0};
};

std::string HostName() {
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) return "?";
  return host;
}

struct Logger {
  std::shared_ptr<Sink> sink = std::make_shared<Sink>();
  // Constructed directly: not in spdlog's registry.
  spdlog::logger logger{"regcache", sink};
  Logger() {
    // UCX style: [seconds.micros] [host:pid:tid] regcache <level>: message. The
    // host name is fixed at start; pid and tid are read per line (%P, %t).
    std::string host;
    for (char c : HostName()) {
      if (c == '%') host += '%';  // a literal % in the pattern
      host += c;
    }
    logger.set_pattern("[%E.%f] [" + host + ":%P:%t] regcache %l: %v");
    logger.set_level(spdlog::level::trace);  // filtering is done by g_level
  }
};

// Published once constructed, for the atfork child handler (which must not
// construct it: a child forked while another thread constructs it would wait
// for that construction, and constructing spdlog objects from a priority-101
// constructor would run before spdlog's own static initialisers).
std::atomic<Logger *> g_logger{nullptr};

Logger &L() {
  static Logger *l = [] {
    auto *made =
        new Logger;  // leaked on purpose: exit-time teardown still logs
    g_logger.store(made, std::memory_order_release);
    return made;
  }();
  return *l;
}

std::atomic<bool> g_sink_atfork_off{false};

void AtforkChild() {
  if (g_sink_atfork_off.load(std::memory_order_relaxed)) return;
  if (Logger *l = g_logger.load(std::memory_order_acquire))
    l->sink->ReinitInChild();
}

// Priority 101: before the notifier's and the caches' handlers, whose child
// steps may log (regcache/library.cc, FORK).
__attribute__((constructor(101))) void LogAtforkRegister() {
  pthread_atfork(nullptr, nullptr, AtforkChild);
}

std::atomic<bool> g_level_set_by_api{false};
std::once_flag g_file_once;

// Delivers the lines the hook path deferred. Ordinary context only.
void DrainDeferred() {
  if (!g_ring_pending.exchange(false, std::memory_order_acq_rel)) return;
  for (auto &s : g_ring) {
    int full = 2;
    if (!s.state.compare_exchange_strong(full, 1, std::memory_order_acquire))
      continue;
    std::string text(s.text);
    int level = s.level;
    s.state.store(0, std::memory_order_release);
    L().logger.log(ToSpd(level), "{}", text);
  }
  if (size_t n = g_dropped.exchange(0, std::memory_order_relaxed)) {
    L().logger.log(
        spdlog::level::warn,
        "{} log line(s) from memory hooks dropped (deferred ring full)", n);
  }
}

void OpenLogFile(const std::string &pattern) {
  if (pattern.empty()) return;
  std::string path =
      ExpandPath(pattern, HostName(), static_cast<long>(getpid()));
  int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    Write(REGCACHE_LOG_ERROR,
          fmt::format("cannot open REGCACHE_LOG_FILE '{}' (from '{}'): {}; "
                      "logging to stderr",
                      path, pattern, std::strerror(errno)));
    return;
  }
  g_fd.store(fd, std::memory_order_release);
}

}  // namespace

size_t FormatPrefix(char *buf, size_t len, int level) noexcept {
  if (len == 0) return 0;
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '?';
  spdlog::string_view_t lv = spdlog::level::to_string_view(ToSpd(level));
  int n = std::snprintf(buf, len, "[%lld.%06ld] [%s:%d:%ld] regcache %.*s: ",
                        static_cast<long long>(ts.tv_sec), ts.tv_nsec / 1000,
                        host, static_cast<int>(getpid()),
                        static_cast<long>(syscall(SYS_gettid)),
                        static_cast<int>(lv.size()), lv.data());
  if (n < 0) {
    buf[0] = '\0';
    return 0;
  }
  return std::min(static_cast<size_t>(n), len - 1);
}

void WriteFromHook(int level, const char *msg) noexcept {
  if (level <= REGCACHE_LOG_OFF || !Enabled(level) || msg == nullptr) return;
  if (g_has_handler.load(std::memory_order_acquire)) {
    // The handler is the host's code: it may allocate or lock. Defer.
    unsigned i = g_ring_next.fetch_add(1, std::memory_order_relaxed) % kSlots;
    Slot &s = g_ring[i];
    int free_state = 0;
    if (!s.state.compare_exchange_strong(free_state, 1,
                                         std::memory_order_acquire)) {
      g_dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    s.level = level;
    size_t n = strnlen(msg, kSlotText - 1);
    std::memcpy(s.text, msg, n);
    s.text[n] = '\0';
    s.state.store(2, std::memory_order_release);
    g_ring_pending.store(true, std::memory_order_release);
    return;
  }
  char line[512];
  size_t n = FormatPrefix(line, sizeof(line) - 1, level);
  size_t m = strnlen(msg, sizeof(line) - 1 - n);
  std::memcpy(line + n, msg, m);
  n += m;
  line[n++] = '\n';
  WriteAll(g_fd.load(std::memory_order_acquire), line, n);
}

void Write(int level, std::string_view msg) {
  if (!Enabled(level) || level <= REGCACHE_LOG_OFF) return;
  if (notifier::InRange()) {
    // Inside a memory hook or a notifier callback (a driver or the cache
    // logging there): no spdlog, no allocation past this point.
    char text[kSlotText];
    size_t n = std::min(msg.size(), sizeof(text) - 1);
    std::memcpy(text, msg.data(), n);
    text[n] = '\0';
    WriteFromHook(level, text);
    return;
  }
  DrainDeferred();
  L().logger.log(ToSpd(level), "{}", msg);
}

void FlushDeferred() {
  if (!notifier::InRange()) DrainDeferred();
}

void SetHandler(regcache_log_func_t fn, void *arg) {
  // Lines deferred while the old handler was installed go to it, not the new.
  DrainDeferred();
  L().sink->Set(fn, arg);
}

int SetLevel(int level) {
  if (level < REGCACHE_LOG_OFF || level > REGCACHE_LOG_TRACE) return -EINVAL;
  g_level_set_by_api.store(true, std::memory_order_relaxed);
  g_level.store(level, std::memory_order_relaxed);
  return 0;
}

bool LevelSetByApi() {
  return g_level_set_by_api.load(std::memory_order_relaxed);
}

void ApplyConfig(const int *level, const std::string *file_pattern) {
  if (level != nullptr && !g_level_set_by_api.load(std::memory_order_relaxed))
    g_level.store(*level, std::memory_order_relaxed);
  if (file_pattern != nullptr)
    std::call_once(g_file_once, [&] { OpenLogFile(*file_pattern); });
}

std::string ExpandPath(std::string_view pattern, std::string_view host,
                       long pid) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c != '%' || i + 1 == pattern.size()) {
      out += c;
      continue;
    }
    char k = pattern[++i];
    if (k == 'h')
      out += host;
    else if (k == 'p')
      out += std::to_string(pid);
    else if (k == '%')
      out += '%';
    else {
      out += '%';
      out += k;
    }
  }
  return out;
}

void SetSinkAtforkOffForTesting(bool off) {
  g_sink_atfork_off.store(off, std::memory_order_relaxed);
}

size_t DroppedForTesting() { return g_dropped.load(std::memory_order_relaxed); }

}  // namespace regcache::log

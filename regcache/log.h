/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/log.h - the library's private logger (internal).
//
// One spdlog logger owned by the library; never registered in spdlog's global
// registry (a host application may use spdlog itself). A line reads (as UCX's):
//   [1764512345.123456] [node7:4242:4243] regcache warning: <message>
// (wall-clock seconds.microseconds, host:pid:thread id), so that the lines of a
// 512-rank job can be told apart. Lines go to the host's
// regcache_set_log_handler() callback (the message alone), else to
// REGCACHE_LOG_FILE (%h host, %p pid, %%), else stderr; one write(2) per line,
// so concurrent ranks and threads do not interleave within a line. Level:
// REGCACHE_LOG_LEVEL, or regcache_set_log_level().
//
// Style (UCX LoggingStyle): lowercase, "region 0x... len 4096", strerror for
// every failed system or library call, and an error is logged once, where it is
// first decided.
//
// Enabled() is one relaxed atomic load, so a disabled debug line costs nothing
// on hot paths. Write() and REGCACHE_LOG allocate; they must not be used from a
// memory hook or notifier callback (malloc's arena lock may be held there).
// WriteFromHook() is the path for that context: it formats into a stack buffer
// and write(2)s it, and when the host installed a handler (which may allocate) it
// defers the line to a fixed ring that the next Write() from ordinary context
// delivers first. Write() itself checks the context and takes that path when
// called inside a notifier range or callback.
//
// Lock rule: the sink's mutex (spdlog base_sink) is taken only on the ordinary
// path; the hook path takes no lock (atomics on the ring slots only). A fork
// child re-initialises that mutex (log.cc, FORK).
#ifndef REGCACHE_REGCACHE_LOG_H_
#define REGCACHE_REGCACHE_LOG_H_

#include <fmt/format.h>
#include <regcache/regcache.h>

#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>

#include "regcache/private_api.h"

namespace regcache::log {

// Exported to the driver libraries (REGCACHE_PRIVATE_API).
extern REGCACHE_PRIVATE_API std::atomic<int> g_level;

inline bool Enabled(int level) {
  return level <= g_level.load(std::memory_order_relaxed);
}
REGCACHE_PRIVATE_API void Write(int level, std::string_view msg);
// For memory hooks and notifier callbacks (the notifier's log hook): never
// allocates, never takes a lock. Lines longer than ~400 bytes are truncated.
void WriteFromHook(int level, const char *msg) noexcept;
// Delivers lines the hook path deferred (the notifier logs through it, also
// when it installs a source: auto's one warning when it finds none). Called
// where a public call that may have installed a source returns, so the host's
// handler gets the line then, not at some later log line. No-op inside a
// notifier range or callback.
void FlushDeferred();
void SetHandler(regcache_log_func_t fn, void *arg);
int SetLevel(int level);
// Reads REGCACHE_LOG_LEVEL (unless regcache_set_log_level() was called) and
// REGCACHE_LOG_FILE (opened once, appending; on failure one error line and
// stderr stays). Returns 0/-EINVAL. Defined in log_config.cc, the one unit
// that sees both the logger and the tunables (the logger itself does not read
// tunables: tunables.cc logs through it).
int InitFromTunables();
// What InitFromTunables applies: the level (unless regcache_set_log_level()
// was called; nullptr: keep) and the file pattern (opened on the first call
// only, "" = stderr; nullptr: not yet).
void ApplyConfig(const int *level, const std::string *file_pattern);
// True once regcache_set_log_level() was called.
bool LevelSetByApi();

// Exposed for tests.
// Expands %h (host name), %p (pid) and %% in a REGCACHE_LOG_FILE value; any
// other %x is kept as is.
std::string ExpandPath(std::string_view pattern, std::string_view host,
                       long pid);
// Writes "[sec.usec] [host:pid:tid] regcache <level>: " into buf (always
// NUL-terminated); returns its length. No allocation.
size_t FormatPrefix(char *buf, size_t len, int level) noexcept;
// Lines dropped because the deferred ring was full (reported once delivered).
size_t DroppedForTesting();
// Disables the sink's atfork child handler (negative controls: a child forked
// while another thread is inside a line then blocks on its first line).
void SetSinkAtforkOffForTesting(bool off);

}  // namespace regcache::log

#define REGCACHE_LOG(level, ...)                                              \
  do {                                                                        \
    if (::regcache::log::Enabled(REGCACHE_LOG_##level))                       \
      ::regcache::log::Write(REGCACHE_LOG_##level, fmt::format(__VA_ARGS__)); \
  } while (0)

// Log once: FirstTime(flag) is true for the first caller only (flag: a member,
// when "once" is per object); REGCACHE_LOG_ONCE keeps its own static flag
// (once per process, per call site). The flag is spent even when the level is
// disabled, as an "error logged once, where it is first decided" should be.
namespace regcache::log {
inline bool FirstTime(std::atomic<bool> &flag) {
  return !flag.exchange(true, std::memory_order_relaxed);
}
}  // namespace regcache::log

#define REGCACHE_LOG_ONCE(level, ...)                   \
  do {                                                  \
    static std::atomic<bool> regcache_log_once_{false}; \
    if (::regcache::log::FirstTime(regcache_log_once_)) \
      REGCACHE_LOG(level, __VA_ARGS__);                 \
  } while (0)

#endif  // REGCACHE_REGCACHE_LOG_H_

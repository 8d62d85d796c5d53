/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/log.h - the library's private logger (internal).
//
// One spdlog logger owned by the library; never registered in spdlog's global
// registry (a host application may use spdlog itself). Lines go to stderr as
// "[regcache] <level>: <message>", or to the host's regcache_set_log_handler()
// callback. Level: REGCACHE_LOG_LEVEL, or regcache_set_log_level().
//
// Style (UCX LoggingStyle): lowercase, "region 0x... len 4096", strerror for
// every failed system or library call, and an error is logged once, where it is
// first decided.
//
// Enabled() is one relaxed atomic load, so a disabled debug line costs nothing
// on hot paths. Writing allocates: from the munmap path only log at error
// level, or behind Enabled(REGCACHE_LOG_DEBUG).
#ifndef REGCACHE_REGCACHE_LOG_H_
#define REGCACHE_REGCACHE_LOG_H_

#include <fmt/format.h>
#include <regcache/regcache.h>

#include <atomic>
#include <string_view>

#include "regcache/private_api.h"

namespace regcache::log {

// Exported to the driver libraries (REGCACHE_PRIVATE_API).
extern REGCACHE_PRIVATE_API std::atomic<int> g_level;

inline bool Enabled(int level) {
  return level <= g_level.load(std::memory_order_relaxed);
}
REGCACHE_PRIVATE_API void Write(int level, std::string_view msg);
void SetHandler(regcache_log_func_t fn, void *arg);
int SetLevel(int level);
// Reads REGCACHE_LOG_LEVEL unless regcache_set_log_level() was called. Returns
// 0/-EINVAL.
int InitFromTunables();

}  // namespace regcache::log

#define REGCACHE_LOG(level, ...)                                              \
  do {                                                                        \
    if (::regcache::log::Enabled(REGCACHE_LOG_##level))                       \
      ::regcache::log::Write(REGCACHE_LOG_##level, fmt::format(__VA_ARGS__)); \
  } while (0)

#endif  // REGCACHE_REGCACHE_LOG_H_

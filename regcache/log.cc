// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/log.h"

#include <spdlog/logger.h>
#include <spdlog/sinks/base_sink.h>

#include <cerrno>
#include <memory>
#include <mutex>

#include "regcache/tunables.h"

namespace regcache::log {

std::atomic<int> g_level{REGCACHE_LOG_WARN};

namespace {

// Debian's spdlog 1.10 has no callback_sink: route to the host's handler, else
// stderr.
class HandlerSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  void Set(regcache_log_func_t fn, void *arg) {
    std::lock_guard<std::mutex> g(this->mutex_);
    fn_ = fn;
    arg_ = arg;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg &msg) override {
    int level = FromSpd(msg.level);
    if (fn_) {
      std::string text(msg.payload.data(), msg.payload.size());
      fn_(arg_, level, text.c_str());
      return;
    }
    spdlog::memory_buf_t buf;
    formatter_->format(msg, buf);
    std::fwrite(buf.data(), 1, buf.size(), stderr);
  }
  void flush_() override { std::fflush(stderr); }

 private:
  static int FromSpd(spdlog::level::level_enum l) {
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
  regcache_log_func_t fn_ = nullptr;
  void *arg_ = nullptr;
};

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

struct Logger {
  std::shared_ptr<HandlerSink> sink = std::make_shared<HandlerSink>();
  spdlog::logger logger{"regcache",
                        sink};  // constructed directly: not in the registry
  Logger() {
    logger.set_pattern("[regcache] %l: %v");
    logger.set_level(spdlog::level::trace);  // filtering is done by g_level
  }
};

Logger &L() {
  static Logger *l =
      new Logger;  // leaked on purpose: exit-time teardown still logs
  return *l;
}

std::atomic<bool> g_level_set_by_api{false};

}  // namespace

void Write(int level, std::string_view msg) {
  if (!Enabled(level) || level <= REGCACHE_LOG_OFF) return;
  L().logger.log(ToSpd(level), "{}", msg);
}

void SetHandler(regcache_log_func_t fn, void *arg) { L().sink->Set(fn, arg); }

int SetLevel(int level) {
  if (level < REGCACHE_LOG_OFF || level > REGCACHE_LOG_TRACE) return -EINVAL;
  g_level_set_by_api.store(true, std::memory_order_relaxed);
  g_level.store(level, std::memory_order_relaxed);
  return 0;
}

int InitFromTunables() {
  if (g_level_set_by_api.load(std::memory_order_relaxed)) return 0;
  int idx = 0;
  int rc = tunables::GetEnum("LOG_LEVEL", &idx);
  if (rc == 0)
    g_level.store(idx,
                  std::memory_order_relaxed);  // choices are in level order
  return rc;
}

}  // namespace regcache::log

/* SPDX-License-Identifier: BSD-3-Clause */
// tests/common/log_capture.h - a log handler for regcache_set_log_handler()
// that keeps every line it is given, for tests that check what was logged.
//
//   LogCapture c;
//   regcache_set_log_handler(LogCapture::Handler, &c);
//   ...; c.lines[i] is {level, message}
//
// Not thread-safe: a test that logs from several threads counts instead.
#ifndef REGCACHE_TESTS_COMMON_LOG_CAPTURE_H_
#define REGCACHE_TESTS_COMMON_LOG_CAPTURE_H_

#include <string>
#include <utility>
#include <vector>

namespace regcache::testing {

struct LogCapture {
  std::vector<std::pair<int, std::string>> lines;

  static void Handler(void *arg, int level, const char *msg) {
    static_cast<LogCapture *>(arg)->lines.emplace_back(level, msg);
  }
};

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_COMMON_LOG_CAPTURE_H_

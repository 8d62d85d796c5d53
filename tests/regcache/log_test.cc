// SPDX-License-Identifier: BSD-3-Clause
// Tests of the private logger (regcache/log.h) and of the unknown-variable
// check (regcache/environment.h): line format (time, host, pid, thread),
// REGCACHE_LOG_FILE with %h/%p, the hook path that neither allocates nor calls
// the host's handler (with the ordinary path as negative control of the
// allocation counter), and the warning for a misspelled REGCACHE_* variable.
#include "regcache/log.h"

#include <gtest/gtest.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <new>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "regcache/config_print.h"
#include "regcache/environment.h"
#include "regcache/tunables.h"
#include "tests/common/log_capture.h"

// Counts operator new calls on threads that asked for it (spdlog's buffers and
// std::string allocate through it). Not under TSan: its runtime defines operator
// new itself (a second definition does not link); the release and ASan builds
// count.
namespace {
thread_local bool t_counting = false;
std::atomic<long> g_news{0};
}  // namespace
#ifndef REGCACHE_SANITIZE_THREAD
#define REGCACHE_LOG_TEST_COUNTS_NEW 1
// The replacement pair uses malloc/free on purpose; g++ sees free() of a new'd
// pointer where it inlines them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void *operator new(std::size_t n) {
  if (t_counting) g_news.fetch_add(1, std::memory_order_relaxed);
  if (void *p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete(void *p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop
#endif

namespace regcache {
namespace {

using Captured = testing::LogCapture;
constexpr auto Capture = testing::LogCapture::Handler;

std::string Host() {
  char h[256] = {};
  gethostname(h, sizeof(h) - 1);
  return h;
}

// "[<sec>.<usec>] [<host>:<pid>:<tid>] regcache <level>: <msg>\n" for this thread.
std::regex LineRegex(const std::string &level, const std::string &msg) {
  std::string host = std::regex_replace(
      Host(), std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)");
  return std::regex(R"(\[[0-9]{10}\.[0-9]{6}\] \[)" + host + ":" +
                    std::to_string(getpid()) + ":" +
                    std::to_string(syscall(SYS_gettid)) + R"(\] regcache )" +
                    level + ": " + msg + "\n");
}

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tunables::ClearOverridesForTesting();
    ASSERT_EQ(regcache_set_log_level(REGCACHE_LOG_WARN), 0);
  }
  void TearDown() override {
    regcache_set_log_handler(nullptr, nullptr);
    tunables::ClearOverridesForTesting();
  }
};

TEST_F(LogTest, LineCarriesTimeHostPidThread) {
  ::testing::internal::CaptureStderr();
  log::Write(REGCACHE_LOG_WARN, "hello from the ordinary path");
  log::WriteFromHook(REGCACHE_LOG_ERROR, "hello from a hook");
  log::Write(REGCACHE_LOG_INFO, "filtered out");
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(std::regex_search(
      err, LineRegex("warning", "hello from the ordinary path")))
      << err;
  EXPECT_TRUE(std::regex_search(err, LineRegex("error", "hello from a hook")))
      << err;
  EXPECT_EQ(err.find("filtered out"), std::string::npos);
}

TEST_F(LogTest, FormatPrefixTruncatesAndTerminates) {
  char small[8];
  size_t n = log::FormatPrefix(small, sizeof(small), REGCACHE_LOG_WARN);
  EXPECT_EQ(n, sizeof(small) - 1);
  EXPECT_EQ(small[n], '\0');
}

TEST(LogPath, ExpandsHostPidAndPercent) {
  EXPECT_EQ(log::ExpandPath("/tmp/rc-%h-%p.log", "node7", 4242),
            "/tmp/rc-node7-4242.log");
  EXPECT_EQ(log::ExpandPath("100%%-%x-%", "h", 1), "100%-%x-%");
  EXPECT_EQ(log::ExpandPath("", "h", 1), "");
}

// REGCACHE_LOG_FILE is opened once per process: a child process sets it and logs.
TEST(LogFile, LinesGoToTheExpandedFile) {
  char dir[] = "/tmp/regcache-logtest-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string pattern = std::string(dir) + "/rc-%h-%p.log";
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(20);  // never hang the suite
    setenv("REGCACHE_LOG_FILE", pattern.c_str(), 1);
    regcache_set_log_level(REGCACHE_LOG_WARN);
    log::InitFromTunables();
    log::Write(REGCACHE_LOG_WARN, "to the file");
    log::WriteFromHook(REGCACHE_LOG_ERROR, "hook line to the file");
    _exit(0);
  }
  int st = 0;
  ASSERT_EQ(waitpid(child, &st, 0), child);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  std::string path =
      std::string(dir) + "/rc-" + Host() + "-" + std::to_string(child) + ".log";
  std::ifstream f(path);
  ASSERT_TRUE(f.good()) << "no " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  EXPECT_NE(text.find("regcache warning: to the file\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("regcache error: hook line to the file\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(":" + std::to_string(child) + ":"), std::string::npos)
      << text;
  std::remove(path.c_str());
  rmdir(dir);
}

// The hook path allocates nothing, to stderr and with a handler (deferred). The
// ordinary path with a handler and a long message allocates: the negative control
// that shows the counter sees spdlog's and std::string's allocations.
TEST_F(LogTest, HookPathAllocatesNothingAndDefersTheHandler) {
#ifndef REGCACHE_LOG_TEST_COUNTS_NEW
  GTEST_SKIP()
      << "TSan defines operator new: no allocation counter in this build";
#endif
  const std::string long_msg(200, 'x');
  Captured captured;
  regcache_set_log_handler(Capture, &captured);

  g_news = 0;
  t_counting = true;
  log::Write(REGCACHE_LOG_WARN, long_msg);
  t_counting = false;
  EXPECT_GT(g_news.load(), 0)
      << "negative control: the ordinary path allocates";
  ASSERT_EQ(captured.lines.size(), 1u);

  g_news = 0;
  t_counting = true;
  log::WriteFromHook(REGCACHE_LOG_WARN, "deferred from a hook");
  t_counting = false;
  EXPECT_EQ(g_news.load(), 0);
  EXPECT_EQ(captured.lines.size(), 1u)
      << "the handler must not run inside a hook";

  log::Write(REGCACHE_LOG_WARN,
             "next ordinary line");  // delivers the deferred one first
  ASSERT_EQ(captured.lines.size(), 3u);
  EXPECT_EQ(captured.lines[1].second, "deferred from a hook");
  EXPECT_EQ(captured.lines[2].second, "next ordinary line");
  regcache_set_log_handler(nullptr, nullptr);

  ::testing::internal::CaptureStderr();
  g_news = 0;
  t_counting = true;
  log::WriteFromHook(REGCACHE_LOG_WARN, "to stderr from a hook");
  t_counting = false;
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(g_news.load(), 0);
  EXPECT_NE(err.find("to stderr from a hook"), std::string::npos);
}

// Write() inside a notifier range (what a memory hook is) takes the hook path.
TEST_F(LogTest, WriteInsideARangeTakesTheHookPath) {
#ifndef REGCACHE_LOG_TEST_COUNTS_NEW
  GTEST_SKIP()
      << "TSan defines operator new: no allocation counter in this build";
#endif
  static char page[4096] __attribute__((aligned(4096)));
  Captured captured;
  regcache_set_log_handler(Capture, &captured);
  const std::string long_msg(200, 'y');
  ASSERT_EQ(regcache_notify_unmap_start(page, sizeof(page)), 0);
  g_news = 0;
  t_counting = true;
  log::Write(REGCACHE_LOG_WARN, long_msg);
  t_counting = false;
  ASSERT_EQ(regcache_notify_unmap_end(page, sizeof(page)), 0);
  EXPECT_EQ(g_news.load(), 0);
  EXPECT_TRUE(captured.lines.empty());
  log::Write(REGCACHE_LOG_WARN, "after the range");
  ASSERT_EQ(captured.lines.size(), 2u);
  EXPECT_EQ(captured.lines[0].second, long_msg);
}

TEST_F(LogTest, UnknownVariableIsWarnedWithASuggestion) {
  char known[] = "REGCACHE_MAX_REGIONS=5";
  char typo[] = "REGCACHE_MAX_REGION=5";
  char other[] = "PATH=/bin";
  char *envp[] = {known, typo, other, nullptr};
  std::vector<std::string> unknown = environment::UnknownVariables(envp);
  ASSERT_EQ(unknown.size(), 1u);
  EXPECT_EQ(unknown[0], "REGCACHE_MAX_REGION");
  EXPECT_EQ(environment::Suggest("REGCACHE_MAX_REGION"),
            "REGCACHE_MAX_REGIONS");
  EXPECT_EQ(environment::Suggest("REGCACHE_COMPLETELY_DIFFERENT"), "");

  Captured captured;
  regcache_set_log_handler(Capture, &captured);
  setenv("REGCACHE_MAX_REGION", "5", 1);
  EXPECT_GE(environment::WarnUnknownVariables(), 1);
  unsetenv("REGCACHE_MAX_REGION");
  bool seen = false;
  for (const auto &[level, text] : captured.lines) {
    if (text.find("unknown environment variable REGCACHE_MAX_REGION=5") !=
        std::string::npos) {
      EXPECT_EQ(level, REGCACHE_LOG_WARN);
      EXPECT_NE(text.find("did you mean REGCACHE_MAX_REGIONS"),
                std::string::npos)
          << text;
      seen = true;
    }
  }
  EXPECT_TRUE(seen);
}

}  // namespace
}  // namespace regcache

namespace regcache {
namespace {

// regcache_config_print with ORIGIN names all three origins; the 0.1 format (HELP
// alone) stays without them.
TEST(ConfigPrint, ShowsEveryOrigin) {
  tunables::ClearOverridesForTesting();
  setenv("REGCACHE_MAX_REGIONS", "7", 1);
  ASSERT_EQ(regcache_config_set("MERGE_MAX_BYTES", "1m"), 0);
  char *buf = nullptr;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ASSERT_EQ(regcache_config_print(f, REGCACHE_CONFIG_PRINT_ORIGIN), 0);
  std::fclose(f);
  std::string out(buf, len);
  std::free(buf);
  f = open_memstream(&buf, &len);
  ASSERT_EQ(regcache_config_print(f, 0), 0);
  std::fclose(f);
  std::string plain(buf, len);
  std::free(buf);
  unsetenv("REGCACHE_MAX_REGIONS");
  tunables::ClearOverridesForTesting();
  EXPECT_NE(out.find("REGCACHE_MAX_REGIONS=7  # environment\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("REGCACHE_MERGE_MAX_BYTES=1m  # regcache_config_set\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("REGCACHE_ACCESS_POLICY=all  # default\n"),
            std::string::npos)
      << out;
  EXPECT_NE(plain.find("REGCACHE_MAX_REGIONS=7\n"), std::string::npos) << plain;
  EXPECT_EQ(plain.find('#'), std::string::npos) << plain;
}

}  // namespace
}  // namespace regcache

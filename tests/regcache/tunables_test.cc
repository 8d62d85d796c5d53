// SPDX-License-Identifier: BSD-3-Clause
// Tests of the tunables table (regcache/tunables.h) and the private logger
// (regcache/log.h).
#include "regcache/tunables.h"

#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <stdlib.h>

#include <cerrno>
#include <string>
#include <vector>

#include "notifier/address_space.h"
#include "regcache/library.h"
#include "regcache/log.h"
#include "tests/common/log_capture.h"

namespace regcache {
namespace {

using Captured = testing::LogCapture;
constexpr auto Capture = testing::LogCapture::Handler;

class TunablesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // These tests own the environment (the TSan preset sets MONITOR=none).
    unsetenv("REGCACHE_MONITOR");
    tunables::ClearOverridesForTesting();
    regcache_set_log_handler(Capture, &captured_);
  }
  void TearDown() override {
    regcache_set_log_handler(nullptr, nullptr);
    unsetenv("REGCACHE_LOG_LEVEL");
    unsetenv("REGCACHE_MAX_BYTES");
    unsetenv("REGCACHE_MONITOR");
    tunables::ClearOverridesForTesting();
  }
  Captured captured_;
};

TEST_F(TunablesTest, EveryRowIsWellFormedAndItsDefaultValid) {
  size_t n = 0;
  const tunables::Spec *t = tunables::Table(&n);
  ASSERT_GE(n, 4u);
  for (size_t i = 0; i < n; ++i) {
    SCOPED_TRACE(t[i].name);
    EXPECT_NE(std::string(t[i].help), "");
    EXPECT_EQ(tunables::Find(t[i].name), &t[i]);
    EXPECT_EQ(tunables::Find((std::string("REGCACHE_") + t[i].name).c_str()),
              &t[i]);
    if (t[i].type == tunables::Type::kEnum) {
      ASSERT_NE(t[i].choices, nullptr);
    }
  }
  EXPECT_EQ(tunables::CheckAll(), 0);
  for (const char *name :
       {"LOG_LEVEL", "MONITOR", "MAX_REGIONS", "MAX_BYTES"}) {
    EXPECT_NE(tunables::Find(name), nullptr) << name;
  }
}

TEST_F(TunablesTest, ParsesSizesWithUnits) {
  size_t v = 0;
  EXPECT_EQ(tunables::ParseSize("4096", &v), 0);
  EXPECT_EQ(v, 4096u);
  EXPECT_EQ(tunables::ParseSize("64k", &v), 0);
  EXPECT_EQ(v, 64u << 10);
  EXPECT_EQ(tunables::ParseSize("256M", &v), 0);
  EXPECT_EQ(v, 256u << 20);
  EXPECT_EQ(tunables::ParseSize("2gb", &v), 0);
  EXPECT_EQ(v, size_t{2} << 30);
  EXPECT_EQ(tunables::ParseSize("inf", &v), 0);
  EXPECT_EQ(v, SIZE_MAX);
  for (const char *bad :
       {"", "-1", "k", "12q", "99999999999999999999", "1 k", "0x10"}) {
    EXPECT_EQ(tunables::ParseSize(bad, &v), -EINVAL) << bad;
  }
}

TEST_F(TunablesTest, ParsesBools) {
  bool b = false;
  for (const char *t : {"y", "YES", "1", "on", "true"}) {
    EXPECT_EQ(tunables::ParseBool(t, &b), 0);
    EXPECT_TRUE(b);
  }
  for (const char *f : {"n", "no", "0", "OFF", "false"}) {
    EXPECT_EQ(tunables::ParseBool(f, &b), 0);
    EXPECT_FALSE(b);
  }
  EXPECT_EQ(tunables::ParseBool("maybe", &b), -EINVAL);
}

TEST_F(TunablesTest, EnvironmentIsReadAndBadValuesNameTheVariable) {
  setenv("REGCACHE_MONITOR", "uffd", 1);
  int idx = -1;
  EXPECT_EQ(tunables::GetEnum("MONITOR", &idx), 0);
  EXPECT_EQ(idx, 2);  // auto|patch|uffd|none|ucm

  setenv("REGCACHE_LOG_LEVEL", "loud", 1);
  EXPECT_EQ(tunables::GetEnum("LOG_LEVEL", &idx), -EINVAL);
  EXPECT_EQ(regcache_config_check(), -EINVAL);
  ASSERT_FALSE(captured_.lines.empty());
  const std::string &msg = captured_.lines.front().second;
  EXPECT_NE(msg.find("REGCACHE_LOG_LEVEL"), std::string::npos) << msg;
  EXPECT_NE(msg.find("loud"), std::string::npos) << msg;
  EXPECT_NE(msg.find("off|error|warn|info|debug|trace"), std::string::npos)
      << msg;
  EXPECT_EQ(captured_.lines.front().first, REGCACHE_LOG_ERROR);
}

TEST_F(TunablesTest, SizeAutoAndInf) {
  size_t v = 7;
  bool is_auto = false;
  EXPECT_EQ(tunables::GetSize("MAX_BYTES", &v, &is_auto), 0);  // default: auto
  EXPECT_TRUE(is_auto);
  EXPECT_EQ(v, 7u);
  setenv("REGCACHE_MAX_BYTES", "1g", 1);
  EXPECT_EQ(tunables::GetSize("MAX_BYTES", &v, &is_auto), 0);
  EXPECT_FALSE(is_auto);
  EXPECT_EQ(v, size_t{1} << 30);
  EXPECT_EQ(regcache_config_set("MAX_REGIONS", "auto"),
            -EINVAL);  // no auto for this one
  EXPECT_EQ(regcache_config_set("MAX_REGIONS", "inf"), 0);
  EXPECT_EQ(tunables::GetSize("MAX_REGIONS", &v), 0);
  EXPECT_EQ(v, SIZE_MAX);
}

TEST_F(TunablesTest, ConfigSetOverridesEnvironmentAndValidates) {
  setenv("REGCACHE_MAX_BYTES", "1g", 1);
  EXPECT_EQ(regcache_config_set("REGCACHE_MAX_BYTES", "2m"), 0);
  size_t v = 0;
  EXPECT_EQ(tunables::GetSize("MAX_BYTES", &v), 0);
  EXPECT_EQ(v, 2u << 20);
  EXPECT_EQ(regcache_config_set("MAX_BYTES", "lots"), -EINVAL);
  EXPECT_EQ(tunables::GetSize("MAX_BYTES", &v), 0);  // unchanged by the bad set
  EXPECT_EQ(v, 2u << 20);
  EXPECT_EQ(regcache_config_set("NO_SUCH_THING", "1"), -ENOENT);
  EXPECT_EQ(regcache_config_set(nullptr, "1"), -EINVAL);
  char buf[4];
  EXPECT_EQ(regcache_config_get("MAX_BYTES", buf, sizeof(buf)), 2);
  EXPECT_STREQ(buf, "2m");
  EXPECT_EQ(regcache_config_get("MONITOR", buf, sizeof(buf)),
            4);  // "auto", truncated
  EXPECT_STREQ(buf, "aut");
  EXPECT_EQ(regcache_config_get("NOPE", buf, sizeof(buf)), -ENOENT);
}

TEST_F(TunablesTest, PrintListsEveryTunableWithHelp) {
  char *text = nullptr;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  ASSERT_EQ(regcache_config_print(f, REGCACHE_CONFIG_PRINT_HELP), 0);
  fclose(f);
  std::string out(text, len);
  free(text);
  size_t n = 0;
  const tunables::Spec *t = tunables::Table(&n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NE(out.find(std::string("REGCACHE_") + t[i].name + "="),
              std::string::npos);
    EXPECT_NE(out.find(t[i].help), std::string::npos);
  }
  EXPECT_EQ(regcache_config_print(nullptr, 0), -EINVAL);
}

TEST_F(TunablesTest, LogLevelFiltersAndHandlerReceives) {
  ASSERT_EQ(regcache_set_log_level(REGCACHE_LOG_WARN), 0);
  REGCACHE_LOG(DEBUG, "hidden {}", 1);
  REGCACHE_LOG(WARN, "shown {}", 2);
  ASSERT_EQ(captured_.lines.size(), 1u);
  EXPECT_EQ(captured_.lines[0].first, REGCACHE_LOG_WARN);
  EXPECT_EQ(captured_.lines[0].second, "shown 2");
  EXPECT_EQ(regcache_set_log_level(42), -EINVAL);
  EXPECT_EQ(regcache_set_log_level(-1), -EINVAL);
}

// Item 7 of issue 12: under AT_SECURE (setuid/setgid, capabilities) the
// environment belongs to a less privileged caller; REGCACHE_* is ignored.
// The seam stands in for getauxval(AT_SECURE); tests/regcache/secure_env.sh
// runs a real setuid copy.
TEST_F(TunablesTest, EnvironmentIgnoredInSecureExecution) {
  setenv("REGCACHE_MONITOR", "none", 1);
  std::string v;
  ASSERT_EQ(tunables::GetString("MONITOR", &v), 0);
  EXPECT_EQ(v, "none");  // negative control: honoured when not secure
  tunables::SetSecureForTesting(1);
  ASSERT_EQ(tunables::GetString("MONITOR", &v), 0);
  EXPECT_EQ(v, "auto");
  int warns = 0;
  for (auto &l : captured_.lines)
    warns += l.first == REGCACHE_LOG_WARN &&
             l.second.find("REGCACHE_MONITOR is ignored") != std::string::npos;
  EXPECT_EQ(warns, 1);
  ASSERT_EQ(tunables::GetString("MONITOR", &v), 0);  // warned once only
  warns = 0;
  for (auto &l : captured_.lines)
    warns += l.second.find("REGCACHE_MONITOR is ignored") != std::string::npos;
  EXPECT_EQ(warns, 1);
  // The program itself may still configure.
  ASSERT_EQ(tunables::Set("MONITOR", "uffd"), 0);
  ASSERT_EQ(tunables::GetString("MONITOR", &v), 0);
  EXPECT_EQ(v, "uffd");
  tunables::SetSecureForTesting(-1);
}

TEST(StrerrorTest, NamesErrors) {
  EXPECT_STREQ(regcache_strerror(0), "success");
  EXPECT_NE(std::string(regcache_strerror(-EINVAL)).find("invalid"),
            std::string::npos);
  EXPECT_NE(regcache_strerror(-ENOMEM), nullptr);
  EXPECT_NE(regcache_strerror(5), nullptr);
  EXPECT_NE(regcache_strerror(-100000), nullptr);
  EXPECT_NE(regcache_strerror(-EHOSTDOWN), nullptr);
  unsigned a = 9, b = 9, c = 9;
  regcache_version(&a, &b, &c);
  EXPECT_EQ(a, unsigned{REGCACHE_VERSION_MAJOR});
  EXPECT_EQ(b, unsigned{REGCACHE_VERSION_MINOR});
  regcache_version(nullptr, nullptr, nullptr);
}

}  // namespace
}  // namespace regcache

namespace regcache {
namespace {

// MONITOR's choices and the notifier's sources are one list: every choice
// maps to the source of that name (a choice added to tunables_table.cc without
// a source, or a source renamed, fails here), and the library's lookup returns
// it.
TEST_F(TunablesTest, EveryMonitorChoiceIsANotifierSource) {
  const tunables::Spec *s = tunables::Find("MONITOR");
  ASSERT_NE(s, nullptr);
  std::string all = s->choices;
  size_t n = 0;
  for (size_t b = 0; b <= all.size(); ++n) {
    size_t e = all.find('|', b);
    if (e == std::string::npos) e = all.size();
    const std::string name = all.substr(b, e - b);
    SCOPED_TRACE(name);
    notifier::Source src;
    ASSERT_TRUE(notifier::SourceFromName(name.c_str(), &src));
    EXPECT_EQ(std::string(notifier::SourceName(src)), name);
    ASSERT_EQ(tunables::Set("MONITOR", name.c_str()), 0);
    notifier::Source got = notifier::Source::kAuto;
    ASSERT_EQ(MonitorSource(&got), 0);
    EXPECT_EQ(got, src);
    b = e + 1;
  }
  EXPECT_EQ(n, 5u);  // auto|patch|uffd|none|ucm
  notifier::Source src;
  EXPECT_FALSE(notifier::SourceFromName("mmu", &src));  // negative control
}

}  // namespace
}  // namespace regcache

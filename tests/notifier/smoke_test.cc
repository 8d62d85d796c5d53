#include <gtest/gtest.h>
#include "tests/notifier/test_util.h"
using namespace regcache::notifier;
using regcache::notifier::testing::Recorder;
TEST(Smoke, Basic) {
  ResetForTesting();
  Options o;
  o.source = Source::kNone;
  ASSERT_EQ(Configure(o), 0);
  Recorder w, iv;
  Subscription *sw = nullptr, *si = nullptr;
  ASSERT_EQ(Register(&Recorder::kOps, &w, 0, 0, &sw), 0);
  ASSERT_EQ(Register(&Recorder::kOps, &iv, 0x10000, 0x1000, &si), 0);
  uint64_t seq = ReadBegin(si);
  EXPECT_FALSE(ReadRetry(si, seq));
  NotifyUnmapped(0x20000, 0x1000);
  EXPECT_FALSE(ReadRetry(si, seq));
  EXPECT_EQ(w.starts, 1u);
  EXPECT_EQ(iv.starts, 0u);
  NotifyUnmapped(0x10800, 0x1000);
  EXPECT_TRUE(ReadRetry(si, seq));
  EXPECT_EQ(iv.starts, 1u);
  EXPECT_EQ(iv.ends, 1u);
  EXPECT_EQ(Unregister(si), 0);
  EXPECT_EQ(iv.releases, 1u);
  Teardown();
  EXPECT_EQ(w.releases, 1u);
  EXPECT_EQ(Unregister(sw), 0);
  EXPECT_EQ(w.releases, 1u);
  EXPECT_EQ(w.errors + iv.errors, 0u);
  Subscription *x;
  EXPECT_EQ(Register(&Recorder::kOps, &w, 0, 0, &x), -ESHUTDOWN);
  ResetForTesting();
}

// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/explicit_bracket_test.cc - regcache_notify_unmap_start/end:
// the explicit source's bracket. Between start and end no other thread can
// begin a registration of the range (read_begin waits), so it cannot pin the
// old pages between the notification and the change; misuse is an error, never
// an abort.
#include <gtest/gtest.h>
#include <regcache/notifier.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

#include "notifier/address_space.h"
#include "tests/notifier/explicit_source_fixture.h"
#include "tests/notifier/test_util.h"

namespace regcache::notifier {
namespace {

using namespace std::chrono_literals;
using testing::Recorder;

using ExplicitBracket = testing::ExplicitSourceTest;

TEST_F(ExplicitBracket, DeliversStartThenEndAndHoldsRegistrationsOff) {
  alignas(4096) static char buf[4 * 4096];
  Recorder whole, interval;
  whole.Watch(buf, sizeof(buf));
  Subscription *w = nullptr, *iv = nullptr;
  ASSERT_EQ(Register(&Recorder::kOps, &whole, 0, 0, &w), 0);
  ASSERT_EQ(Register(&Recorder::kOps, &interval,
                     reinterpret_cast<uintptr_t>(buf), sizeof(buf), &iv),
            0);

  ASSERT_EQ(regcache_notify_unmap_start(buf, sizeof(buf)), 0);
  EXPECT_EQ(whole.hits.load(), 1u);
  EXPECT_EQ(whole.open.load(), 1);
  EXPECT_TRUE(InRange());

  // Another thread's registration of the range must wait for the end.
  std::atomic<bool> began{false};
  uint64_t seq = 0;
  std::thread t([&] {
    seq = ReadBegin(iv);
    began = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(began.load()) << "read_begin returned while the range was open";
  ASSERT_EQ(regcache_notify_unmap_end(buf, sizeof(buf)), 0);
  t.join();
  EXPECT_TRUE(began.load());
  EXPECT_FALSE(ReadRetry(iv, seq));
  EXPECT_EQ(whole.open.load(), 0);
  EXPECT_EQ(whole.paired_hits.load(), 1u);
  EXPECT_FALSE(InRange());
  ASSERT_EQ(Unregister(iv), 0);
  ASSERT_EQ(Unregister(w), 0);
}

TEST_F(ExplicitBracket, MisuseIsAnErrorNotAnAbort) {
  alignas(4096) static char buf[2 * 4096];
  EXPECT_EQ(regcache_notify_unmap_end(buf, 4096), -EINVAL);  // no start
  EXPECT_EQ(regcache_notify_unmap_start(buf, 0), -EINVAL);
  EXPECT_EQ(regcache_notify_unmap_start(
                reinterpret_cast<void *>(UINTPTR_MAX - 10), 4096),
            -EINVAL);
  ASSERT_EQ(regcache_notify_unmap_start(buf, 4096), 0);
  EXPECT_EQ(regcache_notify_unmap_end(buf, 8192), -EINVAL);  // wrong range
  uint64_t seq;
  regcache_notifier_t *n = nullptr;
  EXPECT_EQ(regcache_notifier_read_begin(n, &seq), -EINVAL);
  ASSERT_EQ(regcache_notify_unmap_end(buf, 4096), 0);  // still pairs
  // Nesting is bounded; past the bound start fails and delivers nothing.
  int opened = 0;
  int rc = 0;
  while ((rc = regcache_notify_unmap_start(buf, 4096)) == 0) ++opened;
  EXPECT_EQ(rc, -EOVERFLOW);
  EXPECT_GE(opened, 4);
  for (int i = 0; i < opened; ++i)
    ASSERT_EQ(regcache_notify_unmap_end(buf, 4096), 0);
  EXPECT_FALSE(InRange());
}

}  // namespace
}  // namespace regcache::notifier

/* SPDX-License-Identifier: BSD-3-Clause */
// tests/notifier/explicit_source_fixture.h - the fixture of the notifier tests
// that drive events by hand: each test starts from a fresh address space with
// no automatic source (Source::kNone: events come only from the explicit
// calls) and leaves none behind.
#ifndef REGCACHE_TESTS_NOTIFIER_EXPLICIT_SOURCE_FIXTURE_H_
#define REGCACHE_TESTS_NOTIFIER_EXPLICIT_SOURCE_FIXTURE_H_

#include <gtest/gtest.h>

#include "notifier/address_space.h"

namespace regcache::notifier::testing {

class ExplicitSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ResetForTesting();
    Options o;
    o.source = Source::kNone;
    ASSERT_EQ(Configure(o), 0);
  }
  void TearDown() override { ResetForTesting(); }
};

}  // namespace regcache::notifier::testing

#endif  // REGCACHE_TESTS_NOTIFIER_EXPLICIT_SOURCE_FIXTURE_H_

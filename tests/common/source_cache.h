/* SPDX-License-Identifier: BSD-3-Clause */
// tests/common/source_cache.h - a cache on the event source a test run asks
// for (REGCACHE_MONITOR, as ctest sets it per variant), or a reason to skip:
// the source cannot be installed in this build (e.g. patch under TSan), or
// another one became active.
//
//   std::string skip = CreateOnRequestedSource(drv, &cache_);
//   if (!skip.empty()) GTEST_SKIP() << skip;
//   UnmapOnActiveSource(p, len);  // munmap, bracketed under the explicit one
#ifndef REGCACHE_TESTS_COMMON_SOURCE_CACHE_H_
#define REGCACHE_TESTS_COMMON_SOURCE_CACHE_H_

#include <gtest/gtest.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <string>

namespace regcache::testing {

// REGCACHE_MONITOR, or "auto" when unset.
inline std::string RequestedSource() {
  const char *m = getenv("REGCACHE_MONITOR");
  return m != nullptr ? m : "auto";
}

// Creates *cache on drv. "" when it runs on the requested source (any, for
// "auto"); else the reason to skip, with *cache null. A failure that no build
// excuses (auto or none could not create a cache) also fails the test.
inline std::string CreateOnRequestedSource(regcache_driver_t *drv,
                                           regcache_t **cache) {
  const std::string want = RequestedSource();
  const int rc = regcache_create(drv, nullptr, cache);
  if (rc != 0) {
    *cache = nullptr;
    if (want == "none" || want == "auto")
      ADD_FAILURE() << "regcache_create: " << regcache_strerror(rc);
    return "source " + want +
           " cannot be installed in this build (e.g. TSan): " +
           regcache_strerror(rc);
  }
  if (want != "auto" && want != regcache_notifier_source()) {
    const std::string active = regcache_notifier_source();
    regcache_destroy(*cache);
    *cache = nullptr;
    return "source " + want + " not active in this build (" + active + ")";
  }
  return "";
}

// True under the explicit source ("none"): the program reports its unmaps.
inline bool ExplicitSourceActive() {
  return std::string(regcache_notifier_source()) == "none";
}

// Unmaps like the program would: under the explicit source inside a
// regcache_notify_unmap_start/end bracket. munmap's result, or -1 if the
// bracket failed.
inline int UnmapOnActiveSource(void *p, size_t len) {
  if (!ExplicitSourceActive()) return munmap(p, len);
  if (regcache_notify_unmap_start(p, len) != 0) return -1;
  const int rc = munmap(p, len);
  if (regcache_notify_unmap_end(p, len) != 0) return -1;
  return rc;
}

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_COMMON_SOURCE_CACHE_H_

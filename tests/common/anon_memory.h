/* SPDX-License-Identifier: BSD-3-Clause */
// tests/common/anon_memory.h - fresh private anonymous memory for the stale
// tests: mapped read-write and written (every page present, so the stale
// oracle has frames to record).
#ifndef REGCACHE_TESTS_COMMON_ANON_MEMORY_H_
#define REGCACHE_TESTS_COMMON_ANON_MEMORY_H_

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstring>

namespace regcache::testing {

// len bytes of new private anonymous memory, every byte set to `fill`;
// nullptr if mmap failed (a test failure is recorded).
inline char *MapWritten(size_t len, int fill = 1) {
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  if (p == MAP_FAILED) return nullptr;
  std::memset(p, fill, len);
  return static_cast<char *>(p);
}

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_COMMON_ANON_MEMORY_H_

// SPDX-License-Identifier: BSD-3-Clause
// The directory of the running executable: the benchmarks start their UCX
// side (built next to them) from there.
#ifndef REGCACHE_TESTS_BENCH_SELF_DIR_H_
#define REGCACHE_TESTS_BENCH_SELF_DIR_H_

#include <unistd.h>

#include <string>

namespace regcache::bench {

// "." when /proc/self/exe cannot be read.
inline std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  std::string s(buf);
  return s.substr(0, s.find_last_of('/'));
}

}  // namespace regcache::bench

#endif  // REGCACHE_TESTS_BENCH_SELF_DIR_H_

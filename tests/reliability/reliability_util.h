/* SPDX-License-Identifier: BSD-3-Clause */
// tests/reliability/reliability_util.h - small helpers shared by the
// reliability tests (docs/reliability.md).
#ifndef REGCACHE_TESTS_RELIABILITY_RELIABILITY_UTIL_H_
#define REGCACHE_TESTS_RELIABILITY_RELIABILITY_UTIL_H_

#include <regcache/regcache.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "regcache/page.h"
#include "regcache/stats_fields.h"

namespace regcache::reliability {

inline size_t PageSize() { return page::Size(); }

// A double from the environment (e.g. REGCACHE_STRESS_SECONDS), else `def`.
inline double EnvDouble(const char *name, double def) {
  const char *v = std::getenv(name);
  if (v == nullptr || *v == '\0') return def;
  char *end = nullptr;
  double d = std::strtod(v, &end);
  return (end != v && d > 0) ? d : def;
}

// Small deterministic PRNG (xorshift64*): no shared state, no locks.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed ? seed : 0x9e3779b97f4a7c15ull) {}
  uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545f4914f6cdd1dull;
  }
  size_t Below(size_t n) { return n ? static_cast<size_t>(Next() % n) : 0; }
};

inline regcache_stats_t Stats(regcache_t *c) {
  regcache_stats_t s{};
  regcache_get_stats(c, &s);
  return s;
}

// Every field (regcache/stats_fields.h: one list for the library and tests).
inline bool SameStats(const regcache_stats_t &a, const regcache_stats_t &b) {
  bool same = true;
#define REGCACHE_SAME_FIELD(f) same = same && a.f == b.f;
  REGCACHE_STATS_FIELDS(REGCACHE_SAME_FIELD)
#undef REGCACHE_SAME_FIELD
  return same;
}

inline std::string StatsString(const regcache_stats_t &s) {
  std::string out;
#define REGCACHE_FIELD_STRING(f) \
  out += (out.empty() ? "" : " ") + std::string(#f "=") + std::to_string(s.f);
  REGCACHE_STATS_FIELDS(REGCACHE_FIELD_STRING)
#undef REGCACHE_FIELD_STRING
  return out;
}

}  // namespace regcache::reliability

#endif  // REGCACHE_TESTS_RELIABILITY_RELIABILITY_UTIL_H_

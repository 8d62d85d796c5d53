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

namespace regcache::reliability {

inline size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

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

inline bool SameStats(const regcache_stats_t &a, const regcache_stats_t &b) {
  return a.hits == b.hits && a.misses == b.misses && a.merges == b.merges &&
         a.evictions == b.evictions && a.invalidations == b.invalidations &&
         a.registrations == b.registrations &&
         a.deregistrations == b.deregistrations && a.regions == b.regions &&
         a.bytes == b.bytes && a.pending == b.pending &&
         a.retries == b.retries && a.failures == b.failures;
}

inline std::string StatsString(const regcache_stats_t &s) {
  return "hits=" + std::to_string(s.hits) +
         " misses=" + std::to_string(s.misses) +
         " merges=" + std::to_string(s.merges) +
         " evictions=" + std::to_string(s.evictions) +
         " invalidations=" + std::to_string(s.invalidations) +
         " registrations=" + std::to_string(s.registrations) +
         " deregistrations=" + std::to_string(s.deregistrations) +
         " regions=" + std::to_string(s.regions) +
         " bytes=" + std::to_string(s.bytes) +
         " pending=" + std::to_string(s.pending) +
         " retries=" + std::to_string(s.retries) +
         " failures=" + std::to_string(s.failures);
}

}  // namespace regcache::reliability

#endif  // REGCACHE_TESTS_RELIABILITY_RELIABILITY_UTIL_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/stats_fields.h - the one list of regcache_stats_t's fields.
//
// Everything that repeats the field list (the cache's counters, GetStats,
// regcache_print_stats, the REGCACHE_STATS=y line, the reliability tests'
// comparisons) expands these X-macros instead, so a new field is added here
// and in <regcache/regcache.h> only; the static_asserts below catch a field
// added to one and not the other.
#ifndef REGCACHE_REGCACHE_STATS_FIELDS_H_
#define REGCACHE_REGCACHE_STATS_FIELDS_H_

#include <regcache/regcache.h>

#include <cstddef>
#include <cstdint>

// Every field of regcache_stats_t, in declaration order, as COUNTER(f) (a
// cache keeps it as a plain relaxed counter) or COMPUTED(f) (computed when
// read: per-thread slots, list lengths).
#define REGCACHE_STATS_TABLE(COUNTER, COMPUTED) \
  COMPUTED(hits)                                \
  COUNTER(misses)                               \
  COUNTER(merges)                               \
  COUNTER(evictions)                            \
  COUNTER(invalidations)                        \
  COUNTER(registrations)                        \
  COUNTER(deregistrations)                      \
  COMPUTED(regions)                             \
  COUNTER(bytes)                                \
  COMPUTED(pending)                             \
  COUNTER(retries)                              \
  COUNTER(peak_bytes)                           \
  COUNTER(failures)

#define REGCACHE_STATS_SKIP(f)
// Every field.
#define REGCACHE_STATS_FIELDS(X) REGCACHE_STATS_TABLE(X, X)
// The fields a cache keeps as plain relaxed counters.
#define REGCACHE_STATS_COUNTERS(X) REGCACHE_STATS_TABLE(X, REGCACHE_STATS_SKIP)

namespace regcache::stats_fields {
#define REGCACHE_STATS_COUNT_ONE(f) +1
inline constexpr size_t kCount =
    0 REGCACHE_STATS_FIELDS(REGCACHE_STATS_COUNT_ONE);
#undef REGCACHE_STATS_COUNT_ONE
static_assert(sizeof(regcache_stats_t) == kCount * sizeof(uint64_t),
              "regcache_stats_t and REGCACHE_STATS_FIELDS list different "
              "fields");
// In declaration order (a reordered field would print under a wrong name).
namespace order {
enum : size_t {
#define REGCACHE_STATS_ENUM_ONE(f) kIndex##f,
  REGCACHE_STATS_FIELDS(REGCACHE_STATS_ENUM_ONE)
#undef REGCACHE_STATS_ENUM_ONE
};
}  // namespace order
#define REGCACHE_STATS_ASSERT_ONE(f)                                        \
  static_assert(                                                            \
      offsetof(regcache_stats_t, f) == order::kIndex##f * sizeof(uint64_t), \
      "regcache_stats_t field order differs: " #f);
REGCACHE_STATS_FIELDS(REGCACHE_STATS_ASSERT_ONE)
#undef REGCACHE_STATS_ASSERT_ONE
}  // namespace regcache::stats_fields

#endif  // REGCACHE_REGCACHE_STATS_FIELDS_H_

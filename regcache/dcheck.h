/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/dcheck.h - debug-build invariant checks of the cache's units.
//
// REGCACHE_DCHECK(cond, what): in debug builds (NDEBUG unset: the debug,
// asan and tsan presets) a false condition prints the unit's broken invariant
// and aborts; in release builds it compiles to nothing (the condition is not
// evaluated, but must still compile). Checks sit where they are cheap (the
// region word, lock ownership, the index after each change in small trees).
#ifndef REGCACHE_REGCACHE_DCHECK_H_
#define REGCACHE_REGCACHE_DCHECK_H_

#include <cstdio>
#include <cstdlib>

#ifndef NDEBUG
#define REGCACHE_DCHECK_IS_ON 1
#define REGCACHE_DCHECK(cond, what)                                           \
  do {                                                                        \
    if (!(cond)) [[unlikely]] {                                               \
      std::fprintf(stderr, "[regcache] invariant broken at %s:%d: %s (%s)\n", \
                   __FILE__, __LINE__, what, #cond);                          \
      std::abort();                                                           \
    }                                                                         \
  } while (0)
#else
#define REGCACHE_DCHECK_IS_ON 0
#define REGCACHE_DCHECK(cond, what)     \
  do {                                  \
    if (false) static_cast<void>(cond); \
  } while (0)
#endif

#endif  // REGCACHE_REGCACHE_DCHECK_H_

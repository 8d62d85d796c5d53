/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/page.h - page size and page alignment, the one copy every library
// unit (and white-box tests) use.
//
// Registrations, the index and invalidations work on whole pages: munmap and
// madvise act on pages, so a region sharing a page with an unmapped range is
// affected even if it shares no byte with it.
#ifndef REGCACHE_REGCACHE_PAGE_H_
#define REGCACHE_REGCACHE_PAGE_H_

#include <unistd.h>

#include <cstdint>

namespace regcache::page {

// The base page size (sysconf, read once; a power of two).
inline uintptr_t Size() {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  return page;
}

inline uintptr_t Down(uintptr_t a) { return a & ~(Size() - 1); }

// Saturates at the last page boundary instead of wrapping to 0.
inline uintptr_t Up(uintptr_t a) {
  if (a > UINTPTR_MAX - (Size() - 1)) return Down(UINTPTR_MAX);
  return Down(a + Size() - 1);
}

// The pages [Down(start), Up(end)) of a byte range, with an end that
// saturated at the last page boundary widened to UINTPTR_MAX (a range that
// reaches the top of the address space).
struct Span {
  uintptr_t start, end;
};
inline Span Cover(uintptr_t start, uintptr_t end) {
  Span s{Down(start), Up(end)};
  if (s.end == Down(UINTPTR_MAX)) s.end = UINTPTR_MAX;
  return s;
}

}  // namespace regcache::page

#endif  // REGCACHE_REGCACHE_PAGE_H_

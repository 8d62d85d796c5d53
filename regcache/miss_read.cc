// SPDX-License-Identifier: BSD-3-Clause
// The per-miss interval read (miss.h), and the writability probe and hint the
// miss pipeline asks before widening a registration's access.
#include <algorithm>
#include <cerrno>

#include "notifier/address_space.h"
#include "notifier/procmap.h"
#include "regcache/cache.h"
#include "regcache/miss.h"
#include "regcache/page.h"

namespace regcache::core {
int MissRead::Begin(uintptr_t start, uintptr_t end) {
  End();
  // May wait (bounded by the overlapping ranges in flight: each ends after
  // its callbacks).
  const int rc = notifier::ReadBeginInterval(start, end, &token_);
  if (rc) return rc;
  active_ = true;
  start_ = start;
  end_ = end;
  return 0;
}

bool MissRead::Changed() const {
  return active_ && notifier::ReadRetryInterval(start_, end_, token_);
}

void MissRead::End() {
  if (!active_) return;
  active_ = false;
  notifier::ReadEndInterval();
}

// ACCESS_POLICY=all: is every page of [start, end) in a writable mapping? 1
// yes ([*span_lo, *span_hi) is the run of writable VMAs that holds it), 0 no
// (read-only or a hole), -1 cannot tell (kernel without PROCMAP_QUERY, or
// many VMAs). Asking the kernel first (0.3-0.7 us, far below a registration)
// keeps the driver from logging an error for read-only memory we only tried
// to widen; the cache remembers the span so that later misses in it skip the
// ioctl (CacheCore::InWritableSpan).
int WritableMemory(uintptr_t start, uintptr_t end, uintptr_t *span_lo,
                   uintptr_t *span_hi) {
  namespace pm = notifier::procmap;
  if (pm::Init() != 0) return -1;
  uintptr_t cur = start;
  for (int i = 0; i < 8 && cur < end; ++i) {
    pm::Vma v;
    int rc = pm::Query(cur, /*covering_or_next=*/false, &v);
    if (rc == -ENOENT) return 0;
    if (rc != 0) return -1;
    if (!(v.flags & 2)) return 0;  // PROCMAP_QUERY_VMA_WRITABLE
    if (i == 0) *span_lo = v.start;
    cur = v.end;
  }
  if (cur < end) return -1;
  *span_hi = cur;
  return 1;
}

namespace {
// The bytes [lo, hi) of a packed hint (first page << bits | pages).
struct SpanBytes {
  uintptr_t lo, hi;
};
inline SpanBytes Unpack(uint64_t w, int pages_bits, int page_shift) {
  const uintptr_t lo = (w >> pages_bits) << page_shift;
  return {lo, lo + ((w & ((uint64_t{1} << pages_bits) - 1)) << page_shift)};
}
}  // namespace

bool CacheCore::InWritableSpan(uintptr_t start, uintptr_t end) const {
  const uint64_t w = wspan_.load(std::memory_order_relaxed);
  if (w == 0) return false;
  const SpanBytes s = Unpack(w, kSpanPagesBits, page_shift_);
  return s.lo <= start && end <= s.hi;
}

void CacheCore::RememberWritableSpan(uintptr_t lo, uintptr_t hi) {
  const uint64_t first = lo / page::Size();
  uint64_t pages = (hi - lo) / page::Size();
  // Too far up or too long to pack: keep what fits (still writable).
  if (first >= (uint64_t{1} << (64 - kSpanPagesBits)) || pages == 0) return;
  pages = std::min(pages, (uint64_t{1} << kSpanPagesBits) - 1);
  wspan_.store(first << kSpanPagesBits | pages, std::memory_order_relaxed);
}

void CacheCore::ForgetWritableSpanOver(uintptr_t start, uintptr_t end) {
  uint64_t w = wspan_.load(std::memory_order_relaxed);
  if (w == 0) return;
  const SpanBytes s = Unpack(w, kSpanPagesBits, page_shift_);
  if (start < s.hi && s.lo < end)
    wspan_.compare_exchange_strong(w, 0, std::memory_order_relaxed);
}

}  // namespace regcache::core

// SPDX-License-Identifier: BSD-3-Clause
// The per-miss interval subscription (miss.h) and the writability probe the
// miss pipeline asks before widening a registration's access.
#include <cerrno>

#include "notifier/address_space.h"
#include "notifier/procmap.h"
#include "regcache/miss.h"

namespace regcache::core {
namespace {

// The per-miss subscription's callbacks have nothing to do (miss.h).
void RangeStart(void *, const void *, size_t) {}
const regcache_notifier_ops_t kRangeOps = {RangeStart, nullptr, nullptr};

}  // namespace

int MissSubscription::Begin(uintptr_t start, size_t len) {
  End();
  int rc = notifier::Register(&kRangeOps, nullptr, start, len, &sub_);
  if (rc) {
    sub_ = nullptr;
    return rc;
  }
  seq_ = notifier::ReadBegin(sub_);
  return 0;
}

bool MissSubscription::Changed() const {
  return sub_ != nullptr && notifier::ReadRetry(sub_, seq_);
}

void MissSubscription::End() {
  if (sub_ != nullptr) notifier::Unregister(sub_);
  sub_ = nullptr;
}

// ACCESS_POLICY=all: is every page of [start, end) in a writable mapping? 1
// yes, 0 no (read-only or a hole), -1 cannot tell (kernel without
// PROCMAP_QUERY, or many VMAs). Asking the kernel first (0.3-0.7 us, far below
// a registration) keeps the driver from logging an error for read-only memory
// we only tried to widen.
int WritableMemory(uintptr_t start, uintptr_t end) {
  namespace pm = notifier::procmap;
  if (pm::Init() != 0) return -1;
  uintptr_t cur = start;
  for (int i = 0; i < 8 && cur < end; ++i) {
    pm::Vma v;
    int rc = pm::Query(cur, /*covering_or_next=*/false, &v);
    if (rc == -ENOENT) return 0;
    if (rc != 0) return -1;
    if (!(v.flags & 2)) return 0;  // PROCMAP_QUERY_VMA_WRITABLE
    cur = v.end;
  }
  return cur >= end ? 1 : -1;
}

}  // namespace regcache::core

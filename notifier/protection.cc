// SPDX-License-Identifier: BSD-3-Clause
// notifier/protection.cc - the hit-time protection check for the uffd source
// (protection.h).
#include "notifier/protection.h"

#include <cerrno>

#include "notifier/procmap.h"
#include "notifier/sources.h"

namespace regcache::notifier {

bool ProtectionCheckActive() {
  return ActiveSource() == Source::kUffd &&
         !(sources::g_uffd_test_off.load(std::memory_order_relaxed) &
           sources::kUffdTestNoProtectionCheck);
}

int RangeAllows(uintptr_t start, uintptr_t end, bool write) {
  // Init is idempotent (one load once done) and re-opens the fd in a fork
  // child, so the query describes this process's mm.
  if (procmap::Init() != 0) return -1;
  const uint64_t need = write ? procmap::kVmaWrite : procmap::kVmaRead;
  // Each step moves cur to the end of a VMA past it: at most one ioctl per
  // VMA in the range, and the loop ends.
  for (uintptr_t cur = start; cur < end;) {
    procmap::Vma v;
    const int rc = procmap::Query(cur, /*covering_or_next=*/false, &v);
    if (rc == -ENOENT) return 0;  // a hole: nothing there to access
    if (rc != 0) return -1;
    if (!(v.flags & need) || v.end <= cur) return 0;
    cur = v.end;
  }
  return 1;
}

}  // namespace regcache::notifier

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

namespace {
// 1: procmap::Init() succeeded (its fd stays open; a fork child re-opens it in
// procmap's atfork handler, so a query describes this process's mm). -1: the
// kernel has no PROCMAP_QUERY (-ENOTTY, -EINVAL: permanent). 0: not asked yet
// or a transient failure (e.g. -EMFILE): ask again. Without this a kernel
// without PROCMAP_QUERY would pay an open+ioctl+close per hit.
std::atomic<int> g_query_state{0};
}  // namespace

int RangeAllows(uintptr_t start, uintptr_t end, bool write) {
  const int state = g_query_state.load(std::memory_order_acquire);
  if (state < 0) return -1;
  if (state == 0) {
    const int rc = procmap::Init();
    if (rc == -ENOTTY || rc == -EINVAL) g_query_state.store(-1);
    if (rc != 0) return -1;
    g_query_state.store(1, std::memory_order_release);
  }
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

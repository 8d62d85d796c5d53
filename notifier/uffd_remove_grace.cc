// SPDX-License-Identifier: BSD-3-Clause
// notifier/uffd_remove_grace.cc - recent REMOVE events: each is remembered
// before it is dispatched, and for kRemoveGraceNs afterwards Watch refuses
// memory that overlaps it (uffd.cc, REMOVE IS BEFORE THE ZAP).
#include <cstdint>
#include <mutex>

#include "notifier/sources.h"
#include "notifier/uffd_internal.h"

namespace regcache::notifier::sources {
inline namespace uffd_impl {

namespace {

// How long after its dispatch a REMOVE keeps overlapping registrations
// uncached (see REMOVE IS BEFORE THE ZAP). The madvising thread zaps as soon
// as it runs after our read; the longest wait for a CPU measured for such a
// woken thread on the 2-vCPU VM under load average 10-14 was 8-32 ms (EXACT
// LOOKUPS, FourThreadsRecycle): 8x margin.
constexpr long kRemoveGraceNs = 250L * 1000 * 1000;
constexpr int kRecent = 32;
struct RecentRemove {
  uintptr_t lo = 0, hi = 0;  // empty when lo == hi
  long t_ns = 0;             // dispatch time (CLOCK_MONOTONIC)
};

}  // namespace

std::mutex g_recent_mu;

namespace {

RecentRemove g_recent[kRecent];  // guarded by g_recent_mu
// Where an entry still inside its grace goes when the table is full: the hull
// of every such entry, with the newest time (conservative: never forgets).
RecentRemove g_recent_hull;  // guarded by g_recent_mu

}  // namespace

void RememberRemove(uintptr_t lo, uintptr_t hi) {
  const long now = NowNs();
  std::lock_guard<std::mutex> g(g_recent_mu);
  RecentRemove *oldest = &g_recent[0];
  for (RecentRemove &r : g_recent) {
    if (r.lo == r.hi || now - r.t_ns > kRemoveGraceNs) {
      r = {lo, hi, now};
      return;
    }
    if (r.t_ns < oldest->t_ns) oldest = &r;
  }
  // Full of entries inside their grace: fold the oldest into the hull.
  RecentRemove &h = g_recent_hull;
  if (h.lo == h.hi || now - h.t_ns > kRemoveGraceNs) {
    h = *oldest;
  } else {
    h.lo = h.lo < oldest->lo ? h.lo : oldest->lo;
    h.hi = h.hi > oldest->hi ? h.hi : oldest->hi;
    h.t_ns = h.t_ns > oldest->t_ns ? h.t_ns : oldest->t_ns;
  }
  *oldest = {lo, hi, now};
}

// True if [lo, hi) overlaps a REMOVE dispatched less than kRemoveGraceNs ago.
bool OverlapsRecentRemove(uintptr_t lo, uintptr_t hi) {
  if (g_uffd_test_off.load(std::memory_order_relaxed) & kUffdTestNoRemoveGrace)
    return false;
  const long now = NowNs();
  std::lock_guard<std::mutex> g(g_recent_mu);
  auto hit = [&](const RecentRemove &r) {
    return r.lo < hi && lo < r.hi && now - r.t_ns <= kRemoveGraceNs;
  };
  if (hit(g_recent_hull)) return true;
  for (const RecentRemove &r : g_recent)
    if (hit(r)) return true;
  return false;
}

}  // namespace uffd_impl
}  // namespace regcache::notifier::sources

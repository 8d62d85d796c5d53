// SPDX-License-Identifier: BSD-3-Clause
// notifier/quiesce.cc - quiesce and resume, and the counts of ranges in
// flight per SRCU slot that they (and grace periods) read.
#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"
#include "notifier/range_window.h"

namespace regcache::notifier {

// Ranges in flight in SRCU slot i (table entries with that slot bit, plus the
// overflow counter). Not an atomic snapshot: see TryFlip.
uint64_t InflightInSlot(unsigned i) {
  uint64_t n = g_inflight[i].v.load(std::memory_order_seq_cst);
  for (std::atomic<uint64_t> &e : g_ranges) {
    const uint64_t w = e.load(std::memory_order_seq_cst);
    n += w != 0 && (w & 1) == i;
  }
  return n;
}

uint64_t InflightTotal() { return InflightInSlot(0) + InflightInSlot(1); }

// Quiesce holds off ranges of OTHER threads. The quiescing thread's own ranges
// (it munmaps or frees memory after quiescing) proceed and are delivered: it
// cannot be racing with itself, and holding them off would wait for its own
// resume. The wait below is bounded by the ranges in flight now (each ends
// after its callbacks) and those exempt from waiting (this thread is not
// inside one: -EDEADLK above).
int Quiesce() {
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return -EDEADLK;
  const uint64_t old = g_quiesce.fetch_add(1, std::memory_order_seq_cst);
  const auto epoch = static_cast<uint32_t>(old >> 32);
  if (!(t_state.quiesce_own > 0 && t_state.quiesce_epoch == epoch)) {
    t_state.quiesce_own = 0;
    t_state.quiesce_epoch = epoch;
  }
  ++t_state.quiesce_own;
  WaitUntil([] { return InflightTotal() == 0; });
  return 0;
}

int Resume() {
  uint64_t q = g_quiesce.load(std::memory_order_seq_cst);
  uint64_t nq;
  do {
    if ((q & kQuiesceCount) == 0) return -EINVAL;
    // The last resume starts a new epoch: quiesces counted in threads' own
    // counts (QuiescedBySelf) are all over, whoever resumed them.
    nq = (q & kQuiesceCount) == 1 ? ((q >> 32) + 1) << 32 : q - 1;
  } while (!g_quiesce.compare_exchange_weak(q, nq, std::memory_order_seq_cst));
  if (QuiescedBySelf(q)) --t_state.quiesce_own;
  WakeAll();
  return 0;
}

}  // namespace regcache::notifier

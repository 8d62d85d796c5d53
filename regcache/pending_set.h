/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/pending_set.h - invalidations that arrived while the cache's mutex
// was busy.
//
// INVARIANT: at most kMax ranges, pairwise neither overlapping nor adjacent
// (Add coalesces; when full it folds everything into one covering range:
// over-invalidating only costs hits, and the bound is what keeps munmap-heavy
// programs from growing a backlog). The attention bit given to Add is set
// whenever the set is not empty; FinishDrain clears it only when the set is
// empty, under the same spin lock, so it never clears the bit of a range it
// did not take.
// LOCK RULE: a spin lock held for a few instructions (no allocation, no call
// out): Add runs inside munmap callbacks and must never block on the cache's
// mutex. The cache's mutex is not needed for any call; the drainer holds it.
#ifndef REGCACHE_REGCACHE_PENDING_SET_H_
#define REGCACHE_REGCACHE_PENDING_SET_H_

#include <atomic>
#include <cstdint>

namespace regcache::core {

class PendingSet {
 public:
  static constexpr int kMax = 16;
  struct Range {
    uintptr_t start, end;
  };
  // Records [start, end) and sets `bit` in *attention.
  void Add(uintptr_t start, uintptr_t end, std::atomic<uint32_t> *attention,
           uint32_t bit);
  // Moves everything into out (kMax entries); returns the count.
  int Take(Range *out);
  // After the taken ranges were applied: clears `bit` unless ranges arrived
  // since.
  void FinishDrain(std::atomic<uint32_t> *attention, uint32_t bit);
  int Size();
  // Fork child: empties the set and releases its lock (its holder may have
  // been another thread, which does not exist in the child).
  void ResetAfterFork() {
    n_ = 0;
    SpinUnlock();
  }

 private:
  // Bounded: holders run a few instructions (no call out, no allocation).
  void SpinLock();
  void SpinUnlock() { lock_.clear(std::memory_order_release); }
  std::atomic_flag lock_ = ATOMIC_FLAG_INIT;
  Range r_[kMax];
  int n_ = 0;
};

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_PENDING_SET_H_

// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/pending_set.h"

#include <algorithm>

namespace regcache::core {

void PendingSet::SpinLock() {
  while (lock_.test_and_set(std::memory_order_acquire)) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

void PendingSet::Add(uintptr_t start, uintptr_t end,
                     std::atomic<uint32_t> *attention, uint32_t bit) {
  SpinLock();
  // Coalesce with every overlapping or adjacent range (repeat: the union may
  // now touch more). Allocation-free: this runs inside munmap.
  bool merged = true;
  while (merged) {
    merged = false;
    for (int i = 0; i < n_; ++i) {
      if (r_[i].start <= end && start <= r_[i].end) {
        start = std::min(start, r_[i].start);
        end = std::max(end, r_[i].end);
        r_[i] = r_[--n_];
        merged = true;
        break;
      }
    }
  }
  if (n_ == kMax) {
    // Full: fold everything into one covering range.
    for (int i = 0; i < n_; ++i) {
      start = std::min(start, r_[i].start);
      end = std::max(end, r_[i].end);
    }
    n_ = 0;
  }
  r_[n_++] = {start, end};
  attention->fetch_or(bit, std::memory_order_seq_cst);
  SpinUnlock();
}

int PendingSet::Take(Range *out) {
  SpinLock();
  int n = n_;
  std::copy(r_, r_ + n_, out);
  n_ = 0;
  SpinUnlock();
  return n;
}

void PendingSet::FinishDrain(std::atomic<uint32_t> *attention, uint32_t bit) {
  SpinLock();
  if (n_ == 0) attention->fetch_and(~bit, std::memory_order_release);
  SpinUnlock();
}

int PendingSet::Size() {
  SpinLock();
  int n = n_;
  SpinUnlock();
  return n;
}

}  // namespace regcache::core

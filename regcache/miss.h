/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/miss.h - pieces of the miss pipeline (miss.cc) that stand alone.
//
// A miss is: lookup-plan (under the cache's mutex: find a covering region,
// wait for a covering miss in flight, or plan the range and access and make
// room) -> register (outside the lock: subscribe, read the sequence, call the
// driver; the fallback ladder on failure) -> publish (under the mutex: the
// sequence check, then index it, or hand it out uncached, or retry).
#ifndef REGCACHE_REGCACHE_MISS_H_
#define REGCACHE_REGCACHE_MISS_H_

#include <cstddef>
#include <cstdint>

namespace regcache::core {

// The per-miss interval read on the planned range (notifier/address_space.h,
// ReadBeginInterval): validates the insert against the notifier's log of
// ranges that began since the token, instead of registering and unregistering
// an interval subscription per miss (issue 14: ~2 100 of ~5 300 instructions
// per miss). Sound because the cache's whole-space subscription exists before
// any miss, its start callback loads the filter bounds (seq_cst) after the
// range's seq_cst log increment, and the miss widens them with seq_cst stores
// under mu_ before Changed()'s seq_cst load of the log: either the callback
// sees the new region, or Changed() sees the range (docs/cache.md, "Ordering
// argument for the filter"; tests/notifier/interval_log.pml models the log,
// the filter and the miss, with -DLATE_WIDEN as the control that widens after
// the check).
// INVARIANT: a read is in flight between a successful Begin and End (or
// destruction), counted in once; Changed() is meaningful only then.
// LOCK RULE: Begin may wait for overlapping ranges in flight (their callbacks
// may take the cache's mutex): never under mu_. Changed() never waits (fine
// and required under mu_). End must run on the thread that called Begin
// (the notifier counts reads per thread).
class MissRead {
 public:
  MissRead() = default;
  ~MissRead() { End(); }
  MissRead(const MissRead &) = delete;
  MissRead &operator=(const MissRead &) = delete;

  // Begins the read of [start, end): 0, -EBUSY (the event source cannot
  // watch that memory: register it uncached), -EFAULT (uffd: part of it is
  // not mapped) or another negative errno.
  int Begin(uintptr_t start, uintptr_t end);
  // Whether a range overlapping the interval began since Begin.
  bool Changed() const;
  // Ends the read; idempotent.
  void End();

 private:
  bool active_ = false;
  uintptr_t start_ = 0, end_ = 0;
  uint64_t token_ = 0;
};

// ACCESS_POLICY=all: is every page of [start, end) in a writable mapping? 1
// yes (*span_lo, *span_hi: the writable VMAs around it), 0 no (read-only or a
// hole), -1 cannot tell (kernel without PROCMAP_QUERY, or many VMAs). One
// PROCMAP_QUERY ioctl per VMA.
int WritableMemory(uintptr_t start, uintptr_t end, uintptr_t *span_lo,
                   uintptr_t *span_hi);

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_MISS_H_

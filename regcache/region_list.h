/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/region_list.h - the intrusive lists a region can be on.
//
// RegionList: doubly linked through CachedRegion::prev/next, with a count (a
// cache's CLOCK list of indexed regions, its orphan list of regions that left
// the index while held). RegionBatch: singly linked through CachedRegion::next
// (regions built up under the cache's mutex and deregistered after it: dead
// regions, eviction victims).
// INVARIANT: a region is on at most one of them at a time (they share the
// links); size() is the number of regions linked.
// LOCK RULE: not thread-safe. A cache's lists are GUARDED_BY its mutex; a
// batch taken out of the cache belongs to the thread that took it. Nothing
// here allocates (it runs inside munmap callbacks).
#ifndef REGCACHE_REGCACHE_REGION_LIST_H_
#define REGCACHE_REGCACHE_REGION_LIST_H_

#include <cstddef>

#include "regcache/region.h"

namespace regcache::core {

class RegionList {
 public:
  CachedRegion *head() const { return head_; }  // oldest for PushBack users
  size_t size() const { return n_; }
  bool empty() const { return head_ == nullptr; }

  void PushBack(CachedRegion *r) {
    r->next = nullptr;
    r->prev = tail_;
    if (tail_) {
      tail_->next = r;
    } else {
      head_ = r;
    }
    tail_ = r;
    ++n_;
  }
  void PushFront(CachedRegion *r) {
    r->prev = nullptr;
    r->next = head_;
    if (head_) {
      head_->prev = r;
    } else {
      tail_ = r;
    }
    head_ = r;
    ++n_;
  }
  // REQUIRES: r is on this list.
  void Unlink(CachedRegion *r) {
    REGCACHE_DCHECK(n_ > 0 && (r->prev ? r->prev->next == r : head_ == r) &&
                        (r->next ? r->next->prev == r : tail_ == r),
                    "an unlinked region is on the list");
    if (r->prev) {
      r->prev->next = r->next;
    } else {
      head_ = r->next;
    }
    if (r->next) {
      r->next->prev = r->prev;
    } else {
      tail_ = r->prev;
    }
    r->prev = r->next = nullptr;
    --n_;
  }
  // Fork child / teardown: forget everything (regions are taken elsewhere).
  void Clear() { *this = RegionList(); }

 private:
  CachedRegion *head_ = nullptr;
  CachedRegion *tail_ = nullptr;
  size_t n_ = 0;
};

struct RegionBatch {
  CachedRegion *head = nullptr;
  size_t n = 0;
  void Push(CachedRegion *r) {
    r->next = head;
    head = r;
    ++n;
  }
  CachedRegion *Pop() {
    CachedRegion *r = head;
    if (r) {
      head = r->next;
      r->next = nullptr;
      --n;
    }
    return r;
  }
  // Moves everything out (the batch is left empty).
  RegionBatch Take() {
    RegionBatch b = *this;
    *this = RegionBatch();
    return b;
  }
};

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_REGION_LIST_H_

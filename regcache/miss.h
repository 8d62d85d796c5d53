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

namespace regcache::notifier {
class Subscription;
}  // namespace regcache::notifier

namespace regcache::core {

// The per-miss interval subscription on the planned range: it exists for its
// sequence number (and, with the uffd source, to get the interval watched);
// its callbacks do nothing.
// INVARIANT: subscribed between a successful Begin and End (or destruction);
// Changed() is meaningful only then.
// LOCK RULE: Begin and End call the notifier's Register / Unregister, which
// may wait for callbacks and re-enter the cache: never under the cache's
// mutex. Changed() is a sequence read, fine under it (and must run there:
// after the filter bounds were widened).
class MissSubscription {
 public:
  MissSubscription() = default;
  ~MissSubscription() { End(); }
  MissSubscription(const MissSubscription &) = delete;
  MissSubscription &operator=(const MissSubscription &) = delete;

  // Subscribes to [start, start + len) and reads its sequence: 0, -EBUSY (the
  // event source cannot watch that memory) or the notifier's error.
  int Begin(uintptr_t start, size_t len);
  // Whether the memory may have changed since Begin (ReadRetry).
  bool Changed() const;
  // Unsubscribes; idempotent.
  void End();

 private:
  notifier::Subscription *sub_ = nullptr;
  uint64_t seq_ = 0;
};

// ACCESS_POLICY=all: is every page of [start, end) in a writable mapping? 1
// yes, 0 no (read-only or a hole), -1 cannot tell (kernel without
// PROCMAP_QUERY, or many VMAs).
int WritableMemory(uintptr_t start, uintptr_t end);

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_MISS_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/interval_log.h - the range log behind ReadBeginInterval /
// ReadRetryInterval (address_space.h): its data, and LogRange, which a range
// that starts while an interval read is in flight (g_log_on != 0) calls
// (inline: it is on the munmap path). The reads are in interval_log.cc.
#ifndef REGCACHE_NOTIFIER_INTERVAL_LOG_H_
#define REGCACHE_NOTIFIER_INTERVAL_LOG_H_

#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"
#include "notifier/range_window.h"

namespace regcache::notifier {

#pragma GCC visibility push(hidden)

// RANGE LOG (ReadBeginInterval / ReadRetryInterval, address_space.h). Range
// number s (the value of g_log_next it took) owns g_range_log[s % size] for
// lap s / size: it CASes the entry's tag from an older value to kLogBusy |
// (s + 1), writes its span (EncodeRange, slot bit 0), then stores s + 1; it
// does all this after claiming its g_ranges entry and before any start
// callback. A writer that finds the tag busy or newer (a range of a later lap
// got there first: this one was preempted between its increment and its
// CAS) writes nothing. Invariant: while an entry's tag is s + 1 (not busy) its
// span is range s's, and no writer touches the span (every writer first moves
// the tag to busy, and tags only grow: no ABA). A reader checking [token, now)
// therefore trusts entry i only if it reads tag i + 1 before and after the
// span; anything else (not written yet, busy, overwritten by a later lap)
// counts as overlapping. tests/notifier/interval_log.pml models this; its
// -DNO_CAS control (unconditional stores, the first version of this code)
// fails: a writer of an older lap, preempted between its increment and its
// stores, overwrote a newer span. Lock-free, allocation-free; written only
// while g_log_on != 0 (a reader in flight), so the token's window is covered:
// the reader raises the count before its token (Dekker with BeginRange, which
// reads the count after its claim).
constexpr uint64_t kLogBusy = uint64_t{1} << 63;
struct alignas(16) LogEntry {
  std::atomic<uint64_t> tag{0};
  std::atomic<uint64_t> span{0};
};
// The next range number (a reader's token is a value of it).
extern std::atomic<uint64_t> g_log_next;
extern LogEntry g_range_log[kIntervalLogEntries];

// Logs the span of a range that is starting (RANGE LOG). The increment is
// seq_cst: it is the range's half of the Dekker pair with a reader's filter
// (a cache widens its bounds with seq_cst stores, then reads the log with a
// seq_cst load; its callback loads the bounds with seq_cst loads after this
// increment), and is ordered after the range's claim.
inline void LogRange(uintptr_t start, uintptr_t end) {
  const uint64_t s = g_log_next.fetch_add(1, std::memory_order_seq_cst);
  LogEntry &e = g_range_log[s % kIntervalLogEntries];
  uint64_t cur = e.tag.load(std::memory_order_relaxed);
  // One try: a busy or newer tag means another lap owns the entry (readers
  // of lap s then see a tag other than s + 1: conservative).
  if ((cur & kLogBusy) != 0 || cur >= s + 1 ||
      !e.tag.compare_exchange_strong(cur, kLogBusy | (s + 1),
                                     std::memory_order_acquire,
                                     std::memory_order_relaxed)) [[unlikely]]
    return;
  // The busy tag is visible before the span changes (seqlock: paired with
  // the reader's acquire fence between its span load and its second tag
  // load).
  std::atomic_thread_fence(std::memory_order_release);
  e.span.store(EncodeRange(start, end, 0), std::memory_order_relaxed);
  e.tag.store(s + 1, std::memory_order_release);
}

#pragma GCC visibility pop

}  // namespace regcache::notifier

#endif  // REGCACHE_NOTIFIER_INTERVAL_LOG_H_

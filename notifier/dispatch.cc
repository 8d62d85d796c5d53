// SPDX-License-Identifier: BSD-3-Clause
// notifier/dispatch.cc - a range's begin and end: entering the in-flight
// window (range_window.h; its slow paths are here), bumping the matching
// subscriptions' sequences and delivering their callbacks (the munmap path:
// no lock, no allocation), the explicit notify entry points, the uffd
// monitor's hold.
#include <cstdint>
#include <cstdlib>

#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"
#include "notifier/interval_log.h"
#include "notifier/range_window.h"

namespace regcache::notifier {

// The window's slow paths (range_window.h), here beside BeginRange: a call
// to a function of the same file lets the compiler see which registers it
// leaves alone (the munmap path then saves fewer: 4 instructions a range).
REGCACHE_COLD std::atomic<uint64_t> *PickHome() {
  const unsigned line =
      g_next_home.fetch_add(1, std::memory_order_relaxed) % kRangeLines;
  NoteLineUsed(line);
  t_state.home = &g_ranges[line * kRangesPerLine];
  return t_state.home;
}

// Slow part of Claim: the home line is full (nested ranges, or more than 8
// threads share it): any free entry, else the overflow counter.
REGCACHE_COLD unsigned ClaimElsewhere(uint64_t w, unsigned slot) {
  for (unsigned i = 0; i < kRangeEntries; ++i) {
    uint64_t cur = g_ranges[i].load(std::memory_order_relaxed);
    if (cur != 0) continue;
    NoteLineUsed(i / kRangesPerLine);  // before the claim (g_lines_used)
    if (g_ranges[i].compare_exchange_strong(cur, w, std::memory_order_seq_cst))
      return i;
  }
  g_inflight[slot].v.fetch_add(1, std::memory_order_seq_cst);
  return kOverflowToken + slot;
}

// EnterWindow's slow path: quiesced. Waits for resume, bounded by the
// quiescer's resume (the documented contract of regcache_notifier_quiesce).
REGCACHE_COLD unsigned EnterWindowQuiesced(unsigned token, uintptr_t start,
                                           uintptr_t end, bool may_wait) {
  for (;;) {
    const uint64_t q = g_quiesce.load(std::memory_order_seq_cst);
    if ((q & kQuiesceCount) == 0 || !may_wait || !MayWaitForResume(q)) {
      ++t_state.inflight;
      return token;
    }
    Unclaim(token);
    WakeAll();  // the quiescer may be waiting for this entry to clear
    WaitUntil([] {
      return (g_quiesce.load(std::memory_order_seq_cst) & kQuiesceCount) == 0 ||
             g_fork_unblock.load(std::memory_order_seq_cst) != 0;
    });
    const unsigned slot = g_idx.load(std::memory_order_seq_cst);
    token = Claim(start, end, slot);
  }
}

namespace {

using CallbackFn = void (*)(void *arg, const void *addr, size_t len);

REGCACHE_COLD void DeliverDied(Subscription *s) {
  ReleaseIfIdle(s);  // the subscription died while we ran: maybe we run release
  WakeAll();         // an Unregister may wait for running == 0
}

// Runs one callback of s, bracketed by running++/--. Callers skip a NULL
// callback without calling this: nothing runs, so there is nothing for
// Unregister to wait for, and the range does not pay two locked
// read-modify-writes on the subscription (an unrelated munmap with a cache's
// whole-space subscription, which has a start callback only, pays for one
// delivery, not two).
inline void Deliver(Subscription *s, CallbackFn fn, uintptr_t start,
                    uintptr_t end) {
  s->running.fetch_add(1, std::memory_order_seq_cst);
  if ((s->flags.load(std::memory_order_seq_cst) & kDead) == 0) [[likely]] {
    ++t_state.cb_depth;
    fn(s->arg, reinterpret_cast<const void *>(start), end - start);
    --t_state.cb_depth;
  }
  if (s->running.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      (s->flags.load(std::memory_order_seq_cst) & kDead) != 0) [[unlikely]]
    DeliverDied(s);
}

template <class Fn>
void ForEachMatching(const Frame *f, Fn fn) {
  for (Subscription *s = g_whole.load(std::memory_order_acquire); s != nullptr;
       s = s->next.load(std::memory_order_acquire)) {
    if (s->visible_gen <= f->gen) fn(s);
  }
  for (Subscription *s = g_interval.load(std::memory_order_acquire);
       s != nullptr; s = s->next.load(std::memory_order_acquire)) {
    if (Matches(s, f)) fn(s);
  }
}

}  // namespace

namespace internal {

bool InCallback() { return t_state.cb_depth > 0; }

REGCACHE_COLD static void WarnNesting() {
  if (!g_nesting_logged.exchange(true, std::memory_order_relaxed)) {
    Logf(kLogError,
         "notifier: %d nested ranges on one thread: callbacks keep unmapping",
         t_state.inflight);
  }
}

REGCACHE_HOT void BeginRange(Frame *f, uintptr_t start, uintptr_t end) {
  f->start = start;
  f->end = end;
  f->active = start < end;
  if (!f->active) return;
  f->slot = EnterWindow(start, end, /*may_wait=*/true);
  if (t_state.inflight > kNestingWarn) [[unlikely]]
    WarnNesting();
  f->gen = g_gen.load(std::memory_order_seq_cst);
  // After the claim (ReadBeginInterval's table scan either sees the claim or
  // its token precedes this entry) and before any start callback (a reader
  // that checks under the lock the callback takes, or behind a filter the
  // callback reads with seq_cst loads after this seq_cst increment, sees this
  // entry or is seen by the callback).
  if (g_log_on.load(std::memory_order_seq_cst) != 0) [[unlikely]]
    LogRange(start, end);
  // Pass 1: sequence numbers first, so that every start callback (which may
  // take the subscriber's lock) runs after every overlapping interval's
  // sequence moved.
  ForEachMatching(f, [](Subscription *s) {
    s->seq_word.fetch_add(kStartInc + 1, std::memory_order_seq_cst);
  });
  ForEachMatching(f, [f](Subscription *s) {
    if (CallbackFn fn = s->ops.invalidate_range_start)
      Deliver(s, fn, f->start, f->end);
  });
}

REGCACHE_HOT void EndRange(Frame *f) {
  if (!f->active) return;
  ForEachMatching(f, [f](Subscription *s) {
    if (CallbackFn fn = s->ops.invalidate_range_end)
      Deliver(s, fn, f->start, f->end);
  });
  ForEachMatching(f, [](Subscription *s) {
    s->seq_word.fetch_sub(1, std::memory_order_seq_cst);
  });
  ExitWindow(f->slot);  // wakes waiters (ReadBegin, Quiesce) if any
}

// For the uffd source in a fork child: the intervals of the live
// subscriptions, to watch them again. Walked inside a window, like dispatch
// (no lock: fn may take the source's own lock and call into the kernel).
void ForEachLiveInterval(void (*fn)(void *ctx, uintptr_t start, uintptr_t end),
                         void *ctx) {
  unsigned slot = EnterWindow(0, UINTPTR_MAX, /*may_wait=*/false);
  for (Subscription *s = g_interval.load(std::memory_order_acquire);
       s != nullptr; s = s->next.load(std::memory_order_acquire)) {
    if ((s->flags.load(std::memory_order_acquire) & kDead) == 0)
      fn(ctx, s->start, s->end);
  }
  ExitWindow(slot);
}

// The uffd monitor's hold: counted in g_async_in_flight before read() releases
// the unmapping thread, and out only after the events it read are delivered
// (see AsyncEventsInFlight() in address_space.h).
//
// The hold covers the whole address space (the events are not read yet) and
// never waits for quiesce: the kernel keeps the unmapping thread inside munmap
// until the monitor reads its event, so a monitor held off by quiesce would
// hold that thread too, and if it is the quiescer's own munmap, forever.
// Under uffd, quiesce therefore waits for the holds in flight but does not
// hold the monitor's later deliveries off (regcache/notifier.h).
unsigned EnterHold() {
  unsigned slot = EnterWindow(0, UINTPTR_MAX, /*may_wait=*/false);
  g_async_in_flight.fetch_add(1, std::memory_order_seq_cst);
  return slot;
}
void ExitHold(unsigned slot) {
  g_async_in_flight.fetch_sub(1, std::memory_order_seq_cst);
  ExitWindow(slot);
}

}  // namespace internal

void InvalidateRangeStart(uintptr_t start, uintptr_t end) {
  if (t_state.nframes >= kMaxTlsFrames) {
    internal::Logf(
        internal::kLogError,
        "notifier: InvalidateRangeStart nested deeper than %d on one thread",
        kMaxTlsFrames);
    // The matching end could not be paired: refusing beats losing events.
    std::abort();
  }
  internal::BeginRange(&t_frames[t_state.nframes++], start, end);
}

void InvalidateRangeEnd(uintptr_t start, uintptr_t end) {
  if (t_state.nframes == 0) {
    internal::Logf(internal::kLogError,
                   "notifier: InvalidateRangeEnd without a start");
    return;
  }
  Frame *f = &t_frames[--t_state.nframes];
  if (f->start != start || f->end != end) {
    internal::Logf(internal::kLogError,
                   "notifier: InvalidateRangeEnd(%#lx, %#lx) does not match "
                   "start(%#lx, %#lx)",
                   static_cast<unsigned long>(start),
                   static_cast<unsigned long>(end),
                   static_cast<unsigned long>(f->start),
                   static_cast<unsigned long>(f->end));
  }
  internal::EndRange(f);
}

int NotifyUnmapped(uintptr_t start, size_t len) {
  if (start + len < start) return -EINVAL;
  if (len == 0) return 0;
  Frame f;
  internal::BeginRange(&f, start, start + len);
  internal::EndRange(&f);
  return 0;
}

int NotifyStart(uintptr_t start, size_t len) {
  if (len == 0 || start + len < start) return -EINVAL;
  if (t_state.nframes >= kMaxTlsFrames) return -EOVERFLOW;
  internal::BeginRange(&t_frames[t_state.nframes++], start, start + len);
  return 0;
}

int NotifyEnd(uintptr_t start, size_t len) {
  if (t_state.nframes == 0) return -EINVAL;
  Frame *f = &t_frames[t_state.nframes - 1];
  if (f->start != start || f->end != start + len) return -EINVAL;
  --t_state.nframes;
  internal::EndRange(f);
  return 0;
}

bool InCallback() { return t_state.cb_depth > 0; }

}  // namespace regcache::notifier

// SPDX-License-Identifier: BSD-3-Clause
// notifier/address_space_fork.cc - the address space across fork(): the
// pthread_atfork handlers that make the child's state the forking thread's
// alone.
#include <pthread.h>

#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"
#include "notifier/range_window.h"

namespace regcache::notifier {

// FORK. After fork() only the forking thread exists in the child, with a copy
// of everything: counts of ranges other threads had in flight, mutexes they
// held, waiter counts, callbacks they were running. None of it will ever be
// undone, so the child handler rebuilds the state the forking thread alone
// would have: its own ranges in flight (its g_ranges entries and overflow
// counts, its open frames), its own quiesce; nothing else. Subscriptions stay
// (the memory holding them was copied; caches the child inherits own them).
//
// fork() from inside a notifier callback is not supported
// (regcache/notifier.h): the child cannot know which callbacks that thread was
// in.
namespace {

// Prepare: take g_install_mu, then g_mu, so the child gets both unlocked and
// the state they guard consistent (not half-way through an install or a list
// update). Why waiting for them here cannot deadlock:
//  - g_mu holders never block while holding it: no allocation, no callback,
//    no wait (WaitUntil's predicates take it briefly and drop it).
//  - g_install_mu holders (Configure, the first Register's install,
//    VerifySources, ResetForTesting) may allocate, map, unmap and start a
//    thread, and run callbacks through the unmaps they make. None of that
//    waits for the forking thread: they take no other lock of ours while
//    holding it (g_mu only after dropping it); a range they begin never waits
//    for resume (MayWaitForResume: t_state.installing), so a quiescer that
//    forks does not wait for a range that waits for that quiescer; callbacks
//    must not block on locks held while unmapping (the cache's only
//    try-locks); glibc takes malloc's locks after the prepare handlers and
//    drops its atfork lock while running them, so malloc and pthread_atfork
//    inside an install proceed.
//  - The forking thread holds neither: no call of ours forks, and a callback
//    that forks is unsupported.
void AtforkPrepare() {
  if (internal::g_atfork_off_for_testing.load(std::memory_order_relaxed)) {
    t_state.fork_unblocked = false;
    t_state.fork_skipped = true;
    return;
  }
  t_state.fork_skipped = false;
  t_state.fork_unblocked =
      QuiescedBySelf(g_quiesce.load(std::memory_order_seq_cst));
  if (t_state.fork_unblocked) {
    g_fork_unblock.fetch_add(1, std::memory_order_seq_cst);
    WakeAll();
  }
  g_install_mu.lock();
  g_mu.lock();
}

void AtforkParent() {
  if (t_state.fork_skipped) return;
  g_mu.unlock();
  g_install_mu.unlock();
  if (t_state.fork_unblocked)
    g_fork_unblock.fetch_sub(1, std::memory_order_seq_cst);
  t_state.fork_unblocked = false;
}

void AtforkChild() {
  if (t_state.fork_skipped) return;
  // This thread locked both in prepare: release them (no other thread exists).
  g_mu.unlock();
  g_install_mu.unlock();
  // Ranges in flight: only this thread's open frames (explicit brackets and
  // InvalidateRangeStart; a fork from inside a hooked call or a callback is not
  // supported, so those are all its ranges). Their entries stay, with their
  // tokens; everything else goes.
  bool keep[kRangeEntries] = {};
  uint64_t over[2] = {0, 0};
  int open = 0;
  for (int k = 0; k < t_state.nframes; ++k) {
    const Frame &f = t_frames[k];
    if (!f.active) continue;
    ++open;
    if (f.slot < kOverflowToken) {
      keep[f.slot] = true;
    } else {
      ++over[f.slot - kOverflowToken];
    }
  }
  for (unsigned i = 0; i < kRangeEntries; ++i) {
    if (!keep[i]) g_ranges[i].store(0, std::memory_order_relaxed);
  }
  for (unsigned k = 0; k < 2; ++k)
    g_inflight[k].v.store(over[k], std::memory_order_relaxed);
  t_state.inflight = open;
  // Interval reads in flight: only this thread's (the others' never end here).
  g_log_on.store(t_state.interval_reads, std::memory_order_relaxed);
  // The uffd monitor's holds (the monitor thread is not in the child; the uffd
  // source's own atfork handler restarts it on next use).
  // kAsyncProbe (uffd installed) stays: the uffd source's own child handler
  // restarts the monitor on the next slow lookup.
  internal::g_async_in_flight.store(
      internal::g_async_in_flight.load(std::memory_order_relaxed) &
          internal::kAsyncProbe,
      std::memory_order_relaxed);
  g_waiters.store(0, std::memory_order_relaxed);  // nobody waits here
  g_fork_unblock.store(0, std::memory_order_relaxed);
  t_state.fork_unblocked = false;
  // Quiesce: only this thread's own (a quiescer elsewhere cannot resume here).
  const uint64_t q = g_quiesce.load(std::memory_order_relaxed);
  if (QuiescedBySelf(q)) {
    g_quiesce.store((q & ~kQuiesceCount) | t_state.quiesce_own,
                    std::memory_order_relaxed);
  } else {
    g_quiesce.store(((q >> 32) + 1) << 32, std::memory_order_relaxed);
    t_state.quiesce_own = 0;
  }
  // Subscriptions: no callback runs (this thread is in none); a release begun
  // on another thread is as finished as it will ever be; each interval's
  // active count is the number of this thread's open ranges that match it.
  for (std::atomic<Subscription *> *head : {&g_whole, &g_interval}) {
    for (Subscription *s = head->load(std::memory_order_relaxed); s != nullptr;
         s = s->next.load(std::memory_order_relaxed)) {
      s->running.store(0, std::memory_order_relaxed);
      uint32_t fl = s->flags.load(std::memory_order_relaxed);
      if ((fl & kReleaseClaimed) && !(fl & kReleaseDone))
        s->flags.store(fl | kReleaseDone, std::memory_order_relaxed);
      uint64_t active = 0;
      for (int k = 0; k < t_state.nframes; ++k)
        active += t_frames[k].active && Matches(s, &t_frames[k]);
      const uint64_t w = s->seq_word.load(std::memory_order_relaxed);
      s->seq_word.store((w & ~kActiveMask) | active, std::memory_order_relaxed);
    }
  }
  for (Subscription *z = g_zombies; z != nullptr; z = z->zombie_next) {
    uint32_t fl = z->flags.load(std::memory_order_relaxed);
    if ((fl & kReleaseClaimed) && !(fl & kReleaseDone))
      z->flags.store(fl | kReleaseDone, std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

// At load (or program start when linked statically): before any thread of ours
// can exist. Removed by glibc at dlclose with the rest of the library.
__attribute__((constructor)) void NotifierAtforkInit() {
  pthread_atfork(AtforkPrepare, AtforkParent, AtforkChild);
}

}  // namespace

}  // namespace regcache::notifier

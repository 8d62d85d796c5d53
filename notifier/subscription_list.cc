// SPDX-License-Identifier: BSD-3-Clause
// notifier/subscription_list.cc - the subscription lists: Register and
// Unregister (publication, the Dekker check against ranges in flight, grace
// periods and freeing), release, the per-subscription sequence (ReadBegin /
// ReadRetry), Teardown and ResetForTesting.
#include <cerrno>
#include <cstdint>
#include <new>

#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"
#include "notifier/policy.h"
#include "notifier/range_window.h"
#include "notifier/sources.h"

namespace regcache::notifier {

REGCACHE_COLD void ReleaseIfIdle(Subscription *s) {
  if (s->running.load(std::memory_order_seq_cst) != 0) return;
  uint32_t old = s->flags.fetch_or(kReleaseClaimed, std::memory_order_seq_cst);
  if (old & kReleaseClaimed) return;
  if (s->ops.release != nullptr) {
    ++t_state.cb_depth;
    s->ops.release(s->arg);
    --t_state.cb_depth;
  }
  s->flags.fetch_or(kReleaseDone, std::memory_order_seq_cst);
  WakeAll();
}

namespace {

// Is any range in flight that overlaps [start, end)? Ranges counted in
// g_inflight (no table entry) have no known range: they count as overlapping.
// seq_cst loads: this is the reading side of the Dekker pairs in Register and
// ReadBegin.
bool AnyOverlapInFlight(uintptr_t start, uintptr_t end) {
  if (g_inflight[0].v.load(std::memory_order_seq_cst) +
          g_inflight[1].v.load(std::memory_order_seq_cst) !=
      0)
    return true;
  for (std::atomic<uint64_t> &e : g_ranges) {
    const uint64_t w = e.load(std::memory_order_seq_cst);
    if (w != 0 && RangeOverlaps(w, start, end)) return true;
  }
  return false;
}

void Unlink(Subscription *s) {
  std::atomic<Subscription *> *link = s->whole ? &g_whole : &g_interval;
  for (Subscription *cur = link->load(std::memory_order_relaxed);
       cur != nullptr; cur = link->load(std::memory_order_relaxed)) {
    if (cur == s) {
      link->store(s->next.load(std::memory_order_relaxed),
                  std::memory_order_release);
      return;
    }
    link = &cur->next;
  }
}

void Retire(Subscription *s) {
  Unlink(s);
  s->retire_flips = g_flips;
  s->zombie_next = g_zombies;
  g_zombies = s;
}

// The inactive slot's count is summed over 64 entries and a counter, not read
// at one instant. That is enough: a range the sum misses claimed its entry
// after the scan reached it, i.e. after the unlink of every zombie this flip
// serves (Retire runs before CollectLocked flips), so its list walk (after its
// seq_cst claim) cannot reach those zombies.
bool TryFlip() {
  unsigned i = g_idx.load(std::memory_order_seq_cst);
  if (InflightInSlot(i ^ 1) != 0) return false;
  g_idx.store(i ^ 1, std::memory_order_seq_cst);
  ++g_flips;
  return true;
}

// Moves subscriptions unregistered from inside callbacks to the zombie list,
// then detaches every zombie whose grace period has passed. Returns them for
// freeing outside g_mu.
Subscription *CollectLocked() {
  Subscription *p = g_pending.exchange(nullptr, std::memory_order_acq_rel);
  while (p != nullptr) {
    Subscription *n = p->pending_next;
    Retire(p);
    p = n;
  }
  if (g_zombies == nullptr) return nullptr;
  TryFlip();
  TryFlip();
  Subscription *done = nullptr;
  Subscription **pp = &g_zombies;
  while (*pp != nullptr) {
    Subscription *z = *pp;
    if (g_flips >= z->retire_flips + 2 &&
        (z->flags.load(std::memory_order_seq_cst) & kReleaseDone) != 0) {
      *pp = z->zombie_next;
      z->zombie_next = done;
      done = z;
    } else {
      pp = &z->zombie_next;
    }
  }
  return done;
}

void FreeList(Subscription *s) {
  while (s != nullptr) {
    Subscription *n = s->zombie_next;
    delete s;
    s = n;
  }
}

}  // namespace

// Waits until every range in flight now has ended (two flips).
void Synchronize() {
  uint64_t target;
  {
    std::lock_guard<std::mutex> g(g_mu);
    target = g_flips + 2;
  }
  WaitUntil([target] {
    std::lock_guard<std::mutex> g(g_mu);
    while (g_flips < target && TryFlip()) {
    }
    return g_flips >= target;
  });
}

int Register(const regcache_notifier_ops_t *ops, void *arg, uintptr_t start,
             size_t range_len, Subscription **out) {
  if (ops == nullptr || out == nullptr) return -EINVAL;
  if (range_len != 0 && start + range_len < start) return -EINVAL;
  if (t_state.cb_depth > 0) return -EDEADLK;
  if (g_shutdown.load(std::memory_order_acquire)) return -ESHUTDOWN;
  {
    InstallLock g;
    int rc = InstallSourceLocked();
    if (rc != 0) return rc;
  }
  VerifySources();
  auto *s = new (std::nothrow) Subscription;
  if (s == nullptr) return -ENOMEM;
  s->ops = *ops;
  s->arg = arg;
  s->whole = range_len == 0;
  s->start = s->whole ? 0 : start;
  s->end = s->whole ? UINTPTR_MAX : start + range_len;
  const sources::SourceOps *active =
      sources::Find(g_active.load(std::memory_order_acquire));
  if (!s->whole && active != nullptr && active->watch != nullptr) {
    int rc = active->watch(s->start, s->end);
    if (rc != 0) {
      delete s;
      return rc;
    }
  }
  Subscription *done;
  {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_shutdown.load(std::memory_order_acquire)) {
      done = nullptr;
    } else {
      std::atomic<Subscription *> &head = s->whole ? g_whole : g_interval;
      s->visible_gen = g_gen.load(std::memory_order_relaxed) + 1;
      s->next.store(head.load(std::memory_order_relaxed),
                    std::memory_order_relaxed);
      head.store(s, std::memory_order_release);
      g_gen.store(s->visible_gen, std::memory_order_seq_cst);
      // Guarantee 2 / no stale publish, a Dekker pair with BeginRange (claim
      // its entry, then read g_gen; all seq_cst): either a range read the new
      // g_gen (it delivers start and end to s and moves s's sequence), or its
      // claim is ordered before this scan and we see its entry. Only ranges
      // that overlap s matter to s's sequence: the first ReadBegin waits for
      // those (kSyncOverlap), for all of them only if one of them has no
      // entry (kSyncAll).
      if (g_inflight[0].v.load(std::memory_order_seq_cst) +
              g_inflight[1].v.load(std::memory_order_seq_cst) !=
          0)
        s->need_sync.store(kSyncAll, std::memory_order_relaxed);
      else if (AnyOverlapInFlight(s->start, s->end))
        s->need_sync.store(kSyncOverlap, std::memory_order_relaxed);
      done = CollectLocked();
      *out = s;
      s = nullptr;
    }
  }
  FreeList(done);
  if (s != nullptr) {  // shut down meanwhile
    delete s;
    return -ESHUTDOWN;
  }
  return 0;
}

int Unregister(Subscription *s) {
  if (s == nullptr) return -EINVAL;
  uint32_t old =
      s->flags.fetch_or(kDead | kUnregistered, std::memory_order_seq_cst);
  if (old & kUnregistered)
    return -EINVAL;  // double unregister (a use-after-free anyway)
  if (t_state.cb_depth > 0) {
    // Inside a callback: no waiting (our own callback may be the one running).
    // The last dispatcher to leave a callback of s runs release; unlinking
    // waits for a writer.
    Subscription *head = g_pending.load(std::memory_order_relaxed);
    do {
      s->pending_next = head;
    } while (!g_pending.compare_exchange_weak(
        head, s, std::memory_order_release, std::memory_order_relaxed));
    ReleaseIfIdle(s);
    return 0;
  }
  WaitUntil([s] { return s->running.load(std::memory_order_seq_cst) == 0; });
  ReleaseIfIdle(s);
  WaitUntil([s] {
    return (s->flags.load(std::memory_order_seq_cst) & kReleaseDone) != 0;
  });
  Subscription *done;
  {
    std::lock_guard<std::mutex> g(g_mu);
    Retire(s);
    done = CollectLocked();
  }
  FreeList(done);
  return 0;
}

uint64_t ReadBegin(Subscription *s) {
  // Waits (bounded by the ranges concerned: each ends after its callbacks) for
  // the ranges in flight at registration that may not have seen s. Only those
  // that overlap s: an unrelated range held open for seconds (a bracket, a
  // slow callback) does not delay s (regcache/notifier.h, "waits only for
  // in-flight ranges that overlap it"). Ranges overlapping s that start later
  // saw s and are waited for through seq_word below.
  switch (s->need_sync.exchange(kSyncNone, std::memory_order_acq_rel)) {
    case kSyncAll:
      Synchronize();
      break;
    case kSyncOverlap:
      WaitUntil([s] { return !AnyOverlapInFlight(s->start, s->end); });
      break;
    default:
      break;
  }
  uint64_t w = s->seq_word.load(std::memory_order_seq_cst);
  if ((w & kActiveMask) != 0) {
    WaitUntil([s, &w] {
      w = s->seq_word.load(std::memory_order_seq_cst);
      return (w & kActiveMask) == 0;
    });
  }
  const sources::SourceOps *active =
      sources::Find(g_active.load(std::memory_order_acquire));
  if (!s->whole && active != nullptr && active->watch != nullptr &&
      active->watch(s->start, s->end) != 0) {
    // uffd only sees mappings it watches, and Register watched what was
    // mapped then: a mapping that has replaced it since (its unmap already
    // delivered, before w was read) would be registered unwatched. Watching
    // again after reading w closes that: a later change of what is watched
    // now moves the sequence. Cannot watch (hole, other uffd): fail ReadRetry
    // so that the caller's next Register reports it.
    s->seq_word.fetch_add(kStartInc, std::memory_order_seq_cst);
  }
  return w >> kActiveBits;
}

bool ReadRetry(const Subscription *s, uint64_t seq) {
  return (s->seq_word.load(std::memory_order_seq_cst) >> kActiveBits) != seq;
}

void Teardown() {
  {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_shutdown.exchange(true, std::memory_order_seq_cst)) return;
  }
  // Walk the lists inside a window, so no node we stand on can be freed under
  // us. Never waits: not for quiesce, not for callbacks running on other
  // threads (their dispatcher runs release when it leaves the callback).
  unsigned slot = EnterWindow(0, UINTPTR_MAX, /*may_wait=*/false);
  for (std::atomic<Subscription *> *head : {&g_whole, &g_interval}) {
    for (Subscription *s = head->load(std::memory_order_acquire); s != nullptr;
         s = s->next.load(std::memory_order_acquire)) {
      s->flags.fetch_or(kDead, std::memory_order_seq_cst);
      ReleaseIfIdle(s);
    }
  }
  ExitWindow(slot);
}

void ResetForTesting() {
  {
    InstallLock g;
    UninstallSourcesLocked();
    g_configured = Source::kAuto;
    policy::ResetForTesting();
  }
  // A thread that entered a hook before the uninstall above may still be
  // walking the lists (tests call this while other threads mmap and munmap):
  // wait out its grace period before freeing anything it could stand on.
  // Bounded: ranges end without waiting for us, no source starts new ones.
  Synchronize();
  Subscription *done;
  {
    std::lock_guard<std::mutex> g(g_mu);
    done = CollectLocked();
    // Every range that could see a zombie has ended: every zombie can go.
    while (g_zombies != nullptr) {
      Subscription *z = g_zombies;
      g_zombies = z->zombie_next;
      z->zombie_next = done;
      done = z;
    }
    g_shutdown.store(false, std::memory_order_seq_cst);
    // A new epoch: no thread's own quiesce count stays valid.
    g_quiesce.store(((g_quiesce.load(std::memory_order_relaxed) >> 32) + 1)
                        << 32,
                    std::memory_order_seq_cst);
  }
  FreeList(done);
  g_nesting_logged.store(false, std::memory_order_relaxed);
  g_log_on.store(0, std::memory_order_seq_cst);  // no reader in flight
  t_state.interval_reads = 0;
}

}  // namespace regcache::notifier

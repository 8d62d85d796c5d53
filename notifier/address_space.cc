// SPDX-License-Identifier: BSD-3-Clause
// notifier/address_space.cc - the address space, its subscribers, and dispatch.
//
// CONCURRENCY SCHEME (also in docs/notifier.md)
//
// Two kinds of code touch this state:
//   writers  Register, Unregister (outside a callback), ReadBegin's first-call
//   sync,
//            Configure, Teardown, ResetForTesting. They serialize on g_mu. They
//            never allocate or free memory while holding g_mu (a writer that
//            blocks in malloc while holding g_mu could close a cycle: malloc's
//            arena lock -> munmap hook -> callback -> the cache's lock -> a
//            cache thread in Register -> g_mu).
//   dispatch BeginRange/EndRange (munmap hooks, the uffd monitor, explicit
//   notify). It
//            takes no lock at all and allocates nothing: only atomics, and a
//            futex wait in exactly one case (the address space is quiesced and
//            this thread is not already inside a range or callback).
//
// Subscriptions sit on two intrusive singly-linked lists (whole-space,
// interval), pushed at the head by writers with a release store. Readers walk
// them with acquire loads and never block. A writer unlinks a node by pointing
// its predecessor past it; the node keeps its own next pointer, so a reader
// standing on it still reaches the rest of the list (RCU-style).
//
// In-flight ranges are counted in two counters (g_inflight[2], an SRCU-like
// pair): a range increments g_inflight[g_idx] when it starts and decrements the
// same slot when it ends. That counter does three jobs:
//   1. Grace periods for freeing unlinked subscriptions. A writer may "flip"
//   g_idx only when
//      the inactive slot is zero; a node unlinked at flip count f can be freed
//      once the flip count reaches f + 2 (every range that could have seen it
//      has ended). Flipping is polled, never waited for, by
//      Unregister/Register, so Unregister never waits for unrelated ranges (it
//      may be called with the cache's lock held, and an unrelated range's
//      callback may be waiting for that lock).
//   2. Guarantee 2 (register vs ranges in flight), a Dekker pair: BeginRange
//   increments its
//      slot and then reads g_gen; Register publishes the node, stores g_gen,
//      then reads both slots (all seq_cst). Either the range sees the new node
//      (and delivers start and end to it) or Register sees the range in flight
//      (and the node's first ReadBegin waits for a grace period: every range in
//      flight at registration ends first).
//   3. Quiesce: it raises g_quiesce and waits for both slots to reach zero;
//   BeginRange
//      re-checks g_quiesce after incrementing and backs off (decrement, wait
//      for resume).
//
// Start/end pairing. Each subscription gets visible_gen = ++g_gen when
// published; a range snapshots g_gen in its Frame at start and both its start
// and its end consider only subscriptions with visible_gen <= that snapshot. A
// subscription added mid-range therefore gets neither the start nor the end of
// that range (the kernel defers such inserts until the invalidation ends;
// filtering by generation has the same effect for pairing and does not starve
// registration under a continuous stream of unmaps). A subscription
// unregistered mid-range gets the start but not the end: no callback follows
// unregistration.
//
// Per-subscription sequence (mmu_interval_notifier). seq_word = (starts << 24)
// | active. A matching range adds (1 << 24) + 1 before ANY start callback runs
// (so a cache whose whole-space callback takes its lock sees interval sequence
// numbers already bumped) and subtracts 1 after its end callbacks. ReadBegin
// waits until active == 0 and returns starts; ReadRetry compares starts.
//
// Callbacks and release. Every callback invocation is bracketed by running++ /
// running-- on the subscription, with the dead flag checked after the
// increment. Unregister sets dead and then reads running (Dekker again), so
// once running is seen at zero no callback is running or can start. release
// runs on whichever thread first sees dead && running == 0 and wins the
// kReleaseClaimed bit: exactly once. Unregister from inside a callback does not
// wait; the last dispatcher leaving a callback of that subscription runs
// release, and the unlinking is deferred to the next writer (a lock-free
// pending stack).
//
// Waiting (ReadBegin, Unregister, Quiesce, a range held off by quiesce) uses
// one futex word (g_event) and a waiter count: a dispatcher only issues
// FUTEX_WAKE when someone waits.
#include "notifier/address_space.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "notifier/internal.h"
#include "notifier/sources.h"

// The munmap path (hooks, BeginRange/EndRange and what they call on every
// range) is marked hot: GCC and clang put it in .text.hot, which the linker
// lays out contiguously, hooks of patch.cc included. The kernel's munmap
// evicts most of L1i and the branch predictor's state, so after it every
// distinct code line the hook runs is a miss; rare paths (quiesce wait,
// release, logging) are out of line and cold so that they stay off those lines.
#define REGCACHE_HOT __attribute__((hot))
#define REGCACHE_COLD __attribute__((cold, noinline))

namespace regcache::notifier {

// Flag bits of Subscription::flags.
namespace {
constexpr uint32_t kDead = 1u;  // no callback may start any more
constexpr uint32_t kReleaseClaimed =
    2u;  // a thread has taken the job of calling release
constexpr uint32_t kReleaseDone = 4u;   // release has returned
constexpr uint32_t kUnregistered = 8u;  // the owner called Unregister
constexpr int kActiveBits = 24;
constexpr uint64_t kActiveMask = (uint64_t{1} << kActiveBits) - 1;
constexpr uint64_t kStartInc = uint64_t{1} << kActiveBits;
}  // namespace

class Subscription {
 public:
  // A copy of the caller's table, taken at Register: dispatch tests a callback
  // pointer before bracketing it with running++/-- (a subscription without an
  // end callback costs its ranges no end delivery), and the node, unlike the
  // caller's table, stays readable until its grace period has passed.
  regcache_notifier_ops_t ops = {nullptr, nullptr, nullptr};
  void *arg = nullptr;
  uintptr_t start = 0;
  uintptr_t end = 0;
  bool whole = false;
  uint64_t visible_gen = 0;  // written before publication, read-only afterwards
  std::atomic<Subscription *> next{nullptr};
  std::atomic<uint64_t> seq_word{0};
  std::atomic<uint32_t> running{0};
  std::atomic<uint32_t> flags{0};
  std::atomic<bool> need_sync{false};
  // Pending-removal stack (lock-free push by Unregister inside a callback).
  Subscription *pending_next = nullptr;
  bool on_pending = false;  // guarded by g_mu (set by the drainer)
  // Zombie list (guarded by g_mu): unlinked, waiting for a grace period.
  Subscription *zombie_next = nullptr;
  uint64_t retire_flips = 0;
};

namespace {

using internal::Frame;

struct alignas(64) PaddedCounter {
  std::atomic<uint64_t> v{0};
};

PaddedCounter g_inflight[2];
// What every range reads and (almost) never writes, in one cache line: after
// the kernel's munmap has run, each distinct line the hook touches is a likely
// L1 miss, so the read-mostly words share one (g_waiters only changes when a
// thread starts or stops waiting; the futex word, written by every wake-up,
// has its own line).
struct alignas(64) {
  std::atomic<unsigned> idx{0};
  std::atomic<uint32_t> quiesce{0};
  std::atomic<uint32_t> waiters{0};
  std::atomic<uint64_t> gen{0};
  std::atomic<Subscription *> whole{nullptr};
  std::atomic<Subscription *> interval{nullptr};
} g_hot;
constexpr std::atomic<unsigned> &g_idx = g_hot.idx;
constexpr std::atomic<uint64_t> &g_gen = g_hot.gen;
constexpr std::atomic<Subscription *> &g_whole = g_hot.whole;
constexpr std::atomic<Subscription *> &g_interval = g_hot.interval;
constexpr std::atomic<uint32_t> &g_quiesce = g_hot.quiesce;
constexpr std::atomic<uint32_t> &g_waiters = g_hot.waiters;
alignas(64) std::atomic<uint32_t> g_event{0};  // futex word
std::atomic<Subscription *> g_pending{nullptr};
std::atomic<bool> g_shutdown{false};
std::atomic<LogFn> g_log{nullptr};
std::atomic<Source> g_active{Source::kNone};
std::atomic<bool> g_nesting_logged{false};

std::mutex g_mu;                    // writers
uint64_t g_flips = 0;               // guarded by g_mu
Subscription *g_zombies = nullptr;  // guarded by g_mu

std::mutex g_install_mu;  // source installation (may allocate: never with g_mu)
Source g_configured = Source::kAuto;  // guarded by g_install_mu
bool g_installed = false;             // guarded by g_install_mu

// Per-thread state. initial-exec TLS: a dlopen()ed library's dynamic TLS would
// be allocated with malloc on first touch, i.e. possibly inside a munmap hook
// under malloc's lock.
struct ThreadState {
  int cb_depth;  // callbacks of ours on this thread's stack
  int inflight;  // ranges begun and not ended on this thread
  int nframes;   // frames used by InvalidateRangeStart/End
};
constexpr int kMaxTlsFrames = 8;
constexpr int kNestingWarn = 32;
__attribute__((tls_model("initial-exec"))) thread_local ThreadState t_state;
__attribute__((
    tls_model("initial-exec"))) thread_local Frame t_frames[kMaxTlsFrames];

// ---------------------------------------------------------------- futex
// waiting
void FutexWait(std::atomic<uint32_t> *word, uint32_t val) {
  // A timeout is only a safety net against a lost wake-up; every path that
  // changes a waited-for condition calls WakeAll().
  struct timespec ts = {0, 50 * 1000 * 1000};
  syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_PRIVATE,
          val, &ts, nullptr, 0);
}

REGCACHE_COLD void WakeAllSlow() {
  g_event.fetch_add(1, std::memory_order_seq_cst);
  syscall(SYS_futex, reinterpret_cast<uint32_t *>(&g_event), FUTEX_WAKE_PRIVATE,
          INT_MAX, nullptr, nullptr, 0);
}

inline void WakeAll() {
  if (g_waiters.load(std::memory_order_seq_cst) != 0) [[unlikely]]
    WakeAllSlow();
}

template <class Pred>
void WaitUntil(Pred done) {
  g_waiters.fetch_add(1, std::memory_order_seq_cst);
  for (;;) {
    uint32_t ev = g_event.load(std::memory_order_seq_cst);
    if (done()) break;
    FutexWait(&g_event, ev);
  }
  g_waiters.fetch_sub(1, std::memory_order_seq_cst);
}

uint64_t InflightTotal() {
  return g_inflight[0].v.load(std::memory_order_seq_cst) +
         g_inflight[1].v.load(std::memory_order_seq_cst);
}

// ---------------------------------------------------------------- callbacks
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

inline bool Matches(const Subscription *s, const Frame *f) {
  return s->visible_gen <= f->gen &&
         (s->whole || (s->start < f->end && f->start < s->end));
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

// ---------------------------------------------------------------- windows
// EnterWindow's slow path: quiesced, and this thread may wait.
REGCACHE_COLD unsigned EnterWindowQuiesced(unsigned i) {
  for (;;) {
    g_inflight[i].v.fetch_sub(1, std::memory_order_seq_cst);
    WakeAll();
    WaitUntil([] { return g_quiesce.load(std::memory_order_seq_cst) == 0; });
    i = g_idx.load(std::memory_order_seq_cst);
    g_inflight[i].v.fetch_add(1, std::memory_order_seq_cst);
    if (g_quiesce.load(std::memory_order_seq_cst) == 0) {
      ++t_state.inflight;
      return i;
    }
  }
}

// Enters the in-flight window: counted in g_inflight[slot]. Waits only when
// quiesced and the thread is not already inside a range or a callback (those
// must finish for quiesce to complete, so holding them off would deadlock).
inline unsigned EnterWindow(bool may_wait) {
  unsigned i = g_idx.load(std::memory_order_seq_cst);
  g_inflight[i].v.fetch_add(1, std::memory_order_seq_cst);
  if (!may_wait || t_state.inflight > 0 || t_state.cb_depth > 0 ||
      g_quiesce.load(std::memory_order_seq_cst) == 0) [[likely]] {
    ++t_state.inflight;
    return i;
  }
  return EnterWindowQuiesced(i);
}

inline void ExitWindow(unsigned slot) {
  --t_state.inflight;
  g_inflight[slot].v.fetch_sub(1, std::memory_order_seq_cst);
  WakeAll();
}

// ---------------------------------------------------------------- writer
// helpers (g_mu)
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

bool TryFlip() {
  unsigned i = g_idx.load(std::memory_order_seq_cst);
  if (g_inflight[i ^ 1].v.load(std::memory_order_seq_cst) != 0) return false;
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

// ---------------------------------------------------------------- sources
int InstallSourceLocked() {
  if (g_installed) return 0;
  Source want = g_configured;
  int rc = 0;
  Source got = Source::kNone;
  switch (want) {
    case Source::kNone:
      break;
    case Source::kPatch:
      rc = sources::PatchInstall();
      got = Source::kPatch;
      break;
    case Source::kUffd:
      rc = sources::UffdInstall();
      got = Source::kUffd;
      break;
    case Source::kAuto: {
      int prc = sources::PatchInstall();
      if (prc == 0) {
        got = Source::kPatch;
        internal::Logf(internal::kLogInfo,
                       "notifier: event source patch (libc entry points)");
        break;
      }
      int urc = sources::UffdInstall();
      if (urc == 0) {
        got = Source::kUffd;
        internal::Logf(internal::kLogInfo,
                       "notifier: event source uffd (patch unavailable: %s)",
                       strerror(-prc));
        break;
      }
      got = Source::kNone;
      internal::Logf(internal::kLogInfo,
                     "notifier: event source none, explicit notifications only "
                     "(patch: %s; "
                     "uffd: %s)",
                     strerror(-prc), strerror(-urc));
      break;
    }
  }
  if (rc != 0) {
    internal::Logf(internal::kLogError,
                   "notifier: cannot install event source %s: %s",
                   SourceName(want), strerror(-rc));
    return rc;
  }
  if (want == Source::kNone) {
    internal::Logf(internal::kLogInfo,
                   "notifier: event source none (explicit only)");
  } else if (want != Source::kAuto) {
    internal::Logf(internal::kLogInfo, "notifier: event source %s",
                   SourceName(got));
  }
  g_active.store(got, std::memory_order_release);
  g_installed = true;
  return 0;
}

void UninstallSourcesLocked() {
  if (!g_installed) return;
  switch (g_active.load(std::memory_order_acquire)) {
    case Source::kPatch:
      sources::PatchUninstall();
      break;
    case Source::kUffd:
      sources::UffdUninstall();
      break;
    default:
      break;
  }
  g_active.store(Source::kNone, std::memory_order_release);
  g_installed = false;
}

}  // namespace

// ---------------------------------------------------------------- internal API
namespace internal {

void Logf(int level, const char *fmt, ...) {
  LogFn fn = g_log.load(std::memory_order_acquire);
  if (fn == nullptr) return;
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  fn(level, buf);
}

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
  f->slot = EnterWindow(/*may_wait=*/true);
  if (t_state.inflight > kNestingWarn) [[unlikely]]
    WarnNesting();
  f->gen = g_gen.load(std::memory_order_seq_cst);
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

std::atomic<uint32_t> g_async_in_flight{0};
std::atomic<uint64_t *> g_patch_guard{nullptr};
uint64_t g_patch_guard_word = 0;

// The uffd monitor's hold: counted in g_async_in_flight before read() releases
// the unmapping thread, and out only after the events it read are delivered
// (see AsyncEventsInFlight() in address_space.h).
unsigned EnterHold() {
  unsigned slot = EnterWindow(/*may_wait=*/true);
  g_async_in_flight.fetch_add(1, std::memory_order_seq_cst);
  return slot;
}
void ExitHold(unsigned slot) {
  g_async_in_flight.fetch_sub(1, std::memory_order_seq_cst);
  ExitWindow(slot);
}

}  // namespace internal

// ---------------------------------------------------------------- public C++
// API
const char *SourceName(Source s) {
  switch (s) {
    case Source::kAuto:
      return "auto";
    case Source::kPatch:
      return "patch";
    case Source::kUffd:
      return "uffd";
    case Source::kNone:
      return "none";
  }
  return "none";
}

int Configure(const Options &opts) {
  if (opts.log != nullptr) g_log.store(opts.log, std::memory_order_release);
  std::lock_guard<std::mutex> g(g_install_mu);
  if (g_installed) {
    if (opts.source == g_configured ||
        opts.source == g_active.load(std::memory_order_acquire)) {
      return 0;
    }
    return -EBUSY;
  }
  g_configured = opts.source;
  return 0;
}

int Register(const regcache_notifier_ops_t *ops, void *arg, uintptr_t start,
             size_t range_len, Subscription **out) {
  if (ops == nullptr || out == nullptr) return -EINVAL;
  if (range_len != 0 && start + range_len < start) return -EINVAL;
  if (t_state.cb_depth > 0) return -EDEADLK;
  if (g_shutdown.load(std::memory_order_acquire)) return -ESHUTDOWN;
  {
    std::lock_guard<std::mutex> g(g_install_mu);
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
  if (!s->whole && g_active.load(std::memory_order_acquire) == Source::kUffd) {
    int rc = sources::UffdWatch(s->start, s->end);
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
      if (InflightTotal() != 0)
        s->need_sync.store(true, std::memory_order_relaxed);
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
  if (s->need_sync.exchange(false, std::memory_order_acq_rel)) Synchronize();
  uint64_t w = s->seq_word.load(std::memory_order_seq_cst);
  if ((w & kActiveMask) != 0) {
    WaitUntil([s, &w] {
      w = s->seq_word.load(std::memory_order_seq_cst);
      return (w & kActiveMask) == 0;
    });
  }
  return w >> kActiveBits;
}

bool ReadRetry(const Subscription *s, uint64_t seq) {
  return (s->seq_word.load(std::memory_order_seq_cst) >> kActiveBits) != seq;
}

void InvalidateRangeStart(uintptr_t start, uintptr_t end) {
  if (t_state.nframes >= kMaxTlsFrames) {
    internal::Logf(
        internal::kLogError,
        "notifier: InvalidateRangeStart nested deeper than %d on one thread",
        kMaxTlsFrames);
    std::abort();  // the matching end could not be paired: refusing beats
                   // losing events
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

bool InRange() { return t_state.cb_depth > 0 || t_state.inflight > 0; }

int Quiesce() {
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return -EDEADLK;
  g_quiesce.fetch_add(1, std::memory_order_seq_cst);
  WaitUntil([] { return InflightTotal() == 0; });
  return 0;
}

int Resume() {
  uint32_t q = g_quiesce.load(std::memory_order_seq_cst);
  do {
    if (q == 0) return -EINVAL;
  } while (
      !g_quiesce.compare_exchange_weak(q, q - 1, std::memory_order_seq_cst));
  WakeAll();
  return 0;
}

bool InCallback() { return t_state.cb_depth > 0; }

// Process exit: every subscriber gets release exactly once, from here (the
// shared library's destructor, or the executable's when linked statically).
// Runs after the atexit handlers and static destructors registered after this
// library was loaded, before patch.cc's priority-200 destructor restores libc's
// code. Never waits for ranges in flight on other threads.
__attribute__((destructor)) static void NotifierFini() { Teardown(); }

void VerifySources() {
  if (g_active.load(std::memory_order_acquire) != Source::kPatch) return;
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return;
  const char *which = nullptr;
  {
    std::lock_guard<std::mutex> g(g_install_mu);
    if (g_active.load(std::memory_order_acquire) != Source::kPatch ||
        sources::PatchIntact(&which))
      return;
    sources::PatchAbandon();
    int urc = sources::UffdInstall();
    Source now = urc == 0 ? Source::kUffd : Source::kNone;
    internal::Logf(
        internal::kLogError,
        "notifier: libc %s was overwritten by another patcher (UCX libucm? "
        "Open MPI? libfabric?): patch source blind; now %s%s; "
        "invalidating every registration (unmaps may have been "
        "missed)",
        which ? which : "?", SourceName(now),
        urc == 0 ? "" : " (explicit notifications only)");
    g_active.store(now, std::memory_order_release);
  }
  // Everything cached may have been unmapped unseen.
  Frame f;
  internal::BeginRange(&f, 0, UINTPTR_MAX);
  internal::EndRange(&f);
}

void SyncForLookup() {
  VerifySources();
  WaitAsyncEvents();
}

void WaitAsyncEvents() {
  // A monitor thread (inside its hold) or a callback would wait for itself.
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return;
  if (!AsyncEventsInFlight()) return;
  WaitUntil([] { return !AsyncEventsInFlight(); });
}

void Teardown() {
  {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_shutdown.exchange(true, std::memory_order_seq_cst)) return;
  }
  // Walk the lists inside a window, so no node we stand on can be freed under
  // us. Never waits: not for quiesce, not for callbacks running on other
  // threads (their dispatcher runs release when it leaves the callback).
  unsigned slot = EnterWindow(/*may_wait=*/false);
  for (std::atomic<Subscription *> *head : {&g_whole, &g_interval}) {
    for (Subscription *s = head->load(std::memory_order_acquire); s != nullptr;
         s = s->next.load(std::memory_order_acquire)) {
      s->flags.fetch_or(kDead, std::memory_order_seq_cst);
      ReleaseIfIdle(s);
    }
  }
  ExitWindow(slot);
}

Source ActiveSource() { return g_active.load(std::memory_order_acquire); }

void ResetForTesting() {
  {
    std::lock_guard<std::mutex> g(g_install_mu);
    UninstallSourcesLocked();
    g_configured = Source::kAuto;
  }
  Subscription *done;
  {
    std::lock_guard<std::mutex> g(g_mu);
    done = CollectLocked();
    // REQUIRES no range in flight: every zombie can go now.
    while (g_zombies != nullptr) {
      Subscription *z = g_zombies;
      g_zombies = z->zombie_next;
      z->zombie_next = done;
      done = z;
    }
    g_shutdown.store(false, std::memory_order_seq_cst);
    g_quiesce.store(0, std::memory_order_seq_cst);
  }
  FreeList(done);
  g_nesting_logged.store(false, std::memory_order_relaxed);
}

}  // namespace regcache::notifier

// SPDX-License-Identifier: BSD-3-Clause
// notifier/address_space.cc - the address space, its subscribers, and dispatch.
//
// CONCURRENCY SCHEME (also in docs/notifier.md)
//
// Two kinds of code touch this state:
//   writers  Register, Unregister (outside a callback), ReadBegin's
//            first-call sync, Configure, Teardown, ResetForTesting. They
//            serialize on g_mu. They never allocate or free memory while
//            holding g_mu (a writer that blocks in malloc while holding g_mu
//            could close a cycle: malloc's arena lock -> munmap hook ->
//            callback -> the cache's lock -> a cache thread in Register ->
//            g_mu).
//   dispatch BeginRange/EndRange (munmap hooks, the uffd monitor, explicit
//            notify). It takes no lock at all and allocates nothing: only
//            atomics, and a futex wait in exactly one case (the address space
//            is quiesced and this thread is not already inside a range or
//            callback).
//
// Subscriptions sit on two intrusive singly-linked lists (whole-space,
// interval), pushed at the head by writers with a release store. Readers walk
// them with acquire loads and never block. A writer unlinks a node by pointing
// its predecessor past it; the node keeps its own next pointer, so a reader
// standing on it still reaches the rest of the list (RCU-style).
//
// Ranges in flight are published in a fixed table (g_ranges: 64 words, each
// one range's page span and the SRCU slot g_idx it started in, claimed by CAS
// and cleared at end; past 64 the overflow counters g_inflight[slot] count
// them without a span). The table does three jobs:
//   1. Grace periods for freeing unlinked subscriptions. A writer may "flip"
//      g_idx only when nothing is in flight in the inactive slot; a node
//      unlinked at flip count f can be freed once the flip count reaches f + 2
//      (every range that could have seen it has ended). Flipping is polled,
//      never waited for, by Unregister/Register, so Unregister never waits for
//      unrelated ranges (it may be called with the cache's lock held, and an
//      unrelated range's callback may be waiting for that lock).
//   2. Guarantee 2 and overlap-only waiting, a Dekker pair: BeginRange claims
//      its word and then reads g_gen; Register publishes the node, stores
//      g_gen, then scans the table (all seq_cst). Either the range sees the new
//      node (it delivers start and end and moves the node's sequence) or
//      Register sees its word. The node's first ReadBegin then waits only for
//      words overlapping its interval (for a grace period of everything only
//      if an overflow range was in flight): registrations never wait for
//      unrelated ranges (tests/notifier/overlap.pml checks both halves).
//   3. Quiesce: it raises g_quiesce and waits until nothing is in flight;
//      BeginRange re-checks g_quiesce after its claim and backs off (clear,
//      wait for resume) unless MayWaitForResume() says waiting could hang.
//
// Fork: see "FORK" at the end of this file.
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
#include <pthread.h>
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
#include "notifier/policy.h"
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
// A thread has taken the job of calling release.
constexpr uint32_t kReleaseClaimed = 2u;
constexpr uint32_t kReleaseDone = 4u;   // release has returned
constexpr uint32_t kUnregistered = 8u;  // the owner called Unregister
constexpr int kActiveBits = 24;
constexpr uint64_t kActiveMask = (uint64_t{1} << kActiveBits) - 1;
constexpr uint64_t kStartInc = uint64_t{1} << kActiveBits;
constexpr uint8_t kSyncNone = 0;
constexpr uint8_t kSyncOverlap = 1;
constexpr uint8_t kSyncAll = 2;
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
  // What the first ReadBegin must wait for (Register's Dekker check found
  // ranges in flight that may not have seen this node): kSyncNone, kSyncOverlap
  // (table entries overlapping the interval), kSyncAll (a grace period: a
  // range without a table entry was in flight).
  std::atomic<uint8_t> need_sync{0};
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

// Ranges in flight that found no free entry in g_ranges (see below), per SRCU
// slot. Normally zero: every range holds an entry of g_ranges instead.
PaddedCounter g_inflight[2];

// RANGES IN FLIGHT (overlap-only waiting). Every range in flight, and every
// hold, owns one word of g_ranges: its page range and its SRCU slot, written
// by one CAS from 0 when the range starts and cleared when it ends. This table
// IS the in-flight count (per slot: the words with that slot bit, plus
// g_inflight[slot] for ranges that found the table full), and it lets a
// registration see WHICH ranges are in flight: it waits only for those that
// overlap its interval (the kernel's mmu_interval_notifier blocks only
// overlapping readers). 8 lines of 8 words; a thread uses its home line (one
// per thread, round-robin, so up to 8 threads never share a line), nested
// ranges take the next free word of the line, then any free word, then the
// counter.
//
// Word: bits 63..19 first page (see EncodeRange), bits 18..1 number of
// pages (saturated at 2^18 - 1 = "up to the end of the address space"), bit 0
// the SRCU slot. Never 0 for a claimed entry (the page count is >= 1). The
// encoded range covers the real one (rounded out, saturation only widens), so
// an overlap test on it may say "overlaps" for a range that does not quite, but
// never the reverse.
constexpr int kRangeLines = 8;
constexpr int kRangesPerLine = 8;
constexpr unsigned kRangeEntries = kRangeLines * kRangesPerLine;
constexpr unsigned kOverflowToken = kRangeEntries;  // token 64 + slot
constexpr int kPageShift = 12;
constexpr int kLenBits = 18;
constexpr uint64_t kLenSat = (uint64_t{1} << kLenBits) - 1;
// Flat: line L is entries [8L, 8L + 8), so a token (entry index) is the word.
alignas(64) std::atomic<uint64_t> g_ranges[kRangeEntries];
static_assert(sizeof(g_ranges[0]) * kRangesPerLine == 64, "8 words per line");
std::atomic<unsigned> g_next_home{0};
// What every range reads and (almost) never writes, in one cache line: after
// the kernel's munmap has run, each distinct line the hook touches is a likely
// L1 miss, so the read-mostly words share one (g_waiters only changes when a
// thread starts or stops waiting; the futex word, written by every wake-up,
// has its own line).
struct alignas(64) {
  std::atomic<unsigned> idx{0};
  // Quiesce count (bits 31..0) and epoch (bits 63..32, +1 whenever the count
  // returns to zero), in one word so that a quiescer learns its epoch from
  // the same atomic increment.
  std::atomic<uint64_t> quiesce{0};
  std::atomic<uint32_t> waiters{0};
  std::atomic<uint64_t> gen{0};
  std::atomic<Subscription *> whole{nullptr};
  std::atomic<Subscription *> interval{nullptr};
  // Interval reads in flight (ReadBeginInterval .. ReadEndInterval, all
  // threads): while non-zero, ranges log their span (RANGE LOG). Here because
  // every range reads this line anyway: a munmap while no miss is in flight
  // pays nothing for the log.
  std::atomic<uint32_t> log_on{0};
} g_hot;
constexpr std::atomic<unsigned> &g_idx = g_hot.idx;
constexpr std::atomic<uint64_t> &g_gen = g_hot.gen;
constexpr std::atomic<Subscription *> &g_whole = g_hot.whole;
constexpr std::atomic<Subscription *> &g_interval = g_hot.interval;
constexpr std::atomic<uint64_t> &g_quiesce = g_hot.quiesce;
constexpr uint64_t kQuiesceCount = 0xffffffffu;
constexpr std::atomic<uint32_t> &g_waiters = g_hot.waiters;
constexpr std::atomic<uint32_t> &g_log_on = g_hot.log_on;

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
alignas(64) std::atomic<uint64_t> g_log_next{0};
alignas(64) LogEntry g_range_log[kIntervalLogEntries];
alignas(64) std::atomic<uint32_t> g_event{0};  // futex word
std::atomic<Subscription *> g_pending{nullptr};
std::atomic<bool> g_shutdown{false};
std::atomic<LogFn> g_log{nullptr};
std::atomic<Source> g_active{Source::kNone};
std::atomic<bool> g_nesting_logged{false};
// Set by the fork prepare handler of a thread that holds a quiesce, cleared by
// the parent handler: ranges held off by quiesce proceed meanwhile. A thread
// held off inside free() holds malloc's arena lock, which fork() takes after
// the prepare handlers: waiting for the forking quiescer's resume would
// deadlock its fork.
std::atomic<uint32_t> g_fork_unblock{0};

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
  int inflight;  // ranges (and holds) begun and not ended on this thread
  int nframes;   // frames used by InvalidateRangeStart/End
  // This thread's home line in g_ranges (its first entry), nullptr until the
  // first range.
  std::atomic<uint64_t> *home;
  // Quiesces taken by this thread and not resumed, valid while quiesce_epoch
  // equals the epoch of g_quiesce (a resume to zero starts a new epoch, so a
  // quiesce resumed by another thread does not keep exempting this one).
  uint32_t quiesce_own;
  uint32_t quiesce_epoch;
  bool installing;          // holds g_install_mu (see EnterWindow)
  bool fork_unblocked;      // this thread's fork prepare raised g_fork_unblock
  bool fork_skipped;        // prepare skipped (g_atfork_off_for_testing)
  uint32_t interval_reads;  // this thread's part of g_log_on
};
constexpr int kMaxTlsFrames = 8;
constexpr int kNestingWarn = 32;
__attribute__((tls_model("initial-exec"))) thread_local ThreadState t_state;
__attribute__((
    tls_model("initial-exec"))) thread_local Frame t_frames[kMaxTlsFrames];

// g_install_mu, with t_state.installing set while held (MayWaitForResume).
class InstallLock {
 public:
  InstallLock() : was_(t_state.installing) {
    g_install_mu.lock();
    t_state.installing = true;
  }
  ~InstallLock() {
    t_state.installing = was_;
    g_install_mu.unlock();
  }
  InstallLock(const InstallLock &) = delete;
  InstallLock &operator=(const InstallLock &) = delete;

 private:
  bool was_;
};

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
// The range word of [start, end) in SRCU slot `slot` (see g_ranges). A first
// page beyond 45 bits (addresses >= 2^57, above every user address space,
// LA57 included) would lose its high bits: such ranges cover no memory a
// registration could pin, so the munmap path does not pay for the check.
inline uint64_t EncodeRange(uintptr_t start, uintptr_t end, unsigned slot) {
  const uint64_t first = start >> kPageShift;
  // Pages touched (end > start for every range we encode), saturated.
  uint64_t n = ((end - 1) >> kPageShift) - first + 1;
  n = n < kLenSat ? n : kLenSat;
  return (first << (kLenBits + 1)) | (n << 1) | slot;
}

// Does the range of word w (non-zero) overlap [start, end)?
inline bool RangeOverlaps(uint64_t w, uintptr_t start, uintptr_t end) {
  const uint64_t first = w >> (kLenBits + 1);
  const uint64_t n = (w >> 1) & kLenSat;
  const uintptr_t rs = static_cast<uintptr_t>(first) << kPageShift;
  if (n == kLenSat) return rs < end;  // open-ended
  const uintptr_t re = static_cast<uintptr_t>(first + n) << kPageShift;
  return rs < end && start < re;
}

// Logs the span of a range that is starting (RANGE LOG). The increment is
// seq_cst: it is the range's half of the Dekker pair with a reader's
// filter-and-fence (and is ordered after the range's claim).
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

// Is a range with a g_ranges entry overlapping [start, end) in flight?
bool TableOverlapInFlight(uintptr_t start, uintptr_t end) {
  // The table is mostly empty: one pass that ORs the 64 words (no branch per
  // word: about a third of the instructions of the scan below) decides that.
  // Each word is still one seq_cst load, read once per pass.
  // Unrolled by one line of 8 words (the compilers do not unroll it at -O2).
  uint64_t any = 0;
  for (unsigned i = 0; i < kRangeEntries; i += kRangesPerLine) {
    static_assert(kRangesPerLine == 8 && kRangeEntries % 8 == 0);
    std::atomic<uint64_t> *l = &g_ranges[i];
    any |= l[0].load(std::memory_order_seq_cst) |
           l[1].load(std::memory_order_seq_cst) |
           l[2].load(std::memory_order_seq_cst) |
           l[3].load(std::memory_order_seq_cst) |
           l[4].load(std::memory_order_seq_cst) |
           l[5].load(std::memory_order_seq_cst) |
           l[6].load(std::memory_order_seq_cst) |
           l[7].load(std::memory_order_seq_cst);
  }
  if (any == 0) return false;
  for (std::atomic<uint64_t> &e : g_ranges) {
    const uint64_t w = e.load(std::memory_order_seq_cst);
    if (w != 0 && RangeOverlaps(w, start, end)) return true;
  }
  return false;
}

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

// Ranges in flight in SRCU slot i (table entries with that slot bit, plus the
// overflow counter). Not an atomic snapshot: see TryFlip.
uint64_t InflightInSlot(unsigned i) {
  uint64_t n = g_inflight[i].v.load(std::memory_order_seq_cst);
  for (std::atomic<uint64_t> &e : g_ranges) {
    const uint64_t w = e.load(std::memory_order_seq_cst);
    n += w != 0 && (w & 1) == i;
  }
  return n;
}

uint64_t InflightTotal() { return InflightInSlot(0) + InflightInSlot(1); }

REGCACHE_COLD std::atomic<uint64_t> *PickHome() {
  const unsigned line =
      g_next_home.fetch_add(1, std::memory_order_relaxed) % kRangeLines;
  t_state.home = &g_ranges[line * kRangesPerLine];
  return t_state.home;
}

// Slow part of Claim: the home line is full (nested ranges, or more than 8
// threads share it): any free entry, else the overflow counter.
REGCACHE_COLD unsigned ClaimElsewhere(uint64_t w, unsigned slot) {
  for (unsigned i = 0; i < kRangeEntries; ++i) {
    uint64_t cur = g_ranges[i].load(std::memory_order_relaxed);
    if (cur == 0 &&
        g_ranges[i].compare_exchange_strong(cur, w, std::memory_order_seq_cst))
      return i;
  }
  g_inflight[slot].v.fetch_add(1, std::memory_order_seq_cst);
  return kOverflowToken + slot;
}

// Publishes [start, end) as in flight in SRCU slot `slot`: one seq_cst CAS on
// a word of this thread's home line (ordered before everything the range does
// next: the Dekker pairs with Register and Quiesce). Returns the token (entry
// index, or kOverflowToken + slot) that Unclaim takes. Lock-free,
// allocation-free; the token lives in the range's Frame, which is how the fork
// child handler finds the forking thread's own entries.
inline unsigned Claim(uintptr_t start, uintptr_t end, unsigned slot) {
  const uint64_t w = EncodeRange(start, end, slot);
  std::atomic<uint64_t> *line = t_state.home;
  if (line == nullptr) [[unlikely]]
    line = PickHome();
  for (int k = 0; k < kRangesPerLine; ++k) {
    uint64_t cur = line[k].load(std::memory_order_relaxed);
    if (cur == 0 && line[k].compare_exchange_strong(
                        cur, w, std::memory_order_seq_cst)) [[likely]]
      return static_cast<unsigned>(line + k - g_ranges);
  }
  return ClaimElsewhere(w, slot);
}

// seq_cst store: ordered before the waiter-count load in WakeAll (Dekker with
// WaitUntil, which counts itself a waiter before it checks the table).
inline void Unclaim(unsigned token) {
  if (token < kOverflowToken) [[likely]] {
    g_ranges[token].store(0, std::memory_order_seq_cst);
  } else {
    g_inflight[token - kOverflowToken].v.fetch_sub(1,
                                                   std::memory_order_seq_cst);
  }
}

// This thread's own quiesce is in force: its ranges do not wait for it (it
// cannot be racing with itself, and waiting would be waiting for itself).
inline bool QuiescedBySelf(uint64_t q) {
  return t_state.quiesce_own > 0 &&
         t_state.quiesce_epoch == static_cast<uint32_t>(q >> 32);
}

// May a range of this thread wait for resume? Not when the thread is already
// inside a range or a callback (those must finish for quiesce to complete),
// not when it holds the quiesce itself (item above), and not while it holds
// g_install_mu (fork's prepare handler takes that mutex; a range waiting for
// resume under it would block every fork, also the quiescer's).
inline bool MayWaitForResume(uint64_t q) {
  return t_state.inflight == 0 && t_state.cb_depth == 0 &&
         !t_state.installing && !QuiescedBySelf(q) &&
         g_fork_unblock.load(std::memory_order_seq_cst) == 0;
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

// Enters the in-flight window with [start, end): one entry of g_ranges (or the
// overflow counter), tagged with the current SRCU slot. Waits only when
// quiesced by another thread and this thread may wait (MayWaitForResume).
inline unsigned EnterWindow(uintptr_t start, uintptr_t end, bool may_wait) {
  const unsigned slot = g_idx.load(std::memory_order_seq_cst);
  const unsigned token = Claim(start, end, slot);
  if ((g_quiesce.load(std::memory_order_seq_cst) & kQuiesceCount) == 0)
      [[likely]] {
    ++t_state.inflight;
    return token;
  }
  return EnterWindowQuiesced(token, start, end, may_wait);
}

inline void ExitWindow(unsigned token) {
  --t_state.inflight;
  Unclaim(token);
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
  if (want == Source::kAuto) {
    // The order and the blind rule live in notifier/policy.cc.
    got = policy::InstallAuto();
  } else if (const sources::SourceOps *ops = sources::Find(want)) {
    rc = ops->install();
    got = want;
  }
  if (rc != 0) {
    internal::Logf(internal::kLogError,
                   "notifier: cannot install event source %s: %s",
                   SourceName(want), strerror(-rc));
    return rc;
  }
  if (want != Source::kAuto) policy::SetConfigured(want);
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
  if (const sources::SourceOps *ops =
          sources::Find(g_active.load(std::memory_order_acquire)))
    ops->uninstall();
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
  f->slot = EnterWindow(start, end, /*may_wait=*/true);
  if (t_state.inflight > kNestingWarn) [[unlikely]]
    WarnNesting();
  f->gen = g_gen.load(std::memory_order_seq_cst);
  // After the claim (ReadBeginInterval's table scan either sees the claim or
  // its token precedes this entry) and before any start callback (a reader
  // that checks under the lock the callback takes, or behind a filter and a
  // fence, sees this entry or is seen by the callback).
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

std::atomic<uint32_t> g_async_in_flight{0};
std::atomic<bool> g_atfork_off_for_testing{false};
std::atomic<bool> g_interval_log_off_for_testing{false};
std::atomic<bool> g_interval_wait_off_for_testing{false};

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
std::atomic<uint64_t *> g_patch_guard{nullptr};
uint64_t g_patch_guard_word = 0;

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

// ------------------------------------------------------------ public C++ API
const char *SourceName(Source s) {
  if (s == Source::kAuto) return "auto";
  if (const sources::SourceOps *ops = sources::Find(s)) return ops->name;
  return "none";
}

int Configure(const Options &opts) {
  if (opts.log != nullptr) g_log.store(opts.log, std::memory_order_release);
  InstallLock g;
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

int ReadBeginInterval(uintptr_t start, uintptr_t end, uint64_t *token) {
  if (token == nullptr || start >= end) return -EINVAL;
  if (InRange()) return -EDEADLK;
  if (g_shutdown.load(std::memory_order_acquire)) return -ESHUTDOWN;
  // A patch overwritten by another library: the sentinel (one load of
  // munmap's entry, what the hit path checks); the full check of every entry
  // is VerifySources(), which Register and SyncForLookup() (a cache's slow
  // path, before its lookup) make.
  if (!PatchIntact()) [[unlikely]]
    VerifySources();
  // Count this read in before the token (Dekker with BeginRange: a range
  // that read g_log_on == 0 claimed its entry before our scan below reads it,
  // so it is waited for; one that reads it non-zero logs itself). The test
  // switch leaves the count alone (and ReadEndInterval then too).
  const bool counted =
      !internal::g_interval_log_off_for_testing.load(std::memory_order_relaxed);
  if (counted) {
    g_log_on.fetch_add(1, std::memory_order_seq_cst);
    ++t_state.interval_reads;
  }
  for (;;) {
    // Token first, then the table: a range the scan does not see claimed its
    // entry after the scan read it, hence logs itself after the token
    // (claim, then log) and ReadRetryInterval sees it.
    const uint64_t t = g_log_next.load(std::memory_order_seq_cst);
    if (TableOverlapInFlight(start, end) &&
        !internal::g_interval_wait_off_for_testing.load(
            std::memory_order_relaxed)) {
      // A range on this memory is changing it now: wait for its end (bounded
      // by that range: it ends after its callbacks; only a stream of changes
      // of this same memory by other threads keeps this waiting, as the
      // kernel's mmu_interval_read_begin). Then take a new token.
      WaitUntil([start, end] { return !TableOverlapInFlight(start, end); });
      continue;
    }
    if (g_inflight[0].v.load(std::memory_order_seq_cst) +
            g_inflight[1].v.load(std::memory_order_seq_cst) !=
        0) {
      // Ranges without a table entry (past 64 in flight) have no known span:
      // wait for every range in flight now to end (a grace period). Those
      // that began before t and were in flight then have ended; those that
      // began later logged themselves after t.
      Synchronize();
    }
    if (g_active.load(std::memory_order_acquire) == Source::kUffd) {
      // uffd reports only watched mappings: watch what is mapped now, after
      // the token (as ReadBegin re-watches after reading the sequence), so a
      // later change of it is logged after t. Errors as Register's.
      int rc = sources::UffdWatch(start, end);
      if (rc != 0) {
        if (counted) ReadEndInterval();
        return rc;
      }
    }
    *token = t;
    return 0;
  }
}

void ReadEndInterval() {
  if (internal::g_interval_log_off_for_testing.load(std::memory_order_relaxed))
    return;
  --t_state.interval_reads;
  g_log_on.fetch_sub(1, std::memory_order_seq_cst);
}

bool ReadRetryInterval(uintptr_t start, uintptr_t end, uint64_t token) {
  const uint64_t now = g_log_next.load(std::memory_order_seq_cst);
  if (now == token) [[likely]]
    return false;
  if (now - token > kIntervalLogEntries) return true;  // wrapped
  for (uint64_t i = token; i < now; ++i) {
    const LogEntry &e = g_range_log[i % kIntervalLogEntries];
    // Tag i + 1 before and after the span: the span is range i's (RANGE LOG).
    // The fence keeps the second tag load after the span load.
    if (e.tag.load(std::memory_order_acquire) != i + 1) return true;
    const uint64_t span = e.span.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (e.tag.load(std::memory_order_relaxed) != i + 1) return true;
    if (RangeOverlaps(span, start, end)) return true;
  }
  return false;
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

// Quiesce holds off ranges of OTHER threads. The quiescing thread's own ranges
// (it munmaps or frees memory after quiescing) proceed and are delivered: it
// cannot be racing with itself, and holding them off would wait for its own
// resume. The wait below is bounded by the ranges in flight now (each ends
// after its callbacks) and those exempt from waiting (this thread is not
// inside one: -EDEADLK above).
int Quiesce() {
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return -EDEADLK;
  const uint64_t old = g_quiesce.fetch_add(1, std::memory_order_seq_cst);
  const auto epoch = static_cast<uint32_t>(old >> 32);
  if (!(t_state.quiesce_own > 0 && t_state.quiesce_epoch == epoch)) {
    t_state.quiesce_own = 0;
    t_state.quiesce_epoch = epoch;
  }
  ++t_state.quiesce_own;
  WaitUntil([] { return InflightTotal() == 0; });
  return 0;
}

int Resume() {
  uint64_t q = g_quiesce.load(std::memory_order_seq_cst);
  uint64_t nq;
  do {
    if ((q & kQuiesceCount) == 0) return -EINVAL;
    // The last resume starts a new epoch: quiesces counted in threads' own
    // counts (QuiescedBySelf) are all over, whoever resumed them.
    nq = (q & kQuiesceCount) == 1 ? ((q >> 32) + 1) << 32 : q - 1;
  } while (!g_quiesce.compare_exchange_weak(q, nq, std::memory_order_seq_cst));
  if (QuiescedBySelf(q)) --t_state.quiesce_own;
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
  // Only a source that another library can overwrite (patch) has intact().
  const sources::SourceOps *ops =
      sources::Find(g_active.load(std::memory_order_acquire));
  if (ops == nullptr || ops->intact == nullptr) return;
  if (t_state.cb_depth > 0 || t_state.inflight > 0) return;
  const char *which = nullptr;
  // The common answer (intact) without the install lock: intact() takes the
  // source's own lock, and a switch racing with this read leaves nothing for
  // us to do (it abandoned or re-checked under the install lock). Only a
  // damaged patch is checked again under the install lock before acting.
  // Every entry is still compared on every call (ANOTHER PATCHER).
  if (ops->intact(&which)) return;
  {
    InstallLock g;
    if (g_active.load(std::memory_order_acquire) != ops->id ||
        ops->intact(&which))
      return;
    ops->abandon();
    // ucm if libucm took the entries, else uffd, else blind (policy.cc).
    Source now = policy::AfterPatchLost(which);
    g_active.store(now, std::memory_order_release);
  }
  // Everything cached may have been unmapped unseen.
  Frame f;
  internal::BeginRange(&f, 0, UINTPTR_MAX);
  internal::EndRange(&f);
}

void SyncForLookup() {
  VerifySources();
  // uffd: first until the kernel has no unread change of a watched mapping,
  // then until the monitor has delivered what it read (this order; uffd.cc).
  // Every source's (not only the active one's: uffd's is a no-op unless it is
  // installed, and must run in a fork child that has not re-created it yet).
  for (size_t i = 0; i < sources::kSourceCount; ++i)
    if (sources::kSourceTable[i]->sync_for_lookup != nullptr)
      sources::kSourceTable[i]->sync_for_lookup();
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

Source ActiveSource() { return g_active.load(std::memory_order_acquire); }

int EnsureInstalled() {
  std::lock_guard<std::mutex> g(g_install_mu);
  return InstallSourceLocked();
}

bool CachingSafe() { return policy::CachingSafe(); }

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

// ---------------------------------------------------------------- fork
// FORK. After fork() only the forking thread exists in the child, with a copy
// of everything: counts of ranges other threads had in flight, mutexes they
// held, waiter counts, callbacks they were running. None of it will ever be
// undone, so the child handler rebuilds the state the forking thread alone
// would have: its own ranges in flight (its g_ranges entries and overflow
// counts, its open frames), its own quiesce; nothing else. Subscriptions stay
// (the memory holding them was copied; caches the child inherits own them).
//
// fork() from inside a notifier callback is not supported (regcache/notifier.h):
// the child cannot know which callbacks that thread was in.
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

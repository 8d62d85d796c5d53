/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/address_space_state.h - the address space's shared state (internal
// to the address-space units: address_space.cc defines it; subscription_list,
// dispatch, quiesce, interval_log, source_install and address_space_fork
// use it). The concurrency scheme that ties it together is at the top of
// address_space.cc (and in docs/notifier.md); each datum below states its own
// invariant and lock rule.
//
// LOCK RULES, in short: g_mu serializes writers (list changes, flips, the
// zombie list) and is never held while allocating, freeing or calling back;
// g_install_mu serializes source installation (may allocate; never taken with
// g_mu held); dispatch (ranges) takes no lock at all: atomics only. Prepare of
// fork takes g_install_mu, then g_mu (address_space_fork.cc).
#ifndef REGCACHE_NOTIFIER_ADDRESS_SPACE_STATE_H_
#define REGCACHE_NOTIFIER_ADDRESS_SPACE_STATE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "notifier/address_space.h"
#include "notifier/internal.h"

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

// One subscription (Register). Lives on g_whole (range_len 0) or g_interval
// from publication until a writer unlinks it (under g_mu); freed only after
// its grace period (two flips of g_idx after its unlink) and its release has
// returned, so a dispatcher standing on it never sees it freed. The fields
// before `next` are written before publication and read-only afterwards; the
// atomics follow the protocols of the scheme (address_space.cc): seq_word
// (starts << 24 | active), running (callbacks now), flags (k* above).
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

using internal::Frame;

// Every name below is shared by the units of the address space only: hidden,
// so that a shared library reaches it without the GOT (as when it was static
// in one file), on the munmap path included.
#pragma GCC visibility push(hidden)

struct alignas(64) PaddedCounter {
  std::atomic<uint64_t> v{0};
};

// Ranges in flight that found no free entry in g_ranges (see below), per SRCU
// slot. Normally zero: every range holds an entry of g_ranges instead.
extern PaddedCounter g_inflight[2];

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
extern std::atomic<uint64_t> g_ranges[kRangeEntries];
static_assert(sizeof(g_ranges[0]) * kRangesPerLine == 64, "8 words per line");
// Round-robin counter that hands each thread its home line (PickHome).
extern std::atomic<unsigned> g_next_home;
// Bit L set: some range has claimed (or may claim) a word of line L. Set, by a
// seq_cst RMW, before a thread's first claim on a line (PickHome for its home
// line, ClaimElsewhere for any other); never cleared. So a word that is not 0
// lies in a line whose bit is set, and a reader that loads this mask (seq_cst)
// and then scans only those lines misses no claim its Dekker pairs need: a
// claim on a line not in the mask comes after the mask load in the seq_cst
// order, exactly as a claim the full scan read as 0 would. Interval reads (every
// cache miss) scan one or two lines instead of eight in a process whose ranges
// come from a few threads. Written only on those cold paths, never by the munmap
// path's common case.
extern std::atomic<uint32_t> g_lines_used;
// What every range reads and (almost) never writes, in one cache line: after
// the kernel's munmap has run, each distinct line the hook touches is a likely
// L1 miss, so the read-mostly words share one (g_waiters only changes when a
// thread starts or stops waiting; the futex word, written by every wake-up,
// has its own line).
struct alignas(64) HotWords {
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
};
extern HotWords g_hot;
inline constexpr std::atomic<unsigned> &g_idx = g_hot.idx;
inline constexpr std::atomic<uint64_t> &g_gen = g_hot.gen;
inline constexpr std::atomic<Subscription *> &g_whole = g_hot.whole;
inline constexpr std::atomic<Subscription *> &g_interval = g_hot.interval;
inline constexpr std::atomic<uint64_t> &g_quiesce = g_hot.quiesce;
constexpr uint64_t kQuiesceCount = 0xffffffffu;
inline constexpr std::atomic<uint32_t> &g_waiters = g_hot.waiters;
inline constexpr std::atomic<uint32_t> &g_log_on = g_hot.log_on;

// The futex word of every wait (WaitUntil): bumped by each wake-up (WakeAll),
// on a line of its own.
extern std::atomic<uint32_t> g_event;
// Subscriptions unregistered from inside a callback: a lock-free stack pushed
// by Unregister, drained by the next writer (under g_mu, CollectLocked).
extern std::atomic<Subscription *> g_pending;
// Set by Teardown (under g_mu), cleared only by ResetForTesting: no new
// subscription after it.
extern std::atomic<bool> g_shutdown;
extern std::atomic<LogFn> g_log;  // Options::log (Configure); may be null
// The installed source (kNone when none). Written under g_install_mu, read
// anywhere (acquire).
extern std::atomic<Source> g_active;
extern std::atomic<bool> g_nesting_logged;  // WarnNesting logged once
// Set by the fork prepare handler of a thread that holds a quiesce, cleared by
// the parent handler: ranges held off by quiesce proceed meanwhile. A thread
// held off inside free() holds malloc's arena lock, which fork() takes after
// the prepare handlers: waiting for the forking quiescer's resume would
// deadlock its fork.
extern std::atomic<uint32_t> g_fork_unblock;

extern std::mutex g_mu;          // writers
extern uint64_t g_flips;         // guarded by g_mu
extern Subscription *g_zombies;  // guarded by g_mu

// source installation (may allocate: never with g_mu)
extern std::mutex g_install_mu;
extern Source g_configured;  // guarded by g_install_mu
extern bool g_installed;     // guarded by g_install_mu

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
extern constinit
    __attribute__((tls_model("initial-exec"))) thread_local ThreadState t_state;
extern constinit __attribute__((
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

// Waiting (address_space.cc). Every wait of the address space is WaitUntil:
// it returns once done() holds, re-checked on each wake-up of g_event (and at
// least every 50 ms: a safety net against a lost wake-up). Its bound is the
// caller's (each states it).
void FutexWait(std::atomic<uint32_t> *word, uint32_t val);
REGCACHE_COLD void WakeAllSlow();

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

// Called on the subscription when it may have become idle: runs its release
// (once, on whichever thread wins kReleaseClaimed) if it is dead and no
// callback runs (subscription_list.cc).
REGCACHE_COLD void ReleaseIfIdle(Subscription *s);

// Waits until every range in flight now has ended (two flips;
// subscription_list.cc).
void Synchronize();

// Installs the configured source once (source_install.cc). REQUIRES:
// g_install_mu held.
int InstallSourceLocked();
// Uninstalls the active source (tests). REQUIRES: g_install_mu held.
void UninstallSourcesLocked();

// Does range f concern s (published before f began, and overlapping it)?
inline bool Matches(const Subscription *s, const Frame *f) {
  return s->visible_gen <= f->gen &&
         (s->whole || (s->start < f->end && f->start < s->end));
}

#pragma GCC visibility pop

}  // namespace regcache::notifier

#endif  // REGCACHE_NOTIFIER_ADDRESS_SPACE_STATE_H_

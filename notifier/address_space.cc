// SPDX-License-Identifier: BSD-3-Clause
// notifier/address_space.cc - the address space's shared state (declared in
// address_space_state.h, defined here), its waiting primitive and its log.
// The work is in the units named for it: subscription_list.cc (register,
// unregister, grace periods, sequences, teardown), dispatch.cc (ranges begin
// and end: the in-flight window, callbacks), quiesce.cc (quiesce, in-flight
// counts), interval_log.cc (interval reads), source_install.cc (event
// sources), address_space_fork.cc (fork).
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
// Fork: see "FORK" in address_space_fork.cc.
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
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <mutex>

#include "notifier/address_space.h"
#include "notifier/address_space_state.h"
#include "notifier/interval_log.h"

namespace regcache::notifier {

// The state (address_space_state.h and interval_log.h state its invariants
// and lock rules).
PaddedCounter g_inflight[2];
alignas(64) std::atomic<uint64_t> g_ranges[kRangeEntries];
std::atomic<unsigned> g_next_home{0};
std::atomic<uint32_t> g_lines_used{0};
HotWords g_hot;
alignas(64) std::atomic<uint64_t> g_log_next{0};
alignas(64) LogEntry g_range_log[kIntervalLogEntries];
alignas(64) std::atomic<uint32_t> g_event{0};  // futex word
std::atomic<Subscription *> g_pending{nullptr};
std::atomic<bool> g_shutdown{false};
std::atomic<LogFn> g_log{nullptr};
std::atomic<Source> g_active{Source::kNone};
std::atomic<bool> g_nesting_logged{false};
std::atomic<uint32_t> g_fork_unblock{0};

std::mutex g_mu;
uint64_t g_flips = 0;
Subscription *g_zombies = nullptr;

std::mutex g_install_mu;
Source g_configured = Source::kAuto;
bool g_installed = false;

// Zero, as every thread's copy starts (constinit: the declarations in
// address_space_state.h promise no dynamic initialization, so other units
// reach them without a TLS wrapper call).
constinit __attribute__((
    tls_model("initial-exec"))) thread_local ThreadState t_state{};
constinit __attribute__((
    tls_model("initial-exec"))) thread_local Frame t_frames[kMaxTlsFrames]{};

// Waiting.
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

namespace internal {

// address_space.h declares these with default visibility (the cache reads
// them too); a unit reaches one without the GOT only where it is defined, so
// g_async_in_flight is in source_install.cc and the patch sentinel and the
// interval switches are in interval_log.cc, beside the miss path's readers.
std::atomic<bool> g_atfork_off_for_testing{false};

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

}  // namespace internal

}  // namespace regcache::notifier

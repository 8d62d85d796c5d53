/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/address_space.h - the notifier's C++ core (internal; not installed).
//
// One AddressSpace per process (the kernel's mm_struct). Subscriptions are
// either whole-space or interval ([start, end), page granularity not required).
// The public C API in <regcache/notifier.h> is a thin wrapper over this; its
// header states the contract (callback rules, guarantees 1-7), which this file
// implements.
//
// This module depends on nothing else in the project: the library layer injects
// the event source choice and a log hook through Configure().
#ifndef REGCACHE_NOTIFIER_ADDRESS_SPACE_H_
#define REGCACHE_NOTIFIER_ADDRESS_SPACE_H_

#include <regcache/notifier.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace regcache::notifier {

// kUcm: UCX libucm's events, imported (notifier/ucm_import.cc).
enum class Source { kAuto, kPatch, kUffd, kNone, kUcm };
const char *SourceName(Source s);  // "auto", "patch", "uffd", "none", "ucm"
// The source REGCACHE_MONITOR calls `name` ("auto", "none", or a row of the
// source table, sources.cc); false if there is none. The one name list: the
// MONITOR tunable maps its choice through it (tunables_test checks each).
bool SourceFromName(const char *name, Source *out);

// Log levels follow REGCACHE_LOG_* of <regcache/regcache.h> (1 error .. 5
// trace).
using LogFn = void (*)(int level, const char *msg);

struct Options {
  Source source = Source::kAuto;
  // May be called from the munmap path: must not allocate (much).
  LogFn log = nullptr;
};

// A subscription. Opaque outside the notifier; the C type regcache_notifier_t
// is this.
class Subscription;

// Applies options before the first Register(). Returns 0, or -EBUSY if an event
// source is already installed with a different choice (the first configuration
// wins).
int Configure(const Options &opts);

// Registers a subscriber. range_len == 0 means the whole address space (start
// ignored). Installs the configured source on first use (auto: see
// notifier/policy.h; one log line at info level saying which, a warning when
// none can see unmaps). Errors: see
// regcache_notifier_register().
int Register(const regcache_notifier_ops_t *ops, void *arg, uintptr_t start,
             size_t range_len, Subscription **out);

// See regcache_notifier_unregister().
int Unregister(Subscription *sub);

// Interval sequence protocol (mmu_interval_read_begin / read_retry). ReadBegin
// waits while an invalidation overlapping the interval is in flight (for a
// subscription inserted while overlapping invalidations were in flight, also
// until those end; unrelated ones never delay it) and returns the sequence; ReadRetry is true when an invalidation of the
// interval started since. Whole-space subscriptions count every invalidation.
uint64_t ReadBegin(Subscription *sub);
bool ReadRetry(const Subscription *sub, uint64_t seq);

// Interval read protocol WITHOUT a subscription (issue 14: a cache's miss
// need not Register and Unregister an interval subscription per miss). While
// at least one such read is in flight (ReadBeginInterval .. ReadEndInterval,
// any thread), every range logs its page span in a ring of
// kIntervalLogEntries (a sequence number and the span) before it delivers any
// start callback; these calls check that log for [start, end):
//
//   ReadBeginInterval(start, end, &token)   checks the patch sentinel
//       (PatchIntact(); VerifySources() if it fails: the full check of every
//       patched entry is SyncForLookup()'s, which a cache's slow path calls
//       before its lookup), counts a read in, then waits
//       while a range overlapping [start, end) is in flight (began before and
//       has not ended; for ranges counted without a span, past 64 in flight,
//       a grace period of all ranges), then returns 0 and a token. Under the
//       uffd source it also watches the mappings of [start, end) (as an
//       interval Register does): -EFAULT when part of it is not mapped,
//       -EBUSY when a mapping cannot be watched (register uncached). Also
//       -EINVAL (empty or wrapping interval, null token), -EDEADLK (inside a
//       callback or a range of this thread: the wait could be for itself),
//       -ESHUTDOWN. On error nothing is left counted.
//   ReadRetryInterval(start, end, token)    true when a range overlapping
//       [start, end) began since the token was taken (its start callbacks may
//       have run before what the caller is publishing was visible to them).
//       Never waits, never allocates: one load when nothing began since.
//       Valid until the matching ReadEndInterval.
//   ReadEndInterval()                       counts the read out: exactly once
//       per successful ReadBeginInterval, on the same thread, after its last
//       ReadRetryInterval (ranges stop logging when no read is in flight).
//
// Contract, exactly as the cache's miss uses it: the caller owns a whole-space
// subscription (registered before ReadBeginInterval) whose start callback
// takes lock L (or, as the cache does, first tests a filter the caller widens
// before a seq_cst fence); the caller takes the token, registers with the
// driver, then under L (after widening the filter and the fence) calls
// ReadRetryInterval and publishes only if it is false. Either a range's
// start callback runs after the publish (and finds it), or the range logged
// itself before the check (retry is true). A range that began before the
// token is waited for by ReadBeginInterval. Same rules as ReadBegin: not with
// a lock any subscription's callback takes.
//
// False positives (retry true although no range overlapped), all bounded:
//   * spans are kept at page granularity, rounded outwards, and a span of
//     2^18 pages or more (1 GiB) counts as reaching the end of the address
//     space;
//   * more than kIntervalLogEntries ranges began anywhere in the process
//     since the token (the log wrapped);
//   * a range took its log slot but had not written its entry yet when the
//     check read it (a window of a few instructions, longer only if that
//     thread was preempted there; an entry a later lap already owns is never
//     written, and reads as "cannot tell").
// No false negatives: a range overlapping [start, end) that begins after the
// token always makes retry true.
// Cost to every range: one load of a word on a line it reads anyway while no
// read is in flight; during one, one atomic increment, one compare-and-swap
// and two stores (before the start callbacks). A fork child keeps only the
// forking thread's reads in flight.
constexpr unsigned kIntervalLogEntries = 256;
int ReadBeginInterval(uintptr_t start, uintptr_t end, uint64_t *token);
bool ReadRetryInterval(uintptr_t start, uintptr_t end, uint64_t token);
void ReadEndInterval();

// Explicit source: delivers start then end for [start, start+len) to
// overlapping subscribers. Also what the patch/uffd sources call (with the
// syscall in between).
void InvalidateRangeStart(uintptr_t start, uintptr_t end);
void InvalidateRangeEnd(uintptr_t start, uintptr_t end);
int NotifyUnmapped(uintptr_t start, size_t len);
// The explicit source's bracket (regcache_notify_unmap_start/end): start
// before the memory changes, end after, on the same thread, nested properly.
// Unlike InvalidateRangeStart/End these report misuse instead of aborting:
// -EINVAL for a wrapping or empty range or an end that does not match the
// innermost open start of this thread, -EOVERFLOW when nested too deep.
int NotifyStart(uintptr_t start, size_t len);
int NotifyEnd(uintptr_t start, size_t len);
// True while the calling thread is inside a callback or has a range open
// (between a start and its end): a registration there would wait for itself.
bool InRange();

int Quiesce();
int Resume();

// ASYNCHRONOUS SOURCES (uffd). The kernel reports UNMAP after the unmap, and
// releases the unmapping thread when the monitor read()s the event, before the
// event is dispatched. So a thread whose munmap() has returned may still find
// the old range un-invalidated. To close that window the monitor counts itself
// in flight BEFORE read() and out after dispatching: a reader that sees
// AsyncEventsInFlight() == false after its munmap returned knows every event
// of that munmap has been delivered. Another thread may map the recycled
// address before the event is even queued; for that, a lookup first probes
// the kernel (is a watched mapping changing?) and only then reads the count.
// A lock-free lookup (the cache's hit path) checks FastPathOk() and, when
// false, takes its slow path, which calls SyncForLookup() before consulting
// its index.
namespace internal {
// Low bits: monitor holds open. kAsyncProbe: the uffd source is installed, so
// a lookup must first ask the kernel whether a watched mapping is changing
// (an unmap whose event is not even read yet) and only then read the count
// (the order matters; notifier/uffd.cc, EXACT LOOKUPS).
extern std::atomic<uint32_t> g_async_in_flight;
constexpr uint32_t kAsyncProbe = 1u << 31;
// FastPathOk()'s out-of-line half when g_async_in_flight != 0 (notifier/uffd.cc).
bool AsyncFastPathOk();
// The patch source's sentinel: munmap's entry and the word we wrote there
// (nullptr when patch is not installed).
extern std::atomic<uint64_t *> g_patch_guard;
extern uint64_t g_patch_guard_word;
// Tests only (negative controls): when true, the fork handlers of the notifier
// and of the cache do nothing, so a child inherits the parent's in-flight
// state and registrations as they were.
extern std::atomic<bool> g_atfork_off_for_testing;
// Tests only (negative control): when true, ReadBeginInterval does not count
// its read in (nor ReadEndInterval out), so ranges are not logged and
// ReadRetryInterval misses them. Set it only while no read is in flight.
extern std::atomic<bool> g_interval_log_off_for_testing;
// Tests only (negative control): when true, ReadBeginInterval does not wait
// for overlapping ranges in flight.
extern std::atomic<bool> g_interval_wait_off_for_testing;
}  // namespace internal
inline bool AsyncEventsInFlight() {
  // seq_cst: ordered after the caller's earlier munmap/free (a plain load on
  // x86).
  return (internal::g_async_in_flight.load(std::memory_order_seq_cst) &
          ~internal::kAsyncProbe) != 0;
}
// Waits until no asynchronous event is being read or dispatched. Returns at
// once inside a callback or on a monitor thread (the event being dispatched
// may be our own caller's).
void WaitAsyncEvents();

// ANOTHER PATCHER. A library that patches libc after us (UCX's libucm, Open
// MPI's patcher, libfabric's memhooks) overwrites our jumps and calls the
// syscalls itself: the patch source would go blind without knowing. So the
// patch source keeps a sentinel: PatchIntact() is one load of libc's munmap
// entry. VerifySources() (called by every Register and by SyncForLookup():
// a cache's miss checks every entry once, there; ReadBeginInterval checks
// only the sentinel) checks every patched entry, without the install lock
// while all are intact; when one was overwritten it abandons the patch
// source (writing nothing), switches to ucm if libucm owns the entries now,
// else uffd, else none and blind (notifier/policy.h), and delivers an
// invalidation of the whole address space to every subscriber, because events
// may have been missed since the overwrite.
inline bool PatchIntact() {
  uint64_t *p = internal::g_patch_guard.load(std::memory_order_acquire);
  return p == nullptr ||
         __atomic_load_n(p, __ATOMIC_RELAXED) == internal::g_patch_guard_word;
}
void VerifySources();

// For lock-free lookups (the cache's hit path): true when a lookup may trust
// its index without synchronizing with the notifier. When false, take the slow
// path and call SyncForLookup() before reading the index.
// With patch (or none) this is one load and the sentinel; with uffd it costs
// one ioctl (the probe) per lookup.
inline bool FastPathOk() {
  if (internal::g_async_in_flight.load(std::memory_order_seq_cst) != 0)
      [[unlikely]]
    return internal::AsyncFastPathOk();
  return PatchIntact();
}
void SyncForLookup();

// True while the calling thread is inside a notifier callback.
bool InCallback();

// Releases every subscriber (each release exactly once); later Register gets
// -ESHUTDOWN. Called by the library destructor at process exit, and by tests.
void Teardown();

// The active source (kNone before the first Register).
Source ActiveSource();

// Installs the configured source now if no Register did yet (what Register
// does first). 0 or the source's -errno.
int EnsureInstalled();

// False while no installed source sees every unmap and the host has not
// declared that it reports unmaps (notifier/policy.h): a cache must not keep
// registrations then. Two atomic loads; valid after EnsureInstalled/Register.
bool CachingSafe();

// For tests: undoes Teardown and uninstalls sources so a fresh sequence can
// start. REQUIRES: no subscriber registered and the calling thread not inside
// a range; ranges other threads have in flight are waited for (a grace period).
void ResetForTesting();

}  // namespace regcache::notifier

#endif  // REGCACHE_NOTIFIER_ADDRESS_SPACE_H_

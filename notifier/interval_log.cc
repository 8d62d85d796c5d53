// SPDX-License-Identifier: BSD-3-Clause
// notifier/interval_log.cc - interval reads (ReadBeginInterval /
// ReadRetryInterval / ReadEndInterval): a token, the wait for overlapping
// ranges in flight, and the check of the range log since the token.
#include <cerrno>
#include <cstdint>

#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"
#include "notifier/interval_log.h"
#include "notifier/range_window.h"
#include "notifier/sources.h"

namespace regcache::notifier {

namespace internal {
// Here, beside ReadBeginInterval (every cache miss): see address_space.cc.
std::atomic<bool> g_interval_log_off_for_testing{false};
std::atomic<bool> g_interval_wait_off_for_testing{false};
std::atomic<uint64_t *> g_patch_guard{nullptr};
uint64_t g_patch_guard_word = 0;
}  // namespace internal

namespace {

// Is a range with a g_ranges entry overlapping [start, end) in flight?
bool TableOverlapInFlight(uintptr_t start, uintptr_t end) {
  // The table is mostly empty: one pass that ORs the 64 words (no branch per
  // word: about a third of the instructions of the scan below) decides that.
  // Each word is still one seq_cst load, read once per pass.
  // Unrolled by one line of 8 words (the compilers do not unroll it at -O2).
  // Only the lines some range has used (g_lines_used: a claim on another line
  // is ordered after this load, as one the scan read as 0 would be).
  static_assert(kRangeLines <= 32);
  const uint32_t lines = g_lines_used.load(std::memory_order_seq_cst);
  uint64_t any = 0;
  for (uint32_t m = lines; m != 0; m &= m - 1) {
    static_assert(kRangesPerLine == 8 && kRangeEntries % 8 == 0);
    std::atomic<uint64_t> *l =
        &g_ranges[static_cast<unsigned>(__builtin_ctz(m)) * kRangesPerLine];
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
  for (uint32_t m = lines; m != 0; m &= m - 1) {
    const unsigned first =
        static_cast<unsigned>(__builtin_ctz(m)) * kRangesPerLine;
    for (unsigned i = first; i < first + kRangesPerLine; ++i) {
      const uint64_t w = g_ranges[i].load(std::memory_order_seq_cst);
      if (w != 0 && RangeOverlaps(w, start, end)) return true;
    }
  }
  return false;
}

}  // namespace

// Here, beside ReadBeginInterval (every cache miss calls both), which then
// inlines it.
bool InRange() { return t_state.cb_depth > 0 || t_state.inflight > 0; }

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

}  // namespace regcache::notifier

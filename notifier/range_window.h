/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/range_window.h - ranges in flight: claiming and clearing an entry of
// g_ranges (or the overflow counter), entering and leaving the in-flight
// window, and the quiesce test a range makes on the way in. Inline: every
// range (the munmap path) runs these; the rare paths are out of line in
// dispatch.cc.
//
// The data is g_ranges / g_inflight / g_quiesce (address_space_state.h: its
// invariant is there). Lock-free and allocation-free; the only wait is
// EnterWindowQuiesced's (bounded by the quiescer's resume).
#ifndef REGCACHE_NOTIFIER_RANGE_WINDOW_H_
#define REGCACHE_NOTIFIER_RANGE_WINDOW_H_

#include <atomic>
#include <cstdint>

#include "notifier/address_space_state.h"

namespace regcache::notifier {

#pragma GCC visibility push(hidden)

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

// Ranges in flight in SRCU slot i (table entries with that slot bit, plus the
// overflow counter). Not an atomic snapshot: see TryFlip.
uint64_t InflightInSlot(unsigned i);
uint64_t InflightTotal();

// Sets line's bit in g_lines_used before a first claim there (seq_cst RMW,
// ordered before the claim's CAS); a load first, so only the first claim on a
// line pays the RMW.
inline void NoteLineUsed(unsigned line) {
  const uint32_t bit = 1u << line;
  if ((g_lines_used.load(std::memory_order_seq_cst) & bit) == 0)
    g_lines_used.fetch_or(bit, std::memory_order_seq_cst);
}

// This thread's home line, picked on its first range.
REGCACHE_COLD std::atomic<uint64_t> *PickHome();
// Slow part of Claim: the home line is full (nested ranges, or more than 8
// threads share it): any free entry, else the overflow counter.
REGCACHE_COLD unsigned ClaimElsewhere(uint64_t w, unsigned slot);

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
                                           uintptr_t end, bool may_wait);

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

#pragma GCC visibility pop

}  // namespace regcache::notifier

#endif  // REGCACHE_NOTIFIER_RANGE_WINDOW_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/internal.h - what the event sources (patch, uffd) need from the
// core.
//
// Not part of address_space.h because only code inside notifier/ may use it: a
// Frame is the token that pairs one start with its end (the frame lives on the
// caller's stack, so the hooks need no per-thread storage and nesting depth
// costs nothing but stack).
#ifndef REGCACHE_NOTIFIER_INTERNAL_H_
#define REGCACHE_NOTIFIER_INTERNAL_H_

#include <cstddef>

// Which sanitizer runtime this code runs under (clang: __has_feature; g++:
// __SANITIZE_*__). The automatic sources refuse to install under some
// (docs/notifier.md).
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define REGCACHE_UNDER_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define REGCACHE_UNDER_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) && !defined(REGCACHE_UNDER_TSAN)
#define REGCACHE_UNDER_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(REGCACHE_UNDER_ASAN)
#define REGCACHE_UNDER_ASAN 1
#endif
#ifndef REGCACHE_UNDER_TSAN
#define REGCACHE_UNDER_TSAN 0
#endif
#ifndef REGCACHE_UNDER_ASAN
#define REGCACHE_UNDER_ASAN 0
#endif
#include <cstdint>

namespace regcache::notifier::internal {

// One range in flight. Filled by BeginRange, consumed by EndRange on the same
// thread.
struct Frame {
  uintptr_t start;
  uintptr_t end;
  uint64_t
      gen;  // subscriptions with visible_gen <= gen take part in this range
  unsigned
      slot;  // which in-flight counter this range holds (SRCU-style two slots)
  bool active;  // false: nothing subscribed (or the range is empty); End is a
                // no-op
};

// Delivers invalidate_range_start for [start, end) to the overlapping
// subscribers and marks the range in flight. Allocates nothing, takes no lock;
// may wait only while the address space is quiesced (and never when the calling
// thread is already inside a range or a callback). Every BeginRange must be
// followed by EndRange(f) on this thread.
void BeginRange(Frame *f, uintptr_t start, uintptr_t end);
void EndRange(Frame *f);

// Holds the in-flight window open without delivering anything: registrations
// made while it is held make their first ReadBegin wait for it. The uffd
// monitor holds it from poll() wake-up until the events it read are delivered
// (the "poll -> lock -> read -> invalidate" protocol: the unmapping thread is
// released by read() only inside the hold).
unsigned EnterHold();
void ExitHold(unsigned slot);

// Calls fn(ctx, start, end) for each live interval subscription (the uffd
// source watches them again in a fork child). Takes no lock, allocates nothing
// itself; not from a callback.
void ForEachLiveInterval(void (*fn)(void *ctx, uintptr_t start, uintptr_t end),
                         void *ctx);

// printf-style logging through Options::log (a 256-byte stack buffer, no
// allocation by us; the host's hook may allocate, so the munmap path only logs
// errors).
void Logf(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

// Log levels (REGCACHE_LOG_*; this module does not include
// <regcache/regcache.h>).
constexpr int kLogError = 1;
constexpr int kLogWarn = 2;
constexpr int kLogInfo = 3;
constexpr int kLogDebug = 4;

// True while the calling thread is inside a callback (same as
// notifier::InCallback()).
bool InCallback();

}  // namespace regcache::notifier::internal

#endif  // REGCACHE_NOTIFIER_INTERNAL_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// tests/notifier/test_util.h - a recording subscriber shared by the notifier
// tests.
//
// Callbacks may run inside munmap/free (patch source), so the recorder uses
// atomics only: no locks, no allocation. Pairing is checked per thread with a
// small fixed stack.
#ifndef REGCACHE_TESTS_NOTIFIER_TEST_UTIL_H_
#define REGCACHE_TESTS_NOTIFIER_TEST_UTIL_H_

#include <regcache/notifier.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "notifier/address_space.h"

namespace regcache::notifier::testing {

inline size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// Records what it is told. Errors (end without start, callback after release,
// ...) are counted in `errors` and checked by the tests.
class Recorder {
 public:
  static const regcache_notifier_ops_t kOps;

  // Only events overlapping [watch_lo, watch_hi) are counted in hits/covered (a
  // whole-space subscriber sees the test harness's own unmaps too).
  void Watch(const void *p, size_t len) {
    watch_lo.store(reinterpret_cast<uintptr_t>(p));
    watch_hi.store(reinterpret_cast<uintptr_t>(p) + len);
  }

  std::atomic<uint64_t> starts{0}, ends{0}, releases{0}, errors{0};
  std::atomic<uint64_t> hits{0};  // starts overlapping the watched range
  std::atomic<uintptr_t> watch_lo{0}, watch_hi{0};
  std::atomic<uintptr_t> hit_lo{UINTPTR_MAX},
      hit_hi{0};                         // union of overlapping starts
  std::atomic<uint64_t> paired_hits{0};  // ends overlapping the watch
  std::atomic<int> open{0};              // starts minus ends
  std::atomic<bool> released{false};
  std::atomic<bool> no_more_callbacks{
      false};  // set by a test after Unregister returned
  // Optional hook run inside start (tests of nesting, unregister-in-callback,
  // ...).
  void (*on_start)(Recorder *, const void *, size_t) = nullptr;
  void (*on_release)(Recorder *) = nullptr;
  void *user = nullptr;

 private:
  static void Start(void *arg, const void *addr, size_t len);
  static void End(void *arg, const void *addr, size_t len);
  static void Release(void *arg);
};

// Per-thread stack of open ranges, to check that each end matches the latest
// start.
struct OpenRange {
  const Recorder *r;
  uintptr_t a;
  size_t len;
};
inline thread_local OpenRange t_open[64];
inline thread_local int t_nopen = 0;

inline void Recorder::Start(void *arg, const void *addr, size_t len) {
  auto *r = static_cast<Recorder *>(arg);
  if (r->released.load() || r->no_more_callbacks.load()) r->errors.fetch_add(1);
  r->starts.fetch_add(1);
  r->open.fetch_add(1);
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (a < r->watch_hi.load() && r->watch_lo.load() < a + len) {
    r->hits.fetch_add(1);
    uintptr_t lo = r->hit_lo.load();
    while (a < lo && !r->hit_lo.compare_exchange_weak(lo, a)) {
    }
    uintptr_t hi = r->hit_hi.load();
    while (a + len > hi && !r->hit_hi.compare_exchange_weak(hi, a + len)) {
    }
  }
  if (t_nopen < 64) t_open[t_nopen] = {r, a, len};
  ++t_nopen;
  if (r->on_start != nullptr) r->on_start(r, addr, len);
}

inline void Recorder::End(void *arg, const void *addr, size_t len) {
  auto *r = static_cast<Recorder *>(arg);
  if (r->released.load() || r->no_more_callbacks.load()) r->errors.fetch_add(1);
  uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  // The innermost open range of this recorder on this thread must be this one.
  bool found = false;
  for (int i = (t_nopen < 64 ? t_nopen : 64) - 1; i >= 0; --i) {
    if (t_open[i].r == r) {
      found = t_open[i].a == a && t_open[i].len == len;
      // remove entry i
      for (int j = i; j + 1 < t_nopen && j + 1 < 64; ++j)
        t_open[j] = t_open[j + 1];
      --t_nopen;
      break;
    }
  }
  if (!found) r->errors.fetch_add(1);
  if (r->open.fetch_sub(1) <= 0) r->errors.fetch_add(1);
  r->ends.fetch_add(1);
  if (a < r->watch_hi.load() && r->watch_lo.load() < a + len)
    r->paired_hits.fetch_add(1);
}

inline void Recorder::Release(void *arg) {
  auto *r = static_cast<Recorder *>(arg);
  if (r->released.exchange(true)) r->errors.fetch_add(1);
  r->releases.fetch_add(1);
  if (r->on_release != nullptr) r->on_release(r);
}

inline const regcache_notifier_ops_t Recorder::kOps = {
    &Recorder::Start, &Recorder::End, &Recorder::Release};

}  // namespace regcache::notifier::testing

#endif  // REGCACHE_TESTS_NOTIFIER_TEST_UTIL_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/thread_annotations.h - clang thread-safety annotations (internal).
//
// With clang and -DREGCACHE_THREAD_SAFETY=ON, -Wthread-safety checks at compile
// time that every REGCACHE_GUARDED_BY field is only touched with its mutex
// held. With other compilers the macros expand to nothing. libstdc++'s
// std::mutex carries no annotations, so the cache uses the annotated Mutex
// below.
#ifndef REGCACHE_REGCACHE_THREAD_ANNOTATIONS_H_
#define REGCACHE_REGCACHE_THREAD_ANNOTATIONS_H_

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

// ThreadSanitizer understands pthread mutexes only: there Mutex stays a
// std::mutex (a futex word would be reported as races everywhere it guards).
#if defined(__SANITIZE_THREAD__)
#define REGCACHE_MUTEX_STD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define REGCACHE_MUTEX_STD 1
#endif
#endif

#if defined(__clang__)
#define REGCACHE_TSA(x) __attribute__((x))
#else
#define REGCACHE_TSA(x)
#endif

#define REGCACHE_CAPABILITY(x) REGCACHE_TSA(capability(x))
#define REGCACHE_SCOPED_CAPABILITY REGCACHE_TSA(scoped_lockable)
#define REGCACHE_GUARDED_BY(x) REGCACHE_TSA(guarded_by(x))
#define REGCACHE_PT_GUARDED_BY(x) REGCACHE_TSA(pt_guarded_by(x))
#define REGCACHE_REQUIRES(...) REGCACHE_TSA(requires_capability(__VA_ARGS__))
#define REGCACHE_EXCLUDES(...) REGCACHE_TSA(locks_excluded(__VA_ARGS__))
#define REGCACHE_ACQUIRE(...) REGCACHE_TSA(acquire_capability(__VA_ARGS__))
#define REGCACHE_RELEASE(...) REGCACHE_TSA(release_capability(__VA_ARGS__))
#define REGCACHE_TRY_ACQUIRE(...) \
  REGCACHE_TSA(try_acquire_capability(__VA_ARGS__))
#define REGCACHE_NO_THREAD_SAFETY_ANALYSIS \
  REGCACHE_TSA(no_thread_safety_analysis)
#define REGCACHE_ASSERT_CAPABILITY(x) REGCACHE_TSA(assert_capability(x))

namespace regcache {

// A mutex with capability annotations. Debug builds (NDEBUG unset) also
// record the owning thread, so that AssertHeld() checks at run time what the
// annotations check at compile time (clang only) -- including in code the
// analysis cannot follow (callbacks, fork handlers).
//
// A futex word (0 free, 1 held, 2 held with sleepers: Drepper, "Futexes Are
// Tricky", mutex 3) rather than pthread_mutex_t: one CAS to lock and one xchg
// to unlock, without pthread's type and elision dispatch (a cache miss takes
// its cache's mutex twice: about 110 of its ~2 000 instructions went to
// pthread_mutex_lock/unlock). Not recursive, no owner checks but AssertHeld's.
// Fork: the word is copied with the memory; the fork handlers that re-create a
// mutex in the child (placement new) reset it to 0 as they did std::mutex.
class REGCACHE_CAPABILITY("mutex") Mutex {
 public:
  void Lock() REGCACHE_ACQUIRE() {
#ifdef REGCACHE_MUTEX_STD
    mu_.lock();
#else
    int c = 0;
    if (!word_.compare_exchange_strong(c, 1, std::memory_order_acquire,
                                       std::memory_order_relaxed)) [[unlikely]]
      LockContended(c);
#endif
    SetOwner();
  }
  void Unlock() REGCACHE_RELEASE() { Release(std::memory_order_release); }
  // Unlock, then a full barrier: a seq_cst load after it is ordered after the
  // release (the unlocking half of a Dekker pair whose other half stores, then
  // fences, then try-locks). The futex word's exchange is itself a seq_cst
  // read-modify-write (one locked instruction where Unlock plus a fence were
  // two); std::mutex's unlock is only a release, so that build fences.
  void UnlockFenced() REGCACHE_RELEASE() { Release(std::memory_order_seq_cst); }
  bool TryLock() REGCACHE_TRY_ACQUIRE(true) {
#ifdef REGCACHE_MUTEX_STD
    if (!mu_.try_lock()) return false;
#else
    int c = 0;
    if (!word_.compare_exchange_strong(c, 1, std::memory_order_acquire,
                                       std::memory_order_relaxed))
      return false;
#endif
    SetOwner();
    return true;
  }
  // Aborts (debug builds) unless the calling thread holds this mutex; tells
  // the analysis that it does.
  void AssertHeld() const REGCACHE_ASSERT_CAPABILITY(this) {
#ifndef NDEBUG
    if (owner_.load(std::memory_order_relaxed) != pthread_self()) {
      std::fputs("[regcache] invariant broken: mutex not held by caller\n",
                 stderr);
      std::abort();
    }
#endif
  }

 private:
  // Unlock with the futex word's exchange at `order` (release or seq_cst;
  // std::mutex builds fence after a seq_cst one).
  void Release(std::memory_order order) REGCACHE_RELEASE() {
    ClearOwner();
#ifdef REGCACHE_MUTEX_STD
    mu_.unlock();
    if (order == std::memory_order_seq_cst)
      std::atomic_thread_fence(std::memory_order_seq_cst);
#else
    if (word_.exchange(0, order) == 2) [[unlikely]]
      Futex(FUTEX_WAKE_PRIVATE, 1);
#endif
  }
#ifndef NDEBUG
  // pthread_self() of the holder, 0 when free. Written only by the holder;
  // read by AssertHeld (equal only if the reader is the holder).
  void SetOwner() { owner_.store(pthread_self(), std::memory_order_relaxed); }
  void ClearOwner() { owner_.store(pthread_t{}, std::memory_order_relaxed); }
  std::atomic<pthread_t> owner_{};
#else
  void SetOwner() {}
  void ClearOwner() {}
#endif
#ifdef REGCACHE_MUTEX_STD
  std::mutex mu_;
#else
  // Sleeps until the holder's Unlock wakes it (FUTEX_WAIT returns at once when
  // the word is no longer 2, and on a signal: the loop re-checks). Bounded by
  // the holder's critical section: every Mutex's lock rule keeps blocking calls
  // out from under it. errno is kept (hooks and callbacks may take a mutex).
  __attribute__((noinline, cold)) void LockContended(int c) {
    const int saved = errno;
    if (c != 2) c = word_.exchange(2, std::memory_order_acquire);
    while (c != 0) {
      Futex(FUTEX_WAIT_PRIVATE, 2);
      c = word_.exchange(2, std::memory_order_acquire);
    }
    errno = saved;
  }
  void Futex(int op, int val) {
    const int saved = errno;
    syscall(SYS_futex, reinterpret_cast<int *>(&word_), op, val, nullptr,
            nullptr, 0);
    errno = saved;
  }
  static_assert(sizeof(std::atomic<int>) == sizeof(int) &&
                std::atomic<int>::is_always_lock_free);
  std::atomic<int> word_{0};
#endif
};

class REGCACHE_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex *mu) REGCACHE_ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() REGCACHE_RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock &) = delete;
  MutexLock &operator=(const MutexLock &) = delete;

 private:
  Mutex *mu_;
};

}  // namespace regcache

#endif  // REGCACHE_REGCACHE_THREAD_ANNOTATIONS_H_

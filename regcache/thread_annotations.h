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

#include <pthread.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

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

// std::mutex with capability annotations. Debug builds (NDEBUG unset) also
// record the owning thread, so that AssertHeld() checks at run time what the
// annotations check at compile time (clang only) -- including in code the
// analysis cannot follow (callbacks, fork handlers).
class REGCACHE_CAPABILITY("mutex") Mutex {
 public:
  void Lock() REGCACHE_ACQUIRE() {
    mu_.lock();
    SetOwner();
  }
  void Unlock() REGCACHE_RELEASE() {
    ClearOwner();
    mu_.unlock();
  }
  bool TryLock() REGCACHE_TRY_ACQUIRE(true) {
    if (!mu_.try_lock()) return false;
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
  std::mutex mu_;
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

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

namespace regcache {

// std::mutex with capability annotations.
class REGCACHE_CAPABILITY("mutex") Mutex {
 public:
  void Lock() REGCACHE_ACQUIRE() { mu_.lock(); }
  void Unlock() REGCACHE_RELEASE() { mu_.unlock(); }
  bool TryLock() REGCACHE_TRY_ACQUIRE(true) { return mu_.try_lock(); }

 private:
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

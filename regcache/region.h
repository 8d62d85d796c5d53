/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/region.h - one cached registration and its packed atomic word.
//
// INVARIANT (the region word, `word`):
//   bits 63..32 generation | bit 31 valid | bit 30 accessed | 29..0 references
// - valid <=> the region is in its cache's index (set at publication, cleared
//   with a generation bump when it leaves: invalidation, eviction, merge).
// - the generation only grows (mod 2^32) and changes exactly when the region
//   leaves the index or its word is reset (destroy), so a stale pointer plus
//   the generation it was seen with never takes a reference on a later
//   incarnation.
// - references count the users' gets not yet put; a region with references is
//   never deregistered nor recycled.
// LOCK RULE: `word`, `last_use` and `evict_saved` are atomics any thread may
// touch (the hit path holds no lock). Every other field is written only by the
// thread that owns the region exclusively (allocation until publication, or
// after it left the index with no references) or under the owning cache's
// mutex, and is immutable while the region is valid.
#ifndef REGCACHE_REGCACHE_REGION_H_
#define REGCACHE_REGCACHE_REGION_H_

#include <atomic>
#include <cstdint>

#include "regcache/dcheck.h"
#include "regcache/driver_port.h"

namespace regcache::core {

class CacheCore;

struct alignas(64) CachedRegion {
  std::atomic<uint64_t> word{0};
  CacheCore *cache = nullptr;
  uintptr_t start = 0;  // page-aligned
  uintptr_t end = 0;    // page-aligned, exclusive
  unsigned access = 0;
  // The index's heap key (region_index.h): drawn once per slab slot when the
  // slab carves it, never changed (the index compares it, never recomputes).
  uint32_t prio = 0;
  // Registered by the parent before fork(): this (child) process frees it
  // without a driver call (docs/cache.md "fork"). Under the cache's mutex.
  bool forked = false;
  // Eviction's cold/hot class (regcache/eviction.h); under the cache's mutex.
  uint8_t evict_cold = 0;
  // Set (under the mutex) when the policy kept this region instead of caching
  // a miss; its next hit clears it (lock-free, Touch) and counts for the
  // policy.
  std::atomic<uint8_t> evict_saved{0};
  PortRegistration reg;
  // Index links (regcache/region_index.h).
  CachedRegion *left = nullptr;
  CachedRegion *right = nullptr;
  // CLOCK list / orphan list (prev, next); dead list / slab free list (next).
  CachedRegion *prev = nullptr;
  CachedRegion *next = nullptr;
  // When it was last handed out (CacheCore::Touch): eviction takes the least
  // recently used. Written by every get, also on the lock-free hit path, so
  // atomic; only eviction reads it.
  std::atomic<uint64_t> last_use{0};
  // Host storage (params host_data_bytes; nullptr when 0): allocated zeroed
  // with the region, freed with it; the host's while the region is held.
  void *host = nullptr;

  static constexpr uint64_t kRefMask = (uint64_t{1} << 30) - 1;
  static constexpr uint64_t kAccessed = uint64_t{1} << 30;
  static constexpr uint64_t kValid = uint64_t{1} << 31;
  static constexpr int kGenShift = 32;
  static uint32_t Gen(uint64_t w) {
    return static_cast<uint32_t>(w >> kGenShift);
  }
  static uint64_t Refs(uint64_t w) { return w & kRefMask; }
  // The word of generation gen, flags and references.
  static uint64_t Word(uint32_t gen, uint64_t flags, uint64_t refs) {
    return (static_cast<uint64_t>(gen) << kGenShift) | flags | refs;
  }

  // Publication into the index, held once by the publishing thread: valid,
  // one reference. REQUIRES: owned exclusively (not valid, no references).
  uint64_t PublishHeld() {
    const uint64_t w = word.load(std::memory_order_relaxed);
    REGCACHE_DCHECK(!(w & kValid) && Refs(w) == 0,
                    "a region is published once, unreferenced");
    const uint64_t nw = Word(Gen(w), kValid, 1);
    word.store(nw, std::memory_order_release);
    return nw;
  }
  // Handed out without the index (an orphan: uncached, refused by the
  // policy): not valid, one reference; its last put deregisters it.
  uint64_t HandOutOrphan() {
    const uint64_t w = word.load(std::memory_order_relaxed);
    REGCACHE_DCHECK(!(w & kValid) && Refs(w) == 0,
                    "an orphan is handed out once, unreferenced");
    const uint64_t nw = Word(Gen(w), 0, 1);
    word.store(nw, std::memory_order_release);
    return nw;
  }
  // Leaves the index: generation bump, valid and accessed cleared, references
  // kept. Returns the word before. REQUIRES: valid (in the index).
  uint64_t Retire() {
    uint64_t w = word.load(std::memory_order_relaxed);
    uint64_t nw;
    do {
      REGCACHE_DCHECK(w & kValid, "only an indexed (valid) region retires");
      nw = Word(Gen(w) + 1, 0, Refs(w));
    } while (!word.compare_exchange_weak(w, nw, std::memory_order_acq_rel,
                                         std::memory_order_relaxed));
    return w;
  }
  // Forgets every reference (destroy, or a parent's region in a fork child):
  // a later put is reported as a double put, never applied to a recycled
  // region.
  void ResetWord() {
    const uint64_t w = word.load(std::memory_order_relaxed);
    word.store(Word(Gen(w) + 1, 0, 0), std::memory_order_release);
  }
  // One more reference if valid and generation gen (gen < 0: any), setting
  // the accessed bit. The hit path's CAS. Returns the new word or 0.
  uint64_t TryRef(int64_t gen) {
    uint64_t w = word.load(std::memory_order_relaxed);
    while ((w & kValid) && Refs(w) < kRefMask &&
           (gen < 0 || Gen(w) == static_cast<uint32_t>(gen))) {
      const uint64_t nw = (w + 1) | kAccessed;
      if (word.compare_exchange_weak(w, nw, std::memory_order_acquire,
                                     std::memory_order_relaxed))
        return nw;
    }
    return 0;
  }
};
static_assert(sizeof(CachedRegion) <= 128,
              "a cached region must cost at most 128 bytes");

}  // namespace regcache::core

#endif  // REGCACHE_REGCACHE_REGION_H_

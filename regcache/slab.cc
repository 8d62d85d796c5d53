// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/slab.h"

#include <sys/mman.h>

#include <new>

#include "regcache/region_index.h"

namespace regcache::core {

Slab &Slab::Get() {
  static Slab *s = new Slab;
  return *s;
}

CachedRegion *Slab::Alloc() {
  MutexLock l(&mu_);
  if (free_ == nullptr && !GrowLocked()) return nullptr;
  CachedRegion *r = free_;
  free_ = r->next;
  r->next = nullptr;
  --nfree_;
  REGCACHE_DCHECK(
      r->cache == nullptr && r->left == nullptr && r->right == nullptr &&
          r->prev == nullptr &&
          CachedRegion::Refs(r->word.load(std::memory_order_relaxed)) == 0 &&
          !(r->word.load(std::memory_order_relaxed) & CachedRegion::kValid),
      "a free slab region is unlinked and unreferenced");
  return r;
}

size_t Slab::AllocBatch(RegionBatch *out, size_t n) {
  MutexLock l(&mu_);
  size_t got = 0;
  for (; got < n; ++got) {
    if (free_ == nullptr && !GrowLocked()) break;
    CachedRegion *r = free_;
    free_ = r->next;
    --nfree_;
    out->Push(r);
  }
  return got;
}

void Slab::Free(CachedRegion *r) {
  REGCACHE_DCHECK(
      CachedRegion::Refs(r->word.load(std::memory_order_relaxed)) == 0 &&
          !(r->word.load(std::memory_order_relaxed) & CachedRegion::kValid),
      "only an unreferenced region that left the index is freed");
  r->left = r->right = r->prev = nullptr;
  r->cache = nullptr;
  r->forked = false;
  MutexLock l(&mu_);
  r->next = free_;
  free_ = r;
  ++nfree_;
}

size_t Slab::Total() {
  MutexLock l(&mu_);
  return total_;
}

size_t Slab::FreeCount() {
  MutexLock l(&mu_);
  return nfree_;
}

bool Slab::GrowLocked() {
  void *p = mmap(nullptr, kChunk, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  auto *regions = static_cast<CachedRegion *>(p);
  const size_t n = kChunk / sizeof(CachedRegion);
  for (size_t i = 0; i < n; ++i) {
    CachedRegion *r = new (&regions[i]) CachedRegion;
    r->prio = RegionIndex::DrawPriority(r);
    r->next = free_;
    free_ = r;
  }
  total_ += n;
  nfree_ += n;
  return true;
}

size_t SlabRegionsAllocated() { return Slab::Get().Total(); }
size_t SlabRegionsFree() { return Slab::Get().FreeCount(); }

}  // namespace regcache::core

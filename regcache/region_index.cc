// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/region_index.h"

#include <fmt/format.h>

#include "regcache/page.h"

namespace regcache::core {

uint32_t RegionIndex::DrawPriority(const CachedRegion *r) {
  uint64_t x = reinterpret_cast<uintptr_t>(r);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

void RegionIndex::Split(CachedRegion *t, uintptr_t key, CachedRegion **l,
                        CachedRegion **r) {
  if (t == nullptr) {
    *l = *r = nullptr;
  } else if (t->start < key) {
    Split(t->right, key, &t->right, r);
    *l = t;
  } else {
    Split(t->left, key, l, &t->left);
    *r = t;
  }
}

CachedRegion *RegionIndex::Merge(CachedRegion *a, CachedRegion *b) {
  if (a == nullptr) return b;
  if (b == nullptr) return a;
  if (a->prio > b->prio) {
    a->right = Merge(a->right, b);
    return a;
  }
  b->left = Merge(a, b->left);
  return b;
}

void RegionIndex::Insert(CachedRegion *r) {
  REGCACHE_DCHECK(
      r->start < r->end && FirstOverlap(r->start, r->end) == nullptr,
      "indexed regions are non-empty and do not overlap");
  // Down to where r's priority belongs, then split that subtree around r:
  // O(depth), each node's key read once.
  CachedRegion **link = &root_;
  while (*link != nullptr && (*link)->prio > r->prio)
    link = r->start < (*link)->start ? &(*link)->left : &(*link)->right;
  Split(*link, r->start, &r->left, &r->right);
  *link = r;
  ++count_;
  bytes_ += r->end - r->start;
  ++inserts_;
  DebugCheck();
}

void RegionIndex::Erase(CachedRegion *r) {
  // Starts are unique (regions do not overlap): the search ends at r.
  CachedRegion **link = &root_;
  while (*link != r) {
    REGCACHE_DCHECK(*link != nullptr, "an erased region is indexed");
    link = r->start < (*link)->start ? &(*link)->left : &(*link)->right;
  }
  *link = Merge(r->left, r->right);
  r->left = r->right = nullptr;
  --count_;
  bytes_ -= r->end - r->start;
  DebugCheck();
}

CachedRegion *RegionIndex::Floor(uintptr_t key) const {
  CachedRegion *best = nullptr;
  for (CachedRegion *t = root_; t;) {
    if (t->start <= key) {
      best = t;
      t = t->right;
    } else {
      t = t->left;
    }
  }
  return best;
}

CachedRegion *RegionIndex::LowerBound(uintptr_t key) const {
  CachedRegion *best = nullptr;
  for (CachedRegion *t = root_; t;) {
    if (t->start >= key) {
      best = t;
      t = t->left;
    } else {
      t = t->right;
    }
  }
  return best;
}

CachedRegion *RegionIndex::FirstOverlap(uintptr_t start, uintptr_t end) const {
  // Floor(start) and LowerBound(start) in one descent (every miss asks: one
  // walk of ~20 levels at 16 384 regions instead of two): the search path for
  // start passes both. A region starting at start is both, and overlaps.
  CachedRegion *floor = nullptr, *above = nullptr;
  for (CachedRegion *t = root_; t;) {
    if (t->start <= start) {
      floor = t;
      if (t->start == start) break;
      t = t->right;
    } else {
      above = t;  // the least start > start seen so far
      t = t->left;
    }
  }
  if (floor && floor->end > start) return floor;
  // floor->start < start here, so the least start >= start is `above`.
  if (above && above->start < end) return above;
  return nullptr;
}

CachedRegion *RegionIndex::FindCovering(uintptr_t start, uintptr_t end,
                                        unsigned access) const {
  CachedRegion *r = Floor(start);
  if (r && r->end >= end && (access & ~r->access) == 0) return r;
  return nullptr;
}

namespace {
// In-order walk. Recursive: the depth is expected O(log n) and bounded below
// by a cycle guard.
struct Walk {
  const void *owner;
  size_t n = 0, bytes = 0;
  const CachedRegion *prev = nullptr;  // in-order predecessor
  std::string err;

  void Visit(const CachedRegion *t, uint64_t parent_prio, int depth) {
    if (t == nullptr || !err.empty()) return;
    if (depth > 4096) {
      err = "depth over 4096: a cycle or a degenerate tree";
      return;
    }
    const uint64_t prio = t->prio;
    if (prio > parent_prio || prio != RegionIndex::DrawPriority(t)) {
      err = fmt::format(
          "heap order: region 0x{:x} above its parent, or its key changed",
          t->start);
      return;
    }
    Visit(t->left, prio, depth + 1);
    if (!err.empty()) return;
    const uintptr_t pg = page::Size() - 1;
    const uint64_t w = t->word.load(std::memory_order_relaxed);
    if (t->start >= t->end || (t->start & pg) ||
        ((t->end & pg) && t->end != UINTPTR_MAX))
      err = fmt::format("region [0x{:x}, 0x{:x}) empty or not page-aligned",
                        t->start, t->end);
    else if (prev && prev->end > t->start)
      err = fmt::format("order/overlap: [0x{:x}, 0x{:x}) then [0x{:x}, 0x{:x})",
                        prev->start, prev->end, t->start, t->end);
    else if (!(w & CachedRegion::kValid))
      err = fmt::format("indexed region 0x{:x} is not valid", t->start);
    else if (owner && static_cast<const void *>(t->cache) != owner)
      err = fmt::format("indexed region 0x{:x} of another cache", t->start);
    if (!err.empty()) return;
    prev = t;
    ++n;
    bytes += t->end - t->start;
    Visit(t->right, prio, depth + 1);
  }
};
}  // namespace

std::string RegionIndex::Check(const void *owner) const {
  Walk w{owner, 0, 0, nullptr, {}};
  w.Visit(root_, UINT64_MAX, 0);
  if (!w.err.empty()) return w.err;
  if (w.n != count_ || w.bytes != bytes_)
    return fmt::format("count/bytes {}/{} but the tree holds {}/{}", count_,
                       bytes_, w.n, w.bytes);
  return "";
}

void RegionIndex::DebugCheck() const {
#if REGCACHE_DCHECK_IS_ON
  if (count_ < kCheckBelow) {
    const std::string err = Check();
    REGCACHE_DCHECK(err.empty(), err.c_str());
  }
#endif
}

}  // namespace regcache::core

// SPDX-License-Identifier: BSD-3-Clause
// The region index (regcache/region_index.h) and the cache's invariant walker:
// random inserts, erases and invalidations against a std::map model, the
// walker called after every step; a corrupted tree is reported (the walker's
// negative control); a real cache stays consistent under random gets, puts,
// merges, evictions, munmaps and regcache_invalidate.
#include <gtest/gtest.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <sys/mman.h>

#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "regcache/cache.h"
#include "regcache/page.h"
#include "regcache/region_index.h"
#include "tests/regcache/test_driver.h"

namespace {

using regcache::core::CacheCore;
using regcache::core::CachedRegion;
using regcache::core::RegionIndex;
namespace page = regcache::page;

class RegionIndexTest : public ::testing::Test {
 protected:
  static constexpr int kPool = 512;
  static constexpr uintptr_t kBase = uintptr_t{1} << 40;

  void SetUp() override { pool_ = std::make_unique<CachedRegion[]>(kPool); }

  // A free pool slot published as valid with [start, end).
  CachedRegion *Make(uintptr_t start, uintptr_t end, unsigned access = 0) {
    for (int i = 0; i < kPool; ++i) {
      CachedRegion *r = &pool_[i];
      if (in_.count(r)) continue;
      r->start = start;
      r->end = end;
      r->access = access;
      r->prio = RegionIndex::DrawPriority(r);  // as the slab does
      r->word.store(CachedRegion::Word(static_cast<uint32_t>(i),
                                       CachedRegion::kValid, 0));
      return r;
    }
    return nullptr;
  }
  void Insert(CachedRegion *r) {
    idx_.Insert(r);
    in_.insert(r);
    model_[r->start] = r;
  }
  void Erase(CachedRegion *r) {
    idx_.Erase(r);
    in_.erase(r);
    model_.erase(r->start);
  }
  CachedRegion *ModelFirstOverlap(uintptr_t s, uintptr_t e) {
    for (auto &[k, r] : model_)
      if (r->start < e && s < r->end) return r;
    return nullptr;
  }
  // Every query agrees with the model, and the walker finds nothing.
  void Verify(const std::string &step) {
    ASSERT_EQ(idx_.Check(), "") << step;
    ASSERT_EQ(idx_.count(), model_.size()) << step;
    for (int q = 0; q < 8; ++q) {
      const uintptr_t s = kBase + rng_() % 600 * page::Size();
      const uintptr_t e = s + (1 + rng_() % 6) * page::Size();
      auto it = model_.upper_bound(s);
      CachedRegion *floor =
          it == model_.begin() ? nullptr : std::prev(it)->second;
      auto lb = model_.lower_bound(s);
      ASSERT_EQ(idx_.Floor(s), floor) << step;
      ASSERT_EQ(idx_.LowerBound(s), lb == model_.end() ? nullptr : lb->second)
          << step;
      ASSERT_EQ(idx_.FirstOverlap(s, e), ModelFirstOverlap(s, e)) << step;
      CachedRegion *cover = floor && floor->end >= e ? floor : nullptr;
      ASSERT_EQ(idx_.FindCovering(s, e, 0), cover) << step;
    }
  }

  std::unique_ptr<CachedRegion[]> pool_;
  RegionIndex idx_;
  std::set<CachedRegion *> in_;
  std::map<uintptr_t, CachedRegion *> model_;
  std::mt19937_64 rng_{20261130};
};

TEST_F(RegionIndexTest, RandomInsertEraseInvalidateKeepsTheInvariant) {
  for (int step = 0; step < 20000; ++step) {
    const uintptr_t s = kBase + rng_() % 600 * page::Size();
    const uintptr_t e = s + (1 + rng_() % 8) * page::Size();
    const int op = static_cast<int>(rng_() % 10);
    if (op < 5) {  // insert where free
      if (ModelFirstOverlap(s, e) == nullptr)
        if (CachedRegion *r = Make(s, e)) Insert(r);
    } else if (op < 8) {  // erase one
      if (!model_.empty()) {
        auto it = model_.begin();
        std::advance(it, static_cast<long>(rng_() % model_.size()));
        Erase(it->second);
      }
    } else {  // invalidate a range: everything overlapping leaves
      const uintptr_t ie = s + (1 + rng_() % 64) * page::Size();
      while (CachedRegion *r = idx_.FirstOverlap(s, ie)) Erase(r);
      ASSERT_EQ(ModelFirstOverlap(s, ie), nullptr);
    }
    Verify("step " + std::to_string(step));
    if (HasFatalFailure()) return;
  }
  while (!model_.empty()) Erase(model_.begin()->second);
  EXPECT_TRUE(idx_.empty());
  EXPECT_EQ(idx_.bytes(), 0u);
}

// Negative control: the walker reports each kind of corruption.
TEST_F(RegionIndexTest, CheckReportsACorruptedIndex) {
  for (int i = 0; i < 32; ++i) {
    CachedRegion *r =
        Make(kBase + 4 * i * page::Size(), kBase + (4 * i + 2) * page::Size());
    Insert(r);
  }
  ASSERT_EQ(idx_.Check(), "");
  CachedRegion *a = model_.begin()->second;
  CachedRegion *b = std::next(model_.begin())->second;
  // Overlap: a grows into b.
  const uintptr_t a_end = a->end;
  a->end = b->start + page::Size();
  EXPECT_NE(idx_.Check(), "");
  a->end = a_end;
  ASSERT_EQ(idx_.Check(), "");
  // Not valid while indexed.
  const uint64_t w = b->word.load();
  b->word.store(w & ~CachedRegion::kValid);
  EXPECT_NE(idx_.Check(), "");
  b->word.store(w);
  // Not page-aligned.
  b->start += 1;
  EXPECT_NE(idx_.Check(), "");
  b->start -= 1;
  // Out of order: swap two ranges without re-linking.
  std::swap(a->start, b->start);
  std::swap(a->end, b->end);
  EXPECT_NE(idx_.Check(), "");
  std::swap(a->start, b->start);
  std::swap(a->end, b->end);
  // A node lost from the tree (count says otherwise).
  CachedRegion *root = idx_.root();
  CachedRegion *child = root->left ? root->left : root->right;
  ASSERT_NE(child, nullptr);
  CachedRegion *saved_l = root->left, *saved_r = root->right;
  if (root->left)
    root->left = nullptr;
  else
    root->right = nullptr;
  EXPECT_NE(idx_.Check(), "");
  root->left = saved_l;
  root->right = saved_r;
  EXPECT_EQ(idx_.Check(), "");
  // Another cache's region.
  EXPECT_NE(idx_.Check(reinterpret_cast<void *>(0x1)), "");
}

// A real cache: the invariant walker after every random operation.
TEST(CacheInvariantTest, RandomGetsPutsUnmapsAndInvalidations) {
  ASSERT_EQ(regcache_config_set("MONITOR", "none"), 0);
  regcache::testing::TestDriver *td = nullptr;
  regcache_driver_t *drv = regcache::testing::NewTestDriver(&td);
  regcache_params_t p = {};
  p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MERGE_MAX_BYTES;
  p.max_regions = 48;  // evictions happen
  p.merge_max_bytes = 16 * page::Size();
  regcache_t *c = nullptr;
  ASSERT_EQ(regcache_create(drv, &p, &c), 0);
  CacheCore *core = reinterpret_cast<CacheCore *>(c);
  const size_t kPages = 512;
  char *arena = static_cast<char *>(mmap(nullptr, kPages * page::Size(),
                                         PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(arena, MAP_FAILED);
  std::mt19937_64 rng(7);
  std::vector<regcache_region_t *> held;
  for (int step = 0; step < 20000; ++step) {
    const size_t first = rng() % (kPages - 8);
    const size_t off = rng() % page::Size();
    const size_t len = 1 + rng() % (6 * page::Size());
    char *a = arena + first * page::Size() + off;
    const int op = static_cast<int>(rng() % 16);
    if (op < 9) {
      regcache_region_t *r = nullptr;
      const int rc =
          regcache_get(c, a, len, static_cast<unsigned>(rng() % 4), &r);
      ASSERT_EQ(rc, 0) << regcache_strerror(rc);
      held.push_back(r);
      if (held.size() > 24 || rng() % 2) {
        const size_t i = rng() % held.size();
        regcache_put(c, held[i]);
        held.erase(held.begin() + static_cast<long>(i));
      }
    } else if (op < 12) {
      // An unmap (explicit source: the host reports it), then new memory.
      char *u = arena + first * page::Size();
      const size_t ulen = (1 + rng() % 8) * page::Size();
      ASSERT_EQ(regcache_notify_unmapped(u, ulen), 0);
    } else if (op < 14) {
      ASSERT_GE(regcache_invalidate(c, a, len), 0);
    } else if (op < 15) {
      regcache_flush(c);
    } else if (!held.empty()) {
      regcache_put(c, held.back());
      held.pop_back();
    }
    ASSERT_EQ(core->CheckInvariants(), "") << "step " << step;
  }
  for (regcache_region_t *r : held) regcache_put(c, r);
  ASSERT_EQ(core->CheckInvariants(), "");
  regcache_destroy(c);
  regcache_driver_close(drv);
  munmap(arena, kPages * page::Size());
}

}  // namespace

/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/cost_model.h - what a registration costs: the one cost model of the
// project (internal; header-only, constexpr).
//
// cost(len) = a + b * pages, separately for registration (ibv_reg_mr) and
// deregistration (ibv_dereg_mr), pages = 4 KiB pages of the page-aligned
// range. The points are the rxe guest's measurements (docs/rxe-guest.md of the
// shared docs, "reg_mr timing": medians, the middle of the range seen over
// several boots); the fit is a least-squares line with relative weights
// (1/y^2), so that the small sizes, which a cache sees most, are not drowned
// by the 64 MiB point. Both the eviction policy (regcache/eviction.cc: which
// region is worth keeping) and regcache-bench (modeled registration time per
// workload, printed with the points and the fit) use this header and nothing
// else.
#ifndef REGCACHE_REGCACHE_COST_MODEL_H_
#define REGCACHE_REGCACHE_COST_MODEL_H_

#include <cstddef>
#include <cstdint>

namespace regcache::cost {

struct Point {
  uint64_t pages;  // 4 KiB pages
  double us;       // measured, microseconds
};

// ibv_reg_mr / ibv_dereg_mr in the rxe guest (QEMU TCG, soft-RoCE), median of
// 20 calls per size, range over 7 boots: 4 KiB 33-64 / 9-23 us, 64 KiB 39-80 /
// 12-30, 1 MiB 90-189 / 30-65, 16 MiB 401-577 / 56-103, 64 MiB 1250-2100 /
// 81-180. Each point is the middle of its range.
inline constexpr Point kRegPoints[] = {
    {1, 48.5}, {16, 59.5}, {256, 139.5}, {4096, 489.0}, {16384, 1675.0}};
inline constexpr Point kDeregPoints[] = {
    {1, 16.0}, {16, 21.0}, {256, 47.5}, {4096, 79.5}, {16384, 130.5}};

struct Line {
  double a_us;  // fixed cost per call
  double b_us;  // per 4 KiB page
  constexpr double At(uint64_t pages) const {
    return a_us + b_us * static_cast<double>(pages);
  }
};

// Weighted least squares: minimizes sum ((a + b x - y) / y)^2.
template <size_t N>
constexpr Line Fit(const Point (&p)[N]) {
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const Point &q : p) {
    const double w = 1.0 / (q.us * q.us);
    const double x = static_cast<double>(q.pages);
    sw += w;
    sx += w * x;
    sy += w * q.us;
    sxx += w * x * x;
    sxy += w * x * q.us;
  }
  const double b = (sw * sxy - sx * sy) / (sw * sxx - sx * sx);
  return Line{(sy - b * sx) / sw, b};
}

inline constexpr Line kReg = Fit(kRegPoints);
inline constexpr Line kDereg = Fit(kDeregPoints);

constexpr uint64_t Pages(size_t len) { return (len + 4095) / 4096; }
// Modeled cost of registering / deregistering len bytes, microseconds.
constexpr double RegUs(size_t len) { return kReg.At(Pages(len)); }
constexpr double DeregUs(size_t len) { return kDereg.At(Pages(len)); }
// What a miss on a region of len bytes costs that a hit does not: the
// registration, and the deregistration it eventually brings.
constexpr double MissUs(size_t len) { return RegUs(len) + DeregUs(len); }

static_assert(kReg.a_us > 0 && kReg.b_us > 0 && kDereg.a_us > 0 &&
                  kDereg.b_us > 0,
              "the fit must give positive costs");

}  // namespace regcache::cost

#endif  // REGCACHE_REGCACHE_COST_MODEL_H_

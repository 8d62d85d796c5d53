/* SPDX-License-Identifier: BSD-3-Clause */
// drivers/verbs/verbs_driver.h - the libibverbs driver (internal).
//
// The public entry points are in include/regcache/verbs.h; this header lets C++
// tests (tests/drivers/verbs, tests/rxe) open a driver with tighter limits than
// the device's so the max_mr / max_mr_size paths can be exercised without
// exhausting real hardware.
#ifndef REGCACHE_DRIVERS_VERBS_VERBS_DRIVER_H_
#define REGCACHE_DRIVERS_VERBS_VERBS_DRIVER_H_

#include <infiniband/verbs.h>
#include <regcache/regcache.h>

#include <cstdint>

namespace regcache::verbs {

enum class OdpMode {
  kAuto = 0,
  kOn = 1,
  kOff = 2
};  // order of the REGCACHE_ODP choices

struct Options {
  // 0: the device's value. Otherwise min(device, this).
  uint64_t max_mr_size = 0;
  uint64_t max_mr = 0;
  // true: use `odp` instead of REGCACHE_ODP.
  bool odp_override = false;
  OdpMode odp = OdpMode::kAuto;
};

// regcache_driver_verbs_open with options. Same errors.
int Open(ibv_pd *pd, const Options &options, regcache_driver_t **driver_p);

// Maps REGCACHE_ACCESS_* to IBV_ACCESS_* (without ON_DEMAND). Exposed for
// tests.
int AccessFlags(unsigned access);

// True when the RC ODP caps cover every access the cache may ask for.
bool OdpCapsSufficient(const ibv_odp_caps &caps);

}  // namespace regcache::verbs

#endif  // REGCACHE_DRIVERS_VERBS_VERBS_DRIVER_H_

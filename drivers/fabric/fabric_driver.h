/* SPDX-License-Identifier: BSD-3-Clause */
// drivers/fabric/fabric_driver.h - the libfabric driver (internal).
//
// The public entry points are in include/regcache/fabric.h; this header exposes
// the pieces C++ tests check directly (access mapping, key space).
#ifndef REGCACHE_DRIVERS_FABRIC_FABRIC_DRIVER_H_
#define REGCACHE_DRIVERS_FABRIC_FABRIC_DRIVER_H_

#include <cstddef>
#include <cstdint>

namespace regcache::fabric {

// Maps REGCACHE_ACCESS_* to FI_* access bits for fi_mr_regattr.
uint64_t AccessFlags(unsigned access);

// The first key the driver requests when the provider does not choose keys
// (no FI_MR_PROV_KEY), and the mask of the key space, for a key size in bytes
// (0: unknown, taken as 4 bytes).
uint64_t KeyMask(std::size_t key_size);
uint64_t FirstKey(std::size_t key_size);

}  // namespace regcache::fabric

#endif  // REGCACHE_DRIVERS_FABRIC_FABRIC_DRIVER_H_

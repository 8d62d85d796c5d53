/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/driver_port.h - the driver port: the interface between the cache
// and a registration back-end. It belongs to its consumer, the cache (as UCX's
// ucs_rcache_ops_t and libfabric's ofi_mr.h do); drivers/<name>/ implement it
// and see only it, the services regcache exports to them (log.h, tunables.h,
// thread_annotations.h) and public headers (cmake/layering.txt).
//
// A DriverPort pins and maps memory for one protection domain / fabric domain /
// host context. The cache (regcache/) owns no back-end knowledge; every
// back-end under drivers/<name>/ implements this interface, and the C handle
// regcache_driver_t wraps one.
//
// Thread safety: Register and Deregister may be called concurrently from any
// thread. The cache never calls them while holding its own lock, and never from
// inside a memory-event callback (they may allocate, free and unmap).
//
// Errors: 0 or a negative errno. A driver logs a failure once, naming the
// library call and strerror; the cache does not log it again.
#ifndef REGCACHE_REGCACHE_DRIVER_PORT_H_
#define REGCACHE_REGCACHE_DRIVER_PORT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace regcache {

// What a registration hands back; copied into the cached region.
struct PortRegistration {
  // The driver's object: ibv_mr*, fid_mr*, host record, custom handle.
  void *handle = nullptr;
  uint32_t lkey = 0;
  uint64_t rkey = 0;
  void *desc = nullptr;  // libfabric fi_mr_desc, else nullptr
};

class DriverPort {
 public:
  virtual ~DriverPort() = default;
  // "host", "custom", "verbs", "fabric", or a test driver's name.
  virtual const char *Name() const = 0;
  // Registers [addr, addr+len) (page-aligned by the cache) with
  // REGCACHE_ACCESS_* bits.
  virtual int Register(void *addr, size_t len, unsigned access,
                       PortRegistration *out) = 0;
  // Deregisters what Register returned. Must succeed for memory that is already
  // unmapped.
  virtual int Deregister(const PortRegistration &reg) = 0;
  // True when registrations do not pin (ODP): the hardware follows the page
  // tables. Informational (regcache_driver_verbs_odp): the cache invalidates
  // ODP regions on unmap like pinned ones and does not call this.
  virtual bool OnDemand() const { return false; }
  // Largest single registration the device accepts (max_mr_size). The cache
  // answers a larger get with -EINVAL without calling the driver, and never
  // merges regions into one larger than this.
  virtual size_t MaxRegionBytes() const { return SIZE_MAX; }
};

}  // namespace regcache

// The C handle. Reference-counted: a cache holds a reference, so a driver
// closed while a cache still uses it is freed only when the last cache is
// destroyed.
struct regcache_driver {
  explicit regcache_driver(std::unique_ptr<regcache::DriverPort> d)
      : impl(std::move(d)) {}
  std::unique_ptr<regcache::DriverPort> impl;
  std::atomic<int> refs{1};
  void Ref() { refs.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
};

#endif  // REGCACHE_REGCACHE_DRIVER_PORT_H_

// SPDX-License-Identifier: BSD-3-Clause
// drivers/custom/custom_driver.cc - a driver made of the host's reg/dereg
// callbacks (regcache_driver_custom_open). For transports that bring their own
// registration, as Open MPI's and UCX's rcaches do.
//
// The driver copies the ops table (the first min(ops->size, sizeof(ops)) bytes)
// at open, so a host built against a larger, newer table works, and one built
// against a table smaller than the 0.1 layout is refused. It keeps no mutable
// state: reg and dereg are called concurrently exactly as the cache calls
// Register/Deregister, and thread safety of the callbacks is the host's
// (documented in regcache.h).
#include <regcache/regcache.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

#include "regcache/driver_port.h"
#include "regcache/log.h"

namespace regcache {
namespace {

// The size of the 0.1 table: size, reg, dereg. Later fields are optional.
constexpr size_t kOpsSize01 =
    offsetof(regcache_driver_ops_t, dereg) + sizeof(void *);

// A callback that breaks the contract by returning a positive errno is
// forgiven.
int Normalize(int rc) { return rc > 0 ? -rc : rc; }

class CustomDriver final : public DriverPort {
 public:
  CustomDriver(const regcache_driver_ops_t &ops, void *ctx)
      : ops_(ops), ctx_(ctx) {}

  const char *Name() const override { return "custom"; }

  int Register(void *addr, size_t len, unsigned access,
               PortRegistration *out) override {
    if (out == nullptr) return -EINVAL;
    void *handle = nullptr, *desc = nullptr;
    uint32_t lkey = 0;
    uint64_t rkey = 0;
    int rc = Normalize(
        ops_.reg(ctx_, addr, len, access, &handle, &lkey, &rkey, &desc));
    if (rc != 0) {
      REGCACHE_LOG(ERROR, "custom: reg(region {} len {} access 0x{:x}): {}",
                   addr, len, access, std::strerror(-rc));
      return rc;
    }
    out->handle = handle;
    out->lkey = lkey;
    out->rkey = rkey;
    out->desc = desc;
    return 0;
  }

  int Deregister(const PortRegistration &reg) override {
    int rc = Normalize(ops_.dereg(ctx_, reg.handle));
    if (rc != 0) {
      REGCACHE_LOG(ERROR, "custom: dereg(handle {}): {}", reg.handle,
                   std::strerror(-rc));
    }
    return rc;
  }

 private:
  const regcache_driver_ops_t ops_;
  void *const ctx_;
};

}  // namespace
}  // namespace regcache

extern "C" int regcache_driver_custom_open(const regcache_driver_ops_t *ops,
                                           void *ctx,
                                           regcache_driver_t **driver_p) {
  if (ops == nullptr || driver_p == nullptr) {
    REGCACHE_LOG(ERROR, "custom: regcache_driver_custom_open: NULL {}",
                 ops == nullptr ? "ops" : "driver_p");
    return -EINVAL;
  }
  if (ops->size < regcache::kOpsSize01) {
    REGCACHE_LOG(
        ERROR,
        "custom: regcache_driver_custom_open: ops->size {} is smaller than the "
        "0.1 table ({} bytes): set it to sizeof(regcache_driver_ops_t)",
        ops->size, regcache::kOpsSize01);
    return -EINVAL;
  }
  if (ops->reg == nullptr || ops->dereg == nullptr) {
    REGCACHE_LOG(ERROR,
                 "custom: regcache_driver_custom_open: the {} callback is NULL",
                 ops->reg == nullptr ? "reg" : "dereg");
    return -EINVAL;
  }
  regcache_driver_ops_t copy = {};
  std::memcpy(&copy, ops, std::min(ops->size, sizeof(copy)));
  copy.size = sizeof(copy);
  auto impl = std::unique_ptr<regcache::CustomDriver>(
      new (std::nothrow) regcache::CustomDriver(copy, ctx));
  if (!impl) return -ENOMEM;
  auto *handle = new (std::nothrow) regcache_driver(std::move(impl));
  if (handle == nullptr) return -ENOMEM;
  *driver_p = handle;
  return 0;
}

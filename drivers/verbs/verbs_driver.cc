// SPDX-License-Identifier: BSD-3-Clause
// drivers/verbs/verbs_driver.cc - registration with ibv_reg_mr / ibv_dereg_mr.
//
// Policies (ODP, fork, device limits) are described in include/regcache/verbs.h
// and docs/drivers.md.
#include "drivers/verbs/verbs_driver.h"

#include <regcache/verbs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "regcache/driver_guard.h"
#include "regcache/driver_port.h"
#include "regcache/log.h"
#include "regcache/tunables.h"

namespace regcache::verbs {
namespace {

const char *OdpModeName(OdpMode m) {
  switch (m) {
    case OdpMode::kAuto:
      return "auto";
    case OdpMode::kOn:
      return "on";
    case OdpMode::kOff:
      return "off";
  }
  return "?";
}

// Once per process: on kernels before 5.13 a fork() makes the parent's pinned
// pages copy-on-write, and a parent write then lands in a fresh page the HCA
// never sees. rdma-core avoids that only in fork-safe mode (RDMAV_FORK_SAFE /
// ibv_fork_init).
void CheckForkSafetyOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (ibv_is_fork_initialized() == IBV_FORK_DISABLED) {
      REGCACHE_LOG(
          WARN,
          "verbs: kernel without fork-safe pinning and rdma-core not in "
          "fork-safe "
          "mode: a fork() while regions are registered can corrupt the "
          "parent's "
          "RDMA buffers; set RDMAV_FORK_SAFE=1 before the first verbs call");
    }
  });
}

class VerbsDriver final : public DriverPort {
 public:
  VerbsDriver(ibv_pd *pd, std::string device, uint64_t max_mr_size,
              uint64_t max_mr, bool odp)
      : pd_(pd),
        device_(std::move(device)),
        max_mr_size_(max_mr_size),
        max_mr_(max_mr),
        odp_(odp),
        guard_("verbs", "the device, a PD and a driver") {}

  const char *Name() const override { return "verbs"; }
  bool OnDemand() const override { return odp_; }
  size_t MaxRegionBytes() const override {
    return max_mr_size_ >= SIZE_MAX ? SIZE_MAX
                                    : static_cast<size_t>(max_mr_size_);
  }

  int Register(void *addr, size_t len, unsigned access,
               PortRegistration *out) override {
    if (int rc = guard_.CheckRegister(addr, len, access, out); rc != 0)
      return rc;
    if (len > max_mr_size_) {
      REGCACHE_LOG(ERROR,
                   "verbs: region {} len {} exceeds max_mr_size {} of {}", addr,
                   len, max_mr_size_, device_);
      return -EINVAL;
    }
    // Reserve an MR slot first, so concurrent registrations never exceed
    // max_mr.
    if (live_.fetch_add(1, std::memory_order_relaxed) >= max_mr_) {
      live_.fetch_sub(1, std::memory_order_relaxed);
      // The cache evicts unused regions and retries: warn the first time only.
      if (log::FirstTime(max_mr_logged_)) {
        REGCACHE_LOG(
            WARN,
            "verbs: {} live MRs on {} reached the device's max_mr: -ENOMEM",
            max_mr_, device_);
      } else {
        REGCACHE_LOG(DEBUG, "verbs: max_mr {} reached on {}", max_mr_, device_);
      }
      return -ENOMEM;
    }
    int flags = AccessFlags(access) | (odp_ ? IBV_ACCESS_ON_DEMAND : 0);
    errno = 0;
    ibv_mr *mr = ibv_reg_mr(pd_, addr, len, flags);
    if (mr == nullptr) {
      int err = errno ? errno : ENOMEM;
      live_.fetch_sub(1, std::memory_order_relaxed);
      if (err ==
          ENOMEM) {  // usually RLIMIT_MEMLOCK: the cache evicts and retries
        REGCACHE_LOG(
            WARN, "verbs: ibv_reg_mr(region {} len {} access 0x{:x}) on {}: {}",
            addr, len, flags, device_, std::strerror(err));
      } else {
        REGCACHE_LOG(
            ERROR,
            "verbs: ibv_reg_mr(region {} len {} access 0x{:x}) on {}: {}", addr,
            len, flags, device_, std::strerror(err));
      }
      return -err;
    }
    out->handle = mr;
    out->lkey = mr->lkey;
    out->rkey = mr->rkey;
    out->desc = nullptr;
    return 0;
  }

  int Deregister(const PortRegistration &reg) override {
    auto *mr = static_cast<ibv_mr *>(reg.handle);
    if (mr == nullptr) {
      REGCACHE_LOG(ERROR, "verbs: deregistration of a NULL MR");
      return -EINVAL;
    }
    // The parent's MR (shared uverbs file / domain): leave it alone.
    if (guard_.LeaveParentsRegistration(reg.handle)) return 0;
    void *addr = mr->addr;
    size_t len = mr->length;
    if (int rc = ibv_dereg_mr(mr); rc != 0) {
      REGCACHE_LOG(ERROR, "verbs: ibv_dereg_mr(region {} len {}) on {}: {}",
                   addr, len, device_, std::strerror(rc));
      return -rc;
    }
    live_.fetch_sub(1, std::memory_order_relaxed);
    return 0;
  }

  uint64_t max_mr_size() const { return max_mr_size_; }
  uint64_t max_mr() const { return max_mr_; }
  uint64_t live() const { return live_.load(std::memory_order_relaxed); }

 private:
  ibv_pd *const pd_;
  const std::string device_;
  const uint64_t max_mr_size_;
  const uint64_t max_mr_;
  const bool odp_;
  const DriverGuard guard_;  // Register's prologue, the fork rule
  std::atomic<uint64_t> live_{0};
  std::atomic<bool> max_mr_logged_{false};
};

const VerbsDriver *AsVerbs(const regcache_driver_t *driver) {
  if (driver == nullptr || !driver->impl) return nullptr;
  return dynamic_cast<const VerbsDriver *>(driver->impl.get());
}

}  // namespace

int AccessFlags(unsigned access) {
  int f = 0;
  if (access & REGCACHE_ACCESS_LOCAL_WRITE) f |= IBV_ACCESS_LOCAL_WRITE;
  if (access & REGCACHE_ACCESS_REMOTE_READ) f |= IBV_ACCESS_REMOTE_READ;
  // Verbs rejects remote write / atomic without local write (EINVAL).
  if (access & REGCACHE_ACCESS_REMOTE_WRITE)
    f |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
  if (access & REGCACHE_ACCESS_REMOTE_ATOMIC) {
    f |= IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_LOCAL_WRITE;
  }
  return f;
}

bool OdpCapsSufficient(const ibv_odp_caps &caps) {
  constexpr uint32_t kNeeded = IBV_ODP_SUPPORT_SEND | IBV_ODP_SUPPORT_RECV |
                               IBV_ODP_SUPPORT_WRITE | IBV_ODP_SUPPORT_READ |
                               IBV_ODP_SUPPORT_ATOMIC;
  return (caps.general_caps & IBV_ODP_SUPPORT) &&
         (caps.per_transport_caps.rc_odp_caps & kNeeded) == kNeeded;
}

int Open(ibv_pd *pd, const Options &options, regcache_driver_t **driver_p) {
  if (pd == nullptr || pd->context == nullptr || driver_p == nullptr) {
    REGCACHE_LOG(ERROR, "verbs: regcache_driver_verbs_open: NULL {}",
                 driver_p == nullptr ? "driver_p"
                 : pd == nullptr     ? "pd"
                                     : "pd->context");
    return -EINVAL;
  }
  OdpMode mode = options.odp;
  if (!options.odp_override) {
    int index = 0;
    if (int rc = tunables::GetEnum("ODP", &index); rc != 0)
      return rc;  // logged
    mode = static_cast<OdpMode>(index);
  }
  ibv_context *ctx = pd->context;
  const char *dev = ctx->device ? ibv_get_device_name(ctx->device) : nullptr;
  std::string device = dev ? dev : "?";

  ibv_device_attr_ex attr = {};
  int rc = ibv_query_device_ex(ctx, nullptr, &attr);
  if (rc == EOPNOTSUPP || rc == ENOSYS) {
    attr = {};  // an old provider: no extended attributes, hence no ODP
    rc = ibv_query_device(ctx, &attr.orig_attr);
  }
  if (rc != 0) {
    REGCACHE_LOG(ERROR, "verbs: ibv_query_device_ex({}): {}", device,
                 std::strerror(rc));
    return -rc;
  }
  uint64_t max_mr_size =
      attr.orig_attr.max_mr_size ? attr.orig_attr.max_mr_size : UINT64_MAX;
  uint64_t max_mr = attr.orig_attr.max_mr > 0
                        ? static_cast<uint64_t>(attr.orig_attr.max_mr)
                        : UINT64_MAX;
  if (options.max_mr_size && options.max_mr_size < max_mr_size) {
    max_mr_size = options.max_mr_size;
  }
  if (options.max_mr && options.max_mr < max_mr) max_mr = options.max_mr;

  bool supported = OdpCapsSufficient(attr.odp_caps);
  bool odp = mode != OdpMode::kOff && supported;
  if (mode != OdpMode::kOff && !supported) {
    if (mode == OdpMode::kOn) {
      REGCACHE_LOG(WARN,
                   "verbs: REGCACHE_ODP=on but {} has no RC on-demand paging "
                   "for send, recv, "
                   "write, read and atomic (odp caps 0x{:x}, rc 0x{:x}): "
                   "pinning instead",
                   device, attr.odp_caps.general_caps,
                   attr.odp_caps.per_transport_caps.rc_odp_caps);
    } else {
      REGCACHE_LOG(
          INFO,
          "verbs: {} has no RC on-demand paging (odp caps 0x{:x}, rc 0x{:x}): "
          "pinning",
          device, attr.odp_caps.general_caps,
          attr.odp_caps.per_transport_caps.rc_odp_caps);
    }
  }
  CheckForkSafetyOnce();

  auto impl = std::unique_ptr<VerbsDriver>(
      new (std::nothrow) VerbsDriver(pd, device, max_mr_size, max_mr, odp));
  if (!impl) return -ENOMEM;
  auto *handle = new (std::nothrow) regcache_driver(std::move(impl));
  if (handle == nullptr) return -ENOMEM;
  REGCACHE_LOG(INFO,
               "verbs: driver on {}: max_mr_size {:#x} max_mr {} odp {} "
               "(REGCACHE_ODP={})",
               device, max_mr_size, max_mr, odp ? "on" : "off",
               OdpModeName(mode));
  *driver_p = handle;
  return 0;
}

}  // namespace regcache::verbs

extern "C" {

int regcache_driver_verbs_open(struct ibv_pd *pd,
                               regcache_driver_t **driver_p) {
  return regcache::verbs::Open(pd, regcache::verbs::Options{}, driver_p);
}

int regcache_driver_verbs_odp(const regcache_driver_t *driver, int *enabled_p) {
  const auto *v = regcache::verbs::AsVerbs(driver);
  if (v == nullptr || enabled_p == nullptr) return -EINVAL;
  *enabled_p = v->OnDemand() ? 1 : 0;
  return 0;
}

int regcache_driver_verbs_limits(const regcache_driver_t *driver,
                                 uint64_t *max_mr_size_p, uint64_t *max_mr_p,
                                 uint64_t *live_mrs_p) {
  const auto *v = regcache::verbs::AsVerbs(driver);
  if (v == nullptr) return -EINVAL;
  if (max_mr_size_p) *max_mr_size_p = v->max_mr_size();
  if (max_mr_p) *max_mr_p = v->max_mr();
  if (live_mrs_p) *live_mrs_p = v->live();
  return 0;
}

}  // extern "C"

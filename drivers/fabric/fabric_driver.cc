// SPDX-License-Identifier: BSD-3-Clause
// drivers/fabric/fabric_driver.cc - registration with fi_mr_regattr / fi_close.
//
// mr_mode handling, limits, threading and the fork guard are described in
// include/regcache/fabric.h and docs/drivers.md.
#include "drivers/fabric/fabric_driver.h"

#include <regcache/fabric.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "regcache/driver_guard.h"
#include "regcache/driver_port.h"
#include "regcache/log.h"

namespace regcache::fabric {
namespace {

// Consecutive taken keys tried before giving up with -ENOKEY.
constexpr int kKeyAttempts = 64;

int Neg(int rc) {
  return rc > 0 ? -rc : rc;
}  // libfabric returns -FI_E*; be tolerant

class FabricDriver final : public DriverPort {
 public:
  FabricDriver(fid_domain *domain, fid_ep *ep, uint64_t mr_mode,
               size_t key_size, uint64_t mr_cnt, bool serialize,
               std::string name)
      : domain_(domain),
        ep_(ep),
        mr_mode_(mr_mode),
        key_mask_(KeyMask(key_size)),
        first_key_(FirstKey(key_size)),
        mr_cnt_(mr_cnt),
        serialize_(serialize),
        name_(std::move(name)),
        guard_("fabric", "a fabric, domain and driver") {}

  const char *Name() const override { return "fabric"; }

  int Register(void *addr, size_t len, unsigned access,
               PortRegistration *out) override {
    if (int rc = guard_.CheckRegister(addr, len, access, out); rc != 0)
      return rc;
    if (live_.fetch_add(1, std::memory_order_relaxed) >= mr_cnt_) {
      live_.fetch_sub(1, std::memory_order_relaxed);
      if (log::FirstTime(mr_cnt_logged_)) {
        REGCACHE_LOG(
            WARN,
            "fabric: {} live MRs on {} reached the domain's mr_cnt: -ENOMEM",
            mr_cnt_, name_);
      }
      return -ENOMEM;
    }
    int rc = RegisterLocked(addr, len, access, out);
    if (rc != 0) live_.fetch_sub(1, std::memory_order_relaxed);
    return rc;
  }

  int Deregister(const PortRegistration &reg) override {
    auto *mr = static_cast<fid_mr *>(reg.handle);
    if (mr == nullptr) {
      REGCACHE_LOG(ERROR, "fabric: deregistration of a NULL MR");
      return -EINVAL;
    }
    // The parent's MR (shared uverbs file / domain): leave it alone.
    if (guard_.LeaveParentsRegistration(reg.handle)) return 0;
    int rc;
    {
      std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
      if (serialize_) lock.lock();
      rc = Neg(fi_close(&mr->fid));
    }
    if (rc != 0) {
      REGCACHE_LOG(ERROR, "fabric: fi_close(mr {}) on {}: {}", reg.handle,
                   name_, fi_strerror(-rc));
      return rc;
    }
    live_.fetch_sub(1, std::memory_order_relaxed);
    return 0;
  }

  uint64_t mr_mode() const { return mr_mode_; }

 private:
  int RegisterLocked(void *addr, size_t len, unsigned access,
                     PortRegistration *out) {
    iovec iov = {addr, len};
    fi_mr_attr attr = {};
    attr.mr_iov = &iov;
    attr.iov_count = 1;
    attr.access = AccessFlags(access);
    attr.iface = FI_HMEM_SYSTEM;
    const bool prov_key = (mr_mode_ & FI_MR_PROV_KEY) != 0;

    std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
    if (serialize_) lock.lock();
    fid_mr *mr = nullptr;
    int rc = 0;
    for (int attempt = 0; attempt < kKeyAttempts; ++attempt) {
      if (!prov_key) attr.requested_key = NextKey();
      rc = Neg(fi_mr_regattr(domain_, &attr, 0, &mr));
      if (rc != -FI_ENOKEY || prov_key) break;  // a taken key: try the next one
    }
    if (rc != 0) {
      if (rc == -FI_ENOKEY) {
        REGCACHE_LOG(ERROR,
                     "fabric: fi_mr_regattr(region {} len {}) on {}: {} "
                     "consecutive requested keys were taken: {}",
                     addr, len, name_, kKeyAttempts, fi_strerror(-rc));
      } else {
        if (rc == -FI_ENOMEM) {  // the cache evicts and retries
          REGCACHE_LOG(
              WARN,
              "fabric: fi_mr_regattr(region {} len {} access 0x{:x}) on {}: {}",
              addr, len, attr.access, name_, fi_strerror(-rc));
        } else {
          REGCACHE_LOG(
              ERROR,
              "fabric: fi_mr_regattr(region {} len {} access 0x{:x}) on {}: {}",
              addr, len, attr.access, name_, fi_strerror(-rc));
        }
      }
      return rc;
    }
    if (mr_mode_ & FI_MR_ENDPOINT) {
      rc = Neg(fi_mr_bind(mr, &ep_->fid, 0));
      if (rc != 0) return Fail(mr, "fi_mr_bind", addr, len, rc);
    }
    if (mr_mode_ & (FI_MR_ENDPOINT | FI_MR_RMA_EVENT)) {
      rc = Neg(fi_mr_enable(mr));
      if (rc != 0) return Fail(mr, "fi_mr_enable", addr, len, rc);
    }
    uint64_t key = fi_mr_key(mr);
    if (key == FI_KEY_NOTAVAIL) {
      return Fail(mr, "fi_mr_key (raw keys are not supported)", addr, len,
                  -EOPNOTSUPP);
    }
    out->handle = mr;
    out->lkey = 0;
    out->rkey = key;
    out->desc = fi_mr_desc(mr);
    return 0;
  }

  // REQUIRES: mu_ held if serialize_.
  int Fail(fid_mr *mr, const char *call, void *addr, size_t len, int rc) {
    REGCACHE_LOG(ERROR, "fabric: {}(region {} len {}) on {}: {}", call, addr,
                 len, name_, fi_strerror(-rc));
    fi_close(&mr->fid);
    return rc;
  }

  uint64_t NextKey() {
    for (;;) {
      uint64_t k =
          (first_key_ + next_key_.fetch_add(1, std::memory_order_relaxed)) &
          key_mask_;
      if (k != FI_KEY_NOTAVAIL) return k;
    }
  }

  fid_domain *const domain_;
  fid_ep *const ep_;
  const uint64_t mr_mode_;
  const uint64_t key_mask_;
  const uint64_t first_key_;
  const uint64_t mr_cnt_;
  const bool serialize_;
  const std::string name_;
  const DriverGuard guard_;  // Register's prologue, the fork rule
  std::mutex
      mu_;  // serialises libfabric calls unless the domain is FI_THREAD_SAFE
  std::atomic<uint64_t> next_key_{0};
  std::atomic<uint64_t> live_{0};
  std::atomic<bool> mr_cnt_logged_{false};
};

const FabricDriver *AsFabric(const regcache_driver_t *driver) {
  if (driver == nullptr || !driver->impl) return nullptr;
  return dynamic_cast<const FabricDriver *>(driver->impl.get());
}

}  // namespace

uint64_t AccessFlags(unsigned access) {
  uint64_t f =
      FI_SEND | FI_WRITE;  // local read: source of sends and RMA writes
  constexpr uint64_t kLocalWrite =
      FI_RECV | FI_READ;  // target of receives and RMA reads
  if (access & REGCACHE_ACCESS_LOCAL_WRITE) f |= kLocalWrite;
  if (access & REGCACHE_ACCESS_REMOTE_READ) f |= FI_REMOTE_READ;
  if (access & REGCACHE_ACCESS_REMOTE_WRITE) f |= FI_REMOTE_WRITE | kLocalWrite;
  if (access & REGCACHE_ACCESS_REMOTE_ATOMIC) {
    f |= FI_REMOTE_READ | FI_REMOTE_WRITE | kLocalWrite;
  }
  return f;
}

uint64_t KeyMask(size_t key_size) {
  if (key_size == 0) key_size = 4;
  return key_size >= 8 ? UINT64_MAX : (uint64_t{1} << (8 * key_size)) - 1;
}

// The upper half of the key space: applications that pick keys themselves
// usually count from 0, so collisions (which are retried anyway) stay rare.
uint64_t FirstKey(size_t key_size) { return KeyMask(key_size) / 2 + 1; }

}  // namespace regcache::fabric

extern "C" {

int regcache_driver_fabric_open2(struct fid_domain *domain,
                                 const struct fi_info *info, struct fid_ep *ep,
                                 regcache_driver_t **driver_p) {
  if (domain == nullptr || driver_p == nullptr) {
    REGCACHE_LOG(ERROR, "fabric: regcache_driver_fabric_open: NULL {}",
                 domain == nullptr ? "domain" : "driver_p");
    return -EINVAL;
  }
  uint64_t mr_mode = 0, mr_cnt = UINT64_MAX;
  size_t key_size = 0;
  bool thread_safe = false;
  std::string name = "domain";
  if (info != nullptr && info->domain_attr != nullptr) {
    const fi_domain_attr &d = *info->domain_attr;
    mr_mode = static_cast<unsigned>(d.mr_mode);
    key_size = d.mr_key_size;
    if (d.mr_cnt != 0) mr_cnt = d.mr_cnt;
    thread_safe = d.threading == FI_THREAD_SAFE;
    name = std::string(info->fabric_attr && info->fabric_attr->prov_name
                           ? info->fabric_attr->prov_name
                           : "?") +
           "/" + (d.name ? d.name : "?");
    if (mr_mode & (FI_MR_BASIC | FI_MR_SCALABLE)) {
      REGCACHE_LOG(ERROR,
                   "fabric: {}: legacy mr_mode FI_MR_BASIC/FI_MR_SCALABLE "
                   "(0x{:x}) is not "
                   "supported: open the domain with FI_VERSION(1,5) or later "
                   "mr_mode bits",
                   name, mr_mode);
      return -EOPNOTSUPP;
    }
    if (mr_mode & FI_MR_RAW) {
      REGCACHE_LOG(
          ERROR,
          "fabric: {}: FI_MR_RAW keys are not supported (mr_mode 0x{:x})", name,
          mr_mode);
      return -EOPNOTSUPP;
    }
    if ((mr_mode & FI_MR_ENDPOINT) && ep == nullptr) {
      REGCACHE_LOG(ERROR,
                   "fabric: {}: mr_mode has FI_MR_ENDPOINT: pass the endpoint "
                   "to bind MRs "
                   "to (regcache_driver_fabric_open2)",
                   name);
      return -EINVAL;
    }
  }
  auto impl = std::unique_ptr<regcache::fabric::FabricDriver>(
      new (std::nothrow) regcache::fabric::FabricDriver(
          domain, ep, mr_mode, key_size, mr_cnt, !thread_safe, name));
  if (!impl) return -ENOMEM;
  auto *handle = new (std::nothrow) regcache_driver(std::move(impl));
  if (handle == nullptr) return -ENOMEM;
  REGCACHE_LOG(INFO,
               "fabric: driver on {}: mr_mode 0x{:x} key_size {} mr_cnt {} {}",
               name, mr_mode, key_size, mr_cnt,
               thread_safe ? "thread-safe" : "serialised");
  *driver_p = handle;
  return 0;
}

int regcache_driver_fabric_open(struct fid_domain *domain,
                                regcache_driver_t **driver_p) {
  return regcache_driver_fabric_open2(domain, nullptr, nullptr, driver_p);
}

int regcache_driver_fabric_mr_mode(const regcache_driver_t *driver,
                                   uint64_t *mr_mode_p) {
  const auto *f = regcache::fabric::AsFabric(driver);
  if (f == nullptr || mr_mode_p == nullptr) return -EINVAL;
  *mr_mode_p = f->mr_mode();
  return 0;
}

}  // extern "C"

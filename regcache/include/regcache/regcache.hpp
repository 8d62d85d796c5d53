// SPDX-License-Identifier: BSD-3-Clause
// regcache/regcache.hpp - C++17 API, header-only over the C ABI of
// <regcache/regcache.h>.
//
// No exceptions: every fallible call returns a Status or a Result<T>. The
// library exports only regcache_* C symbols; everything here is inline, so C++
// consumers need no C++ ABI compatibility with the library's build.
//
//   auto drv = regcache::DriverHandle::Host();  // or Custom(make_shared<D>())
//   auto cache = regcache::Cache::Create(*drv);  // Result<Cache>
//   auto region = cache->Get(buf, len, REGCACHE_ACCESS_LOCAL_WRITE);
//   post_send(region->lkey(), ...);  // Result<Region>: ok() checked first
//   // the region puts itself back when destroyed
//
// Thread safety and semantics: as <regcache/regcache.h>. A Cache may outlive
// the DriverHandle it was created on: it keeps what it needs alive (the C
// driver is reference-counted, a custom Driver object is shared with every
// Cache made on it). A Region must be destroyed (or Release()d and put) before
// its Cache.
//
// The classes live in an inline namespace (regcache::v1) so that their mangled
// names never collide with the library's internal C++ classes when a program
// links both.
#ifndef REGCACHE_REGCACHE_HPP
#define REGCACHE_REGCACHE_HPP

#include <regcache/regcache.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>

namespace regcache {
inline namespace v1 {

// 0 or a negative errno.
class Status {
 public:
  Status() = default;
  explicit Status(int code) : code_(code) {}
  bool ok() const { return code_ == 0; }
  explicit operator bool() const { return ok(); }
  int code() const { return code_; }
  const char *message() const { return regcache_strerror(code_); }

 private:
  int code_ = 0;
};

// A T, or the negative errno saying why there is none.
template <class T>
class Result {
 public:
  Result(T value)
      : status_(), value_(std::move(value)), has_(true) {}  // NOLINT
  Result(Status s) : status_(s) {}                          // NOLINT
  bool ok() const { return has_; }
  explicit operator bool() const { return has_; }
  const Status &status() const { return status_; }
  // REQUIRES: ok().
  T &value() & { return value_; }
  T &&value() && { return std::move(value_); }
  T &operator*() & { return value_; }
  T *operator->() { return &value_; }

 private:
  Status status_;
  T value_{};
  bool has_ = false;
};

// What a Driver's Register hands back.
struct Registration {
  void *handle = nullptr;  // passed back to Deregister
  uint32_t lkey = 0;
  uint64_t rkey = 0;
  void *desc = nullptr;
};

// A registration back-end implemented in C++ (adapted through
// regcache_driver_custom_open). Both calls may run concurrently on several
// threads, never from inside a memory-event callback. Return 0 or a negative
// errno.
class Driver {
 public:
  virtual ~Driver() = default;
  virtual int Register(void *addr, size_t len, unsigned access,
                       Registration *out) = 0;
  virtual int Deregister(void *handle) = 0;
};

// Owns one reference to a regcache_driver_t (and, for Custom, shares the Driver
// object).
class DriverHandle {
 public:
  DriverHandle() = default;
  ~DriverHandle() { regcache_driver_close(drv_); }
  DriverHandle(DriverHandle &&o) noexcept
      : drv_(std::exchange(o.drv_, nullptr)), impl_(std::move(o.impl_)) {}
  DriverHandle &operator=(DriverHandle &&o) noexcept {
    if (this != &o) {
      regcache_driver_close(drv_);
      drv_ = std::exchange(o.drv_, nullptr);
      impl_ = std::move(o.impl_);
    }
    return *this;
  }
  DriverHandle(const DriverHandle &) = delete;
  DriverHandle &operator=(const DriverHandle &) = delete;

  static Result<DriverHandle> Host() {
    DriverHandle h;
    int rc = regcache_driver_host_open(&h.drv_);
    if (rc) return Status(rc);
    return h;
  }

  static Result<DriverHandle> Custom(std::shared_ptr<Driver> impl) {
    if (!impl) return Status(-22 /* EINVAL */);
    static const regcache_driver_ops_t ops = {sizeof(regcache_driver_ops_t),
                                              &RegThunk, &DeregThunk};
    DriverHandle h;
    int rc = regcache_driver_custom_open(&ops, impl.get(), &h.drv_);
    if (rc) return Status(rc);
    h.impl_ = std::move(impl);
    return h;
  }

  const char *name() const { return regcache_driver_name(drv_); }
  regcache_driver_t *get() const { return drv_; }
  const std::shared_ptr<Driver> &impl() const { return impl_; }

 private:
  static int RegThunk(void *ctx, void *addr, size_t len, unsigned access,
                      void **handle_p, uint32_t *lkey_p, uint64_t *rkey_p,
                      void **desc_p) {
    Registration r;
    int rc = static_cast<Driver *>(ctx)->Register(addr, len, access, &r);
    if (rc == 0) {
      *handle_p = r.handle;
      *lkey_p = r.lkey;
      *rkey_p = r.rkey;
      *desc_p = r.desc;
    }
    return rc;
  }
  static int DeregThunk(void *ctx, void *handle) {
    return static_cast<Driver *>(ctx)->Deregister(handle);
  }

  regcache_driver_t *drv_ = nullptr;
  std::shared_ptr<Driver> impl_;
};

// A held registration: puts itself back on destruction. Move-only.
class Region {
 public:
  Region() = default;
  Region(regcache_t *cache, regcache_region_t *region)
      : cache_(cache), region_(region) {}
  ~Region() { Reset(); }
  Region(Region &&o) noexcept
      : cache_(std::exchange(o.cache_, nullptr)),
        region_(std::exchange(o.region_, nullptr)) {}
  Region &operator=(Region &&o) noexcept {
    if (this != &o) {
      Reset();
      cache_ = std::exchange(o.cache_, nullptr);
      region_ = std::exchange(o.region_, nullptr);
    }
    return *this;
  }
  Region(const Region &) = delete;
  Region &operator=(const Region &) = delete;

  explicit operator bool() const { return region_ != nullptr; }
  uint32_t lkey() const { return regcache_region_lkey(region_); }
  uint64_t rkey() const { return regcache_region_rkey(region_); }
  void *desc() const { return regcache_region_desc(region_); }
  void *addr() const { return regcache_region_addr(region_); }
  size_t length() const { return regcache_region_length(region_); }
  unsigned access() const { return regcache_region_access(region_); }
  void *handle() const { return regcache_region_handle(region_); }
  // Params::host_data_bytes of host storage (nullptr without).
  void *host_data() const { return regcache_region_host_data(region_); }
  template <class T>
  T *host_data_as() const {
    return static_cast<T *>(host_data());
  }
  regcache_region_t *get() const { return region_; }

  // Puts the region back now (idempotent).
  void Reset() {
    if (region_) regcache_put(cache_, region_);
    region_ = nullptr;
    cache_ = nullptr;
  }
  // Gives up ownership: the caller must regcache_put() it.
  regcache_region_t *Release() {
    cache_ = nullptr;
    return std::exchange(region_, nullptr);
  }

 private:
  regcache_t *cache_ = nullptr;
  regcache_region_t *region_ = nullptr;
};

// Cache parameters; unset fields take REGCACHE_* tunables / defaults.
class Params {
 public:
  Params() : p_() {}
  Params &max_regions(size_t n) {
    p_.field_mask |= REGCACHE_PARAM_MAX_REGIONS;
    p_.max_regions = n;
    return *this;
  }
  Params &max_bytes(size_t n) {
    p_.field_mask |= REGCACHE_PARAM_MAX_BYTES;
    p_.max_bytes = n;
    return *this;
  }
  Params &merge_max_bytes(size_t n) {
    p_.field_mask |= REGCACHE_PARAM_MERGE_MAX_BYTES;
    p_.merge_max_bytes = n;
    return *this;
  }
  Params &flags(uint64_t f) {
    p_.field_mask |= REGCACHE_PARAM_FLAGS;
    p_.flags = f;
    return *this;
  }
  Params &name(const char *n) {  // copied by Create
    p_.field_mask |= REGCACHE_PARAM_NAME;
    p_.name = n;
    return *this;
  }
  Params &host_data_bytes(size_t n) {  // Region::host_data() storage
    p_.field_mask |= REGCACHE_PARAM_HOST_DATA_BYTES;
    p_.host_data_bytes = n;
    return *this;
  }
  const regcache_params_t *get() const { return &p_; }

 private:
  regcache_params_t p_;
};

// A registration cache. Move-only; destroyed with the object.
class Cache {
 public:
  Cache() = default;
  ~Cache() { regcache_destroy(cache_); }
  Cache(Cache &&o) noexcept
      : cache_(std::exchange(o.cache_, nullptr)), keep_(std::move(o.keep_)) {}
  Cache &operator=(Cache &&o) noexcept {
    if (this != &o) {
      regcache_destroy(cache_);
      cache_ = std::exchange(o.cache_, nullptr);
      keep_ = std::move(o.keep_);
    }
    return *this;
  }
  Cache(const Cache &) = delete;
  Cache &operator=(const Cache &) = delete;

  static Result<Cache> Create(const DriverHandle &driver,
                              const Params *params = nullptr) {
    Cache c;
    int rc = regcache_create(driver.get(), params ? params->get() : nullptr,
                             &c.cache_);
    if (rc) return Status(rc);
    // A custom Driver object outlives every cache using it.
    c.keep_ = driver.impl();
    return c;
  }

  Result<Region> Get(const void *addr, size_t len, unsigned access = 0) {
    regcache_region_t *r = nullptr;
    int rc = regcache_get(cache_, addr, len, access, &r);
    if (rc) return Status(rc);
    return Region(cache_, r);
  }
  // flags: REGCACHE_GET_* (REGCACHE_GET_NO_CACHE: registered for this use,
  // deregistered when the Region is destroyed).
  Result<Region> Get(const void *addr, size_t len, unsigned access,
                     unsigned flags) {
    regcache_region_t *r = nullptr;
    int rc = regcache_get_flags(cache_, addr, len, access, flags, &r);
    if (rc) return Status(rc);
    return Region(cache_, r);
  }
  // A cached region covering the range, or Status(-ENOENT); never registers.
  Result<Region> Find(const void *addr, size_t len, unsigned access = 0) {
    regcache_region_t *r = nullptr;
    int rc = regcache_find(cache_, addr, len, access, &r);
    if (rc) return Status(rc);
    return Region(cache_, r);
  }
  // Revokes the cached regions overlapping the range; the count, or an error.
  Result<int> Invalidate(const void *addr, size_t len) {
    int rc = regcache_invalidate(cache_, addr, len);
    if (rc < 0) return Status(rc);
    return rc;
  }
  Status Flush() { return Status(regcache_flush(cache_)); }
  Result<regcache_stats_t> Stats() const {
    regcache_stats_t s;
    int rc = regcache_get_stats(cache_, &s);
    if (rc) return Status(rc);
    return s;
  }
  regcache_t *get() const { return cache_; }

 private:
  regcache_t *cache_ = nullptr;
  std::shared_ptr<Driver> keep_;
};

// No blind caching (regcache/notifier.h has the contract). CachingSafe():
// true when an event source sees every unmap or the host declared it reports
// them; false when caches register at get and deregister at put.
inline Result<bool> CachingSafe() {
  int rc = regcache_notifier_caching_safe();
  if (rc < 0) return Status(rc);
  return rc == 1;
}
// The host reports every unmap of memory it registers through
// regcache_notify_unmap_start/end (true), or withdraws that (false).
inline Status SetExternalUnmapReporting(bool on) {
  return Status(regcache_notifier_set_external(on ? 1 : 0));
}

}  // namespace v1
}  // namespace regcache

#endif  // REGCACHE_REGCACHE_HPP

/* SPDX-License-Identifier: BSD-3-Clause */
// tests/regcache/test_driver.h - a driver for the cache's tests: records every
// call, injects failures, caps live bytes (a device's limit), and runs a hook
// inside Register (to stage an invalidation while the registration is in
// flight).
#ifndef REGCACHE_TESTS_REGCACHE_TEST_DRIVER_H_
#define REGCACHE_TESTS_REGCACHE_TEST_DRIVER_H_

#include <regcache/regcache.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "regcache/driver_port.h"

namespace regcache::testing {

class TestDriver final : public DriverPort {
 public:
  struct Call {
    uintptr_t addr;
    size_t len;
    unsigned access;
  };

  const char *Name() const override { return "test"; }

  int Register(void *addr, size_t len, unsigned access,
               PortRegistration *out) override {
    std::function<void(void *, size_t)> hook;
    {
      std::lock_guard<std::mutex> g(mu);
      ++register_count;
      if (record_calls) {
        register_calls.push_back(
            {reinterpret_cast<uintptr_t>(addr), len, access});
      }
      hook = on_register;
    }
    if (hook) hook(addr, len);
    std::lock_guard<std::mutex> g(mu);
    if (fail_next > 0) {
      --fail_next;
      return fail_errno;
    }
    if (live_bytes + len > cap_bytes) return -ENOMEM;
    uint64_t key = ++next_key;
    live.insert(key);
    live_bytes += len;
    out->handle = reinterpret_cast<void *>(static_cast<uintptr_t>(key));
    out->lkey = static_cast<uint32_t>(key);
    out->rkey = key << 8;
    out->desc = nullptr;
    lens[key] = len;
    return 0;
  }

  int Deregister(const PortRegistration &reg) override {
    std::lock_guard<std::mutex> g(mu);
    uint64_t key = reinterpret_cast<uintptr_t>(reg.handle);
    if (live.erase(key) != 1) {
      ++bad_deregs;
      return -EINVAL;
    }
    live_bytes -= lens[key];
    lens.erase(key);
    ++deregister_count;
    if (record_calls) deregistered.push_back(key);
    return 0;
  }

  size_t MaxRegionBytes() const override { return max_region; }

  size_t Live() {
    std::lock_guard<std::mutex> g(mu);
    return live.size();
  }
  size_t Registers() {
    std::lock_guard<std::mutex> g(mu);
    return register_count;
  }
  size_t Deregisters() {
    std::lock_guard<std::mutex> g(mu);
    return deregister_count;
  }
  bool IsLive(uint64_t key) {
    std::lock_guard<std::mutex> g(mu);
    return live.count(key) != 0;
  }

  std::mutex mu;
  std::vector<Call> register_calls;
  std::vector<uint64_t> deregistered;
  std::set<uint64_t> live;
  std::map<uint64_t, size_t> lens;
  size_t live_bytes = 0;
  size_t cap_bytes = SIZE_MAX;
  size_t max_region = SIZE_MAX;
  int fail_next = 0;
  int fail_errno = -ENOMEM;
  int bad_deregs = 0;
  bool record_calls = true;  // false: count only (long-running tests)
  size_t register_count = 0;
  size_t deregister_count = 0;
  uint64_t next_key = 0;
  std::function<void(void *, size_t)> on_register;
};

// A C handle owning a new TestDriver; *out points at the driver for inspection.
inline regcache_driver_t *NewTestDriver(TestDriver **out) {
  auto d = std::make_unique<TestDriver>();
  *out = d.get();
  return new regcache_driver(std::move(d));
}

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_REGCACHE_TEST_DRIVER_H_

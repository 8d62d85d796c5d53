/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/driver_guard.h - what every device driver (verbs, fabric) checks
// first, in one place: the request's arguments, and the process it runs in.
//
// A device registration belongs to the process that opened the driver: after
// fork() the child shares the parent's uverbs file (or fabric domain), so a
// registration there would be made on the parent's context, and a
// deregistration would destroy the parent's MR. The child must open its own
// device, domain and driver. So Register in a fork child fails with -EPERM
// (logged), and Deregister of the parent's registration leaves it alone and
// returns 0 (the cache's fork child handler already forgets the parent's
// registrations without calling the driver; this covers direct users).
//
// Part of the driver port (exported to drivers/*, cmake/layering.txt).
// Thread safety: const after construction.
#ifndef REGCACHE_REGCACHE_DRIVER_GUARD_H_
#define REGCACHE_REGCACHE_DRIVER_GUARD_H_

#include <regcache/regcache.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

#include "regcache/driver_port.h"
#include "regcache/log.h"

namespace regcache {

class DriverGuard {
 public:
  // driver: the name in log lines ("verbs"); reopen: what the child must open
  // ("the device, a PD and a driver").
  DriverGuard(const char *driver, const char *reopen)
      : driver_(driver), reopen_(reopen), owner_(getpid()) {}

  // Register's prologue: 0, or -EINVAL (bad arguments) / -EPERM (a fork
  // child), logged.
  int CheckRegister(const void *addr, size_t len, unsigned access,
                    const PortRegistration *out) const {
    if (out == nullptr || len == 0 || (access & ~REGCACHE_ACCESS_ALL) != 0) {
      REGCACHE_LOG(ERROR,
                   "{}: bad registration request addr {} len {} access 0x{:x}",
                   driver_, addr, len, access);
      return -EINVAL;
    }
    if (pid_t pid = getpid(); pid != owner_) {
      REGCACHE_LOG(ERROR,
                   "{}: registration in forked child {} on a driver opened by "
                   "{}: open {} in the child",
                   driver_, pid, owner_, reopen_);
      return -EPERM;
    }
    return 0;
  }

  // Deregister's: true if this is a fork child, whose caller must leave the
  // parent's registration alone (logged at debug level).
  bool LeaveParentsRegistration(const void *handle) const {
    if (getpid() == owner_) return false;
    REGCACHE_LOG(DEBUG, "{}: forked child leaves the parent's MR {} alone",
                 driver_, handle);
    return true;
  }

 private:
  const char *const driver_;
  const char *const reopen_;
  const pid_t owner_;
};

}  // namespace regcache

#endif  // REGCACHE_REGCACHE_DRIVER_GUARD_H_

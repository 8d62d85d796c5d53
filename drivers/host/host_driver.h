/* SPDX-License-Identifier: BSD-3-Clause */
// drivers/host/host_driver.h - the host driver: mlock-based "registration"
// (internal).
//
// For machines without an HCA, and for the core's tests. Register:
//   1. checks that every page of the range is mapped and readable (-EFAULT
//      otherwise; PROCMAP_QUERY, else /proc/self/maps) and, when any write
//      access is asked for (LOCAL_WRITE, REMOTE_WRITE, REMOTE_ATOMIC),
//      writable (-EACCES otherwise): what ibv_reg_mr's get_user_pages would
//      refuse;
//   2. enforces RLIMIT_MEMLOCK (soft) on the bytes this process pinned through
//      host drivers, even for root (-ENOMEM past it), as ib_umem_get does for
//      unprivileged users, so tests see the limit bite whoever runs them;
//   3. mlock()s the range (faulting every page in), keeping a per-page pin
//      count process-wide: mlock is not counted by the kernel, so two
//      overlapping registrations must not unlock each other's pages;
//   4. records each page's frame from /proc/self/pagemap (needs CAP_SYS_ADMIN
//      to see frame numbers; otherwise the record says "unknown");
//   5. issues unique keys (lkey = low 32 bits of a process-wide counter, rkey =
//      the counter with a tag in the high bits).
// Deregister unpins pages whose count drops to zero; it succeeds for unmapped
// memory.
#ifndef REGCACHE_DRIVERS_HOST_HOST_DRIVER_H_
#define REGCACHE_DRIVERS_HOST_HOST_DRIVER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "regcache/driver_port.h"

namespace regcache::host {

// lock_pages = false: fault the pages in and account them against
// RLIMIT_MEMLOCK, but do not mlock them. mlock'ed (VM_LOCKED) memory rejects
// madvise(MADV_DONTNEED) with EINVAL, which a NIC's pin (get_user_pages) does
// not; tests of that event path use this.
std::unique_ptr<DriverPort> NewHostDriver(bool lock_pages = true);

// Test helpers: the software stand-in for "the NIC writes to the old pages".
enum class FrameCheck {
  // Every page of the registration still maps the frame recorded at register.
  kFresh,
  // Some page now maps another frame (or none): a NIC would DMA to old pages.
  kStale,
  // Frame numbers are not visible to this process (no CAP_SYS_ADMIN).
  kUnknown,
};
// `handle` is PortRegistration::handle of a host registration
// (regcache_region_handle()).
FrameCheck CheckFrames(const void *handle);
const char *FrameCheckName(FrameCheck c);
// True if this process can read frame numbers from /proc/self/pagemap.
bool FramesVisible();
// Bytes currently pinned through host drivers (distinct pages x page size).
size_t PinnedBytes();
// Live host registrations (all host drivers of the process).
size_t LiveRegistrations();
// Tests only: the pin table's mutex (to hold it across a fork), and a switch
// that disables its atfork child handler (negative controls: the child then
// blocks on its first registration). A fork child starts with an empty table:
// the parent's pins are not inherited (host_driver.cc, FORK).
std::mutex &PinsMutexForTesting();
void SetPinsAtforkOffForTesting(bool off);

// The mappedness check Register runs (0, -EFAULT, -EACCES), allocating nothing;
// `maps_file` forces the /proc/self/maps path used on kernels without
// PROCMAP_QUERY (for tests).
int CheckMapped(const void *addr, size_t len, bool write, bool maps_file);

}  // namespace regcache::host

#endif  // REGCACHE_DRIVERS_HOST_HOST_DRIVER_H_

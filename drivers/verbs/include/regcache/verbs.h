/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * regcache/verbs.h - the libibverbs driver (add-on header; C99).
 *
 * Only this header pulls in <infiniband/verbs.h>: a consumer of regcache.h alone does
 * not need rdma-core's headers. Available when libregcache was built with libibverbs.
 *
 * CONTRACT
 *
 * regcache_driver_verbs_open(pd, &driver) creates a driver that registers memory in
 * protection domain `pd` with ibv_reg_mr() and deregisters it with ibv_dereg_mr().
 *  - Ownership: the driver does not take ownership of `pd` or its context. The PD (and its
 *    ibv_context) must outlive the driver: close every cache on the driver, then
 *    regcache_driver_close(), then ibv_dealloc_pd() / ibv_close_device().
 *  - Thread safety: one driver may serve several caches and be called from any thread;
 *    it keeps no lock on the registration path (ibv_reg_mr is thread-safe) and counts
 *    live MRs with an atomic.
 *  - A region's handle (regcache_region_handle) is the `struct ibv_mr *`; lkey/rkey are
 *    the MR's; desc is NULL. The MR's iova is the virtual address.
 *  - Access bits map to IBV_ACCESS_*; REMOTE_WRITE and REMOTE_ATOMIC imply LOCAL_WRITE (as
 *    verbs requires). Local read is always allowed.
 *  - Errors (negative errno, each logged once with the verbs call and strerror):
 *    -EINVAL  bad arguments; a region longer than the device's max_mr_size.
 *    -ENOMEM  ibv_reg_mr ran out of pinnable memory (RLIMIT_MEMLOCK) or the device's
 *             max_mr live MRs are in use: the cache evicts unused regions and retries.
 *    -EFAULT / -EACCES  memory not mapped / not writable for a writable registration.
 *    -EPERM   the driver was opened by another process (see FORK below).
 *
 * ON-DEMAND PAGING (REGCACHE_ODP=auto|on|off, read at open). ODP is used when the device
 * reports IBV_ODP_SUPPORT and its RC ODP caps include SEND, RECV, WRITE, READ and ATOMIC
 * (every access the cache may ask for). Then each MR is registered with
 * IBV_ACCESS_ON_DEMAND: nothing is pinned, the kernel keeps the NIC's translations in step
 * with the page tables, and the cache may keep such regions across unmaps.
 *   auto  ODP when supported, else pinning with one info-level log line;
 *   on    the same, but the fallback is logged as a warning (open still succeeds:
 *         ODP is an optimisation, not a correctness requirement);
 *   off   always pin.
 * regcache_driver_verbs_odp() reports the decision (rxe on Linux 6.1: no ODP -> 0).
 *
 * FORK. A driver belongs to the process that opened it. After fork() the child shares
 * the parent's uverbs file, so destroying an inherited MR in the child would destroy the
 * parent's: in a child, Deregister of an inherited region does nothing (returns 0, the
 * parent keeps its MR) and any new registration fails with -EPERM. The child may
 * regcache_destroy() inherited caches and close the inherited driver harmlessly, and must
 * open its own device, PD, driver and cache to register memory. The parent's pinned
 * pages stay correct across fork(): on Linux >= 5.13 the kernel copies DMA-pinned pages
 * for the child; on older kernels rdma-core must be in fork-safe mode (RDMAV_FORK_SAFE=1
 * in the environment, or ibv_fork_init() before the first verbs call), in which it
 * applies and undoes MADV_DONTFORK per MR itself. The open logs a warning if neither
 * holds. See docs/drivers.md.
 */
#ifndef REGCACHE_VERBS_H
#define REGCACHE_VERBS_H

#include <infiniband/verbs.h>
#include <regcache/regcache.h>

REGCACHE_EXTERN_C_BEGIN

/* Creates a verbs driver on `pd`. Queries the device (ibv_query_device_ex) for
 * max_mr_size, max_mr and ODP caps, and reads REGCACHE_ODP. Returns 0 and sets *driver_p,
 * or -EINVAL (NULL pd, pd without context, NULL driver_p, bad REGCACHE_ODP value), -ENOMEM,
 * or the negated errno of a failed device query. */
REGCACHE_API int regcache_driver_verbs_open(struct ibv_pd *pd,
                                            regcache_driver_t **driver_p);

/* Sets *enabled_p to 1 if the driver registers with IBV_ACCESS_ON_DEMAND, else 0.
 * -EINVAL if driver is NULL or not a verbs driver, or enabled_p is NULL. */
REGCACHE_API int regcache_driver_verbs_odp(const regcache_driver_t *driver,
                                           int *enabled_p);

/* Device limits the driver enforces, and how many MRs it holds now. Any out-pointer may
 * be NULL. -EINVAL if driver is NULL or not a verbs driver. */
REGCACHE_API int regcache_driver_verbs_limits(const regcache_driver_t *driver,
                                              uint64_t *max_mr_size_p,
                                              uint64_t *max_mr_p,
                                              uint64_t *live_mrs_p);

REGCACHE_EXTERN_C_END

#endif /* REGCACHE_VERBS_H */

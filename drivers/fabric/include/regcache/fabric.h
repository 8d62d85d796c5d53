/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * regcache/fabric.h - the libfabric driver (add-on header; C99).
 *
 * Only this header pulls in libfabric's headers: a consumer of regcache.h alone does not
 * need them. Available when libregcache was built with libfabric (>= 1.14; coded against
 * FI_VERSION(1,17) mr_mode bits, never the removed FI_MR_BASIC/FI_MR_SCALABLE modes).
 *
 * CONTRACT
 *
 * A fabric driver registers memory in one domain with fi_mr_regattr() and deregisters it
 * with fi_close(&mr->fid).
 *  - Ownership: the driver takes ownership of nothing. The domain (and the bind endpoint,
 *    if any) must outlive the driver: regcache_destroy() every cache on it, then
 *    regcache_driver_close(), then close the endpoint and the domain. `info` is read
 *    during the open call only (nothing is kept).
 *  - A region's handle is the `struct fid_mr *`, rkey is fi_mr_key(), desc
 *    (regcache_region_desc) is fi_mr_desc() -- pass it as the local descriptor of data
 *    transfers (needed under FI_MR_LOCAL). lkey is 0.
 *  - Access bits: local read is always granted (FI_SEND | FI_WRITE); LOCAL_WRITE adds
 *    FI_RECV | FI_READ; REMOTE_READ adds FI_REMOTE_READ; REMOTE_WRITE adds FI_REMOTE_WRITE
 *    plus the local-write bits; REMOTE_ATOMIC adds FI_REMOTE_READ | FI_REMOTE_WRITE plus
 *    the local-write bits.
 *  - mr_mode (from info->domain_attr->mr_mode):
 *      FI_MR_PROV_KEY   the provider's key is used (fi_mr_key);
 *      otherwise        the driver requests keys itself, unique per driver, counting up
 *                       from the middle of the key space given by mr_key_size, skipping
 *                       keys that are taken (-FI_ENOKEY: the next key is tried);
 *      FI_MR_ENDPOINT   each MR is bound to the open call's `ep` (fi_mr_bind) and enabled
 *                       (fi_mr_enable) before it is returned; open fails with -EINVAL if
 *                       ep is NULL;
 *      FI_MR_VIRT_ADDR  nothing to do at registration: peers address the region by
 *                       virtual address, else by offset from regcache_region_addr();
 *      FI_MR_LOCAL      desc is always returned; use it for local buffers;
 *      FI_MR_ALLOCATED  the cache registers only mapped memory anyway;
 *      FI_MR_RAW        not supported (keys wider than 64 bits): open fails, -EOPNOTSUPP.
 *    Without info (regcache_driver_fabric_open) the mr_mode is unknown: the driver
 *    requests unique keys (ignored by FI_MR_PROV_KEY providers), returns desc, binds to no
 *    endpoint -- do not use it on FI_MR_ENDPOINT or FI_MR_RAW domains.
 *  - Limits: domain_attr->mr_cnt (when info is given and it is non-zero) bounds the live
 *    MRs: beyond it Register fails with -ENOMEM (logged) so the cache evicts and retries.
 *  - Thread safety: the driver may be called from any thread. Unless info says the domain
 *    is FI_THREAD_SAFE, the driver serialises its own fi_mr_regattr / fi_close calls with a
 *    mutex; the application must still not use the domain concurrently with regcache
 *    calls if its threading model forbids it (FI_THREAD_DOMAIN and stricter).
 *  - Errors: 0 or a negative errno (libfabric's FI_E* values are errno values), each
 *    logged once with the libfabric call and fi_strerror. -EPERM in a forked child.
 *  - FORK. A driver belongs to the process that opened it: in a forked child, deregistering
 *    an inherited region does nothing (the parent keeps its MR; with the verbs provider
 *    the uverbs file is shared) and registering fails with -EPERM. The child opens its
 *    own fabric, domain, driver and cache. See docs/drivers.md.
 */
#ifndef REGCACHE_FABRIC_H
#define REGCACHE_FABRIC_H

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <regcache/regcache.h>

REGCACHE_EXTERN_C_BEGIN

/* Creates a driver on `domain` whose mr_mode is not known to the caller (see above).
 * Same as regcache_driver_fabric_open2(domain, NULL, NULL, driver_p). */
REGCACHE_API int regcache_driver_fabric_open(struct fid_domain *domain,
                                             regcache_driver_t **driver_p);

/* Creates a driver on `domain`, which was opened with `info` (its domain_attr gives
 * mr_mode, mr_key_size, mr_cnt and threading; NULL: unknown). `ep`: the endpoint every MR
 * is bound to under FI_MR_ENDPOINT (NULL otherwise; ignored if the mode is not set).
 * Returns 0 and sets *driver_p, or -EINVAL (NULL domain/driver_p; FI_MR_ENDPOINT without
 * ep), -EOPNOTSUPP (FI_MR_RAW), -ENOMEM. */
REGCACHE_API int regcache_driver_fabric_open2(struct fid_domain *domain,
                                              const struct fi_info *info,
                                              struct fid_ep *ep,
                                              regcache_driver_t **driver_p);

/* The mr_mode the driver honours (info's, or 0 when opened without info).
 * -EINVAL if driver is NULL or not a fabric driver, or mr_mode_p is NULL. */
REGCACHE_API int regcache_driver_fabric_mr_mode(const regcache_driver_t *driver,
                                                uint64_t *mr_mode_p);

REGCACHE_EXTERN_C_END

#endif /* REGCACHE_FABRIC_H */

// SPDX-License-Identifier: BSD-3-Clause
// regcache-info -d: RDMA devices (libibverbs) and libfabric providers, with
// the capabilities the cache cares about and what the drivers decide.
#include <regcache/regcache.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>

#include "tools/info.h"

#ifdef REGCACHE_HAVE_VERBS
#include <infiniband/verbs.h>
#include <regcache/verbs.h>
#endif
#ifdef REGCACHE_HAVE_LIBFABRIC
#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <regcache/fabric.h>
#endif

namespace regcache_info {
namespace {

#ifdef REGCACHE_HAVE_VERBS
void OdpLine(const char *what, uint32_t caps) {
  std::printf("      odp %-4s %s%s%s%s%s\n", what, caps ? "" : "none",
              (caps & IBV_ODP_SUPPORT_SEND) ? "send " : "",
              (caps & IBV_ODP_SUPPORT_RECV) ? "recv " : "",
              (caps & IBV_ODP_SUPPORT_WRITE) ? "write " : "",
              (caps & IBV_ODP_SUPPORT_READ) ? "read " : "");
}
#endif

#ifdef REGCACHE_HAVE_VERBS
// What the verbs driver itself decides on this device (REGCACHE_ODP applied).
void DriverLine(ibv_context *ctx) {
  char mode[16] = "?";
  regcache_config_get("ODP", mode, sizeof(mode));
  ibv_pd *pd = ibv_alloc_pd(ctx);
  if (pd == nullptr) {
    std::printf("    regcache: ibv_alloc_pd failed: %s\n",
                std::strerror(errno));
    return;
  }
  regcache_driver_t *d = nullptr;
  int rc = regcache_driver_verbs_open(pd, &d);
  int odp = 0;
  if (rc == 0 && regcache_driver_verbs_odp(d, &odp) == 0) {
    std::printf(
        "    regcache: %s (REGCACHE_ODP=%s; ODP needs rc send recv write read "
        "atomic)\n",
        odp ? "on-demand paging, nothing pinned" : "pins registered memory",
        mode);
  } else {
    std::printf("    regcache: verbs driver open failed: %s\n",
                regcache_strerror(rc));
  }
  regcache_driver_close(d);
  ibv_dealloc_pd(pd);
}

const char *ForkState() {
  switch (ibv_is_fork_initialized()) {
    case IBV_FORK_UNNEEDED:
      return "kernel copies pinned pages at fork (safe)";
    case IBV_FORK_ENABLED:
      return "rdma-core fork-safe mode (MADV_DONTFORK per MR)";
    case IBV_FORK_DISABLED:
      break;
  }
  return "UNSAFE: old kernel and RDMAV_FORK_SAFE unset (do not fork with "
         "registrations)";
}
#endif

}  // namespace

void ListVerbs() {
#ifdef REGCACHE_HAVE_VERBS
  int n = 0;
  errno = 0;
  ibv_device **list = ibv_get_device_list(&n);
  if (list == nullptr) {
    std::printf("verbs: no RDMA devices (ibv_get_device_list: %s)\n",
                std::strerror(errno));
    return;
  }
  std::printf("verbs: %d device(s); fork: %s\n", n, ForkState());
  for (int i = 0; i < n; ++i) {
    std::printf("  %s\n", ibv_get_device_name(list[i]));
    ibv_context *ctx = ibv_open_device(list[i]);
    if (!ctx) {
      std::printf("    ibv_open_device failed: %s\n", std::strerror(errno));
      continue;
    }
    ibv_device_attr_ex attr = {};
    if (ibv_query_device_ex(ctx, nullptr, &attr) == 0) {
      std::printf(
          "    max_mr_size 0x%llx max_mr %d page_size_cap 0x%llx\n",
          static_cast<unsigned long long>(attr.orig_attr.max_mr_size),
          attr.orig_attr.max_mr,
          static_cast<unsigned long long>(attr.orig_attr.page_size_cap));
      const auto &odp = attr.odp_caps;
      std::printf("    odp %s\n", (odp.general_caps & IBV_ODP_SUPPORT)
                                      ? "supported"
                                      : "not supported");
      if (odp.general_caps & IBV_ODP_SUPPORT) {
        OdpLine("rc", odp.per_transport_caps.rc_odp_caps);
        OdpLine("ud", odp.per_transport_caps.ud_odp_caps);
      }
    } else {
      std::printf("    ibv_query_device_ex failed: %s\n", std::strerror(errno));
    }
    DriverLine(ctx);
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
#else
  std::printf(
      "verbs: not built (libibverbs was not found at configure time)\n");
#endif
}

namespace {
#ifdef REGCACHE_HAVE_LIBFABRIC
// How the fabric driver serves a domain with this mr_mode (docs/drivers.md).
const char *FabricSupport(int m) {
  if (m & (FI_MR_RAW | FI_MR_BASIC | FI_MR_SCALABLE))
    return "unsupported (raw/legacy keys)";
  if (m & FI_MR_ENDPOINT) {
    return (m & FI_MR_PROV_KEY) ? "ok with open2(ep), provider keys"
                                : "ok with open2(ep), requested keys";
  }
  return (m & FI_MR_PROV_KEY) ? "ok, provider keys" : "ok, requested keys";
}
#endif
}  // namespace

void ListFabric() {
#ifdef REGCACHE_HAVE_LIBFABRIC
  fi_info *hints = fi_allocinfo();
  hints->mode = ~0ULL;
  hints->domain_attr->mode = ~0ULL;
  hints->domain_attr->mr_mode = ~(FI_MR_BASIC | FI_MR_SCALABLE);
  fi_info *info = nullptr;
  int rc = fi_getinfo(FI_VERSION(1, 17), nullptr, nullptr, 0, hints, &info);
  fi_freeinfo(hints);
  if (rc) {
    std::printf("libfabric: fi_getinfo: %s\n", fi_strerror(-rc));
    return;
  }
  std::printf("libfabric %u.%u providers (provider / domain / mr_mode):\n",
              FI_MAJOR(fi_version()), FI_MINOR(fi_version()));
  // One line per provider / domain / mr_mode (fi_getinfo lists each for every
  // endpoint type and address format).
  std::set<std::string> seen;
  for (fi_info *i = info; i; i = i->next) {
    const char *p = i->fabric_attr->prov_name, *d = i->domain_attr->name;
    int m = i->domain_attr->mr_mode;
    if (!seen.insert(std::string(p) + '/' + d + '/' + std::to_string(m)).second)
      continue;
    std::printf("  %-16s %-12s 0x%x%s%s%s%s%s%s%s key %zuB; regcache: %s\n", p,
                d, m, (m & FI_MR_LOCAL) ? " LOCAL" : "",
                (m & FI_MR_VIRT_ADDR) ? " VIRT_ADDR" : "",
                (m & FI_MR_ALLOCATED) ? " ALLOCATED" : "",
                (m & FI_MR_PROV_KEY) ? " PROV_KEY" : "",
                (m & FI_MR_ENDPOINT) ? " ENDPOINT" : "",
                (m & FI_MR_RAW) ? " RAW" : "", (m & FI_MR_HMEM) ? " HMEM" : "",
                i->domain_attr->mr_key_size, FabricSupport(m));
  }
  fi_freeinfo(info);
#else
  std::printf(
      "libfabric: not built (libfabric was not found at configure time)\n");
#endif
}

}  // namespace regcache_info

// SPDX-License-Identifier: BSD-3-Clause
// Resolving a cache's parameters: regcache_params_t, else the REGCACHE_*
// tunables, else the defaults (docs/cache.md, README's tunables table).
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "regcache/cache.h"
#include "regcache/log.h"
#include "regcache/page.h"
#include "regcache/tunables.h"

namespace regcache::core {
namespace {

// The kernel does not apply RLIMIT_MEMLOCK to a process with CAP_IPC_LOCK
// (root, usually): sizing the cache from it there would only starve it (a
// 16 MiB pool against root's default 8 MiB limit never hit in the rxe e2e run).
bool HasCapIpcLock() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &hdr, data) != 0) return false;
  return (data[0].effective & (1u << CAP_IPC_LOCK)) != 0;
}

}  // namespace

size_t AutoMaxBytes() {
  struct rlimit rl;
  if (!HasCapIpcLock() && getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
      rl.rlim_cur != RLIM_INFINITY)
    return static_cast<size_t>(rl.rlim_cur / 4 * 3);
  long pages = sysconf(_SC_PHYS_PAGES);
  if (pages <= 0) return size_t{1} << 30;
  return static_cast<size_t>(pages) * page::Size() / 4;
}

int ResolveParams(const regcache_params_t *p, CacheConfig *out) {
  constexpr uint64_t kKnown =
      REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MAX_BYTES |
      REGCACHE_PARAM_MERGE_MAX_BYTES | REGCACHE_PARAM_FLAGS |
      REGCACHE_PARAM_NAME | REGCACHE_PARAM_HOST_DATA_BYTES;
  const uint64_t mask = p ? p->field_mask : 0;
  if (mask & ~kKnown) {
    REGCACHE_LOG(ERROR, "regcache_create: unknown field_mask bits 0x{:x}",
                 mask & ~kKnown);
    return -EINVAL;
  }
  if ((mask & REGCACHE_PARAM_FLAGS) &&
      (p->flags & ~uint64_t{REGCACHE_FLAG_NO_MERGE})) {
    REGCACHE_LOG(ERROR, "regcache_create: unknown flags 0x{:x}", p->flags);
    return -EINVAL;
  }
  int rc;
  size_t v = 0;
  bool is_auto = false;
  if (mask & REGCACHE_PARAM_MAX_REGIONS) {
    out->max_regions = p->max_regions;
  } else {
    if ((rc = tunables::GetSize("MAX_REGIONS", &v))) return rc;
    out->max_regions = v;
  }
  if (mask & REGCACHE_PARAM_MAX_BYTES) {
    out->max_bytes = p->max_bytes;
  } else {
    if ((rc = tunables::GetSize("MAX_BYTES", &v, &is_auto))) return rc;
    out->max_bytes = is_auto ? AutoMaxBytes() : v;
  }
  if (mask & REGCACHE_PARAM_MERGE_MAX_BYTES) {
    out->merge_max_bytes = p->merge_max_bytes;
  } else {
    if ((rc = tunables::GetSize("MERGE_MAX_BYTES", &v))) return rc;
    out->merge_max_bytes = v;
  }
  if ((mask & REGCACHE_PARAM_FLAGS) && (p->flags & REGCACHE_FLAG_NO_MERGE))
    out->merge_max_bytes = 0;
  if ((mask & REGCACHE_PARAM_NAME) && p->name) out->name = p->name;
  if (mask & REGCACHE_PARAM_HOST_DATA_BYTES) {
    if (p->host_data_bytes > REGCACHE_HOST_DATA_MAX) {
      REGCACHE_LOG(ERROR, "regcache_create: host_data_bytes {} exceeds {}",
                   p->host_data_bytes, REGCACHE_HOST_DATA_MAX);
      return -EINVAL;
    }
    out->host_data_bytes = (p->host_data_bytes + 63) & ~size_t{63};
  }
  if ((rc = tunables::GetBool("STATS", &out->print_stats))) return rc;
  int policy = 0;
  if ((rc = tunables::GetEnum("ACCESS_POLICY", &policy))) return rc;
  out->access_all = policy == 0;  // "all|requested"
  int eviction = 0;
  if ((rc = tunables::GetEnum("EVICTION", &eviction))) return rc;
  out->eviction = eviction == 0 ? EvictionMode::kAdaptive
                                : EvictionMode::kLru;  // "adaptive|lru"
  return 0;
}

}  // namespace regcache::core

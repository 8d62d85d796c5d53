// SPDX-License-Identifier: BSD-3-Clause
// regcache-missbench-ucx: UCX 1.13's ucs_rcache in the issue 14 miss loops
// (miss_loops.h), started by regcache-missbench, never by hand. Its own
// process, not linked with libregcache: UCX's memory hooks (ucm) and
// regcache's notifier never meet.
//
//   regcache-missbench-ucx insert PASSES        RESULT insert_ns=...
//   regcache-missbench-ucx inval BLOCKS ITERS   RESULT plain_ns=... cache_ns=...
//
// Registration callbacks do nothing. The rcache is created as regcache-bench's
// UCX contender does (page alignment, UCM_EVENT_VM_UNMAPPED), with max_regions
// as asked (UCX 1.13 does not evict at max_regions: no evict mode).
extern "C" {
#include <ucm/api/ucm.h>
#include <ucs/memory/rcache.h>
}
#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tests/bench/miss/miss_loops.h"

namespace {

// Registrations made: printed, so that a run shows one per miss.
uint64_t g_regs = 0;
ucs_status_t MemReg(void *, ucs_rcache_t *, void *, ucs_rcache_region_t *,
                    uint16_t) {
  ++g_regs;
  return UCS_OK;
}
void MemDereg(void *, ucs_rcache_t *, ucs_rcache_region_t *) {}
void DumpRegion(void *, ucs_rcache_t *, ucs_rcache_region_t *, char *buf,
                size_t max) {
  if (max) buf[0] = 0;
}
const ucs_rcache_ops_t kOps = {MemReg, MemDereg, DumpRegion};

class Ucx {
 public:
  bool Open(size_t max_regions) {
    ucs_rcache_params_t p;
    memset(&p, 0, sizeof p);
    p.region_struct_size = sizeof(ucs_rcache_region_t) + sizeof(void *);
    p.alignment = 4096;
    p.max_alignment = 4096;
    p.ucm_events = UCM_EVENT_VM_UNMAPPED;
    p.ucm_event_priority = 1000;
    p.ops = &kOps;
    p.max_regions = max_regions;
    p.max_size = SIZE_MAX;
    p.max_unreleased = SIZE_MAX;
    ucs_status_t s = ucs_rcache_create(&p, "missbench", nullptr, &rc_);
    if (s != UCS_OK) {
      fprintf(stderr, "ucs_rcache_create: %s\n", ucs_status_string(s));
      return false;
    }
    return true;
  }
  bool Get(void *addr, size_t len, void **handle) {
    ucs_rcache_region_t *r;
    if (ucs_rcache_get(rc_, addr, len, PROT_READ | PROT_WRITE, nullptr, &r) !=
        UCS_OK)
      return false;
    *handle = r;
    return true;
  }
  void Put(void *handle) {
    ucs_rcache_region_put(rc_, static_cast<ucs_rcache_region_t *>(handle));
  }
  void Close() { ucs_rcache_destroy(rc_); }

 private:
  ucs_rcache_t *rc_ = nullptr;
};

}  // namespace

int main(int argc, char **argv) {
  Ucx c;
  const int rc = missbench::RunCommand(c, argc - 1, argv + 1, g_regs,
                                       /*with_evict=*/false);
  if (rc == 2)
    fprintf(stderr, "usage: %s insert PASSES | inval BLOCKS ITERS\n", argv[0]);
  return rc;
}

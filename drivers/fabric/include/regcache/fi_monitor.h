/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * regcache/fi_monitor.h - regcache's notifier as libfabric's memory monitor (C99).
 *
 * libfabric's MR cache (ofi_mr_cache: used by the verbs, ofi_rxm, efa, ... providers)
 * asks a *memory monitor* when cached memory goes away. libfabric >= 1.13 lets a program
 * import its own (<rdma/fi_ext.h>: struct fid_mem_monitor, fi_import(..., "mr_cache",
 * ...)). This library (libregcache-fi-monitor.so) is such a monitor built on regcache's
 * address-space notifier (<regcache/notifier.h>): libfabric's subscribe/unsubscribe keep
 * an interval set here, every notifier invalidation that overlaps a subscribed interval
 * calls libfabric's import_ops->notify from invalidate_range_start, i.e. before the
 * memory changes with the patch source (libfabric's own userfaultfd monitor only learns
 * after the unmap), and valid() answers false for an interval invalidated since it was
 * subscribed.
 *
 * TWO WAYS IN:
 *   LD_PRELOAD=libregcache-fi-monitor.so prog   the constructor imports the monitor (and,
 *       for Open MPI, keeps Open MPI's own libc patcher out, see below); nothing to change
 *       in the program.
 *   regcache_fi_monitor_import()                 from the program, before it opens any
 *       libfabric domain that uses the MR cache.
 *
 * WHICH MONITOR IS IN EFFECT. libfabric keeps one imported monitor: the first import
 * wins, a later one fails with -FI_EBUSY ("imported monitor already exists"), and no
 * import is accepted once a monitor has an MR cache ("cannot replace active monitor").
 * FI_MR_CACHE_MONITOR=memhooks|userfaultfd|disabled, read when libfabric initializes,
 * overrides an imported monitor. Open MPI 4.1 imports its own monitor during MPI_Init (its
 * patcher, "setting imported memory monitor as default"): with the preload, ours is
 * imported first and Open MPI's import fails harmlessly. Open MPI's patcher would still
 * overwrite libc's munmap entry that regcache's patch source hooks; the preload
 * constructor therefore sets OMPI_MCA_memory=^patcher unless the variable is already set
 * or REGCACHE_FI_MONITOR_OMPI_PATCHER=keep (docs/integrating.md).
 *
 * COUNTS. regcache_fi_monitor_stats() (and, with REGCACHE_STATS=y, one line at exit)
 * report the notify calls this monitor made: with one MR cache in the process this equals
 * the `notify` count of libfabric's "MR cache stats" line (FI_LOG_LEVEL=info), which is how
 * a test proves which monitor delivered.
 *
 * TEST-ONLY: REGCACHE_FI_MONITOR_DROP=1 (read at import) drops every notification and
 * makes valid() say yes: a blind monitor, for negative controls. Counted as `dropped`.
 *
 * Thread safety: every call, any thread. Errors: 0 or a negative errno.
 */
#ifndef REGCACHE_FI_MONITOR_H
#define REGCACHE_FI_MONITOR_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define REGCACHE_FI_MONITOR_API __attribute__((visibility("default")))

/*
 * Subscribes to regcache's notifier and imports the monitor into libfabric. Idempotent
 * (0 if already imported). Errors: -EBUSY another monitor was imported first or an MR
 * cache is already active; -ENOSYS libfabric without monitor import; the notifier's
 * error (e.g. -ESHUTDOWN).
 */
REGCACHE_FI_MONITOR_API int regcache_fi_monitor_import(void);

typedef struct regcache_fi_monitor_stats {
  uint64_t delivered;  /* import_ops->notify calls made */
  uint64_t dropped;    /* notifications dropped (REGCACHE_FI_MONITOR_DROP=1) */
  uint64_t subscribes; /* subscribe calls from libfabric */
  uint64_t unsubscribes; /* unsubscribe calls from libfabric */
  uint64_t invalid;      /* valid() calls answered false */
  uint64_t intervals;    /* intervals currently subscribed */
  int imported;          /* 1 once imported */
  int running;           /* 1 between libfabric's start and stop */
} regcache_fi_monitor_stats_t;
/* Fills *stats. -EINVAL for NULL. */
REGCACHE_FI_MONITOR_API int regcache_fi_monitor_stats(
    regcache_fi_monitor_stats_t *stats);

/* The monitor object (struct fid_mem_monitor *), for tests that drive its callbacks
 * directly. Never NULL. */
REGCACHE_FI_MONITOR_API void *regcache_fi_monitor_fid(void);

#ifdef __cplusplus
}
#endif

#endif /* REGCACHE_FI_MONITOR_H */

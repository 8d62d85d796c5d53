/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * regcache/regcache.h - the memory-registration cache, C API (C99).
 *
 * A regcache_t caches memory registrations (ibv_reg_mr, fi_mr_reg, or a host-provided
 * callback) made through a driver. regcache_get() returns a region that covers at least
 * the requested range with at least the requested access; regcache_put() gives it back.
 * Unused regions stay registered (cached) until they are evicted (count and byte
 * limits; REGCACHE_EVICTION chooses the policy), flushed, or invalidated because their
 * memory changed: the cache subscribes to the process's address-space notifier
 * (regcache/notifier.h), so munmap, free, realloc, madvise(DONTNEED) and brk trims of
 * cached memory never leave a stale registration to be returned by a later get.
 *
 * NO BLIND CACHING. When no event source can see every unmap (REGCACHE_MONITOR=auto
 * found neither patch, UCX's libucm nor userfaultfd, or another library overwrote the
 * patch source and nothing could take over) a cache does not cache: each get registers
 * the request and its last put deregisters it (max_regions 0 behaviour), and one warning
 * says why. A host that reports unmaps itself declares it with REGCACHE_MONITOR=none or
 * regcache_notifier_set_external(1); regcache_notifier_caching_safe() tells which mode
 * the process is in (regcache/notifier.h has the contract).
 *
 * THREAD SAFETY. Every function may be called from any thread at any time. The hit path
 * (a get that finds a valid cached region) takes no lock shared between threads: each
 * thread keeps a small front table of recently used regions, validated against the
 * region's generation with one atomic operation. Misses register outside the cache's
 * lock and validate the insert with the notifier's sequence numbers.
 *
 * OWNERSHIP. A region returned by regcache_get() is the caller's until regcache_put();
 * its keys and address stay valid until then, even if its memory is invalidated
 * meanwhile (it then is deregistered at the last put). A driver must outlive every cache
 * created on it (regcache_driver_close() after regcache_destroy()).
 *
 * ERRORS. Every int is 0 or a negative errno; regcache_strerror() names it. Bad input
 * (NULL handle or out-pointer, len == 0, a wrapping range, unknown access bits) gives
 * -EINVAL and changes nothing. Memory that is not mapped, or read-only memory asked for
 * write, gives the driver's error (-EFAULT / -EACCES) with one log line.
 *
 * TUNABLES. Defaults come from REGCACHE_* environment variables (regcache-info -c lists
 * them, README.md documents them); regcache_config_set() overrides them in-process.
 * Under secure execution (AT_SECURE: setuid/setgid, file capabilities) the environment
 * is ignored (secure_getenv), so a less privileged caller cannot reconfigure a privileged
 * program; regcache_config_set() still applies.
 */
#ifndef REGCACHE_REGCACHE_H
#define REGCACHE_REGCACHE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <regcache/export.h>
#include <regcache/notifier.h>

REGCACHE_EXTERN_C_BEGIN

/* In C the cache's tag is `struct regcache`. In C++ the name `regcache` is the
 * namespace of the C++ API (regcache::Cache, ...), and a struct and a namespace cannot
 * share a name, so C++ sees the tag `struct regcache_cache`. Struct tags are not part of
 * the C ABI: both name the same opaque object, and code should use regcache_t anyway. */
#ifdef __cplusplus
typedef struct regcache_cache regcache_t;
#else
typedef struct regcache regcache_t;
#endif
typedef struct regcache_region regcache_region_t;
typedef struct regcache_driver regcache_driver_t;

/* ---------------------------------------------------------------- version */
#define REGCACHE_VERSION_MAJOR 0
#define REGCACHE_VERSION_MINOR 2
#define REGCACHE_VERSION_PATCH 0
/* The library's version at run time (may be newer than the header). Any pointer may be
 * NULL. */
REGCACHE_API void regcache_version(unsigned *major, unsigned *minor,
                                   unsigned *patch);

/* ---------------------------------------------------------------- access bits */
/* 0 means local read only. A region with more access than asked for may be returned. */
#define REGCACHE_ACCESS_LOCAL_WRITE 0x1u
#define REGCACHE_ACCESS_REMOTE_READ 0x2u
#define REGCACHE_ACCESS_REMOTE_WRITE 0x4u
#define REGCACHE_ACCESS_REMOTE_ATOMIC 0x8u
#define REGCACHE_ACCESS_ALL 0xfu

/* ---------------------------------------------------------------- drivers */
/* The host driver: pins with mlock (RLIMIT_MEMLOCK applies, -ENOMEM past it), issues
 * unique keys, records each page's frame from /proc/self/pagemap when readable. For
 * machines without an HCA and for tests. */
REGCACHE_API int regcache_driver_host_open(regcache_driver_t **driver_p);

/* A driver made of the host's own registration callbacks (Open MPI's and UCX's rcaches
 * take such a table). ops->size must be sizeof(regcache_driver_ops_t) of the header the
 * caller was built with (or larger); reg and dereg are required. The table and ctx must
 * stay valid until regcache_driver_close(). Both callbacks may be called concurrently
 * from several threads, never from inside a memory-event callback; they return 0 or a
 * negative errno. reg may leave *lkey_p, *rkey_p, *desc_p untouched (they read
 * 0/NULL). */
typedef struct regcache_driver_ops {
  size_t size; /* sizeof(regcache_driver_ops_t): lets the table grow */
  int (*reg)(void *ctx, void *addr, size_t len, unsigned access,
             void **handle_p, uint32_t *lkey_p, uint64_t *rkey_p,
             void **desc_p);
  int (*dereg)(void *ctx, void *handle);
} regcache_driver_ops_t;
REGCACHE_API int regcache_driver_custom_open(const regcache_driver_ops_t *ops,
                                             void *ctx,
                                             regcache_driver_t **driver_p);

/* Name of the driver ("host", "custom", "verbs", "fabric"); NULL for NULL. */
REGCACHE_API const char *regcache_driver_name(const regcache_driver_t *driver);

/* Closes a driver. NULL is a no-op. REQUIRES: no cache still uses it. */
REGCACHE_API void regcache_driver_close(regcache_driver_t *driver);

/* ---------------------------------------------------------------- cache */
/* Fields of regcache_params_t that the caller set; the others take their default
 * (REGCACHE_* environment, else the built-in default). */
enum {
  REGCACHE_PARAM_MAX_REGIONS = 1u << 0,
  REGCACHE_PARAM_MAX_BYTES = 1u << 1,
  REGCACHE_PARAM_MERGE_MAX_BYTES = 1u << 2,
  REGCACHE_PARAM_FLAGS = 1u << 3,
  REGCACHE_PARAM_NAME = 1u << 4,
  REGCACHE_PARAM_HOST_DATA_BYTES = 1u << 5
};
/* flags */
#define REGCACHE_FLAG_NO_MERGE 0x1u /* never merge neighbouring regions */

typedef struct regcache_params {
  uint64_t field_mask; /* REGCACHE_PARAM_* bits: which fields below are set */
  /* Unused regions beyond this are evicted (in REGCACHE_EVICTION's order); 0: no
   * caching. */
  size_t max_regions;
  /* Registered bytes of unused regions beyond this are evicted. */
  size_t max_bytes;
  /* A merged region never grows beyond this (0: no merging). */
  size_t merge_max_bytes;
  uint64_t flags;   /* REGCACHE_FLAG_* */
  const char *name; /* for log lines and stats at exit; copied */
  /* Bytes of host storage per region (regcache_region_host_data()), at most
   * REGCACHE_HOST_DATA_MAX; 0 (the default) adds nothing to a region. Read only with
   * REGCACHE_PARAM_HOST_DATA_BYTES in field_mask, so callers built against an older
   * header (a shorter struct) stay valid. */
  size_t host_data_bytes;
} regcache_params_t;
#define REGCACHE_HOST_DATA_MAX 4096u

/*
 * Creates a cache on driver. params NULL: defaults and REGCACHE_* environment. Returns 0
 * and sets *cache_p, or -EINVAL (NULL driver/cache_p, bad params, bad REGCACHE_* value:
 * the log names the variable), -ENOMEM, -ESHUTDOWN (process teardown), or the notifier's
 * error if the event source cannot be installed.
 */
REGCACHE_API int regcache_create(regcache_driver_t *driver,
                                 const regcache_params_t *params,
                                 regcache_t **cache_p);

/* Deregisters every region and frees the cache. Regions the caller still holds are
 * deregistered too; putting them afterwards is not allowed. NULL is a no-op.
 * fork(): in the child, a cache inherited from the parent forgets every registration
 * the parent made, without calling the driver (the registrations belong to the parent);
 * the child's gets register anew, and its puts and regcache_destroy of such regions call
 * no driver either. */
REGCACHE_API void regcache_destroy(regcache_t *cache);

/*
 * Returns in *region_p a registered region covering [addr, addr+len) with at least
 * `access`, and takes a reference on it. Hit: a cached region; miss: registers the
 * page-aligned range, merged with overlapping cached regions up to the merge bound
 * (adjacent ones stay separate), with the union of their access flags.
 * Errors: -EINVAL (bad input), -ESHUTDOWN (the address space was torn down), -ENOMEM
 * (the driver could not pin even after evicting every unused region), -EFAULT/-EACCES
 * (memory not mapped / not writable), -EAGAIN (the memory kept changing while it was
 * being registered: invalidated during each of at least 8 attempts over 100 ms), or
 * the driver's error. On error *region_p is untouched.
 */
REGCACHE_API int regcache_get(regcache_t *cache, const void *addr, size_t len,
                              unsigned access, regcache_region_t **region_p);

/* Drops the reference taken by regcache_get(). An invalidated region is deregistered
 * (outside the caller's path when possible) once its last reference is put. NULL region
 * is a no-op. Putting a region twice is a caller bug: debug builds abort with a message;
 * release builds log it once if the count would go negative and ignore it. */
REGCACHE_API void regcache_put(regcache_t *cache, regcache_region_t *region);

/* Deregisters every unused region (and drains pending deregistrations). Returns 0 or
 * -EINVAL. */
REGCACHE_API int regcache_flush(regcache_t *cache);

/* ---------------------------------------------------------------- transport calls
 * What an MPI transport's registration cache needs besides get/put (Open MPI's
 * mca_rcache_base_module_t, UCX's ucs_rcache, libfabric's ofi_mr_cache; see
 * docs/integrating.md). */

/*
 * Lookup that never registers (Open MPI's rcache find): if a valid cached region covers
 * [addr, addr+len) with at least `access`, takes a reference on it, stores it in
 * *region_p and returns 0 (counted as a hit); otherwise returns -ENOENT and registers
 * nothing. Regions handed out with REGCACHE_GET_NO_CACHE are never found. Errors:
 * -EINVAL (bad input, as regcache_get), -ESHUTDOWN, -EDEADLK (called between the
 * thread's own regcache_notify_unmap_start/end or from a memory-event callback).
 */
REGCACHE_API int regcache_find(regcache_t *cache, const void *addr, size_t len,
                               unsigned access, regcache_region_t **region_p);

/* regcache_get_flags() flags. */
/* Register [addr, addr+len) for this use only: the region is not looked up, not
 * inserted and never returned to anyone else; regcache_put() deregisters it. For
 * one-off buffers a transport knows will not be reused (Open MPI's
 * MCA_RCACHE_FLAGS_CACHE_BYPASS, UCX's non-cached registrations). The registration is
 * made with exactly the requested access on the page-aligned range, and is checked
 * against invalidations that started while it was being made (-EAGAIN after 8 tries). */
#define REGCACHE_GET_NO_CACHE 0x1u
/*
 * regcache_get() with flags (REGCACHE_GET_*; 0 is regcache_get()). Unknown flags give
 * -EINVAL. Other errors and ownership as regcache_get().
 */
REGCACHE_API int regcache_get_flags(regcache_t *cache, const void *addr,
                                    size_t len, unsigned access, unsigned flags,
                                    regcache_region_t **region_p);

/*
 * Revokes every cached region overlapping [addr, addr+len) now (page granularity), as
 * if the memory had been unmapped: no get or find returns them from here on (the hit
 * path too), a later get registers afresh. Unused ones are deregistered before the call
 * returns (unless it is made from a memory-event callback: then by the next cache
 * call); held ones stay registered, with valid keys, until their last put, which
 * deregisters them. For revoking keys a failed peer may still hold. Returns the number
 * of regions revoked (>= 0), or -EINVAL (NULL cache, len == 0, wrapping range).
 */
REGCACHE_API int regcache_invalidate(regcache_t *cache, const void *addr,
                                     size_t len);

/* The region's host storage: params.host_data_bytes bytes, aligned to 64, zeroed when
 * the region is registered, the host's for as long as the region lives (keep its own
 * key structures there, like UCX's region_struct_size or Open MPI's sizeof_reg). Shared
 * by every holder of the region: the host serializes its own writes. NULL if the cache
 * has host_data_bytes 0, or for NULL. */
REGCACHE_API void *regcache_region_host_data(const regcache_region_t *region);

/* Region accessors; valid while the region is held. NULL gives 0/NULL. */
REGCACHE_API uint32_t regcache_region_lkey(const regcache_region_t *region);
REGCACHE_API uint64_t regcache_region_rkey(const regcache_region_t *region);
/* libfabric's fi_mr_desc (the fabric driver), else NULL. */
REGCACHE_API void *regcache_region_desc(const regcache_region_t *region);
REGCACHE_API void *regcache_region_addr(const regcache_region_t *region);
REGCACHE_API size_t regcache_region_length(const regcache_region_t *region);
REGCACHE_API unsigned regcache_region_access(const regcache_region_t *region);
/* The driver's handle (struct ibv_mr *, struct fid_mr *, the custom reg's handle). */
REGCACHE_API void *regcache_region_handle(const regcache_region_t *region);

/* ---------------------------------------------------------------- stats */
typedef struct regcache_stats {
  uint64_t hits, misses, merges, evictions, invalidations;
  uint64_t registrations, deregistrations, regions, bytes;
  uint64_t pending; /* invalidated regions waiting for deregistration */
  /* Inserts retried because the memory changed while registering. */
  uint64_t retries;
  uint64_t peak_bytes; /* highest `bytes` seen */
  uint64_t failures;   /* driver registration failures returned to callers */
} regcache_stats_t;
/* Fills *stats_p (a consistent-enough snapshot: counters are per thread). */
REGCACHE_API int regcache_get_stats(regcache_t *cache,
                                    regcache_stats_t *stats_p);
/* Writes the stats as one human-readable line per counter to stream. */
REGCACHE_API int regcache_print_stats(regcache_t *cache, FILE *stream);

/* ---------------------------------------------------------------- errors, logging */
/* Text for a negative errno (or 0). Never NULL; static storage. */
REGCACHE_API const char *regcache_strerror(int err);

enum {
  REGCACHE_LOG_OFF = 0,
  REGCACHE_LOG_ERROR = 1,
  REGCACHE_LOG_WARN = 2,
  REGCACHE_LOG_INFO = 3,
  REGCACHE_LOG_DEBUG = 4,
  REGCACHE_LOG_TRACE = 5
};
typedef void (*regcache_log_func_t)(void *arg, int level, const char *msg);
/* Routes the library's log lines (level <= the current level) to fn instead of stderr
 * (or REGCACHE_LOG_FILE); msg is the message alone, without the time/host/pid prefix.
 * fn may be called from any thread, but never from inside a memory-event path or a
 * notifier callback: lines logged there are queued (a fixed ring; overflow is counted
 * and reported) and handed to fn on the next log call or handler change. fn must not
 * call back into regcache. fn NULL restores stderr. */
REGCACHE_API void regcache_set_log_handler(regcache_log_func_t fn, void *arg);
/* Sets the level (REGCACHE_LOG_*); overrides REGCACHE_LOG_LEVEL. -EINVAL if out of
 * range. */
REGCACHE_API int regcache_set_log_level(int level);

/* ---------------------------------------------------------------- tunables */
/* Overrides tunable `name` (with or without the REGCACHE_ prefix) for caches created
 * afterwards, as if the environment said so. -ENOENT unknown name, -EINVAL bad value
 * (logged with the accepted values). Lets an MPI map its own parameters onto ours. */
REGCACHE_API int regcache_config_set(const char *name, const char *value);
/* Copies the current value of tunable `name` into buf (NUL-terminated, truncated).
 * Returns the full length, or -ENOENT / -EINVAL. */
REGCACHE_API int regcache_config_get(const char *name, char *buf,
                                     size_t buflen);
/* Prints every tunable: name, current value, and with REGCACHE_CONFIG_PRINT_HELP its
 * type, default and help text. */
#define REGCACHE_CONFIG_PRINT_HELP 0x1u
/* Also where each value came from: environment, regcache_config_set or default. */
#define REGCACHE_CONFIG_PRINT_ORIGIN 0x2u
/* Also what `auto` resolves to in this process (MAX_BYTES from RLIMIT_MEMLOCK or RAM,
 * MONITOR: the event source installed now). */
#define REGCACHE_CONFIG_PRINT_RESOLVED 0x4u
/* Wrap help text at cols columns (default 80). Every value line still starts with
 * REGCACHE_<NAME>=<value>. */
#define REGCACHE_CONFIG_PRINT_WIDTH(cols) (((unsigned)(cols)&0xffffu) << 16)
/* Validates every tunable's current value; logs each bad one (naming the variable and the
 * accepted values) and returns -EINVAL if any is bad, else 0. */
REGCACHE_API int regcache_config_check(void);
REGCACHE_API int regcache_config_print(FILE *stream, unsigned flags);

REGCACHE_EXTERN_C_END

#endif /* REGCACHE_REGCACHE_H */

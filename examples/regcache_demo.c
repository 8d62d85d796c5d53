/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * regcache-demo: the registration cache in 60 lines of C, on the host driver.
 *
 * Registers a buffer (miss), gets it again (hit), munmaps it and maps new memory at the
 * same address (the notifier invalidates the cached registration), gets again (miss:
 * registers the new pages, never returns the stale ones), then times a hit loop and
 * prints the cache's statistics. Exit status 0 only if the cache behaved as described.
 * Uses nothing but <regcache/regcache.h>.
 */
#define _GNU_SOURCE
#include <regcache/regcache.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

#define CHECK(cond, ...)                                      \
  do {                                                        \
    if (!(cond)) {                                            \
      fprintf(stderr, "regcache-demo: FAILED: " __VA_ARGS__); \
      fprintf(stderr, "\n");                                  \
      return 1;                                               \
    }                                                         \
  } while (0)

int main(int argc, char **argv) {
  int quiet = argc > 1 && strcmp(argv[1], "--quiet") == 0;
  const size_t len = 1 << 20;
  const long iters = 2000000;
  regcache_driver_t *drv = NULL;
  regcache_t *cache = NULL;
  regcache_region_t *r1 = NULL, *r2 = NULL, *r3 = NULL;
  regcache_stats_t st;
  int rc;

  rc = regcache_driver_host_open(&drv);
  CHECK(rc == 0, "regcache_driver_host_open: %s", regcache_strerror(rc));
  rc = regcache_create(drv, NULL, &cache);
  CHECK(rc == 0, "regcache_create: %s", regcache_strerror(rc));

  char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(buf != MAP_FAILED, "mmap");
  memset(buf, 1, len);

  rc = regcache_get(cache, buf, len, REGCACHE_ACCESS_LOCAL_WRITE,
                    &r1); /* miss */
  CHECK(rc == 0, "first get: %s", regcache_strerror(rc));
  regcache_put(cache, r1);
  rc = regcache_get(cache, buf + 4096, 4096, 0,
                    &r2); /* hit: inside the cached region */
  CHECK(rc == 0, "second get: %s", regcache_strerror(rc));
  CHECK(r2 == r1, "second get should hit the first region");
  uint64_t old_rkey = regcache_region_rkey(r2);
  regcache_put(cache, r2);

  /* The program frees the memory and gets new memory at the same address. */
  CHECK(munmap(buf, len) == 0, "munmap");
  char *again = mmap(buf, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  CHECK(again == buf, "mmap at the same address");
  memset(again, 2, len);
  if (strcmp(regcache_notifier_source(), "none") == 0) {
    /* No automatic source on this system: the host tells us (explicit source). */
    regcache_notify_unmapped(buf, len);
  }
  rc = regcache_get(cache, again, len, REGCACHE_ACCESS_LOCAL_WRITE, &r3);
  CHECK(rc == 0, "get after munmap: %s", regcache_strerror(rc));
  CHECK(regcache_region_rkey(r3) != old_rkey,
        "stale registration returned after munmap");
  regcache_put(cache, r3);

  /* Time the hit path. */
  double t0 = now_ns();
  for (long i = 0; i < iters; i++) {
    regcache_region_t *r;
    regcache_get(cache, again + (i & 255) * 64, 64, 0, &r);
    regcache_put(cache, r);
  }
  double per_get = (now_ns() - t0) / iters;

  CHECK(regcache_get_stats(cache, &st) == 0, "stats");
  if (!quiet) {
    printf("regcache-demo: event source %s, driver %s\n",
           regcache_notifier_source(), regcache_driver_name(drv));
    printf("  hits %llu misses %llu hit rate %.4f\n",
           (unsigned long long)st.hits, (unsigned long long)st.misses,
           (double)st.hits / (double)(st.hits + st.misses));
    printf("  registrations %llu deregistrations %llu invalidations %llu\n",
           (unsigned long long)st.registrations,
           (unsigned long long)st.deregistrations,
           (unsigned long long)st.invalidations);
    printf("  regions %llu bytes %llu\n", (unsigned long long)st.regions,
           (unsigned long long)st.bytes);
    printf("  time per get+put (hit) %.1f ns over %ld iterations\n", per_get,
           iters);
  }
  CHECK(st.misses == 2, "expected 2 misses, saw %llu",
        (unsigned long long)st.misses);
  CHECK(st.invalidations >= 1, "munmap did not invalidate");
  CHECK(st.registrations == 2, "expected 2 registrations");

  munmap(again, len);
  regcache_destroy(cache);
  regcache_driver_close(drv);
  return 0;
}

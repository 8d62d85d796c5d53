/* SPDX-License-Identifier: BSD-3-Clause */
/* A C99 consumer of the installed library: only <regcache/regcache.h>. */
#include <regcache/regcache.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  unsigned major = 99, minor = 99, patch = 99;
  regcache_driver_t *drv = NULL;
  regcache_t *cache = NULL;
  regcache_region_t *region = NULL;
  regcache_stats_t stats;
  char *buf = malloc(1 << 16);
  int rc;

  regcache_version(&major, &minor, &patch);
  if (major != REGCACHE_VERSION_MAJOR || minor != REGCACHE_VERSION_MINOR)
    return 10;
  if ((rc = regcache_driver_host_open(&drv)) != 0) return 11;
  if ((rc = regcache_create(drv, NULL, &cache)) != 0) return 12;
  if ((rc = regcache_get(cache, buf, 1 << 16, REGCACHE_ACCESS_LOCAL_WRITE,
                         &region)) != 0) {
    fprintf(stderr, "get: %s\n", regcache_strerror(rc));
    return 13;
  }
  if (regcache_region_length(region) < (1 << 16)) return 14;
  regcache_put(cache, region);
  if (regcache_get(cache, NULL, 0, 0, &region) != -22) return 15; /* -EINVAL */
  if (regcache_get_stats(cache, &stats) != 0 || stats.misses != 1) return 16;
  regcache_destroy(cache);
  regcache_driver_close(drv);
  free(buf);
  printf("consumer: regcache %u.%u.%u ok\n", major, minor, patch);
  return 0;
}

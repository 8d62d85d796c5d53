/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * c-pkgconfig: the smallest consumer of an installed regcache, in plain C99.
 *
 * Includes only <regcache/regcache.h>, links with `pkg-config --libs regcache`,
 * and uses the host driver (no RDMA device needed): get a buffer's registration
 * twice (a miss, then a hit with the same keys), put it back, print the stats.
 * Exit status 0 only if the cache behaved so.
 */
#include <regcache/regcache.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  unsigned major, minor, patch;
  regcache_version(&major, &minor, &patch);
  printf("libregcache %u.%u.%u (header %d.%d.%d)\n", major, minor, patch,
         REGCACHE_VERSION_MAJOR, REGCACHE_VERSION_MINOR,
         REGCACHE_VERSION_PATCH);

  regcache_driver_t *driver = NULL;
  regcache_t *cache = NULL;
  int rc = regcache_driver_host_open(&driver);
  if (rc == 0) rc = regcache_create(driver, NULL, &cache);
  if (rc != 0) {
    fprintf(stderr, "regcache: %s\n", regcache_strerror(rc));
    return 1;
  }
  const size_t len = 256 * 1024;
  char *buf = malloc(len);
  regcache_region_t *first = NULL, *second = NULL;
  int ok = buf != NULL;
  if (ok)
    ok = regcache_get(cache, buf, len, REGCACHE_ACCESS_LOCAL_WRITE, &first) ==
         0; /* miss */
  if (ok) {
    const uint64_t rkey = regcache_region_rkey(first);
    regcache_put(cache, first);
    ok = regcache_get(cache, buf, len, REGCACHE_ACCESS_LOCAL_WRITE, &second) ==
         0; /* hit */
    ok = ok && regcache_region_rkey(second) == rkey;
    regcache_put(cache, second);
  }
  regcache_stats_t st;
  regcache_get_stats(cache, &st);
  printf("hits %llu, misses %llu, registrations %llu\n",
         (unsigned long long)st.hits, (unsigned long long)st.misses,
         (unsigned long long)st.registrations);
  ok = ok && st.hits == 1 && st.misses == 1;
  regcache_destroy(cache);
  regcache_driver_close(driver);
  free(buf);
  printf("c-pkgconfig: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

/* SPDX-License-Identifier: BSD-3-Clause */
/* The transport calls from C99 (host driver): regcache_find, regcache_get_flags with
 * REGCACHE_GET_NO_CACHE, host storage, regcache_invalidate; then two threads using
 * them concurrently. Uses only <regcache/regcache.h> and the shared library. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <regcache/regcache.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "c_transport_api_test.c:%d: CHECK failed: %s\n", \
              __LINE__, #cond);                                        \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

static regcache_t *cache;
static char *buf;
static long page;
static int stop; /* __atomic builtins (C99 has no atomics) */

static void *worker(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  long n = 0;
  while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
    char *a = buf + (rand_r(&seed) % 8) * page;
    regcache_region_t *r = NULL;
    int rc;
    switch (rand_r(&seed) % 4) {
      case 0:
        rc = regcache_get_flags(cache, a, (size_t)page, 0,
                                REGCACHE_GET_NO_CACHE, &r);
        CHECK(rc == 0);
        if (rc == 0) {
          unsigned *h = regcache_region_host_data(r);
          CHECK(h != NULL && *h == 0);
          if (h) *h = 1;
          regcache_put(cache, r);
        }
        break;
      case 1:
        rc = regcache_find(cache, a, (size_t)page, 0, &r);
        CHECK(rc == 0 || rc == -ENOENT);
        if (rc == 0) {
          CHECK(regcache_region_addr(r) == (void *)a);
          regcache_put(cache, r);
        }
        break;
      case 2:
        CHECK(regcache_invalidate(cache, a, (size_t)page) >= 0);
        break;
      default:
        rc = regcache_get(cache, a, (size_t)page, 0, &r);
        CHECK(rc == 0);
        if (rc == 0) regcache_put(cache, r);
    }
    ++n;
  }
  return (void *)n;
}

int main(void) {
  regcache_driver_t *drv = NULL;
  regcache_params_t params;
  regcache_region_t *r = NULL, *r2 = NULL, *n = NULL;
  regcache_stats_t st;
  pthread_t t[2];
  void *cnt[2];
  int i;

  page = sysconf(_SC_PAGESIZE);
  CHECK(regcache_config_set("MONITOR", "none") == 0);
  CHECK(posix_memalign((void **)&buf, (size_t)page, 8 * (size_t)page) == 0);
  memset(buf, 1, 8 * (size_t)page);
  CHECK(regcache_driver_host_open(&drv) == 0);
  memset(&params, 0, sizeof params);
  params.field_mask = REGCACHE_PARAM_HOST_DATA_BYTES | REGCACHE_PARAM_FLAGS;
  params.flags = REGCACHE_FLAG_NO_MERGE;
  params.host_data_bytes = 24;
  CHECK(regcache_create(drv, &params, &cache) == 0);

  CHECK(regcache_find(cache, buf, 1, 0, &r) == -ENOENT);
  CHECK(r == NULL);
  CHECK(regcache_get(cache, buf, (size_t)page, 0, &r) == 0);
  CHECK(regcache_region_host_data(r) != NULL);
  CHECK(((uintptr_t)regcache_region_host_data(r) & 63) == 0);
  strcpy((char *)regcache_region_host_data(r), "key");
  regcache_put(cache, r);
  CHECK(regcache_find(cache, buf + 1, 1, 0, &r2) == 0);
  CHECK(r2 == r);
  CHECK(strcmp((char *)regcache_region_host_data(r2), "key") == 0);

  CHECK(regcache_get_flags(cache, buf, (size_t)page, 0, REGCACHE_GET_NO_CACHE,
                           &n) == 0);
  CHECK(n != r);
  CHECK(regcache_region_lkey(n) != regcache_region_lkey(r));
  CHECK(regcache_get_flags(cache, buf, (size_t)page, 0, 0x40, &n) == -EINVAL);

  /* r2 is held: invalidate revokes it for lookups, its keys live until its put. */
  CHECK(regcache_invalidate(cache, buf, (size_t)page) == 1);
  CHECK(regcache_find(cache, buf, 1, 0, &r) == -ENOENT);
  CHECK(regcache_get_stats(cache, &st) == 0);
  CHECK(st.regions == 2); /* r2 (revoked, held) and n (no-cache) */
  regcache_put(cache, r2);
  regcache_put(cache, n);
  CHECK(regcache_get_stats(cache, &st) == 0);
  CHECK(st.regions == 0);
  CHECK(regcache_invalidate(NULL, buf, 1) == -EINVAL);
  CHECK(regcache_invalidate(cache, buf, 0) == -EINVAL);

  for (i = 0; i < 2; ++i)
    CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1)) == 0);
  {
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
  for (i = 0; i < 2; ++i) pthread_join(t[i], &cnt[i]);
  CHECK((long)(intptr_t)cnt[0] > 10 && (long)(intptr_t)cnt[1] > 10);
  CHECK(regcache_flush(cache) == 0);
  CHECK(regcache_get_stats(cache, &st) == 0);
  CHECK(st.regions == 0);

  regcache_destroy(cache);
  regcache_driver_close(drv);
  free(buf);
  if (failures == 0) printf("c_transport_api_test: ok\n");
  return failures == 0 ? 0 : 1;
}

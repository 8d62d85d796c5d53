/* SPDX-License-Identifier: BSD-3-Clause */
/* C99 test of the C API: only <regcache/regcache.h>, compiled with -std=c99
 * -Wall -Werror and linked with the shared library. Exit status 0 on success;
 * each failure prints the line and the check. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <regcache/regcache.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "c_api_test.c:%d: CHECK failed: %s\n", __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

int main(void) {
  regcache_driver_t *drv = NULL;
  regcache_t *cache = NULL;
  regcache_region_t *r = NULL, *r2 = NULL;
  regcache_stats_t st;
  regcache_params_t params;
  long page = sysconf(_SC_PAGESIZE);
  size_t len = (size_t)page * 4;
  char *buf = NULL;
  int rc;

  CHECK(regcache_config_set("MONITOR", "none") == 0);
  CHECK(posix_memalign((void **)&buf, (size_t)page, len) == 0);
  memset(buf, 1, len);

  /* No blind caching: MONITOR=none is the host's declaration, so caching is
   * safe; the external declaration takes 0 or 1 only. */
  CHECK(regcache_notifier_set_external(2) == -EINVAL);
  CHECK(regcache_notifier_set_external(-1) == -EINVAL);
  CHECK(regcache_notifier_caching_safe() == 1);
  CHECK(strcmp(regcache_notifier_blind_reason(), "") == 0);
  CHECK(regcache_notifier_set_external(1) == 0);
  CHECK(regcache_notifier_caching_safe() == 1);
  CHECK(regcache_notifier_set_external(0) == 0);

  CHECK(regcache_driver_host_open(NULL) == -EINVAL);
  CHECK(regcache_driver_host_open(&drv) == 0);
  CHECK(strcmp(regcache_driver_name(drv), "host") == 0);
  CHECK(regcache_driver_name(NULL) == NULL);

  memset(&params, 0, sizeof(params));
  params.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_NAME;
  params.max_regions = 16;
  params.name = "c99";
  CHECK(regcache_create(NULL, &params, &cache) == -EINVAL);
  CHECK(regcache_create(drv, &params, &cache) == 0);

  rc = regcache_get(cache, buf + 10, 100, REGCACHE_ACCESS_LOCAL_WRITE, &r);
  CHECK(rc == 0);
  if (rc != 0) {
    fprintf(stderr, "get: %s\n", regcache_strerror(rc));
    return 1;
  }
  CHECK(regcache_region_addr(r) == (void *)buf);
  CHECK(regcache_region_length(r) == (size_t)page);
  CHECK((regcache_region_access(r) & REGCACHE_ACCESS_LOCAL_WRITE) != 0);
  CHECK(regcache_region_lkey(r) != 0);
  CHECK(regcache_region_rkey(r) != 0);
  CHECK(regcache_region_desc(r) == NULL);
  CHECK(regcache_region_handle(r) != NULL);
  regcache_put(cache, r);

  CHECK(regcache_get(cache, buf, 1, 0, &r2) == 0);
  CHECK(r2 == r);
  regcache_put(cache, r2);

  CHECK(regcache_get(cache, buf, 0, 0, &r2) == -EINVAL);
  CHECK(regcache_get(cache, buf, 1, 0x100, &r2) == -EINVAL);
  CHECK(regcache_get(NULL, buf, 1, 0, &r2) == -EINVAL);

  CHECK(regcache_get_stats(cache, &st) == 0);
  CHECK(st.hits == 1);
  CHECK(st.misses == 1);
  CHECK(st.registrations == 1);
  CHECK(st.regions == 1);
  CHECK(st.bytes == (uint64_t)page);

  /* An explicit unmap notification invalidates: the next get is a miss. */
  CHECK(regcache_notify_unmapped(buf, len) == 0);
  CHECK(regcache_get(cache, buf, 1, 0, &r2) == 0);
  regcache_put(cache, r2);
  CHECK(regcache_get_stats(cache, &st) == 0);
  CHECK(st.misses == 2);
  CHECK(st.invalidations == 1);

  CHECK(regcache_flush(cache) == 0);
  CHECK(regcache_get_stats(cache, &st) == 0);
  CHECK(st.regions == 0);
  CHECK(regcache_print_stats(cache, stdout) == 0);
  CHECK(strlen(regcache_strerror(-ESHUTDOWN)) > 0);

  regcache_destroy(cache);
  regcache_driver_close(drv);
  free(buf);
  if (failures == 0) printf("c_api_test: ok\n");
  return failures == 0 ? 0 : 1;
}

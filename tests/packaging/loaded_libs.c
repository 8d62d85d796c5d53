/* SPDX-License-Identifier: BSD-3-Clause */
/* loaded_libs: a consumer that uses regcache the way a host-only program does (version,
 * host driver, one cache, one registration), then prints the file name of every shared
 * object mapped into the process (/proc/self/maps), one per line. Built twice by
 * tests/packaging/CMakeLists.txt: host-only (linked with libregcache alone) and, as the
 * negative control, with -DLOADED_LIBS_VERBS linked with libregcache-verbs as well.
 * check_loaded_libs.sh reads the lists. */
#include <regcache/regcache.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef LOADED_LIBS_VERBS
#include <regcache/verbs.h>
#endif

int main(void) {
  unsigned major, minor, patch;
  regcache_driver_t *drv = NULL;
  regcache_t *cache = NULL;
  regcache_region_t *region = NULL;
  static char buf[1 << 16];
  char line[4096], last[4096] = "";
  FILE *maps;

  regcache_version(&major, &minor, &patch);
#ifdef LOADED_LIBS_VERBS
  /* NULL pd: -EINVAL, but the program now needs libregcache-verbs at load time. */
  if (regcache_driver_verbs_open(NULL, &drv) != -22) return 10;
#endif
  if (regcache_driver_host_open(&drv) != 0) return 11;
  if (regcache_create(drv, NULL, &cache) != 0) return 12;
  if (regcache_get(cache, buf, sizeof(buf), REGCACHE_ACCESS_LOCAL_WRITE,
                   &region) != 0)
    return 13;
  regcache_put(cache, region);
  regcache_destroy(cache);
  regcache_driver_close(drv);

  maps = fopen("/proc/self/maps", "r");
  if (maps == NULL) return 14;
  while (fgets(line, sizeof(line), maps)) {
    char *path = strchr(line, '/');
    char *base;
    if (path == NULL || strstr(path, ".so") == NULL) continue;
    path[strcspn(path, "\n")] = '\0';
    base = strrchr(path, '/') + 1;
    if (strcmp(base, last) == 0)
      continue; /* one line per object, not per segment */
    snprintf(last, sizeof(last), "%s", base);
    printf("%s\n", base);
  }
  fclose(maps);
  return 0;
}

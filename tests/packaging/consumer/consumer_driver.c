/* SPDX-License-Identifier: BSD-3-Clause */
/* A C99 consumer of one installed driver library (libregcache-verbs or -fabric): its header
 * compiles with the flags pkg-config/CMake give, and its library resolves at load time.
 * Without a device it can only call the open function with bad arguments: -EINVAL. */
#include <errno.h>
#include <stdio.h>
#if defined(CONSUMER_DRIVER_verbs)
#include <regcache/verbs.h>
#define OPEN(d) regcache_driver_verbs_open(NULL, (d))
#define NAME "verbs"
#elif defined(CONSUMER_DRIVER_fabric)
#include <regcache/fabric.h>
#define OPEN(d) regcache_driver_fabric_open(NULL, (d))
#define NAME "fabric"
#else
#error "define CONSUMER_DRIVER_verbs or CONSUMER_DRIVER_fabric"
#endif

int main(void) {
  regcache_driver_t *drv = NULL;
  regcache_set_log_level(
      REGCACHE_LOG_OFF); /* the NULL argument is logged otherwise */
  if (OPEN(&drv) != -EINVAL) return 1;
  printf("consumer_%s: ok\n", NAME);
  return 0;
}

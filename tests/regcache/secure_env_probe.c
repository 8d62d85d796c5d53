/* SPDX-License-Identifier: BSD-3-Clause */
/* tests/regcache/secure_env_probe.c - prints whether the process runs in
 * secure-execution mode and the REGCACHE_MONITOR value the library resolved
 * (secure_env.sh runs it plain and as a setuid copy). Public C API only. */
#define _GNU_SOURCE
#include <regcache/regcache.h>
#include <stdio.h>
#include <sys/auxv.h>

int main(void) {
  char v[32] = "?";
  int rc = regcache_config_get("MONITOR", v, sizeof(v));
  printf("secure=%lu MONITOR=%s rc=%d\n", getauxval(AT_SECURE), v,
         rc < 0 ? rc : 0);
  return rc < 0 ? 1 : 0;
}

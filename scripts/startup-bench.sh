#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# startup-bench.sh [build dir] [runs]  - start-up cost of linking regcache (issue 17).
#
# Builds, against <build dir> (default build/release), an empty C program and the same
# program calling regcache_version() (linked with libregcache only, as a host-only
# consumer is), plus, for information, programs that use the verbs and fabric driver
# libraries. Runs them interleaved (round i runs every program once, in a rotated order,
# so drift and cache warmth hit all alike), <runs> times each (default 21, at least 10),
# after one warm-up run each, and prints each program's median and minimum wall time from
# posix_spawn to exit, then the goal line:
#   start-up overhead X ms (goal <= 5 ms): met|not met
# Exit status 0 whether or not the goal is met (1 only on a build error); CI reads the line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$here/build/release}" && pwd)
runs=${2:-21}
((runs >= 10)) || { echo "startup-bench: use at least 10 runs" >&2; exit 2; }
libdir=$build/regcache
[[ -e $libdir/libregcache.so ]] || { echo "startup-bench: no $libdir/libregcache.so (build first)" >&2; exit 1; }
inc=(-I"$here/regcache/include" -I"$here/notifier/include" -I"$here/drivers/verbs/include" -I"$here/drivers/fabric/include")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc=${CC:-cc}

cat >"$work/empty.c" <<'C'
int main(void) { return 0; }
C
cat >"$work/version.c" <<'C'
#include <regcache/regcache.h>
int main(void) { unsigned a, b, c; regcache_version(&a, &b, &c); return a > 99; }
C
cat >"$work/verbs.c" <<'C'
#include <regcache/verbs.h>
/* Referenced, not called (argc is 1): the program needs the library at load time. */
int main(int argc, char **argv) {
  regcache_driver_t *d;
  (void)argv;
  return argc > 1 ? regcache_driver_verbs_open(0, &d) : 0;
}
C
cat >"$work/fabric.c" <<'C'
#include <regcache/fabric.h>
int main(int argc, char **argv) {
  regcache_driver_t *d;
  (void)argv;
  return argc > 1 ? regcache_driver_fabric_open(0, &d) : 0;
}
C
# The runner: posix_spawn + waitpid per run, CLOCK_MONOTONIC, interleaved rounds.
cat >"$work/runner.c" <<'C'
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
extern char **environ;
static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static double run(const char *path) {
  struct timespec t0, t1;
  pid_t pid;
  int st;
  char *argv[] = {(char *)path, NULL};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (posix_spawn(&pid, path, NULL, NULL, argv, environ) != 0) exit(3);
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "runner: %s failed\n", path);
    exit(3);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
}
int main(int argc, char **argv) {
  int runs = atoi(argv[1]), n = argc - 2;
  double *t = calloc((size_t)(runs * n), sizeof(double));
  for (int p = 0; p < n; ++p) run(argv[2 + p]); /* warm-up: page cache, ld.so cache */
  for (int r = 0; r < runs; ++r)
    for (int k = 0; k < n; ++k) {
      int p = (r + k) % n; /* rotate the order every round */
      t[p * runs + r] = run(argv[2 + p]);
    }
  for (int p = 0; p < n; ++p) {
    qsort(t + p * runs, (size_t)runs, sizeof(double), cmp);
    double med = runs % 2 ? t[p * runs + runs / 2]
                          : (t[p * runs + runs / 2 - 1] + t[p * runs + runs / 2]) / 2;
    printf("%s %.3f %.3f\n", argv[2 + p], med, t[p * runs]);
  }
  return 0;
}
C
$cc -O2 -o "$work/runner" "$work/runner.c"
$cc -O2 -o "$work/empty" "$work/empty.c"
$cc -O2 "${inc[@]}" -o "$work/version" "$work/version.c" -L"$libdir" -Wl,-rpath,"$libdir" -lregcache
progs=("$work/empty" "$work/version")
if [[ -e $libdir/libregcache-verbs.so ]]; then
  $cc -O2 "${inc[@]}" -o "$work/verbs" "$work/verbs.c" -L"$libdir" -Wl,-rpath,"$libdir" \
    -lregcache-verbs -lregcache
  progs+=("$work/verbs")
fi
if [[ -e $libdir/libregcache-fabric.so ]]; then
  $cc -O2 "${inc[@]}" -o "$work/fabric" "$work/fabric.c" -L"$libdir" -Wl,-rpath,"$libdir" \
    -lregcache-fabric -lregcache
  progs+=("$work/fabric")
fi

out=$("$work/runner" "$runs" "${progs[@]}")
echo "start-up, $runs interleaved runs each (median / min, ms):"
while read -r path med min; do
  name=$(basename "$path")
  case $name in
    empty) what="empty C program" ;;
    version) what="regcache_version() (libregcache only)" ;;
    verbs) what="verbs driver user (libregcache-verbs)" ;;
    fabric) what="fabric driver user (libregcache-fabric)" ;;
  esac
  printf '  %-42s %8s / %s\n' "$what" "$med" "$min"
done <<<"$out"
empty=$(awk '$1 ~ /\/empty$/ {print $2}' <<<"$out")
version=$(awk '$1 ~ /\/version$/ {print $2}' <<<"$out")
awk -v e="$empty" -v v="$version" 'BEGIN {
  d = v - e; printf "start-up overhead %.2f ms (goal <= 5 ms): %s\n", d, (d <= 5 ? "met" : "not met") }'

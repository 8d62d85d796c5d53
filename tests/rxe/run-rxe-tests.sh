#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/rxe/run-rxe-tests.sh - runs the `rxe` ctest label of a build inside the Soft-RoCE
# QEMU guest, then sums up the stale-MR test's cycles and wrong bytes.
#
# Usage: tests/rxe/run-rxe-tests.sh <build-dir> [extra ctest arguments...]
#   The build dir must be configured and built (with REGCACHE_BUILD_TESTS and libibverbs).
#   It is shared writable into the guest (ctest writes Testing/); everything else is
#   read-only there. Extra arguments go to ctest (e.g. -R stale, -V).
#
# Environment:
#   REGCACHE_RXE_TIMEOUT      whole guest run, boot included (default 570 s: CI's rxe stage
#                             must stay under 10 minutes); exceeded -> status 124
#   REGCACHE_RXE_CTEST_JOBS   ctest -j inside the guest (default 2, the guest's vCPUs)
#   REGCACHE_RXE_STALE_CYCLES cycles per protected stale-MR case (default 700)
#   plus rxe-run.sh's (REGCACHE_RXE_CACHE, REGCACHE_RXE_SKIP_DEPS).
#
# Exit status: ctest's (0 = every rxe test passed), 124 timeout, 125 guest died, 2 usage.
# On a host with a real HCA, run `ctest --test-dir <build-dir> -L rxe` directly instead.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
build=$(cd "$1" && pwd -P)
shift
if [[ ! -f $build/CTestTestfile.cmake ]]; then
  echo "run-rxe-tests: $build is not a configured build folder (no CTestTestfile.cmake)" >&2
  exit 2
fi

t0=$SECONDS
log=$build/Testing/Temporary/LastTest.log
rm -f "$log"
set +e
(cd "$build" && "$here/rxe-run.sh" --writable "$build" --timeout "${REGCACHE_RXE_TIMEOUT:-570}" \
  -- ctest --test-dir "$build" -L rxe --output-on-failure --no-tests=error \
  -j "${REGCACHE_RXE_CTEST_JOBS:-2}" "$@")
rc=$?
set -e

# The stale-MR summary lines (one per test case), from ctest's log of this run.
if [[ -f $log ]] && grep -q '^STALE-MR ' "$log"; then
  echo "run-rxe-tests: stale-MR summary (bytes that missed the program's memory):"
  grep '^STALE-MR ' "$log" | sed 's/ |.*//' | awk '
    {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      key = f["source"]
      if (key == "none") {
        neg_cycles += f["cycles"]; neg_wrong += f["wrong_after_reuse"]; neg_cases++
        if (f["wrong_after_reuse"] == 0) neg_zero++
      } else {
        cycles[key] += f["cycles"]; wrong[key] += f["wrong"]; total += f["cycles"]
        total_wrong += f["wrong"]
      }
      printf "  %-9s %-17s cycles %6d  same address %6d  wrong bytes %9d\n",
             f["source"], f["path"], f["cycles"], f["same_address"],
             (key == "none" ? f["wrong_after_reuse"] : f["wrong"])
    }
    END {
      for (k in cycles) printf "  source %-9s cycles %6d  wrong bytes %d\n", k, cycles[k], wrong[k]
      printf "  protected: %d cycles, %d wrong bytes%s\n", total, total_wrong,
             (total >= 10000 ? "" : "  (fewer than 10000 cycles: partial run?)")
      printf "  negative control (REGCACHE_MONITOR=none, no explicit calls): %d cycles, %d wrong bytes on %d paths%s\n",
             neg_cycles, neg_wrong, neg_cases, (neg_zero ? " (BROKEN: a path found none)" : "")
    }'
fi
echo "run-rxe-tests: rxe stage finished with status $rc in $((SECONDS - t0)) s"
exit "$rc"

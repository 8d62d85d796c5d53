#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# info_safety_check.sh <regcache-info>: regcache-info -s (issue 17) prints the resolved
# configuration (each tunable with its origin, auto resolved), and exits 3 under
# REGCACHE_MONITOR=none: caching then rests on the program's word that it reports every
# unmap, which the tool cannot check, so it must not say "safe" (0); a bad value exits 2
# with the variable named on stderr. The blind case
# (exit 1) is tests/notifier's regcache_info_safety_blind_*.
set -euo pipefail
info=$1
unset REGCACHE_MONITOR
rc=0
out=$(COLUMNS=100 REGCACHE_MONITOR=none "$info" -s) || rc=$?
((rc == 3)) || { echo "REGCACHE_MONITOR=none: exit status $rc, want 3"; echo "$out"; exit 1; }
grep -q '^caching: ON WITHOUT A MONITOR (REGCACHE_MONITOR=none)' <<<"$out" ||
  { echo "REGCACHE_MONITOR=none: no explanation"; echo "$out"; exit 1; }
grep -q '^REGCACHE_MONITOR=none  # environment$' <<<"$out" ||
  { echo "no resolved configuration with origins"; echo "$out"; exit 1; }
# Default environment: whatever the verdict (TSan builds are blind), the report carries
# the resolved defaults, REGCACHE_MAX_BYTES=auto as a byte count with its reason.
rc=0
out=$(COLUMNS=200 "$info" -s) || rc=$?
((rc <= 2)) || { echo "default environment: exit status $rc"; echo "$out"; exit 1; }
grep -q '^resolved configuration' <<<"$out" || { echo "no resolved configuration"; echo "$out"; exit 1; }
grep -Eq '^REGCACHE_MAX_BYTES=auto  # default; = [0-9.]+[kmgt]? \((3/4 of RLIMIT_MEMLOCK|1/4 of RAM)' <<<"$out" ||
  { echo "REGCACHE_MAX_BYTES auto not resolved in -s"; echo "$out"; exit 1; }
# A bad value: exit 2, and the library's error naming the variable reaches stderr (-s
# captured the library's log lines for its "why" and swallowed it).
rc=0
err=$(REGCACHE_MONITOR=bogus "$info" -s 2>&1 >/dev/null) || rc=$?
((rc == 2)) || { echo "REGCACHE_MONITOR=bogus: exit status $rc, want 2"; exit 1; }
grep -q "invalid value 'bogus' for REGCACHE_MONITOR" <<<"$err" ||
  { echo "REGCACHE_MONITOR=bogus: the variable is not named on stderr:"; echo "$err"; exit 1; }
echo "regcache-info -s: resolved configuration shown; REGCACHE_MONITOR=none exits 3, a bad value 2"

#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# info_config_check.sh <regcache-info>: regcache-info -c wraps to the width it is given
# (COLUMNS when stdout is not a terminal), shows each value's origin and auto resolved.
# The wide run is the negative control of the width check: at 200 columns some line must
# be longer than 60, or the check would pass without any wrapping.
set -euo pipefail
info=$1
# The default's resolution is what is checked: a MONITOR set by the caller (the tsan-unit
# preset sets none) would show as the environment's value instead.
unset REGCACHE_MONITOR
narrow=$(COLUMNS=60 REGCACHE_MAX_REGIONS=7 "$info" -c)
wide=$(COLUMNS=200 REGCACHE_MAX_REGIONS=7 "$info" -c)
longest() { awk '{ if (length($0) > m) m = length($0) } END { print m }' <<<"$1"; }
(( $(longest "$narrow") <= 60 )) || { echo "a line is longer than 60 columns:"; awk 'length($0) > 60' <<<"$narrow"; exit 1; }
(( $(longest "$wide") > 60 )) || { echo "negative control: 200 columns gave no line over 60"; exit 1; }
grep -q '^REGCACHE_MAX_REGIONS=7  # environment$' <<<"$wide" || { echo "no environment origin"; exit 1; }
grep -q '^REGCACHE_MERGE_MAX_BYTES=64m  # default$' <<<"$wide" || { echo "no default origin"; exit 1; }
grep -Eq '^REGCACHE_MAX_BYTES=auto  # default; = [0-9.]+[kmgt]? \((3/4 of RLIMIT_MEMLOCK|1/4 of RAM)' <<<"$wide" ||
  { echo "MAX_BYTES auto not resolved"; grep MAX_BYTES <<<"$wide"; exit 1; }
grep -Eq '^REGCACHE_MONITOR=auto  # default; = (patch|ucm|uffd|none)' <<<"$wide" || { echo "MONITOR auto not resolved"; grep MONITOR <<<"$wide"; exit 1; }
# regcache_config_set, the third origin, is not reachable from a command line: log_test
# (ConfigPrint.ShowsEveryOrigin) covers it.
echo "regcache-info -c: wrapped at 60 columns, origins and resolved auto values shown"

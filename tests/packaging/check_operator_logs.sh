#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check_operator_logs.sh <host-only consumer>: logging as an operator of a 512-rank job
# sees it (issue 17), through a plain C consumer that creates a cache (loaded_libs.c):
#   1. a misspelled REGCACHE_MAX_REGION=5 is reported at warn level when the cache is
#      created, on a line that carries time, host, pid and thread id;
#      REGCACHE_LOG_LEVEL=error silences it (the control: the check sees the level);
#   2. REGCACHE_LOG_FILE=<dir>/rc-%h-%p-%%.log gets the lines, in a file named with this
#      host, the process's pid and a literal %; nothing goes to stderr;
#   3. a REGCACHE_LOG_FILE that cannot be opened is reported on stderr with the expanded
#      path and the reason, and the program still runs (exit 0).
set -euo pipefail
prog=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
host=$(hostname)
unset REGCACHE_LOG_FILE REGCACHE_LOG_LEVEL
line_re="^\[[0-9]{10,}\.[0-9]{6}\] \[$host:([0-9]+):[0-9]+\] regcache warning: unknown environment variable REGCACHE_MAX_REGION=5 ignored; did you mean REGCACHE_MAX_REGIONS\?"

err=$(REGCACHE_MAX_REGION=5 "$prog" 2>&1 >/dev/null)
grep -Eq "$line_re" <<<"$err" || { echo "1: no warn line with time/host/pid/tid:"; echo "$err"; exit 1; }
err=$(REGCACHE_MAX_REGION=5 REGCACHE_LOG_LEVEL=error "$prog" 2>&1 >/dev/null)
if grep -q "REGCACHE_MAX_REGION" <<<"$err"; then
  echo "1 (control): REGCACHE_LOG_LEVEL=error still shows the warning:"; echo "$err"; exit 1
fi

err=$(REGCACHE_MAX_REGION=5 REGCACHE_LOG_FILE="$dir/rc-%h-%p-%%.log" "$prog" 2>&1 >/dev/null)
[[ -z $err ]] || { echo "2: lines went to stderr with REGCACHE_LOG_FILE:"; echo "$err"; exit 1; }
shopt -s nullglob
files=("$dir"/rc-"$host"-*-%.log)
((${#files[@]} == 1)) || { echo "2: want one file rc-$host-<pid>-%.log, have:"; ls "$dir"; exit 1; }
pid=${files[0]#"$dir/rc-$host-"}
pid=${pid%-%.log}
grep -Eq "$line_re" "${files[0]}" || { echo "2: no warn line in ${files[0]}:"; cat "${files[0]}"; exit 1; }
[[ $(grep -Eo "\[$host:[0-9]+:" "${files[0]}" | head -n1) == "[$host:$pid:" ]] ||
  { echo "2: %p ($pid) is not the pid on the lines:"; cat "${files[0]}"; exit 1; }

rc=0
err=$(REGCACHE_MAX_REGION=5 REGCACHE_LOG_FILE="$dir/no/such/dir/rc-%p.log" "$prog" 2>&1 >/dev/null) || rc=$?
((rc == 0)) || { echo "3: the program failed ($rc) with an unopenable log file:"; echo "$err"; exit 1; }
grep -Eq "cannot open REGCACHE_LOG_FILE '$dir/no/such/dir/rc-[0-9]+\.log' \(from '$dir/no/such/dir/rc-%p\.log'\): No such file or directory; logging to stderr" <<<"$err" ||
  { echo "3: no clear message for an unopenable log file:"; echo "$err"; exit 1; }
grep -Eq "$line_re" <<<"$err" || { echo "3: the warning did not fall back to stderr:"; echo "$err"; exit 1; }
echo "logs: warn line with time/host/pid/tid at cache creation, %h/%p/%% file, unopenable path reported"

#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/rxe/rxe-smoke.sh - smoke check of the rxe guest: boots it (rxe-run.sh) and checks
# that ibv_devinfo shows rxe0, `rdma link` lists it, and an ibv_rc_pingpong loopback (RC,
# RoCEv2 GID index 1) moves data. Exit status 0 when all pass; rxe-run.sh's otherwise.
# Usage: tests/rxe/rxe-smoke.sh [--in-guest]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ ${1:-} != --in-guest ]]; then
  exec "$here/rxe-run.sh" --timeout 300 -- "$here/rxe-smoke.sh" --in-guest
fi

ok() { echo "rxe-smoke: ok   $*"; }
bad() {
  echo "rxe-smoke: FAIL $*"
  exit 1
}
check() {
  local what=$1 pattern=$2
  shift 2
  if "$@" 2>&1 | grep -q -- "$pattern"; then ok "$what"; else bad "$what ($*)"; fi
}
check "ibv_devinfo: rxe0 PORT_ACTIVE" 'state:.*PORT_ACTIVE' ibv_devinfo -d rxe0
check "rdma link: rxe0/1 ACTIVE" '^link rxe0/1 state ACTIVE' rdma link show
check "GID index 1 is ::ffff:192.0.2.1" 'GID\[  1\]:.*192.0.2.1' ibv_devinfo -d rxe0 -v
ibv_rc_pingpong -d rxe0 -g 1 -n 200 -s 4096 >/tmp/pp-server.log 2>&1 &
server=$!
sleep 1
if ibv_rc_pingpong -d rxe0 -g 1 -n 200 -s 4096 localhost >/tmp/pp-client.log 2>&1 && wait "$server"; then
  ok "ibv_rc_pingpong loopback: $(grep -h 'iters in' /tmp/pp-client.log)"
else
  kill "$server" 2>/dev/null || true
  cat /tmp/pp-server.log /tmp/pp-client.log
  bad "ibv_rc_pingpong loopback"
fi
echo "rxe-smoke: all checks passed"

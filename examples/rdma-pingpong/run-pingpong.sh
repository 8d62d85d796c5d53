#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# run-pingpong.sh BINARY [CLIENT ARGS...] - runs rdma-pingpong's server and client on this
# machine (loopback TCP for the out-of-band exchange, the RDMA device for the data), first
# through the cache, then with --no-cache, and prints both summaries. Exit status 0 only if
# all four processes succeeded (each checks every byte it received).
set -euo pipefail
bin=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/rdma-pingpong.XXXXXX")
trap 'rm -rf "$dir"' EXIT

run() { # run LABEL EXTRA-CLIENT-ARGS...
  local label=$1
  shift
  rm -f "$dir/port"
  "$bin" --server --port 0 --port-file "$dir/port" >"$dir/server.out" 2>&1 &
  local spid=$!
  for _ in $(seq 200); do # 20 s: the server opens the device, then writes the port
    [[ -s $dir/port ]] && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s $dir/port ]]; then
    echo "run-pingpong: the server did not start"
    cat "$dir/server.out"
    kill "$spid" 2>/dev/null || true
    wait "$spid" || true
    return 1
  fi
  local crc=0 src=0
  timeout 120 "$bin" --connect "127.0.0.1:$(<"$dir/port")" "$@" >"$dir/client.out" 2>&1 || crc=$?
  wait "$spid" || src=$?
  echo "== $label"
  cat "$dir/client.out" "$dir/server.out"
  ((crc == 0 && src == 0))
}

rc=0
run "with regcache" "$@" || rc=1
run "without a cache (--no-cache)" "$@" --no-cache || rc=1
echo "run-pingpong: $([[ $rc == 0 ]] && echo ok || echo FAILED)"
exit "$rc"

#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/bench/notifier_icount.sh - the issue 7 goal "munmap of an unrelated range with the
# notifier active <= 1.05x plain munmap", measured two ways (docs/notifier.md, "Cost"):
#   1. user-space instructions per munmap, deterministic: notifier_bench --icount under
#      valgrind --tool=callgrind (collection on around each munmap only);
#   2. wall time, interleaved plain/active blocks with a median ratio and its 95 % CI
#      (notifier_bench), which also converts the instruction counts of step 1 into a
#      fraction of the plain munmap (the kernel's part, which valgrind cannot count,
#      dominates; this VM exposes no hardware counters to perf).
#
#   tests/bench/notifier_icount.sh [BUILD_DIR] [notifier_bench wall options, e.g. --pairs 3000]
#
# BUILD_DIR defaults to build/release; it needs REGCACHE_BUILD_BENCHMARKS=ON. Takes about
# 10-20 s on 2 cores with the defaults (400 pairs of 256 munmaps per variant).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
[ $# -gt 0 ] && shift
bench=$build/tests/bench/notifier_bench
[ -x "$bench" ] || { echo "no $bench: build with REGCACHE_BUILD_BENCHMARKS=ON" >&2; exit 1; }
command -v valgrind > /dev/null || { echo "valgrind not installed (apt-get install valgrind)" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# --smc-check=all: the patch source rewrites libc's (file-backed) code, which valgrind
# would otherwise keep executing from its stale translation.
valgrind --tool=callgrind --collect-atstart=no --smc-check=all \
  --callgrind-out-file="$out/cg.%p" "$bench" --icount --per-block 1000 \
  > "$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
grep -E 'unavailable' "$out/log" || true

# Every dump: "desc: Trigger: Client Request: NAME" and "totals: IR" (collection was only
# on around the 1000 munmaps of that variant).
args=()
echo "callgrind, user-space instructions per call:"
for f in "$out"/cg.*; do
  name=$(sed -n 's/^desc: Trigger: Client Request: //p' "$f")
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f")
  [ -n "$name" ] && [ -n "$total" ] || continue
  per=$(awk -v t="$total" 'BEGIN { printf "%.1f", t / 1000 }')
  printf '  %-16s %8s\n' "$name" "$per"
  args+=(--ir "$name=$per")
done
echo
exec "$bench" "${args[@]}" "$@"

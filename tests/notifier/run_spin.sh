#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# Checks a Promela model with spin: exhaustive safety run (assertions and invalid end
# states), fails on any error.
# Usage: run_spin.sh <model.pml> <work dir> [spin -D options...]. Exit 77 (ctest skip) if
# spin or cc is missing.
set -eu
model=$1
dir=$2
shift 2
command -v spin >/dev/null 2>&1 || { echo "spin not installed: skipping"; exit 77; }
cc=${CC:-cc}
command -v "$cc" >/dev/null 2>&1 || cc=gcc
mkdir -p "$dir"
cd "$dir"
spin -a "$@" "$model"
"$cc" -O2 -DSAFETY -o pan pan.c
./pan -m200000 > pan.out 2>&1 || true
cat pan.out
grep -q "errors: 0" pan.out || { echo "spin found a violation (see trail in $dir)"; exit 1; }
if grep -q "max search depth too small" pan.out; then echo "search truncated"; exit 1; fi

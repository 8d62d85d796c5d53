#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Builds a sanitizer preset (asan = ASan+UBSan, tsan = ThreadSanitizer; clang 14) and runs
# its tests: label unit for asan, unit and stress for tsan.
#   scripts/sanitize.sh asan|tsan
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: scripts/sanitize.sh asan|tsan}
./scripts/build.sh "$kind"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
# Under TSan no automatic event source installs (patch, uffd and ucm refuse:
# docs/notifier.md), so `auto` is blind and caches would not cache. The
# tsan-unit preset runs the tests with REGCACHE_MONITOR=none (the host reports
# unmaps: every test that unmaps cached memory notifies explicitly or skips
# under TSan), which is what `auto` resolved to there before.
ctest --preset "$kind-unit" -j 2 --timeout 300

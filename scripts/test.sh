#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The tests: set up, build (release preset) and run the whole suite: every host test
# (labels unit, stress), then the device tests (label rxe) inside a QEMU guest running
# Debian's kernel with rdma_rxe (tests/rxe/). REGCACHE_SKIP_RXE=1 skips the guest stage.
set -euo pipefail
cd "$(dirname "$0")/.."
REGCACHE_DEPS_EXTRA=rxe ./scripts/build.sh release
ctest --test-dir build/release -LE rxe --output-on-failure -j 2 --timeout 300
if [[ "${REGCACHE_SKIP_RXE:-0}" != 1 && -x tests/rxe/run-rxe-tests.sh ]]; then
  tests/rxe/run-rxe-tests.sh build/release
fi

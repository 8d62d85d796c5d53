#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The main job: set up, build (release preset) and run the registration-cache demo on the
# default driver (host: mlock; no HCA needed), printing what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh release
if [[ -x build/release/tests/bench/regcache-bench ]]; then
  exec build/release/tests/bench/regcache-bench "$@"
fi
exec build/release/examples/regcache-demo "$@"

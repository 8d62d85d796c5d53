#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Set up and build: installs the Debian packages (scripts/install-deps.sh), configures the
# CMake preset given (default: release) and builds it. Idempotent; re-runs are incremental.
#   scripts/build.sh [release|debug|asan|tsan|clang-tsa]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-release}
extra=${REGCACHE_DEPS_EXTRA:-}
REGCACHE_DEPS_EXTRA=$extra ./scripts/install-deps.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)"

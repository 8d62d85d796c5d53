#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Installs every Debian 12 package the build, the tests and the benchmarks need.
# Idempotent: packages already installed are skipped by apt-get itself; waits for
# another apt holding the lock instead of failing. Run as root (or via sudo).
set -euo pipefail

# Core build + host-side tests. Each package is justified in README.md "Dependencies".
PKGS=(
  build-essential cmake pkg-config ninja-build
  g++ clang clang-format libclang-rt-14-dev
  libibverbs-dev librdmacm-dev libfabric-dev libfabric-bin
  libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  spin
  libucx-dev
  valgrind
  man-db
  abigail-tools
)
if [[ "${REGCACHE_DEPS_EXTRA:-}" == *rxe* ]]; then
  PKGS+=(qemu-system-x86 busybox-static kmod cpio iproute2 rdma-core ibverbs-providers
         ibverbs-utils rdmacm-utils perftest libopenmpi-dev openmpi-bin
         xz-utils zstd)  # tests/rxe/rxe-setup.sh unpacks .ko.xz / .ko.zst modules
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
SUDO=
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
echo "install-deps: installing ${missing[*]}"
$SUDO "${APT[@]}" update -qq
$SUDO "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

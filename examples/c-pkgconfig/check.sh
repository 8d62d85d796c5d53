#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check.sh <build dir> <scratch dir> - installs the build into <scratch>/prefix, builds
# examples/c-pkgconfig with its Makefile through pkg-config (no CMake, no source tree
# include paths), and runs it. Used by the ctest example_c_pkgconfig.
set -euo pipefail
build=$1 scratch=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rm -rf "$scratch"
mkdir -p "$scratch/out"
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
pc=$(find "$scratch/prefix" -name regcache.pc | head -n1)
[[ -n $pc ]] || { echo "check.sh: regcache.pc not installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc")
echo "pkg-config --cflags --libs regcache: $(pkg-config --cflags --libs regcache)"
make -s -C "$here" OUT="$scratch/out" CC="${CC:-cc}"
"$scratch/out/c-pkgconfig"

#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check_install.sh <build dir> <scratch dir> <consumer source dir>
set -euo pipefail
build=$1 scratch=$2 src=$3
rm -rf "$scratch"
prefix=$scratch/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
lib=$(find "$prefix" -name 'libregcache.so.0' | head -n1)
[[ -n "$lib" ]] || { echo "libregcache.so.0 not installed"; exit 1; }
libdir=$(dirname "$lib")

# 1. Only regcache_* symbols are exported, all under the version node, plus the internal
# interface of the driver libraries under REGCACHE_PRIVATE_* (docs/versioning.md).
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^regcache_' | grep -v '^REGCACHE_' |
      grep -v '^_ZN8regcache.*@@REGCACHE_PRIVATE_' || true)
if [[ -n "$bad" ]]; then echo "unexpected exported symbols:"; echo "$bad"; exit 1; fi
nm -D --defined-only "$lib" | grep -q 'regcache_get@@REGCACHE_0.1' || { echo "no versioned regcache_get"; exit 1; }
soname=$(objdump -p "$lib" | awk '/SONAME/{print $2}')
[[ "$soname" == libregcache.so.0 ]] || { echo "SONAME is '$soname'"; exit 1; }

# 2. C99 consumer through pkg-config.
export PKG_CONFIG_PATH=$libdir/pkgconfig
mkdir -p "$scratch/pc"
# shellcheck disable=SC2046
gcc -std=c99 -Wall -Werror -o "$scratch/pc/consumer" "$src/consumer.c" \
    $(pkg-config --cflags --libs regcache)
LD_LIBRARY_PATH=$libdir "$scratch/pc/consumer"

# 3. C99 consumer through find_package(regcache).
cmake -S "$src" -B "$scratch/cm" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER=gcc >/dev/null
cmake --build "$scratch/cm" >/dev/null
LD_LIBRARY_PATH=$libdir "$scratch/cm/consumer"
echo "packaging: exports, SONAME, pkg-config and find_package consumers ok"

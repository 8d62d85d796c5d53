#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check_install.sh <build dir> <scratch dir> <consumer source dir> <source dir>
#
# 1. Installs <build dir> into a scratch prefix and checks the libraries: exported symbols
#    (regcache_* by name under their REGCACHE_<x.y> node, the driver libraries' internal
#    interface under REGCACHE_PRIVATE_*), SONAMEs, DT_NEEDED of libregcache.
# 2. Builds the libraries again from <source dir> (tests and examples off, benchmarks on:
#    a package build installs regcache-bench; one scratch build tree, reconfigured per
#    layout, so objects are compiled once) and installs them in each layout a distribution
#    uses:
#      prefix <scratch>/p-lib,   libdir lib
#      prefix <scratch>/p-lib64, libdir lib64
#      prefix /usr (DESTDIR),    libdir lib/<multiarch>   (Debian: lib/x86_64-linux-gnu)
#    For each: pkg-config's libdir/includedir must be the directories the files are in (0.1's
#    ${pcfiledir}/../.. gave /usr/lib/lib/x86_64-linux-gnu), and C99 consumers built through
#    pkg-config and through find_package (with the driver components) must build and run.
#    find_package(regcache COMPONENTS nosuch) must fail (negative control of components),
#    and the package version file must accept and refuse what docs/versioning.md says.
set -euo pipefail
build=$1 scratch=$2 src=$3 top=$4
mkdir -p "$scratch"
rm -rf "$scratch"/prefix "$scratch"/p-* "$scratch"/destdir "$scratch"/c-*
prefix=$scratch/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
lib=$(find "$prefix" -name 'libregcache.so.0' | head -n1)
[[ -n "$lib" ]] || { echo "libregcache.so.0 not installed"; exit 1; }
libdir=$(dirname "$lib")
# The project's version (docs/versioning.md): regcache.pc's, checked against the library's
# file name (libregcache.so.<version>) and used for the find_package requests below.
version=$(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --modversion regcache)
[[ -e $libdir/libregcache.so.$version ]] || { echo "regcache.pc says $version; no libregcache.so.$version"; exit 1; }
major=${version%%.*} minor=${version#*.} minor=${minor%%.*}

# ---- 0. tools and man pages are installed
for f in bin/regcache-info bin/regcache-bench share/man/man1/regcache-info.1 \
         share/man/man3/regcache.3 share/man/man7/regcache.7 share/doc/regcache/LICENSE \
         share/doc/regcache/NEWS.md share/doc/regcache/SECURITY.md; do
  [[ -e $prefix/$f ]] || { echo "not installed: $f"; exit 1; }
done

# ---- 1. exports, SONAMEs, dependencies
check_exports() {  # <lib> <soname>
  local l=$1 want=$2 bad soname
  bad=$(nm -D --defined-only "$l" | awk '{print $3}' | grep -v '^regcache_.*@@REGCACHE_[0-9]' |
        grep -v '^REGCACHE_' | grep -v '^_ZN8regcache.*@@REGCACHE_PRIVATE_' || true)
  if [[ -n "$bad" ]]; then echo "$l: unexpected exported symbols:"; echo "$bad"; exit 1; fi
  soname=$(objdump -p "$l" | awk '/SONAME/{print $2}')
  [[ "$soname" == "$want" ]] || { echo "$l: SONAME is '$soname', want $want"; exit 1; }
}
check_exports "$lib" libregcache.so.0
nm -D --defined-only "$lib" | grep -q 'regcache_get@@REGCACHE_0.1' || { echo "no versioned regcache_get"; exit 1; }
if objdump -p "$lib" | grep NEEDED | grep -E 'ibverbs|fabric|spdlog|fmt'; then
  echo "libregcache.so.0 needs a library a host-only consumer must not load"; exit 1
fi
# spdlog and fmt are compiled in: no undefined reference to them may remain (an object
# built without FMT_HEADER_ONLY would leave one, resolved only by luck or by libfmt.so).
for l in "$libdir"/libregcache*.so.0; do
  if nm -D --undefined-only "$l" | c++filt | grep -E ' (fmt|spdlog)::'; then
    echo "$l: undefined spdlog/fmt symbols (they must be compiled in)"; exit 1
  fi
done
drivers=()
for d in verbs fabric; do
  if [[ -e $libdir/libregcache-$d.so.0 ]]; then
    check_exports "$libdir/libregcache-$d.so.0" "libregcache-$d.so.0"
    drivers+=("$d")
  fi
done
# libregcache-fi-monitor.so (a module loaded by name: no number in its SONAME) versions
# its functions like the libraries (drivers/fabric/regcache-fi-monitor.map).
if [[ -e $libdir/libregcache-fi-monitor.so ]]; then
  bad=$(nm -D --defined-only "$libdir/libregcache-fi-monitor.so" | awk '{print $3}' |
        grep -v '^regcache_fi_monitor_.*@@REGCACHE_[0-9]' | grep -v '^REGCACHE_' || true)
  [[ -z $bad ]] || { echo "libregcache-fi-monitor.so: unversioned or foreign exports:"; echo "$bad"; exit 1; }
fi
echo "exports and SONAMEs ok: libregcache${drivers[*]/#/ libregcache-}"

# ---- 2. every layout
consume() {  # <label> <pkgconfig dir> <cmake prefix> <expected libdir> <expected includedir>
  local label=$1 pcdir=$2 cmprefix=$3 wantlib=$4 wantinc=$5 out=$scratch/c-$1 got d
  mkdir -p "$out"
  export PKG_CONFIG_PATH=$pcdir
  for m in regcache "${drivers[@]/#/regcache-}"; do
    got=$(realpath -m "$(pkg-config --variable=libdir "$m")")
    [[ $got == "$(realpath -m "$wantlib")" ]] || { echo "$label: $m.pc libdir $got, files in $wantlib"; exit 1; }
    got=$(realpath -m "$(pkg-config --variable=includedir "$m")")
    [[ $got == "$(realpath -m "$wantinc")" ]] || { echo "$label: $m.pc includedir $got, headers in $wantinc"; exit 1; }
  done
  # shellcheck disable=SC2046
  gcc -std=c99 -Wall -Werror -o "$out/pc-consumer" "$src/consumer.c" $(pkg-config --cflags --libs regcache)
  LD_LIBRARY_PATH=$wantlib "$out/pc-consumer" >/dev/null
  # As installed: the host-only consumer's dependency closure (ldd) has no RDMA stack;
  # the verbs consumer's has libibverbs (the control: ldd sees the installed closure).
  if grep -E 'libibverbs|libfabric|libpsm|librdmacm' <<<"$(LD_LIBRARY_PATH=$wantlib ldd "$out/pc-consumer")"; then
    echo "$label: the host-only pkg-config consumer needs an RDMA library"; exit 1
  fi
  for d in "${drivers[@]}"; do
    # shellcheck disable=SC2046
    gcc -std=c99 -Wall -Werror -DCONSUMER_DRIVER_"$d" -o "$out/pc-consumer-$d" \
      "$src/consumer_driver.c" $(pkg-config --cflags --libs "regcache-$d")
    LD_LIBRARY_PATH=$wantlib "$out/pc-consumer-$d" >/dev/null
    # (ldd's output captured first: grep -q closing the pipe early would fail it under
    # pipefail.)
    if [[ $d == verbs ]] && ! grep -q libibverbs <<<"$(LD_LIBRARY_PATH=$wantlib ldd "$out/pc-consumer-$d")"; then
      echo "$label: control: ldd does not show libibverbs for the verbs consumer"; exit 1
    fi
  done
  local dl
  dl=$(IFS=';'; echo "${drivers[*]}")
  local lib64
  lib64=$([[ $label == lib64 ]] && echo ON || echo OFF)
  cmake -S "$src" -B "$out/cm" -DCMAKE_PREFIX_PATH="$cmprefix" -DCMAKE_C_COMPILER=gcc \
    -DCONSUMER_DRIVERS="$dl" -DCONSUMER_LIB64="$lib64" -DCONSUMER_VERSION="$major.$minor" \
    >"$out/cm.log" 2>&1 || { cat "$out/cm.log"; exit 1; }
  grep -q "found regcache $version\$" "$out/cm.log" || { echo "$label: find_package found another version:"; cat "$out/cm.log"; exit 1; }
  cmake --build "$out/cm" >/dev/null
  LD_LIBRARY_PATH=$wantlib "$out/cm/consumer" >/dev/null
  for d in "${drivers[@]}"; do LD_LIBRARY_PATH=$wantlib "$out/cm/consumer_$d" >/dev/null; done
  if cmake -S "$src" -B "$out/cm-bad" -DCMAKE_PREFIX_PATH="$cmprefix" -DCMAKE_C_COMPILER=gcc \
       -DCONSUMER_DRIVERS=nosuch -DCONSUMER_VERSION="$major.$minor" >/dev/null 2>&1; then
    echo "$label: find_package(regcache COMPONENTS nosuch) succeeded"; exit 1
  fi
  # The package version file against docs/versioning.md: while the major version is 0 a
  # request for 0.y accepts exactly 0.y.* (SameMinorVersion), from 1.0 any later x.y of the
  # same major (SameMajorVersion). A later minor is refused either way. The config is
  # found (the consumer with the right version above), so a refusal here is the version.
  local older=() refused v
  if ((major == 0)); then
    ((minor == 0)) || older+=("0.$((minor - 1))")
  else
    older+=("$((major - 1)).0")
  fi
  for v in "${older[@]}" "$major.$((minor + 1))"; do
    refused=0
    cmake -S "$src" -B "$out/cm-v$v" -DCMAKE_PREFIX_PATH="$cmprefix" -DCMAKE_C_COMPILER=gcc \
      -DCONSUMER_LIB64="$lib64" -DCONSUMER_VERSION="$v" >"$out/cm-v$v.log" 2>&1 || refused=1
    if ((refused == 0)); then
      echo "$label: find_package(regcache $v) accepted $version (docs/versioning.md)"; exit 1
    fi
    grep -q 'compatible with requested version' "$out/cm-v$v.log" ||
      { echo "$label: find_package(regcache $v) failed for another reason:"; cat "$out/cm-v$v.log"; exit 1; }
  done
  unset PKG_CONFIG_PATH
  echo "layout $label: pkg-config paths, pkg-config and find_package consumers (regcache${drivers[*]/#/ }) ok"
}

lb=$scratch/layout-build
multiarch=$(gcc -print-multiarch 2>/dev/null || true)
[[ -n $multiarch ]] || multiarch=x86_64-linux-gnu
layout() {  # <label> <prefix> <libdir> [destdir]
  local label=$1 pfx=$2 ld=$3 dest=${4:-}
  cmake -S "$top" -B "$lb" -DCMAKE_BUILD_TYPE=Release -DREGCACHE_BUILD_TESTS=OFF \
    -DREGCACHE_BUILD_EXAMPLES=OFF -DREGCACHE_BUILD_BENCHMARKS=ON \
    -DCMAKE_INSTALL_PREFIX="$pfx" -DCMAKE_INSTALL_LIBDIR="$ld" >"$scratch/layout-cfg.log" 2>&1 ||
    { cat "$scratch/layout-cfg.log"; exit 1; }
  cmake --build "$lb" -j2 >"$scratch/layout-build.log" 2>&1 || { tail -30 "$scratch/layout-build.log"; exit 1; }
  DESTDIR=$dest cmake --install "$lb" >/dev/null
  local root=$dest$pfx
  [[ -e $root/$ld/libregcache.so.0 ]] || { echo "$label: no $root/$ld/libregcache.so.0"; exit 1; }
  # A package build (tests off) installs the tools and the man pages too; the installed
  # regcache-info runs against the installed library and reads the man page's options.
  for f in bin/regcache-info bin/regcache-bench share/man/man1/regcache-info.1; do
    [[ -e $root/$f ]] || { echo "$label: not installed: $f"; exit 1; }
  done
  LD_LIBRARY_PATH=$root/$ld "$root/bin/regcache-info" --version >/dev/null ||
    { echo "$label: installed regcache-info --version failed"; exit 1; }
  LD_LIBRARY_PATH=$root/$ld "$root/bin/regcache-bench" --help >/dev/null ||
    { echo "$label: installed regcache-bench --help failed"; exit 1; }
  man -l "$root/share/man/man1/regcache-info.1" >/dev/null 2>&1 ||
    { echo "$label: installed regcache-info.1 does not render"; exit 1; }
  consume "$label" "$root/$ld/pkgconfig" "$root" "$root/$ld" "$root/include"
}
layout lib "$scratch/p-lib" lib
layout lib64 "$scratch/p-lib64" lib64
layout "usr-$multiarch" /usr "lib/$multiarch" "$scratch/destdir"
echo "packaging: exports, SONAMEs, and consumers in every layout ok"

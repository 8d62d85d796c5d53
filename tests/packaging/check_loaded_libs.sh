#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check_loaded_libs.sh <host-only consumer> [<verbs consumer>]
# Issue 17: a program that uses only libregcache (host or custom driver) must load neither
# libibverbs nor libfabric (their constructors, PSM's among them, cost start-up time), nor
# libspdlog/libfmt (compiled into libregcache). The verbs consumer is the negative control:
# it must show libibverbs and libregcache-verbs, proving the check sees what is loaded.
set -euo pipefail
host=$1 verbs=${2:-}
forbidden='^(libibverbs|libfabric|libregcache-verbs|libregcache-fabric|libspdlog|libfmt|libpsm|librdmacm)[.-]'
libs=$("$host")
echo "host-only consumer loads:"; sed 's/^/  /' <<<"$libs"
grep -q '^libregcache\.so' <<<"$libs" || { echo "FAIL: libregcache not seen in /proc/self/maps"; exit 1; }
if bad=$(grep -E "$forbidden" <<<"$libs"); then
  echo "FAIL: a host-only consumer loads: $bad"; exit 1
fi
if [[ -n $verbs ]]; then
  vlibs=$("$verbs")
  grep -q '^libibverbs\.so' <<<"$vlibs" && grep -q '^libregcache-verbs\.so' <<<"$vlibs" || {
    echo "FAIL (negative control): the verbs consumer does not show libibverbs:"; echo "$vlibs"; exit 1; }
  echo "negative control: the verbs consumer loads libibverbs and libregcache-verbs"
fi
echo "ok: host-only consumer loads no RDMA stack, spdlog or fmt library"

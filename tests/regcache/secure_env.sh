#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tests/regcache/secure_env.sh <probe> - issue 12 item 7: a setuid program
# ignores REGCACHE_* (secure_getenv), so an unprivileged caller cannot turn
# invalidation off with REGCACHE_MONITOR=none.
#
# As root, a copy of the probe owned by nobody with the setuid bit is run:
# real uid 0, effective uid nobody, so the kernel sets AT_SECURE. The same
# binary run plainly is the negative control: there the variable is honoured.
set -u
probe=$1
if [ "$(id -u)" != 0 ]; then
  echo "SKIP: making a setuid copy needs root"
  exit 77
fi
dir=$(mktemp -d /tmp/regcache-secure.XXXXXX) || exit 1
trap 'rm -rf "$dir"' EXIT
cp "$probe" "$dir/probe" && chown 65534:65534 "$dir/probe" &&
  chmod 4755 "$dir/probe" && chmod 755 "$dir" || exit 1

plain=$(REGCACHE_MONITOR=none "$probe" 2>&1)
echo "plain:  $plain"
case "$plain" in
  *"secure=0 MONITOR=none"*) ;;
  *) echo "FAIL: the plain run must honour REGCACHE_MONITOR"; exit 1 ;;
esac

suid=$(REGCACHE_MONITOR=none "$dir/probe" 2>&1)
echo "setuid: $suid"
case "$suid" in
  *"secure=1 MONITOR=auto"*) ;;
  *"secure=0"*) echo "SKIP: no AT_SECURE (nosuid mount?)"; exit 77 ;;
  *) echo "FAIL: under AT_SECURE REGCACHE_MONITOR must be ignored"; exit 1 ;;
esac
case "$suid" in
  *"REGCACHE_MONITOR is ignored"*) ;;
  *) echo "FAIL: no warning that the variable was ignored"; exit 1 ;;
esac
echo PASS

#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tests/rxe/guest-stage2.sh - stage 2 of the rxe guest, PID 1 after switch_root, run by the
# host's own /bin/sh on the host's (read-only) root. rxe-run.sh copies it to the scratch
# folder, which is mounted at /run/regcache-rxe. Brings up rxe0 on a dummy netdev, runs
# /run/regcache-rxe/job.sh, stores its status in /run/regcache-rxe/rc and powers off.
# PID 1 must never exit: every path ends in poweroff.
S=/run/regcache-rxe
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

off() {
  sync
  /bin/busybox poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
  sleep 60
}
fail() {
  echo "rxe-guest: FAILED: $*"
  echo "$*" >"$S/init-failed"
  off
}

mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts
hostname rxe-guest 2>/dev/null || true

# rdma_cm (so libfabric's verbs provider) does not work over rxe on `lo`: a dummy netdev
# with an address gives rxe a loopback path to its own address. 192.0.2.0/24 is TEST-NET-1;
# the guest has no network card, so nothing leaves it.
# MTU 9000 (jumbo frames, as RoCE deployments run): rxe derives the port's active_mtu from
# the netdev's, 4096 here instead of 1024 with the default 1500, so a large RDMA WRITE is a
# quarter as many packets, each paying rxe's per-packet cost under emulation. Set before
# `rdma link add` (rxe also follows later MTU changes).
ip link set lo up || fail "ip link set lo up"
ip link add rxd0 type dummy || fail "ip link add rxd0"
ip link set rxd0 mtu 9000 || fail "ip link set rxd0 mtu 9000"
ip addr add 192.0.2.1/24 dev rxd0 || fail "ip addr add"
ip link set rxd0 up || fail "ip link set rxd0 up"
rdma link add rxe0 type rxe netdev rxd0 || fail "rdma link add rxe0"
read -r up _ </proc/uptime
echo "rxe-guest: rxe0 up on rxd0 (192.0.2.1, MTU 9000), guest uptime ${up} s"

/bin/sh "$S/job.sh" </dev/null
rc=$?
echo "$rc" >"$S/rc.tmp" && mv "$S/rc.tmp" "$S/rc"
read -r up _ </proc/uptime
echo "rxe-guest: command exited with status $rc, guest uptime ${up} s"
off

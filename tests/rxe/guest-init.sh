#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# tests/rxe/guest-init.sh - /init of the rxe guest's initramfs (busybox sh, PID 1).
# Loads the modules (in /modules, numbered in load order), mounts the host's root read-only
# over virtio-9p (tag hostroot) with copy-on-write overlays on /tmp and /var/tmp, the
# writable scratch folder (tag rxescratch: exit status, job, list of writable folders) and
# each writable host folder (tags listed in <scratch>/writable), then switch_root's into
# <scratch>/stage2.sh run by the host's own /bin/sh. Any failure powers the guest off
# without an exit status: the host reports "guest died" (125).
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
  echo "rxe-init: FAILED: $*"
  [ -d /scratch ] && echo "$*" >/scratch/init-failed
  sync
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in /modules/*.ko; do
  insmod "$m" || fail "insmod $m"
done

P9=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$P9,cache=mmap" rxescratch /scratch || fail "mount scratch"
mount -t 9p -o "$P9,ro,cache=loose" hostroot /newroot || fail "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "tmpfs /run"
# /tmp and /var/tmp: writable, but the host's files there stay visible (a plain tmpfs
# would hide host-built binaries under /tmp).
mount -t tmpfs -o mode=0755 tmpfs /ovl || fail "tmpfs /ovl"
for d in tmp var/tmp; do
  n=$(echo "$d" | tr / _)
  mkdir -p "/ovl/$n/u" "/ovl/$n/w"
  chmod 1777 "/ovl/$n/u"
  mount -t overlay overlay -o "lowerdir=/newroot/$d,upperdir=/ovl/$n/u,workdir=/ovl/$n/w" \
    "/newroot/$d" || fail "overlay /$d"
done
if [ -f /scratch/writable ]; then
  while read -r tag path; do
    [ -n "$tag" ] || continue
    mount -t 9p -o "$P9,cache=mmap" "$tag" "/newroot$path" || fail "mount $tag on $path"
  done </scratch/writable
fi
mkdir -p /newroot/run/regcache-rxe
mount --move /scratch /newroot/run/regcache-rxe || fail "move scratch"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /run/regcache-rxe/stage2.sh

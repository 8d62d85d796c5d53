#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/rxe/rxe-setup.sh - prepares the Soft-RoCE (rdma_rxe) QEMU guest: packages, Debian's
# own kernel (unpacked into a cache folder, never into /boot) and a busybox initramfs.
#
# Usage: tests/rxe/rxe-setup.sh [--print-env]
#   --print-env  on success, print shell assignments RXE_KERNEL=... RXE_INITRD=... RXE_KVER=...
#
# Environment:
#   REGCACHE_RXE_CACHE      cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/regcache-rxe)
#   REGCACHE_RXE_SKIP_DEPS  1: do not run scripts/install-deps.sh (packages already there)
#   REGCACHE_RXE_KERNEL_PKG the kernel package to use (default: what linux-image-amd64
#                           depends on, else the newest kernel already in the cache)
#
# Idempotent and safe to run concurrently (flock on the cache folder): a second run finds
# the unpacked kernel and the initramfs (keyed by the hash of its inputs) and does nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${REGCACHE_RXE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/regcache-rxe}
print_env=0
for a in "$@"; do
  case $a in
    --print-env) print_env=1 ;;
    -h | --help)
      sed -n '2,16p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "rxe-setup: unknown argument '$a'" >&2
      exit 2
      ;;
  esac
done

log() { echo "rxe-setup: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Modules loaded in the guest, in this order (each preceded by its dependencies).
# crc32_generic first: rdma_rxe needs the crc32 crypto algorithm and nothing auto-loads it
# ("rdma_rxe: failed to init crc32 algorithm err:-2", then `rdma link add` gives ENOENT).
GUEST_MODULES=(crc32_generic rdma_rxe ib_uverbs rdma_ucm ib_umad 9p 9pnet_virtio virtio_pci
  dummy overlay)

if [[ ${REGCACHE_RXE_SKIP_DEPS:-0} != 1 ]]; then
  REGCACHE_DEPS_EXTRA=rxe "$repo/scripts/install-deps.sh" >&2
fi
for tool in qemu-system-x86_64 depmod modprobe cpio dpkg-deb apt-get flock gzip; do
  command -v "$tool" >/dev/null || die "'$tool' not found (install-deps.sh with REGCACHE_DEPS_EXTRA=rxe installs it)"
done
[[ -x /bin/busybox ]] || die "/bin/busybox (busybox-static) not found"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# ---------------------------------------------------------------- the kernel
resolve_kernel_pkg() {
  if [[ -n ${REGCACHE_RXE_KERNEL_PKG:-} ]]; then
    echo "$REGCACHE_RXE_KERNEL_PKG"
    return
  fi
  local p
  p=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }') || true
  if [[ -z $p ]]; then
    # No package lists (fresh container): refresh them once.
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
    p=$(apt-cache depends linux-image-amd64 2>/dev/null |
      awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }') || true
  fi
  if [[ -z $p ]]; then
    # Offline: take a kernel already in the cache.
    p=$(find "$cache/kernel" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null |
      sort -V | tail -n 1 | xargs -r basename) || true
  fi
  [[ -n $p ]] || die "cannot resolve linux-image-amd64 to a kernel package"
  echo "$p"
}

kpkg=$(resolve_kernel_pkg)
kdir=$cache/kernel/$kpkg
if [[ ! -e $kdir/.complete ]]; then
  t0=$SECONDS
  log "fetching $kpkg (apt-get download) into $cache"
  rm -rf "$kdir"
  mkdir -p "$kdir"
  # apt-get download runs sandboxed as _apt when _apt can reach the folder ($HOME may be
  # private): download into a world-writable temporary folder.
  dl=$(mktemp -d "${TMPDIR:-/tmp}/regcache-rxe-dl.XXXXXX")
  trap 'rm -rf "$dl"' EXIT
  chmod 1777 "$dl"
  (cd "$dl" && apt-get -o DPkg::Lock::Timeout=600 download -q "$kpkg" >&2) ||
    die "apt-get download $kpkg failed"
  deb=$(find "$dl" -maxdepth 1 -name "${kpkg}_*.deb" | head -n 1)
  [[ -n $deb ]] || die "apt-get download left no .deb for $kpkg"
  dpkg-deb -x "$deb" "$kdir"
  kver=$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n 1)
  [[ -n $kver ]] || die "$kpkg has no lib/modules/<version>"
  # The .deb ships no modules.dep (its postinst makes it).
  depmod -b "$kdir" "$kver"
  rm -rf "$dl"
  trap - EXIT
  touch "$kdir/.complete"
  log "kernel $kver unpacked in $((SECONDS - t0)) s"
fi
kver=$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n 1)
vmlinuz=$kdir/boot/vmlinuz-$kver
[[ -r $vmlinuz ]] || die "no $vmlinuz"

# ---------------------------------------------------------------- the initramfs
# Ordered, de-duplicated list of module files (absolute paths in $kdir).
mapfile -t modfiles < <(
  for m in "${GUEST_MODULES[@]}"; do
    modprobe -d "$kdir" -S "$kver" --show-depends "$m" ||
      die "module $m not found in $kpkg"
  done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
)
((${#modfiles[@]} > 0)) || die "no modules resolved"

key=$(
  {
    echo "$kpkg $kver"
    printf '%s\n' "${modfiles[@]}"
    cat "$here/guest-init.sh"
    sha256sum /bin/busybox
  } | sha256sum | cut -c1-16
)
initrd=$cache/initramfs-$kver-$key.cpio.gz
if [[ ! -e $initrd ]]; then
  t0=$SECONDS
  stage=$(mktemp -d "$cache/initramfs.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,dev,proc,sys,mnt,newroot,scratch,ovl,modules}
  cp /bin/busybox "$stage/bin/busybox"
  ln -s busybox "$stage/bin/sh"
  install -m 0755 "$here/guest-init.sh" "$stage/init"
  i=0
  for f in "${modfiles[@]}"; do
    name=$(basename "$f")
    dst=$(printf '%s/modules/%02d-%s' "$stage" "$i" "$name")
    case $f in
      *.ko.xz) xz -dc "$f" >"${dst%.xz}" ;;
      *.ko.zst) zstd -qdc "$f" >"${dst%.zst}" ;;
      *.ko.gz) gzip -dc "$f" >"${dst%.gz}" ;;
      *) cp "$f" "$dst" ;;
    esac
    i=$((i + 1))
  done
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) |
    gzip -6n >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$stage"
  trap - EXIT
  # Old initramfs images of this kernel (other keys) are stale.
  find "$cache" -maxdepth 1 -name "initramfs-$kver-*.cpio.gz" ! -name "$(basename "$initrd")" -delete
  log "initramfs built ($i modules, $(du -k "$initrd" | cut -f1) KiB) in $((SECONDS - t0)) s"
fi

if ((print_env)); then
  printf 'RXE_KVER=%q\nRXE_KERNEL=%q\nRXE_INITRD=%q\n' "$kver" "$vmlinuz" "$initrd"
fi

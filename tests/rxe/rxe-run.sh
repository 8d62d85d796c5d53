#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/rxe/rxe-run.sh - runs one command inside a QEMU guest that has a Soft-RoCE device.
#
# Usage: tests/rxe/rxe-run.sh [--writable DIR]... [--timeout SECS] [--env NAME[=VALUE]]...
#                             [--mem SIZE] -- COMMAND [ARG]...
#
# The guest boots Debian's own kernel (rxe-setup.sh fetches and caches it) under TCG with
# the host's root filesystem shared read-only over virtio-9p, so host-built binaries run
# unchanged at the same paths. /tmp and /var/tmp are copy-on-write (changes stay in guest
# RAM); each --writable DIR is shared read-write at its own path (e.g. a build folder, for
# ctest's Testing/). In the guest: rxe0 on a dummy netdev rxd0 (192.0.2.1/24, RoCEv2 IPv4 GID
# index 1); COMMAND runs as root in the current directory with HOME=/tmp/rxe-home,
# stdin /dev/null, FI_UNIVERSE_SIZE=16, and the host's REGCACHE_*, GTEST_*, CTEST_*, FI_*,
# RDMAV_* and IBV_* variables plus every --env. The guest console (kernel messages and the
# command's output) is streamed to stdout with \r stripped.
#
# Exit status: COMMAND's status; 124 if the guest did not finish within --timeout seconds
# (default 900, boot included; qemu is killed); 125 if the guest died or failed before
# reporting a status (set-up failure, kernel panic); 2 for bad usage.
#
# Environment: REGCACHE_RXE_CACHE (cache folder), REGCACHE_RXE_SKIP_DEPS=1 (see rxe-setup.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

writable=()
envs=()
timeout_s=900
mem=2G
while (($#)); do
  case $1 in
    --writable)
      (($# >= 2)) || usage
      [[ -d $2 ]] || {
        echo "rxe-run: --writable $2: not a directory" >&2
        exit 2
      }
      writable+=("$(cd "$2" && pwd -P)")
      shift 2
      ;;
    --timeout)
      if (($# < 2)) || [[ ! $2 =~ ^[0-9]+$ ]]; then usage; fi
      timeout_s=$2
      shift 2
      ;;
    --env)
      if (($# < 2)) || [[ ! $2 =~ ^[A-Za-z_][A-Za-z0-9_]*(=.*)?$ ]]; then usage; fi
      envs+=("$2")
      shift 2
      ;;
    --mem)
      (($# >= 2)) || usage
      mem=$2
      shift 2
      ;;
    --)
      shift
      break
      ;;
    -h | --help) usage ;;
    *) usage ;;
  esac
done
(($# >= 1)) || usage

ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
t_start=$(ms)
setup_env=$("$here/rxe-setup.sh" --print-env)
eval "$setup_env"
: "${RXE_KERNEL:?}" "${RXE_INITRD:?}"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/regcache-rxe-run.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp "$here/guest-stage2.sh" "$scratch/stage2.sh"

# The job: directory, environment, command; every word quoted for the guest's shell.
{
  echo "cd -- $(printf '%q' "$PWD") || exit 126"
  echo "export HOME=/tmp/rxe-home FI_UNIVERSE_SIZE=16"
  echo "mkdir -p /tmp/rxe-home"
  while IFS= read -r name; do
    printf 'export %s=%q\n' "$name" "${!name}"
  done < <(compgen -e | grep -E '^(REGCACHE_|GTEST_|CTEST_|FI_|RDMAV_|IBV_)' || true)
  for e in "${envs[@]}"; do
    if [[ $e == *=* ]]; then
      printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
    else
      printf 'export %s=%q\n' "$e" "${!e-}"
    fi
  done
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$scratch/job.sh"

fsdev=(
  -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
  -device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"
  -fsdev "local,id=rxescratch,path=$scratch,security_model=none,multidevs=remap"
  -device "virtio-9p-pci,fsdev=rxescratch,mount_tag=rxescratch"
)
: >"$scratch/writable"
for i in "${!writable[@]}"; do
  d=${writable[$i]}
  [[ $d != *,* ]] || {
    echo "rxe-run: --writable $d: qemu cannot take a ',' in a path" >&2
    exit 2
  }
  fsdev+=(-fsdev "local,id=w$i,path=$d,security_model=none,multidevs=remap"
    -device "virtio-9p-pci,fsdev=w$i,mount_tag=w$i")
  printf 'w%s %s\n' "$i" "$d" >>"$scratch/writable"
done

qemu=(
  qemu-system-x86_64 -nodefaults -no-user-config -nographic -no-reboot
  -accel tcg -cpu max -smp 2 -m "$mem"
  -serial stdio -monitor none -bios /usr/share/qemu/qboot.rom
  -kernel "$RXE_KERNEL" -initrd "$RXE_INITRD"
  -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off"
  "${fsdev[@]}"
)
t_boot=$(ms)
echo "rxe-run: booting $(basename "$RXE_KERNEL") (set-up $(secs $((t_boot - t_start))) s, timeout ${timeout_s} s): $*"
set +e
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" </dev/null | sed -u 's/\r//g'
qemu_rc=${PIPESTATUS[0]}
set -e
took=$(secs $(($(ms) - t_start)))

if [[ -s $scratch/rc ]]; then
  rc=$(<"$scratch/rc")
  echo "rxe-run: command exited with status $rc (${took} s in all)"
  exit "$rc"
fi
if ((qemu_rc == 124 || qemu_rc == 137)); then
  echo "rxe-run: TIMEOUT: the guest did not finish within ${timeout_s} s; qemu killed (${took} s)"
  exit 124
fi
why="qemu exited with status $qemu_rc"
[[ -s $scratch/init-failed ]] && why="guest set-up failed: $(<"$scratch/init-failed")"
echo "rxe-run: GUEST DIED without reporting a status ($why, ${took} s)"
exit 125

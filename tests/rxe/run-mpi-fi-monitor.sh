#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# tests/rxe/run-mpi-fi-monitor.sh PROG FI_MONITOR_LIB check|modes [MSGS]
#
# Debian's Open MPI over rxe (pml cm, mtl ofi, verbs;ofi_rxm), its large messages
# registered by libfabric's MR cache, with regcache's notifier as libfabric's memory
# monitor (LD_PRELOAD=libregcache-fi-monitor.so). Runs tests/rxe/mpi_fi_monitor.c.
#
#   check  regcache's monitor: >= 2000 messages of 256 KiB over the reuse, free, mmap and
#          dontneed phases, 0 wrong bytes; libfabric's "MR cache stats" shows notify > 0
#          and hits > 0; per rank, regcache's delivered count == libfabric's notify count
#          (so the invalidations came through regcache). Then the negative control, the
#          same program with REGCACHE_FI_MONITOR_DROP=1 (a monitor that drops every
#          notification): must show wrong bytes. Then coexistence with libfabric's memhooks
#          monitor (FI_MR_CACHE_MONITOR=memhooks: libfabric's MR cache uses memhooks, which
#          patches libc's entry points when the cache starts in MPI_Init), in both orders:
#            regcache-first  libregcache-fi-monitor.so preloaded (its patch source hooks libc
#                            before main), memhooks patches after it;
#            memhooks-first  memhooks patches in MPI_Init, then the program dlopens
#                            libregcache-fi-monitor.so and imports it (--late-regcache).
#          Each: 0 wrong bytes; libfabric notify > 0 while regcache delivered 0 on every
#          rank, so memhooks delivered them (libfabric reads FI_MR_CACHE_MONITOR after any
#          import: regcache's monitor is not in effect; Open MPI's import is off); and
#          regcache's own notifier is not blind: --probe subscribes, unmaps and must see
#          the event on every rank (the source it ends on is printed).
#   modes  side by side, same run: time per message for a reuse-heavy and a churn-heavy
#          (free + malloc at the same address) pattern with regcache's monitor, Open MPI's
#          own imported monitor (its patcher; the default), libfabric's memhooks, its
#          userfaultfd monitor, and the MR cache disabled. regcache must be wrong-free.
# Exit: 0 pass, 1 fail, 77 no RDMA device (ctest SKIP_RETURN_CODE).
set -uo pipefail
prog=$1 lib=$2 what=$3
if [[ -z $(ls /sys/class/infiniband 2>/dev/null) ]]; then
  echo "SKIP: no RDMA device here; run in the Soft-RoCE guest (tests/rxe/run-rxe-tests.sh)"
  exit 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export FI_UNIVERSE_SIZE=${FI_UNIVERSE_SIZE:-16}
# libfabric logs "MR cache stats: searches S, deletes D, hits H notify N" when an MR cache
# is closed (FI_LOG_MR at info); nothing else is logged at that level for the mr subsystem.
export FI_LOG_LEVEL=info FI_LOG_SUBSYS=mr
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail=0

# run NAME [VAR=VALUE...] -- ARGS...: the mpirun line of docs/integrating.md, with the
# variables in front (mpirun passes its environment to the local ranks).
run() {
  local name=$1
  shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local t0=$SECONDS
  env "${envs[@]}" FI_PROVIDER="verbs;ofi_rxm" timeout 300 mpirun --allow-run-as-root -np 2 \
    --mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include "verbs;ofi_rxm" \
    -x FI_PROVIDER -x FI_UNIVERSE_SIZE "$prog" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name (status $rc, $((SECONDS - t0)) s): ${envs[*]}"
  grep -E '^MPI-FI|MR cache stats|fi-monitor stats|fi-monitor:|rror' "$out/$name.log" | head -40
  return $rc
}

# Sums over the log: libfabric's per-cache stats and regcache's per-process stats.
field() { grep -o "$2[= ][0-9]*" "$1" | grep -o '[0-9]*$' | awk '{s += $1} END {print s + 0}'; }
wrong_of() { grep '^MPI-FI total' "$1" | sed 's/.*wrong=//'; }
msgs_of() { grep '^MPI-FI total' "$1" | sed 's/.*msgs=\([0-9]*\).*/\1/'; }
lf_stat() { grep 'MR cache stats' "$1" | grep -o "$2 [0-9]*" | awk '{s += $2} END {print s + 0}'; }

# Per rank (pid): libfabric's notify summed over that process's caches == regcache's
# delivered. Prints the pairs; returns 1 on a mismatch or if no rank delivered anything.
per_pid_match() {
  local log=$1 ok=0 any=0
  while read -r pid delivered; do
    [[ -n $pid ]] || continue
    local n
    n=$(grep "libfabric:$pid:" "$log" | grep 'MR cache stats' | grep -o 'notify [0-9]*' |
        awk '{s += $2} END {print s + 0}')
    local caches
    caches=$(grep "libfabric:$pid:" "$log" | grep -c 'MR cache stats')
    ((caches == 0)) && continue  # mpirun itself (preloaded too), no MR cache
    echo "   pid $pid: regcache delivered $delivered, libfabric notify $n ($caches cache(s))"
    ((delivered > 0)) && any=1
    ((delivered == n)) || ok=1
  done <<<"$(grep 'fi-monitor stats' "$log" | sed 's/.*pid \([0-9]*\).*delivered \([0-9]*\).*/\1 \2/')"
  # (a here-string, not <(...): the guest has no /dev/fd)
  ((any)) || ok=1
  return $ok
}

if [[ $what == check ]]; then
  msgs=${4:-520}
  run regcache LD_PRELOAD="$lib" REGCACHE_STATS=y -- --msgs "$msgs" || fail=1
  log=$out/regcache.log
  w=$(wrong_of "$log") m=$(msgs_of "$log")
  hits=$(lf_stat "$log" hits) notify=$(lf_stat "$log" notify)
  echo "   messages ${m:-?}, wrong bytes ${w:-?}, libfabric hits $hits notify $notify"
  [[ ${w:-x} == 0 ]] || { echo "FAIL: wrong bytes with regcache's monitor"; fail=1; }
  ((${m:-0} >= 2000)) || { echo "FAIL: fewer than 2000 messages"; fail=1; }
  ((notify > 0)) || { echo "FAIL: libfabric saw no notification"; fail=1; }
  ((hits > 0)) || { echo "FAIL: no MR cache hit (reuse phase)"; fail=1; }
  grep -q 'source patch' "$log" || echo "   note: regcache's event source is not patch"
  per_pid_match "$log" || { echo "FAIL: regcache's delivered count != libfabric's notify"; fail=1; }

  # The negative control's exit status is not checked: with notifications dropped the MR
  # cache keeps registrations of memory that is gone, and a rank may also crash (seen: SIGSEGV
  # at teardown, status 139) after it printed its totals. What must hold is that it finds
  # wrong bytes, which proves the check can fail.
  run dropping LD_PRELOAD="$lib" REGCACHE_STATS=y REGCACHE_FI_MONITOR_DROP=1 -- --msgs 60 ||
    echo "   (negative control exited with status $?; not checked, see above)"
  log=$out/dropping.log
  w=$(wrong_of "$log")
  echo "   negative control: wrong bytes ${w:-?}, dropped $(field "$log" dropped)"
  ((${w:-0} > 0)) || { echo "FAIL: the negative control found no wrong bytes (test cannot fail)"; fail=1; }
  negative_wrong=${w:-0}

  # Coexistence with libfabric's memhooks, both orders (header).
  co_msgs=${REGCACHE_MPI_FI_COEXIST_MSGS:-30}
  coexist=""
  for order in regcache-first memhooks-first; do
    if [[ $order == regcache-first ]]; then
      envs=(LD_PRELOAD="$lib" REGCACHE_STATS=y FI_MR_CACHE_MONITOR=memhooks)
      args=(--msgs "$co_msgs" --probe)
    else
      envs=(REGCACHE_STATS=y FI_MR_CACHE_MONITOR=memhooks OMPI_MCA_memory=^patcher)
      args=(--msgs "$co_msgs" --probe --late-regcache "$lib")
    fi
    run "coexist.$order" "${envs[@]}" -- "${args[@]}" || fail=1
    log=$out/coexist.$order.log
    cw=$(wrong_of "$log") cm=$(msgs_of "$log") cn=$(lf_stat "$log" notify)
    cd=$(field "$log" delivered)
    seen=$(grep -c '^MPI-FI probe .*seen=1' "$log")
    srcs=$(grep -o '^MPI-FI probe .*' "$log" | sed 's/.*source=\([a-z]*\).*munmap_entry=\([0-9a-f]*\)/\1(munmap \2)/' | tr '\n' ' ')
    echo "   $order: messages ${cm:-?}, wrong bytes ${cw:-?}, libfabric notify $cn, regcache delivered $cd, probe seen on $seen of 2 ranks, regcache source: $srcs"
    [[ ${cw:-x} == 0 ]] || { echo "FAIL: $order: wrong bytes with memhooks and regcache both loaded"; fail=1; }
    ((${cm:-0} > 0)) || { echo "FAIL: $order: no messages"; fail=1; }
    ((cn > 0)) || { echo "FAIL: $order: libfabric saw no notification (memhooks blind?)"; fail=1; }
    ((cd == 0)) || { echo "FAIL: $order: regcache delivered $cd: memhooks was not the monitor in effect"; fail=1; }
    ((seen == 2)) || { echo "FAIL: $order: regcache's notifier missed the probe's unmap (blind)"; fail=1; }
    coexist+=" $order:wrong=${cw:-x},notify=$cn,delivered=$cd,probe=$seen/2"
  done
  echo "MPI-FI-CHECK $([[ $fail == 0 ]] && echo PASS || echo FAIL) msgs=${m:-0} wrong=$(wrong_of "$out/regcache.log") notify=$notify hits=$hits negative_wrong=$negative_wrong coexist:$coexist"
  exit $fail
fi

# modes: reuse-heavy and churn-heavy in each process; the modes interleaved over ROUNDS
# rounds (TCG on a shared host is noisy: a slow spell then hits every mode, not one), and
# per mode the minimum and the median time per message over the rounds.
msgs=${4:-60}
rounds=${REGCACHE_MPI_FI_ROUNDS:-3}
modes=(regcache ompi memhooks uffd nocache)
for ((round = 1; round <= rounds; ++round)); do
  for mode in "${modes[@]}"; do
    case $mode in
      regcache) envs=(LD_PRELOAD="$lib" REGCACHE_STATS=y) ;;
      ompi) envs=(OMPI_MCA_memory=patcher) ;;  # Open MPI imports its patcher monitor
      memhooks) envs=(OMPI_MCA_memory=^patcher FI_MR_CACHE_MONITOR=memhooks) ;;
      uffd) envs=(OMPI_MCA_memory=^patcher FI_MR_CACHE_MONITOR=userfaultfd) ;;
      nocache) envs=(FI_MR_CACHE_MAX_COUNT=0) ;;
    esac
    run "$mode.$round" "${envs[@]}" -- --msgs "$msgs" --phases reuse,free || fail=1
    log=$out/$mode.$round.log
    w=$(wrong_of "$log")
    echo "$mode $(grep 'phase=reuse' "$log" | sed 's/.*us_per_msg=//') \
$(grep 'phase=free' "$log" | sed 's/.*us_per_msg=//') ${w:-x} $(lf_stat "$log" hits) \
$(lf_stat "$log" notify)" >>"$out/rows"
    if [[ $mode == regcache && ${w:-x} != 0 ]]; then echo "FAIL: wrong bytes with regcache"; fail=1; fi
  done
done
printf 'MPI-FI-MODES %-9s %6s %14s %14s %14s %14s %8s %6s %7s\n' mode rounds reuse_min_us \
  reuse_med_us churn_min_us churn_med_us wrong hits notify
for mode in "${modes[@]}"; do
  awk -v m="$mode" '$1 == m {
      n++; r[n] = $2; c[n] = $3; w += ($4 == "x" ? 1e18 : $4); h += $5; t += $6 }
    function med(a, n,   i, j, x) {
      for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    END {
      if (!n) exit
      rm = med(r, n); rmin = r[1]; cm = med(c, n); cmin = c[1]
      printf "MPI-FI-MODES %-9s %6d %14.0f %14.0f %14.0f %14.0f %8s %6d %7d\n",
             m, n, rmin, rm, cmin, cm, w, h / n, t / n }' "$out/rows"
done
exit $fail

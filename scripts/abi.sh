#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# abi.sh --check|--update|--self-test [build dir]  - the ABI of the installed libraries.
#
# Libraries: libregcache.so.0, libregcache-verbs.so.0, libregcache-fabric.so.0 (those built).
# Baseline: abi/<library>.abi, written by abidw (abigail-tools) from the build's DWARF,
# limited to what the public headers declare and the exported symbols reach; the
# REGCACHE_PRIVATE_* interface is suppressed (abi/regcache.suppr).
#   --check (default; ctest abi_check, CI):
#     1. every REGCACHE_API function of the public headers is listed by name in a version
#        script, every listed name is declared, and each library exports exactly its
#        script's names (nothing by glob, nothing forgotten);
#     2. every symbol of the baseline is still exported under the same version node
#        (symbols never move, docs/versioning.md), and every symbol added since the
#        baseline is in the newest node of its script (never in a released one);
#     3. abidiff baseline vs build: an incompatible change fails; added functions are
#        listed (they must be in the newest node: step 2 of the next release's baseline).
#   --update: rewrites the baselines from the build (at a release, after review).
#   --self-test: abidiff on two tiny libraries, one with a changed signature, must report
#     an incompatible change (the negative control of step 3); a symbol added since the
#     baseline in an older node must be caught (the negative control of step 2).
set -euo pipefail
mode=--check
if [[ ${1:-} == --* ]]; then mode=$1; shift; fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build/release}
abidir=$root/abi
suppr=$abidir/regcache.suppr
maps=("$root/regcache/regcache.map" "$root/drivers/verbs/regcache-verbs.map"
      "$root/drivers/fabric/regcache-fabric.map" "$root/drivers/fabric/regcache-fi-monitor.map")
headers=("$root"/regcache/include/regcache/*.h "$root"/notifier/include/regcache/*.h
         "$root"/drivers/*/include/regcache/*.h)

# verdict <abidiff exit> <abidiff output>: "incompatible" (a function or variable removed
# or changed, or abidiff's own incompatible bit), "added" (only additions), "identical",
# or "error". abidiff itself calls a changed parameter type a (compatible) ABI change;
# for a C ABI it breaks every caller, so a change counts as incompatible here.
verdict() {
  local rc=$1 out=$2 removed changed
  if ((rc & 1 || rc & 2)); then echo error; return; fi
  if ((rc & 8)); then echo incompatible; return; fi
  removed=$(grep -Eo 'summary: [0-9]+ Removed' <<<"$out" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')
  changed=$(grep -Eo 'Removed[^,]*, [0-9]+ Changed' <<<"$out" | grep -Eo '[0-9]+ Changed' |
            grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')
  if ((${removed:-0} > 0 || ${changed:-0} > 0)); then echo incompatible; return; fi
  if ((rc & 4)); then echo added; else echo identical; fi
}

# new_in_old_node <baseline "name node" lines> <exported "name node" lines> <newest node>:
# prints every exported symbol the baseline does not have that is not in the newest node
# (a symbol added since the baseline belongs to the release in development; one put in
# an older node would claim to have existed in that release: the glob problem of 0.1).
new_in_old_node() {
  local base=$1 have=$2 newest=$3 name node
  while read -r name node; do
    [[ -n $name ]] || continue
    grep -q "^$name " <<<"$base" && continue
    [[ $node == "$newest" ]] || echo "$name@$node"
  done <<<"$have"
}

# newest_node <map>: the last public version node the script defines.
newest_node() {
  sed 's|/\*.*\*/||' "$1" | grep -oE '^REGCACHE_[0-9]+\.[0-9]+ *\{' | tail -n1 | grep -oE 'REGCACHE_[0-9.]+'
}

# globs <version script>: every name pattern with a wildcard (comments and quoted exact
# C++ names removed); "local: *;" is the one allowed. A glob exports whatever matches it
# tomorrow, in whatever node it sits in: the 0.1 problem.
globs() {
  sed -e ':a;N;$!ba' -e 's|/\*[^*]*\*\+\([^/*][^*]*\*\+\)*/||g' "$1" | sed 's|"[^"]*"||g' |
    grep -nE '[A-Za-z0-9_:?]\*|\*[A-Za-z0-9_:]|\?|\[' || true
}

# readable <abi file>: abilint parses it and it describes at least one symbol. abidiff
# given an unparsable file compares nothing and exits 0 (0.2's first baseline had
# comp-dir-path='<build>/...' in it: every check passed without comparing anything).
readable() {
  abilint "$1" >/dev/null 2>&1 && grep -q '<elf-symbol name=' "$1"
}

if [[ $mode == --self-test ]]; then
  t=$(mktemp -d)
  trap 'rm -rf "$t"' EXIT
  printf 'int f(int a) { return a; }\n' >"$t/v1.c"
  printf 'int f(long a, int b) { return (int)a + b; }\n' >"$t/v2.c"
  cc -g -shared -fPIC -o "$t/libv1.so" "$t/v1.c"
  cc -g -shared -fPIC -o "$t/libv2.so" "$t/v2.c"
  abidw --out-file "$t/v1.abi" "$t/libv1.so"
  rc=0
  abidiff "$t/v1.abi" "$t/libv2.so" >"$t/out" || rc=$?
  if [[ $(verdict "$rc" "$(cat "$t/out")") == incompatible ]]; then
    echo "abi self-test: a changed signature is reported as incompatible"
  else
    echo "abi self-test: a changed signature was not caught (exit $rc)"; cat "$t/out"; exit 1
  fi
  printf 'int f(int a) { return a; }\nint g(void) { return 1; }\n' >"$t/v3.c"
  cc -g -shared -fPIC -o "$t/libv3.so" "$t/v3.c"
  rc=0
  abidiff "$t/v1.abi" "$t/libv3.so" >"$t/out" || rc=$?
  [[ $(verdict "$rc" "$(cat "$t/out")") == added ]] ||
    { echo "abi self-test: an added function was not classified as an addition"; cat "$t/out"; exit 1; }
  echo "abi self-test: an added function is a compatible addition"
  base=$'regcache_a REGCACHE_0.1\nregcache_b REGCACHE_0.1'
  good=$'regcache_a REGCACHE_0.1\nregcache_b REGCACHE_0.1\nregcache_c REGCACHE_0.2'
  bad=$'regcache_a REGCACHE_0.1\nregcache_b REGCACHE_0.1\nregcache_c REGCACHE_0.1'
  [[ -z $(new_in_old_node "$base" "$good" REGCACHE_0.2) ]] ||
    { echo "abi self-test: a new symbol in the newest node was refused"; exit 1; }
  [[ $(new_in_old_node "$base" "$bad" REGCACHE_0.2) == regcache_c@REGCACHE_0.1 ]] ||
    { echo "abi self-test: a new symbol in an old node was not caught"; exit 1; }
  printf 'REGCACHE_0.1 {\n global: regcache_a;\n local: *;\n};\nREGCACHE_0.2 {\n} REGCACHE_0.1;\n' \
    >"$t/x.map"
  [[ $(newest_node "$t/x.map") == REGCACHE_0.2 ]] ||
    { echo "abi self-test: newest node of a script not found"; exit 1; }
  echo "abi self-test: a symbol added since the baseline must be in the newest node"
  printf '/* regcache_* in a comment */\nN {\n global:\n  regcache_a;\n  extern "C++" { "ns::f(int*)"; };\n local:\n  *;\n};\n' >"$t/ok.map"
  [[ -z $(globs "$t/ok.map") ]] || { echo "abi self-test: a glob-free script was refused"; globs "$t/ok.map"; exit 1; }
  printf 'N {\n global:\n  extern "C++" { ns::Write*; };\n local:\n  *;\n};\n' >"$t/glob.map"
  [[ -n $(globs "$t/glob.map") ]] || { echo "abi self-test: a glob in a script was not caught"; exit 1; }
  echo "abi self-test: a name glob in a version script is caught"
  readable "$t/v1.abi" || { echo "abi self-test: a good corpus was called unreadable"; exit 1; }
  sed "s|<elf-symbol name='f'|<elf-symbol name='<f>'|" "$t/v1.abi" >"$t/bad.abi"
  if readable "$t/bad.abi"; then echo "abi self-test: an unparsable baseline was accepted"; exit 1; fi
  echo "abi self-test: an unparsable baseline is refused"
  exit 0
fi

command -v abidw >/dev/null && command -v abidiff >/dev/null ||
  { echo "abi.sh: abidw/abidiff not found (Debian: abigail-tools)"; exit 1; }
hdr=$(mktemp -d)
trap 'rm -rf "$hdr"' EXIT
mkdir -p "$hdr/regcache"
cp "${headers[@]}" "$hdr/regcache/"

libs=()
# libfile <lib>: the built file. libregcache-fi-monitor.so is a module loaded by name
# (LD_PRELOAD): no number in its SONAME, built in drivers/fabric.
libfile() {
  case $1 in
    libregcache-fi-monitor) echo "$build/drivers/fabric/$1.so" ;;
    *) echo "$build/regcache/$1.so.0" ;;
  esac
}
mapof() {
  case $1 in
    libregcache) echo "${maps[0]}" ;;
    libregcache-verbs) echo "${maps[1]}" ;;
    libregcache-fabric) echo "${maps[2]}" ;;
    libregcache-fi-monitor) echo "${maps[3]}" ;;
  esac
}
for l in libregcache libregcache-verbs libregcache-fabric libregcache-fi-monitor; do
  [[ -e $(libfile "$l") ]] && libs+=("$l")
done
((${#libs[@]})) || { echo "abi.sh: no library in $build/regcache (build first)"; exit 1; }

dump() {  # <lib> <out>
  abidw --exported-interfaces-only --headers-dir "$hdr" --drop-private-types \
    --no-corpus-path --no-show-locs --suppressions "$suppr" --out-file "$2" \
    "$(libfile "$1")"
  # Paths of this checkout are noise in a checked-in file (replaced by a plain word: the
  # file is XML, a '<' in an attribute would make it unreadable).
  sed -i -e "s|$build|BUILD|g" -e "s|$root/||g" "$2"
}

if [[ $mode == --update ]]; then
  mkdir -p "$abidir"
  for l in "${libs[@]}"; do
    dump "$l" "$abidir/$l.abi"
    echo "abi.sh: wrote abi/$l.abi"
  done
  exit 0
fi
[[ $mode == --check ]] || { echo "usage: abi.sh [--check|--update|--self-test] [build dir]" >&2; exit 2; }

fail=0
# ---- 1. headers <-> version scripts <-> exports
declared=$(cat "${headers[@]}" | tr '\n' ' ' | grep -oE 'REGCACHE_(FI_MONITOR_)?API[^(;]*\(' |
           grep -o 'regcache_[a-z0-9_]*($' | tr -d '(' | sort -u)
listed=$(sed 's|/\*.*\*/||' "${maps[@]}" | grep -o '^ *regcache_[a-z0-9_]*;' | tr -d ' ;' | sort)
for m in "${maps[@]}"; do
  if g=$(globs "$m") && [[ -n $g ]]; then
    echo "$(basename "$m"): names must be listed exactly, not by pattern (docs/versioning.md):"
    sed 's/^/  line /' <<<"$g"; fail=1
  fi
done
if dup=$(uniq -d <<<"$listed") && [[ -n $dup ]]; then echo "listed twice in the version scripts: $dup"; fail=1; fi
if miss=$(comm -23 <(echo "$declared") <(sort -u <<<"$listed")) && [[ -n $miss ]]; then
  echo "public functions missing from the version scripts (add them to the newest node,"
  echo "REGCACHE_0.2 in regcache/regcache.map or the driver's map; docs/versioning.md):"
  sed 's/^/  /' <<<"$miss"; fail=1
fi
if stale=$(comm -13 <(echo "$declared") <(sort -u <<<"$listed")) && [[ -n $stale ]]; then
  echo "version scripts list functions no public header declares:"; sed 's/^/  /' <<<"$stale"; fail=1
fi
for l in "${libs[@]}"; do
  map=$(mapof "$l")
  want=$(sed 's|/\*.*\*/||' "$map" | grep -o '^ *regcache_[a-z0-9_]*;' | tr -d ' ;' | sort)
  have=$(nm -D --defined-only "$(libfile "$l")" | awk '{print $3}' | grep '^regcache_' |
         sed 's/@.*//' | sort)
  if [[ "$want" != "$have" ]]; then
    echo "$l exports differ from $(basename "$map") (< script, > library):"
    diff <(echo "$want") <(echo "$have") | grep '^[<>]' || true
    fail=1
  fi
done

# ---- 2 and 3. against the baseline
for l in "${libs[@]}"; do
  base=$abidir/$l.abi
  [[ -f $base ]] || { echo "no baseline abi/$l.abi (scripts/abi.sh --update)"; fail=1; continue; }
  readable "$base" || { echo "abi/$l.abi: abilint cannot read it (or it has no symbol)"; fail=1; continue; }
  while read -r name ver; do
    got=$(nm -D --defined-only "$(libfile "$l")" | awk '{print $3}' |
          grep -E "^$name@@?" | sed 's/.*@@\{0,1\}//' || true)
    if [[ -z $got ]]; then echo "$l: $name@$ver removed"; fail=1
    elif [[ $got != "$ver" ]]; then echo "$l: $name moved from $ver to $got"; fail=1; fi
  done < <(grep -o "<elf-symbol name='[^']*' version='[^']*'" "$base" |
           sed "s/<elf-symbol name='\([^']*\)' version='\([^']*\)'/\1 \2/")
  map=$(mapof "$l")
  newest=$(newest_node "$map")
  basesyms=$(grep -o "<elf-symbol name='[^']*' version='[^']*'" "$base" |
             sed "s/<elf-symbol name='\([^']*\)' version='\([^']*\)'/\1 \2/")
  havesyms=$(nm -D --defined-only "$(libfile "$l")" | awk '{print $3}' |
             grep '^regcache_' | sed 's/@@\{0,1\}/ /' || true)
  if misplaced=$(new_in_old_node "$basesyms" "$havesyms" "$newest") && [[ -n $misplaced ]]; then
    echo "$l: symbols added since abi/$l.abi must be in the newest node, $newest"
    echo "  ($(basename "$map"), docs/versioning.md), not in an older one:"
    sed 's/^/    /' <<<"$misplaced"; fail=1
  fi
  cur=$(mktemp)
  dump "$l" "$cur"
  readable "$cur" || { echo "$l: abidw's description of the build is unreadable"; fail=1; }
  rc=0
  out=$(abidiff --suppressions "$suppr" "$base" "$cur" 2>&1) || rc=$?
  rm -f "$cur"
  case $(verdict "$rc" "$out") in
    error) echo "$l: abidiff failed (exit $rc):"; echo "$out"; fail=1 ;;
    incompatible) echo "$l: INCOMPATIBLE ABI change against abi/$l.abi:"; echo "$out"; fail=1 ;;
    added) echo "$l: functions added since abi/$l.abi:"; echo "$out" | sed 's/^/  /' ;;
    *) echo "$l: ABI identical to abi/$l.abi" ;;
  esac
done
exit $fail

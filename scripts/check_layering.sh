#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check_layering.sh [--self-test] [root]  - the include graph between modules (issue 16).
#
# Checks every C/C++ file under notifier/, regcache/ and drivers/ against
# cmake/layering.txt: a "quoted" include must name the file's own module
# ("<module>/x.h") or an exported header of a module it uses ("<dep>/x.h"); an
# <regcache/x.h> include must be a public header (<m>/include/regcache/x.h) of its own
# module or of one it uses; no quoted include may climb ("../"). Prints each violation
# as file:line: text (why) and exits 1 if there is any.
#   --self-test  runs the check on a scratch copy of the tree, which must pass, then
#                adds one forbidden include of each kind (notifier including regcache's,
#                a driver including a cache internal, a climbing include, a driver's
#                public header in the notifier) and fails unless each is caught.
set -euo pipefail
self_test=0
if [[ ${1:-} == --self-test ]]; then self_test=1; shift; fi
root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# module_of <path relative to root>: notifier, regcache, tools or drivers/<name>.
module_of() {
  case $1 in
    notifier/*) echo notifier ;;
    regcache/tools/*) echo tools ;;
    regcache/*) echo regcache ;;
    drivers/*/*) echo "drivers/$(cut -d/ -f2 <<<"$1")" ;;
    *) echo "" ;;
  esac
}

check() {
  local r=$1 conf=$1/cmake/layering.txt bad=0
  declare -A uses=() exports=()
  local kw m rest
  while read -r kw m rest; do
    case $kw in
      uses) uses[$m]=$rest ;;
      exports) exports[$m]=$rest ;;
    esac
  done < <(grep -E '^(uses|exports) ' "$conf")
  # public headers: regcache/x.h -> the module that installs it
  declare -A public=()
  local f
  while IFS= read -r f; do
    public[regcache/$(basename "$f")]=$(module_of "${f#"$r"/}")
  done < <(find "$r/notifier" "$r/regcache" "$r/drivers" -path '*/include/regcache/*' -type f)
  local file rel mod deps line no text inc target ok d h
  while IFS= read -r file; do
    rel=${file#"$r"/}
    mod=$(module_of "$rel")
    [[ -n $mod ]] || continue
    if [[ $mod == drivers/* ]]; then deps=${uses[drivers/*]-}; else deps=${uses[$mod]-}; fi
    while IFS=: read -r no text; do
      ok=0
      if [[ $text =~ \#[[:space:]]*include[[:space:]]*\"([^\"]+)\" ]]; then
        inc=${BASH_REMATCH[1]}
        if [[ $inc == *..* ]]; then
          ok=0
        elif [[ $inc == "$mod"/* ]]; then
          ok=1
        else
          for d in $deps; do
            [[ $d == *"*"* ]] && continue  # a pattern exports nothing
            for h in ${exports[$d]-}; do
              [[ $inc == "$d/$h" ]] && ok=1
            done
          done
        fi
      elif [[ $text =~ \#[[:space:]]*include[[:space:]]*\<(regcache/[^\>]+)\> ]]; then
        inc=${BASH_REMATCH[1]}
        target=${public[$inc]-}
        if [[ -z $target ]]; then
          ok=0
        elif [[ $target == "$mod" ]]; then
          ok=1
        else
          # shellcheck disable=SC2053  # $d may be a pattern (drivers/*)
          for d in $deps; do [[ $target == $d ]] && ok=1; done
        fi
      else
        continue
      fi
      if [[ $ok == 0 ]]; then
        echo "$rel:$no: $text (module $mod may include: its own, ${deps:-nothing else})"
        bad=1
      fi
    done < <(grep -nE '^[[:space:]]*#[[:space:]]*include' "$file" || true)
  done < <(find "$r/notifier" "$r/regcache" "$r/drivers" -type f \
             \( -name '*.h' -o -name '*.hpp' -o -name '*.cc' -o -name '*.c' \) | sort)
  return $bad
}

if [[ $self_test == 0 ]]; then
  if check "$root"; then echo "layering: ok"; exit 0; fi
  echo "layering: forbidden includes (the allowed graph: cmake/layering.txt)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fresh() {
  rm -rf "$tmp/t" && mkdir -p "$tmp/t/cmake"
  cp -r "$root/notifier" "$root/regcache" "$root/drivers" "$tmp/t/"
  cp "$root/cmake/layering.txt" "$tmp/t/cmake/"
}
fresh
check "$tmp/t" >/dev/null || { echo "self-test: the clean copy fails" >&2; exit 1; }
fails=0
try() {  # try <file> <line to add> <what>
  fresh
  sed -i "0,/^#include/s||$2\n#include|" "$tmp/t/$1"
  if out=$(check "$tmp/t"); then
    echo "self-test: NOT caught: $3 ($1: $2)" >&2
    fails=1
  else
    echo "self-test: caught: $out"
  fi
}
try notifier/policy.cc '#include "regcache/log.h"' "notifier including a regcache internal"
try drivers/host/host_driver.cc '#include "regcache/cache.h"' "a driver including a cache internal"
try regcache/c_api.cc '#include "../notifier/sources.h"' "a climbing include"
try notifier/address_space.cc '#include <regcache/verbs.h>' "a driver's public header in the notifier"
try regcache/c_api.cc '#include "notifier/sources.h"' "a notifier internal that is not exported"
exit $fails

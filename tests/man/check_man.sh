#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check_man.sh <man source dir> <regcache-info> [<installed man dir>]
# Each page must parse (lexgrog finds its NAME line, `man -l` renders it without a groff
# warning), regcache(7) must document every tunable regcache-info -c prints, regcache(3)
# must name every function the version scripts export, regcache-info(1)
# must document exactly the options regcache-info --help lists (each one accepted by the
# tool), and, if given, the installed man dir must hold each page in its section directory.
set -euo pipefail
src=$1 info=$2 installed=${3:-}
pages=(regcache-info.1 regcache.3 regcache.7)
for p in "${pages[@]}"; do
  f=$src/$p
  [[ -f $f ]] || { echo "missing $f"; exit 1; }
  lexgrog "$f" >/dev/null || { echo "lexgrog: no NAME section in $p"; exit 1; }
  warnings=$(MANWIDTH=80 man --warnings=w -l "$f" 2>&1 >/dev/null || true)
  [[ -z $warnings ]] || { echo "man -l $p warns:"; echo "$warnings"; exit 1; }
  out=$(MANWIDTH=80 man -l "$f" 2>/dev/null)
  [[ -n $out ]] || { echo "man -l $p rendered nothing"; exit 1; }
done
missing=0
for v in $("$info" -c 2>/dev/null | sed -n 's/^\(REGCACHE_[A-Z0-9_]*\)=.*/\1/p'); do
  grep -q "^\.BR $v\b" "$src/regcache.7" || { echo "regcache.7 does not document $v"; missing=1; }
done
((missing == 0)) || exit 1
# regcache(3) names every public function: each one a version script exports (the
# scripts sit next to the man dir's siblings: <src>/../regcache, <src>/../drivers).
top=$(cd "$src/.." && pwd)
for f in $(sed 's|/\*.*\*/||' "$top"/regcache/regcache.map "$top"/drivers/*/*.map |
           grep -o '^ *regcache_[a-z0-9_]*;' | tr -d ' ;'); do
  grep -qw "$f" "$src/regcache.3" || { echo "regcache.3 does not name $f"; missing=1; }
done
((missing == 0)) || exit 1
# regcache-info(1) against the tool: the options --help lists and the ones the OPTIONS
# section documents (.B/.BR lines starting with \-) must be the same set, and the tool
# must accept each (a usage error prints "usage:" to stderr; -s may exit 1-3 by design).
opts_help=$("$info" --help | grep -oE '(^|[][ |,])--?[a-z][a-z-]*' | grep -oE -- '--?[a-z][a-z-]*' |
            sort -u)
opts_man=$(sed -n '/^\.SH OPTIONS/,/^\.SH /p' "$src/regcache-info.1" | grep -E '^\.BR? \\-' |
           sed 's/\\-/-/g' | grep -oE -- '--?[a-z][a-z-]*' | sort -u)
[[ -n $opts_help && -n $opts_man ]] || { echo "no options found (--help or OPTIONS)"; exit 1; }
if [[ $opts_help != "$opts_man" ]]; then
  echo "regcache-info(1) OPTIONS and regcache-info --help differ (< --help, > man page):"
  diff <(echo "$opts_help") <(echo "$opts_man") | grep '^[<>]'
  exit 1
fi
for o in $opts_help; do
  rc=0
  err=$(timeout 60 "$info" "$o" 2>&1 >/dev/null) || rc=$?
  if grep -q '^usage:' <<<"$err" || ((rc >= 124)); then
    echo "regcache-info $o: rejected, hung or crashed (exit status $rc)"; echo "$err"; exit 1
  fi
done
if [[ -n $installed ]]; then
  for p in "${pages[@]}"; do
    [[ -f $installed/man${p##*.}/$p ]] || { echo "not installed: $installed/man${p##*.}/$p"; exit 1; }
  done
fi
echo "man pages: ${pages[*]} parse, render, cover every tunable and every regcache-info option"

#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# spdx.sh [--check|--fix|--self-test] [root]  - SPDX-License-Identifier lines (issue 17).
#
# Every source file (C, C++, CMake, shell, Promela, linker version scripts, pkg-config and
# CMake templates, Makefiles) carries "SPDX-License-Identifier: BSD-3-Clause" within its
# first 3 lines, in the file's own comment syntax, after a shebang if there is one.
#   --check      (default) list files without it; exit 1 if any (ctest spdx_headers, .ci/run)
#   --fix        add the line to those files
#   --self-test  runs --check and --fix on a scratch tree with a file lacking the line, and
#                fails unless --check catches it and --fix repairs it (negative control)
# Files are the ones git knows about plus untracked, non-ignored ones; exempt: Markdown,
# JSON (no comments), SVG, the fuzz corpus, dot files. A new kind of source file gets its
# comment style in style() below.
set -euo pipefail
mode=--check
if [[ ${1:-} == --* ]]; then mode=$1; shift; fi
root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
tag="SPDX-License-Identifier: BSD-3-Clause"

# style <path>: prints the comment line for the file, or nothing if exempt.
style() {
  case $1 in
    *.cc | *.hpp | *.cpp) echo "// $tag" ;;
    *.c | *.h | *.pml | *.map) echo "/* $tag */" ;;
    *.sh | *.cmake | */CMakeLists.txt | CMakeLists.txt | *.cmake.in | *.pc.in | */Makefile | \
      Makefile | .ci/run) echo "# $tag" ;;
    *) ;;
  esac
}

list_files() {
  if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$root" ls-files --cached --others --exclude-standard
  else
    (cd "$root" && find . -type f -not -path './build/*' -not -path './.git/*' | sed 's|^\./||')
  fi
}

has_tag() { head -n 3 "$1" | grep -q 'SPDX-License-Identifier:'; }

run() {
  local m=$1 missing=0 f line
  while IFS= read -r f; do
    [[ -f $root/$f ]] || continue
    line=$(style "$f")
    [[ -n $line ]] || continue
    has_tag "$root/$f" && continue
    if [[ $m == --fix ]]; then
      if head -n 1 "$root/$f" | grep -q '^#!'; then
        sed -i "1a $line" "$root/$f"
      else
        sed -i "1i $line" "$root/$f"
      fi
      echo "spdx: added to $f"
    else
      echo "spdx: missing in $f"
      missing=$((missing + 1))
    fi
  done < <(list_files)
  if [[ $m == --check && $missing -gt 0 ]]; then
    echo "spdx: $missing file(s) without '$tag' (scripts/spdx.sh --fix adds it)"
    return 1
  fi
  return 0
}

case $mode in
  --check | --fix) run "$mode" ;;
  --self-test)
    t=$(mktemp -d)
    trap 'rm -rf "$t"' EXIT
    mkdir -p "$t/a"
    printf '#!/bin/sh\necho hi\n' >"$t/a/x.sh"
    printf 'int main(void) { return 0; }\n' >"$t/a/y.c"
    printf '# SPDX-License-Identifier: BSD-3-Clause\nproject(x)\n' >"$t/a/CMakeLists.txt"
    if "$0" --check "$t" >/dev/null; then echo "self-test: --check missed unlabelled files"; exit 1; fi
    "$0" --fix "$t" >/dev/null
    "$0" --check "$t" >/dev/null || { echo "self-test: --fix did not repair"; exit 1; }
    head -n 1 "$t/a/x.sh" | grep -q '^#!/bin/sh' || { echo "self-test: shebang moved"; exit 1; }
    [[ $(sed -n 2p "$t/a/x.sh") == "# $tag" ]] || { echo "self-test: shell line wrong"; exit 1; }
    [[ $(head -n 1 "$t/a/y.c") == "/* $tag */" ]] || { echo "self-test: C line wrong"; exit 1; }
    sh "$t/a/x.sh" >/dev/null
    echo "spdx self-test: --check catches a missing line, --fix adds it in the right syntax"
    ;;
  *) echo "usage: spdx.sh [--check|--fix|--self-test] [root]" >&2; exit 2 ;;
esac

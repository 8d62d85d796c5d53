#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# format.sh [--check|--fix|--self-test] [root]  - clang-format (Google base, .clang-format).
#
#   --check      (default) clang-format --dry-run -Werror over every C/C++ file git knows
#                about plus untracked, non-ignored ones; exit 1 on the first violation list
#                (.ci/run runs this before the build: seconds)
#   --fix        clang-format -i over the same files
#   --self-test  copies a formatted file into a scratch tree, breaks its format, and fails
#                unless --check catches it and --fix repairs it (negative control)
# The formatter is Debian 12's clang-format 14 (scripts/install-deps.sh installs it); a
# different major version formats differently, so the check insists on 14.
set -euo pipefail
mode=--check
if [[ ${1:-} == --* ]]; then mode=$1; shift; fi
root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cf=$(command -v clang-format-14 || command -v clang-format || true)
if [[ -z $cf ]]; then
  echo "format.sh: clang-format 14 not found (scripts/install-deps.sh installs it)" >&2
  exit 2
fi

files() {
  (cd "$root" && git ls-files -co --exclude-standard -- '*.c' '*.cc' '*.h' '*.hpp' '*.cpp' |
    grep -v '^tests/reliability/fuzz/corpus/' || true)
}

case $mode in
  --check)
    cd "$root"
    mapfile -t list < <(files)
    if ! "$cf" --dry-run -Werror "${list[@]}"; then
      echo "format.sh: files above are not clang-formatted; run scripts/format.sh --fix" >&2
      exit 1
    fi
    echo "format.sh: ${#list[@]} files clang-formatted"
    ;;
  --fix)
    cd "$root"
    mapfile -t list < <(files)
    "$cf" -i "${list[@]}"
    ;;
  --self-test)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp "$root/.clang-format" "$tmp/"
    printf '// SPDX-License-Identifier: BSD-3-Clause\nint f(int x);\n' >"$tmp/ok.cc"
    (cd "$tmp" && git init -q . && git add . >/dev/null)
    "$0" --check "$tmp" >/dev/null || { echo "self-test: clean tree rejected" >&2; exit 1; }
    printf 'int   g( int y ){return y;}\n' >>"$tmp/ok.cc"
    if "$0" --check "$tmp" >/dev/null 2>&1; then
      echo "self-test: misformatted file not caught" >&2
      exit 1
    fi
    "$0" --fix "$tmp"
    "$0" --check "$tmp" >/dev/null || { echo "self-test: --fix did not repair" >&2; exit 1; }
    echo "format.sh: self-test passed"
    ;;
  *)
    echo "usage: format.sh [--check|--fix|--self-test] [root]" >&2
    exit 2
    ;;
esac

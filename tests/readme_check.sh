#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Keeps README.md true: every tunable regcache-info -c prints must be documented there.
set -euo pipefail
info=$1 readme=$2
missing=0
for v in $("$info" -c | sed -n 's/^\(REGCACHE_[A-Z0-9_]*\)=.*/\1/p'); do
  grep -q "\`$v\`" "$readme" || { echo "README.md does not document $v"; missing=1; }
done
exit $missing

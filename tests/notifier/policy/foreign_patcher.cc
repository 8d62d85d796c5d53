// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/policy/foreign_patcher.cc - LD_PRELOAD stand-in for a library
// that patches libc's munmap before regcache and tells nobody (Open MPI's
// patcher, libfabric memhooks): the process it is preloaded into has no
// patch source, and no ucm to import.
#include "tests/notifier/policy/env.h"

__attribute__((constructor)) static void ForeignPatcherInit() {
  regcache::testing::PatchMunmapForeign();
}

// SPDX-License-Identifier: BSD-3-Clause
// notifier/sources.cc - the table of automatic event sources (sources.h).
#include "notifier/sources.h"

namespace regcache::notifier::sources {

const SourceOps *const kSourceTable[] = {&kPatchOps, &kUffdOps, &kUcmOps};
const size_t kSourceCount = sizeof(kSourceTable) / sizeof(kSourceTable[0]);

const SourceOps *Find(Source s) {
  for (const SourceOps *ops : kSourceTable)
    if (ops->id == s) return ops;
  return nullptr;
}

}  // namespace regcache::notifier::sources

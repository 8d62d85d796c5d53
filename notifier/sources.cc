// SPDX-License-Identifier: BSD-3-Clause
// notifier/sources.cc - the table of automatic event sources (sources.h).
#include "notifier/sources.h"

#include <cstring>

namespace regcache::notifier::sources {

const SourceOps *const kSourceTable[] = {&kPatchOps, &kUffdOps, &kUcmOps};
const size_t kSourceCount = sizeof(kSourceTable) / sizeof(kSourceTable[0]);

const SourceOps *Find(Source s) {
  for (const SourceOps *ops : kSourceTable)
    if (ops->id == s) return ops;
  return nullptr;
}

}  // namespace regcache::notifier::sources

namespace regcache::notifier {

bool SourceFromName(const char *name, Source *out) {
  if (std::strcmp(name, "auto") == 0) {
    *out = Source::kAuto;
    return true;
  }
  if (std::strcmp(name, "none") == 0) {
    *out = Source::kNone;
    return true;
  }
  for (const sources::SourceOps *ops : sources::kSourceTable) {
    if (std::strcmp(ops->name, name) == 0) {
      *out = ops->id;
      return true;
    }
  }
  return false;
}

}  // namespace regcache::notifier

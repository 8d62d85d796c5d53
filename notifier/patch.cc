// notifier/patch.cc - patch source (not implemented yet).
#include <cerrno>

#include "notifier/sources.h"

namespace regcache::notifier::sources {
int PatchInstall() { return -ENOSYS; }
void PatchUninstall() {}
}  // namespace regcache::notifier::sources

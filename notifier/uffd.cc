// notifier/uffd.cc - userfaultfd source (not implemented yet).
#include <cerrno>

#include "notifier/sources.h"

namespace regcache::notifier::sources {
int UffdInstall() { return -ENOSYS; }
void UffdUninstall() {}
int UffdWatch(uintptr_t, uintptr_t) { return 0; }
}  // namespace regcache::notifier::sources

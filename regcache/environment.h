/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/environment.h - REGCACHE_* variables the tunables table does not
// know (internal).
//
// A misspelled REGCACHE_MAX_REGION=5 would otherwise be silently ignored (UCX
// warns about unused UCX_* variables the same way). WarnUnknownVariables() scans
// the environment and logs one warning per unknown name, with the closest known
// name when one is within two edits. Called when the library initializes (the
// first cache or notifier subscription) and by regcache_config_check()
// (regcache-info -c). Under AT_SECURE the environment is not read at all (the
// tunables ignore it there too), so nothing is reported.
//
// Thread safety: may be called concurrently; names already reported are kept
// under an internal mutex. Never called from memory-event paths.
#ifndef REGCACHE_REGCACHE_ENVIRONMENT_H_
#define REGCACHE_REGCACHE_ENVIRONMENT_H_

#include <string>
#include <vector>

namespace regcache::environment {

// Returns the number of unknown REGCACHE_* variables found (each warned once
// per process).
int WarnUnknownVariables();

// Exposed for tests: the unknown names in envp (a NULL-terminated array).
std::vector<std::string> UnknownVariables(char *const *envp);
// The closest tunable name (with REGCACHE_ prefix) within 2 edits, or "".
std::string Suggest(const std::string &unknown_name);

}  // namespace regcache::environment

#endif  // REGCACHE_REGCACHE_ENVIRONMENT_H_

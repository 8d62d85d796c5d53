/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/config_print.h - regcache_config_print() with origins, resolved
// `auto` values and wrapped help (internal; regcache-info -c).
//
// The flags are those of <regcache/regcache.h>: REGCACHE_CONFIG_PRINT_HELP,
// _ORIGIN, _RESOLVED, _WIDTH(cols). Every value line starts with
// "REGCACHE_<NAME>=<value>", so scripts can parse the output.
//
// Thread safety: as the tunables (any thread); never from memory-event paths.
#ifndef REGCACHE_REGCACHE_CONFIG_PRINT_H_
#define REGCACHE_REGCACHE_CONFIG_PRINT_H_

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace regcache::config {

int Print(FILE *stream, unsigned flags);

// Exposed for tests: words of text in lines of at most width columns, each
// starting with prefix (a word longer than a line gets a line of its own).
std::vector<std::string> Wrap(std::string_view text, std::string_view prefix,
                              size_t width);

}  // namespace regcache::config

#endif  // REGCACHE_REGCACHE_CONFIG_PRINT_H_

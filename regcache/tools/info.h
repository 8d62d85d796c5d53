// SPDX-License-Identifier: BSD-3-Clause
// regcache-info's units (man/regcache-info.1): regcache_info.cc (options,
// versions, -c), info_devices.cc (-d), info_safety.cc (-s). The tool uses only
// the public C API plus libibverbs / libfabric directly.
#ifndef REGCACHE_TOOLS_INFO_H_
#define REGCACHE_TOOLS_INFO_H_

namespace regcache_info {

// Columns to wrap at: the terminal's, else $COLUMNS, else 80.
unsigned Columns();

// -d: RDMA devices (libibverbs) and libfabric providers, with what the driver
// decides for each.
void ListVerbs();
void ListFabric();

// -s / --safety: the event source auto picks and why, the facts it depends on
// (userfaultfd, other patchers, seccomp, memlock limits) and the resolved
// configuration. Returns the exit status: 0 caching safe, 1 blind (caching
// off), 2 the configured source cannot be installed.
int SafetyReport();

}  // namespace regcache_info

#endif  // REGCACHE_TOOLS_INFO_H_

// SPDX-License-Identifier: BSD-3-Clause
// regcache/tunables_table.cc - the table of REGCACHE_* tunables: every tunable
// is declared here, once (name, type, default, help, accepted values).
#include <span>
#include <string_view>

#include "regcache/tunables.h"
#include "regcache/tunables_internal.h"

namespace regcache::tunables {
namespace {

// THE table. Later features add their rows here and nowhere else.
constexpr Spec kTable[] = {
    {"LOG_LEVEL", Type::kEnum, "warn",
     "Library log level. Log lines go to stderr, or to the handler set with "
     "regcache_set_log_handler().",
     "off|error|warn|info|debug|trace"},
    {"LOG_FILE", Type::kString, "",
     "Write log lines to this file (appending) instead of stderr; %h is "
     "replaced by the host name, %p by the process id, %% by %. Read once, "
     "when the library initializes. A handler set with "
     "regcache_set_log_handler() still takes precedence.",
     nullptr},
    {"MONITOR", Type::kEnum, "auto",
     "How the notifier sees memory being unmapped: patch (patch libc's "
     "munmap/mremap/madvise/brk/shmdt/mmap entry points), uffd (userfaultfd "
     "monitor thread), ucm (import the events of UCX's libucm, when the "
     "process loaded it), none (the host reports unmaps with "
     "regcache_notify_unmap_start/end; caching stays on), auto (patch; ucm if "
     "libucm patched libc first; uffd; ucm if libucm is loaded; else no "
     "source: caching is turned off, with one warning).",
     "auto|patch|uffd|none|ucm"},
    {"MAX_REGIONS", Type::kUint, "16384",
     "Most regions a cache keeps registered. Beyond it, unused regions are "
     "deregistered in REGCACHE_EVICTION's order (regions in use are never "
     "evicted, and a miss the policy does not cache is held uncached, so the "
     "count can exceed the limit while they are held). Default: well under "
     "the max_mr of common HCAs (rxe 524287, mlx5 ~16M) and 16x libfabric's "
     "1024, which is known to thrash. 0 disables caching.",
     nullptr},
    {"MAX_BYTES", Type::kSize, "auto",
     "Most registered (pinned) bytes a cache keeps; beyond it, unused regions "
     "are deregistered in REGCACHE_EVICTION's order. auto: 3/4 of "
     "RLIMIT_MEMLOCK when that limit is finite and applies (no CAP_IPC_LOCK), "
     "else 1/4 of physical RAM.",
     "auto"},
    {"MERGE_MAX_BYTES", Type::kSize, "64m",
     "A region formed by merging overlapping regions never grows beyond this "
     "many bytes (a request larger than this is registered as it is). 0 "
     "disables merging.",
     nullptr},
    {"EVICTION", Type::kEnum, "adaptive",
     "Which unused regions a full cache deregisters, and whether a miss is "
     "cached. adaptive: least recently used first, but a region used once is "
     "cached only while first-time regions have proven worth it (a reuse LRU "
     "would have hit), so loops over more buffers than fit and one-off scans "
     "keep the reused set; costlier (larger) regions are kept longer, by "
     "their modeled registration cost. lru: least recently used first, every "
     "miss cached (UCX's decisions).",
     "adaptive|lru"},
    {"ACCESS_POLICY", Type::kEnum, "all",
     "Access a cache registers memory with. all: writable memory gets every "
     "access (local write, remote read, write and atomic), so requests with "
     "different flags share one registration, as UCX and libfabric do; a key "
     "then allows remote writes even where the application asked for local "
     "access only (it grants nothing until the application sends the rkey). "
     "Read-only memory, or a driver refusing, falls back to the requested "
     "access. requested: only the union of the requested flags.",
     "all|requested"},
    {"ODP", Type::kEnum, "auto",
     "On-demand paging for the verbs driver (read when a driver is opened). "
     "auto: register with IBV_ACCESS_ON_DEMAND (nothing pinned) when the "
     "device's RC ODP caps cover send, recv, write, read and atomic, else pin "
     "(one info line). on: the same, but the fallback to pinning is a "
     "warning. off: always pin.",
     "auto|on|off"},
    {"STATS", Type::kBool, "n",
     "Print each cache's statistics to the log (info level, or stderr) when "
     "it is destroyed or the process exits.",
     nullptr},
};

}  // namespace

std::span<const Spec> Specs() { return kTable; }

const Spec *Table(size_t *count) {
  *count = sizeof(kTable) / sizeof(kTable[0]);
  return kTable;
}

const Spec *Find(const char *name) {
  if (name == nullptr) return nullptr;
  std::string_view n(name);
  if (n.substr(0, 9) == "REGCACHE_") n.remove_prefix(9);
  for (const auto &s : kTable) {
    if (n == s.name) return &s;
  }
  return nullptr;
}

}  // namespace regcache::tunables

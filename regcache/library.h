/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/library.h - process-wide library state (internal).
//
// LibraryInit() runs once, on the first call of any regcache_* function that
// needs it: it reads REGCACHE_LOG_LEVEL and REGCACHE_MONITOR from the tunables
// table and configures the notifier (which itself depends on nothing of ours).
// A bad value is reported once and returned (-EINVAL) to every caller until it
// is fixed with regcache_config_set().
//
// Fork: a child forked while another thread runs LibraryInit gets a fresh,
// unlocked mutex and runs it again on first use (library.cc, FORK).
//
// At process exit the notifier's own destructor tears the address space down:
// every subscriber (each cache included) gets release exactly once.
#ifndef REGCACHE_REGCACHE_LIBRARY_H_
#define REGCACHE_REGCACHE_LIBRARY_H_

#include <mutex>

#include "notifier/address_space.h"

namespace regcache {

int LibraryInit();

// The event source REGCACHE_MONITOR names: its choice looked up by name in the
// notifier's source table (notifier::SourceFromName), the one list. 0, or
// -EINVAL (a bad value, or a choice no source has).
int MonitorSource(notifier::Source *out);

// Tests only: the mutex LibraryInit holds, so a test can hold it across a
// fork; and a switch that disables its atfork child handler (negative
// controls: the child then blocks on it).
std::mutex &InitMutexForTesting();
void SetInitAtforkOffForTesting(bool off);

}  // namespace regcache

#endif  // REGCACHE_REGCACHE_LIBRARY_H_

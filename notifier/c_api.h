/* SPDX-License-Identifier: BSD-3-Clause */
// notifier/c_api.h - what the notifier's C API (c_api.cc,
// <regcache/notifier.h>) needs from the library that hosts it, handed over at
// load (dependency inversion: the notifier depends on nothing of ours).
//
//   init       runs before a call that may install an event source: the host
//              reads its configuration (REGCACHE_MONITOR, the log level) and
//              calls Configure(). 0 or a negative errno, returned to the caller.
//   flush_log  delivers log lines the notifier deferred (its log hook never
//              allocates) once a public call that may have installed a source
//              returns, so the host's handler gets them then.
// Either may be null (a host without configuration or logger: then nothing is
// done). Set once, before any thread can call the API (a constructor).
#ifndef REGCACHE_NOTIFIER_C_API_H_
#define REGCACHE_NOTIFIER_C_API_H_

namespace regcache::notifier {

struct HostHooks {
  int (*init)();
  void (*flush_log)();
};
void SetHostHooks(const HostHooks &hooks);

// For c_api.cc: run the hooks (no-ops when unset).
int HostInit();
void HostFlushLog();

}  // namespace regcache::notifier

#endif  // REGCACHE_NOTIFIER_C_API_H_

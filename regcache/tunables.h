/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/tunables.h - every REGCACHE_* tunable, declared once (internal).
//
// The table in tunables_table.cc declares every tunable; tunables.cc is the
// only place a REGCACHE_* environment variable is read, with secure_getenv:
// under AT_SECURE (setuid/setgid programs, file capabilities) the environment
// is ignored and only regcache_config_set() and the defaults apply. A value
// comes from, in order: regcache_config_set() (in-process override), the
// environment, the table's default. Values are
// validated when read; a bad value gives -EINVAL and one error log line naming
// the variable and the accepted values.
//
// Thread safety: all functions may be called concurrently (one internal mutex;
// never called from memory-event paths).
#ifndef REGCACHE_REGCACHE_TUNABLES_H_
#define REGCACHE_REGCACHE_TUNABLES_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

#include "regcache/private_api.h"

namespace regcache::tunables {

enum class Type {
  kBool,    // y|n|yes|no|1|0|on|off|true|false
  kEnum,    // one of `choices`
  kSize,    // bytes, k/m/g/t suffix (powers of 1024); "inf"; "auto" if allowed
  kUint,    // a count: decimal, "inf"; "auto" if allowed
  kString,  // any text (a path); "" means unset
};

struct Spec {
  const char *name;  // without the REGCACHE_ prefix, e.g. "MAX_REGIONS"
  Type type;
  const char *default_value;  // as a user would write it
  // One or two sentences: what it does and how the default is chosen.
  const char *help;
  // kEnum: the accepted values ("auto|patch|uffd|none|ucm"); kSize/kUint:
  // non-null if "auto" is allowed; otherwise nullptr.
  const char *choices;
};

// The whole table, for printing (regcache-info -c) and tests.
const Spec *Table(size_t *count);
// Accepts "MAX_REGIONS" or "REGCACHE_MAX_REGIONS".
const Spec *Find(const char *name);

// Raw current value (override > env > default). -ENOENT for an unknown name.
int GetString(const char *name, std::string *out);
// Typed reads. Return 0, -ENOENT (unknown), -EINVAL (bad value; logged once per
// value).
int GetBool(const char *name, bool *out);
// *index_out: the index into the choices list.
REGCACHE_PRIVATE_API int GetEnum(const char *name, int *index_out);
// kSize / kUint. "inf" -> SIZE_MAX. "auto" -> *is_auto = true and *out
// untouched (is_auto may be nullptr when the tunable has no "auto").
int GetSize(const char *name, size_t *out, bool *is_auto = nullptr);

// Raw current value and where it came from: "regcache_config_set",
// "environment" or "default". -ENOENT for an unknown name.
int GetOrigin(const char *name, std::string *value, const char **origin);
// The accepted values of s, in words (for messages and regcache-info -c).
const char *AcceptedValues(const Spec &s);

// Validates every tunable (typed read of each); -EINVAL if any is bad (each
// logged).
int CheckAll();

// In-process override (regcache_config_set). Validates first: -ENOENT /
// -EINVAL.
int Set(const char *name, const char *value);
// Drops every override (tests).
void ClearOverridesForTesting();
// Tests (issue 13): the state's mutex, and a switch that turns its fork child
// handler off (negative control: a child forked while another thread holds
// the mutex then blocks in its first read).
std::mutex &MutexForTesting();
void SetAtforkOffForTesting(bool off);
// Tests: 1 behaves as under AT_SECURE (REGCACHE_* environment ignored), 0 as
// not, -1 asks the kernel (getauxval(AT_SECURE)), the default.
void SetSecureForTesting(int secure);

// Prints "REGCACHE_NAME=value" lines; with help, a "# type, default, help"
// block each.
int Print(FILE *stream, bool with_help);

// Parsers, exposed for tests.
int ParseBool(const std::string &s, bool *out);
int ParseSize(const std::string &s, size_t *out);  // units; "inf" -> SIZE_MAX

}  // namespace regcache::tunables

#endif  // REGCACHE_REGCACHE_TUNABLES_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// regcache/tunables_internal.h - what the units of tunables share (internal to
// tunables_*.cc): the table (tunables_table.cc) and the validation of a value
// against its row (tunables_parse.cc). The state (overrides, reported
// warnings, its mutex and fork discipline) stays in tunables.cc, beside its
// invariant.
//
// No state here: the table is constant and the parsers are pure, so every
// function may be called from any thread, with or without the state's mutex.
#ifndef REGCACHE_REGCACHE_TUNABLES_INTERNAL_H_
#define REGCACHE_REGCACHE_TUNABLES_INTERNAL_H_

#include <cstddef>
#include <span>
#include <string>

#include "regcache/tunables.h"

namespace regcache::tunables {

// Every row of the table (tunables_table.cc), in its order.
std::span<const Spec> Specs();

// The accepted values of s, in words (AcceptedValues() is the public name).
const char *Accepted(const Spec &s);

// Validates raw (case-insensitive) for s: 0 or -EINVAL. On success fills
// whichever out-parameters are non-null: *enum_index (kEnum: index into the
// choices), *size_out (kSize/kUint, unless "auto"), *is_auto (kSize/kUint).
int Validate(const Spec &s, const std::string &raw, int *enum_index,
             size_t *size_out, bool *is_auto);

}  // namespace regcache::tunables

#endif  // REGCACHE_REGCACHE_TUNABLES_INTERNAL_H_

// SPDX-License-Identifier: BSD-3-Clause
// regcache/tunables_parse.cc - parsing and validating tunable values (bool,
// enum choice, size with units, count, "inf", "auto"). No state.
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "regcache/tunables.h"
#include "regcache/tunables_internal.h"

namespace regcache::tunables {
namespace {

std::string Lower(std::string v) {
  for (auto &c : v)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return v;
}

bool HasChoice(const char *choices, const std::string &v, int *index) {
  if (choices == nullptr) return false;
  std::string_view all(choices);
  int i = 0;
  size_t pos = 0;
  while (pos <= all.size()) {
    size_t bar = all.find('|', pos);
    if (bar == std::string_view::npos) bar = all.size();
    if (all.substr(pos, bar - pos) == v) {
      if (index) *index = i;
      return true;
    }
    ++i;
    pos = bar + 1;
  }
  return false;
}

}  // namespace

const char *Accepted(const Spec &s) {
  switch (s.type) {
    case Type::kBool:
      return "y|n|yes|no|1|0|on|off|true|false";
    case Type::kEnum:
      return s.choices;
    case Type::kSize:
      return s.choices ? "a size like 4096, 64k, 256m, 2g, or inf, or auto"
                       : "a size like 4096, 64k, 256m, 2g, or inf";
    case Type::kUint:
      return s.choices ? "a non-negative integer, inf, or auto"
                       : "a non-negative integer, or inf";
    case Type::kString:
      return "any text (empty: unset)";
  }
  return "";
}

// Validates v for s. 0 or -EINVAL.
int Validate(const Spec &s, const std::string &raw, int *enum_index,
             size_t *size_out, bool *is_auto) {
  std::string v = Lower(raw);
  switch (s.type) {
    case Type::kBool: {
      bool b;
      return ParseBool(v, &b);
    }
    case Type::kEnum:
      return HasChoice(s.choices, v, enum_index) ? 0 : -EINVAL;
    case Type::kSize:
    case Type::kUint: {
      if (v == "auto") {
        if (!s.choices) return -EINVAL;
        if (is_auto) *is_auto = true;
        return 0;
      }
      size_t n;
      int rc;
      if (s.type == Type::kSize) {
        rc = ParseSize(v, &n);
      } else if (v == "inf") {
        n = SIZE_MAX;
        rc = 0;
      } else {
        char *end = nullptr;
        errno = 0;
        unsigned long long x = std::strtoull(v.c_str(), &end, 10);
        rc = (v.empty() || v[0] == '-' || *end != '\0' || errno) ? -EINVAL : 0;
        n = static_cast<size_t>(x);
      }
      if (rc == 0 && size_out) *size_out = n;
      if (rc == 0 && is_auto) *is_auto = false;
      return rc;
    }
    case Type::kString:
      return 0;
  }
  return -EINVAL;
}

int ParseBool(const std::string &raw, bool *out) {
  std::string v = Lower(raw);
  if (v == "y" || v == "yes" || v == "1" || v == "on" || v == "true") {
    *out = true;
    return 0;
  }
  if (v == "n" || v == "no" || v == "0" || v == "off" || v == "false") {
    *out = false;
    return 0;
  }
  return -EINVAL;
}

int ParseSize(const std::string &raw, size_t *out) {
  std::string v = Lower(raw);
  if (v == "inf") {
    *out = SIZE_MAX;
    return 0;
  }
  if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0])))
    return -EINVAL;
  char *end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (errno) return -EINVAL;
  std::string_view unit(end);
  if (!unit.empty() && unit.back() == 'b') unit.remove_suffix(1);
  unsigned shift = 0;
  if (unit.empty())
    shift = 0;
  else if (unit == "k")
    shift = 10;
  else if (unit == "m")
    shift = 20;
  else if (unit == "g")
    shift = 30;
  else if (unit == "t")
    shift = 40;
  else
    return -EINVAL;
  if (shift && n > (SIZE_MAX >> shift)) return -EINVAL;
  *out = static_cast<size_t>(n) << shift;
  return 0;
}

const char *AcceptedValues(const Spec &s) { return Accepted(s); }

}  // namespace regcache::tunables

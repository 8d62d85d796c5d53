// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/config_print.h"

#include <regcache/regcache.h>
#include <sys/resource.h>

#include <cerrno>
#include <string>

#include "notifier/address_space.h"
#include "regcache/cache.h"
#include "regcache/log.h"
#include "regcache/tunables.h"

namespace regcache::config {
namespace {

const char *TypeName(tunables::Type t) {
  switch (t) {
    case tunables::Type::kBool:
      return "bool";
    case tunables::Type::kEnum:
      return "enum";
    case tunables::Type::kSize:
      return "size";
    case tunables::Type::kUint:
      return "count";
    case tunables::Type::kString:
      return "string";
  }
  return "?";
}

std::string Bytes(size_t n) {
  static const char *kUnit[] = {"", "k", "m", "g", "t"};
  int u = 0;
  double v = static_cast<double>(n);
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{}", n) : fmt::format("{:.3g}{}", v, kUnit[u]);
}

// What `auto` (or a pattern) stands for in this process, or "".
std::string Resolved(const tunables::Spec &s, const std::string &value) {
  std::string_view name(s.name);
  if (name == "LOG_FILE") {
    if (value.empty()) return "stderr";
    return "";  // the expansion is shown by InitFromTunables' open, if it fails
  }
  if (value != "auto") return "";
  if (name == "MAX_BYTES") {
    size_t v = core::AutoMaxBytes();
    struct rlimit rl;
    bool from_rlimit = getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
                       rl.rlim_cur != RLIM_INFINITY &&
                       v == static_cast<size_t>(rl.rlim_cur / 4 * 3);
    return from_rlimit ? fmt::format("{} (3/4 of RLIMIT_MEMLOCK {})", Bytes(v),
                                     Bytes(rl.rlim_cur))
                       : fmt::format(
                             "{} (1/4 of RAM: RLIMIT_MEMLOCK unlimited or "
                             "CAP_IPC_LOCK)",
                             Bytes(v));
  }
  if (name == "MONITOR") {
    notifier::Source src = notifier::ActiveSource();
    return fmt::format("{} (the source active in this process{})",
                       notifier::SourceName(src),
                       src == notifier::Source::kNone
                           ? "; none also before the first cache chooses"
                           : "");
  }
  if (name == "ODP")
    return "per device, when the verbs driver opens (regcache-info -d)";
  return "";
}

}  // namespace

std::vector<std::string> Wrap(std::string_view text, std::string_view prefix,
                              size_t width) {
  std::vector<std::string> lines;
  std::string line(prefix);
  bool empty = true;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t start = text.find_first_not_of(' ', pos);
    if (start == std::string_view::npos) break;
    size_t end = text.find(' ', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view word = text.substr(start, end - start);
    if (!empty && line.size() + 1 + word.size() > width) {
      lines.push_back(line);
      line.assign(prefix);
      empty = true;
    }
    if (!empty) line += ' ';
    line += word;
    empty = false;
    pos = end;
  }
  if (!empty) lines.push_back(line);
  return lines;
}

int Print(FILE *stream, unsigned flags) {
  if (stream == nullptr) return -EINVAL;
  const bool help = flags & REGCACHE_CONFIG_PRINT_HELP;
  const bool origin = flags & REGCACHE_CONFIG_PRINT_ORIGIN;
  const bool resolved = flags & REGCACHE_CONFIG_PRINT_RESOLVED;
  size_t width = flags >> 16;
  if (width == 0) width = 80;
  if (width < 40) width = 40;
  size_t count = 0;
  const tunables::Spec *table = tunables::Table(&count);
  for (size_t i = 0; i < count; ++i) {
    const tunables::Spec &s = table[i];
    std::string value;
    const char *from = "default";
    if (tunables::GetOrigin(s.name, &value, &from) != 0) continue;
    std::string note;
    if (origin) note = from;
    if (resolved) {
      std::string r = Resolved(s, value);
      if (!r.empty()) note += (note.empty() ? "" : "; ") + ("= " + r);
    }
    if (help) {
      std::fprintf(stream, "#\n");
      for (const auto &l : Wrap(s.help, "# ", width))
        std::fprintf(stream, "%s\n", l.c_str());
      std::string syntax = fmt::format(
          "{}: {}; default: {}", TypeName(s.type), tunables::AcceptedValues(s),
          *s.default_value ? s.default_value : "(empty)");
      for (const auto &l : Wrap(syntax, "#   ", width))
        std::fprintf(stream, "%s\n", l.c_str());
    }
    std::string line = fmt::format("REGCACHE_{}={}", s.name, value);
    if (note.empty()) {
      std::fprintf(stream, "%s\n", line.c_str());
    } else if (line.size() + 4 + note.size() <= width) {
      std::fprintf(stream, "%s  # %s\n", line.c_str(), note.c_str());
    } else {
      // The note goes on comment lines above the value, wrapped.
      for (const auto &l : Wrap(note, "#   ", width))
        std::fprintf(stream, "%s\n", l.c_str());
      std::fprintf(stream, "%s\n", line.c_str());
    }
  }
  return 0;
}

}  // namespace regcache::config

// SPDX-License-Identifier: BSD-3-Clause
#include "regcache/environment.h"

#include <sys/auxv.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>
#include <string_view>

#include "regcache/log.h"
#include "regcache/tunables.h"

extern char **environ;

namespace regcache::environment {
namespace {

constexpr std::string_view kPrefix = "REGCACHE_";

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::mutex g_mu;
std::set<std::string> g_reported;  // GUARDED_BY(g_mu)

}  // namespace

std::vector<std::string> UnknownVariables(char *const *envp) {
  std::vector<std::string> out;
  for (char *const *e = envp; e && *e; ++e) {
    std::string_view kv(*e);
    if (kv.substr(0, kPrefix.size()) != kPrefix) continue;
    std::string name(kv.substr(0, kv.find('=')));
    if (tunables::Find(name.c_str()) == nullptr) out.push_back(name);
  }
  return out;
}

std::string Suggest(const std::string &unknown_name) {
  std::string_view n(unknown_name);
  if (n.substr(0, kPrefix.size()) == kPrefix) n.remove_prefix(kPrefix.size());
  size_t count = 0;
  const tunables::Spec *table = tunables::Table(&count);
  std::string best;
  size_t best_d = 3;
  for (size_t i = 0; i < count; ++i) {
    size_t d = EditDistance(n, table[i].name);
    if (d < best_d) {
      best_d = d;
      best = std::string(kPrefix) + table[i].name;
    }
  }
  return best;
}

int WarnUnknownVariables() {
  if (getauxval(AT_SECURE))
    return 0;  // the environment is not trusted, nor read
  std::vector<std::string> unknown = UnknownVariables(environ);
  for (const auto &name : unknown) {
    {
      std::lock_guard<std::mutex> g(g_mu);
      if (!g_reported.insert(name).second) continue;
    }
    std::string hint = Suggest(name);
    if (!hint.empty()) hint = "; did you mean " + hint + "?";
    const char *value = std::getenv(name.c_str());
    REGCACHE_LOG(WARN,
                 "unknown environment variable {}={} ignored{} (regcache-info "
                 "-c lists the known ones)",
                 name, value ? value : "", hint);
  }
  return static_cast<int>(unknown.size());
}

}  // namespace regcache::environment

// SPDX-License-Identifier: BSD-3-Clause
// regcache/log_config.cc - configures the logger from the tunables table
// (log.h, InitFromTunables). Its own unit so that neither log.cc nor
// tunables.cc includes the other's header in both directions: tunables.cc
// logs (log.h); the logger never reads tunables.
#include <string>

#include "regcache/log.h"
#include "regcache/tunables.h"

namespace regcache::log {

int InitFromTunables() {
  int idx = 0;
  int rc = 0;
  // A level set through the API wins; the variable is then not even checked.
  if (!LevelSetByApi())
    rc = tunables::GetEnum("LOG_LEVEL", &idx);  // choices are in level order
  std::string pattern;
  if (tunables::GetString("LOG_FILE", &pattern) != 0) pattern.clear();
  ApplyConfig(rc == 0 && !LevelSetByApi() ? &idx : nullptr, &pattern);
  return rc;
}

}  // namespace regcache::log

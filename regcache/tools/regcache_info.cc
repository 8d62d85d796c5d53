// SPDX-License-Identifier: BSD-3-Clause
// regcache-info: what the library sees. -c tunables (with help, origin and
// resolved values), -d devices/providers, -v / --version versions, -s / --safety
// whether caching is safe here, -h / --help.
// Uses only the public C API plus libibverbs / libfabric directly (and the
// spdlog/fmt headers for their version numbers). man/regcache-info.1. Units:
// info.h.
#include <fmt/core.h>  // FMT_VERSION
#include <getopt.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <spdlog/version.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "tools/info.h"

#ifdef REGCACHE_HAVE_LIBFABRIC
#include <rdma/fabric.h>
#endif

namespace regcache_info {

// Columns to wrap -c at: the terminal's, else $COLUMNS, else 80.
unsigned Columns() {
  winsize ws{};
  if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 &&
      ws.ws_col >= 40)
    return ws.ws_col;
  if (const char *c = std::getenv("COLUMNS")) {
    int n = std::atoi(c);
    if (n >= 40 && n <= 1000) return static_cast<unsigned>(n);
  }
  return 80;
}

}  // namespace regcache_info

namespace {

void Usage(FILE *f) {
  std::fprintf(
      f,
      "usage: regcache-info [-c] [-d] [-s|--safety] [-v] [--version] "
      "[-h|--help]\n"
      "  -c         every REGCACHE_* tunable: help, syntax, default, current "
      "value,\n"
      "             where it came from (environment, regcache_config_set, "
      "default)\n"
      "             and what auto resolves to here; unknown REGCACHE_* "
      "variables\n"
      "             are reported; exit 1 if a value is invalid\n"
      "  -d         RDMA devices (libibverbs) and libfabric providers, with "
      "the\n"
      "             capabilities the cache cares about (max MR size, ODP, "
      "mr_mode)\n"
      "  -s, --safety  which event source `auto` picks here and why, the "
      "facts\n"
      "             behind it (userfaultfd, other patchers, memlock), the "
      "resolved\n"
      "             configuration, and whether caching is safe: exit 1 when "
      "it is not\n"
      "             (blind), 2 when the source cannot be installed, 3 with\n"
      "             REGCACHE_MONITOR=none (safe only if the program reports "
      "unmaps)\n"
      "  -v         the library version\n"
      "  --version  library version, drivers, event sources, dependency "
      "versions\n"
      "  -h, --help this text\n"
      "See regcache-info(1) and regcache(7).\n");
}

// Installs the event source as the first cache would, so that -c shows what
// REGCACHE_MONITOR=auto resolves to on this machine.
void InstallEventSource() {
  static const regcache_notifier_ops_t kNoOps = {nullptr, nullptr, nullptr};
  regcache_notifier_t *n = nullptr;
  if (regcache_notifier_register(&kNoOps, nullptr, &n) == 0)
    regcache_notifier_unregister(n);
}

void PrintVersion() {
  unsigned a, b, c;
  regcache_version(&a, &b, &c);
  std::printf("regcache %u.%u.%u (headers %d.%d.%d)\n", a, b, c,
              REGCACHE_VERSION_MAJOR, REGCACHE_VERSION_MINOR,
              REGCACHE_VERSION_PATCH);
  std::printf("drivers: host, custom (libregcache)");
#ifdef REGCACHE_HAVE_VERBS
  std::printf(", verbs (libregcache-verbs)");
#endif
#ifdef REGCACHE_HAVE_LIBFABRIC
  std::printf(", fabric (libregcache-fabric)");
#endif
  std::printf("\n");
#if defined(__x86_64__)
  std::printf("event sources: patch, ucm, uffd, none (explicit)\n");
#else
  std::printf(
      "event sources: ucm, uffd, none (explicit); patch is x86_64 only\n");
#endif
  std::printf("built with: spdlog %d.%d.%d, fmt %d.%d.%d (both compiled in)",
              SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR, SPDLOG_VER_PATCH,
              FMT_VERSION / 10000, FMT_VERSION / 100 % 100, FMT_VERSION % 100);
#ifdef REGCACHE_HAVE_VERBS
  std::printf(", libibverbs %s", REGCACHE_IBVERBS_VERSION);
#endif
#ifdef REGCACHE_HAVE_LIBFABRIC
  std::printf(", libfabric %s (API %u.%u loaded)", REGCACHE_LIBFABRIC_VERSION,
              FI_MAJOR(fi_version()), FI_MINOR(fi_version()));
#endif
  std::printf("\n");
}

}  // namespace

int main(int argc, char **argv) {
  bool config = false, devices = false, version = false, long_version = false,
       safety = false;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"version", no_argument, nullptr, 'V'},
                                 {"safety", no_argument, nullptr, 's'},
                                 {nullptr, 0, nullptr, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "cdvhs", kLong, nullptr)) != -1) {
    switch (opt) {
      case 's':
        safety = true;
        break;
      case 'c':
        config = true;
        break;
      case 'd':
        devices = true;
        break;
      case 'v':
        version = true;
        break;
      case 'V':
        long_version = true;
        break;
      case 'h':
        Usage(stdout);
        return 0;
      default:
        Usage(stderr);
        return 2;
    }
  }
  if (optind < argc ||
      (!config && !devices && !version && !long_version && !safety)) {
    Usage(stderr);
    return 2;
  }
  int status = 0;
  if (long_version) {
    PrintVersion();
  } else if (version) {
    unsigned a, b, c;
    regcache_version(&a, &b, &c);
    std::printf("regcache %u.%u.%u\n", a, b, c);
  }
  if (config) {
    // Validate every value first: a bad environment gives a clear error and a
    // non-zero exit (and unknown REGCACHE_* variables a warning).
    int bad = regcache_config_check();
    if (bad == 0) InstallEventSource();
    int rc = regcache_config_print(
        stdout, REGCACHE_CONFIG_PRINT_HELP | REGCACHE_CONFIG_PRINT_ORIGIN |
                    REGCACHE_CONFIG_PRINT_RESOLVED |
                    REGCACHE_CONFIG_PRINT_WIDTH(regcache_info::Columns()));
    if (rc) status = 1;
    if (bad) {
      std::fprintf(stderr, "regcache-info: configuration rejected: %s\n",
                   regcache_strerror(bad));
      status = 1;
    }
  }
  if (devices) {
    regcache_info::ListVerbs();
    regcache_info::ListFabric();
  }
  if (safety) {
    int rc = regcache_info::SafetyReport();
    if (rc > status) status = rc;
  }
  return status;
}

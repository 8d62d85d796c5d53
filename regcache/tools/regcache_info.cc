// SPDX-License-Identifier: BSD-3-Clause
// regcache-info: what the library sees. -c tunables (with help, origin and
// resolved values), -d devices/providers, -v / --version versions, -s / --safety
// whether caching is safe here, -h / --help.
// Uses only the public C API plus libibverbs / libfabric directly (and the
// spdlog/fmt headers for their version numbers). man/regcache-info.1.
#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/core.h>
#include <getopt.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <spdlog/version.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#ifdef REGCACHE_HAVE_VERBS
#include <infiniband/verbs.h>
#include <regcache/verbs.h>
#endif
#ifdef REGCACHE_HAVE_LIBFABRIC
#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <regcache/fabric.h>
#endif

namespace {

void Usage(FILE *f) {
  std::fprintf(
      f,
      "usage: regcache-info [-c] [-d] [-s] [-v] [--version] [-h|--help]\n"
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
      "  -s, --safety  which event source `auto` picks here and why, and\n"
      "             whether caching is safe; exit status 1 when it is not "
      "(blind)\n"
      "  -v         the library version\n"
      "  --version  library version, drivers, event sources, dependency "
      "versions\n"
      "  -h, --help this text\n"
      "See regcache-info(1) and regcache(7).\n");
}

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

#ifdef REGCACHE_HAVE_VERBS
void OdpLine(const char *what, uint32_t caps) {
  std::printf("      odp %-4s %s%s%s%s%s\n", what, caps ? "" : "none",
              (caps & IBV_ODP_SUPPORT_SEND) ? "send " : "",
              (caps & IBV_ODP_SUPPORT_RECV) ? "recv " : "",
              (caps & IBV_ODP_SUPPORT_WRITE) ? "write " : "",
              (caps & IBV_ODP_SUPPORT_READ) ? "read " : "");
}
#endif

#ifdef REGCACHE_HAVE_VERBS
// What the verbs driver itself decides on this device (REGCACHE_ODP applied).
void DriverLine(ibv_context *ctx) {
  char mode[16] = "?";
  regcache_config_get("ODP", mode, sizeof(mode));
  ibv_pd *pd = ibv_alloc_pd(ctx);
  if (pd == nullptr) {
    std::printf("    regcache: ibv_alloc_pd failed: %s\n",
                std::strerror(errno));
    return;
  }
  regcache_driver_t *d = nullptr;
  int rc = regcache_driver_verbs_open(pd, &d);
  int odp = 0;
  if (rc == 0 && regcache_driver_verbs_odp(d, &odp) == 0) {
    std::printf(
        "    regcache: %s (REGCACHE_ODP=%s; ODP needs rc send recv write read "
        "atomic)\n",
        odp ? "on-demand paging, nothing pinned" : "pins registered memory",
        mode);
  } else {
    std::printf("    regcache: verbs driver open failed: %s\n",
                regcache_strerror(rc));
  }
  regcache_driver_close(d);
  ibv_dealloc_pd(pd);
}

const char *ForkState() {
  switch (ibv_is_fork_initialized()) {
    case IBV_FORK_UNNEEDED:
      return "kernel copies pinned pages at fork (safe)";
    case IBV_FORK_ENABLED:
      return "rdma-core fork-safe mode (MADV_DONTFORK per MR)";
    case IBV_FORK_DISABLED:
      break;
  }
  return "UNSAFE: old kernel and RDMAV_FORK_SAFE unset (do not fork with "
         "registrations)";
}
#endif

void ListVerbs() {
#ifdef REGCACHE_HAVE_VERBS
  int n = 0;
  errno = 0;
  ibv_device **list = ibv_get_device_list(&n);
  if (list == nullptr) {
    std::printf("verbs: no RDMA devices (ibv_get_device_list: %s)\n",
                std::strerror(errno));
    return;
  }
  std::printf("verbs: %d device(s); fork: %s\n", n, ForkState());
  for (int i = 0; i < n; ++i) {
    std::printf("  %s\n", ibv_get_device_name(list[i]));
    ibv_context *ctx = ibv_open_device(list[i]);
    if (!ctx) {
      std::printf("    ibv_open_device failed: %s\n", std::strerror(errno));
      continue;
    }
    ibv_device_attr_ex attr = {};
    if (ibv_query_device_ex(ctx, nullptr, &attr) == 0) {
      std::printf(
          "    max_mr_size 0x%llx max_mr %d page_size_cap 0x%llx\n",
          static_cast<unsigned long long>(attr.orig_attr.max_mr_size),
          attr.orig_attr.max_mr,
          static_cast<unsigned long long>(attr.orig_attr.page_size_cap));
      const auto &odp = attr.odp_caps;
      std::printf("    odp %s\n", (odp.general_caps & IBV_ODP_SUPPORT)
                                      ? "supported"
                                      : "not supported");
      if (odp.general_caps & IBV_ODP_SUPPORT) {
        OdpLine("rc", odp.per_transport_caps.rc_odp_caps);
        OdpLine("ud", odp.per_transport_caps.ud_odp_caps);
      }
    } else {
      std::printf("    ibv_query_device_ex failed: %s\n", std::strerror(errno));
    }
    DriverLine(ctx);
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
#else
  std::printf(
      "verbs: not built (libibverbs was not found at configure time)\n");
#endif
}

#ifdef REGCACHE_HAVE_LIBFABRIC
// How the fabric driver serves a domain with this mr_mode (docs/drivers.md).
const char *FabricSupport(int m) {
  if (m & (FI_MR_RAW | FI_MR_BASIC | FI_MR_SCALABLE))
    return "unsupported (raw/legacy keys)";
  if (m & FI_MR_ENDPOINT) {
    return (m & FI_MR_PROV_KEY) ? "ok with open2(ep), provider keys"
                                : "ok with open2(ep), requested keys";
  }
  return (m & FI_MR_PROV_KEY) ? "ok, provider keys" : "ok, requested keys";
}
#endif

void ListFabric() {
#ifdef REGCACHE_HAVE_LIBFABRIC
  fi_info *hints = fi_allocinfo();
  hints->mode = ~0ULL;
  hints->domain_attr->mode = ~0ULL;
  hints->domain_attr->mr_mode = ~(FI_MR_BASIC | FI_MR_SCALABLE);
  fi_info *info = nullptr;
  int rc = fi_getinfo(FI_VERSION(1, 17), nullptr, nullptr, 0, hints, &info);
  fi_freeinfo(hints);
  if (rc) {
    std::printf("libfabric: fi_getinfo: %s\n", fi_strerror(-rc));
    return;
  }
  std::printf("libfabric %u.%u providers (provider / domain / mr_mode):\n",
              FI_MAJOR(fi_version()), FI_MINOR(fi_version()));
  // One line per provider / domain / mr_mode (fi_getinfo lists each for every
  // endpoint type and address format).
  std::set<std::string> seen;
  for (fi_info *i = info; i; i = i->next) {
    const char *p = i->fabric_attr->prov_name, *d = i->domain_attr->name;
    int m = i->domain_attr->mr_mode;
    if (!seen.insert(std::string(p) + '/' + d + '/' + std::to_string(m)).second)
      continue;
    std::printf("  %-16s %-12s 0x%x%s%s%s%s%s%s%s key %zuB; regcache: %s\n", p,
                d, m, (m & FI_MR_LOCAL) ? " LOCAL" : "",
                (m & FI_MR_VIRT_ADDR) ? " VIRT_ADDR" : "",
                (m & FI_MR_ALLOCATED) ? " ALLOCATED" : "",
                (m & FI_MR_PROV_KEY) ? " PROV_KEY" : "",
                (m & FI_MR_ENDPOINT) ? " ENDPOINT" : "",
                (m & FI_MR_RAW) ? " RAW" : "", (m & FI_MR_HMEM) ? " HMEM" : "",
                i->domain_attr->mr_key_size, FabricSupport(m));
  }
  fi_freeinfo(info);
#else
  std::printf(
      "libfabric: not built (libfabric was not found at configure time)\n");
#endif
}

// ---------------------------------------------------------------- -s
// --safety: the operator's first question (issue 17 item 6): is caching safe
// in a process like this one? The answer is the library's own decision (the
// source is installed here, as the first cache would), with the facts it
// depends on probed independently.
std::vector<std::string> g_safety_log;

void SafetyLog(void *, int level, const char *msg) {
  if (level <= REGCACHE_LOG_INFO && std::strstr(msg, "notifier") != nullptr)
    g_safety_log.emplace_back(msg);
}

// "yes", or why not (errno text and the usual cause).
std::string ProbeUffd() {
  // Root: full userfaultfd; others: user-mode-only, as the library asks.
  int flags = O_CLOEXEC | O_NONBLOCK | (geteuid() == 0 ? 0 : 1);
  long fd = syscall(SYS_userfaultfd, flags);
  if (fd >= 0) {
    close(static_cast<int>(fd));
    return "allowed";
  }
  int e = errno;
  std::string why = std::string("blocked (") + std::strerror(e) + ")";
  if (e == EPERM) {
    why +=
        ": seccomp filter, or vm.unprivileged_userfaultfd=0 without "
        "CAP_SYS_PTRACE";
  } else if (e == ENOSYS) {
    why += ": kernel without CONFIG_USERFAULTFD";
  }
  return why;
}

// The first line of /proc/self/status starting with key, value only.
std::string StatusField(const char *key) {
  FILE *f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return "?";
  char line[256];
  std::string v = "?";
  size_t n = std::strlen(key);
  while (std::fgets(line, sizeof(line), f)) {
    if (std::strncmp(line, key, n) == 0 && line[n] == ':') {
      const char *p = line + n + 1;
      while (*p == ' ' || *p == '\t') ++p;
      v = p;
      while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
      break;
    }
  }
  std::fclose(f);
  return v;
}

// Who owns libc's munmap entry in this process: "libc (not patched)", or the
// object its jump leads to.
std::string MunmapEntryOwner() {
#if defined(__x86_64__)
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (libc == nullptr) return "?";
  const auto *p = static_cast<const unsigned char *>(dlsym(libc, "munmap"));
  dlclose(libc);
  if (p == nullptr) return "?";
  uintptr_t target = 0;
  if (p[0] == 0xE9) {
    int32_t rel;
    std::memcpy(&rel, p + 1, 4);
    target = reinterpret_cast<uintptr_t>(p) + 5 + rel;
  } else if ((p[0] == 0x48 || p[0] == 0x49) && (p[1] == 0xB8 || p[1] == 0xBB)) {
    std::memcpy(&target, p + 2, 8);
  } else if (p[0] == 0xCC || p[0] == 0xEB || (p[0] == 0xFF && p[1] == 0x25)) {
    return "patched (int3 or indirect jump)";
  } else {
    return "libc (not patched)";
  }
  Dl_info di;
  if (dladdr(reinterpret_cast<void *>(target), &di) != 0 &&
      di.dli_fname != nullptr)
    return std::string("patched, jumps into ") + di.dli_fname;
  return "patched (jump to anonymous memory: a trampoline)";
#else
  return "n/a (the patch source is x86_64 only)";
#endif
}

// 0: caching safe; 1: blind (caching off); 2: the configured source cannot
// be installed.
int SafetyReport() {
  char monitor[32] = "?";
  regcache_config_get("MONITOR", monitor, sizeof(monitor));
  std::printf("regcache event sources (REGCACHE_MONITOR=%s)\n", monitor);
#if defined(__x86_64__)
  std::printf("  patch   x86_64: libc's munmap entry before regcache: %s\n",
              MunmapEntryOwner().c_str());
#else
  std::printf("  patch   not available: x86_64 only\n");
#endif
  void *ucm = dlopen("libucm.so.0", RTLD_NOW | RTLD_NOLOAD);
  std::printf("  ucm     UCX libucm %s\n",
              ucm ? "loaded in this process"
                  : "not loaded here (a process that loads UCX gets source "
                    "ucm: its events are imported)");
  if (ucm) dlclose(ucm);
  std::printf("  uffd    userfaultfd %s; vm.unprivileged_userfaultfd=",
              ProbeUffd().c_str());
  if (FILE *f = std::fopen("/proc/sys/vm/unprivileged_userfaultfd", "r")) {
    int c = std::fgetc(f);
    std::printf("%c\n", c == EOF ? '?' : c);
    std::fclose(f);
  } else {
    std::printf("?\n");
  }
  std::printf("  process uid %u, seccomp %s (0 none, 1 strict, 2 filter)\n",
              static_cast<unsigned>(geteuid()), StatusField("Seccomp").c_str());
  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
    auto fmt = [](rlim_t v) {
      return v == RLIM_INFINITY ? std::string("unlimited")
                                : std::to_string(v >> 10) + " KiB";
    };
    std::printf(
        "  memlock RLIMIT_MEMLOCK soft %s, hard %s; CapEff %s (bit 14: "
        "CAP_IPC_LOCK)\n",
        fmt(rl.rlim_cur).c_str(), fmt(rl.rlim_max).c_str(),
        StatusField("CapEff").c_str());
  }
  // The library's decision, with its reasons (its info lines).
  regcache_set_log_handler(SafetyLog, nullptr);
  regcache_set_log_level(REGCACHE_LOG_INFO);
  int safe = regcache_notifier_caching_safe();
  regcache_set_log_handler(nullptr, nullptr);
  std::printf("auto picks: %s\n", regcache_notifier_source());
  for (const std::string &l : g_safety_log)
    std::printf("  why: %s\n", l.c_str());
  if (safe < 0) {
    std::printf(
        "caching: UNKNOWN: the configured source cannot be "
        "installed: %s\n",
        regcache_strerror(safe));
    return 2;
  }
  if (safe == 1) {
    std::printf("caching: safe (%s)\n",
                std::strcmp(regcache_notifier_source(), "none") == 0
                    ? "the host reports unmaps itself: REGCACHE_MONITOR=none"
                    : "the source sees every unmap before the memory changes");
    return 0;
  }
  std::printf(
      "caching: OFF (blind: %s)\n"
      "  every get registers and every put deregisters. To cache: "
      "allow userfaultfd\n  (seccomp profile, sysctl "
      "vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE), load\n"
      "  regcache before the library that patches libc (UCX's libucm "
      "is imported\n  either way), or report unmaps from the host "
      "(REGCACHE_MONITOR=none +\n  regcache_notify_unmap_start/end)\n",
      regcache_notifier_blind_reason());
  return 1;
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
                    REGCACHE_CONFIG_PRINT_WIDTH(Columns()));
    if (rc) status = 1;
    if (bad) {
      std::fprintf(stderr, "regcache-info: configuration rejected: %s\n",
                   regcache_strerror(bad));
      status = 1;
    }
  }
  if (devices) {
    ListVerbs();
    ListFabric();
  }
  if (safety) {
    int rc = SafetyReport();
    if (rc > status) status = rc;
  }
  return status;
}

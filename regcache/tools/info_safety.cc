// SPDX-License-Identifier: BSD-3-Clause
// regcache-info -s / --safety: the operator's first question (issue 17 item
// 6): is caching safe in a process like this one? The answer is the library's
// own decision (the source is installed here, as the first cache would), with
// the facts it depends on probed independently, and the resolved defaults.
#include <dlfcn.h>
#include <fcntl.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tools/info.h"

namespace regcache_info {
namespace {

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

// The resolved configuration: each tunable with its origin and what auto
// stands for here (REGCACHE_MAX_BYTES from RLIMIT_MEMLOCK or RAM, the source).
void PrintResolved() {
  std::printf("resolved configuration (regcache-info -c for the help text):\n");
  regcache_config_print(stdout, REGCACHE_CONFIG_PRINT_ORIGIN |
                                    REGCACHE_CONFIG_PRINT_RESOLVED |
                                    REGCACHE_CONFIG_PRINT_WIDTH(Columns()));
}

}  // namespace

// 0: caching safe; 1: blind (caching off); 2: the configured source cannot
// be installed or the configuration is invalid; 3: REGCACHE_MONITOR=none, safe only if the program reports
// every unmap.
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
  // A bad REGCACHE_* value: the library's own error names the variable and the
  // accepted values (on stderr, before the capture below would swallow it).
  if (int bad = regcache_config_check()) {
    std::printf(
        "caching: UNKNOWN: the configuration is rejected (%s; the message on "
        "stderr names the variable)\n",
        regcache_strerror(bad));
    return 2;
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
  int status = 1;
  if (safe == 1 && std::strcmp(regcache_notifier_source(), "none") == 0) {
    // REGCACHE_MONITOR=none (regcache-info calls neither regcache_config_set
    // nor regcache_notifier_set_external, so it came from the environment):
    // the host declares that it reports every unmap. Whether the program this
    // environment is meant for does cannot be seen from here, and one that
    // does not would keep registrations of unmapped memory: not safe to
    // assume (SECURITY.md).
    std::printf(
        "caching: ON WITHOUT A MONITOR (REGCACHE_MONITOR=none): safe only if "
        "the program\n  reports every unmap itself "
        "(regcache_notify_unmap_start/end or\n  regcache_notify_unmapped); "
        "regcache-info cannot check that. Unset\n  REGCACHE_MONITOR to let "
        "auto choose a source that sees every unmap.\n");
    status = 3;
  } else if (safe == 1) {
    std::printf(
        "caching: safe (the source sees every unmap before the memory "
        "changes)\n");
    status = 0;
  } else {
    std::printf(
        "caching: OFF (blind: %s)\n"
        "  every get registers and every put deregisters. To cache: "
        "allow userfaultfd\n  (seccomp profile, sysctl "
        "vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE), load\n"
        "  regcache before the library that patches libc (UCX's libucm "
        "is imported\n  either way), or report unmaps from the host "
        "(REGCACHE_MONITOR=none +\n  regcache_notify_unmap_start/end)\n",
        regcache_notifier_blind_reason());
  }
  PrintResolved();
  return status;
}

}  // namespace regcache_info

// SPDX-License-Identifier: BSD-3-Clause
// Lifecycle and coexistence scenarios, one per process (argv[1]); ctest runs
// each under a timeout and checks the exit status and output (CMakeLists.txt).
// Uses only the public C API of the shared library.
//   exit-held        exit() with regions held and two subscribers registered:
//                    each release runs exactly once ("release N" lines)
//   exit-in-range    exit() while another thread is stuck inside a callback
//   exit-in-callback exit(3) from inside an invalidate_range_start callback
//   fork             fork with a live cache: the child destroys the inherited
//                    cache and works with its own; the parent is unaffected
//   exec             exec with a live cache and a held region
//   ucm-first        UCX's libucm installs its hooks, then regcache (auto)
//   ucm-after        regcache installs, then libucm
#include <dlfcn.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

#define CHECK(c)                                                            \
  do {                                                                      \
    if (!(c)) {                                                             \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
                   #c);                                                     \
      std::_Exit(99);                                                       \
    }                                                                       \
  } while (0)

void Say(const char *s) {  // async-signal-safe, unbuffered: survives _exit
  ssize_t n = write(1, s, std::strlen(s));
  (void)n;
}

char *Map(size_t len) {
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(p != MAP_FAILED);
  std::memset(p, 1, len);
  return static_cast<char *>(p);
}

struct Env {
  regcache_driver_t *drv = nullptr;
  regcache_t *c = nullptr;
  char *buf = nullptr;
  Env() {
    CHECK(regcache_driver_host_open(&drv) == 0);
    CHECK(regcache_create(drv, nullptr, &c) == 0);
    buf = Map(16 * kPage);
  }
  regcache_region_t *Get(size_t page) {
    regcache_region_t *r = nullptr;
    CHECK(regcache_get(c, buf + page * kPage, kPage, 0, &r) == 0);
    return r;
  }
  uint64_t Invalidations() {
    regcache_stats_t s;
    CHECK(regcache_get_stats(c, &s) == 0);
    return s.invalidations;
  }
};

void Release1(void *) { Say("release 1\n"); }
void Release2(void *) { Say("release 2\n"); }
const regcache_notifier_ops_t kOps1 = {nullptr, nullptr, Release1};
const regcache_notifier_ops_t kOps2 = {nullptr, nullptr, Release2};

int ExitHeld() {
  Env e;
  for (size_t i = 0; i < 3; ++i) e.Get(i * 2);  // held, never put
  regcache_notifier_t *n1, *n2;
  CHECK(regcache_notifier_register(&kOps1, nullptr, &n1) == 0);
  CHECK(regcache_notifier_register_range(&kOps2, nullptr, e.buf, kPage, &n2) ==
        0);
  Say("exiting\n");
  std::exit(0);
}

std::atomic<int> g_inside{0};
void Stuck(void *, const void *, size_t) {
  g_inside = 1;
  for (;;) pause();
}
int ExitInRange() {
  Env e;
  static const regcache_notifier_ops_t ops = {Stuck, nullptr, Release1};
  regcache_notifier_t *n;
  CHECK(regcache_notifier_register(&ops, nullptr, &n) == 0);
  char *p = e.buf;
  std::thread([p] { regcache_notify_unmapped(p, kPage); }).detach();
  while (!g_inside) std::this_thread::yield();
  Say("exiting with a thread inside a range\n");
  std::exit(0);
}

void ExitFromCallback(void *, const void *, size_t) {
  Say("exit from callback\n");
  std::exit(3);
}
int ExitInCallback() {
  Env e;
  e.Get(0);
  static const regcache_notifier_ops_t ops = {ExitFromCallback, nullptr,
                                              Release1};
  regcache_notifier_t *n, *n2;
  CHECK(regcache_notifier_register(&ops, nullptr, &n) == 0);
  CHECK(regcache_notifier_register(&kOps2, nullptr, &n2) == 0);
  regcache_notify_unmapped(e.buf, kPage);
  Say("not reached\n");
  return 1;
}

int Fork() {
  Env e;
  regcache_put(e.c, e.Get(0));
  regcache_region_t *held = e.Get(1);
  std::fflush(nullptr);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    // Child: the inherited cache is the parent's memory image. Destroying it is
    // harmless (the host driver's pins were not inherited: mlock is not
    // inherited across fork). Then a cache of its own works as usual.
    regcache_destroy(e.c);
    regcache_driver_close(e.drv);
    Env mine;
    regcache_region_t *r = mine.Get(0);
    regcache_put(mine.c, r);
    const uint64_t inv = mine.Invalidations();
    CHECK(regcache_notify_unmapped(mine.buf, kPage) == 0);
    CHECK(mine.Invalidations() == inv + 1);
    regcache_destroy(mine.c);
    regcache_driver_close(mine.drv);
    Say("child ok\n");
    std::_Exit(0);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  // The parent's cache is unaffected: hit on the held region, hit on region 0.
  regcache_region_t *r = e.Get(1);
  CHECK(r == held);
  regcache_put(e.c, r);
  regcache_put(e.c, held);
  regcache_destroy(e.c);
  regcache_driver_close(e.drv);
  Say("parent ok\n");
  return 0;
}

int Exec() {
  Env e;
  e.Get(0);
  std::fflush(nullptr);
  execl("/bin/echo", "echo", "exec ok", static_cast<char *>(nullptr));
  return 1;
}

// ---- UCX libucm ----
std::atomic<int> g_ucm_events{0};
void UcmCallback(int, void *, void *) { g_ucm_events++; }
using UcmSetHandler = int (*)(int, int, void (*)(int, void *, void *), void *);
constexpr int kUcmVmUnmapped = 1 << 17;

bool InstallUcm() {
  // libucm needs libucs's symbols (ucs_load_modules) from the global scope.
  dlopen("libucs.so.0", RTLD_NOW | RTLD_GLOBAL);
  void *h = dlopen("libucm.so.0", RTLD_NOW | RTLD_GLOBAL);
  if (h == nullptr) {
    std::printf("SKIP: libucm.so.0 not loadable: %s\n", dlerror());
    return false;
  }
  auto set = reinterpret_cast<UcmSetHandler>(dlsym(h, "ucm_set_event_handler"));
  CHECK(set != nullptr);
  int st = set(kUcmVmUnmapped, -1, UcmCallback, nullptr);
  std::printf("ucm_set_event_handler: %d\n", st);
  return st == 0;
}

// Caches memory, munmaps it without telling anybody: the cache must see it,
// unless it says it has no automatic source.
int ExpectNotBlind(Env *e, const char *order) {
  char *p = Map(4 * kPage);
  regcache_region_t *r = nullptr;
  CHECK(regcache_get(e->c, p, 4 * kPage, 0, &r) == 0);
  regcache_put(e->c, r);
  const uint64_t inv = e->Invalidations();
  const int ucm0 = g_ucm_events;
  CHECK(munmap(p, 4 * kPage) == 0);
  // What must hold: the next get at that address, on new memory, does not
  // return the stale registration (the notifier may only learn of another
  // patcher's overwrite at that lookup).
  char *q = static_cast<char *>(
      mmap(p, 4 * kPage, PROT_READ | PROT_WRITE,
           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
  CHECK(q == p);
  regcache_region_t *r2 = nullptr;
  CHECK(regcache_get(e->c, q, 4 * kPage, 0, &r2) == 0);
  regcache_put(e->c, r2);
  const char *src = regcache_notifier_source();
  const bool seen = e->Invalidations() > inv;
  std::printf("%s: source=%s regcache-saw-unmap=%d ucm-events=%d\n", order, src,
              seen, g_ucm_events - ucm0);
  if (std::strcmp(src, "none") == 0) {
    std::printf("COEXIST-OK (no automatic source, reported)\n");
    return 0;
  }
  if (!seen) {
    std::printf("BLIND: source %s is active but missed the unmap\n", src);
    return 1;
  }
  std::printf("COEXIST-OK\n");
  return 0;
}

int UcmFirst() {
  if (!InstallUcm()) return 0;
  CHECK(regcache_config_set("MONITOR", "auto") == 0);
  Env e;
  return ExpectNotBlind(&e, "ucm-first");
}

int UcmAfter() {
  CHECK(regcache_config_set("MONITOR", "auto") == 0);
  Env e;
  std::printf("regcache source before ucm: %s\n", regcache_notifier_source());
  if (!InstallUcm()) return 0;
  return ExpectNotBlind(&e, "ucm-after");
}

}  // namespace

int main(int argc, char **argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  const std::string s = argc > 1 ? argv[1] : "";
  if (s == "exit-held") return ExitHeld();
  if (s == "exit-in-range") return ExitInRange();
  if (s == "exit-in-callback") return ExitInCallback();
  if (s == "fork") return Fork();
  if (s == "exec") return Exec();
  if (s == "ucm-first") return UcmFirst();
  if (s == "ucm-after") return UcmAfter();
  std::fprintf(stderr, "unknown scenario '%s'\n", s.c_str());
  return 2;
}

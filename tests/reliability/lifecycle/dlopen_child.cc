// SPDX-License-Identifier: BSD-3-Clause
// dlopen / dlclose of libregcache.so (argv[1]) in a program that does not link
// it: with the patch source, libc's munmap entry is patched while a cache
// exists and restored after dlclose (its first 16 bytes compared); munmap and
// free work afterwards. Prints "DLOPEN-OK" on success.
//
// `dlopen_child LIB load [cycles]` (issue 13 item 2): while 2 threads mmap,
// touch and munmap (and malloc/free large blocks) without pause, the main
// thread dlopens the library, creates a cache with one registration, destroys
// it, closes the driver and dlcloses, `cycles` times (default 200). The
// library is linked -z nodelete, so its hooks stay; before that, the threads
// crashed in the mmap hook after dlclose unmapped it. Prints
// "DLCLOSE-LOAD-OK" on success.
#include <dlfcn.h>
#include <pthread.h>
#include <regcache/regcache.h>  // types only: the library is dlopened
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define CHECK(c)                                                       \
  do {                                                                 \
    if (!(c)) {                                                        \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s (%s)\n", __FILE__, \
                   __LINE__, #c, dlerror());                           \
      return 99;                                                       \
    }                                                                  \
  } while (0)

namespace {

std::atomic<bool> g_stop{false};
std::atomic<long> g_ops{0};

// Thread 0 maps with libc's mmap (hooked) and unmaps with the raw syscall:
// the mmap hook only passes through (no range, no per-thread state of the
// library that could keep it loaded). Thread 1 also munmaps and frees
// through libc.
void *Churn(void *arg) {
  const bool full = arg != nullptr;
  while (!g_stop.load(std::memory_order_relaxed)) {
    void *p = mmap(nullptr, 64 << 10, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    static_cast<char *>(p)[0] = 1;
    if (!full) {
      syscall(SYS_munmap, p, 64 << 10);
    } else {
      if (munmap(p, 64 << 10) != 0) std::abort();
      void *q = std::malloc(1 << 20);  // above the mmap threshold
      if (q == nullptr) std::abort();
      static_cast<char *>(q)[4096] = 1;
      std::free(q);
    }
    g_ops.fetch_add(1, std::memory_order_relaxed);
  }
  return nullptr;
}

int LoadMode(const char *path, int cycles) {
  pthread_t th[2];
  static int one = 1;
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
  // TSan sees the churn threads' mmap of a range but not ld.so's later mapping
  // of the library there, so the library's data would keep stale shadow (a
  // false race on its globals): load it before the threads start (-z
  // nodelete: it never moves afterwards).
  CHECK(dlopen(path, RTLD_NOW | RTLD_LOCAL) != nullptr);
#endif
#endif
  CHECK(pthread_create(&th[0], nullptr, Churn, nullptr) == 0);
  CHECK(pthread_create(&th[1], nullptr, Churn, &one) == 0);
  int patched = 0, unloaded = 0;
  for (int i = 0; i < cycles; ++i) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != nullptr);
    auto host_open = reinterpret_cast<decltype(&regcache_driver_host_open)>(
        dlsym(lib, "regcache_driver_host_open"));
    auto create = reinterpret_cast<decltype(&regcache_create)>(
        dlsym(lib, "regcache_create"));
    auto destroy = reinterpret_cast<decltype(&regcache_destroy)>(
        dlsym(lib, "regcache_destroy"));
    auto close = reinterpret_cast<decltype(&regcache_driver_close)>(
        dlsym(lib, "regcache_driver_close"));
    auto source = reinterpret_cast<decltype(&regcache_notifier_source)>(
        dlsym(lib, "regcache_notifier_source"));
    CHECK(host_open && create && destroy && close && source);
    regcache_driver_t *drv = nullptr;
    regcache_t *cache = nullptr;
    CHECK(host_open(&drv) == 0);
    CHECK(create(drv, nullptr, &cache) == 0);
    patched += std::strcmp(source(), "patch") == 0;
    destroy(cache);
    close(drv);
    CHECK(dlclose(lib) == 0);
    void *still = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (still != nullptr) {
      dlclose(still);
    } else {
      ++unloaded;
    }
  }
  // Keep churning a moment after the last dlclose.
  struct timespec ts = {0, 50 * 1000 * 1000};
  nanosleep(&ts, nullptr);
  g_stop = true;
  for (pthread_t &t : th) pthread_join(t, nullptr);
  std::printf(
      "DLCLOSE-LOAD-OK cycles=%d patched=%d unloaded=%d churn ops=%ld\n",
      cycles, patched, unloaded, g_ops.load());
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (argc >= 3 && std::strcmp(argv[2], "load") == 0)
    return LoadMode(argv[1], argc >= 4 ? std::atoi(argv[3]) : 200);
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  CHECK(libc != nullptr);
  // libc's own munmap (a sanitizer's interceptor would be found by
  // RTLD_DEFAULT).
  auto *entry = static_cast<const unsigned char *>(dlsym(libc, "munmap"));
  CHECK(entry != nullptr);
  unsigned char before[16], during[16], after[16];
  std::memcpy(before, entry, 16);

  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  CHECK(lib != nullptr);
  using ConfigSet = decltype(&regcache_config_set);
  using HostOpen = decltype(&regcache_driver_host_open);
  using Create = decltype(&regcache_create);
  using Destroy = decltype(&regcache_destroy);
  using Close = decltype(&regcache_driver_close);
  using Source = decltype(&regcache_notifier_source);
  auto config_set =
      reinterpret_cast<ConfigSet>(dlsym(lib, "regcache_config_set"));
  auto host_open =
      reinterpret_cast<HostOpen>(dlsym(lib, "regcache_driver_host_open"));
  auto create = reinterpret_cast<Create>(dlsym(lib, "regcache_create"));
  auto destroy = reinterpret_cast<Destroy>(dlsym(lib, "regcache_destroy"));
  auto close = reinterpret_cast<Close>(dlsym(lib, "regcache_driver_close"));
  auto source =
      reinterpret_cast<Source>(dlsym(lib, "regcache_notifier_source"));
  CHECK(config_set && host_open && create && destroy && close && source);
  CHECK(config_set("MONITOR", "auto") == 0);
  regcache_driver_t *drv = nullptr;
  regcache_t *cache = nullptr;
  CHECK(host_open(&drv) == 0);
  CHECK(create(drv, nullptr, &cache) == 0);
  const bool patched = std::strcmp(source(), "patch") == 0;
  std::memcpy(during, entry, 16);
  std::printf("source=%s munmap entry changed while loaded: %d\n", source(),
              std::memcmp(before, during, 16) != 0);
  if (patched) CHECK(std::memcmp(before, during, 16) != 0);
  destroy(cache);
  close(drv);
  CHECK(dlclose(lib) == 0);
  void *still = dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD);
  std::memcpy(after, entry, 16);
  std::printf("unloaded: %d, munmap entry restored: %d\n", still == nullptr,
              std::memcmp(before, after, 16) == 0);
  if (still == nullptr) {
    // The library is gone: its hook code is gone too, so libc must be as it
    // was.
    CHECK(std::memcmp(before, after, 16) == 0);
  } else {
    dlclose(still);
  }
  // No crash after: munmap, mmap, malloc/free of large blocks.
  for (int i = 0; i < 100; ++i) {
    void *p = mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    std::memset(p, 1, 1 << 20);
    CHECK(munmap(p, 1 << 20) == 0);
    void *q = std::malloc(4 << 20);
    CHECK(q != nullptr);
    std::memset(q, 2, 4 << 20);
    std::free(q);
  }
  std::printf("DLOPEN-OK\n");
  return 0;
}

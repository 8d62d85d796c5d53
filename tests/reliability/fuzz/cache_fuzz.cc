// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target (clang only): random sequences of get / put / flush /
// invalidate (regcache_notify_unmapped) / munmap (notify + a fresh mapping over
// the range) / injected driver failures, checked at every step against a small
// reference model of which ranges are validly cached:
//   - a get returns a region covering the request with at least the access
//     asked for, whose registration is live in the driver;
//   - no get returns a registration made before the latest invalidation of any
//     page it covers (the model's per-page invalidation epoch);
//   - a failed get returns an error the driver injected during that get;
//   - stats: regions == live registrations == registrations - deregistrations;
//   - after putting everything and flushing, nothing is registered; destroy
//     deregisters the rest.
// The driver is the public custom driver (regcache_driver_custom_open).
// docs/reliability.md says how to run it longer.
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

namespace {

constexpr size_t kPages = 32;
size_t g_page;
char *g_arena;

struct Rec {
  uintptr_t start;
  size_t len;
  unsigned access;
  uint64_t epoch;  // registration time
};

struct Model {
  uint64_t epoch = 0;
  uint64_t inval[kPages] = {};  // epoch of each page's latest invalidation
  std::map<void *, Rec> live;
  int fail_errno = 0;
  int fail_count = 0;
  bool injected_now = false;
  int injected_errno = 0;
};
Model *g_m;

[[noreturn]] void Fail(const char *what) {
  std::fprintf(stderr, "cache_fuzz: model mismatch: %s\n", what);
  std::abort();
}
#define CHECK(c)        \
  do {                  \
    if (!(c)) Fail(#c); \
  } while (0)

int Reg(void *, void *addr, size_t len, unsigned access, void **handle_p,
        uint32_t *, uint64_t *, void **) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  const auto lo = reinterpret_cast<uintptr_t>(g_arena);
  // Every plan stays inside memory that was asked for or cached.
  CHECK(a >= lo && a + len <= lo + kPages * g_page);
  if (g_m->fail_count > 0) {
    --g_m->fail_count;
    g_m->injected_now = true;
    g_m->injected_errno = g_m->fail_errno;
    return g_m->fail_errno;
  }
  auto *h = new char;  // LSan reports it if the cache never deregisters
  g_m->live[h] = Rec{a, len, access, ++g_m->epoch};
  *handle_p = h;
  return 0;
}

int Dereg(void *, void *handle) {
  auto it = g_m->live.find(handle);
  CHECK(it != g_m->live.end());  // no double / unknown deregistration
  g_m->live.erase(it);
  delete static_cast<char *>(handle);
  return 0;
}

void Invalidate(size_t page, size_t n) {
  ++g_m->epoch;
  for (size_t i = page; i < page + n && i < kPages; ++i)
    g_m->inval[i] = g_m->epoch;
}

void CheckStats(regcache_t *c) {
  regcache_stats_t s;
  CHECK(regcache_get_stats(c, &s) == 0);
  CHECK(s.regions == g_m->live.size());
  CHECK(s.registrations - s.deregistrations == g_m->live.size());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  g_page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  g_arena =
      static_cast<char *>(mmap(nullptr, kPages * g_page, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (g_arena == MAP_FAILED) std::abort();
  regcache_config_set("MONITOR", "none");  // events come from this harness
  regcache_set_log_level(REGCACHE_LOG_OFF);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  Model model;
  g_m = &model;
  static const regcache_driver_ops_t ops = {sizeof(regcache_driver_ops_t), Reg,
                                            Dereg};
  regcache_driver_t *drv = nullptr;
  CHECK(regcache_driver_custom_open(&ops, nullptr, &drv) == 0);
  regcache_params_t p{};
  p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MERGE_MAX_BYTES |
                 REGCACHE_PARAM_FLAGS;
  p.max_regions = data[0] & 7;  // 0 (no caching) .. 7
  p.merge_max_bytes = (data[0] & 8) ? 0 : 8 * g_page;
  p.flags = (data[0] & 16) ? REGCACHE_FLAG_NO_MERGE : 0;
  regcache_t *c = nullptr;
  CHECK(regcache_create(drv, &p, &c) == 0);
  std::vector<regcache_region_t *> held;
  static const int kErr[] = {-ENOMEM, -EAGAIN, -EFAULT};

  for (size_t i = 1; i + 4 <= size; i += 4) {
    const uint8_t op = data[i] % 8, a = data[i + 1], b = data[i + 2],
                  x = data[i + 3];
    switch (op) {
      case 0:
      case 1: {  // get
        const size_t page = a % kPages;
        const size_t off = page * g_page + (x % 4) * (g_page / 4);
        const size_t max = kPages * g_page - off;
        size_t len = 1 + (static_cast<size_t>(b) * g_page / 64);
        if (len > max) len = max;
        const unsigned access = (x >> 2) & REGCACHE_ACCESS_ALL;
        const int injected_before = model.fail_count;
        model.injected_now = false;
        regcache_region_t *r = nullptr;
        const int rc = regcache_get(c, g_arena + off, len, access, &r);
        if (rc != 0) {
          CHECK(r == nullptr);
          CHECK(injected_before > 0 && model.injected_now);
          CHECK(rc == model.fail_errno);
          break;
        }
        const auto ra = reinterpret_cast<uintptr_t>(regcache_region_addr(r));
        const size_t rl = regcache_region_length(r);
        const auto want = reinterpret_cast<uintptr_t>(g_arena + off);
        CHECK(ra <= want && want + len <= ra + rl);
        CHECK((regcache_region_access(r) & access) == access);
        auto it = model.live.find(regcache_region_handle(r));
        CHECK(it != model.live.end());
        CHECK(it->second.start == ra && it->second.len == rl);
        const size_t first =
            (ra - reinterpret_cast<uintptr_t>(g_arena)) / g_page;
        for (size_t pg = first; pg < first + rl / g_page; ++pg)
          CHECK(it->second.epoch > model.inval[pg]);  // no stale hit
        if (held.size() < 16 && (x & 0x40))
          held.push_back(r);
        else
          regcache_put(c, r);
        break;
      }
      case 2:  // put one held region
        if (!held.empty()) {
          const size_t k = a % held.size();
          regcache_put(c, held[k]);
          held.erase(held.begin() + static_cast<long>(k));
        }
        break;
      case 3:
        CHECK(regcache_flush(c) == 0);
        break;
      case 4:
      case 5: {  // invalidate [page, page+n): notify only, or notify + remap
        const size_t page = a % kPages;
        const size_t n = 1 + b % 8 > kPages - page ? kPages - page : 1 + b % 8;
        Invalidate(page, n);
        CHECK(regcache_notify_unmapped(g_arena + page * g_page, n * g_page) ==
              0);
        if (op == 5) {
          // The munmap: a fresh mapping replaces the pages (no hole that
          // another thread's mmap could take).
          void *q =
              mmap(g_arena + page * g_page, n * g_page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
          CHECK(q == g_arena + page * g_page);
        }
        break;
      }
      case 6:  // the next registration(s) fail
        model.fail_errno = kErr[a % 3];
        model.fail_count = 1 + b % 2;
        break;
      default:  // put everything
        for (regcache_region_t *r : held) regcache_put(c, r);
        held.clear();
        break;
    }
    CheckStats(c);
  }
  for (regcache_region_t *r : held) regcache_put(c, r);
  model.fail_count = 0;
  CHECK(regcache_flush(c) == 0);
  CHECK(model.live.empty());  // flush deregisters every unused region
  CheckStats(c);
  regcache_destroy(c);
  regcache_driver_close(drv);
  CHECK(model.live.empty());
  g_m = nullptr;
  return 0;
}

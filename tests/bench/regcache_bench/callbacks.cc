// SPDX-License-Identifier: BSD-3-Clause
// The registration callbacks every contender uses, and the timer.
//
// pin (default): mlock/munlock of the range plus a deterministic cost (busy
//   wait of base_ns + page_ns per 4 KiB page; dereg_ns + dereg_page_ns per
//   page per deregistration; defaults: regcache/cost_model.h, the rxe guest's
//   fit), so that a miss costs what ibv_reg_mr costs there and the same for
//   every contender. Every callback also adds the modeled cost of its call and
//   the measured time of the driver's own work (busy wait excluded) to
//   counters. Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK the pages
//   are touched instead of locked.
// verbs: ibv_reg_mr/ibv_dereg_mr on the first RDMA device (inside the rxe
//   guest).
// none: no-op (for hit-path measurements).
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif
#ifdef REGCACHE_BENCH_HAVE_VERBS
#include <infiniband/verbs.h>
#endif

#include <regcache/regcache.h>

#include "tests/bench/regcache_bench/bench.h"

namespace rcbench {

// ------------------------------------------------------------------ timer
uint64_t Ticks() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
#endif
}

namespace {
double CalibrateNsPerTick() {
#if defined(__x86_64__)
  using clk = std::chrono::steady_clock;
  auto t0 = clk::now();
  uint64_t c0 = Ticks();
  while (clk::now() - t0 < std::chrono::milliseconds(20)) {
  }
  auto t1 = clk::now();
  uint64_t c1 = Ticks();
  double ns = double(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
  return ns / double(c1 - c0);
#else
  return 1.0;
#endif
}
double NsPerTick() {
  static const double v = CalibrateNsPerTick();
  return v;
}
}  // namespace

double TicksToNs(double ticks) { return ticks * NsPerTick(); }

double TimerOverheadTicks() {
  static const double v = [] {
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 10000; i++) {
      uint64_t a = Ticks();
      uint64_t b = Ticks();
      best = std::min(best, b - a);
    }
    return double(best);
  }();
  return v;
}

namespace {

void Spin(uint64_t ns) {
  if (!ns) return;
  uint64_t end = Ticks() + uint64_t(double(ns) / NsPerTick());
  while (Ticks() < end) {
  }
}

enum class Mode { kPin, kTouch, kVerbs, kNone };
Mode g_mode = Mode::kPin;
RegConfig g_cfg;
std::atomic<uint64_t> g_regs{0}, g_deregs{0}, g_failures{0}, g_pinned{0},
    g_peak{0};
std::atomic<uint64_t> g_model_ns{0}, g_real_ticks{0}, g_pages{0};

// One registration or deregistration of len bytes: its modeled cost, the
// driver's measured time since t0, and its pages (the host-cost replay prices
// calls and pages with a line fitted to the measured times: report.cc).
void AddTimes(double model_us, uint64_t t0, size_t len) {
  g_model_ns.fetch_add(uint64_t(model_us * 1000), std::memory_order_relaxed);
  g_real_ticks.fetch_add(Ticks() - t0, std::memory_order_relaxed);
  g_pages.fetch_add(regcache::cost::Pages(len), std::memory_order_relaxed);
}
thread_local uint64_t tl_regs = 0;

// Page frames recorded at registration, in memory of their own (below).
struct Frames {
  Frames *next;    // free list
  int cls;         // size class: 2^cls bytes
  uintptr_t base;  // page-aligned start
  size_t npages;
  uint64_t pfn[];  // 0: page not present
};

// 24 bytes: the same glibc chunk as the 16-byte handle before frames were
// recorded, so that the workloads' heap (churn: placement, trims) is unchanged.
struct Handle {
  void *addr;
  size_t len;
  Frames *frames;  // NULL: not checked
};

// Stale-hit detection: the page frames (PFNs, /proc/self/pagemap) of every
// registration are recorded when it is made and compared with the current ones
// when a cache hands it out again. PFNs read as 0 without CAP_SYS_ADMIN: then
// nothing is checked.
int g_pagemap = -1;
bool g_frames = false;
std::mutex g_arena_mu;
char *g_arena = nullptr, *g_arena_end = nullptr, *g_arena_next = nullptr;
Frames *g_free_frames[48] = {};
constexpr uint64_t kPfnMask = (uint64_t(1) << 55) - 1;
constexpr uint64_t kPresent = uint64_t(1) << 63;

// Frame of each page of [base, base + n pages) into out (0: not present).
bool ReadFrames(uintptr_t base, size_t n, uint64_t *out) {
  const off_t off = off_t(base / 4096 * 8);
  size_t got = 0;
  while (got < n * 8) {
    ssize_t r = pread(g_pagemap, reinterpret_cast<char *>(out) + got,
                      n * 8 - got, off + off_t(got));
    if (r <= 0) return false;
    got += size_t(r);
  }
  for (size_t i = 0; i < n; i++)
    out[i] = (out[i] & kPresent) ? (out[i] & kPfnMask) : 0;
  return true;
}

void InitFrames() {
  if (const char *v = getenv("RCBENCH_FRAMES"); v && strcmp(v, "0") == 0)
    return;  // no stale-hit check
  g_pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (g_pagemap < 0) return;
  static volatile char probe[4096] __attribute__((aligned(4096)));
  probe[0] = 1;
  uint64_t f = 0;
  g_frames = ReadFrames(reinterpret_cast<uintptr_t>(&probe[0]), 1, &f) && f;
  if (!g_frames) return;
  // Mapped now, before any workload's buffer: the same address-space layout
  // for every contender.
  const size_t size = size_t(1) << 36;  // reserved, not committed
  void *p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    g_frames = false;
    return;
  }
  g_arena = g_arena_next = static_cast<char *>(p);
  g_arena_end = g_arena + size;
}

// Frames live in one reserved mapping (power-of-two size classes, free
// lists), never in the heap and never unmapped: recording them must not change
// the malloc workloads nor send the caches unmap events.

Frames *AllocFrames(size_t npages) {
  const size_t bytes = sizeof(Frames) + npages * 8;
  int cls = 6;
  while ((size_t(1) << cls) < bytes) cls++;
  std::lock_guard<std::mutex> l(g_arena_mu);
  if (Frames *f = g_free_frames[cls]) {
    g_free_frames[cls] = f->next;
    return f;
  }
  if (size_t(g_arena_end - g_arena_next) < (size_t(1) << cls)) return nullptr;
  Frames *f = reinterpret_cast<Frames *>(g_arena_next);
  g_arena_next += size_t(1) << cls;
  f->cls = cls;
  return f;
}

void FreeFrames(Frames *f) {
  if (f == nullptr) return;
  std::lock_guard<std::mutex> l(g_arena_mu);
  f->next = g_free_frames[f->cls];
  g_free_frames[f->cls] = f;
}

void RecordFrames(Handle *h) {
  h->frames = nullptr;
  if (!g_frames) return;
  const uintptr_t base =
      reinterpret_cast<uintptr_t>(h->addr) & ~uintptr_t(4095);
  const uintptr_t end =
      (reinterpret_cast<uintptr_t>(h->addr) + h->len + 4095) & ~uintptr_t(4095);
  Frames *f = AllocFrames((end - base) / 4096);
  if (f == nullptr) return;
  f->base = base;
  f->npages = (end - base) / 4096;
  if (ReadFrames(base, f->npages, f->pfn)) {
    h->frames = f;
  } else {
    FreeFrames(f);
  }
}

#ifdef REGCACHE_BENCH_HAVE_VERBS
ibv_context *g_ctx = nullptr;
ibv_pd *g_pd = nullptr;
#endif

void Account(size_t len) {
  uint64_t cur = g_pinned.fetch_add(len, std::memory_order_relaxed) + len;
  uint64_t peak = g_peak.load(std::memory_order_relaxed);
  while (cur > peak &&
         !g_peak.compare_exchange_weak(peak, cur, std::memory_order_relaxed)) {
  }
}

}  // namespace

int CallbacksInit(const RegConfig &cfg, std::string *err) {
  g_cfg = cfg;
  NsPerTick();  // calibrate now (20 ms), not inside the first timed
                // registration
  if (cfg.driver == "none") {
    g_mode = Mode::kNone;
  } else if (cfg.driver == "pin") {
    rlimit rl{};
    getrlimit(RLIMIT_MEMLOCK, &rl);
    bool can_lock = geteuid() == 0 || rl.rlim_cur == RLIM_INFINITY ||
                    rl.rlim_cur >= (rlim_t(1) << 30);
    g_mode = can_lock ? Mode::kPin : Mode::kTouch;
    if (!can_lock)
      fprintf(
          stderr,
          "regcache-bench: RLIMIT_MEMLOCK is %llu bytes: pages are touched, "
          "not locked\n",
          (unsigned long long)rl.rlim_cur);
    if (g_mode == Mode::kPin) InitFrames();  // touched pages may still move
  } else if (cfg.driver == "verbs") {
#ifdef REGCACHE_BENCH_HAVE_VERBS
    int n = 0;
    ibv_device **list = ibv_get_device_list(&n);
    if (!list || n == 0) {
      if (list) ibv_free_device_list(list);
      *err = "--driver verbs: no RDMA device";
      return -ENODEV;
    }
    g_ctx = ibv_open_device(list[0]);
    ibv_free_device_list(list);
    if (!g_ctx || !(g_pd = ibv_alloc_pd(g_ctx))) {
      *err = "--driver verbs: cannot open the device / allocate a PD";
      return -ENODEV;
    }
    g_mode = Mode::kVerbs;
#else
    *err = "--driver verbs: built without libibverbs";
    return -ENOTSUP;
#endif
  } else {
    *err = "unknown --driver '" + cfg.driver + "' (pin, verbs, none)";
    return -EINVAL;
  }
  return 0;
}

bool FramesChecked() { return g_frames; }

int CheckFrames(void *handle, const void *addr, size_t len) {
  if (!g_frames || handle == nullptr || len == 0) return -1;
  const Frames *f = static_cast<const Handle *>(handle)->frames;
  if (f == nullptr) return -1;
  uintptr_t s = reinterpret_cast<uintptr_t>(addr) & ~uintptr_t(4095);
  uintptr_t e =
      (reinterpret_cast<uintptr_t>(addr) + len + 4095) & ~uintptr_t(4095);
  s = std::max(s, f->base);
  e = std::min(e, f->base + f->npages * 4096);
  if (s >= e) return 1;  // the registration does not cover the request at all
  uint64_t now[256];
  for (uintptr_t p = s; p < e;) {
    const size_t n = std::min<size_t>(256, (e - p) / 4096);
    if (!ReadFrames(p, n, now)) return -1;
    const uint64_t *was = f->pfn + (p - f->base) / 4096;
    for (size_t i = 0; i < n; i++)
      if (now[i] != was[i]) return 1;
    p += n * 4096;
  }
  return 0;
}

bool RegRange(void *handle, uintptr_t *start, size_t *len) {
  if (handle == nullptr || (g_mode != Mode::kPin && g_mode != Mode::kTouch))
    return false;
  const Handle *h = static_cast<const Handle *>(handle);
  *start = reinterpret_cast<uintptr_t>(h->addr);
  *len = h->len;
  return true;
}

void CallbacksFini() {
  if (g_pagemap >= 0) close(g_pagemap);
  g_pagemap = -1;
  g_frames = false;
#ifdef REGCACHE_BENCH_HAVE_VERBS
  if (g_pd) ibv_dealloc_pd(g_pd);
  if (g_ctx) ibv_close_device(g_ctx);
  g_pd = nullptr;
  g_ctx = nullptr;
#endif
}

int BenchReg(void * /*ctx*/, void *addr, size_t len, unsigned access,
             void **handle_p, uint32_t *lkey_p, uint64_t *rkey_p,
             void ** /*desc_p*/) {
  tl_regs++;
  const uint64_t t0 = Ticks();
  switch (g_mode) {
    case Mode::kNone:
      *handle_p = addr;
      g_regs.fetch_add(1, std::memory_order_relaxed);
      return 0;  // pinned bytes are not tracked by the no-op driver
    case Mode::kVerbs: {
#ifdef REGCACHE_BENCH_HAVE_VERBS
      int flags = 0;
      if (access & REGCACHE_ACCESS_LOCAL_WRITE) flags |= IBV_ACCESS_LOCAL_WRITE;
      if (access & REGCACHE_ACCESS_REMOTE_READ) flags |= IBV_ACCESS_REMOTE_READ;
      if (access & REGCACHE_ACCESS_REMOTE_WRITE)
        flags |= IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
      if (access & REGCACHE_ACCESS_REMOTE_ATOMIC)
        flags |= IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_LOCAL_WRITE;
      ibv_mr *mr = ibv_reg_mr(g_pd, addr, len, flags);
      if (!mr) {
        g_failures.fetch_add(1, std::memory_order_relaxed);
        return errno ? -errno : -EIO;
      }
      *handle_p = mr;
      *lkey_p = mr->lkey;
      *rkey_p = mr->rkey;
      AddTimes(regcache::cost::RegUs(len), t0, len);
      break;
#else
      (void)access;
      return -ENOTSUP;
#endif
    }
    case Mode::kPin:
    case Mode::kTouch: {
      (void)access;
      if (g_mode == Mode::kPin) {
        if (mlock(addr, len) != 0) {
          int e = errno;
          g_failures.fetch_add(1, std::memory_order_relaxed);
          return -e;
        }
      } else {
        volatile char *p = static_cast<volatile char *>(addr);
        for (size_t o = 0; o < len; o += 4096) (void)p[o];
      }
      Handle *h = static_cast<Handle *>(malloc(sizeof(Handle)));
      if (!h) {
        if (g_mode == Mode::kPin) munlock(addr, len);
        return -ENOMEM;
      }
      h->addr = addr;
      h->len = len;
      RecordFrames(h);
      *handle_p = h;
      *lkey_p = 1;
      *rkey_p = 1;
      AddTimes(regcache::cost::RegUs(len), t0, len);
      Spin(g_cfg.base_ns + g_cfg.page_ns * ((len + 4095) / 4096));
      break;
    }
  }
  g_regs.fetch_add(1, std::memory_order_relaxed);
  Account(len);
  return 0;
}

int BenchDereg(void * /*ctx*/, void *handle) {
  size_t len = 0;
  const uint64_t t0 = Ticks();
  switch (g_mode) {
    case Mode::kNone:
      g_deregs.fetch_add(1, std::memory_order_relaxed);
      return 0;
    case Mode::kVerbs: {
#ifdef REGCACHE_BENCH_HAVE_VERBS
      ibv_mr *mr = static_cast<ibv_mr *>(handle);
      len = mr->length;
      ibv_dereg_mr(mr);
      AddTimes(regcache::cost::DeregUs(len), t0, len);
#endif
      break;
    }
    case Mode::kPin:
    case Mode::kTouch: {
      Handle *h = static_cast<Handle *>(handle);
      len = h->len;
      // The memory may be unmapped already (invalidated region): ENOMEM is
      // expected.
      if (g_mode == Mode::kPin) munlock(h->addr, h->len);
      FreeFrames(h->frames);
      free(h);
      AddTimes(regcache::cost::DeregUs(len), t0, len);
      Spin(g_cfg.dereg_ns + g_cfg.dereg_page_ns * ((len + 4095) / 4096));
      break;
    }
  }
  g_deregs.fetch_add(1, std::memory_order_relaxed);
  g_pinned.fetch_sub(len, std::memory_order_relaxed);
  return 0;
}

RegCounters ReadRegCounters() {
  return RegCounters{g_regs.load(),
                     g_deregs.load(),
                     g_failures.load(),
                     g_pinned.load(),
                     g_peak.load(),
                     double(g_model_ns.load()),
                     TicksToNs(double(g_real_ticks.load())),
                     g_pages.load()};
}

void ResetPeakPinned() { g_peak.store(g_pinned.load()); }

uint64_t ThreadRegs() { return tl_regs; }

}  // namespace rcbench

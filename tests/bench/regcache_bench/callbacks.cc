// The registration callbacks every contender uses, and the timer.
//
// pin (default): mlock/munlock of the range plus a deterministic cost (busy
// wait of
//   base_ns + page_ns per 4 KiB page; dereg_ns per deregistration), so that a
//   miss costs about what a small ibv_reg_mr costs and the same for every
//   contender. Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK the pages
//   are touched instead of locked.
// verbs: ibv_reg_mr/ibv_dereg_mr on the first RDMA device (inside the rxe
// guest). none:  no-op (for hit-path measurements).
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
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
thread_local uint64_t tl_regs = 0;

struct Handle {
  void *addr;
  size_t len;
};

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

void CallbacksFini() {
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
      *handle_p = h;
      *lkey_p = 1;
      *rkey_p = 1;
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
  switch (g_mode) {
    case Mode::kNone:
      g_deregs.fetch_add(1, std::memory_order_relaxed);
      return 0;
    case Mode::kVerbs: {
#ifdef REGCACHE_BENCH_HAVE_VERBS
      ibv_mr *mr = static_cast<ibv_mr *>(handle);
      len = mr->length;
      ibv_dereg_mr(mr);
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
      free(h);
      Spin(g_cfg.dereg_ns);
      break;
    }
  }
  g_deregs.fetch_add(1, std::memory_order_relaxed);
  g_pinned.fetch_sub(len, std::memory_order_relaxed);
  return 0;
}

RegCounters ReadRegCounters() {
  return RegCounters{g_regs.load(), g_deregs.load(), g_failures.load(),
                     g_pinned.load(), g_peak.load()};
}

void ResetPeakPinned() { g_peak.store(g_pinned.load()); }

uint64_t ThreadRegs() { return tl_regs; }

}  // namespace rcbench

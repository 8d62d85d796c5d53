// tests/bench/notifier_bench.cc - cost of munmap per event source, as a ratio
// against a plain munmap measured in the same run (guarantee 7: <= 1.05x for
// unrelated ranges).
//
// Each iteration maps and unmaps one touched 4 KiB page (munmap of a real
// mapping; the mmap is part of the measured pair in every variant, so the ratio
// is conservative). Variants: source {none (baseline: nothing installed),
// patch, uffd} x {unrelated: an interval subscription elsewhere; subscribed: an
// interval subscription over the page}. The ratio counter is time(variant) /
// time(baseline), with the baseline measured first.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <ctime>

#include "notifier/address_space.h"

namespace regcache::notifier {
namespace {

double g_baseline_ns = 0;

double ThreadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}
const regcache_notifier_ops_t kNoOps = {nullptr, nullptr, nullptr};

double MapUnmapLoop(benchmark::State &state, Subscription **sub,
                    bool subscribe) {
  const size_t len = 4096;
  uint64_t n = 0;
  double t0 =
      ThreadCpuNs();  // thread CPU time: the VM is shared, wall time is noise
  for (auto _ : state) {
    void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    static_cast<char *>(p)[0] = 1;
    if (subscribe && sub != nullptr && *sub == nullptr) {
      Register(&kNoOps, nullptr, reinterpret_cast<uintptr_t>(p), len, sub);
    }
    munmap(p, len);
    ++n;
  }
  return (ThreadCpuNs() - t0) / static_cast<double>(n);
}

void BM_PlainMunmap(benchmark::State &state) {
  ResetForTesting();
  double ns = MapUnmapLoop(state, nullptr, false);
  g_baseline_ns = ns;
  state.counters["ratio"] = 1.0;
}

void RunSource(benchmark::State &state, Source src, bool subscribed) {
  ResetForTesting();
  Options o;
  o.source = src;
  Configure(o);
  // An interval subscription somewhere else (the filter has something to
  // filter).
  static char elsewhere[4096];
  Subscription *other = nullptr;
  int rc = Register(&kNoOps, nullptr, reinterpret_cast<uintptr_t>(elsewhere), 1,
                    &other);
  if (rc != 0) {
    state.SkipWithError("source unavailable");
    return;
  }
  double ns;
  if (subscribed) {
    // Subscribe to the exact page each time: mmap reuses the same address, and
    // with uffd the subscription is what makes it watched.
    ns = 0;
    uint64_t n = 0;
    const size_t len = 4096;
    auto t0 = std::chrono::steady_clock::now();
    for (auto _ : state) {
      void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      static_cast<char *>(p)[0] = 1;
      state.PauseTiming();
      Subscription *s = nullptr;
      Register(&kNoOps, nullptr, reinterpret_cast<uintptr_t>(p), len, &s);
      state.ResumeTiming();
      auto a = std::chrono::steady_clock::now();
      munmap(p, len);
      auto b = std::chrono::steady_clock::now();
      ns += std::chrono::duration<double, std::nano>(b - a).count();
      state.PauseTiming();
      Unregister(s);
      state.ResumeTiming();
      ++n;
    }
    (void)t0;
    ns /= static_cast<double>(n ? n : 1);
    state.counters["munmap_ns"] = ns;
  } else {
    ns = MapUnmapLoop(state, nullptr, false);
  }
  Unregister(other);
  ResetForTesting();
  if (!subscribed && g_baseline_ns > 0)
    state.counters["ratio"] = ns / g_baseline_ns;
}

void BM_PatchUnrelated(benchmark::State &s) {
  RunSource(s, Source::kPatch, false);
}
void BM_PatchSubscribed(benchmark::State &s) {
  RunSource(s, Source::kPatch, true);
}
void BM_UffdUnrelated(benchmark::State &s) {
  RunSource(s, Source::kUffd, false);
}
void BM_UffdSubscribed(benchmark::State &s) {
  RunSource(s, Source::kUffd, true);
}
void BM_NoneUnrelated(benchmark::State &s) {
  RunSource(s, Source::kNone, false);
}

// Plain munmap of the same kind of page, measured on its own, for the
// subscribed ratios.
void BM_PlainMunmapOnly(benchmark::State &state) {
  ResetForTesting();
  double ns = 0;
  uint64_t n = 0;
  for (auto _ : state) {
    void *p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    static_cast<char *>(p)[0] = 1;
    auto a = std::chrono::steady_clock::now();
    munmap(p, 4096);
    auto b = std::chrono::steady_clock::now();
    ns += std::chrono::duration<double, std::nano>(b - a).count();
    ++n;
  }
  state.counters["munmap_ns"] = ns / static_cast<double>(n ? n : 1);
}

BENCHMARK(BM_PlainMunmap)->MinTime(0.5);
BENCHMARK(BM_NoneUnrelated)->MinTime(0.5);
BENCHMARK(BM_PatchUnrelated)->MinTime(0.5);
BENCHMARK(BM_UffdUnrelated)->MinTime(0.5);
BENCHMARK(BM_PlainMunmapOnly)->Iterations(3000);
BENCHMARK(BM_PatchSubscribed)->Iterations(3000);
BENCHMARK(BM_UffdSubscribed)->Iterations(3000);

}  // namespace
}  // namespace regcache::notifier

BENCHMARK_MAIN();

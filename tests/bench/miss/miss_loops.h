/* SPDX-License-Identifier: BSD-3-Clause */
// tests/bench/miss/miss_loops.h - the issue 14 miss-path loops, written once
// and instantiated by both contenders (regcache-missbench for regcache,
// regcache-missbench-ucx for UCX 1.13's ucs_rcache), so that both run the same
// code around their get/put. A contender is a class with
//   bool Open(size_t max_regions);   a fresh cache
//   bool Get(void *addr, size_t len, void **handle);
//   void Put(void *handle);
//   void Close();                    destroy (untimed)
// and registration callbacks that do nothing (only the caches' bookkeeping is
// measured).
#ifndef REGCACHE_TESTS_BENCH_MISS_MISS_LOOPS_H_
#define REGCACHE_TESTS_BENCH_MISS_MISS_LOOPS_H_

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace missbench {

constexpr size_t kPage = 4096;
constexpr size_t kInsertPages = 16384;   // issue 14: 16 384 distinct pages
constexpr size_t kEvictPages = 8192;     // cycled over ...
constexpr size_t kEvictCapacity = 1024;  // ... by a cache of 1 024 regions
constexpr size_t kInvalLen = 64 * 1024;  // mmap 64 KiB, get, put, munmap

inline double NowNs() {
  return std::chrono::duration<double, std::nano>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Every other page of an untouched MAP_NORESERVE mapping: distinct pages, one
// VMA, no two requests adjacent (neither cache merges adjacent regions, but
// this keeps that question out of the measurement).
inline char *MapPages(size_t pages) {
  void *p = mmap(nullptr, 2 * pages * kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  return static_cast<char *>(p);
}

// (a) Insert path: the first get of each of kInsertPages distinct pages, no
// eviction (capacity 2x the pages), every region held until the end, so each
// get is one insert. ns per get; median of `passes` passes, each on a fresh
// cache (destroy untimed).
template <class C>
double InsertNsPerGet(C &c, int passes) {
  char *base = MapPages(kInsertPages);
  std::vector<void *> held(kInsertPages);
  std::vector<double> per;
  for (int pass = 0; pass < passes; ++pass) {
    if (!c.Open(2 * kInsertPages)) exit(1);
    const double t0 = NowNs();
    for (size_t i = 0; i < kInsertPages; ++i)
      if (!c.Get(base + 2 * i * kPage, kPage, &held[i])) exit(1);
    const double t1 = NowNs();
    for (void *h : held) c.Put(h);
    c.Close();
    per.push_back((t1 - t0) / double(kInsertPages));
  }
  munmap(base, 2 * kInsertPages * kPage);
  return Median(per);
}

// (b) Miss + evict: a cache of kEvictCapacity regions, get+put cycling over
// kEvictPages distinct pages: every get misses and (once full) evicts. The
// first pass fills the cache and is not counted. ns per get+put.
template <class C>
double EvictNsPerGet(C &c, int passes) {
  char *base = MapPages(kEvictPages);
  if (!c.Open(kEvictCapacity)) exit(1);
  void *h;
  for (size_t i = 0; i < kEvictPages; ++i) {  // warm-up pass: fills the cache
    if (!c.Get(base + 2 * i * kPage, kPage, &h)) exit(1);
    c.Put(h);
  }
  std::vector<double> per;
  for (int pass = 0; pass < passes; ++pass) {
    const double t0 = NowNs();
    for (size_t i = 0; i < kEvictPages; ++i) {
      if (!c.Get(base + 2 * i * kPage, kPage, &h)) exit(1);
      c.Put(h);
    }
    per.push_back((NowNs() - t0) / double(kEvictPages));
  }
  c.Close();
  munmap(base, 2 * kEvictPages * kPage);
  return Median(per);
}

// (c) Invalidation: mmap 64 KiB, (get, put,) munmap, repeated. One block of
// `iters` iterations; ns per iteration. with_cache false: the plain
// mmap+munmap baseline.
template <class C>
double InvalBlockNs(C &c, bool with_cache, int iters) {
  const double t0 = NowNs();
  for (int i = 0; i < iters; ++i) {
    void *p = mmap(nullptr, kInvalLen, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) exit(1);
    if (with_cache) {
      void *h;
      if (!c.Get(p, kInvalLen, &h)) exit(1);
      c.Put(h);
    }
    munmap(p, kInvalLen);
  }
  return (NowNs() - t0) / double(iters);
}

// The plain baseline is measured before the contender opens its first cache
// (neither library has installed its memory hooks yet: regcache's notifier
// installs at the first cache, UCX's ucm at the rcache's event handler): the
// overhead is everything the cache brings to an mmap/munmap cycle, hooks
// included. Then, with the cache open, blocks with the cache alternate with
// plain blocks (hooks installed, no get): the difference of those two is the
// cache's own part, without the hooks' cost for an unrelated munmap. Medians
// of `blocks` blocks each.
template <class C>
void Inval(C &c, int blocks, int iters, double *plain, double *hooked,
           double *cached) {
  std::vector<double> p, h, q;
  InvalBlockNs(c, false, iters);  // warm-up
  for (int b = 0; b < blocks; ++b) p.push_back(InvalBlockNs(c, false, iters));
  if (!c.Open(1024)) exit(1);
  InvalBlockNs(c, true, iters);  // warm-up
  for (int b = 0; b < blocks; ++b) {
    q.push_back(InvalBlockNs(c, true, iters));
    h.push_back(InvalBlockNs(c, false, iters));
  }
  c.Close();
  *plain = Median(p);
  *hooked = Median(h);
  *cached = Median(q);
}

// A child's command, the same words for both contenders: "insert PASSES",
// "evict PASSES" (only when with_evict), "inval BLOCKS ITERS" (argv[0] is the
// command). Prints one RESULT line, with regs (the registrations the
// contender's callback counted), and returns 0; 2 for arguments it does not
// know (the caller prints its usage).
template <class C>
int RunCommand(C &c, int argc, char **argv, const uint64_t &regs,
               bool with_evict) {
  if (argc == 2 && strcmp(argv[0], "insert") == 0) {
    const double ns = InsertNsPerGet(c, atoi(argv[1]));
    printf("RESULT insert_ns=%.1f regs=%llu\n", ns, (unsigned long long)regs);
    return 0;
  }
  if (with_evict && argc == 2 && strcmp(argv[0], "evict") == 0) {
    const double ns = EvictNsPerGet(c, atoi(argv[1]));
    printf("RESULT evict_ns=%.1f regs=%llu\n", ns, (unsigned long long)regs);
    return 0;
  }
  if (argc == 3 && strcmp(argv[0], "inval") == 0) {
    double plain, hooked, cached;
    Inval(c, atoi(argv[1]), atoi(argv[2]), &plain, &hooked, &cached);
    printf("RESULT plain_ns=%.1f hooked_ns=%.1f cache_ns=%.1f regs=%llu\n",
           plain, hooked, cached, (unsigned long long)regs);
    return 0;
  }
  return 2;
}

}  // namespace missbench

#endif  // REGCACHE_TESTS_BENCH_MISS_MISS_LOOPS_H_

/* SPDX-License-Identifier: BSD-3-Clause */
// regcache-bench: the hit-rate suite (issue 7). Shared types of the
// orchestrator (regcache-bench), its workers, and the UCX worker
// (regcache-bench-ucx).
//
// A run is: one workload (a list of operations, generated or read from a trace)
// executed by one contender (regcache, UCX's ucs_rcache, no cache,
// pre-registered) at one cache capacity, in a process of its own. Every
// contender registers through the same callbacks (callbacks.cc), which count
// registrations and pinned bytes.
#ifndef REGCACHE_TESTS_BENCH_REGCACHE_BENCH_BENCH_H
#define REGCACHE_TESTS_BENCH_REGCACHE_BENCH_BENCH_H

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "regcache/cost_model.h"

namespace rcbench {

// ------------------------------------------------------------------ operations
enum class OpKind : uint8_t {
  kMap,     // buf = mmap(len) (anonymous, read-write, populated, one guard page
            // after)
  kMalloc,  // buf = malloc(len) through glibc
  kGet,     // get [buf+off, +len) with access
  kPut,   // put the most recent unmatched get of (buf, off, len) on this thread
  kFree,  // free(buf)
  kMunmap,  // munmap [buf+off, +len) (page-aligned)
};

struct Op {
  OpKind kind;
  uint8_t access;   // REGCACHE_ACCESS_* bits (kGet)
  uint16_t thread;  // executing thread (0 = main)
  uint32_t buf;     // buffer id
  uint64_t off;
  uint64_t len;
};

struct Workload {
  std::string name;
  std::string description;
  uint32_t nbufs = 0;  // buffer ids are 0 .. nbufs-1
  uint32_t nthreads = 1;
  std::vector<Op> ops;
};

// Sizes: quick (the default run, the README's main job) or full (--full).
struct GenParams {
  bool full = false;
  uint64_t seed = 42;
  uint64_t ops_scale = 1;  // multiplies the number of get/put operations
  size_t default_regions =
      32;  // the capacity the pool workloads are sized against
};

// Names of the generators, in report order.
const std::vector<std::string> &WorkloadNames();
// Buffers in the rotating pool of pool-fit / pool-over (0 for the others).
size_t PoolBuffers(const std::string &name, const GenParams &p);
// Builds workload `name`; false if unknown (err says why).
bool MakeWorkload(const std::string &name, const GenParams &p, Workload *w,
                  std::string *err);
// Trace files (format in docs/bench.md).
bool ReadTrace(const std::string &path, Workload *w, std::string *err);
bool WriteTrace(const std::string &path, const Workload &w, std::string *err);

// ------------------------------------------------------------------ capacity
struct Capacity {
  size_t regions;
  size_t bytes;
};
// The capacity sweep: level i has 4 * 2^i regions and 8 MiB * 2^i bytes.
constexpr int kLevels = 6;
constexpr int kDefaultLevel = 3;  // 32 regions, 64 MiB
Capacity CapacityOfLevel(int level);

// ------------------------------------------------------------------ callbacks
// The registration callbacks every contender uses (regcache_driver_ops_t's
// signature).
// The pin driver's busy wait defaults to the cost model (regcache/cost_model.h,
// the rxe guest's ibv_reg_mr/ibv_dereg_mr fit), so that ns/op is what a miss
// would cost there; --reg-ns etc. override it (0: the host driver's own cost).
struct RegConfig {
  std::string driver =
      "pin";  // pin (mlock + cost model) | verbs | none (no-op)
  uint64_t base_ns = uint64_t(regcache::cost::kReg.a_us * 1000);
  uint64_t page_ns = uint64_t(regcache::cost::kReg.b_us * 1000);  // per page
  uint64_t dereg_ns = uint64_t(regcache::cost::kDereg.a_us * 1000);
  uint64_t dereg_page_ns = uint64_t(regcache::cost::kDereg.b_us * 1000);
};
int CallbacksInit(const RegConfig &cfg, std::string *err);
void CallbacksFini();
int BenchReg(void *ctx, void *addr, size_t len, unsigned access,
             void **handle_p, uint32_t *lkey_p, uint64_t *rkey_p,
             void **desc_p);
int BenchDereg(void *ctx, void *handle);
struct RegCounters {
  uint64_t regs, deregs, reg_failures, pinned_bytes, peak_pinned_bytes;
  // Registration time: modeled (cost_model.h, every registration and
  // deregistration, whatever the driver) and measured (the driver's own work:
  // mlock/munlock and frame recording, or ibv_reg_mr/ibv_dereg_mr; the pin
  // driver's busy wait excluded), nanoseconds.
  double model_ns, real_ns;
  uint64_t pages;  // 4 KiB pages registered plus pages deregistered
};
RegCounters ReadRegCounters();
void ResetPeakPinned();
// Stale-hit detection (pin driver, PFNs readable: root): whether registrations
// record their page frames, and whether the pages of [addr, addr+len) still map
// the frames recorded when `handle` (BenchReg's) was registered: 0 fresh,
// 1 stale, -1 not checked.
bool FramesChecked();
int CheckFrames(void *handle, const void *addr, size_t len);
// The range registered as `handle` (pin driver); false if unknown.
bool RegRange(void *handle, uintptr_t *start, size_t *len);
// Registrations made by the calling thread (tells a hit from a miss,
// uniformly).
uint64_t ThreadRegs();

// ------------------------------------------------------------------ contenders
class Contender {
 public:
  virtual ~Contender() = default;
  virtual const char *name() const = 0;
  // Creates the cache with capacity cap. 0 or a negative errno.
  virtual int Open(const Capacity &cap, std::string *err) = 0;
  virtual int Get(void *addr, size_t len, unsigned access, void **handle) = 0;
  virtual void Put(void *handle) = 0;
  // BenchReg's handle of the registration behind Get's handle (NULL: none).
  virtual void *RegHandle(void *handle) {
    (void)handle;
    return nullptr;
  }
  // Extra diagnostics ("key=value ..."), before Close.
  virtual std::string Extra() { return ""; }
  virtual void Close() = 0;
};
// Built into every worker binary.
Contender *NewNoCache();
Contender *NewPreRegistered();

// ------------------------------------------------------------------ results
struct Result {
  std::string workload, contender;
  int level = 0;
  Capacity cap{0, 0};
  uint64_t gets = 0, hits = 0, errors = 0;
  // Hits whose registration no longer maps the request's current page frames
  // (memory unmapped/trimmed and mapped again since); -1: not checked.
  int64_t stale_hits = -1;
  uint64_t regs = 0, deregs = 0, peak_pinned = 0;
  double reg_model_ns = 0, reg_real_ns = 0;  // RegCounters, during the run
  uint64_t reg_pages = 0;  // pages registered + deregistered, during the run
  // reg_real_ns replayed: regs + deregs and reg_pages priced by the line fitted
  // to every run's measured host time (FitHostReplay, report.cc); 0: none.
  double reg_host_replay_ns = 0;
  // get+put times, ns, of the pairs timed (every hit / get that was put),
  // less the thread's run delay during the calls (executor.cc); preempted:
  // pairs that had some.
  double hit_ns_sum = 0, all_ns_sum = 0;
  uint64_t timed_gets = 0, timed_hits = 0, preempted = 0;
  double wall_s = 0;
  // Orchestrator only: the time columns are the median of time_runs runs
  // (main.cc, --time-runs); the spread of ns/hit and ns/op over them.
  int time_runs = 1;
  double hit_ns_lo = 0, hit_ns_hi = 0, all_ns_lo = 0, all_ns_hi = 0;
  std::string extra;
  bool ok = false;
  std::string error;
  double HitRate() const { return gets ? double(hits) / double(gets) : 0; }
  double HitNs() const {
    return timed_hits ? hit_ns_sum / double(timed_hits) : 0;
  }
  double AllNs() const {
    return timed_gets ? all_ns_sum / double(timed_gets) : 0;
  }
};
std::string FormatResult(const Result &r);  // one "RESULT k=v ..." line
bool ParseResult(const std::string &line, Result *r);

// ------------------------------------------------------------------ executor
// Runs w on c (already opened); fills r's counters. Buffers are mapped/freed by
// ops.
void Execute(const Workload &w, Contender *c, Result *r);

// ------------------------------------------------------------------ workers
// The worker's command line (see worker.cc): --worker CONTENDER --workload NAME
// [--trace FILE] --level L [--full] [--seed S] [--scale K] [--driver D]
// [--reg-ns N] [--page-ns N] [--dereg-ns N]. make_contender builds the binary's
// own contenders (NULL if unknown). Prints one RESULT line on stdout; exit
// status 0 on success.
using ContenderFactory = Contender *(*)(const std::string &name);
int WorkerMain(int argc, char **argv, ContenderFactory make_contender);

// Timer: TSC ticks where available, converted with a calibrated rate.
uint64_t Ticks();
double TicksToNs(double ticks);
double TimerOverheadTicks();

}  // namespace rcbench

#endif  // REGCACHE_TESTS_BENCH_REGCACHE_BENCH_BENCH_H

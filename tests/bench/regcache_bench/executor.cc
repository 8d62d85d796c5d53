// SPDX-License-Identifier: BSD-3-Clause
// Executes a workload's operations on a contender and measures every get and
// put.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>

#include "tests/bench/regcache_bench/bench.h"

namespace rcbench {
namespace {

constexpr size_t kPage = 4096;

struct Held {
  uint32_t buf;
  uint64_t off, len;
  void *handle;
  uint64_t get_ticks;
  double delay_ns;  // the get's run delay (RunDelay)
  bool hit, ok;
};

struct ThreadStats {
  uint64_t gets = 0, hits = 0, errors = 0, stale_hits = 0, stale_misses = 0;
  uint64_t timed_gets = 0, timed_hits = 0, preempted = 0;
  double hit_ns = 0, all_ns = 0;
};

// The calling thread's run delay so far, ns: the time it spent runnable but
// waiting for a CPU (second field of /proc/thread-self/schedstat, accounted
// when it runs again). Read right before and right after each timed call,
// outside the window: the increase is time the scheduler gave to something
// else (another process on this loaded machine), not the cache's work, and is
// subtracted from that call's time. Sleeping (a cache waiting on a lock) is
// not run delay: it stays counted. Without schedstat (or with
// RCBENCH_KEEP_PREEMPTED=1: the measurement before 2026-11-30) nothing is
// subtracted. Until then a preemption inside one call (2-8 ms here) decided a
// whole run's mean; dropping such pairs instead biased ns/op low, since long
// calls (a 16 MiB miss: 1.5 ms) are the ones preempted.
bool g_subtract_delay = true;
class RunDelay {
 public:
  RunDelay() {
    if (g_subtract_delay)
      fd_ = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  }
  ~RunDelay() {
    if (fd_ >= 0) close(fd_);
  }
  uint64_t Ns() const {
    if (fd_ < 0) return 0;
    char b[128];
    const ssize_t n = pread(fd_, b, sizeof b - 1, 0);
    if (n <= 0) return 0;
    b[n] = 0;
    char *p;
    strtoull(b, &p, 10);  // time on the CPU
    return strtoull(p, nullptr, 10);
  }

 private:
  int fd_ = -1;
};

class Allocator;
struct Buffers {
  std::vector<char *> ptr;
  std::vector<uint64_t> len;
  Allocator *alloc = nullptr;  // malloc/free of workload buffers
};

void DoMap(Buffers *b, uint32_t id, uint64_t len) {
  size_t rounded = (len + kPage - 1) / kPage * kPage;
  void *p = mmap(nullptr, rounded + kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    perror("regcache-bench: mmap");
    exit(2);
  }
  // A guard page keeps neighbouring buffers from being adjacent (one buffer,
  // one region).
  mprotect(static_cast<char *>(p) + rounded, kPage, PROT_NONE);
  b->ptr[id] = static_cast<char *>(p);
  b->len[id] = len;
}

// The workload's malloc/free run on a thread that does nothing else, so the
// buffers live in a glibc arena of their own. In the thread calling the cache
// they would share the heap with the contenders' own allocations (UCX mallocs
// a struct per region, regcache's regions live in its own mappings, the
// driver mallocs a handle per registration), and the heap layout, so which
// buffers share a page with a registered one and when the heap is trimmed,
// would differ between contenders: measured, a dummy 64-160 byte malloc per
// registration moved regcache's churn hit rate by up to 5 points either way.
// Here every contender's process sees the same addresses (relative to the
// arena) for the same workload. The arena's heap is trimmed with
// madvise(MADV_DONTNEED) and buffers above the mmap threshold are unmapped:
// real invalidations for every contender.
class Allocator {
 public:
  Allocator() : th_([this] { Loop(); }) {}
  ~Allocator() {
    Call(Req::kStop, 0, nullptr);
    th_.join();
  }
  void *Malloc(size_t len) { return Call(Req::kMalloc, len, nullptr); }
  void Free(void *p) { Call(Req::kFree, 0, p); }

 private:
  enum class Req { kNone, kMalloc, kFree, kStop };
  void *Call(Req r, size_t len, void *p) {
    std::unique_lock<std::mutex> l(mu_);
    req_ = r;
    len_ = len;
    ptr_ = p;
    cv_.notify_all();
    cv_.wait(l, [this] { return req_ == Req::kNone; });
    return ptr_;
  }
  void Loop() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [this] { return req_ != Req::kNone; });
      const Req r = req_;
      if (r == Req::kMalloc) ptr_ = malloc(len_);
      if (r == Req::kFree) free(ptr_);
      req_ = Req::kNone;
      cv_.notify_all();
      if (r == Req::kStop) return;
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  Req req_ = Req::kNone;
  size_t len_ = 0;
  void *ptr_ = nullptr;
  std::thread th_;
};

// The harness's own cost of a timed get+put (two timer pairs, two virtual
// calls), measured on a contender that does nothing: subtracted from every
// pair.
double HarnessFloorTicks() {
  static const double v = [] {
    Contender *noop = NewPreRegistered();
    std::vector<uint64_t> t(4001);
    char x;
    for (uint64_t &d : t) {
      void *h;
      uint64_t t0 = Ticks();
      noop->Get(&x, 1, 0, &h);
      uint64_t t1 = Ticks();
      uint64_t t2 = Ticks();
      noop->Put(h);
      uint64_t t3 = Ticks();
      d = (t1 - t0) + (t3 - t2);
    }
    delete noop;
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    return double(t[t.size() / 2]);
  }();
  return v;
}

// RCBENCH_OPLOG=FILE (one thread): one line per get and free (op index,
// buffer, hit/miss, stale, registered range relative to the request), to diff
// two contenders' decisions on the same workload.
FILE *g_oplog = nullptr;
const Op *g_op0 = nullptr;

void LogGet(const Op *op, const void *addr, void *reg, bool hit, int stale) {
  uintptr_t rs = 0;
  size_t rl = 0;
  const bool known = RegRange(reg, &rs, &rl);
  const intptr_t rel =
      intptr_t(rs) - intptr_t(reinterpret_cast<uintptr_t>(addr));
  fprintf(g_oplog,
          "%td get buf=%u addr=%p off=%llu len=%llu %s stale=%d reg=%+td,%zu\n",
          op - g_op0, op->buf, addr, (unsigned long long)op->off,
          (unsigned long long)op->len, hit ? "hit" : "miss", stale,
          known ? rel : 0, known ? rl : 0);
}

void RunThread(const std::vector<const Op *> &ops, Buffers *b, Contender *c,
               ThreadStats *st) {
  const double floor = HarnessFloorTicks();
  const RunDelay delay;  // this thread's
  std::vector<Held> held;
  held.reserve(16);
  for (const Op *op : ops) {
    switch (op->kind) {
      case OpKind::kMap:
        DoMap(b, op->buf, op->len);
        break;
      case OpKind::kMalloc: {
        void *p = b->alloc->Malloc(op->len);
        if (!p) {
          perror("regcache-bench: malloc");
          exit(2);
        }
        b->ptr[op->buf] = static_cast<char *>(p);
        b->len[op->buf] = op->len;
        break;
      }
      case OpKind::kFree:
        if (g_oplog) fprintf(g_oplog, "%td free buf=%u\n", op - g_op0, op->buf);
        b->alloc->Free(b->ptr[op->buf]);
        b->ptr[op->buf] = nullptr;
        break;
      case OpKind::kMunmap:
        munmap(b->ptr[op->buf] + op->off, op->len);
        break;
      case OpKind::kGet: {
        void *addr = b->ptr[op->buf] + op->off;
        void *h = nullptr;
        uint64_t regs0 = ThreadRegs();
        const uint64_t d0 = delay.Ns();
        uint64_t t0 = Ticks();
        int rc = c->Get(addr, op->len, op->access, &h);
        uint64_t t1 = Ticks();
        const double get_delay = double(delay.Ns() - d0);
        bool hit = rc == 0 && ThreadRegs() == regs0;
        // Outside the timed pair: does the registration handed out still map
        // the request's pages (page frames recorded at registration)?
        int stale = rc == 0 ? CheckFrames(c->RegHandle(h), addr, op->len) : -1;
        if (stale == 1) ++(hit ? st->stale_hits : st->stale_misses);
        if (g_oplog) LogGet(op, addr, c->RegHandle(h), hit, stale);
        held.push_back(
            {op->buf, op->off, op->len, h, t1 - t0, get_delay, hit, rc == 0});
        st->gets++;
        if (rc != 0) {
          st->errors++;
          if (st->errors == 1)
            fprintf(stderr, "regcache-bench: %s get(%p, %llu) failed: %d\n",
                    c->name(), addr, (unsigned long long)op->len, rc);
        }
        break;
      }
      case OpKind::kPut: {
        auto it = std::find_if(held.rbegin(), held.rend(), [&](const Held &x) {
          return x.buf == op->buf && x.off == op->off && x.len == op->len;
        });
        if (it == held.rend()) break;  // put without get: ignored
        Held h = *it;
        held.erase(std::next(it).base());
        if (!h.ok) break;
        const uint64_t d0 = delay.Ns();
        uint64_t t0 = Ticks();
        c->Put(h.handle);
        uint64_t t1 = Ticks();
        const double put_delay = double(delay.Ns() - d0);
        const double off_cpu = h.delay_ns + put_delay;
        if (off_cpu > 0) st->preempted++;
        const double pair = std::max(
            0.0,
            TicksToNs(std::max(0.0, double(h.get_ticks + (t1 - t0)) - floor)) -
                off_cpu);
        if (h.hit) st->hits++;
        st->all_ns += pair;
        st->timed_gets++;
        if (h.hit) {
          st->timed_hits++;
          st->hit_ns += pair;
        }
        break;
      }
    }
  }
  for (Held &h : held)  // gets without a put: give them back
    if (h.ok) c->Put(h.handle);
}

}  // namespace

void Execute(const Workload &w, Contender *c, Result *r) {
  Buffers b;
  b.ptr.assign(w.nbufs, nullptr);
  b.len.assign(w.nbufs, 0);
  // Only workloads that malloc get the allocator thread.
  std::optional<Allocator> alloc;
  if (std::any_of(w.ops.begin(), w.ops.end(),
                  [](const Op &o) { return o.kind == OpKind::kMalloc; }))
    b.alloc = &alloc.emplace();
  size_t i = 0;
  for (; i < w.ops.size() && w.ops[i].kind == OpKind::kMap; i++)
    DoMap(&b, w.ops[i].buf, w.ops[i].len);
  std::vector<std::vector<const Op *>> per(std::max<uint32_t>(1, w.nthreads));
  for (; i < w.ops.size(); i++) per[w.ops[i].thread].push_back(&w.ops[i]);

  g_op0 = w.ops.data();
  if (const char *k = getenv("RCBENCH_KEEP_PREEMPTED"); k && *k == '1')
    g_subtract_delay = false;
  if (const char *log = getenv("RCBENCH_OPLOG"); log && *log && per.size() == 1)
    g_oplog = fopen(log, "w");
  HarnessFloorTicks();  // calibrate before the clock starts
  RegCounters before = ReadRegCounters();
  ResetPeakPinned();
  std::vector<ThreadStats> stats(per.size());
  auto t0 = std::chrono::steady_clock::now();
  if (per.size() == 1) {
    RunThread(per[0], &b, c, &stats[0]);
  } else {
    std::atomic<size_t> ready{0};
    auto body = [&](size_t t) {
      ready.fetch_add(1);
      while (ready.load() < per.size()) {
      }
      RunThread(per[t], &b, c, &stats[t]);
    };
    std::vector<std::thread> th;
    for (size_t t = 1; t < per.size(); t++) th.emplace_back(body, t);
    body(0);
    for (auto &x : th) x.join();
  }
  auto t1 = std::chrono::steady_clock::now();
  RegCounters after = ReadRegCounters();

  if (g_oplog) fclose(g_oplog);
  g_oplog = nullptr;
  r->wall_s = std::chrono::duration<double>(t1 - t0).count();
  uint64_t stale_misses = 0;
  if (FramesChecked()) r->stale_hits = 0;
  for (const ThreadStats &s : stats) {
    r->gets += s.gets;
    r->hits += s.hits;
    r->errors += s.errors;
    if (FramesChecked()) r->stale_hits += int64_t(s.stale_hits);
    stale_misses += s.stale_misses;
    r->timed_gets += s.timed_gets;
    r->timed_hits += s.timed_hits;
    r->preempted += s.preempted;
    r->hit_ns_sum += s.hit_ns;
    r->all_ns_sum += s.all_ns;
  }
  if (stale_misses)  // a fresh registration that is not: a harness bug
    fprintf(stderr, "regcache-bench: %s: %llu stale misses\n", c->name(),
            (unsigned long long)stale_misses);
  r->regs = after.regs - before.regs;
  r->deregs = after.deregs - before.deregs;
  r->reg_model_ns = after.model_ns - before.model_ns;
  r->reg_real_ns = after.real_ns - before.real_ns;
  r->reg_pages = after.pages - before.pages;
  r->peak_pinned = after.peak_pinned_bytes;
}

}  // namespace rcbench

// SPDX-License-Identifier: BSD-3-Clause
// regcache-bench: the hit-rate suite of issue 7 (docs/bench.md).
//
// The orchestrator runs every (workload, contender, capacity) in a fresh
// process: itself with --worker for regcache / nocache / prereg,
// regcache-bench-ucx (same directory) for UCX's ucs_rcache, and reads one
// RESULT line from each through a pipe. It prints a table (default capacity,
// ratios to UCX), and optionally a CSV and an SVG plot of hit rate vs capacity
// per workload.
#include <fcntl.h>
#include <poll.h>
#include <regcache/regcache.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "tests/bench/regcache_bench/bench.h"
#include "tests/bench/regcache_bench/report.h"
#include "tests/bench/self_dir.h"

extern char **environ;

namespace rcbench {
namespace {

// ------------------------------------------------------------------ regcache
// contender
class Regcache : public Contender {
 public:
  // lru: REGCACHE_EVICTION=lru (contender "regcache-lru"), UCX's policy.
  explicit Regcache(bool lru = false) : lru_(lru) {}
  const char *name() const override {
    return lru_ ? "regcache-lru" : "regcache";
  }
  int Open(const Capacity &cap, std::string *err) override {
    if (lru_ && regcache_config_set("EVICTION", "lru") != 0) {
      *err = "regcache_config_set(EVICTION, lru) failed";
      return -EINVAL;
    }
    static const regcache_driver_ops_t ops = {sizeof(regcache_driver_ops_t),
                                              BenchReg, BenchDereg};
    int rc = regcache_driver_custom_open(&ops, nullptr, &drv_);
    if (rc != 0) {
      *err =
          std::string("regcache_driver_custom_open: ") + regcache_strerror(rc);
      return rc;
    }
    regcache_params_t p{};
    p.field_mask = REGCACHE_PARAM_MAX_REGIONS | REGCACHE_PARAM_MAX_BYTES |
                   REGCACHE_PARAM_NAME;
    p.max_regions = cap.regions;
    p.max_bytes = cap.bytes;
    p.name = "regcache-bench";
    rc = regcache_create(drv_, &p, &cache_);
    if (rc != 0) {
      *err = std::string("regcache_create: ") + regcache_strerror(rc);
      regcache_driver_close(drv_);
      drv_ = nullptr;
      return rc;
    }
    return 0;
  }
  int Get(void *addr, size_t len, unsigned access, void **handle) override {
    return regcache_get(cache_, addr, len, access,
                        reinterpret_cast<regcache_region_t **>(handle));
  }
  void Put(void *handle) override {
    regcache_put(cache_, static_cast<regcache_region_t *>(handle));
  }
  void *RegHandle(void *handle) override {
    return regcache_region_handle(static_cast<regcache_region_t *>(handle));
  }
  std::string Extra() override {
    regcache_stats_t s{};
    if (regcache_get_stats(cache_, &s) != 0) return "";
    std::ostringstream o;
    o << "source:" << regcache_notifier_source()
      << ",invalidations:" << s.invalidations << ",evictions:" << s.evictions
      << ",merges:" << s.merges << ",retries:" << s.retries;
    return o.str();
  }
  void Close() override {
    regcache_destroy(cache_);
    regcache_driver_close(drv_);
  }

 private:
  bool lru_;
  regcache_driver_t *drv_ = nullptr;
  regcache_t *cache_ = nullptr;
};

Contender *MakeContender(const std::string &name) {
  if (name == "regcache") return new Regcache;
  if (name == "regcache-lru") return new Regcache(/*lru=*/true);
  if (name == "nocache") return NewNoCache();
  if (name == "prereg") return NewPreRegistered();
  return nullptr;
}

// The repeats of one (workload, contender, level) fold into its first
// result: ns/hit and ns/op become the median over the runs (their spread is
// kept); counts and hit rates stay the first run's (the same in every run of
// a deterministic workload).
void MergeTimeRuns(std::vector<Result> *results) {
  std::map<std::tuple<std::string, std::string, int>, std::vector<size_t>> runs;
  for (size_t i = 0; i < results->size(); i++) {
    const Result &r = (*results)[i];
    if (r.ok) runs[{r.workload, r.contender, r.level}].push_back(i);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  };
  std::vector<bool> drop(results->size(), false);
  for (auto &[key, idx] : runs) {
    if (idx.size() < 2) continue;
    std::vector<double> hit, all;
    for (size_t i : idx) {
      const Result &r = (*results)[i];
      if (r.timed_hits) hit.push_back(r.HitNs());
      if (r.timed_gets) all.push_back(r.AllNs());
    }
    Result &first = (*results)[idx[0]];
    first.time_runs = int(idx.size());
    if (!hit.empty()) {
      first.hit_ns_sum = median(hit) * double(first.timed_hits);
      first.hit_ns_lo = *std::min_element(hit.begin(), hit.end());
      first.hit_ns_hi = *std::max_element(hit.begin(), hit.end());
    }
    if (!all.empty()) {
      first.all_ns_sum = median(all) * double(first.timed_gets);
      first.all_ns_lo = *std::min_element(all.begin(), all.end());
      first.all_ns_hi = *std::max_element(all.begin(), all.end());
    }
    for (size_t k = 1; k < idx.size(); k++) {
      first.preempted += (*results)[idx[k]].preempted;
      drop[idx[k]] = true;
    }
  }
  std::vector<Result> kept;
  for (size_t i = 0; i < results->size(); i++)
    if (!drop[i]) kept.push_back(std::move((*results)[i]));
  *results = std::move(kept);
}

// ------------------------------------------------------------------
// orchestrator
struct Options {
  bool full = false, sweep = true;
  std::vector<std::string> workloads, traces, contenders;
  std::string csv, plot, dump_dir;
  std::vector<std::string> pass;  // forwarded to every worker
  int timeout_s = 600;
  int time_runs = 5;
};

void Usage(FILE *f) {
  fprintf(f,
          "usage: regcache-bench [options]\n"
          "  --full                 long version (10x the operations, bigger "
          "buffers)\n"
          "  --workloads A,B,...    subset of: ");
  for (auto &n : WorkloadNames()) fprintf(f, "%s ", n.c_str());
  fprintf(
      f,
      "\n"
      "  --trace FILE           also replay a trace (repeatable; format: "
      "docs/bench.md)\n"
      "  --dump-traces DIR      write every generator's trace to "
      "DIR/NAME.trace, exit\n"
      "  --contenders A,B,...   subset of: regcache ucx nocache prereg "
      "regcache-lru\n"
      "                         (default all but regcache-lru: regcache with "
      "REGCACHE_EVICTION=lru)\n"
      "  --no-sweep             only the default capacity (no hit-rate curve)\n"
      "  --csv FILE             every result as CSV\n"
      "  --plot FILE.svg        hit rate vs cache capacity per workload (SVG)\n"
      "  --driver pin|verbs     registration callbacks (default pin: mlock + "
      "cost)\n"
      "  --reg-ns N --page-ns N --dereg-ns N --dereg-page-ns N   the pin "
      "driver's busy wait\n"
      "                         (default: the cost model printed first; 0 0 0 "
      "0: host costs only)\n"
      "  --seed N  --scale K    generator seed; multiply the operation counts "
      "by K\n"
      "  --timeout S            per-run limit in seconds (default 600)\n"
      "  --time-runs N          runs of each cache at the default capacity, "
      "interleaved;\n"
      "                         ns/hit and ns/op are their medians (default "
      "5)\n");
}

std::vector<std::string> Split(const std::string &s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ','))
    if (!t.empty()) v.push_back(t);
  return v;
}

using regcache::bench::SelfDir;

// Runs one worker; fills r from its RESULT line.
void RunWorker(const std::string &exe, const std::vector<std::string> &args,
               bool ucx_env, int timeout_s, Result *r) {
  std::vector<std::string> env_s;
  for (char **e = environ; *e; e++) env_s.push_back(*e);
  if (ucx_env) {
    const char *defaults[] = {"UCX_MEM_MALLOC_HOOKS=no",
                              "UCX_MEM_MALLOC_RELOC=no", "UCX_MEM_EVENTS=yes",
                              "UCX_WARN_UNUSED_ENV_VARS=n"};
    for (const char *d : defaults) {
      std::string var(d, size_t(strchr(d, '=') - d));
      if (!getenv(var.c_str())) env_s.push_back(d);
    }
  }
  std::vector<char *> argv, envp;
  argv.push_back(const_cast<char *>(exe.c_str()));
  for (auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  for (auto &e : env_s) envp.push_back(const_cast<char *>(e.c_str()));
  envp.push_back(nullptr);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    r->error = "pipe failed";
    return;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  pid_t pid;
  int rc =
      posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    r->error = "cannot start " + exe + ": " + strerror(rc);
    return;
  }
  std::string out;
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  bool timed_out = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    if (poll(&p, 1, int(std::min<long long>(left, 1000))) <= 0) continue;
    char buf[4096];
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  std::istringstream ls(out);
  std::string line;
  bool found = false;
  while (std::getline(ls, line))
    if (ParseResult(line, r)) found = true;
  if (timed_out) {
    r->ok = false;
    r->error = "timed out after " + std::to_string(timeout_s) + " s";
  } else if (!found) {
    r->ok = false;
    r->error = WIFSIGNALED(status)
                   ? std::string("worker killed by signal ") +
                         strsignal(WTERMSIG(status))
                   : "worker printed no result (exit " +
                         std::to_string(WEXITSTATUS(status)) + ")";
  }
}

class Progress {
 public:
  explicit Progress(size_t total)
      : total_(total),
        t0_(std::chrono::steady_clock::now()),
        tty_(isatty(2) != 0) {}
  void Step(size_t done, const std::string &what) {
    double s = Elapsed();
    if (s < 3) return;
    if (tty_) {
      fprintf(stderr, "\r[%3zu/%zu] %5.1f s  %-48s", done, total_, s,
              what.c_str());
      shown_ = true;
    } else if (s - last_ >= 5) {
      fprintf(stderr, "regcache-bench: [%zu/%zu] %.0f s %s\n", done, total_, s,
              what.c_str());
      last_ = s;
    }
  }
  void Done() {
    if (shown_) fprintf(stderr, "\r%-80s\r", "");
  }
  double Elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_)
        .count();
  }

 private:
  size_t total_;
  std::chrono::steady_clock::time_point t0_;
  bool tty_, shown_ = false;
  double last_ = 0;
};

int Orchestrate(int argc, char **argv) {
  Options o;
  o.contenders = {"regcache", "ucx", "nocache", "prereg"};
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        fprintf(stderr, "regcache-bench: %s needs a value\n", a.c_str());
        exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 0;
    } else if (a == "--full") {
      o.full = true;
      o.pass.push_back(a);
    } else if (a == "--no-sweep") {
      o.sweep = false;
    } else if (a == "--workloads") {
      o.workloads = Split(val());
    } else if (a == "--trace") {
      o.traces.push_back(val());
    } else if (a == "--dump-traces") {
      o.dump_dir = val();
    } else if (a == "--contenders") {
      o.contenders = Split(val());
    } else if (a == "--csv") {
      o.csv = val();
    } else if (a == "--plot") {
      o.plot = val();
    } else if (a == "--timeout") {
      o.timeout_s = atoi(val().c_str());
    } else if (a == "--time-runs") {
      o.time_runs = std::max(1, atoi(val().c_str()));
    } else if (a == "--driver" || a == "--reg-ns" || a == "--page-ns" ||
               a == "--dereg-ns" || a == "--dereg-page-ns" || a == "--seed" ||
               a == "--scale") {
      o.pass.push_back(a);
      o.pass.push_back(val());
    } else {
      fprintf(stderr, "regcache-bench: unknown argument '%s'\n", a.c_str());
      Usage(stderr);
      return 2;
    }
  }
  if (o.workloads.empty() && o.traces.empty()) o.workloads = WorkloadNames();
  for (auto &c : o.contenders)
    if (c != "regcache" && c != "ucx" && c != "nocache" && c != "prereg" &&
        c != "regcache-lru") {
      fprintf(stderr, "regcache-bench: unknown contender '%s'\n", c.c_str());
      return 2;
    }

  if (!o.dump_dir.empty()) {
    GenParams gp;
    gp.full = o.full;
    for (size_t i = 0; i + 1 < o.pass.size(); i++) {
      if (o.pass[i] == "--seed")
        gp.seed = strtoull(o.pass[i + 1].c_str(), nullptr, 0);
      if (o.pass[i] == "--scale")
        gp.ops_scale = strtoull(o.pass[i + 1].c_str(), nullptr, 0);
    }
    for (auto &n : o.workloads) {
      Workload w;
      std::string err, path = o.dump_dir + "/" + n + ".trace";
      if (!MakeWorkload(n, gp, &w, &err) || !WriteTrace(path, w, &err)) {
        fprintf(stderr, "regcache-bench: %s\n", err.c_str());
        return 1;
      }
      printf("wrote %s (%zu operations)\n", path.c_str(), w.ops.size());
    }
    return 0;
  }

  const std::string dir = SelfDir();
  const std::string self = dir + "/regcache-bench";
  const std::string ucx_exe = dir + "/regcache-bench-ucx";
  const bool have_ucx = access(ucx_exe.c_str(), X_OK) == 0;

  struct Job {
    std::string workload, trace, contender;
    int level;
    int rep = 0;  // > 0: a repeat for the time columns only
  };
  std::vector<Job> jobs;
  std::vector<std::pair<std::string, std::string>> wl;  // name, trace
  for (auto &n : o.workloads) wl.push_back({n, ""});
  for (auto &t : o.traces) wl.push_back({t.substr(t.find_last_of('/') + 1), t});
  for (auto &[name, trace] : wl)
    for (auto &c : o.contenders) {
      bool sweeps =
          o.sweep && (c == "regcache" || c == "ucx" || c == "regcache-lru");
      for (int l = 0; l < kLevels; l++)
        if (sweeps || l == kDefaultLevel)
          jobs.push_back({name, trace, c, l, 0});
    }
  // The time columns (ns/hit, ns/op) of the caches at the default capacity:
  // time_runs runs each, the caches of a workload back to back, their order
  // reversed every round (no contender always runs first, on a machine that
  // just ran the other), and the median taken (MergeTimeRuns).
  std::vector<std::string> timed;
  for (auto &c : o.contenders)
    if (c == "regcache" || c == "ucx" || c == "regcache-lru")
      timed.push_back(c);
  for (int rep = 1; rep < o.time_runs; rep++)
    for (auto &[name, trace] : wl) {
      for (size_t k = 0; k < timed.size(); k++)
        jobs.push_back({name, trace, timed[rep % 2 ? timed.size() - 1 - k : k],
                        kDefaultLevel, rep});
    }

  printf("regcache-bench: %zu workloads x %zu contenders, %s run, driver %s\n",
         wl.size(), o.contenders.size(), o.full ? "full" : "quick", [&] {
           for (size_t i = 0; i + 1 < o.pass.size(); i++)
             if (o.pass[i] == "--driver") return o.pass[i + 1].c_str();
           return "pin";
         }());
  PrintCostModel(stdout);
  fflush(stdout);
  if (!have_ucx)
    fprintf(stderr,
            "regcache-bench: %s not built (no libucx-dev): no UCX column\n",
            ucx_exe.c_str());

  std::vector<Result> results;
  Progress progress(jobs.size());
  for (size_t j = 0; j < jobs.size(); j++) {
    const Job &job = jobs[j];
    progress.Step(j, job.workload + " " + job.contender + " capacity " +
                         std::to_string(job.level));
    Result r;
    r.workload = job.workload;
    r.contender = job.contender;
    r.level = job.level;
    r.cap = CapacityOfLevel(job.level);
    if (job.contender == "ucx" && !have_ucx) {
      r.error = "not built";
    } else {
      std::vector<std::string> args = {"--worker",   job.contender,
                                       "--workload", job.workload,
                                       "--level",    std::to_string(job.level)};
      if (!job.trace.empty()) {
        args.push_back("--trace");
        args.push_back(job.trace);
      }
      args.insert(args.end(), o.pass.begin(), o.pass.end());
      RunWorker(job.contender == "ucx" ? ucx_exe : self, args,
                job.contender == "ucx", o.timeout_s, &r);
    }
    if (!r.ok)
      fprintf(stderr, "regcache-bench: %s / %s / capacity %d: %s\n",
              job.workload.c_str(), job.contender.c_str(), job.level,
              r.error.c_str());
    results.push_back(r);
  }
  progress.Done();
  MergeTimeRuns(&results);

  std::vector<std::string> names;
  for (auto &w : wl) names.push_back(w.first);
  FitHostReplay(stdout, &results);
  PrintTable(stdout, names, o.contenders, results);
  printf("(%.1f s; machine: %s)\n", progress.Elapsed(),
         MachineDescription().c_str());
  int rc = 0;
  std::string err;
  if (!o.csv.empty()) {
    if (WriteCsv(o.csv, results, &err)) {
      printf("CSV: %s\n", o.csv.c_str());
    } else {
      fprintf(stderr, "regcache-bench: %s\n", err.c_str());
      rc = 1;
    }
  }
  if (!o.plot.empty()) {
    if (WriteSvg(o.plot, names, results, &err)) {
      printf("plot: %s\n", o.plot.c_str());
    } else {
      fprintf(stderr, "regcache-bench: %s\n", err.c_str());
      rc = 1;
    }
  }
  for (auto &r : results)
    if (!r.ok && r.error != "not built") rc = 1;
  return rc;
}

}  // namespace
}  // namespace rcbench

int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "--worker") == 0)
    return rcbench::WorkerMain(argc, argv, rcbench::MakeContender);
  return rcbench::Orchestrate(argc, argv);
}

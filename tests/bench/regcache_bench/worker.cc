// SPDX-License-Identifier: BSD-3-Clause
// A worker: one workload, one contender, one capacity, in a process of its own.
// Prints one RESULT line on stdout, which the orchestrator (main.cc) reads
// through a pipe.
#include <malloc.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>

#include "tests/bench/regcache_bench/bench.h"

namespace rcbench {
namespace {

class NoCache : public Contender {
 public:
  const char *name() const override { return "nocache"; }
  int Open(const Capacity &, std::string *) override { return 0; }
  int Get(void *addr, size_t len, unsigned access, void **handle) override {
    uint32_t lkey;
    uint64_t rkey;
    void *desc;
    return BenchReg(nullptr, addr, len, access, handle, &lkey, &rkey, &desc);
  }
  void Put(void *handle) override { BenchDereg(nullptr, handle); }
  void *RegHandle(void *handle) override { return handle; }
  void Close() override {}
};

// The limit: registration is free (buffers registered before the run, not
// counted).
class PreRegistered : public Contender {
 public:
  const char *name() const override { return "prereg"; }
  int Open(const Capacity &, std::string *) override { return 0; }
  int Get(void *addr, size_t, unsigned, void **handle) override {
    *handle = addr;
    return 0;
  }
  void Put(void *handle) override {
    asm volatile("" : : "r"(handle) : "memory");
  }
  void Close() override {}
};

bool ArgValue(int argc, char **argv, int *i, const char *name, std::string *v) {
  if (strcmp(argv[*i], name) != 0) return false;
  if (*i + 1 >= argc) {
    fprintf(stderr, "regcache-bench worker: %s needs a value\n", name);
    exit(2);
  }
  *v = argv[++*i];
  return true;
}

}  // namespace

Contender *NewNoCache() { return new NoCache; }
Contender *NewPreRegistered() { return new PreRegistered; }

std::string FormatResult(const Result &r) {
  char buf[2048];
  snprintf(
      buf, sizeof buf,
      "RESULT workload=%s contender=%s level=%d regions=%zu bytes=%zu "
      "gets=%" PRIu64 " hits=%" PRIu64 " errors=%" PRIu64 " regs=%" PRIu64
      " deregs=%" PRIu64 " peak=%" PRIu64 " stale=%" PRId64
      " hit_ns_sum=%.1f all_ns_sum=%.1f reg_model_ns=%.0f"
      " reg_real_ns=%.0f reg_pages=%" PRIu64 " timed_gets=%" PRIu64
      " timed_hits=%" PRIu64 " preempted=%" PRIu64 " wall=%.6f ok=%d extra=%s",
      r.workload.c_str(), r.contender.c_str(), r.level, r.cap.regions,
      r.cap.bytes, r.gets, r.hits, r.errors, r.regs, r.deregs, r.peak_pinned,
      r.stale_hits, r.hit_ns_sum, r.all_ns_sum, r.reg_model_ns, r.reg_real_ns,
      r.reg_pages, r.timed_gets, r.timed_hits, r.preempted, r.wall_s,
      r.ok ? 1 : 0, r.extra.empty() ? "-" : r.extra.c_str());
  std::string s = buf;
  if (!r.error.empty()) s += " error=" + r.error;
  return s;
}

bool ParseResult(const std::string &line, Result *r) {
  if (line.rfind("RESULT ", 0) != 0) return false;
  std::string rest = line.substr(7);
  auto epos = rest.find(" error=");
  if (epos != std::string::npos) {
    r->error = rest.substr(epos + 7);
    rest.resize(epos);
  }
  std::istringstream ss(rest);
  std::string kv;
  while (ss >> kv) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    auto u = [&] { return strtoull(v.c_str(), nullptr, 10); };
    if (k == "workload")
      r->workload = v;
    else if (k == "contender")
      r->contender = v;
    else if (k == "level")
      r->level = int(u());
    else if (k == "regions")
      r->cap.regions = u();
    else if (k == "bytes")
      r->cap.bytes = u();
    else if (k == "gets")
      r->gets = u();
    else if (k == "hits")
      r->hits = u();
    else if (k == "errors")
      r->errors = u();
    else if (k == "regs")
      r->regs = u();
    else if (k == "deregs")
      r->deregs = u();
    else if (k == "peak")
      r->peak_pinned = u();
    else if (k == "stale")
      r->stale_hits = strtoll(v.c_str(), nullptr, 10);
    else if (k == "hit_ns_sum")
      r->hit_ns_sum = strtod(v.c_str(), nullptr);
    else if (k == "all_ns_sum")
      r->all_ns_sum = strtod(v.c_str(), nullptr);
    else if (k == "reg_model_ns")
      r->reg_model_ns = strtod(v.c_str(), nullptr);
    else if (k == "reg_real_ns")
      r->reg_real_ns = strtod(v.c_str(), nullptr);
    else if (k == "reg_pages")
      r->reg_pages = strtoull(v.c_str(), nullptr, 10);
    else if (k == "timed_gets")
      r->timed_gets = u();
    else if (k == "timed_hits")
      r->timed_hits = u();
    else if (k == "preempted")
      r->preempted = u();
    else if (k == "wall")
      r->wall_s = strtod(v.c_str(), nullptr);
    else if (k == "ok")
      r->ok = v == "1";
    else if (k == "extra")
      r->extra = v == "-" ? "" : v;
  }
  return true;
}

int WorkerMain(int argc, char **argv, ContenderFactory make_contender) {
  std::string contender, workload, trace, level = "3", seed = "42", scale = "1";
  std::string regions = "32";
  bool full = false;
  RegConfig rc;
  std::string v;
  for (int i = 1; i < argc; i++) {
    if (ArgValue(argc, argv, &i, "--worker", &contender)) continue;
    if (ArgValue(argc, argv, &i, "--workload", &workload)) continue;
    if (ArgValue(argc, argv, &i, "--trace", &trace)) continue;
    if (ArgValue(argc, argv, &i, "--level", &level)) continue;
    if (ArgValue(argc, argv, &i, "--seed", &seed)) continue;
    if (ArgValue(argc, argv, &i, "--scale", &scale)) continue;
    if (ArgValue(argc, argv, &i, "--pool-regions", &regions)) continue;
    if (ArgValue(argc, argv, &i, "--driver", &rc.driver)) continue;
    if (ArgValue(argc, argv, &i, "--reg-ns", &v)) {
      rc.base_ns = strtoull(v.c_str(), nullptr, 0);
      continue;
    }
    if (ArgValue(argc, argv, &i, "--page-ns", &v)) {
      rc.page_ns = strtoull(v.c_str(), nullptr, 0);
      continue;
    }
    if (ArgValue(argc, argv, &i, "--dereg-ns", &v)) {
      rc.dereg_ns = strtoull(v.c_str(), nullptr, 0);
      continue;
    }
    if (ArgValue(argc, argv, &i, "--dereg-page-ns", &v)) {
      rc.dereg_page_ns = strtoull(v.c_str(), nullptr, 0);
      continue;
    }
    if (strcmp(argv[i], "--full") == 0) {
      full = true;
      continue;
    }
    fprintf(stderr, "regcache-bench worker: unknown argument '%s'\n", argv[i]);
    return 2;
  }
  // glibc's dynamic mmap threshold would turn every freed large buffer into
  // heap memory after the first one; a fixed threshold keeps the churn
  // workload's munmaps real (and the same in every contender's process).
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_TRIM_THRESHOLD, 128 * 1024);

  Result r;
  r.contender = contender;
  r.level = atoi(level.c_str());
  r.cap = CapacityOfLevel(r.level);
  std::string err;
  Workload w;
  GenParams gp;
  gp.full = full;
  gp.seed = strtoull(seed.c_str(), nullptr, 0);
  gp.ops_scale = strtoull(scale.c_str(), nullptr, 0);
  gp.default_regions = strtoull(regions.c_str(), nullptr, 0);
  bool ok = trace.empty() ? MakeWorkload(workload, gp, &w, &err)
                          : ReadTrace(trace, &w, &err);
  r.workload = !workload.empty() ? workload : w.name;
  std::unique_ptr<Contender> c;
  if (ok && CallbacksInit(rc, &err) != 0) ok = false;
  if (ok) {
    c.reset(make_contender(contender));
    if (!c) {
      err = "unknown contender '" + contender + "'";
      ok = false;
    }
  }
  if (ok && c->Open(r.cap, &err) != 0) ok = false;
  if (ok) {
    Execute(w, c.get(), &r);
    r.extra = c->Extra();
    c->Close();
    r.ok = true;
  } else {
    r.error = err;
  }
  c.reset();
  CallbacksFini();
  printf("%s\n", FormatResult(r).c_str());
  fflush(stdout);
  return r.ok ? 0 : 1;
}

}  // namespace rcbench

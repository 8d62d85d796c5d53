// SPDX-License-Identifier: BSD-3-Clause
#include "tests/bench/regcache_bench/report.h"

#include <gnu/libc-version.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

namespace rcbench {
namespace {

const Result *Find(const std::vector<Result> &rs, const std::string &w,
                   const std::string &c, int level) {
  for (const Result &r : rs)
    if (r.workload == w && r.contender == c && r.level == level && r.ok)
      return &r;
  return nullptr;
}

std::string Ratio(double v, double ucx, bool have_ucx) {
  if (!have_ucx) return "-";
  if (ucx == 0) return v == 0 ? "1.00" : "inf";
  char b[32];
  snprintf(b, sizeof b, "%.2f", v / ucx);
  return b;
}

std::string Bytes(double b) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) b /= 1024, i++;
  char s[32];
  snprintf(s, sizeof s, i ? "%.1f %s" : "%.0f %s", b, u[i]);
  return s;
}

std::string CapText(int level) {
  Capacity c = CapacityOfLevel(level);
  return std::to_string(c.regions) + "/" + Bytes(double(c.bytes));
}

std::string Xml(const std::string &s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else
      o += c;
  }
  return o;
}

bool Deterministic(const std::string &w) { return w != "threads"; }

// Issue 15's registration-time goal, priced by `field` (the cost model, or
// the host driver's measured cost of the same calls): >= 15 % below UCX's on
// >= 3 workloads at the default capacity and never above it (beyond `tol`) at
// any capacity of a deterministic workload. Also prints, per capacity, how
// many workloads are >= 15 % below.
void RegTimeGoal(FILE *f, const std::vector<std::string> &workloads,
                 const std::vector<Result> &results, const char *what,
                 double Result::*field, double tol, const char *why) {
  int cut = 0, higher = 0, have = 0, points = 0;
  std::string per, above, levels;
  for (int l = 0; l < kLevels; l++) {
    int n = 0, c = 0;
    for (const std::string &w : workloads) {
      const Result *r = Find(results, w, "regcache", l);
      const Result *u = Find(results, w, "ucx", l);
      if (!r || !u || u->*field <= 0) continue;
      n++;
      c += r->*field / (u->*field) <= 0.85;
    }
    if (!n) continue;
    char b[64];
    snprintf(b, sizeof b, " %s:%d", CapText(l).c_str(), c);
    levels += b;
  }
  for (const std::string &w : workloads) {
    const Result *r = Find(results, w, "regcache", kDefaultLevel);
    const Result *u = Find(results, w, "ucx", kDefaultLevel);
    if (r && u && u->*field > 0) {
      have++;
      const double x = r->*field / (u->*field);
      cut += x <= 0.85;
      char b[96];
      snprintf(b, sizeof b, " %s %.2f", w.c_str(), x);
      per += b;
    }
    if (!Deterministic(w)) continue;
    for (int l = 0; l < kLevels; l++) {
      const Result *rl = Find(results, w, "regcache", l);
      const Result *ul = Find(results, w, "ucx", l);
      if (!rl || !ul) continue;
      points++;
      if (rl->*field > ul->*field * (1 + tol)) {
        higher++;
        char b[96];
        snprintf(b, sizeof b, " %s@%s %.2f", w.c_str(), CapText(l).c_str(),
                 rl->*field / (ul->*field));
        above += b;
      }
    }
  }
  if (!have) return;
  fprintf(f,
          "Goal: %s x UCX at %s:%s; >= 15%% lower on %d workloads (need 3; "
          "per capacity:%s); higher (by > %.1f%%: %s) at %d of %d "
          "deterministic (workload, capacity) points%s%s: %s\n",
          what, CapText(kDefaultLevel).c_str(), per.c_str(), cut,
          levels.c_str(), 100 * tol, why, higher, points, higher ? ":" : "",
          above.c_str(), cut >= 3 && higher == 0 ? "met" : "NOT MET");
}

// Issue 15's goal lines (eviction policy), over every capacity of the sweep.
void PrintPolicyGoals(FILE *f, const std::vector<std::string> &workloads,
                      const std::vector<Result> &results) {
  // pool-over: hit rate >= 0.8 x capacity/pool (a fixed subset's hit rate).
  if (std::find(workloads.begin(), workloads.end(), "pool-over") !=
      workloads.end()) {
    const double pool = double(PoolBuffers("pool-over", GenParams()));
    int n = 0, bad = 0;
    std::string pts;
    for (int l = 0; l < kLevels; l++) {
      const Result *r = Find(results, "pool-over", "regcache", l);
      const Result *u = Find(results, "pool-over", "ucx", l);
      if (!r) continue;
      const double want =
          0.8 * std::min(1.0, double(CapacityOfLevel(l).regions) / pool);
      n++;
      bad += r->HitRate() + 1e-9 < want;
      char b[128];
      snprintf(b, sizeof b, " %zu:%.1f%%(>=%.1f%%,ucx %s)",
               CapacityOfLevel(l).regions, 100 * r->HitRate(), 100 * want,
               u ? (std::to_string(int(std::lround(100 * u->HitRate()))) + "%")
                       .c_str()
                 : "-");
      pts += b;
    }
    if (n)
      fprintf(f,
              "Goal: pool-over hit rate >= 0.8 x capacity/pool (pool %.0f) "
              "at every capacity:%s: %s\n",
              pool, pts.c_str(), bad ? "NOT MET" : "met");
  }
  RegTimeGoal(f, workloads, results, "modeled registration time (reg+dereg)",
              &Result::reg_model_ns, 0.005,
              "the model sums doubles in another order; a real difference is "
              "at least one registration");
  RegTimeGoal(f, workloads, results,
              "registration time at the host driver's real costs (the line "
              "fitted above, replayed on each run's calls and pages)",
              &Result::reg_host_replay_ns, 0.005, "the same as the model's");
}

// Issue 14's churn goal lines: ns per hit and ns per op <= UCX's in every
// workload at the default capacity (each the median of --time-runs runs,
// run delay subtracted; each line names the worst workload).
void PrintTimeGoals(FILE *f, const std::vector<std::string> &workloads,
                    const std::vector<Result> &results) {
  auto goal = [&](const char *what, double (Result::*ns)() const,
                  bool hits_only) {
    int have = 0, above = 0;
    double worst = 0;
    std::string worst_w, list;
    for (const std::string &w : workloads) {
      const Result *r = Find(results, w, "regcache", kDefaultLevel);
      const Result *u = Find(results, w, "ucx", kDefaultLevel);
      if (!r || !u || (hits_only && (!r->hits || !u->hits))) continue;
      if ((u->*ns)() <= 0) continue;
      const double x = (r->*ns)() / (u->*ns)();
      have++;
      above += x > 1.0;
      char b[96];
      snprintf(b, sizeof b, " %s %.2f", w.c_str(), x);
      list += b;
      if (x > worst) worst = x, worst_w = w;
    }
    if (have)
      fprintf(f,
              "Goal (issue 14): %s <= 1.0x UCX's in every workload at %s:%s; "
              "worst %s %.2fx, above at %d of %d: %s\n",
              what, CapText(kDefaultLevel).c_str(), list.c_str(),
              worst_w.c_str(), worst, above, have, above ? "NOT MET" : "met");
  };
  goal("ns/hit", &Result::HitNs, true);
  goal("ns/op", &Result::AllNs, false);
  // How the time columns were taken, and how much they moved between runs.
  int runs = 0;
  uint64_t timed = 0, preempted = 0;
  double spread = 0;
  std::string spread_at;
  for (const std::string &w : workloads)
    for (const char *c : {"regcache", "ucx"}) {
      const Result *r = Find(results, w, c, kDefaultLevel);
      if (!r) continue;
      runs = std::max(runs, r->time_runs);
      timed += r->timed_gets;
      preempted += r->preempted;
      if (r->time_runs > 1 && r->HitNs() > 0 &&
          (r->hit_ns_hi - r->hit_ns_lo) / r->HitNs() > spread) {
        spread = (r->hit_ns_hi - r->hit_ns_lo) / r->HitNs();
        spread_at = w + " " + c;
      }
    }
  if (runs)
    fprintf(f,
            "  (time columns: median of %d interleaved runs per cache; "
            "%llu get+put pairs had run delay (preemption) subtracted, of "
            "%llu per run; widest ns/hit spread over the runs: %.0f%% of the "
            "median, %s)\n",
            runs, (unsigned long long)preempted, (unsigned long long)timed,
            100 * spread, spread_at.empty() ? "-" : spread_at.c_str());
}

}  // namespace

void FitHostReplay(FILE *f, std::vector<Result> *results) {
  // y = a * calls + b * pages, least squares on relative error over every run
  // that registered something (all contenders: the same driver's work).
  double s11 = 0, s12 = 0, s22 = 0, s1y = 0, s2y = 0;
  int n = 0;
  for (const Result &r : *results) {
    const double calls = double(r.regs + r.deregs), pages = double(r.reg_pages);
    const double y = r.reg_real_ns;
    if (!r.ok || calls == 0 || y <= 0) continue;
    const double w = 1 / (y * y);
    s11 += w * calls * calls;
    s12 += w * calls * pages;
    s22 += w * pages * pages;
    s1y += w * calls * y;
    s2y += w * pages * y;
    n++;
  }
  const double det = s11 * s22 - s12 * s12;
  if (n < 2 || det == 0) {
    fprintf(f,
            "host driver's real costs: too few runs with registrations "
            "to fit (replay skipped)\n");
    return;
  }
  double a = (s1y * s22 - s2y * s12) / det, b = (s2y * s11 - s1y * s12) / det;
  if (a < 0) a = 0, b = s2y / s22;  // noise: keep the costs non-negative
  if (b < 0) b = 0, a = s1y / s11;
  std::vector<double> rel;
  for (Result &r : *results) {
    const double calls = double(r.regs + r.deregs), pages = double(r.reg_pages);
    r.reg_host_replay_ns = a * calls + b * pages;
    if (r.ok && calls > 0 && r.reg_real_ns > 0)
      rel.push_back(std::fabs(r.reg_host_replay_ns / r.reg_real_ns - 1));
  }
  std::sort(rel.begin(), rel.end());
  fprintf(
      f,
      "\nhost driver's real costs (the pin driver's own work: mlock/munlock "
      "and frame recording, busy wait excluded), fitted over the %d runs "
      "above: %.2f us per registration or deregistration + %.4f us per "
      "4 KiB page (median |residual| %.0f%%, 90th percentile %.0f%%); each "
      "run replayed at these costs gives the last goal line\n",
      n, a / 1000, b / 1000, 100 * rel[rel.size() / 2],
      100 * rel[rel.size() * 9 / 10]);
}

void PrintTable(FILE *f, const std::vector<std::string> &workloads,
                const std::vector<std::string> &contenders,
                const std::vector<Result> &results) {
  fprintf(f,
          "\nPer workload at the default capacity (%s regions/bytes), ratios "
          "(xucx) to UCX's ucs_rcache in the same run.\n"
          "ns/hit: get+put that registered nothing; ns/op: every get+put.\n"
          "stale: hits whose registration no longer maps the memory's page "
          "frames (-: not checked, needs root).\n",
          CapText(kDefaultLevel).c_str());
  for (const std::string &w : workloads) {
    fprintf(f, "\n%s\n", w.c_str());
    fprintf(f,
            "  %-12s %8s %5s %6s %8s %5s %8s %5s %11s %5s %9s %5s %9s %5s "
            "%9s %5s %9s %5s\n",
            "contender", "hit", "xucx", "stale", "regs", "xucx", "deregs",
            "xucx", "peak pinned", "xucx", "ns/hit", "xucx", "ns/op", "xucx",
            "model ms", "xucx", "host ms", "xucx");
    const Result *u = Find(results, w, "ucx", kDefaultLevel);
    for (const std::string &c : contenders) {
      const Result *r = Find(results, w, c, kDefaultLevel);
      if (!r) {
        fprintf(f, "  %-12s (no result)\n", c.c_str());
        continue;
      }
      char hit[16], nh[16], na[16], stale[24], mm[24], hm[24];
      snprintf(mm, sizeof mm, "%.1f", r->reg_model_ns / 1e6);
      snprintf(hm, sizeof hm, "%.1f", r->reg_real_ns / 1e6);
      snprintf(hit, sizeof hit, "%.2f%%", 100 * r->HitRate());
      snprintf(stale, sizeof stale, r->stale_hits < 0 ? "-" : "%lld",
               (long long)r->stale_hits);
      snprintf(nh, sizeof nh, r->hits ? "%.1f" : "-", r->HitNs());
      snprintf(na, sizeof na, "%.1f", r->AllNs());
      bool hu = u != nullptr;
      fprintf(
          f,
          "  %-12s %8s %5s %6s %8llu %5s %8llu %5s %11s %5s %9s %5s %9s %5s "
          "%9s %5s %9s %5s\n",
          c.c_str(), hit,
          Ratio(r->HitRate(), hu ? u->HitRate() : 0, hu).c_str(), stale,
          (unsigned long long)r->regs,
          Ratio(double(r->regs), hu ? double(u->regs) : 0, hu).c_str(),
          (unsigned long long)r->deregs,
          Ratio(double(r->deregs), hu ? double(u->deregs) : 0, hu).c_str(),
          Bytes(double(r->peak_pinned)).c_str(),
          Ratio(double(r->peak_pinned), hu ? double(u->peak_pinned) : 0, hu)
              .c_str(),
          nh,
          r->hits && hu && u->hits ? Ratio(r->HitNs(), u->HitNs(), true).c_str()
                                   : "-",
          na, Ratio(r->AllNs(), hu ? u->AllNs() : 0, hu).c_str(), mm,
          Ratio(r->reg_model_ns, hu ? u->reg_model_ns : 0, hu).c_str(), hm,
          Ratio(r->reg_real_ns, hu ? u->reg_real_ns : 0, hu).c_str());
    }
  }
  // Goal: hit rate >= UCX's on every workload at equal capacity.
  int points = 0, worse = 0;
  std::string below;
  for (const std::string &w : workloads)
    for (int l = 0; l < kLevels; l++) {
      if (!Deterministic(w)) continue;
      const Result *r = Find(results, w, "regcache", l);
      const Result *u = Find(results, w, "ucx", l);
      if (!r || !u) continue;
      points++;
      if (r->HitRate() + 1e-9 < u->HitRate()) {
        worse++;
        char b[160];
        snprintf(b, sizeof b, " %s@%s (%.2f%% vs %.2f%%)", w.c_str(),
                 CapText(l).c_str(), 100 * r->HitRate(), 100 * u->HitRate());
        below += b;
      }
    }
  if (points) {
    fprintf(f,
            "\nGoal: hit rate >= UCX's at equal capacity, every deterministic "
            "workload (all but threads): %d of %d (workload, capacity) points "
            "meet it%s%s: %s\n",
            points - worse, points, worse ? "; below:" : "", below.c_str(),
            worse ? "NOT MET" : "met");
  }
  PrintPolicyGoals(f, workloads, results);
  PrintTimeGoals(f, workloads, results);
}

void PrintCostModel(FILE *f) {
  namespace cost = regcache::cost;
  auto line = [&](const char *what, const cost::Line &l, const cost::Point *p,
                  size_t n) {
    fprintf(f,
            "  %-14s = %.1f us + %.4f us per 4 KiB page; measured (fit):", what,
            l.a_us, l.b_us);
    for (size_t i = 0; i < n; i++)
      fprintf(f, " %s %.1f (%.1f, %+.0f%%)",
              Bytes(double(p[i].pages) * 4096).c_str(), p[i].us,
              l.At(p[i].pages), 100 * (l.At(p[i].pages) / p[i].us - 1));
    fprintf(f, "\n");
  };
  fprintf(f,
          "cost model (regcache/cost_model.h: the rxe guest's medians, "
          "least squares on relative error):\n");
  line("ibv_reg_mr", cost::kReg, cost::kRegPoints, std::size(cost::kRegPoints));
  line("ibv_dereg_mr", cost::kDereg, cost::kDeregPoints,
       std::size(cost::kDeregPoints));
}

bool WriteCsv(const std::string &path, const std::vector<Result> &results,
              std::string *err) {
  FILE *f = fopen(path.c_str(), "w");
  if (!f) {
    *err = path + ": " + strerror(errno);
    return false;
  }
  fprintf(
      f,
      "workload,contender,level,max_regions,max_bytes,gets,hits,hit_rate,"
      "registrations,deregistrations,peak_pinned_bytes,ns_per_getput_hit,"
      "ns_per_getput_all,errors,wall_s,hit_rate_vs_ucx,registrations_vs_ucx,"
      "deregistrations_vs_ucx,peak_pinned_vs_ucx,ns_hit_vs_ucx,ns_all_vs_ucx,"
      "stale_hits,ok,extra,reg_model_ms,reg_host_ms,reg_model_vs_ucx,"
      "reg_host_vs_ucx,reg_pages,reg_host_replay_ms,reg_host_replay_vs_ucx\n");
  for (const Result &r : results) {
    const Result *u = Find(results, r.workload, "ucx", r.level);
    auto ratio = [&](double v, double uv) {
      if (!u || !r.ok) return std::string();
      return Ratio(v, uv, true);
    };
    fprintf(
        f,
        "%s,%s,%d,%zu,%zu,%llu,%llu,%.6f,%llu,%llu,%llu,%.2f,%.2f,%llu,%.4f,",
        r.workload.c_str(), r.contender.c_str(), r.level, r.cap.regions,
        r.cap.bytes, (unsigned long long)r.gets, (unsigned long long)r.hits,
        r.HitRate(), (unsigned long long)r.regs, (unsigned long long)r.deregs,
        (unsigned long long)r.peak_pinned, r.HitNs(), r.AllNs(),
        (unsigned long long)r.errors, r.wall_s);
    fprintf(
        f, "%s,%s,%s,%s,%s,%s,%s,%d,\"%s\",%.3f,%.3f,%s,%s,%llu,%.3f,%s\n",
        ratio(r.HitRate(), u ? u->HitRate() : 0).c_str(),
        ratio(double(r.regs), u ? double(u->regs) : 0).c_str(),
        ratio(double(r.deregs), u ? double(u->deregs) : 0).c_str(),
        ratio(double(r.peak_pinned), u ? double(u->peak_pinned) : 0).c_str(),
        (r.hits && u && u->hits) ? ratio(r.HitNs(), u->HitNs()).c_str() : "",
        ratio(r.AllNs(), u ? u->AllNs() : 0).c_str(),
        r.stale_hits < 0 ? "" : std::to_string(r.stale_hits).c_str(),
        r.ok ? 1 : 0, (r.ok ? r.extra : r.error).c_str(), r.reg_model_ns / 1e6,
        r.reg_real_ns / 1e6,
        ratio(r.reg_model_ns, u ? u->reg_model_ns : 0).c_str(),
        ratio(r.reg_real_ns, u ? u->reg_real_ns : 0).c_str(),
        (unsigned long long)r.reg_pages, r.reg_host_replay_ns / 1e6,
        ratio(r.reg_host_replay_ns, u ? u->reg_host_replay_ns : 0).c_str());
  }
  bool ok = fclose(f) == 0;
  if (!ok) *err = path + ": write failed";
  return ok;
}

bool WriteSvg(const std::string &path,
              const std::vector<std::string> &workloads,
              const std::vector<Result> &results, std::string *err) {
  const int cols = 4, pw = 300, ph = 230, ml = 46, mr = 12, mt = 28, mb = 42;
  const int rows = int((workloads.size() + cols - 1) / cols);
  const int W = cols * pw, H = rows * ph + 40;
  std::ofstream o(path);
  if (!o) {
    *err = path + ": cannot write";
    return false;
  }
  // UCX first, as a wide pale band; regcache on top, thin and dark: where the
  // two are equal regcache's line runs inside UCX's band, where they differ
  // both are visible.
  struct Series {
    const char *name, *color;
    int width;
    double opacity;
    const char *dash;
  } series[] = {{"ucx", "#ff7f0e", 6, 0.45, "none"},
                {"regcache", "#1f77b4", 2, 1.0, "none"},
                {"regcache-lru", "#2ca02c", 1, 1.0, "4,3"}};
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W
    << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"10\" y=\"18\" font-size=\"14\">regcache-bench: hit rate vs "
       "cache "
       "capacity (max regions / max bytes), same workload and "
       "callbacks</text>\n";
  for (size_t i = 0; i < std::size(series); i++)
    o << "<rect x=\"" << W - 330 + 110 * int(i) << "\" y=\"8\" width=\"14\" "
      << "height=\"" << std::max(2, series[i].width) << "\" fill=\""
      << series[i].color << "\" opacity=\"" << series[i].opacity
      << "\"/><text x=\"" << W - 312 + 110 * int(i) << "\" y=\"14\">"
      << series[i].name << "</text>\n";
  for (size_t k = 0; k < workloads.size(); k++) {
    const int x0 = int(k % cols) * pw, y0 = 30 + int(k / cols) * ph;
    const int px = x0 + ml, py = y0 + mt, w = pw - ml - mr, h = ph - mt - mb;
    o << "<text x=\"" << x0 + pw / 2 << "\" y=\"" << y0 + 18
      << "\" text-anchor=\"middle\" font-size=\"13\">" << Xml(workloads[k])
      << "</text>\n";
    o << "<rect x=\"" << px << "\" y=\"" << py << "\" width=\"" << w
      << "\" height=\"" << h << "\" fill=\"none\" stroke=\"#888\"/>\n";
    for (int t = 0; t <= 4; t++) {
      int y = py + h - h * t / 4;
      o << "<line x1=\"" << px << "\" x2=\"" << px + w << "\" y1=\"" << y
        << "\" y2=\"" << y << "\" stroke=\"#eee\"/><text x=\"" << px - 4
        << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << 25 * t
        << "%</text>\n";
    }
    auto X = [&](int l) { return px + w * l / (kLevels - 1); };
    for (int l = 0; l < kLevels; l++) {
      Capacity c = CapacityOfLevel(l);
      o << "<text x=\"" << X(l) << "\" y=\"" << py + h + 14
        << "\" text-anchor=\"middle\">" << c.regions << "</text><text x=\""
        << X(l) << "\" y=\"" << py + h + 26 << "\" text-anchor=\"middle\" "
        << "fill=\"#666\">" << Xml(Bytes(double(c.bytes))) << "</text>\n";
    }
    for (const Series &s : series) {
      std::string pts;
      for (int l = 0; l < kLevels; l++) {
        const Result *r = Find(results, workloads[k], s.name, l);
        if (!r) continue;
        char b[64];
        snprintf(b, sizeof b, "%d,%.1f ", X(l), py + h - h * r->HitRate());
        pts += b;
        o << "<circle cx=\"" << X(l) << "\" cy=\"" << py + h - h * r->HitRate()
          << "\" r=\"" << (s.width > 2 ? 4 : 2.5) << "\" fill=\"" << s.color
          << "\" opacity=\"" << s.opacity << "\"/>\n";
      }
      if (!pts.empty())
        o << "<polyline points=\"" << pts << "\" fill=\"none\" stroke=\""
          << s.color << "\" stroke-width=\"" << s.width << "\" opacity=\""
          << s.opacity << "\" stroke-dasharray=\"" << s.dash << "\"/>\n";
    }
  }
  o << "</svg>\n";
  o.close();
  if (!o) {
    *err = path + ": write failed";
    return false;
  }
  return true;
}

std::string MachineDescription() {
  std::string model = "unknown CPU";
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  utsname u{};
  uname(&u);
  char b[512];
  snprintf(b, sizeof b, "%ld x %s, Linux %s, glibc %s",
           sysconf(_SC_NPROCESSORS_ONLN), model.c_str(), u.release,
           gnu_get_libc_version());
  return b;
}

}  // namespace rcbench

// SPDX-License-Identifier: BSD-3-Clause
#include "tests/bench/regcache_bench/report.h"

#include <gnu/libc-version.h>
#include <sys/utsname.h>
#include <unistd.h>

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

}  // namespace

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
    fprintf(f, "  %-9s %8s %5s %6s %8s %5s %8s %5s %11s %5s %9s %5s %9s %5s\n",
            "contender", "hit", "xucx", "stale", "regs", "xucx", "deregs",
            "xucx", "peak pinned", "xucx", "ns/hit", "xucx", "ns/op", "xucx");
    const Result *u = Find(results, w, "ucx", kDefaultLevel);
    for (const std::string &c : contenders) {
      const Result *r = Find(results, w, c, kDefaultLevel);
      if (!r) {
        fprintf(f, "  %-9s (no result)\n", c.c_str());
        continue;
      }
      char hit[16], nh[16], na[16], stale[24];
      snprintf(hit, sizeof hit, "%.2f%%", 100 * r->HitRate());
      snprintf(stale, sizeof stale, r->stale_hits < 0 ? "-" : "%lld",
               (long long)r->stale_hits);
      snprintf(nh, sizeof nh, r->hits ? "%.1f" : "-", r->HitNs());
      snprintf(na, sizeof na, "%.1f", r->AllNs());
      bool hu = u != nullptr;
      fprintf(
          f,
          "  %-9s %8s %5s %6s %8llu %5s %8llu %5s %11s %5s %9s %5s %9s %5s\n",
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
          na, Ratio(r->AllNs(), hu ? u->AllNs() : 0, hu).c_str());
    }
  }
  // Goal: hit rate >= UCX's on every workload at equal capacity.
  int points = 0, worse = 0;
  std::string below;
  for (const std::string &w : workloads)
    for (int l = 0; l < kLevels; l++) {
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
            "\nGoal: hit rate >= UCX's at equal capacity: %d of %d (workload, "
            "capacity) points meet it%s%s\n",
            points - worse, points, worse ? "; below:" : "", below.c_str());
  }
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
      "stale_hits,ok,extra\n");
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
        f, "%s,%s,%s,%s,%s,%s,%s,%d,\"%s\"\n",
        ratio(r.HitRate(), u ? u->HitRate() : 0).c_str(),
        ratio(double(r.regs), u ? double(u->regs) : 0).c_str(),
        ratio(double(r.deregs), u ? double(u->deregs) : 0).c_str(),
        ratio(double(r.peak_pinned), u ? double(u->peak_pinned) : 0).c_str(),
        (r.hits && u && u->hits) ? ratio(r.HitNs(), u->HitNs()).c_str() : "",
        ratio(r.AllNs(), u ? u->AllNs() : 0).c_str(),
        r.stale_hits < 0 ? "" : std::to_string(r.stale_hits).c_str(),
        r.ok ? 1 : 0, (r.ok ? r.extra : r.error).c_str());
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
  struct Series {
    const char *name, *color;
  } series[] = {{"regcache", "#1f77b4"}, {"ucx", "#ff7f0e"}};
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W
    << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"10\" y=\"18\" font-size=\"14\">regcache-bench: hit rate vs "
       "cache "
       "capacity (max regions / max bytes), same workload and "
       "callbacks</text>\n";
  for (size_t i = 0; i < std::size(series); i++)
    o << "<rect x=\"" << W - 220 + 100 * int(i) << "\" y=\"8\" width=\"14\" "
      << "height=\"4\" fill=\"" << series[i].color << "\"/><text x=\""
      << W - 202 + 100 * int(i) << "\" y=\"14\">" << series[i].name
      << "</text>\n";
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
          << "\" r=\"3\" fill=\"" << s.color << "\"/>\n";
      }
      if (!pts.empty())
        o << "<polyline points=\"" << pts << "\" fill=\"none\" stroke=\""
          << s.color << "\" stroke-width=\"2\" opacity=\"0.8\"/>\n";
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

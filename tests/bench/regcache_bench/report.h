/* SPDX-License-Identifier: BSD-3-Clause */
// regcache-bench output: the table (stdout), the CSV and the SVG plot.
#ifndef REGCACHE_TESTS_BENCH_REGCACHE_BENCH_REPORT_H
#define REGCACHE_TESTS_BENCH_REGCACHE_BENCH_REPORT_H

#include <cstdio>
#include <string>
#include <vector>

#include "tests/bench/regcache_bench/bench.h"

namespace rcbench {

// Per workload: one row per contender at the default capacity, each number with
// its ratio to UCX's in the same run; then the hit-rate comparison over every
// capacity.
// Fits the host driver's measured registration time of every run to
// a * (registrations + deregistrations) + b * pages, prints the fit, and sets
// each run's reg_host_replay_ns: its calls and pages at those costs (the same
// decisions priced at the host driver's real costs, without the run-to-run
// noise of one measurement).
void FitHostReplay(FILE *f, std::vector<Result> *results);
void PrintTable(FILE *f, const std::vector<std::string> &workloads,
                const std::vector<std::string> &contenders,
                const std::vector<Result> &results);
bool WriteCsv(const std::string &path, const std::vector<Result> &results,
              std::string *err);
// One panel per workload: hit rate (y) vs capacity level (x), one line per
// cache.
bool WriteSvg(const std::string &path,
              const std::vector<std::string> &workloads,
              const std::vector<Result> &results, std::string *err);
// The cost model (regcache/cost_model.h): measured points, fit, residuals.
void PrintCostModel(FILE *f);
// "2 x AMD EPYC ..., Linux 6.1, glibc 2.36" (for the report and docs/bench.md).
std::string MachineDescription();

}  // namespace rcbench

#endif  // REGCACHE_TESTS_BENCH_REGCACHE_BENCH_REPORT_H

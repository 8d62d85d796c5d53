// SPDX-License-Identifier: BSD-3-Clause
// A cache's statistics: the snapshot, regcache_print_stats and the
// REGCACHE_STATS=y line. The field list is stats_fields.h's, once.
#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "regcache/cache.h"
#include "regcache/log.h"

namespace regcache::core {

uint64_t CacheCore::SlotSum(std::atomic<uint64_t> HitSlot::*member) const {
  uint64_t sum = 0;
  for (const HitSlot &slot : hit_slots_)
    sum += (slot.*member).load(std::memory_order_relaxed);
  return sum;
}

void CacheCore::GetStats(regcache_stats_t *s) {
  std::memset(s, 0, sizeof(*s));
  uint64_t hits = SlotSum(&HitSlot::n);
  const uint64_t misses = SlotSum(&HitSlot::misses);
  const uint64_t registrations = SlotSum(&HitSlot::registrations);
  const uint64_t regions = SlotSum(&HitSlot::regions);
  {
    MutexLock l(&mu_);
    hits += slow_hits_;
    s->pending = dead_.n + orphans_.size();
  }
  s->pending += static_cast<uint64_t>(pending_.Size());
  s->hits = hits;
  // Slots read one after another: while other threads register and
  // deregister, the sum is off by the changes that raced the reads (exact
  // when nothing runs concurrently); a sum below zero (wrapped) reads as 0.
  s->regions = static_cast<int64_t>(regions) < 0 ? 0 : regions;
#define REGCACHE_STATS_COPY(f) s->f = stats_.f.load(std::memory_order_relaxed);
  REGCACHE_STATS_COUNTERS(REGCACHE_STATS_COPY)
#undef REGCACHE_STATS_COPY
  s->misses += misses;
  s->registrations += registrations;
  // Recorded only where bytes drops (DropBytes): a peak not dropped from yet
  // is the current value.
  if (s->bytes > s->peak_bytes) s->peak_bytes = s->bytes;
}

int CacheCore::PrintStats(FILE *f) {
  regcache_stats_t s;
  GetStats(&s);
#define REGCACHE_STATS_ROW(field)                                 \
  if (std::fprintf(f, "%s %s %llu\n", name().c_str(), #field,     \
                   static_cast<unsigned long long>(s.field)) < 0) \
    return -EIO;
  REGCACHE_STATS_FIELDS(REGCACHE_STATS_ROW)
#undef REGCACHE_STATS_ROW
  return 0;
}

void CacheCore::MaybePrintStatsOnce() {
  if (!params_.print_stats || stats_printed_.exchange(true)) return;
  regcache_stats_t s;
  GetStats(&s);
  std::string line = fmt::format("cache {} stats:", name());
#define REGCACHE_STATS_WORD(f) line += fmt::format(" " #f " {}", s.f);
  REGCACHE_STATS_FIELDS(REGCACHE_STATS_WORD)
#undef REGCACHE_STATS_WORD
  if (log::Enabled(REGCACHE_LOG_INFO)) {
    log::Write(REGCACHE_LOG_INFO, line);
  } else {
    std::fprintf(stderr, "[regcache] %s\n", line.c_str());
  }
}

// The counts a miss keeps (miss.cc), here beside the snapshot that reads them.
void CacheCore::CountRegistered(uint64_t len) {
  CountInSlot(&HitSlot::registrations);
  CountInSlot(&HitSlot::regions);
  // peak_bytes is recorded where bytes drops (DropBytes), not here: growth
  // to a new peak on every miss was a compare-exchange per miss.
  stats_.bytes.fetch_add(len, std::memory_order_relaxed);
}

void CacheCore::DropBytes(uint64_t len) {
  // Every change of bytes is one read-modify-write, so the value just before
  // each drop is exact: the highest bytes ever seen is the highest of those
  // and the current value (GetStats takes the max).
  const uint64_t before =
      stats_.bytes.fetch_sub(len, std::memory_order_relaxed);
  uint64_t peak = stats_.peak_bytes.load(std::memory_order_relaxed);
  while (before > peak && !stats_.peak_bytes.compare_exchange_weak(
                              peak, before, std::memory_order_relaxed)) {
  }
}

}  // namespace regcache::core

// SPDX-License-Identifier: BSD-3-Clause
// The workload generators of issue 7 and the trace reader/writer (format:
// docs/bench.md).
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>

#include <regcache/regcache.h>

#include "tests/bench/regcache_bench/bench.h"

namespace rcbench {
namespace {

constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;
constexpr unsigned kSend = REGCACHE_ACCESS_LOCAL_WRITE;
constexpr unsigned kRecv =
    REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_WRITE;
constexpr unsigned kRead = REGCACHE_ACCESS_REMOTE_READ;

class Builder {
 public:
  explicit Builder(Workload *w) : w_(w) {}
  uint32_t Map(uint64_t len) {
    uint32_t id = w_->nbufs++;
    w_->ops.push_back({OpKind::kMap, 0, 0, id, 0, len});
    return id;
  }
  uint32_t Malloc(uint64_t len, uint16_t t = 0) {
    uint32_t id = w_->nbufs++;
    w_->ops.push_back({OpKind::kMalloc, 0, t, id, 0, len});
    return id;
  }
  void Free(uint32_t id, uint16_t t = 0) {
    w_->ops.push_back({OpKind::kFree, 0, t, id, 0, 0});
  }
  void GetPut(uint32_t id, uint64_t off, uint64_t len, unsigned access,
              uint16_t t = 0) {
    w_->ops.push_back(
        {OpKind::kGet, static_cast<uint8_t>(access), t, id, off, len});
    w_->ops.push_back({OpKind::kPut, 0, t, id, off, len});
  }

 private:
  Workload *w_;
};

// Log-uniform in [lo, hi].
uint64_t LogUniform(std::mt19937_64 &rng, uint64_t lo, uint64_t hi) {
  std::uniform_real_distribution<double> d(std::log(double(lo)),
                                           std::log(double(hi)));
  return std::clamp<uint64_t>(uint64_t(std::exp(d(rng))), lo, hi);
}

uint64_t NumOps(const GenParams &p) {
  return (p.full ? 200000 : 10000) * std::max<uint64_t>(1, p.ops_scale);
}

void PingPong(const GenParams &p, Workload *w) {
  w->description = "ping-pong: one 64 KiB buffer, get+put again and again";
  Builder b(w);
  uint32_t buf = b.Map(64 * kKiB);
  for (uint64_t i = 0, n = NumOps(p); i < n; i++)
    b.GetPut(buf, 0, 64 * kKiB, kSend);
}

void Pool(const GenParams &p, Workload *w, size_t nbufs, const char *what) {
  w->description = "rotating pool of " + std::to_string(nbufs) +
                   " buffers of 64 KiB (" + what + " the default capacity of " +
                   std::to_string(p.default_regions) + " regions)";
  Builder b(w);
  std::vector<uint32_t> bufs;
  for (size_t i = 0; i < nbufs; i++) bufs.push_back(b.Map(64 * kKiB));
  for (uint64_t i = 0, n = NumOps(p); i < n; i++)
    b.GetPut(bufs[i % nbufs], 0, 64 * kKiB, i % 2 ? kRecv : kSend);
}

void SubRanges(const GenParams &p, Workload *w) {
  const uint64_t size = (p.full ? 256 : 32) * kMiB;
  w->description = "random sub-ranges (4 KiB .. 1 MiB, any alignment) of one " +
                   std::to_string(size / kMiB) + " MiB buffer";
  Builder b(w);
  uint32_t buf = b.Map(size);
  std::mt19937_64 rng(p.seed);
  for (uint64_t i = 0, n = NumOps(p); i < n; i++) {
    uint64_t len = LogUniform(rng, 4 * kKiB, kMiB);
    uint64_t off = std::uniform_int_distribution<uint64_t>(0, size - len)(rng);
    b.GetPut(buf, off, len, kSend);
  }
}

void Growing(const GenParams &p, Workload *w) {
  const int nsizes = p.full ? 17 : 15;  // 1 KiB << 0 .. 16 (quick: .. 14)
  const uint64_t max_len = kKiB << (nsizes - 1);
  w->description = "growing message sizes 1 KiB .. " +
                   std::to_string(max_len / kMiB) +
                   " MiB from the start of one buffer";
  Builder b(w);
  uint32_t buf = b.Map(max_len);
  // Quick: a third of the operations (each miss pins up to 16 MiB).
  uint64_t reps = std::max<uint64_t>(1, NumOps(p) / nsizes / (p.full ? 1 : 3));
  for (int k = 0; k < nsizes; k++)
    for (uint64_t i = 0; i < reps; i++) b.GetPut(buf, 0, kKiB << k, kSend);
}

void Churn(const GenParams &p, Workload *w) {
  const uint64_t max_len = (p.full ? 4 : 1) * kMiB;
  w->description =
      "malloc/free churn through glibc: 16 live message buffers, 1 KiB .. " +
      std::to_string(max_len / kMiB) +
      " MiB, oldest freed (mmap threshold fixed at 128 KiB: real munmaps)";
  Builder b(w);
  std::mt19937_64 rng(p.seed);
  std::vector<std::pair<uint32_t, uint64_t>> live;  // id, len
  const size_t window = 16;
  uint64_t n = NumOps(p);
  for (uint64_t i = 0; i < n;) {
    uint64_t len = LogUniform(rng, kKiB, max_len);
    uint32_t id = b.Malloc(len);
    live.push_back({id, len});
    int uses = 1 + int(rng() % 3);
    for (int u = 0; u < uses && i < n; u++, i++) b.GetPut(id, 0, len, kSend);
    if (i < n) {  // a message from an older live buffer
      auto &o = live[rng() % live.size()];
      b.GetPut(o.first, 0, o.second, kRecv);
      i++;
    }
    if (live.size() > window) {
      b.Free(live.front().first);
      live.erase(live.begin());
    }
  }
  for (auto &l : live) b.Free(l.first);
}

void Flags(const GenParams &p, Workload *w) {
  w->description =
      "8 buffers of 256 KiB, access alternating local write / remote "
      "read+write";
  Builder b(w);
  std::vector<uint32_t> bufs;
  for (int i = 0; i < 8; i++) bufs.push_back(b.Map(256 * kKiB));
  std::mt19937_64 rng(p.seed);
  for (uint64_t i = 0, n = NumOps(p); i < n; i++)
    b.GetPut(bufs[rng() % bufs.size()], 0, 256 * kKiB,
             i % 2 ? (REGCACHE_ACCESS_REMOTE_WRITE | kRead) : kSend);
}

void Threads(const GenParams &p, Workload *w) {
  const uint16_t nthreads = 2;
  w->nthreads = nthreads;
  w->description =
      "2 threads: 8 shared + 8 private 64 KiB buffers each, half the gets "
      "shared";
  Builder b(w);
  std::vector<uint32_t> shared;
  std::vector<std::vector<uint32_t>> priv(nthreads);
  for (int i = 0; i < 8; i++) shared.push_back(b.Map(64 * kKiB));
  for (auto &v : priv)
    for (int i = 0; i < 8; i++) v.push_back(b.Map(64 * kKiB));
  std::mt19937_64 rng(p.seed);
  for (uint64_t i = 0, n = NumOps(p); i < n; i++) {
    uint16_t t = uint16_t(i % nthreads);
    uint32_t id = rng() % 2 ? shared[rng() % shared.size()]
                            : priv[t][rng() % priv[t].size()];
    b.GetPut(id, 0, 64 * kKiB, i % 3 ? kSend : kRecv, t);
  }
}

// Many small eager buffers and a few large rendezvous buffers (issue 15):
// an MPI rank's point-to-point traffic under a transport that registers user
// buffers for zero-copy at both sizes (UCX's zcopy eager from a few KiB, its
// rendezvous above UCX_RNDV_THRESH): per-peer message buffers of a sparse
// exchange plus the blocks of a large exchange.
void Mixed(const GenParams &p, Workload *w) {
  const size_t nsmall = p.default_regions * 2, nlarge = 4;
  const uint64_t large = (p.full ? 8 : 4) * kMiB;
  w->description = std::to_string(nsmall) +
                   " small (4..16 KiB) eager buffers, 80 % of the gets, and " +
                   std::to_string(nlarge) + " rendezvous buffers of " +
                   std::to_string(large / kMiB) + " MiB, 20 %";
  Builder b(w);
  std::mt19937_64 rng(p.seed);
  std::vector<std::pair<uint32_t, uint64_t>> small, big;
  for (size_t i = 0; i < nsmall; i++) {
    const uint64_t len = 4 * kKiB << (rng() % 3);  // 4, 8 or 16 KiB
    small.push_back({b.Map(len), len});
  }
  for (size_t i = 0; i < nlarge; i++) big.push_back({b.Map(large), large});
  for (uint64_t i = 0, n = NumOps(p); i < n; i++) {
    const auto &[id, len] =
        rng() % 5 ? small[rng() % small.size()] : big[rng() % big.size()];
    b.GetPut(id, 0, len, i % 2 ? kRecv : kSend);
  }
}

// Halo exchange (issue 15): a 3-D 19-point stencil (e.g. a finite-difference
// or lattice-Boltzmann code): every step receives from and sends to the 6
// face and 12 edge neighbours, from the same buffers in the same order. Faces
// of a 128 x 256 doubles slab are 256 KiB, edges 2 KiB. 36 buffers: more than
// the default 32 regions, so LRU replays a loop it cannot hold.
void Halo(const GenParams &p, Workload *w) {
  w->description =
      "halo exchange, 3-D 19-point stencil: 6 faces of 256 KiB + 12 edges of "
      "2 KiB, send and receive buffer each (36), same order every step";
  Builder b(w);
  std::vector<std::pair<uint32_t, uint64_t>> recv, send;
  for (int i = 0; i < 18; i++) {
    const uint64_t len = i < 6 ? 256 * kKiB : 2 * kKiB;
    recv.push_back({b.Map(len), len});
    send.push_back({b.Map(len), len});
  }
  for (uint64_t i = 0, n = NumOps(p); i < n;) {
    for (auto &[id, len] : recv)
      if (i++ < n) b.GetPut(id, 0, len, kRecv);
    for (auto &[id, len] : send)
      if (i++ < n) b.GetPut(id, 0, len, kSend);
  }
}

// Scan (issue 15): reuse phases (a working set of 24 message buffers of
// 128 KiB, cycled) separated by one-off passes over a 64 MiB array in 1 MiB
// chunks, each chunk registered once: a checkpoint or an I/O staging pass
// (MPI-IO collective buffering registers each chunk of the user array), or a
// redistribution of a large array between compute phases.
void Scan(const GenParams &p, Workload *w) {
  const uint64_t array = (p.full ? 256 : 64) * kMiB, chunk = kMiB;
  const int phases = 3;
  w->description =
      "3 reuse phases (24 buffers of 128 KiB, cycled) with a one-off pass "
      "over a " +
      std::to_string(array / kMiB) + " MiB array in 1 MiB chunks between them";
  Builder b(w);
  std::vector<uint32_t> set;
  for (int i = 0; i < 24; i++) set.push_back(b.Map(128 * kKiB));
  const uint32_t big = b.Map(array);
  const uint64_t scan_ops = array / chunk;
  const uint64_t n = NumOps(p);
  const uint64_t per_phase =
      (n - std::min(n, (phases - 1) * scan_ops)) / phases;
  for (int ph = 0; ph < phases; ph++) {
    for (uint64_t i = 0; i < per_phase; i++)
      b.GetPut(set[i % set.size()], 0, 128 * kKiB, i % 2 ? kRecv : kSend);
    if (ph + 1 < phases)
      for (uint64_t c = 0; c < scan_ops; c++)
        b.GetPut(big, c * chunk, chunk, kSend);
  }
}

// ------------------------------------------------------------------ trace
// format
std::string AccessText(unsigned a) {
  if (a == 0) return "r";
  std::string s;
  const char *names[] = {"lw", "rr", "rw", "ra"};
  for (int i = 0; i < 4; i++)
    if (a & (1u << i)) s += (s.empty() ? "" : "+") + std::string(names[i]);
  return s;
}

bool ParseAccess(const std::string &s, unsigned *a) {
  if (s.rfind("0x", 0) == 0 || (!s.empty() && isdigit(s[0]))) {
    char *end;
    unsigned long v = strtoul(s.c_str(), &end, 0);
    if (*end || v > REGCACHE_ACCESS_ALL) return false;
    *a = unsigned(v);
    return true;
  }
  *a = 0;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, '+')) {
    if (tok == "r") continue;
    if (tok == "lw")
      *a |= REGCACHE_ACCESS_LOCAL_WRITE;
    else if (tok == "rr")
      *a |= REGCACHE_ACCESS_REMOTE_READ;
    else if (tok == "rw")
      *a |= REGCACHE_ACCESS_REMOTE_WRITE;
    else if (tok == "ra")
      *a |= REGCACHE_ACCESS_REMOTE_ATOMIC;
    else
      return false;
  }
  return true;
}

}  // namespace

const std::vector<std::string> &WorkloadNames() {
  static const std::vector<std::string> names = {
      "pingpong", "pool-fit", "pool-over", "subrange", "growing", "churn",
      "flags",    "threads",  "mixed",     "halo",     "scan"};
  return names;
}

size_t PoolBuffers(const std::string &name, const GenParams &p) {
  if (name == "pool-fit") return p.default_regions * 3 / 4;
  if (name == "pool-over") return p.default_regions * 3 / 2;
  return 0;
}

bool MakeWorkload(const std::string &name, const GenParams &p, Workload *w,
                  std::string *err) {
  *w = Workload();
  w->name = name;
  if (name == "pingpong")
    PingPong(p, w);
  else if (name == "pool-fit")
    Pool(p, w, PoolBuffers(name, p), "below");
  else if (name == "pool-over")
    Pool(p, w, PoolBuffers(name, p), "above");
  else if (name == "subrange")
    SubRanges(p, w);
  else if (name == "growing")
    Growing(p, w);
  else if (name == "churn")
    Churn(p, w);
  else if (name == "flags")
    Flags(p, w);
  else if (name == "threads")
    Threads(p, w);
  else if (name == "mixed")
    Mixed(p, w);
  else if (name == "halo")
    Halo(p, w);
  else if (name == "scan")
    Scan(p, w);
  else {
    *err = "unknown workload '" + name + "'";
    return false;
  }
  return true;
}

bool WriteTrace(const std::string &path, const Workload &w, std::string *err) {
  FILE *f = fopen(path.c_str(), "w");
  if (!f) {
    *err = path + ": " + strerror(errno);
    return false;
  }
  fprintf(f, "# regcache-bench trace: %s\n# %s\n", w.name.c_str(),
          w.description.c_str());
  // Synthetic addresses: every buffer gets its own page-aligned range.
  std::vector<uint64_t> base(w.nbufs, 0);
  uint64_t next = 0x100000000ull;
  auto assign = [&](uint32_t id, uint64_t len) {
    base[id] = next;
    next += (len + 4095) / 4096 * 4096 + 4096;
  };
  for (const Op &op : w.ops) {
    char tsuffix[16] = "";
    if (op.thread) snprintf(tsuffix, sizeof tsuffix, " %u", op.thread);
    switch (op.kind) {
      case OpKind::kMap:
        assign(op.buf, op.len);
        fprintf(f, "mmap 0x%" PRIx64 " %" PRIu64 "%s\n", base[op.buf], op.len,
                tsuffix);
        break;
      case OpKind::kMalloc:
        assign(op.buf, op.len);
        fprintf(f, "malloc 0x%" PRIx64 " %" PRIu64 "%s\n", base[op.buf], op.len,
                tsuffix);
        break;
      case OpKind::kGet:
        fprintf(f, "get 0x%" PRIx64 " %" PRIu64 " %s%s\n",
                base[op.buf] + op.off, op.len, AccessText(op.access).c_str(),
                tsuffix);
        break;
      case OpKind::kPut:
        fprintf(f, "put 0x%" PRIx64 " %" PRIu64 "%s\n", base[op.buf] + op.off,
                op.len, tsuffix);
        break;
      case OpKind::kFree:
        fprintf(f, "free 0x%" PRIx64 "%s\n", base[op.buf], tsuffix);
        break;
      case OpKind::kMunmap:
        fprintf(f, "munmap 0x%" PRIx64 " %" PRIu64 "%s\n",
                base[op.buf] + op.off, op.len, tsuffix);
        break;
    }
  }
  bool ok = fclose(f) == 0;
  if (!ok) *err = path + ": write failed";
  return ok;
}

bool ReadTrace(const std::string &path, Workload *w, std::string *err) {
  std::ifstream in(path);
  if (!in) {
    *err = path + ": cannot open";
    return false;
  }
  *w = Workload();
  w->name = path.substr(path.find_last_of('/') + 1);
  w->description = "trace " + path;
  // Live buffers by trace address (start -> id, len). Ranges outside every
  // declared buffer go to one implicit arena mapped over their span (offsets
  // preserved).
  struct Live {
    uint32_t id;
    uint64_t len;
  };
  std::map<uint64_t, Live> live;
  const uint32_t kArena = UINT32_MAX;
  uint64_t arena_lo = UINT64_MAX, arena_hi = 0;
  std::vector<uint64_t>
      arena_addr;  // per op using the arena: its trace address
  std::string line;
  int lineno = 0;
  auto fail = [&](const std::string &what) {
    *err = path + ":" + std::to_string(lineno) + ": " + what;
    return false;
  };
  while (std::getline(in, line)) {
    lineno++;
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream ls(line);
    std::string op;
    if (!(ls >> op)) continue;
    std::string a1, a2, a3, a4;
    ls >> a1 >> a2 >> a3 >> a4;
    auto num = [](const std::string &s, uint64_t *v) {
      if (s.empty()) return false;
      char *end;
      *v = strtoull(s.c_str(), &end, 0);
      return *end == 0;
    };
    uint64_t addr = 0, len = 0, thread = 0;
    if (!num(a1, &addr)) return fail("bad address '" + a1 + "'");
    Op o{OpKind::kGet, 0, 0, 0, 0, 0};
    std::string tstr;
    if (op == "free") {
      tstr = a2;
    } else {
      if (!num(a2, &len) || len == 0) return fail("bad length '" + a2 + "'");
      tstr = op == "get" ? a4 : a3;
    }
    if (!tstr.empty() && (!num(tstr, &thread) || thread > 255))
      return fail("bad thread '" + tstr + "'");
    o.thread = uint16_t(thread);
    w->nthreads = std::max<uint32_t>(w->nthreads, uint32_t(thread) + 1);
    auto find = [&](uint64_t a, uint64_t l, Live **out) -> bool {
      auto it = live.upper_bound(a);
      if (it == live.begin()) return false;
      --it;
      if (a + l > it->first + it->second.len) return false;
      *out = &it->second;
      return true;
    };
    if (op == "mmap" || op == "malloc") {
      o.kind = op == "mmap" ? OpKind::kMap : OpKind::kMalloc;
      o.buf = w->nbufs++;
      o.len = len;
      live[addr] = Live{o.buf, len};
    } else if (op == "free") {
      auto it = live.find(addr);
      if (it == live.end()) return fail("free of an unknown buffer");
      o.kind = OpKind::kFree;
      o.buf = it->second.id;
      live.erase(it);
    } else if (op == "get" || op == "put" || op == "munmap") {
      o.kind = op == "get"   ? OpKind::kGet
               : op == "put" ? OpKind::kPut
                             : OpKind::kMunmap;
      if (op == "get") {
        unsigned acc;
        if (!ParseAccess(a3, &acc)) return fail("bad access '" + a3 + "'");
        o.access = uint8_t(acc);
      }
      o.len = len;
      Live *b;
      if (find(addr, len, &b)) {
        o.buf = b->id;
        o.off = addr - std::prev(live.upper_bound(addr))->first;
      } else {
        o.buf = kArena;
        o.off = addr;
        arena_lo = std::min(arena_lo, addr / 4096 * 4096);
        arena_hi = std::max(arena_hi, addr + len);
      }
    } else {
      return fail("unknown operation '" + op + "'");
    }
    w->ops.push_back(o);
  }
  if (arena_hi) {
    if (arena_hi - arena_lo > (uint64_t(4) << 30)) {
      *err = path + ": addresses outside declared buffers span more than 4 GiB";
      return false;
    }
    uint32_t id = w->nbufs++;
    for (Op &o : w->ops)
      if (o.buf == kArena) {
        o.buf = id;
        o.off -= arena_lo;
      }
    w->ops.insert(w->ops.begin(),
                  Op{OpKind::kMap, 0, 0, id, 0, arena_hi - arena_lo});
  }
  return true;
}

Capacity CapacityOfLevel(int level) {
  return Capacity{size_t(4) << level, (size_t(8) * kMiB) << level};
}

}  // namespace rcbench

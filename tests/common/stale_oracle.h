/* SPDX-License-Identifier: BSD-3-Clause */
// tests/common/stale_oracle.h - a registration driver that holds pages the way
// a NIC does, and an exact test of whether a registration is stale.
//
// A NIC's registration takes page references (get_user_pages) and keeps the
// frames it was given; the program's later munmap/madvise/truncate does not
// change those frames, it changes what the program's addresses map to. So
// "stale" means: the frames held by the registration differ from the frames
// now mapped at its addresses. This driver reproduces that exactly:
//
//   reg    faults the range in (MADV_POPULATE_WRITE, or _READ when only local
//          read is asked or the memory is read-only), then vmsplice()s it into
//          pipes: each page gets a reference the pipe holds until dereg. Not
//          mlock: mlock would make MADV_DONTNEED fail with EINVAL, which a
//          NIC's reference does not. A referenced frame cannot be freed and
//          reused, so a frame number seen again is the same page.
//   stale  with CAP_SYS_ADMIN (root): the frame numbers recorded from
//          /proc/self/pagemap at reg vs now (a page not present now counts as
//          stale: a NIC would keep writing to the old frame). Without it
//          (pagemap hides frame numbers): a nonce is written into each current
//          page and read back through a tee() of the registration's pipes; a
//          pipe that does not show it holds another page. The 8 bytes are
//          restored afterwards; the check must not race with writers of the
//          same bytes, and needs the memory writable (a test of read-only
//          memory in this mode must make it writable first).
//
// Thread safety: reg/dereg may run concurrently (the cache calls them from any
// thread); IsStale may run concurrently with both for different regions. The
// caller holds the region (regcache_get) while asking IsStale.
//
// Use: StaleOracle o; regcache_create(o.driver(), ...); ... get r ...;
//      EXPECT_FALSE(o.IsStale(r)).
// Errors from reg: -EFAULT (not mapped / PROT_NONE), -EACCES (write access
// asked of read-only memory), -ENOMEM (pipes or fds exhausted).
#ifndef REGCACHE_TESTS_COMMON_STALE_ORACLE_H_
#define REGCACHE_TESTS_COMMON_STALE_ORACLE_H_

#include <fcntl.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace regcache::testing {

class StaleOracle {
 public:
  // Each registration keeps its pages in pipes of at most kChunk bytes (the
  // unprivileged pipe-max-size default is 1 MiB).
  static constexpr size_t kChunk = size_t{1} << 20;

  struct Record {
    uintptr_t addr = 0;
    size_t len = 0;
    unsigned access = 0;
    std::vector<int> pipes;        // read ends, one per chunk
    std::vector<int> write_ends;   // write ends, one per chunk
    std::vector<uint64_t> frames;  // per page; 0 when pagemap hides them
  };

  StaleOracle() {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    pagemap_ = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    // Each registration costs 2 fds per MiB: take every fd the hard limit
    // allows.
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
    ops_.size = sizeof(ops_);
    ops_.reg = &StaleOracle::Reg;
    ops_.dereg = &StaleOracle::Dereg;
    int rc = regcache_driver_custom_open(&ops_, this, &driver_);
    if (rc != 0) driver_ = nullptr;
  }
  ~StaleOracle() {
    if (driver_ != nullptr) regcache_driver_close(driver_);
    if (pagemap_ >= 0) close(pagemap_);
  }
  StaleOracle(const StaleOracle &) = delete;
  StaleOracle &operator=(const StaleOracle &) = delete;

  // The custom driver to create caches on (nullptr if opening it failed).
  regcache_driver_t *driver() const { return driver_; }

  // True when /proc/self/pagemap shows frame numbers (root): the exact mode.
  bool HaveFrames() {
    static int x = 0;
    x = 1;  // make sure the page is present
    return Frame(reinterpret_cast<uintptr_t>(&x)) != 0;
  }

  // The frame now mapped at addr's page, 0 when not present or hidden.
  uint64_t Frame(uintptr_t addr) const {
    if (pagemap_ < 0) return 0;
    uint64_t e = 0;
    off_t off = static_cast<off_t>((addr / page_) * sizeof(e));
    if (pread(pagemap_, &e, sizeof(e), off) != sizeof(e)) return 0;
    if (!(e >> 63 & 1)) return 0;          // not present
    return e & ((uint64_t{1} << 55) - 1);  // bits 0-54
  }

  // True when the region's registration holds pages other than those now
  // mapped at its addresses. Requires: region held; the memory is mapped and
  // readable (a hole counts as stale); no other thread writes the first 8
  // bytes of its pages during the check in non-root mode.
  bool IsStale(const regcache_region_t *region) {
    auto *rec = static_cast<Record *>(regcache_region_handle(region));
    if (rec == nullptr) return true;
    return IsStaleRecord(*rec);
  }

  // Tests of the oracle itself: use the unprivileged (nonce) check even where
  // frame numbers are readable.
  void ForceNonceMode() { force_nonce_ = true; }

  // Counters, for tests that check what was registered.
  uint64_t registrations() const { return regs_.load(); }
  uint64_t deregistrations() const { return deregs_.load(); }
  uint64_t live() const { return regs_.load() - deregs_.load(); }

 private:
  static int Reg(void *ctx, void *addr, size_t len, unsigned access,
                 void **handle_p, uint32_t *lkey_p, uint64_t *rkey_p,
                 void **desc_p) {
    (void)desc_p;
    auto *self = static_cast<StaleOracle *>(ctx);
    auto *rec = new (std::nothrow) Record;
    if (rec == nullptr) return -ENOMEM;
    int rc = self->Hold(rec, reinterpret_cast<uintptr_t>(addr), len, access);
    if (rc != 0) {
      Release(rec);
      return rc;
    }
    uint64_t key = self->regs_.fetch_add(1) + 1;
    *handle_p = rec;
    *lkey_p = static_cast<uint32_t>(key);
    *rkey_p = key;
    return 0;
  }

  static int Dereg(void *ctx, void *handle) {
    auto *self = static_cast<StaleOracle *>(ctx);
    Release(static_cast<Record *>(handle));
    self->deregs_.fetch_add(1);
    return 0;
  }

  static void Release(Record *rec) {
    for (int fd : rec->pipes) close(fd);
    for (int fd : rec->write_ends) close(fd);
    delete rec;
  }

  int Hold(Record *rec, uintptr_t addr, size_t len, unsigned access) {
    uintptr_t lo = addr & ~(page_ - 1);
    uintptr_t hi = (addr + len + page_ - 1) & ~(page_ - 1);
    if (len == 0 || hi <= lo) return -EINVAL;
    rec->addr = lo;
    rec->len = hi - lo;
    rec->access = access;
    const bool write =
        access & (REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_WRITE |
                  REGCACHE_ACCESS_REMOTE_ATOMIC);
    void *p = reinterpret_cast<void *>(lo);
    if (madvise(p, rec->len,
                write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ)) {
      int e = errno;
      if (write && madvise(p, rec->len, MADV_POPULATE_READ) == 0)
        return -EACCES;
      return e == ENOMEM || e == EFAULT || e == EINVAL ? -EFAULT : -e;
    }
    for (uintptr_t c = lo; c < hi; c += kChunk) {
      size_t n = hi - c < kChunk ? hi - c : kChunk;
      int fds[2];
      if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return -ENOMEM;
      rec->pipes.push_back(fds[0]);
      rec->write_ends.push_back(fds[1]);
      if (fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(kChunk)) < 0)
        return -ENOMEM;
      struct iovec iov = {reinterpret_cast<void *>(c), n};
      while (iov.iov_len > 0) {
        // Non-blocking: a full pipe is an error, never a hang.
        ssize_t got = vmsplice(fds[1], &iov, 1, SPLICE_F_NONBLOCK);
        if (got <= 0) return got < 0 && errno == EFAULT ? -EFAULT : -ENOMEM;
        iov.iov_base = static_cast<char *>(iov.iov_base) + got;
        iov.iov_len -= static_cast<size_t>(got);
      }
    }
    rec->frames.resize(rec->len / page_);
    for (size_t i = 0; i < rec->frames.size(); ++i)
      rec->frames[i] = Frame(lo + i * page_);
    return 0;
  }

  bool IsStaleRecord(const Record &rec) {
    const size_t pages = rec.len / page_;
    if (!force_nonce_ && !rec.frames.empty() && rec.frames[0] != 0) {
      for (size_t i = 0; i < pages; ++i) {
        // Present now? Fault it in as the program would (a read); a hole
        // or PROT_NONE cannot be faulted: stale.
        uintptr_t a = rec.addr + i * page_;
        if (Frame(a) == 0 &&
            madvise(reinterpret_cast<void *>(a), page_, MADV_POPULATE_READ))
          return true;
        if (Frame(a) != rec.frames[i]) return true;
      }
      return false;
    }
    return IsStaleByNonce(rec);
  }

  // Unprivileged mode: write a nonce into each current page, read the pipes'
  // pages (tee: the registration keeps its references), restore.
  bool IsStaleByNonce(const Record &rec) {
    static std::atomic<uint64_t> counter{0x5ca1ab1e00000000ull};
    std::vector<char> buf(kChunk);
    for (size_t c = 0; c < rec.pipes.size(); ++c) {
      uintptr_t base = rec.addr + c * kChunk;
      size_t n = rec.len - c * kChunk < kChunk ? rec.len - c * kChunk : kChunk;
      std::vector<uint64_t> saved(n / page_), nonce(n / page_);
      for (size_t i = 0; i < n / page_; ++i) {
        auto *w = reinterpret_cast<uint64_t *>(base + i * page_);
        saved[i] = *w;
        nonce[i] = counter.fetch_add(1);
        *w = nonce[i];
      }
      int scratch[2];
      bool stale = true;
      if (pipe2(scratch, O_CLOEXEC | O_NONBLOCK) == 0) {
        fcntl(scratch[1], F_SETPIPE_SZ, static_cast<int>(kChunk));
        ssize_t t = tee(rec.pipes[c], scratch[1], n, SPLICE_F_NONBLOCK);
        size_t got = 0;
        while (t > 0 && got < static_cast<size_t>(t)) {
          ssize_t r = read(scratch[0], buf.data() + got, t - got);
          if (r <= 0) break;
          got += static_cast<size_t>(r);
        }
        if (got == n) {
          stale = false;
          for (size_t i = 0; i < n / page_ && !stale; ++i) {
            uint64_t v;
            std::memcpy(&v, buf.data() + i * page_, sizeof(v));
            stale = v != nonce[i];
          }
        }
        close(scratch[0]);
        close(scratch[1]);
      }
      for (size_t i = 0; i < n / page_; ++i)
        *reinterpret_cast<uint64_t *>(base + i * page_) = saved[i];
      if (stale) return true;
    }
    return false;
  }

  size_t page_ = 4096;
  int pagemap_ = -1;
  regcache_driver_ops_t ops_{};
  regcache_driver_t *driver_ = nullptr;
  std::atomic<uint64_t> regs_{0}, deregs_{0};
  bool force_nonce_ = false;
};

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_COMMON_STALE_ORACLE_H_

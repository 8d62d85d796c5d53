// SPDX-License-Identifier: BSD-3-Clause
#include "drivers/host/host_driver.h"

#include <fcntl.h>
#include <pthread.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "notifier/procmap_query.h"
#include "regcache/log.h"

namespace regcache::host {
namespace {

namespace procmap = notifier::procmap;

constexpr unsigned kWriteAccess = REGCACHE_ACCESS_LOCAL_WRITE |
                                  REGCACHE_ACCESS_REMOTE_WRITE |
                                  REGCACHE_ACCESS_REMOTE_ATOMIC;
constexpr uint64_t kPfnMask = (uint64_t{1} << 55) - 1;
constexpr uint64_t kPresent = uint64_t{1} << 63;

uintptr_t PageSize() {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  return page;
}

struct Record {
  uintptr_t start;
  size_t len;
  unsigned access;
  uint64_t key;
  uint64_t fork_gen;  // g_fork_gen when registered (see Pins, FORK)
  bool frames_known;
  std::vector<uint64_t> frames;  // pagemap PFN per page (0: not present)
};

// Process-wide pin counts: mlock is a per-page flag, not a counter.
// Lock rule: count and live only under mu. Holders mlock, allocate (the map)
// and log; they take no other lock of ours except the log sink's.
//
// FORK: a thread may hold mu (registering or deregistering) when another
// forks; the child would inherit it locked by a thread it does not have, and
// its first registration would block forever. The child starts a fresh table
// (AtforkChild) instead of prepare taking mu, because a holder may wait for a
// quiescer's resume (its free() can reach the patch hook, whose range waits
// while another thread has quiesced), which a quiescer that forks would never
// give. A fresh table is also the child's truth: mlock is not inherited by a
// child (its copies of the pages are not locked), and the parent's table may
// be half-way through an update. The old table is leaked, never touched.
// Records registered before the fork (an older fork_gen) leave the child
// without touching the new table (Deregister). The order among all atfork
// handlers is written in regcache/library.cc (FORK).
struct Pins {
  std::mutex mu;
  std::unordered_map<uintptr_t, uint32_t>
      count;  // page address -> registrations
  size_t live = 0;
  // The parent's table a fork child replaced (AtforkChild): kept reachable so
  // that it is leaked on purpose, not reported as a leak (LeakSanitizer).
  Pins *retired = nullptr;
};
// Leaked: deregistration may run during exit teardown.
std::atomic<Pins *> g_pins{new Pins};
Pins &ThePins() { return *g_pins.load(std::memory_order_acquire); }
std::atomic<uint64_t> g_fork_gen{0};
std::atomic<bool> g_pins_atfork_off{false};

void AtforkChild() {
  if (g_pins_atfork_off.load(std::memory_order_relaxed)) return;
  // malloc works in atfork child handlers (glibc resets its locks first).
  Pins *fresh = new Pins;
  fresh->retired = g_pins.load(std::memory_order_relaxed);
  g_pins.store(fresh, std::memory_order_release);
  g_fork_gen.fetch_add(1, std::memory_order_relaxed);
}

// Priority 101: before the default-priority handlers (regcache/library.cc).
__attribute__((constructor(101))) void PinsAtforkRegister() {
  pthread_atfork(nullptr, nullptr, AtforkChild);
}

std::atomic<uint64_t> g_next_key{1};

// One step of the check: the VMA [lo, hi) at cur is readable (and writable if
// `write`). 0 and cur = hi, or -EFAULT / -EACCES.
int CheckVma(uintptr_t lo, uintptr_t hi, bool readable, bool writable,
             bool write, uintptr_t *cur) {
  if (lo > *cur || hi <= *cur) return -EFAULT;  // a hole
  if (!readable) return -EFAULT;
  if (write && !writable) return -EACCES;
  *cur = hi;
  return 0;
}

// With PROCMAP_QUERY: one ioctl per VMA. -ENOTTY/-EINVAL: not supported.
int CheckByQuery(int fd, uintptr_t start, uintptr_t end, bool write) {
  uintptr_t cur = start;
  while (cur < end) {
    procmap::Vma v;
    if (int rc = procmap::QueryFd(fd, cur, procmap::kCoveringOrNext, &v))
      return rc == -ENOENT ? -EFAULT : rc;
    int rc = CheckVma(v.start, v.end, v.flags & procmap::kVmaRead,
                      v.flags & procmap::kVmaWrite, write, &cur);
    if (rc) return rc;
  }
  return 0;
}

// Without it: /proc/self/maps read through a stack buffer, keeping only the
// head of each line (addresses and permissions); lines of any length.
int CheckByRead(int fd, uintptr_t start, uintptr_t end, bool write) {
  char buf[4096];
  char head[64];
  size_t head_len = 0;
  uintptr_t cur = start;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    for (ssize_t i = 0; i < n && cur < end; ++i) {
      if (buf[i] != '\n') {
        if (head_len < sizeof(head) - 1) head[head_len++] = buf[i];
        continue;
      }
      head[head_len] = 0;
      head_len = 0;
      char *p = nullptr;
      uintptr_t lo = std::strtoull(head, &p, 16);
      if (*p != '-') continue;
      uintptr_t hi = std::strtoull(p + 1, &p, 16);
      if (*p != ' ' || hi <= cur) continue;
      int rc = CheckVma(lo, hi, p[1] == 'r', p[2] == 'w', write, &cur);
      if (rc) return rc;
    }
    if (cur >= end) break;
  }
  return cur >= end ? 0 : -EFAULT;
}

// Every page of [start, end) mapped, readable, and writable if `write`: 0,
// -EFAULT (a hole or PROT_NONE), -EACCES (read-only asked for write).
// Allocates nothing: memory malloc'ed here could be mapped into the very hole
// being checked and make it look mapped (the stress test's 1-in-180 000 flake).
// The fd is opened per call: it describes the mm of the process that opened
// it, so a fork child must not reuse its parent's.
int CheckMapped(uintptr_t start, uintptr_t end, bool write,
                bool maps_file = false) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = maps_file ? -ENOTTY : CheckByQuery(fd, start, end, write);
  if (rc == -ENOTTY || rc == -EINVAL || rc == -EOPNOTSUPP)
    rc = CheckByRead(fd, start, end, write);
  close(fd);
  return rc;
}

// Reads the frame of each page. False if frame numbers are not visible.
bool ReadFrames(uintptr_t start, size_t len, std::vector<uint64_t> *frames) {
  const size_t pages = len / PageSize();
  frames->assign(pages, 0);
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::vector<uint64_t> raw(pages);
  const off_t off = static_cast<off_t>(start / PageSize() * sizeof(uint64_t));
  ssize_t want = static_cast<ssize_t>(pages * sizeof(uint64_t));
  ssize_t n = pread(fd, raw.data(), static_cast<size_t>(want), off);
  close(fd);
  if (n != want) return false;
  bool any_pfn = false;
  for (size_t i = 0; i < pages; ++i) {
    uint64_t pfn = (raw[i] & kPresent) ? (raw[i] & kPfnMask) : 0;
    (*frames)[i] = pfn;
    any_pfn |= pfn != 0;
  }
  // Without CAP_SYS_ADMIN present pages read as PFN 0.
  return any_pfn;
}

size_t LockLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
    return SIZE_MAX;
  return static_cast<size_t>(rl.rlim_cur);
}

class HostDriver final : public DriverPort {
 public:
  explicit HostDriver(bool lock_pages) : lock_pages_(lock_pages) {}
  const char *Name() const override { return "host"; }

  int Register(void *addr, size_t len, unsigned access,
               PortRegistration *out) override {
    const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
    if (len == 0 || start % PageSize() || len % PageSize()) return -EINVAL;
    int rc = CheckMapped(start, start + len, access & kWriteAccess);
    if (rc) {
      REGCACHE_LOG(
          ERROR, "host driver: cannot register region 0x{:x} len {}: {}", start,
          len,
          rc == -EACCES ? "memory is not writable" : "memory is not mapped");
      return rc;
    }
    auto rec = std::make_unique<Record>();
    rec->start = start;
    rec->len = len;
    rec->access = access;
    rec->key = g_next_key.fetch_add(1, std::memory_order_relaxed);
    rec->fork_gen = g_fork_gen.load(std::memory_order_relaxed);
    const size_t pages = len / PageSize();
    {
      Pins &pins = ThePins();
      std::lock_guard<std::mutex> g(pins.mu);
      size_t new_pages = 0;
      for (size_t i = 0; i < pages; ++i)
        new_pages += pins.count.count(start + i * PageSize()) == 0;
      const size_t limit = LockLimit();
      const size_t pinned = pins.count.size() * PageSize();
      if (new_pages * PageSize() > limit ||
          pinned + new_pages * PageSize() > limit) {
        REGCACHE_LOG(ERROR,
                     "host driver: cannot register region 0x{:x} len {}: "
                     "RLIMIT_MEMLOCK {} "
                     "reached ({} bytes pinned)",
                     start, len, limit, pinned);
        return -ENOMEM;
      }
      // mlock even pages already counted: the mapping under them may be a new
      // one (the old registration's deregistration is deferred past the unmap).
      if (mlock(addr, len) != 0) {
        int e = errno;
        // mlock locks the mappings up to a hole before it fails: without
        // lock_pages_ nothing here is meant to stay locked (a VM_LOCKED
        // leftover on memory the program got back makes its
        // madvise(DONTNEED) fail with EINVAL and splits its mapping).
        if (!lock_pages_) munlock(addr, len);
        unsigned char vec;
        // mlock says ENOMEM both for unmapped memory and for the lock limit.
        if (e == ENOMEM && mincore(addr, PageSize(), &vec) != 0) e = EFAULT;
        if (e == EPERM) e = ENOMEM;
        REGCACHE_LOG(ERROR, "host driver: mlock(0x{:x}, {}) failed: {}", start,
                     len, std::strerror(e));
        return -e;
      }
      if (!lock_pages_)
        munlock(addr, len);  // mlock only to fault every page in
      for (size_t i = 0; i < pages; ++i) ++pins.count[start + i * PageSize()];
      ++pins.live;
    }
    rec->frames_known = ReadFrames(start, len, &rec->frames);
    out->handle = rec.get();
    out->lkey = static_cast<uint32_t>(rec->key);
    out->rkey = rec->key | (uint64_t{0x4854} << 48);  // "HT"
    out->desc = nullptr;
    rec.release();
    return 0;
  }

  int Deregister(const PortRegistration &reg) override {
    auto *rec = static_cast<Record *>(reg.handle);
    if (rec == nullptr) return -EINVAL;
    const size_t pages = rec->len / PageSize();
    if (rec->fork_gen != g_fork_gen.load(std::memory_order_relaxed)) {
      // Registered by the parent before a fork: its pins are not this
      // process's (Pins, FORK).
      delete rec;
      return 0;
    }
    {
      Pins &pins = ThePins();
      std::lock_guard<std::mutex> g(pins.mu);
      // Unlock maximal runs of pages nobody else pins. munlock of memory that
      // is no longer mapped fails with ENOMEM: the pages went with the mapping,
      // nothing to undo.
      uintptr_t run = 0;
      size_t run_len = 0;
      for (size_t i = 0; i <= pages; ++i) {
        bool unlock = false;
        uintptr_t page = rec->start + i * PageSize();
        if (i < pages) {
          auto it = pins.count.find(page);
          if (it != pins.count.end() && --it->second == 0) {
            pins.count.erase(it);
            unlock = true;
          }
        }
        if (unlock) {
          if (run_len == 0) run = page;
          run_len += PageSize();
        } else if (run_len) {
          if (lock_pages_) munlock(reinterpret_cast<void *>(run), run_len);
          run_len = 0;
        }
      }
      --pins.live;
    }
    delete rec;
    return 0;
  }

 private:
  const bool lock_pages_;
};

}  // namespace

std::unique_ptr<DriverPort> NewHostDriver(bool lock_pages) {
  return std::make_unique<HostDriver>(lock_pages);
}

FrameCheck CheckFrames(const void *handle) {
  auto *rec = static_cast<const Record *>(handle);
  if (rec == nullptr || !rec->frames_known) return FrameCheck::kUnknown;
  std::vector<uint64_t> now;
  // A page that is not present now reads as frame 0: different from the
  // recorded one.
  ReadFrames(rec->start, rec->len, &now);
  if (now.size() != rec->frames.size()) return FrameCheck::kStale;
  for (size_t i = 0; i < now.size(); ++i)
    if (now[i] != rec->frames[i]) return FrameCheck::kStale;
  return FrameCheck::kFresh;
}

const char *FrameCheckName(FrameCheck c) {
  switch (c) {
    case FrameCheck::kFresh:
      return "fresh";
    case FrameCheck::kStale:
      return "stale";
    case FrameCheck::kUnknown:
      return "unknown";
  }
  return "?";
}

bool FramesVisible() {
  static const bool visible = [] {
    void *p = mmap(nullptr, PageSize(), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    static_cast<volatile char *>(p)[0] = 1;
    std::vector<uint64_t> f;
    bool v = ReadFrames(reinterpret_cast<uintptr_t>(p), PageSize(), &f);
    munmap(p, PageSize());
    return v;
  }();
  return visible;
}

size_t PinnedBytes() {
  Pins &pins = ThePins();
  std::lock_guard<std::mutex> g(pins.mu);
  return pins.count.size() * PageSize();
}

int CheckMapped(const void *addr, size_t len, bool write, bool maps_file) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  return CheckMapped(start, start + len, write, maps_file);
}

std::mutex &PinsMutexForTesting() { return ThePins().mu; }
void SetPinsAtforkOffForTesting(bool off) {
  g_pins_atfork_off.store(off, std::memory_order_relaxed);
}

size_t LiveRegistrations() {
  Pins &pins = ThePins();
  std::lock_guard<std::mutex> g(pins.mu);
  return pins.live;
}

}  // namespace regcache::host

extern "C" REGCACHE_API int regcache_driver_host_open(
    regcache_driver_t **driver_p) {
  if (driver_p == nullptr) return -EINVAL;
  auto *d = new (std::nothrow) regcache_driver(regcache::host::NewHostDriver());
  if (d == nullptr) return -ENOMEM;
  *driver_p = d;
  return 0;
}

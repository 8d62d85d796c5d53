/* SPDX-License-Identifier: BSD-3-Clause */
// tests/regcache/attack_test.cc - adversarial paths against the cache's
// promise (a registration it hands out never refers to pages the process no
// longer has at that address; it never hangs), on the event source ctest asks
// for (REGCACHE_MONITOR, one ctest per source). Every get is checked with the
// stale oracle (tests/common/stale_oracle.h). Paths here are the ones the
// other suites do not exercise: dlclose of a plugin whose .bss was registered,
// a signal handler that remaps registered memory while the interrupted thread
// is inside get/put, brk shrink through sbrk, mremap shrink then refill, and
// fork followed by a parent write.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <regcache/notifier.h>
#include <regcache/regcache.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>

#include "notifier/sources.h"
#include "tests/common/anon_memory.h"
#include "tests/common/source_cache.h"
#include "tests/common/stale_oracle.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

namespace regcache {
namespace {

using testing::StaleOracle;

constexpr unsigned kWrite = REGCACHE_ACCESS_LOCAL_WRITE;
const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

class AttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(o_.driver(), nullptr);
    if (!o_.HaveFrames()) GTEST_SKIP() << "needs root (pagemap frames)";
    setenv("REGCACHE_MONITOR", REGCACHE_TEST_SOURCE, 1);
    ASSERT_EQ(regcache_config_set("MONITOR", REGCACHE_TEST_SOURCE), 0);
    std::string skip = testing::CreateOnRequestedSource(o_.driver(), &cache_);
    if (!skip.empty()) GTEST_SKIP() << skip;
  }
  void TearDown() override {
    if (cache_ != nullptr) regcache_destroy(cache_);
  }
  // get + put: the cache keeps the registration (when it caches at all).
  void Cache(void *p, size_t len) {
    regcache_region_t *r = nullptr;
    ASSERT_EQ(regcache_get(cache_, p, len, kWrite, &r), 0);
    EXPECT_FALSE(o_.IsStale(r)) << "stale right after registration";
    regcache_put(cache_, r);
  }
  // New private anonymous memory, written (1s) and cached; nullptr if mmap
  // failed (a test failure is recorded).
  char *MapCached(size_t len) {
    char *p = regcache::testing::MapWritten(len);
    if (p != nullptr) Cache(p, len);
    return p;
  }
  // get again: is what the cache returns stale?
  bool StaleNow(void *p, size_t len) {
    regcache_region_t *r = nullptr;
    EXPECT_EQ(regcache_get(cache_, p, len, kWrite, &r), 0);
    if (r == nullptr) return false;
    const bool stale = o_.IsStale(r);
    regcache_put(cache_, r);
    return stale;
  }
  [[noreturn]] void SignalRemapChild(bool expect_stale);
  std::string RunSignalRemapChild(bool raw, bool expect_stale);
  bool DlcloseThenRemapIsStale();
  bool Explicit() const { return testing::ExplicitSourceActive(); }

  StaleOracle o_;
  regcache_t *cache_ = nullptr;
};

// dlclose of a plugin whose .bss was registered: ld.so unmaps the .bss (its
// own munmap, not libc's entry), then new memory appears at the same address.
// Under `none` the program does not report, as a host that does not know
// about ld.so would not: skipped there.
// true: a get after dlclose + new memory at the .bss address hit the unloaded
// plugin's registration. Skips (false, with a message) when the address could
// not be reused.
bool AttackTest::DlcloseThenRemapIsStale() {
  void *h = dlopen(ATTACK_BSS_LIB, RTLD_NOW | RTLD_LOCAL);
  EXPECT_NE(h, nullptr) << dlerror();
  if (h == nullptr) return false;
  auto fn = reinterpret_cast<char *(*)()>(dlsym(h, "attack_bss_addr"));
  EXPECT_NE(fn, nullptr);
  if (fn == nullptr) return false;
  char *bss = fn();
  // The anonymous part of the .bss: from its second page on.
  char *p = bss + kPage;
  const size_t len = 64 * kPage;
  std::memset(p, 1, len);
  Cache(p, len);
  EXPECT_EQ(dlclose(h), 0);
  void *q = mmap(p, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (q != p) {
    if (q != MAP_FAILED) munmap(q, len);
    ADD_FAILURE() << "dlclose did not unmap the .bss (still loaded?)";
    return false;
  }
  std::memset(p, 2, len);
  const bool stale = StaleNow(p, len);
  munmap(p, len);
  return stale;
}

TEST_F(AttackTest, DlcloseBss) {
  if (Explicit()) GTEST_SKIP() << "the explicit source sees what the host says";
  EXPECT_FALSE(DlcloseThenRemapIsStale())
      << "a get after dlclose + new memory at the .bss address hit the "
         "registration of the unloaded plugin's pages";
}

// Negative control: with the patch source's _dl_debug_state hook switched off,
// ld.so's own munmap goes unseen and the same steps find the stale
// registration (the test above can fail).
TEST_F(AttackTest, DlcloseBss_NegativeControl) {
  if (std::strcmp(regcache_notifier_source(), "patch") != 0)
    GTEST_SKIP() << "the switch is the patch source's";
  notifier::sources::g_patch_test_off.fetch_or(
      notifier::sources::kPatchPathDlclose);
  const bool stale = DlcloseThenRemapIsStale();
  notifier::sources::g_patch_test_off.fetch_and(
      ~notifier::sources::kPatchPathDlclose);
  EXPECT_TRUE(stale) << "without the hook, dlclose's unmap should go unseen";
}

// brk shrink through sbrk (not through free's trim): the top of the heap goes,
// then grows back with new zero pages at the same addresses.
TEST_F(AttackTest, SbrkShrinkRegrow) {
  if (Explicit()) GTEST_SKIP() << "the explicit source sees what the host says";
  char *cur = static_cast<char *>(sbrk(0));
  const uintptr_t align =
      (kPage - reinterpret_cast<uintptr_t>(cur) % kPage) % kPage;
  const size_t len = 32 * kPage;
  ASSERT_NE(sbrk(static_cast<intptr_t>(align + len)), (void *)-1);
  char *p = cur + align;
  std::memset(p, 1, len);
  Cache(p, len);
  ASSERT_NE(sbrk(-static_cast<intptr_t>(len)), (void *)-1);
  ASSERT_NE(sbrk(static_cast<intptr_t>(len)), (void *)-1);
  std::memset(p, 2, len);
  EXPECT_FALSE(StaleNow(p, len));
  sbrk(-static_cast<intptr_t>(align + len));
}

// mremap shrink in place, then new memory in the freed tail; and a grow in
// place without MAYMOVE (nothing changes: the hit is correct either way).
TEST_F(AttackTest, MremapShrinkThenRefillTail) {
  if (Explicit()) GTEST_SKIP() << "the explicit source sees what the host says";
  const size_t len = 64 * kPage;
  char *p = MapCached(len);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(mremap(p, len, len / 2, 0), p);
  void *t = mmap(p + len / 2, len / 2, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  ASSERT_EQ(t, p + len / 2);
  std::memset(p, 2, len);
  EXPECT_FALSE(StaleNow(p, len));
  munmap(p, len);
}

// mremap DONTUNMAP: the pages move to the new address and the old range stays
// mapped but empty (new zero pages on the next touch); then MAYMOVE away and
// new memory at the old address.
TEST_F(AttackTest, MremapDontunmapThenMoveAway) {
  if (Explicit()) GTEST_SKIP() << "the explicit source sees what the host says";
  const size_t len = 16 * kPage;
  char *p = MapCached(len);
  ASSERT_NE(p, nullptr);
  void *q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
  if (q == MAP_FAILED) {
    munmap(p, len);
    GTEST_SKIP() << "MREMAP_DONTUNMAP: " << strerror(errno);
  }
  std::memset(p, 2, len);
  EXPECT_FALSE(StaleNow(p, len)) << "old range after DONTUNMAP";
  Cache(q, len);
  void *r = mremap(q, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p);
  ASSERT_EQ(r, p);
  void *t = mmap(q, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  ASSERT_EQ(t, q);
  std::memset(q, 3, len);
  EXPECT_FALSE(StaleNow(q, len)) << "new memory where the moved pages were";
  EXPECT_FALSE(StaleNow(p, len)) << "pages moved onto the old range";
  munmap(p, len);
  munmap(q, len);
}

// free() of a chunk above the mmap threshold, then malloc of the same size
// (usually the same address, new pages); realloc that moves.
TEST_F(AttackTest, FreeLargeThenMallocAgainAndRealloc) {
  if (Explicit()) GTEST_SKIP() << "the explicit source sees what the host says";
  const size_t len = 64 * kPage;
  char *p = static_cast<char *>(malloc(len));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, len);
  char *a = p + (kPage - reinterpret_cast<uintptr_t>(p) % kPage) % kPage;
  Cache(a, 16 * kPage);
  const uint64_t old_frame = o_.Frame(reinterpret_cast<uintptr_t>(a));
  free(p);
  char *q = static_cast<char *>(malloc(len));
  ASSERT_NE(q, nullptr);
  std::memset(q, 2, len);
  if (a >= q && a + 16 * kPage <= q + len) {
    EXPECT_NE(o_.Frame(reinterpret_cast<uintptr_t>(a)), old_frame);
    EXPECT_FALSE(StaleNow(a, 16 * kPage)) << "malloc after free";
  }
  char *b = q + (kPage - reinterpret_cast<uintptr_t>(q) % kPage) % kPage;
  Cache(b, 16 * kPage);
  char *r = static_cast<char *>(realloc(q, 64 * len));  // moves (mremap)
  ASSERT_NE(r, nullptr);
  void *t = mmap(b, 16 * kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (t == b) {
    std::memset(b, 3, 16 * kPage);
    EXPECT_FALSE(StaleNow(b, 16 * kPage)) << "new memory where realloc was";
    munmap(b, 16 * kPage);
  } else if (t != MAP_FAILED) {
    munmap(t, 16 * kPage);
  }
  free(r);
}

// malloc_trim: madvise(DONTNEED) of the free pages inside the heap, which the
// next malloc hands out again (zero pages, new frames).
TEST_F(AttackTest, MallocTrimThenReuse) {
  if (Explicit()) GTEST_SKIP() << "the explicit source sees what the host says";
#if defined(REGCACHE_SANITIZE_ADDRESS) || defined(REGCACHE_SANITIZE_THREAD)
  GTEST_SKIP() << "the sanitizer's allocator replaces glibc's: no malloc_trim, "
                  "and freed chunks wait in quarantine instead of being reused";
#endif
  const size_t len = 64 * kPage;  // below the (dynamic) mmap threshold?
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // no trim at free: only malloc_trim
  char *guard = static_cast<char *>(malloc(64));
  char *p = static_cast<char *>(malloc(len));
  char *after = static_cast<char *>(malloc(64));  // keeps p off the top
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, len);
  char *a = p + (kPage - reinterpret_cast<uintptr_t>(p) % kPage) % kPage;
  const size_t alen = 32 * kPage;
  Cache(a, alen);
  const uint64_t old_frame = o_.Frame(reinterpret_cast<uintptr_t>(a) + kPage);
  free(p);
  malloc_trim(0);
  char *q = static_cast<char *>(malloc(len));
  ASSERT_EQ(q, p) << "malloc did not reuse the chunk";
  std::memset(q, 2, len);
  // The attack happened: malloc_trim gave the pages back (new frames now).
  EXPECT_NE(o_.Frame(reinterpret_cast<uintptr_t>(a) + kPage), old_frame);
  EXPECT_FALSE(StaleNow(a, alen)) << "heap pages malloc_trim gave back";
  free(q);
  free(after);
  free(guard);
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_TRIM_THRESHOLD, 128 * 1024);
}

// A signal handler that remaps registered memory (mmap MAP_FIXED: new frames)
// while the interrupted thread is anywhere, including inside get/put and the
// cache's lock. Must neither hang (child under alarm) nor hand out a stale
// registration: a get whose memory the handler did not remap between the
// get's start and the check must be fresh.
// Remaps begun and finished: a signal is process-directed, so the handler
// may run on another thread (a uffd monitor thread) and be inside its mmap
// while this thread checks; only a get with no remap in flight or begun
// between its memset and its check must be fresh.
std::atomic<unsigned> g_remaps_begun{0};
std::atomic<unsigned> g_remaps{0};
// Negative control: the handler remaps with a raw syscall, which the patch
// source does not see (documented), so stale registrations must be found.
bool g_raw_remap = false;
char *g_sig_buf = nullptr;
size_t g_sig_len = 0;

void RemapHandler(int) {
  const int e = errno;
  // Remap the first half: new anonymous pages.
  g_remaps_begun.fetch_add(1);
  if (g_raw_remap)
    syscall(SYS_mmap, g_sig_buf, g_sig_len / 2, PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  else
    mmap(g_sig_buf, g_sig_len / 2, PROT_READ | PROT_WRITE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  g_remaps.fetch_add(1);
  errno = e;
}

// The child's body: exits 0 when the result is as expected (no stale
// registration; with expect_stale, at least one), 1 otherwise; SIGALRM on a
// hang.
void AttackTest::SignalRemapChild(bool expect_stale) {
  {
    alarm(60);  // a hang fails the test (SIGALRM kills the child)
    g_sig_len = 16 * kPage;
    g_sig_buf =
        static_cast<char *>(mmap(nullptr, g_sig_len, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (g_sig_buf == MAP_FAILED) _exit(3);
    regcache_t *c = nullptr;
    if (regcache_create(o_.driver(), nullptr, &c) != 0) _exit(3);
    struct sigaction sa {};
    sa.sa_handler = RemapHandler;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGPROF, &sa, nullptr);
    struct itimerval it {};
    it.it_interval.tv_usec = 200;
    it.it_value.tv_usec = 200;
    setitimer(ITIMER_PROF, &it, nullptr);
    sigset_t prof;
    sigemptyset(&prof);
    sigaddset(&prof, SIGPROF);
    unsigned stale = 0, gets = 0, stale_hits = 0;
    const time_t end = time(nullptr) + 2;
    while (time(nullptr) < end) {
      for (size_t off = 0; off < g_sig_len; off += 4 * kPage) {
        sigprocmask(SIG_BLOCK, &prof, nullptr);
        std::memset(g_sig_buf + off, 1, 4 * kPage);  // fault in, no handler
        const unsigned before = g_remaps_begun.load();
        const bool quiet = g_remaps.load() == before;  // none in flight
        sigprocmask(SIG_UNBLOCK, &prof, nullptr);
        regcache_region_t *r = nullptr;
        const uint64_t regs = o_.registrations();
        int rc = regcache_get(c, g_sig_buf + off, 4 * kPage, kWrite, &r);
        sigprocmask(SIG_BLOCK, &prof, nullptr);
        if (rc == 0) {
          ++gets;
          // Remapped since the memset: the program changed memory it was
          // registering; no promise. Otherwise the registration must match.
          if (o_.IsStale(r) && quiet && g_remaps_begun.load() == before &&
              g_remaps.load() == before) {
            ++stale;
            if (o_.registrations() == regs) ++stale_hits;
          }
        }
        sigprocmask(SIG_UNBLOCK, &prof, nullptr);
        if (rc == 0) regcache_put(c, r);
      }
    }
    struct itimerval off {};
    setitimer(ITIMER_PROF, &off, nullptr);
    regcache_destroy(c);
    fprintf(stderr, "gets %u remaps %u stale %u (hits %u)\n", gets,
            g_remaps.load(), stale, stale_hits);
    _exit(gets > 0 && (expect_stale ? stale > 0 : stale == 0) ? 0 : 1);
  }
}

// Runs SignalRemapChild in a child (raw: the handler remaps with the raw
// syscall) and reports how it ended: "" when it exited 0.
std::string AttackTest::RunSignalRemapChild(bool raw, bool expect_stale) {
  const pid_t pid = fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    g_raw_remap = raw;
    SignalRemapChild(expect_stale);
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) return "waitpid failed";
  if (!WIFEXITED(st))
    return "child killed by signal " +
           std::to_string(WIFSIGNALED(st) ? WTERMSIG(st) : 0) +
           " (SIGALRM = hang)";
  if (WEXITSTATUS(st) != 0)
    return expect_stale ? "negative control: nothing stale"
                        : "stale registrations (or no gets)";
  return "";
}

TEST_F(AttackTest, SignalHandlerRemapsDuringGetPut) {
  if (Explicit()) GTEST_SKIP() << "the explicit source sees what the host says";
  EXPECT_EQ(RunSignalRemapChild(false, false), "");
}

// Negative control (patch): the handler's raw mmap syscall is not seen, so the
// same loop must find stale registrations (the accounting above is sound).
TEST_F(AttackTest, SignalHandlerRemapsDuringGetPut_NegativeControl) {
  if (std::strcmp(regcache_notifier_source(), "patch") != 0)
    GTEST_SKIP() << "patch only (raw syscalls are its documented miss)";
  EXPECT_EQ(RunSignalRemapChild(true, true), "");
}

// The same raw-syscall remaps under uffd, which sees the kernel's unmaps
// whoever makes them: nothing stale.
TEST_F(AttackTest, SignalHandlerRawRemapSeenByUffd) {
  if (std::strcmp(regcache_notifier_source(), "uffd") != 0)
    GTEST_SKIP() << "uffd only";
  EXPECT_EQ(RunSignalRemapChild(true, false), "");
}

// fork, the child exits, the parent writes the registered memory. A NIC's
// pin (FOLL_PIN) makes fork copy the page for the child, so the parent keeps
// its frame; the oracle's vmsplice reference is not a pin, so this case shows
// what the oracle sees (informational; see the report).
TEST_F(AttackTest, ForkThenParentWrite) {
  const size_t len = 16 * kPage;
  char *p = MapCached(len);
  ASSERT_NE(p, nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(0);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  std::memset(p, 2, len);
  const bool stale = StaleNow(p, len);
  munmap(p, len);
  if (stale)
    GTEST_SKIP() << "oracle artifact: the parent's write after fork copied "
                    "the vmsplice-held page (a FOLL_PIN registration would "
                    "keep it)";
}

}  // namespace
}  // namespace regcache

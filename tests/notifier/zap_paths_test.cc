// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/zap_paths_test.cc - the zapping paths of issue 12 items 4
// and 5 under the patch source, checked with the stale oracle
// (tests/common/stale_oracle.h): a cache over a driver that holds pages like
// a NIC.
//
// Each row of docs/notifier.md's event table added for issue 12 has a test:
// register a region (get + put: the cache keeps it), make the call, refault
// the memory as the program would, get again, and require the registration
// not to be stale (or, for protection changes, the error the new protection
// calls for). Each has a negative control (`..._NegativeControl`): the same
// steps with that hook's invalidation switched off (sources::g_patch_test_off)
// must give a stale registration (or a wrong success), which shows the test
// can fail and the oracle sees the path.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "notifier/sources.h"
#include "regcache/page.h"
#include "tests/common/stale_oracle.h"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

namespace regcache {
namespace {

using notifier::sources::g_patch_test_off;
using testing::StaleOracle;

constexpr unsigned kWrite = REGCACHE_ACCESS_LOCAL_WRITE;
const size_t kPage = regcache::page::Size();

char *MapAnon(size_t len) {
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  std::memset(p, 1, len);
  return static_cast<char *>(p);
}

class ZapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_patch_test_off.store(0);
    ASSERT_NE(o_.driver(), nullptr);
    ASSERT_EQ(regcache_config_set("MONITOR", "patch"), 0);
    int rc = regcache_create(o_.driver(), nullptr, &cache_);
    if (rc != 0 || std::strcmp(regcache_notifier_source(), "patch") != 0)
      GTEST_SKIP() << "patch source unavailable here (rc " << rc << ", source "
                   << regcache_notifier_source() << ")";
  }
  void TearDown() override {
    g_patch_test_off.store(0);
    if (cache_ != nullptr) regcache_destroy(cache_);
  }

  // get + put (the cache keeps the registration); the registration is fresh.
  void Cache(void *p, size_t len, unsigned access = kWrite) {
    regcache_region_t *r = nullptr;
    ASSERT_EQ(regcache_get(cache_, p, len, access, &r), 0);
    EXPECT_FALSE(o_.IsStale(r)) << "stale right after registration";
    regcache_put(cache_, r);
  }
  // get again: is what the cache returns stale?
  bool StaleNow(void *p, size_t len, unsigned access = kWrite) {
    regcache_region_t *r = nullptr;
    EXPECT_EQ(regcache_get(cache_, p, len, access, &r), 0);
    if (r == nullptr) return false;
    bool stale = o_.IsStale(r);
    regcache_put(cache_, r);
    return stale;
  }

  // One zapping path over an anonymous buffer: cache it, run zap(m, len)
  // (which zaps and refaults the memory; false: the kernel lacks the call, the
  // test skips saying `unsupported` and errno), get again. The registration
  // must be fresh; with `off`, the negative control, the path's hook
  // (sources::kPatchPath*) is switched off for the call and it must be stale.
  template <class Zap>
  void ExpectPathInvalidates(uint32_t path, bool off, Zap zap,
                             const char *unsupported) {
    const size_t len = 8 * kPage;
    char *m = MapAnon(len);
    Cache(m, len);
    if (off) g_patch_test_off.store(path);
    const bool ran = zap(m, len);
    const int err = errno;
    g_patch_test_off.store(0);
    const bool stale = ran && StaleNow(m, len);
    munmap(m, len);
    if (!ran) {
      GTEST_SKIP() << unsupported << ": " << strerror(err);
    }
    EXPECT_EQ(stale, off) << (off ? "negative control: not stale" : "stale");
  }

  StaleOracle o_;
  regcache_t *cache_ = nullptr;
};

// A memfd of len bytes mapped MAP_SHARED.
char *MapMemfd(size_t len, int *fd) {
  *fd = static_cast<int>(syscall(SYS_memfd_create, "zap", MFD_CLOEXEC));
  EXPECT_GE(*fd, 0);
  EXPECT_EQ(ftruncate(*fd, static_cast<off_t>(len)), 0);
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
  EXPECT_NE(p, MAP_FAILED);
  std::memset(p, 1, len);
  return static_cast<char *>(p);
}

// ---- madvise: advices outside the harmless allowlist invalidate.

// MADV_GUARD_INSTALL zaps the page and installs a guard marker;
// GUARD_REMOVE then lets it fault in again: a new frame.
bool GuardInstallRemove(char *m, size_t len) {
  if (madvise(m + kPage, kPage, MADV_GUARD_INSTALL) != 0) return false;
  EXPECT_EQ(madvise(m + kPage, kPage, MADV_GUARD_REMOVE), 0);
  std::memset(m, 2, len);
  return true;
}

constexpr char kNoGuard[] = "MADV_GUARD_INSTALL unsupported (Linux < 6.13)";

TEST_F(ZapTest, MadviseGuardInstall) {
  ExpectPathInvalidates(notifier::sources::kPatchPathMadvise, false,
                        GuardInstallRemove, kNoGuard);
}

TEST_F(ZapTest, MadviseGuardInstall_NegativeControl) {
  ExpectPathInvalidates(notifier::sources::kPatchPathMadvise, true,
                        GuardInstallRemove, kNoGuard);
}

// An advice this code does not know (the kernel rejects it) still
// invalidates; a harmless one (WILLNEED) keeps the registration.
TEST_F(ZapTest, MadviseUnknownAdviceInvalidatesHarmlessDoesNot) {
  size_t len = 8 * kPage;
  char *m = MapAnon(len);
  Cache(m, len);
  uint64_t regs = o_.registrations();
  EXPECT_EQ(madvise(m, len, MADV_WILLNEED), 0);
  EXPECT_EQ(madvise(m, len, MADV_COLD), 0);
  EXPECT_FALSE(StaleNow(m, len));
  EXPECT_EQ(o_.registrations(), regs) << "a harmless advice invalidated";
  errno = 0;
  EXPECT_EQ(madvise(m, len, 77), -1);  // no such advice
  EXPECT_EQ(errno, EINVAL);
  EXPECT_FALSE(StaleNow(m, len));
  EXPECT_EQ(o_.registrations(), regs + 1) << "unknown advice not invalidating";
  EXPECT_EQ(madvise(m, len, MADV_PAGEOUT), 0);
  EXPECT_FALSE(StaleNow(m, len));
  EXPECT_EQ(o_.registrations(), regs + 2) << "PAGEOUT not invalidating";
  munmap(m, len);
}

// ---- process_madvise on our own pid (any advice for self since 6.13).
bool ProcessMadviseSelf(char *m, size_t len) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (pidfd < 0) return false;
  struct iovec iov[2] = {{m, kPage}, {m + 4 * kPage, 2 * kPage}};
  ssize_t r = process_madvise(pidfd, iov, 2, MADV_DONTNEED, 0);
  close(pidfd);
  if (r < 0) return false;
  std::memset(m, 2, len);
  return true;
}

constexpr char kNoProcessMadvise[] =
    "process_madvise(self, DONTNEED) unsupported";

TEST_F(ZapTest, ProcessMadviseSelf) {
  ExpectPathInvalidates(notifier::sources::kPatchPathProcessMadvise, false,
                        ProcessMadviseSelf, kNoProcessMadvise);
}

TEST_F(ZapTest, ProcessMadviseSelf_NegativeControl) {
  ExpectPathInvalidates(notifier::sources::kPatchPathProcessMadvise, true,
                        ProcessMadviseSelf, kNoProcessMadvise);
}

// ---- mprotect / pkey_mprotect removing access: the next get answers from
// the new protection (-EACCES for write on read-only, -EFAULT for PROT_NONE).
// Frames do not change here; what goes stale is the access.
struct ProtCase {
  const char *name;
  bool pkey;
  int prot;
  unsigned access;
  int want;  // the get's result after the call
};

class ProtTest
    : public ZapTest,
      public ::testing::WithParamInterface<std::tuple<ProtCase, bool>> {};

TEST_P(ProtTest, NextGetAnswersFromNewProtection) {
  const ProtCase &c = std::get<0>(GetParam());
  const bool off = std::get<1>(GetParam());
  size_t len = 8 * kPage;
  char *m = MapAnon(len);
  Cache(m, len, kWrite);
  uint64_t regs = o_.registrations();
  if (off) g_patch_test_off.store(notifier::sources::kPatchPathMprotect);
  int rc =
      c.pkey ? pkey_mprotect(m, len, c.prot, -1) : mprotect(m, len, c.prot);
  g_patch_test_off.store(0);
  ASSERT_EQ(rc, 0) << strerror(errno);
  regcache_region_t *r = nullptr;
  int got = regcache_get(cache_, m, len, c.access, &r);
  if (r != nullptr) regcache_put(cache_, r);
  if (!off) {
    EXPECT_EQ(got, c.want) << c.name;
    if (c.want == 0) {  // re-registered under the new protection
      EXPECT_EQ(o_.registrations(), regs + 1) << c.name;
    }
  } else {
    // Negative control: the old registration (with write access) is hit.
    EXPECT_EQ(got, 0) << c.name;
    EXPECT_EQ(o_.registrations(), regs) << c.name;
  }
  // Adding access back needs (and gets) no invalidation.
  ASSERT_EQ(mprotect(m, len, PROT_READ | PROT_WRITE), 0);
  Cache(m, len, kWrite);
  regs = o_.registrations();
  ASSERT_EQ(mprotect(m, len, PROT_READ | PROT_WRITE | PROT_EXEC), 0);
  ASSERT_EQ(mprotect(m, len, PROT_READ | PROT_WRITE), 0);
  EXPECT_FALSE(StaleNow(m, len));
  EXPECT_EQ(o_.registrations(), regs) << "adding access invalidated";
  munmap(m, len);
}

const ProtCase kProtCases[] = {
    {"ReadOnly_GetWrite", false, PROT_READ, kWrite, -EACCES},
    {"ReadOnly_GetRead", false, PROT_READ, 0, 0},
    {"None_GetRead", false, PROT_NONE, 0, -EFAULT},
    {"PkeyReadOnly_GetWrite", true, PROT_READ, kWrite, -EACCES},
    {"PkeyNone_GetRead", true, PROT_NONE, 0, -EFAULT},
};
INSTANTIATE_TEST_SUITE_P(Mprotect, ProtTest,
                         ::testing::Combine(::testing::ValuesIn(kProtCases),
                                            ::testing::Bool()),
                         [](const auto &i) {
                           return std::string(std::get<0>(i.param).name) +
                                  (std::get<1>(i.param) ? "_NegativeControl"
                                                        : "");
                         });

// ---- files: fallocate / ftruncate / truncate of a file mapped MAP_SHARED.
enum class FileOp { kPunchHole, kFtruncate, kTruncatePath };

class FileTest
    : public ZapTest,
      public ::testing::WithParamInterface<std::tuple<FileOp, bool>> {};

TEST_P(FileTest, SharedFileMappingNotStale) {
  const FileOp op = std::get<0>(GetParam());
  const bool off = std::get<1>(GetParam());
  size_t len = 16 * kPage;
  int fd = -1;
  char path[64] = "";
  char *m = nullptr;
  if (op == FileOp::kTruncatePath) {
    std::snprintf(path, sizeof(path), "/dev/shm/regcache-zap-%d", getpid());
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) GTEST_SKIP() << "no /dev/shm: " << strerror(errno);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(len)), 0);
    void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ASSERT_NE(p, MAP_FAILED);
    m = static_cast<char *>(p);
    std::memset(m, 1, len);
  } else {
    m = MapMemfd(len, &fd);
  }
  Cache(m, len);
  uint64_t regs = o_.registrations();
  // Plain allocation and growing change no page: no invalidation.
  ASSERT_EQ(fallocate(fd, 0, 0, static_cast<off_t>(len)), 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(len)), 0);
  EXPECT_FALSE(StaleNow(m, len));
  EXPECT_EQ(o_.registrations(), regs) << "a call that zaps nothing invalidated";
  if (off) g_patch_test_off.store(notifier::sources::kPatchPathFile);
  switch (op) {
    case FileOp::kPunchHole:
      ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          static_cast<off_t>(4 * kPage),
                          static_cast<off_t>(4 * kPage)),
                0);
      break;
    case FileOp::kFtruncate:  // shrink, then grow back
      ASSERT_EQ(ftruncate(fd, static_cast<off_t>(4 * kPage)), 0);
      ASSERT_EQ(ftruncate(fd, static_cast<off_t>(len)), 0);
      break;
    case FileOp::kTruncatePath:
      ASSERT_EQ(truncate(path, static_cast<off_t>(4 * kPage)), 0);
      ASSERT_EQ(truncate(path, static_cast<off_t>(len)), 0);
      break;
  }
  g_patch_test_off.store(0);
  std::memset(m, 2, len);  // refault: new pages for the dropped ones
  EXPECT_EQ(StaleNow(m, len), off);
  munmap(m, len);
  close(fd);
  if (path[0]) unlink(path);
}

std::string FileCaseName(
    const ::testing::TestParamInfo<std::tuple<FileOp, bool>> &i) {
  static const char *const kNames[] = {"FallocatePunchHole",
                                       "FtruncateShrinkRegrow",
                                       "TruncatePathShrinkRegrow"};
  return std::string(kNames[static_cast<int>(std::get<0>(i.param))]) +
         (std::get<1>(i.param) ? "_NegativeControl" : "");
}
INSTANTIATE_TEST_SUITE_P(
    Files, FileTest,
    ::testing::Combine(::testing::Values(FileOp::kPunchHole, FileOp::kFtruncate,
                                         FileOp::kTruncatePath),
                       ::testing::Bool()),
    FileCaseName);

// ---- shmdt of a segment with an unmapped hole: the kernel detaches the
// pieces after the hole too. With the segment still existing (size from
// IPC_STAT) and already removed (IPC_RMID first: the VMA walk).
class ShmdtTest : public ZapTest,
                  public ::testing::WithParamInterface<std::tuple<bool, bool>> {
};

TEST_P(ShmdtTest, PiecesAfterAHole) {
  const bool rmid_first = std::get<0>(GetParam());
  const bool off = std::get<1>(GetParam());
  size_t len = 4 * kPage;
  int id = shmget(IPC_PRIVATE, len, IPC_CREAT | 0600);
  if (id < 0) GTEST_SKIP() << "no SysV shm: " << strerror(errno);
  char *p = static_cast<char *>(shmat(id, nullptr, 0));
  ASSERT_NE(p, reinterpret_cast<char *>(-1));
  if (rmid_first) shmctl(id, IPC_RMID, nullptr);
  std::memset(p, 1, len);
  char *tail = p + 2 * kPage;  // pages 2-3, after the hole at page 1
  Cache(tail, 2 * kPage);
  ASSERT_EQ(munmap(p + kPage, kPage), 0);  // the hole
  if (off) g_patch_test_off.store(notifier::sources::kPatchPathShmdt);
  ASSERT_EQ(shmdt(p), 0);
  g_patch_test_off.store(0);
  // The tail is gone (detached with the head); map fresh memory there without
  // MAP_FIXED (which would itself invalidate).
  void *q = mmap(tail, 2 * kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  ASSERT_EQ(q, static_cast<void *>(tail)) << "the tail was not detached";
  std::memset(tail, 2, 2 * kPage);
  EXPECT_EQ(StaleNow(tail, 2 * kPage), off);
  munmap(tail, 2 * kPage);
  if (!rmid_first) shmctl(id, IPC_RMID, nullptr);
}

INSTANTIATE_TEST_SUITE_P(
    Shm, ShmdtTest, ::testing::Combine(::testing::Bool(), ::testing::Bool()),
    [](const auto &i) {
      return std::string(std::get<0>(i.param) ? "SegmentRemoved"
                                              : "SegmentExists") +
             (std::get<1>(i.param) ? "_NegativeControl" : "");
    });

// ---- remap_file_pages: the range now maps other pages of the file.
TEST_F(ZapTest, RemapFilePages) {
  for (bool off : {false, true}) {
    SCOPED_TRACE(off ? "negative control" : "hooked");
    size_t len = 2 * kPage;
    int fd = -1;
    char *m = MapMemfd(len, &fd);
    m[kPage] = 7;
    Cache(m, kPage);
    if (off)
      g_patch_test_off.store(notifier::sources::kPatchPathRemapFilePages);
    int rc = remap_file_pages(m, kPage, 0, 1, 0);
    g_patch_test_off.store(0);
    if (rc != 0) GTEST_SKIP() << "remap_file_pages: " << strerror(errno);
    ASSERT_EQ(m[0], 7);  // page 0 now shows file page 1
    EXPECT_EQ(StaleNow(m, kPage), off);
    munmap(m, len);
    close(fd);
  }
}

// ---- mremap(MREMAP_DONTUNMAP): the old range stays mapped, its pages move.
TEST_F(ZapTest, MremapDontunmap) {
  size_t len = 4 * kPage;
  char *m = MapAnon(len);
  Cache(m, len);
  void *n = mremap(m, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
  if (n == MAP_FAILED) GTEST_SKIP() << "MREMAP_DONTUNMAP: " << strerror(errno);
  std::memset(m, 2, len);  // the old range refaults: new pages
  EXPECT_FALSE(StaleNow(m, len));
  munmap(n, len);
  munmap(m, len);
}

// ---- the rows hooked before issue 12, with the oracle. Their hooks have no
// test switch (the munmap path stays one load shorter); the negative control
// is the same steps with REGCACHE_MONITOR=none and no explicit notification,
// which needs a process of its own (ctest runs each case alone; run directly,
// the whole binary shares the first source and those cases skip).
enum class Legacy {
  kMunmapMmap,
  kMmapFixed,
  kMremapMove,
  kMadviseDontneed,
  kShmatRemap
};

class LegacyTest : public ::testing::TestWithParam<std::tuple<Legacy, bool>> {
 protected:
  void SetUp() override {
    const bool none = std::get<1>(GetParam());
    ASSERT_NE(o_.driver(), nullptr);
    ASSERT_EQ(regcache_config_set("MONITOR", none ? "none" : "patch"), 0);
    int rc = regcache_create(o_.driver(), nullptr, &cache_);
    const char *want = none ? "none" : "patch";
    if (rc != 0 || std::strcmp(regcache_notifier_source(), want) != 0)
      GTEST_SKIP() << "needs source " << want << " (rc " << rc << ", source "
                   << regcache_notifier_source()
                   << "): run this case in its own process";
  }
  void TearDown() override {
    if (cache_ != nullptr) regcache_destroy(cache_);
  }
  StaleOracle o_;
  regcache_t *cache_ = nullptr;
};

TEST_P(LegacyTest, NotStale) {
  const Legacy what = std::get<0>(GetParam());
  const bool none = std::get<1>(GetParam());
  size_t len = 8 * kPage;
  char *m = nullptr;
  int shmid = -1;
  if (what == Legacy::kShmatRemap) {
    shmid = shmget(IPC_PRIVATE, len, IPC_CREAT | 0600);
    if (shmid < 0) GTEST_SKIP() << "no SysV shm: " << strerror(errno);
  }
  m = MapAnon(len);
  regcache_region_t *r = nullptr;
  ASSERT_EQ(regcache_get(cache_, m, len, kWrite, &r), 0);
  regcache_put(cache_, r);
  switch (what) {
    case Legacy::kMunmapMmap: {
      ASSERT_EQ(munmap(m, len), 0);
      void *p = mmap(m, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      ASSERT_EQ(p, static_cast<void *>(m));
      break;
    }
    case Legacy::kMmapFixed:
      ASSERT_EQ(mmap(m, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
                static_cast<void *>(m));
      break;
    case Legacy::kMremapMove: {  // move away, then map fresh memory there
      void *n =
          mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      ASSERT_NE(n, MAP_FAILED);
      ASSERT_EQ(mremap(m, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, n), n);
      void *p = mmap(m, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      ASSERT_EQ(p, static_cast<void *>(m));
      munmap(n, len);
      break;
    }
    case Legacy::kMadviseDontneed:
      ASSERT_EQ(madvise(m, len, MADV_DONTNEED), 0);
      break;
    case Legacy::kShmatRemap:
      ASSERT_EQ(shmat(shmid, m, SHM_REMAP), static_cast<void *>(m));
      shmctl(shmid, IPC_RMID, nullptr);
      break;
  }
  std::memset(m, 2, len);
  r = nullptr;
  ASSERT_EQ(regcache_get(cache_, m, len, kWrite, &r), 0);
  EXPECT_EQ(o_.IsStale(r), none);
  regcache_put(cache_, r);
  if (what == Legacy::kShmatRemap) {
    shmdt(m);
  } else {
    munmap(m, len);
  }
}

std::string LegacyName(
    const ::testing::TestParamInfo<std::tuple<Legacy, bool>> &i) {
  static const char *const kNames[] = {"MunmapThenMmap", "MmapFixedOver",
                                       "MremapMoveThenMmap", "MadviseDontneed",
                                       "ShmatRemap"};
  return std::string(kNames[static_cast<int>(std::get<0>(i.param))]) +
         (std::get<1>(i.param) ? "_NegativeControlMonitorNone" : "");
}
INSTANTIATE_TEST_SUITE_P(
    Legacy, LegacyTest,
    ::testing::Combine(::testing::Values(Legacy::kMunmapMmap,
                                         Legacy::kMmapFixed,
                                         Legacy::kMremapMove,
                                         Legacy::kMadviseDontneed,
                                         Legacy::kShmatRemap),
                       ::testing::Bool()),
    LegacyName);

// ---- fork: the file and shmdt hooks look VMAs up through /proc/self/maps;
// an fd opened in the parent would describe the parent's mm. A child's own
// new file mapping must be found after fork (the child re-opens it).
TEST_F(ZapTest, ForkChildFileHookSeesItsOwnMappings) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(20);
    StaleOracle o;
    regcache_t *cache = nullptr;
    if (regcache_create(o.driver(), nullptr, &cache) != 0) _exit(2);
    size_t len = 8 * kPage;
    int fd = static_cast<int>(syscall(SYS_memfd_create, "zapchild", 0));
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(len)) != 0) _exit(3);
    char *m = static_cast<char *>(
        mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    if (m == MAP_FAILED) _exit(3);
    std::memset(m, 1, len);
    regcache_region_t *r = nullptr;
    if (regcache_get(cache, m, len, kWrite, &r) != 0) _exit(4);
    regcache_put(cache, r);
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                  static_cast<off_t>(len)) != 0)
      _exit(5);
    std::memset(m, 2, len);
    if (regcache_get(cache, m, len, kWrite, &r) != 0) _exit(4);
    bool stale = o.IsStale(r);
    regcache_put(cache, r);
    regcache_destroy(cache);
    _exit(stale ? 1 : 0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died: " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: stale in the fork child";
}

}  // namespace
}  // namespace regcache

// SPDX-License-Identifier: BSD-3-Clause
// The host driver alone: maps check (-EFAULT / -EACCES), RLIMIT_MEMLOCK
// (-ENOMEM), unique keys, per-page pin counts across overlapping registrations,
// frame records.
#include "drivers/host/host_driver.h"
#include "regcache/page.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <regcache/regcache.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace {

using regcache::PortRegistration;
const size_t kPage = regcache::page::Size();

class HostDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mem_ = static_cast<char *>(mmap(nullptr, 16 * kPage, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ASSERT_NE(mem_, MAP_FAILED);
    std::memset(mem_, 1, 16 * kPage);
  }
  void TearDown() override { munmap(mem_, 16 * kPage); }
  std::unique_ptr<regcache::DriverPort> d_ = regcache::host::NewHostDriver();
  char *mem_ = nullptr;
};

TEST_F(HostDriverTest, RegisterDeregisterUniqueKeys) {
  PortRegistration a, b;
  ASSERT_EQ(d_->Register(mem_, 2 * kPage, REGCACHE_ACCESS_LOCAL_WRITE, &a), 0);
  ASSERT_EQ(d_->Register(mem_ + 4 * kPage, kPage, 0, &b), 0);
  EXPECT_NE(a.lkey, b.lkey);
  EXPECT_NE(a.rkey, b.rkey);
  EXPECT_STREQ(d_->Name(), "host");
  EXPECT_EQ(regcache::host::LiveRegistrations(), 2u);
  EXPECT_EQ(d_->Deregister(a), 0);
  EXPECT_EQ(d_->Deregister(b), 0);
  EXPECT_EQ(regcache::host::LiveRegistrations(), 0u);
  EXPECT_EQ(regcache::host::PinnedBytes(), 0u);
}

TEST_F(HostDriverTest, UnmappedAndReadOnly) {
  PortRegistration r;
  ASSERT_EQ(mprotect(mem_ + 2 * kPage, kPage, PROT_READ), 0);
  EXPECT_EQ(
      d_->Register(mem_ + 2 * kPage, kPage, REGCACHE_ACCESS_REMOTE_WRITE, &r),
      -EACCES);
  EXPECT_EQ(d_->Register(mem_, 3 * kPage, REGCACHE_ACCESS_LOCAL_WRITE, &r),
            -EACCES);
  ASSERT_EQ(
      d_->Register(mem_ + 2 * kPage, kPage, REGCACHE_ACCESS_REMOTE_READ, &r),
      0);
  EXPECT_EQ(d_->Deregister(r), 0);
  ASSERT_EQ(mprotect(mem_ + 3 * kPage, kPage, PROT_NONE), 0);
  EXPECT_EQ(d_->Register(mem_ + 3 * kPage, kPage, 0, &r), -EFAULT);
  ASSERT_EQ(munmap(mem_ + 8 * kPage, kPage), 0);
  EXPECT_EQ(d_->Register(mem_ + 7 * kPage, 2 * kPage, 0, &r), -EFAULT);
  EXPECT_EQ(regcache::host::LiveRegistrations(), 0u);
}

TEST_F(HostDriverTest, MemlockLimitIsEnomem) {
  struct rlimit old, lim;
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &old), 0);
  lim = old;
  lim.rlim_cur = 4 * kPage;
  ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &lim), 0);
  PortRegistration a, b;
  EXPECT_EQ(d_->Register(mem_, 5 * kPage, 0, &b), -ENOMEM);
  ASSERT_EQ(d_->Register(mem_, 3 * kPage, 0, &a), 0);
  EXPECT_EQ(d_->Register(mem_ + 8 * kPage, 2 * kPage, 0, &b), -ENOMEM);
  // Overlapping pages are pinned once: this fits.
  ASSERT_EQ(d_->Register(mem_ + 2 * kPage, 2 * kPage, 0, &b), 0);
  EXPECT_EQ(regcache::host::PinnedBytes(), 4 * kPage);
  EXPECT_EQ(d_->Deregister(a), 0);
  EXPECT_EQ(regcache::host::PinnedBytes(), 2 * kPage);  // b's pages stay pinned
  EXPECT_EQ(d_->Deregister(b), 0);
  ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &old), 0);
}

TEST_F(HostDriverTest, FramesFreshThenStaleAfterRemap) {
  if (!regcache::host::FramesVisible())
    GTEST_SKIP() << "pagemap frames not visible";
  PortRegistration r;
  ASSERT_EQ(d_->Register(mem_, 2 * kPage, REGCACHE_ACCESS_LOCAL_WRITE, &r), 0);
  EXPECT_EQ(regcache::host::CheckFrames(r.handle),
            regcache::host::FrameCheck::kFresh);
  // Replace the pages: munmap + mmap at the same address, touched.
  ASSERT_EQ(munmap(mem_, 2 * kPage), 0);
  ASSERT_EQ(mmap(mem_, 2 * kPage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
            mem_);
  EXPECT_EQ(regcache::host::CheckFrames(r.handle),
            regcache::host::FrameCheck::kStale)
      << "untouched new mapping: no page present";
  EXPECT_EQ(d_->Deregister(r), 0);  // fine for memory that changed under it
}

// The mappedness check, both ways (PROCMAP_QUERY where the kernel has it, and
// the /proc/self/maps reader kernels before 6.11 use): mapped, a hole,
// PROT_NONE, read-only asked for write, and a line longer than the reader's
// buffer (a mapping of a file with a very long name).
TEST_F(HostDriverTest, CheckMappedBothWays) {
  using regcache::host::CheckMapped;
  char path[] = "/tmp/regcache_host_check_XXXXXX";
  {
    int tfd = mkstemp(path);
    ASSERT_GE(tfd, 0);
    close(tfd);
  }
  // A long name: a directory chain is needed for > 255 bytes per component.
  std::string dir = std::string(path) + "_" + std::string(200, 'x');
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  std::string file = dir;
  std::vector<std::string> dirs{dir};
  for (int i = 0; i < 15; ++i) {  // a ~3.3 KB path (PATH_MAX 4096)
    file += "/" + std::string(200, 'y');
    if (i < 14) {
      ASSERT_EQ(mkdir(file.c_str(), 0700), 0);
      dirs.push_back(file);
    }
  }
  int fd = open(file.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0) << strerror(errno);
  ASSERT_EQ(ftruncate(fd, 4 * kPage), 0);
  char *f = static_cast<char *>(
      mmap(nullptr, 4 * kPage, PROT_READ, MAP_PRIVATE, fd, 0));
  ASSERT_NE(f, MAP_FAILED);
  char *hole =
      static_cast<char *>(mmap(nullptr, 3 * kPage, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(hole, MAP_FAILED);
  ASSERT_EQ(munmap(hole + kPage, kPage), 0);
  ASSERT_EQ(mprotect(mem_ + 8 * kPage, kPage, PROT_NONE), 0);
  for (bool maps_file : {false, true}) {
    SCOPED_TRACE(maps_file ? "maps file" : "PROCMAP_QUERY or fallback");
    EXPECT_EQ(CheckMapped(mem_, 8 * kPage, true, maps_file), 0);
    EXPECT_EQ(CheckMapped(mem_, 9 * kPage, false, maps_file), -EFAULT);
    EXPECT_EQ(CheckMapped(hole, 3 * kPage, false, maps_file), -EFAULT);
    EXPECT_EQ(CheckMapped(hole, kPage, true, maps_file), 0);
    EXPECT_EQ(CheckMapped(f, 4 * kPage, false, maps_file), 0);
    EXPECT_EQ(CheckMapped(f, 4 * kPage, true, maps_file), -EACCES);
  }
  munmap(hole, kPage);
  munmap(hole + 2 * kPage, kPage);
  munmap(f, 4 * kPage);
  close(fd);
  unlink(file.c_str());
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) rmdir(it->c_str());
  unlink(path);
  ASSERT_EQ(mprotect(mem_ + 8 * kPage, kPage, PROT_READ | PROT_WRITE), 0);
}

}  // namespace

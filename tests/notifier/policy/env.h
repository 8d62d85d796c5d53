/* SPDX-License-Identifier: BSD-3-Clause */
// tests/notifier/policy/env.h - hostile environments for the source-selection
// tests, each applied inside a child process: drop root, block userfaultfd
// with seccomp (as container profiles do), load UCX's libucm and make it patch
// libc (as UCX does at init), or patch libc's munmap with a foreign hook that
// reports nothing (a stand-in for Open MPI's patcher or libfabric memhooks).
#ifndef REGCACHE_TESTS_NOTIFIER_POLICY_ENV_H_
#define REGCACHE_TESTS_NOTIFIER_POLICY_ENV_H_

#include <dlfcn.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace regcache::testing {

// setuid to nobody (65534), keeping /proc/self readable (dumpable).
inline bool DropToNobody() {
  if (geteuid() != 0) return true;  // already unprivileged
  if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
    return false;
  prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
  return geteuid() == 65534;
}

// userfaultfd(2) and the USERFAULTFD_IOC_NEW ioctl of /dev/userfaultfd fail
// with EPERM from now on, in this process and its children.
inline bool BlockUserfaultfd() {
  constexpr uint32_t kIocNew = 0xAA00;  // _IO(0xAA, 0x00)
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_userfaultfd, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
               offsetof(struct seccomp_data, args[1])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kIocNew, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {
      static_cast<unsigned short>(sizeof(f) / sizeof(f[0])), f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return false;
  errno = 0;
  return syscall(__NR_userfaultfd, 0) < 0 && errno == EPERM;
}

// What loading UCX does: libucs (which needs libucm; libucm alone does not
// load: it refers to libucs's ucs_load_modules) initializes libucm, which
// patches libc's entry points at once in its default bistro mode; then UCX's
// rcache asks it for VM_UNMAPPED events. Returns false when UCX is not
// installed or refused.
inline bool LoadUcmAndPatch() {
  if (dlopen("libucs.so.0", RTLD_NOW | RTLD_GLOBAL) == nullptr) return false;
  void *h = dlopen("libucm.so.0", RTLD_NOW | RTLD_GLOBAL);
  if (h == nullptr) return false;
  using Cb = void (*)(int, void *, void *);
  using Set = int (*)(int, int, Cb, void *);
  auto set = reinterpret_cast<Set>(dlsym(h, "ucm_set_event_handler"));
  if (set == nullptr) return false;
  constexpr int kVmUnmapped = 1 << 17;
  // UCX's rcache listens at priority 1000; the handler does nothing here.
  return set(
             kVmUnmapped, 1000, [](int, void *, void *) {}, nullptr) == 0;
}

extern "C" inline int ForeignMunmapHook(void *addr, size_t len) {
  return static_cast<int>(syscall(SYS_munmap, addr, len));
}

// A patcher that tells nobody: libc's munmap now jumps (movabs/jmp rax, as
// libucm's bistro does far from libc) to a hook that only does the syscall.
// Call while single-threaded.
inline bool PatchMunmapForeign() {
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (libc == nullptr) return false;
  auto *entry = static_cast<uint8_t *>(dlsym(libc, "munmap"));
  if (entry == nullptr) return false;
  uintptr_t page = reinterpret_cast<uintptr_t>(entry) & ~uintptr_t{4095};
  size_t span =
      reinterpret_cast<uintptr_t>(entry) + 12 - page > 4096 ? 8192 : 4096;
  if (mprotect(reinterpret_cast<void *>(page), span,
               PROT_READ | PROT_WRITE | PROT_EXEC) != 0)
    return false;
  uint64_t hook = reinterpret_cast<uint64_t>(&ForeignMunmapHook);
  uint8_t code[12] = {0x48, 0xB8};
  memcpy(code + 2, &hook, 8);
  code[10] = 0xFF;
  code[11] = 0xE0;
  memcpy(entry, code, sizeof(code));
  return mprotect(reinterpret_cast<void *>(page), span,
                  PROT_READ | PROT_EXEC) == 0;
}

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_NOTIFIER_POLICY_ENV_H_

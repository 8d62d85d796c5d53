// SPDX-License-Identifier: BSD-3-Clause
// tests/notifier/policy/hostile_exec.cc - runs a command in a hostile
// environment: hostile_exec [--block-uffd] [--nobody] -- command [args].
// --nobody drops to uid/gid 65534; --block-uffd installs a seccomp filter
// that makes userfaultfd fail with EPERM (kept across exec, as a container
// runtime's profile is). Exit 126 when the environment cannot be set up.
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "tests/notifier/policy/env.h"

int main(int argc, char **argv) {
  bool block = false, nobody = false;
  int i = 1;
  for (; i < argc && std::strcmp(argv[i], "--") != 0; ++i) {
    if (std::strcmp(argv[i], "--block-uffd") == 0) block = true;
    if (std::strcmp(argv[i], "--nobody") == 0) nobody = true;
  }
  if (i + 1 >= argc) {
    std::fprintf(stderr,
                 "usage: hostile_exec [--block-uffd] [--nobody] -- cmd\n");
    return 126;
  }
  if (nobody && !regcache::testing::DropToNobody()) return 126;
  if (block && !regcache::testing::BlockUserfaultfd()) return 126;
  execvp(argv[i + 1], argv + i + 1);
  std::perror("execvp");
  return 126;
}

/* SPDX-License-Identifier: BSD-3-Clause */
// tests/common/fork_child.h - run a piece of a test in a fork child that cannot
// hang the test: the child runs under alarm(), the parent waits a bounded time
// and then kills it.
//
//   RunChild(fn, timeout_s)  fork; the child arms alarm(timeout_s), runs fn and
//                            _exit()s with its result; the parent polls
//                            waitpid for timeout_s + 5 s, then SIGKILLs.
//                            Returns the wait status (-1 if fork failed).
//   StartChild / WaitChild   the same in two steps, for a parent that acts
//                            while the child runs.
//   ChildOk(status)          exited with 0.
//   ChildHung(status)        killed by SIGALRM (the child's alarm fired).
//   Describe(status)         "exit N", "HUNG (SIGALRM)", "signal N".
//   FirstFailingChild(n, fn, timeout_s, &why)
//                            RunChild n times in a row, stopping at the first
//                            child that fails: its index (why: Describe of
//                            its status), or -1 when all n exited 0.
//   LockHolder(mu)           a thread that holds mu from Start() until
//                            Release() (or destruction): the lock a fork
//                            inherits held by a thread the child lacks.
//   ForkWhileHeld(mu, fn, timeout_s)
//                            RunChild while a LockHolder holds mu.
//   WithAtforkOff(set_off, fn)
//                            fn() with a lock's atfork child handler switched
//                            off (set_off(true), then set_off(false) however
//                            fn returns): the negative control of a fork
//                            test, whose child must then hang.
//
// With REGCACHE_TEST_GDB_HUNG set, a child that is about to time out prints a
// backtrace of its threads (gdb, if installed) and of the alarm'ed thread.
//
// A child is a copy of a multi-threaded process: fn must use only what the
// code under test makes fork-safe (that is usually what is being tested).
#ifndef REGCACHE_TESTS_COMMON_FORK_CHILD_H_
#define REGCACHE_TESTS_COMMON_FORK_CHILD_H_

#include <execinfo.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace regcache::testing {

// Forks; the child arms alarm(timeout_s), runs fn and _exit()s with its
// result. The parent gets the pid (-1 if fork failed) and may work before
// WaitChild.
inline pid_t StartChild(const std::function<int()> &fn, unsigned timeout_s) {
  pid_t pid = fork();
  if (pid == 0) {
    if (getenv("REGCACHE_TEST_GDB_HUNG")) {
      signal(SIGALRM, [](int) {
        void *bt[64];
        int n = backtrace(bt, 64);
        backtrace_symbols_fd(bt, n, 2);
        signal(SIGALRM, SIG_DFL);
        raise(SIGALRM);
      });
    }
    alarm(timeout_s);
    _exit(fn());
  }
  return pid;
}

// The wait status of a StartChild child (-1 for pid -1). Bounded: (timeout_s
// + 5) s of 10 ms polls, then the child is killed.
inline int WaitChild(pid_t pid, unsigned timeout_s) {
  if (pid < 0) return -1;
  int status = 0;
  for (unsigned i = 0; i < (timeout_s + 5) * 100; ++i) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    if (timeout_s > 2 && i == (timeout_s - 2) * 100 &&
        getenv("REGCACHE_TEST_GDB_HUNG")) {
      std::string cmd = "gdb -p " + std::to_string(pid) +
                        " -batch -ex 'thread apply all bt' >&2 2>/dev/null";
      (void)!system(cmd.c_str());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return status;
}

inline int RunChild(const std::function<int()> &fn, unsigned timeout_s) {
  return WaitChild(StartChild(fn, timeout_s), timeout_s);
}

inline bool ChildOk(int status) {
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

inline bool ChildHung(int status) {
  return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM;
}

inline std::string Describe(int status) {
  if (status == -1) return "fork failed";
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    return sig == SIGALRM ? "HUNG (SIGALRM)" : "signal " + std::to_string(sig);
  }
  return "status " + std::to_string(status);
}

// Forks n children one after another (each RunChild(fn, timeout_s)), for a
// parent thread racing them. The index of the first that fails, with
// Describe(status) in *why; -1 when every one exited 0.
inline int FirstFailingChild(int n, const std::function<int()> &fn,
                             unsigned timeout_s, std::string *why) {
  for (int i = 0; i < n; ++i) {
    const int st = RunChild(fn, timeout_s);
    if (!ChildOk(st)) {
      *why = Describe(st);
      return i;
    }
  }
  return -1;
}

// A thread that holds `mu` from Start() until Release().
class LockHolder {
 public:
  explicit LockHolder(std::mutex &mu) : mu_(mu) {}
  ~LockHolder() { Release(); }
  LockHolder(const LockHolder &) = delete;
  LockHolder &operator=(const LockHolder &) = delete;
  void Start() {
    t_ = std::thread([this] {
      std::lock_guard<std::mutex> g(mu_);
      held_.store(true);
      // Bounded: the test releases it right after its fork (or at teardown).
      while (!release_.load())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
    while (!held_.load())
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void Release() {
    release_.store(true);
    if (t_.joinable()) t_.join();
  }

 private:
  std::mutex &mu_;
  std::thread t_;
  std::atomic<bool> held_{false};
  std::atomic<bool> release_{false};
};

// RunChild(fn, timeout_s) while another thread holds mu (a LockHolder,
// released right after the fork returns).
inline int ForkWhileHeld(std::mutex &mu, const std::function<int()> &fn,
                         unsigned timeout_s) {
  LockHolder h(mu);
  h.Start();
  const int status = RunChild(fn, timeout_s);
  h.Release();
  return status;
}

// fn() with a lock's atfork child handler off: set_off(true) before,
// set_off(false) after. Returns fn's result (a wait status).
inline int WithAtforkOff(void (*set_off)(bool),
                         const std::function<int()> &fn) {
  set_off(true);
  const int st = fn();
  set_off(false);
  return st;
}

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_COMMON_FORK_CHILD_H_

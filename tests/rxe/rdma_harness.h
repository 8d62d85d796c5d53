/* SPDX-License-Identifier: BSD-3-Clause */
// tests/rxe/rdma_harness.h - a small raw-verbs harness for the rxe tests.
//
// Loopback opens one RDMA device (REGCACHE_RXE_DEVICE, else rxe0 if present,
// else the first device), a PD, one CQ and two RC QPs connected to each other
// on port 1 of the same device, and posts RDMA WRITE / READ between them,
// waiting for each completion. Addressing: on an Ethernet (RoCE) port the first
// RoCEv2 IPv4-mapped GID (index 1 on rxe0 in the guest; REGCACHE_RXE_GID_INDEX
// overrides), on an InfiniBand port the port's LID.
//
// It also keeps one raw MR (the "staging" buffer, registered with ibv_reg_mr
// outside any cache) used as the local side of transfers, so tests only need
// the cache for the remote side.
//
// Errors are returned as strings ("" = success) so that tests can ASSERT_EQ("",
// ...) and print the verbs call, errno and work-completion status that failed.
// A failed work completion moves the QPs to the error state; the harness
// reconnects them (new QPs) on the next post, so one failure does not poison
// the following cycles.
//
// NoDeviceReason() says why the tests cannot run here (no device: the host's
// kernel has no RDMA); tests GTEST_SKIP with it through
// RXE_SKIP_IF_NO_DEVICE().
#ifndef REGCACHE_TESTS_RXE_RDMA_HARNESS_H_
#define REGCACHE_TESTS_RXE_RDMA_HARNESS_H_

#include <infiniband/verbs.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace regcache_rxe {

// "" when an RDMA device is present; else a message for GTEST_SKIP naming the
// reason and how to run the tests (inside the rxe guest, or on a host with an
// HCA).
std::string NoDeviceReason();

#define RXE_SKIP_IF_NO_DEVICE()                                            \
  do {                                                                     \
    const std::string rxe_skip_reason_ = ::regcache_rxe::NoDeviceReason(); \
    if (!rxe_skip_reason_.empty()) GTEST_SKIP() << rxe_skip_reason_;       \
  } while (0)

class Loopback {
 public:
  Loopback() = default;
  ~Loopback();
  Loopback(const Loopback &) = delete;
  Loopback &operator=(const Loopback &) = delete;

  // Opens the device, PD, CQ, staging MR of `staging_bytes`, and two connected
  // RC QPs.
  std::string Open(size_t staging_bytes = 1u << 20);

  ibv_context *context() const { return ctx_; }
  ibv_pd *pd() const { return pd_; }
  const std::string &device_name() const { return dev_name_; }
  int gid_index() const { return gid_index_; }
  bool roce() const { return roce_; }

  // The staging buffer: page-aligned, registered (LOCAL_WRITE | REMOTE_*) as a
  // raw MR.
  uint8_t *staging() const { return staging_; }
  size_t staging_bytes() const { return staging_bytes_; }
  uint32_t staging_lkey() const { return staging_mr_->lkey; }
  uint32_t staging_rkey() const { return staging_mr_->rkey; }

  // RDMA WRITE of [local, local+len) (registered with lkey) to
  // remote_addr/rkey, posted on QP `from` (0 or 1) to its peer; waits for the
  // completion (timeout_ms).
  std::string Write(const void *local, uint32_t lkey, size_t len,
                    uint64_t remote_addr, uint32_t rkey, int from = 0,
                    int timeout_ms = 20000);
  // RDMA READ of remote_addr/rkey into [local, local+len) (lkey, LOCAL_WRITE).
  std::string Read(void *local, uint32_t lkey, size_t len, uint64_t remote_addr,
                   uint32_t rkey, int from = 0, int timeout_ms = 20000);
  // Shorthands with the staging buffer as the local side.
  std::string WriteFromStaging(size_t len, uint64_t remote_addr,
                               uint32_t rkey) {
    return Write(staging_, staging_lkey(), len, remote_addr, rkey);
  }
  std::string ReadToStaging(size_t len, uint64_t remote_addr, uint32_t rkey) {
    return Read(staging_, staging_lkey(), len, remote_addr, rkey);
  }

  // Work completions that failed so far (each led to a reconnect).
  uint64_t failed_completions() const { return failed_; }

 private:
  std::string Post(ibv_wr_opcode op, void *local, uint32_t lkey, size_t len,
                   uint64_t remote_addr, uint32_t rkey, int from,
                   int timeout_ms);
  std::string Connect();
  void DestroyQps();

  ibv_context *ctx_ = nullptr;
  ibv_pd *pd_ = nullptr;
  ibv_cq *cq_ = nullptr;
  ibv_qp *qp_[2] = {nullptr, nullptr};
  ibv_mr *staging_mr_ = nullptr;
  uint8_t *staging_ = nullptr;
  size_t staging_bytes_ = 0;
  std::string dev_name_;
  int gid_index_ = -1;
  bool roce_ = false;
  ibv_gid gid_{};
  uint16_t lid_ = 0;
  ibv_mtu mtu_ = IBV_MTU_1024;
  bool broken_ = false;
  uint64_t wr_id_ = 0;
  uint64_t failed_ = 0;
};

// Fills buf with a pattern that depends on `seed` and the offset. Every byte is
// odd (so memory filled with an even byte, e.g. fresh zero pages, never matches
// it); different seeds give unrelated words.
void FillPattern(void *buf, size_t len, uint64_t seed);
// Number of bytes of buf that differ from FillPattern(seed).
size_t CountWrongBytes(const void *buf, size_t len, uint64_t seed);

}  // namespace regcache_rxe

#endif  // REGCACHE_TESTS_RXE_RDMA_HARNESS_H_

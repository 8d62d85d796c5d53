// SPDX-License-Identifier: BSD-3-Clause
// tests/rxe/rdma_harness.cc - see rdma_harness.h.
#include "tests/rxe/rdma_harness.h"

#include <arpa/inet.h>
#include <sched.h>
#include <sys/mman.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

namespace regcache_rxe {
namespace {

std::string Errno(const char *call, int err) {
  return std::string(call) + ": " + std::strerror(err) + " (errno " +
         std::to_string(err) + ")";
}

constexpr int kPort = 1;
constexpr int kAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                        IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;

bool IsIpv4Mapped(const ibv_gid &gid) {
  static const uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(gid.raw, kPrefix, sizeof kPrefix) == 0;
}

}  // namespace

std::string NoDeviceReason() {
  int n = 0;
  errno = 0;
  ibv_device **list = ibv_get_device_list(&n);
  const int err = errno;
  if (list != nullptr) ibv_free_device_list(list);
  if (list != nullptr && n > 0) return "";
  std::string why = list == nullptr
                        ? Errno("ibv_get_device_list", err)
                        : std::string("ibv_get_device_list: no device");
  return "no RDMA device here (" + why +
         "). These tests need one: run them inside the Soft-RoCE guest with "
         "tests/rxe/run-rxe-tests.sh <build-dir>, or on a host with an HCA "
         "with "
         "`ctest -L rxe` (see docs/rxe.md).";
}

void FillPattern(void *buf, size_t len, uint64_t seed) {
  auto *p = static_cast<uint8_t *>(buf);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
  for (size_t i = 0; i < len; i += 8) {
    // Word i/8 of seed s: distinct for distinct seeds (odd multiplier), never 0
    // bytes-wise all at once (the | below).
    uint64_t w = (x + (i / 8) * 0xd1b54a32d192ed03ull) | 0x0101010101010101ull;
    std::memcpy(p + i, &w, len - i < 8 ? len - i : 8);
  }
}

size_t CountWrongBytes(const void *buf, size_t len, uint64_t seed) {
  const auto *p = static_cast<const uint8_t *>(buf);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
  size_t wrong = 0;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w = (x + (i / 8) * 0xd1b54a32d192ed03ull) | 0x0101010101010101ull;
    uint8_t want[8];
    std::memcpy(want, &w, 8);
    const size_t n = len - i < 8 ? len - i : 8;
    for (size_t k = 0; k < n; ++k) wrong += p[i + k] != want[k];
  }
  return wrong;
}

Loopback::~Loopback() {
  DestroyQps();
  if (staging_mr_ != nullptr) ibv_dereg_mr(staging_mr_);
  if (staging_ != nullptr) munmap(staging_, staging_bytes_);
  if (cq_ != nullptr) ibv_destroy_cq(cq_);
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
  if (ctx_ != nullptr) ibv_close_device(ctx_);
}

std::string Loopback::Open(size_t staging_bytes) {
  int n = 0;
  ibv_device **list = ibv_get_device_list(&n);
  if (list == nullptr) return Errno("ibv_get_device_list", errno);
  if (n == 0) {
    ibv_free_device_list(list);
    return "no RDMA device";
  }
  const char *want = std::getenv("REGCACHE_RXE_DEVICE");
  ibv_device *dev = nullptr;
  for (int i = 0; i < n; ++i) {
    const char *name = ibv_get_device_name(list[i]);
    if (want != nullptr && *want != '\0') {
      if (std::strcmp(name, want) == 0) dev = list[i];
    } else if (std::strcmp(name, "rxe0") == 0) {
      dev = list[i];
    }
  }
  if (dev == nullptr && (want == nullptr || *want == '\0')) dev = list[0];
  if (dev == nullptr) {
    ibv_free_device_list(list);
    return std::string("REGCACHE_RXE_DEVICE=") + want + ": no such device";
  }
  dev_name_ = ibv_get_device_name(dev);
  ctx_ = ibv_open_device(dev);
  const int open_err = errno;
  ibv_free_device_list(list);
  if (ctx_ == nullptr) return Errno("ibv_open_device", open_err);

  ibv_port_attr port{};
  if (int e = ibv_query_port(ctx_, kPort, &port))
    return Errno("ibv_query_port", e);
  if (port.state != IBV_PORT_ACTIVE) {
    return dev_name_ + " port 1 is not active (state " +
           std::to_string(port.state) + ")";
  }
  mtu_ = port.active_mtu;
  lid_ = port.lid;
  roce_ = port.link_layer == IBV_LINK_LAYER_ETHERNET;
  const char *gid_env = std::getenv("REGCACHE_RXE_GID_INDEX");
  if (gid_env != nullptr && *gid_env != '\0') {
    gid_index_ = std::atoi(gid_env);
  } else if (roce_) {
    // The first RoCEv2 GID holding an IPv4-mapped address (index 1 on rxe0).
    for (int i = 0; i < port.gid_tbl_len && gid_index_ < 0; ++i) {
      ibv_gid_entry entry{};
      if (ibv_query_gid_ex(ctx_, kPort, i, &entry, 0) != 0) continue;
      ibv_gid g;
      std::memcpy(g.raw, entry.gid.raw, sizeof g.raw);
      if (entry.gid_type == IBV_GID_TYPE_ROCE_V2 && IsIpv4Mapped(g))
        gid_index_ = i;
    }
    if (gid_index_ < 0)
      return dev_name_ + ": no RoCEv2 IPv4 GID (set REGCACHE_RXE_GID_INDEX)";
  } else {
    gid_index_ = 0;
  }
  if (int e = ibv_query_gid(ctx_, kPort, gid_index_, &gid_))
    return Errno("ibv_query_gid", e);

  pd_ = ibv_alloc_pd(ctx_);
  if (pd_ == nullptr) return Errno("ibv_alloc_pd", errno);
  cq_ = ibv_create_cq(ctx_, 64, nullptr, nullptr, 0);
  if (cq_ == nullptr) return Errno("ibv_create_cq", errno);

  staging_bytes_ = (staging_bytes + 4095) & ~size_t{4095};
  void *p = mmap(nullptr, staging_bytes_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Errno("mmap", errno);
  staging_ = static_cast<uint8_t *>(p);
  std::memset(staging_, 0, staging_bytes_);
  staging_mr_ = ibv_reg_mr(pd_, staging_, staging_bytes_, kAccess);
  if (staging_mr_ == nullptr) return Errno("ibv_reg_mr(staging)", errno);
  return Connect();
}

void Loopback::DestroyQps() {
  for (auto &qp : qp_) {
    if (qp != nullptr) ibv_destroy_qp(qp);
    qp = nullptr;
  }
  // Drain completions of the destroyed QPs (flushed work requests).
  if (cq_ != nullptr) {
    ibv_wc wc[16];
    while (ibv_poll_cq(cq_, 16, wc) > 0) {
    }
  }
}

std::string Loopback::Connect() {
  DestroyQps();
  for (auto &qp : qp_) {
    ibv_qp_init_attr init{};
    init.send_cq = cq_;
    init.recv_cq = cq_;
    init.qp_type = IBV_QPT_RC;
    init.sq_sig_all = 1;
    init.cap.max_send_wr = 16;
    init.cap.max_recv_wr = 16;
    init.cap.max_send_sge = 1;
    init.cap.max_recv_sge = 1;
    qp = ibv_create_qp(pd_, &init);
    if (qp == nullptr) return Errno("ibv_create_qp", errno);
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = kPort;
    a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                        IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
    if (int e = ibv_modify_qp(qp, &a,
                              IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                  IBV_QP_ACCESS_FLAGS)) {
      return Errno("ibv_modify_qp(INIT)", e);
    }
  }
  for (int i = 0; i < 2; ++i) {
    ibv_qp *qp = qp_[i];
    ibv_qp *peer = qp_[1 - i];
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = mtu_;
    a.dest_qp_num = peer->qp_num;
    a.rq_psn = 0;
    a.max_dest_rd_atomic = 16;
    a.min_rnr_timer = 12;
    a.ah_attr.port_num = kPort;
    if (roce_) {
      a.ah_attr.is_global = 1;
      a.ah_attr.grh.dgid = gid_;
      a.ah_attr.grh.sgid_index = static_cast<uint8_t>(gid_index_);
      a.ah_attr.grh.hop_limit = 64;
    } else {
      a.ah_attr.dlid = lid_;
    }
    if (int e = ibv_modify_qp(qp, &a,
                              IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
                                  IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                  IBV_QP_MAX_DEST_RD_ATOMIC |
                                  IBV_QP_MIN_RNR_TIMER)) {
      return Errno("ibv_modify_qp(RTR)", e);
    }
    ibv_qp_attr r{};
    r.qp_state = IBV_QPS_RTS;
    r.timeout = 16;
    r.retry_cnt = 7;
    r.rnr_retry = 7;
    r.sq_psn = 0;
    r.max_rd_atomic = 16;
    if (int e = ibv_modify_qp(qp, &r,
                              IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                  IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                  IBV_QP_MAX_QP_RD_ATOMIC)) {
      return Errno("ibv_modify_qp(RTS)", e);
    }
  }
  broken_ = false;
  return "";
}

std::string Loopback::Post(ibv_wr_opcode op, void *local, uint32_t lkey,
                           size_t len, uint64_t remote_addr, uint32_t rkey,
                           int from, int timeout_ms) {
  if (qp_[0] == nullptr) return "Loopback not open";
  if (broken_) {
    if (std::string e = Connect(); !e.empty()) return "reconnect: " + e;
  }
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(local);
  sge.length = static_cast<uint32_t>(len);
  sge.lkey = lkey;
  ibv_send_wr wr{};
  ibv_send_wr *bad = nullptr;
  wr.wr_id = ++wr_id_;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = remote_addr;
  wr.wr.rdma.rkey = rkey;
  if (int e = ibv_post_send(qp_[from & 1], &wr, &bad)) {
    broken_ = true;
    return Errno("ibv_post_send", e);
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    ibv_wc wc{};
    const int n = ibv_poll_cq(cq_, 1, &wc);
    if (n < 0) {
      broken_ = true;
      return "ibv_poll_cq failed";
    }
    if (n == 1) {
      if (wc.wr_id != wr.wr_id)
        continue;  // a stale completion of an earlier failure
      if (wc.status != IBV_WC_SUCCESS) {
        ++failed_;
        broken_ = true;
        return std::string(op == IBV_WR_RDMA_WRITE ? "RDMA WRITE"
                                                   : "RDMA READ") +
               " completion: " + ibv_wc_status_str(wc.status) + " (status " +
               std::to_string(wc.status) + ", vendor_err " +
               std::to_string(wc.vendor_err) + ")";
      }
      return "";
    }
    if (std::chrono::steady_clock::now() > deadline) {
      broken_ = true;
      return "timed out after " + std::to_string(timeout_ms) +
             " ms waiting for a completion";
    }
    sched_yield();
  }
}

std::string Loopback::Write(const void *local, uint32_t lkey, size_t len,
                            uint64_t remote_addr, uint32_t rkey, int from,
                            int timeout_ms) {
  return Post(IBV_WR_RDMA_WRITE, const_cast<void *>(local), lkey, len,
              remote_addr, rkey, from, timeout_ms);
}

std::string Loopback::Read(void *local, uint32_t lkey, size_t len,
                           uint64_t remote_addr, uint32_t rkey, int from,
                           int timeout_ms) {
  return Post(IBV_WR_RDMA_READ, local, lkey, len, remote_addr, rkey, from,
              timeout_ms);
}

}  // namespace regcache_rxe

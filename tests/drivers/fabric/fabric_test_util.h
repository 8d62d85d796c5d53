/* SPDX-License-Identifier: BSD-3-Clause */
// tests/drivers/fabric/fabric_test_util.h - a loopback libfabric stack for
// tests: fabric, domain, and (for RMA checks) an RDM endpoint that can write to
// itself.
#ifndef REGCACHE_TESTS_DRIVERS_FABRIC_FABRIC_TEST_UTIL_H_
#define REGCACHE_TESTS_DRIVERS_FABRIC_FABRIC_TEST_UTIL_H_

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>

namespace regcache::testing {

// The mr_mode bits the fabric driver can honour (what a consumer passes as
// hints).
constexpr uint64_t kSupportedMrMode = FI_MR_LOCAL | FI_MR_VIRT_ADDR |
                                      FI_MR_ALLOCATED | FI_MR_PROV_KEY |
                                      FI_MR_ENDPOINT;

struct FabricStack {
  fi_info *info = nullptr;
  fid_fabric *fabric = nullptr;
  fid_domain *domain = nullptr;
  fid_av *av = nullptr;
  fid_cq *cq = nullptr;
  fid_ep *ep = nullptr;
  fi_addr_t self = FI_ADDR_UNSPEC;

  FabricStack() = default;
  FabricStack(const FabricStack &) = delete;
  FabricStack &operator=(const FabricStack &) = delete;
  ~FabricStack() { Close(); }

  // Opens fabric and domain for provider `prov` ("tcp" -> tcp;ofi_rxm on
  // 127.0.0.1, "shm"), asking for mr_mode bits `mr_mode`. Returns "" or why it
  // could not (the test then skips: a provider missing on this machine is not a
  // driver bug).
  std::string Open(const char *prov, uint64_t mr_mode) {
    fi_info *hints = fi_allocinfo();
    hints->fabric_attr->prov_name = strdup(prov);
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_MSG | FI_RMA;
    hints->domain_attr->mr_mode = static_cast<int>(mr_mode);
    hints->domain_attr->threading = FI_THREAD_SAFE;
    const char *node = std::strcmp(prov, "tcp") == 0 ? "127.0.0.1" : nullptr;
    int rc = fi_getinfo(FI_VERSION(1, 17), node, nullptr, 0, hints, &info);
    fi_freeinfo(hints);
    if (rc) return std::string("fi_getinfo(") + prov + "): " + fi_strerror(-rc);
    rc = fi_fabric(info->fabric_attr, &fabric, nullptr);
    if (rc) return std::string("fi_fabric: ") + fi_strerror(-rc);
    rc = fi_domain(fabric, info, &domain, nullptr);
    if (rc) return std::string("fi_domain: ") + fi_strerror(-rc);
    return "";
  }

  // An RDM endpoint addressed to itself (for fi_write through registered
  // regions).
  std::string OpenEndpoint() {
    fi_av_attr av_attr = {};
    av_attr.type = FI_AV_TABLE;
    int rc = fi_av_open(domain, &av_attr, &av, nullptr);
    if (rc) return std::string("fi_av_open: ") + fi_strerror(-rc);
    fi_cq_attr cq_attr = {};
    cq_attr.format = FI_CQ_FORMAT_CONTEXT;
    cq_attr.size = 64;
    rc = fi_cq_open(domain, &cq_attr, &cq, nullptr);
    if (rc) return std::string("fi_cq_open: ") + fi_strerror(-rc);
    rc = fi_endpoint(domain, info, &ep, nullptr);
    if (rc) return std::string("fi_endpoint: ") + fi_strerror(-rc);
    if ((rc = fi_ep_bind(ep, &av->fid, 0)) ||
        (rc = fi_ep_bind(ep, &cq->fid, FI_TRANSMIT | FI_RECV)) ||
        (rc = fi_enable(ep))) {
      return std::string("fi_ep_bind/fi_enable: ") + fi_strerror(-rc);
    }
    char name[256];
    size_t len = sizeof(name);
    rc = fi_getname(&ep->fid, name, &len);
    if (rc) return std::string("fi_getname: ") + fi_strerror(-rc);
    if (fi_av_insert(av, name, 1, &self, 0, nullptr) != 1)
      return "fi_av_insert failed";
    return "";
  }

  // Writes [src, src+len) (descriptor desc) to the target region at `target`
  // (region base `region_base`, key `key`), addressing it as the domain's
  // mr_mode says. Waits for the completion. Returns 0 or a negative fi_errno.
  int Write(const void *src, size_t len, void *desc, const void *target,
            const void *region_base, uint64_t key) {
    uint64_t addr = (info->domain_attr->mr_mode & FI_MR_VIRT_ADDR)
                        ? reinterpret_cast<uintptr_t>(target)
                        : reinterpret_cast<uintptr_t>(target) -
                              reinterpret_cast<uintptr_t>(region_base);
    int ctx = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    ssize_t rc;
    do {
      rc = fi_write(ep, src, len, desc, self, addr, key, &ctx);
      if (rc == -FI_EAGAIN) {
        fi_cq_entry e;
        fi_cq_read(cq, &e, 0);  // progress
      }
    } while (rc == -FI_EAGAIN && std::chrono::steady_clock::now() < deadline);
    if (rc) return static_cast<int>(rc);
    for (;;) {
      fi_cq_entry e;
      ssize_t n = fi_cq_read(cq, &e, 1);
      if (n == 1) return 0;
      if (n == -FI_EAVAIL) {
        fi_cq_err_entry err = {};
        fi_cq_readerr(cq, &err, 0);
        return -err.err;
      }
      if (n != -FI_EAGAIN) return static_cast<int>(n);
      if (std::chrono::steady_clock::now() > deadline) return -FI_ETIMEDOUT;
    }
  }

  void Close() {
    if (ep) fi_close(&ep->fid);
    if (av) fi_close(&av->fid);
    if (cq) fi_close(&cq->fid);
    if (domain) fi_close(&domain->fid);
    if (fabric) fi_close(&fabric->fid);
    if (info) fi_freeinfo(info);
    ep = nullptr;
    av = nullptr;
    cq = nullptr;
    domain = nullptr;
    fabric = nullptr;
    info = nullptr;
  }
};

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_DRIVERS_FABRIC_FABRIC_TEST_UTIL_H_

/* SPDX-License-Identifier: BSD-3-Clause */
/* examples/common/ex_rdma.c - see ex_rdma.h. */
#define _GNU_SOURCE
#include "ex_rdma.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EX_PORT 1

static int fail(const char *call, int err) {
  fprintf(stderr, "%s: %s (errno %d)\n", call, strerror(err), err);
  return -1;
}

static int ipv4_mapped(const uint8_t *raw) {
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return memcmp(raw, prefix, sizeof prefix) == 0;
}

static struct ibv_device *pick_device(struct ibv_device **list, int n) {
  const char *want = getenv("REGCACHE_RXE_DEVICE");
  for (int i = 0; i < n; i++) {
    const char *name = ibv_get_device_name(list[i]);
    if (want != NULL && *want != '\0') {
      if (strcmp(name, want) == 0) return list[i];
    } else if (strcmp(name, "rxe0") == 0) {
      return list[i];
    }
  }
  return (want != NULL && *want != '\0') ? NULL : list[0];
}

int ex_rdma_open(ex_rdma_t *r, int depth) {
  memset(r, 0, sizeof *r);
  r->gid_index = -1;
  int n = 0;
  struct ibv_device **list = ibv_get_device_list(&n);
  if (list == NULL) return fail("ibv_get_device_list", errno);
  struct ibv_device *dev = n > 0 ? pick_device(list, n) : NULL;
  if (dev == NULL) {
    ibv_free_device_list(list);
    fprintf(stderr,
            "no RDMA device (or not REGCACHE_RXE_DEVICE); run in the rxe guest "
            "(tests/rxe/rxe-run.sh) or on a host with an HCA\n");
    return -1;
  }
  r->ctx = ibv_open_device(dev);
  int err = errno;
  ibv_free_device_list(list);
  if (r->ctx == NULL) return fail("ibv_open_device", err);

  struct ibv_port_attr port;
  memset(&port, 0, sizeof port);
  if ((err = ibv_query_port(r->ctx, EX_PORT, &port)) != 0)
    return fail("ibv_query_port", err);
  if (port.state != IBV_PORT_ACTIVE) {
    fprintf(stderr, "port %d is not active\n", EX_PORT);
    return -1;
  }
  r->mtu = port.active_mtu;
  r->lid = port.lid;
  r->roce = port.link_layer == IBV_LINK_LAYER_ETHERNET;
  const char *gid_env = getenv("REGCACHE_RXE_GID_INDEX");
  if (gid_env != NULL && *gid_env != '\0') {
    r->gid_index = atoi(gid_env);
  } else if (r->roce) {
    for (int i = 0; i < port.gid_tbl_len && r->gid_index < 0; i++) {
      struct ibv_gid_entry entry;
      if (ibv_query_gid_ex(r->ctx, EX_PORT, (uint32_t)i, &entry, 0) != 0)
        continue;
      if (entry.gid_type == IBV_GID_TYPE_ROCE_V2 && ipv4_mapped(entry.gid.raw))
        r->gid_index = i;
    }
    if (r->gid_index < 0) {
      fprintf(stderr,
              "no RoCEv2 IPv4 GID on port 1 (set REGCACHE_RXE_GID_INDEX)\n");
      return -1;
    }
  } else {
    r->gid_index = 0;
  }
  if ((err = ibv_query_gid(r->ctx, EX_PORT, r->gid_index, &r->gid)) != 0)
    return fail("ibv_query_gid", err);

  if ((r->pd = ibv_alloc_pd(r->ctx)) == NULL)
    return fail("ibv_alloc_pd", errno);
  if ((r->send_cq = ibv_create_cq(r->ctx, depth, NULL, NULL, 0)) == NULL)
    return fail("ibv_create_cq", errno);
  if ((r->recv_cq = ibv_create_cq(r->ctx, depth, NULL, NULL, 0)) == NULL)
    return fail("ibv_create_cq", errno);
  struct ibv_qp_init_attr init;
  memset(&init, 0, sizeof init);
  init.send_cq = r->send_cq;
  init.recv_cq = r->recv_cq;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = (uint32_t)depth;
  init.cap.max_recv_wr = (uint32_t)depth;
  init.cap.max_send_sge = 1;
  init.cap.max_recv_sge = 1;
  if ((r->qp = ibv_create_qp(r->pd, &init)) == NULL)
    return fail("ibv_create_qp", errno);
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_INIT;
  a.port_num = EX_PORT;
  a.qp_access_flags =
      IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  if ((err = ibv_modify_qp(r->qp, &a,
                           IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                               IBV_QP_ACCESS_FLAGS)))
    return fail("ibv_modify_qp(INIT)", err);
  return 0;
}

void ex_rdma_local_addr(const ex_rdma_t *r, ex_qp_addr_t *addr) {
  memset(addr, 0, sizeof *addr);
  memcpy(addr->gid, r->gid.raw, sizeof addr->gid);
  addr->qpn = r->qp->qp_num;
  addr->psn =
      r->qp->qp_num & 0xffffff; /* any 24-bit value both sides agree on */
  addr->lid = r->lid;
  addr->roce = (uint8_t)r->roce;
}

int ex_rdma_connect(ex_rdma_t *r, const ex_qp_addr_t *peer) {
  ex_qp_addr_t self;
  ex_rdma_local_addr(r, &self);
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = r->mtu;
  a.dest_qp_num = peer->qpn;
  a.rq_psn = peer->psn;
  a.max_dest_rd_atomic = 16;
  a.min_rnr_timer = 12;
  a.ah_attr.port_num = EX_PORT;
  if (r->roce) {
    a.ah_attr.is_global = 1;
    memcpy(a.ah_attr.grh.dgid.raw, peer->gid, sizeof peer->gid);
    a.ah_attr.grh.sgid_index = (uint8_t)r->gid_index;
    a.ah_attr.grh.hop_limit = 64;
  } else {
    a.ah_attr.dlid = peer->lid;
  }
  int err = ibv_modify_qp(r->qp, &a,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
                              IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                              IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
  if (err) return fail("ibv_modify_qp(RTR)", err);
  memset(&a, 0, sizeof a);
  a.qp_state = IBV_QPS_RTS;
  a.timeout = 16;
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.sq_psn = self.psn;
  a.max_rd_atomic = 16;
  err = ibv_modify_qp(r->qp, &a,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                          IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                          IBV_QP_MAX_QP_RD_ATOMIC);
  if (err) return fail("ibv_modify_qp(RTS)", err);
  return 0;
}

static int wait_cq(struct ibv_cq *cq, struct ibv_wc *wc, const char *what) {
  const double deadline = ex_now_ns() + 60e9;
  for (;;) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n < 0) {
      fprintf(stderr, "ibv_poll_cq failed (%s)\n", what);
      return -1;
    }
    if (n == 1) {
      if (wc->status != IBV_WC_SUCCESS) {
        fprintf(stderr, "%s completion: %s (status %d)\n", what,
                ibv_wc_status_str(wc->status), (int)wc->status);
        return -1;
      }
      return 0;
    }
    if (ex_now_ns() > deadline) {
      fprintf(stderr, "%s: no completion within 60 s\n", what);
      return -1;
    }
  }
}

int ex_rdma_post_wait(ex_rdma_t *r, enum ibv_wr_opcode op, void *local,
                      uint32_t lkey, size_t len, uint64_t remote_addr,
                      uint32_t rkey, uint32_t imm) {
  struct ibv_sge sge;
  sge.addr = (uintptr_t)local;
  sge.length = (uint32_t)len;
  sge.lkey = lkey;
  struct ibv_send_wr wr, *bad = NULL;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = ++r->next_wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.imm_data = htobe32(imm);
  wr.wr.rdma.remote_addr = remote_addr;
  wr.wr.rdma.rkey = rkey;
  int err = ibv_post_send(r->qp, &wr, &bad);
  if (err) return fail("ibv_post_send", err);
  struct ibv_wc wc;
  if (wait_cq(r->send_cq, &wc,
              op == IBV_WR_RDMA_READ ? "RDMA READ" : "RDMA WRITE") != 0)
    return -1;
  if (wc.wr_id != wr.wr_id) {
    fprintf(stderr, "unexpected completion %llu (want %llu)\n",
            (unsigned long long)wc.wr_id, (unsigned long long)wr.wr_id);
    return -1;
  }
  return 0;
}

int ex_rdma_post_recv(ex_rdma_t *r) {
  struct ibv_recv_wr wr, *bad = NULL;
  memset(&wr, 0, sizeof wr);
  wr.wr_id = 0;
  wr.num_sge = 0;
  int err = ibv_post_recv(r->qp, &wr, &bad);
  return err ? fail("ibv_post_recv", err) : 0;
}

int ex_rdma_wait_recv(ex_rdma_t *r, uint32_t *imm) {
  struct ibv_wc wc;
  if (wait_cq(r->recv_cq, &wc, "receive") != 0) return -1;
  *imm = be32toh(wc.imm_data);
  return 0;
}

void ex_rdma_close(ex_rdma_t *r) {
  if (r->qp != NULL) ibv_destroy_qp(r->qp);
  if (r->recv_cq != NULL) ibv_destroy_cq(r->recv_cq);
  if (r->send_cq != NULL) ibv_destroy_cq(r->send_cq);
  if (r->pd != NULL) ibv_dealloc_pd(r->pd);
  if (r->ctx != NULL) ibv_close_device(r->ctx);
  memset(r, 0, sizeof *r);
}

static uint64_t word(uint64_t seed, size_t i) {
  uint64_t x = (seed + 1) * 0x9e3779b97f4a7c15ull +
               (uint64_t)(i / 8) * 0xd1b54a32d192ed03ull;
  x ^= x >> 29;
  return x | 0x0101010101010101ull; /* no zero byte: fresh (zero) memory never
                                       matches */
}

void ex_fill(void *buf, size_t len, uint64_t seed) {
  uint8_t *p = buf;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w = word(seed, i);
    memcpy(p + i, &w, len - i < 8 ? len - i : 8);
  }
}

size_t ex_count_wrong(const void *buf, size_t len, uint64_t seed) {
  const uint8_t *p = buf;
  size_t wrong = 0;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w = word(seed, i);
    uint8_t want[8];
    memcpy(want, &w, 8);
    size_t n = len - i < 8 ? len - i : 8;
    for (size_t k = 0; k < n; k++) wrong += p[i + k] != want[k];
  }
  return wrong;
}

double ex_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

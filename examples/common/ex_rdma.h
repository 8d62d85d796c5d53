/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * examples/common/ex_rdma.h - the verbs plumbing the examples share (C99).
 *
 * One device, one protection domain, one completion queue and one RC queue
 * pair, plus the few lines of connection management every verbs program
 * repeats: the local address of the QP (what a peer needs to connect to it: QP
 * number, GID or LID) and the INIT -> RTR -> RTS transitions once the peer's
 * address is known. How the addresses are exchanged is up to the program: a TCP
 * socket (rdma-pingpong), MPI (mpi-rendezvous), or nothing at all for two QPs
 * in one process (rxe-e2e).
 *
 * Nothing here knows about regcache: the examples show the cache calls
 * themselves.
 *
 * Device choice: REGCACHE_RXE_DEVICE if set, else rxe0 if present, else the
 * first device; port 1; on RoCE the first RoCEv2 IPv4-mapped GID (index 1 on
 * rxe0 in the Soft-RoCE guest; REGCACHE_RXE_GID_INDEX overrides), on InfiniBand
 * the port's LID.
 *
 * Every function returns 0 or -1 after printing what failed to stderr.
 */
#ifndef REGCACHE_EXAMPLES_EX_RDMA_H
#define REGCACHE_EXAMPLES_EX_RDMA_H

#include <infiniband/verbs.h>
#include <stddef.h>
#include <stdint.h>

/* What a peer needs to connect its QP to ours. Plain bytes: send it as is. */
typedef struct ex_qp_addr {
  uint8_t gid[16];
  uint32_t qpn;
  uint32_t psn;
  uint16_t lid;
  uint8_t roce;
  uint8_t pad;
} ex_qp_addr_t;

typedef struct ex_rdma {
  struct ibv_context *ctx;
  struct ibv_pd *pd;
  struct ibv_cq *send_cq;
  struct ibv_cq *recv_cq;
  struct ibv_qp *qp;
  int gid_index;
  int roce;
  union ibv_gid gid;
  uint16_t lid;
  enum ibv_mtu mtu;
  uint64_t next_wr_id;
} ex_rdma_t;

/* Opens the device, PD, a send and a receive CQ and an RC QP (in INIT) whose
 * send and receive queues hold `depth` work requests each. */
int ex_rdma_open(ex_rdma_t *r, int depth);
/* This QP's address. */
void ex_rdma_local_addr(const ex_rdma_t *r, ex_qp_addr_t *addr);
/* Moves the QP to RTR then RTS, connected to `peer`. */
int ex_rdma_connect(ex_rdma_t *r, const ex_qp_addr_t *peer);
/* Posts one signaled RDMA WRITE (IBV_WR_RDMA_WRITE), WRITE with immediate
 * (IBV_WR_RDMA_WRITE_WITH_IMM) or READ (IBV_WR_RDMA_READ) of [local, local+len)
 * (lkey) to/from remote_addr (rkey), and waits for its completion. */
int ex_rdma_post_wait(ex_rdma_t *r, enum ibv_wr_opcode op, void *local,
                      uint32_t lkey, size_t len, uint64_t remote_addr,
                      uint32_t rkey, uint32_t imm);
/* Posts one receive without buffers (for WRITE with immediate). */
int ex_rdma_post_recv(ex_rdma_t *r);
/* Waits for the next receive completion; sets *imm to its immediate data. */
int ex_rdma_wait_recv(ex_rdma_t *r, uint32_t *imm);
/* Destroys what ex_rdma_open created (in reverse order). Safe on a partly open
 * r. */
void ex_rdma_close(ex_rdma_t *r);

/* Fills buf with bytes derived from seed and the offset; ex_count_wrong()
 * counts the bytes that differ from that pattern. */
void ex_fill(void *buf, size_t len, uint64_t seed);
size_t ex_count_wrong(const void *buf, size_t len, uint64_t seed);
/* CLOCK_MONOTONIC in nanoseconds. */
double ex_now_ns(void);

#endif /* REGCACHE_EXAMPLES_EX_RDMA_H */

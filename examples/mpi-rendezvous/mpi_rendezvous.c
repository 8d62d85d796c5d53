/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * mpi-rendezvous: how an MPI transport uses regcache for large messages.
 *
 *   mpirun -np 2 mpi-rendezvous [--iters N] [--max-size BYTES]
 *
 * MPI (any transport: shared memory or TCP) is only the bootstrap and control
 * channel. The bulk data moves over one RC queue pair per peer, with the memory
 * registered through regcache, the way Open MPI's ob1 "RGET" protocol or UCX's
 * rendezvous do it:
 *
 *   bootstrap   each rank opens the device, a PD, a QP; MPI_Sendrecv exchanges
 * the QP addresses (QP number, GID or LID); both sides connect. small       len
 * <= EAGER_LIMIT: a plain MPI_Send / MPI_Recv (a copy is cheaper than a
 * registration round trip). large       the sender gets its buffer from the
 * cache with REMOTE_READ access and sends a ready-to-send message {addr, rkey,
 * len} over MPI. The receiver gets its own buffer from the cache (LOCAL_WRITE),
 * RDMA READs the data straight into it, puts its region back and sends FIN; the
 * sender puts its region back on FIN (the rkey must stay valid until the peer
 * has read).
 *
 * An application that sends from the same buffers again and again (halo
 * exchanges, collectives' scratch buffers, a pool) then pays for registration
 * once: every later message is a cache hit. And when a buffer is freed and its
 * address reused, the cache has already dropped the stale registration
 * (regcache's notifier), so no message can land in pages the program no longer
 * sees.
 *
 * The run: message sizes from 1 KiB to --max-size (x4 each step), a pool of 4
 * buffers per size on each rank, --iters rounds; rank 0 sends to rank 1, then
 * rank 1 sends back. Every received byte is checked. Prints per-rank cache
 * statistics and exits 1 on any wrong byte.
 */
#define _GNU_SOURCE
#include <mpi.h>
#include <regcache/regcache.h>
#include <regcache/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ex_rdma.h"

#define EAGER_LIMIT (16 * 1024)
#define TAG_EAGER 1
#define TAG_RTS 2
#define TAG_FIN 3
#define POOL 4

/* ------------------------------------------------------------------ the
 * transport */
typedef struct rndv {
  ex_rdma_t rdma;         /* one RC QP to the peer */
  regcache_driver_t *drv; /* verbs driver on the QP's protection domain */
  regcache_t *cache;      /* one cache per protection domain */
  int peer;               /* MPI rank of the peer */
  MPI_Comm comm;
} rndv_t;

/* Ready-to-send: where the receiver reads the message from. */
typedef struct rts {
  uint64_t addr;
  uint64_t rkey;
  uint64_t len;
} rts_t;

static int rndv_open(rndv_t *t, MPI_Comm comm, int peer) {
  memset(t, 0, sizeof *t);
  t->comm = comm;
  t->peer = peer;
  int ok = ex_rdma_open(&t->rdma, 16) == 0, all_ok;
  /* The cache: created once per PD with the defaults (REGCACHE_* environment
   * applies). */
  if (ok) {
    int rc = regcache_driver_verbs_open(t->rdma.pd, &t->drv);
    if (rc == 0) rc = regcache_create(t->drv, NULL, &t->cache);
    if (rc != 0) fprintf(stderr, "regcache: %s\n", regcache_strerror(rc));
    ok = rc == 0;
  }
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, comm);
  if (!all_ok) return -1;
  /* Bootstrap over MPI: swap QP addresses, connect. */
  ex_qp_addr_t mine, theirs;
  ex_rdma_local_addr(&t->rdma, &mine);
  MPI_Sendrecv(&mine, sizeof mine, MPI_BYTE, peer, 0, &theirs, sizeof theirs,
               MPI_BYTE, peer, 0, comm, MPI_STATUS_IGNORE);
  ok = ex_rdma_connect(&t->rdma, &theirs) == 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, comm);
  return all_ok ? 0 : -1;
}

static void rndv_close(rndv_t *t) {
  regcache_destroy(
      t->cache); /* before the driver, and the driver before the PD */
  regcache_driver_close(t->drv);
  ex_rdma_close(&t->rdma);
}

static int rndv_send(rndv_t *t, const void *buf, size_t len) {
  if (len <= EAGER_LIMIT)
    return MPI_Send(buf, (int)len, MPI_BYTE, t->peer, TAG_EAGER, t->comm) ==
                   MPI_SUCCESS
               ? 0
               : -1;
  regcache_region_t *region;
  int rc =
      regcache_get(t->cache, buf, len, REGCACHE_ACCESS_REMOTE_READ, &region);
  if (rc != 0) {
    fprintf(stderr, "regcache_get(send): %s\n", regcache_strerror(rc));
    return -1;
  }
  /* The region may be larger than the buffer (merged, page-aligned): the rkey
   * covers it, and with verbs the peer addresses it by virtual address. */
  rts_t rts = {(uintptr_t)buf, regcache_region_rkey(region), len};
  MPI_Send(&rts, sizeof rts, MPI_BYTE, t->peer, TAG_RTS, t->comm);
  int status;
  MPI_Recv(&status, 1, MPI_INT, t->peer, TAG_FIN, t->comm, MPI_STATUS_IGNORE);
  regcache_put(t->cache, region); /* only now: the peer has finished reading */
  return status;
}

static int rndv_recv(rndv_t *t, void *buf, size_t len) {
  if (len <= EAGER_LIMIT)
    return MPI_Recv(buf, (int)len, MPI_BYTE, t->peer, TAG_EAGER, t->comm,
                    MPI_STATUS_IGNORE) == MPI_SUCCESS
               ? 0
               : -1;
  rts_t rts;
  MPI_Recv(&rts, sizeof rts, MPI_BYTE, t->peer, TAG_RTS, t->comm,
           MPI_STATUS_IGNORE);
  int status = -1;
  regcache_region_t *region = NULL;
  if (rts.len != len) {
    fprintf(stderr, "rendezvous: peer sends %llu bytes, %zu expected\n",
            (unsigned long long)rts.len, len);
  } else {
    int rc =
        regcache_get(t->cache, buf, len, REGCACHE_ACCESS_LOCAL_WRITE, &region);
    if (rc != 0) {
      fprintf(stderr, "regcache_get(recv): %s\n", regcache_strerror(rc));
    } else {
      status = ex_rdma_post_wait(&t->rdma, IBV_WR_RDMA_READ, buf,
                                 regcache_region_lkey(region), len, rts.addr,
                                 (uint32_t)rts.rkey, 0);
      regcache_put(t->cache, region);
    }
  }
  MPI_Send(&status, 1, MPI_INT, t->peer, TAG_FIN,
           t->comm); /* always: the sender waits */
  return status;
}

/* ------------------------------------------------------------------ the test
 * program */
int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int iters = 3;
  size_t max_size = 4u << 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--iters") == 0) iters = atoi(argv[i + 1]);
    if (strcmp(argv[i], "--max-size") == 0)
      max_size = strtoul(argv[i + 1], NULL, 0);
  }
  if (size != 2) {
    if (rank == 0)
      fprintf(stderr,
              "mpi-rendezvous: run with exactly 2 ranks (mpirun -np 2)\n");
    MPI_Finalize();
    return 2;
  }
  rndv_t t;
  if (rndv_open(&t, MPI_COMM_WORLD, 1 - rank) != 0) {
    if (rank == 0) fprintf(stderr, "mpi-rendezvous: RDMA set-up failed\n");
    MPI_Finalize();
    return 1;
  }

  unsigned long long wrong = 0, msgs = 0, bytes = 0;
  int failed = 0;
  double t_rndv = 0;
  for (size_t len = 1024; len <= max_size && !failed; len *= 4) {
    uint8_t *pool[POOL];
    for (int k = 0; k < POOL; k++)
      pool[k] = malloc(len); /* plain malloc'd buffers */
    for (int it = 0; it < iters && !failed; it++) {
      for (int k = 0; k < POOL && !failed; k++) {
        for (int dir = 0; dir < 2 && !failed; dir++) { /* 0 -> 1, then 1 -> 0 */
          const uint64_t seed = ((uint64_t)len << 20) ^ ((uint64_t)it << 8) ^
                                ((uint64_t)k << 1) ^ (uint64_t)dir;
          const double t0 = ex_now_ns();
          if (rank == dir) {
            ex_fill(pool[k], len, seed);
            failed = rndv_send(&t, pool[k], len) != 0;
          } else {
            memset(pool[k], 0, len);
            failed = rndv_recv(&t, pool[k], len) != 0;
            wrong += ex_count_wrong(pool[k], len, seed);
            msgs++;
            bytes += len;
          }
          if (len > EAGER_LIMIT) t_rndv += ex_now_ns() - t0;
        }
      }
    }
    for (int k = 0; k < POOL; k++) free(pool[k]);
  }

  regcache_stats_t st;
  regcache_get_stats(t.cache, &st);
  int any_failed;
  unsigned long long all_wrong;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
  MPI_Allreduce(&wrong, &all_wrong, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM,
                MPI_COMM_WORLD);
  for (int r = 0; r < 2; r++) {
    if (r == rank) {
      printf(
          "rank %d: received %llu messages (%.1f MiB), wrong bytes %llu; "
          "rendezvous time "
          "%.1f ms; cache: hits %llu, misses %llu (hit rate %.1f %%), "
          "registrations %llu, "
          "invalidations %llu\n",
          rank, msgs, (double)bytes / (1 << 20), wrong, t_rndv / 1e6,
          (unsigned long long)st.hits, (unsigned long long)st.misses,
          st.hits + st.misses
              ? 100.0 * (double)st.hits / (double)(st.hits + st.misses)
              : 0.0,
          (unsigned long long)st.registrations,
          (unsigned long long)st.invalidations);
      fflush(stdout);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  rndv_close(&t);
  const int ok = !any_failed && all_wrong == 0;
  if (rank == 0)
    printf("mpi-rendezvous: %s\n", ok ? "all data correct" : "FAILED");
  MPI_Finalize();
  return ok ? 0 : 1;
}

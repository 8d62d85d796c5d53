/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * rdma-pingpong: two processes, RDMA WRITE with immediate back and forth, every
 * message sent from the next buffer of a rotating pool, registered through
 * regcache.
 *
 *   rdma-pingpong --server [--port P] [--port-file FILE]
 *   rdma-pingpong --connect HOST:PORT [--size BYTES] [--pool N] [--iters N]
 * [--no-cache]
 *
 * Out of band (a TCP socket): each side sends its QP address (QP number,
 * GID/LID) and the address and rkey of its landing buffer; the client also
 * sends the run's parameters. Then, iters times: the client fills pool buffer i
 * % pool with pattern i, gets its lkey from the cache (regcache_get), RDMA
 * WRITEs it with immediate i into the server's landing buffer and puts the
 * region back; the server checks every byte and answers the same way from its
 * own pool (pattern i + 2^20), which the client checks. Latency is the client's
 * round trip (registration included). --no-cache makes both sides call
 * ibv_reg_mr / ibv_dereg_mr for every message instead: the cost the cache
 * removes.
 *
 * Prints latency (mean, p50, p99), the hit rate and the wrong bytes; exits 1 on
 * any wrong byte or error. Uses the public C API (regcache.h, verbs.h) and
 * libibverbs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <regcache/regcache.h>
#include <regcache/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ex_rdma.h"

#define PONG_SEED (1u << 20)

/* What each side sends the other over the socket (same machine type on both
 * ends). */
typedef struct hello {
  ex_qp_addr_t qp;
  uint64_t landing_addr;
  uint32_t landing_rkey;
  uint32_t size, pool, iters, no_cache;
} hello_t;

static int xfer(int fd, void *buf, size_t len, int out) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = out ? write(fd, p, len) : read(fd, p, len);
    if (n <= 0) {
      perror(out ? "socket write" : "socket read");
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int listen_and_accept(int port, const char *port_file) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((uint16_t)port);
  socklen_t sl = sizeof sa;
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 1) ||
      getsockname(ls, (struct sockaddr *)&sa, &sl)) {
    perror("bind/listen");
    return -1;
  }
  if (port_file !=
      NULL) { /* written after listen(): a client may connect once it exists */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%d\n", ntohs(sa.sin_port)) < 0 ||
        fclose(f) != 0 || rename(tmp, port_file) != 0) {
      perror(port_file);
      return -1;
    }
  }
  printf("server: listening on 127.0.0.1:%d\n", ntohs(sa.sin_port));
  fflush(stdout);
  int fd = accept(ls, NULL, NULL);
  close(ls);
  if (fd < 0) perror("accept");
  return fd;
}

static int connect_to(const char *hostport) {
  char host[256];
  snprintf(host, sizeof host, "%s", hostport);
  char *colon = strrchr(host, ':');
  if (colon == NULL) {
    fprintf(stderr, "--connect HOST:PORT\n");
    return -1;
  }
  *colon = '\0';
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  int e = getaddrinfo(host, colon + 1, &hints, &ai);
  if (e != 0) {
    fprintf(stderr, "getaddrinfo %s: %s\n", hostport, gai_strerror(e));
    return -1;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    perror("connect");
    fd = -1;
  }
  freeaddrinfo(ai);
  return fd;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A source buffer's lkey: through the cache, or a fresh MR (--no-cache). */
typedef struct src_reg {
  regcache_region_t *region;
  struct ibv_mr *mr;
} src_reg_t;

static int src_get(regcache_t *cache, struct ibv_pd *pd, void *buf, size_t len,
                   src_reg_t *s, uint32_t *lkey) {
  s->region = NULL;
  s->mr = NULL;
  if (cache != NULL) {
    int rc = regcache_get(
        cache, buf, len, 0 /* local read: the source of a WRITE */, &s->region);
    if (rc != 0) {
      fprintf(stderr, "regcache_get: %s\n", regcache_strerror(rc));
      return -1;
    }
    *lkey = regcache_region_lkey(s->region);
  } else {
    if ((s->mr = ibv_reg_mr(pd, buf, len, 0)) == NULL) {
      perror("ibv_reg_mr");
      return -1;
    }
    *lkey = s->mr->lkey;
  }
  return 0;
}

static void src_put(regcache_t *cache, src_reg_t *s) {
  if (s->region != NULL) regcache_put(cache, s->region);
  if (s->mr != NULL) ibv_dereg_mr(s->mr);
}

int main(int argc, char **argv) {
  int server = 0, port = 0, no_cache = 0;
  const char *connect_arg = NULL, *port_file = NULL;
  hello_t me, peer;
  memset(&me, 0, sizeof me);
  me.size = 64 * 1024;
  me.pool = 8;
  me.iters = 1000;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
    if (strcmp(a, "--server") == 0) {
      server = 1;
      continue;
    }
    if (strcmp(a, "--no-cache") == 0) {
      no_cache = 1;
      continue;
    }
    if (strcmp(a, "--connect") == 0)
      connect_arg = v;
    else if (strcmp(a, "--port") == 0)
      port = atoi(v);
    else if (strcmp(a, "--port-file") == 0)
      port_file = v;
    else if (strcmp(a, "--size") == 0)
      me.size = (uint32_t)strtoul(v, NULL, 0);
    else if (strcmp(a, "--pool") == 0)
      me.pool = (uint32_t)strtoul(v, NULL, 0);
    else if (strcmp(a, "--iters") == 0)
      me.iters = (uint32_t)strtoul(v, NULL, 0);
    else {
      fprintf(
          stderr,
          "usage: %s --server [--port P] [--port-file F] | --connect HOST:PORT "
          "[--size B] [--pool N] [--iters N] [--no-cache]\n",
          argv[0]);
      return 2;
    }
    i++;
  }
  if (server == (connect_arg != NULL) || me.size < 64 || me.pool < 1 ||
      me.iters < 1) {
    fprintf(stderr, "%s: exactly one of --server / --connect; --size >= 64\n",
            argv[0]);
    return 2;
  }
  const char *who = server ? "server" : "client";
  int fd =
      server ? listen_and_accept(port, port_file) : connect_to(connect_arg);
  if (fd < 0) return 1;
  /* The client decides the run's parameters; the server takes them from its
   * hello. */
  if (server) {
    if (xfer(fd, &peer, sizeof peer, 0)) return 1;
    me.size = peer.size;
    me.pool = peer.pool;
    me.iters = peer.iters;
    me.no_cache = peer.no_cache;
  } else {
    me.no_cache = (uint32_t)no_cache;
  }
  const size_t size = me.size, stride = ((size + 4095) & ~(size_t)4095) + 4096;

  ex_rdma_t r;
  regcache_driver_t *drv = NULL;
  regcache_t *cache = NULL;
  regcache_region_t *landing_region = NULL;
  struct ibv_mr *landing_mr = NULL;
  int rc = 1;
  double *lat = calloc(me.iters, sizeof *lat);
  /* The pool (one guard page after each buffer) and the landing buffer, one
   * mapping. */
  uint8_t *mem = mmap(NULL, stride * (me.pool + 1), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED || lat == NULL) return 1;
  uint8_t *landing = mem + stride * me.pool;
  if (ex_rdma_open(&r, 32) != 0) goto out;

  /* The cache: one per protection domain, created once and kept for the whole
   * run. */
  int e = regcache_driver_verbs_open(r.pd, &drv);
  if (e == 0) e = regcache_create(drv, NULL, &cache);
  if (e != 0) {
    fprintf(stderr, "%s: regcache: %s\n", who, regcache_strerror(e));
    goto out;
  }
  /* The landing buffer: registered for remote writes and held for the whole
   * run. */
  const unsigned remote =
      REGCACHE_ACCESS_LOCAL_WRITE | REGCACHE_ACCESS_REMOTE_WRITE;
  if (me.no_cache) {
    landing_mr = ibv_reg_mr(r.pd, landing, size,
                            IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (landing_mr == NULL) goto out;
    me.landing_rkey = landing_mr->rkey;
  } else {
    if ((e = regcache_get(cache, landing, size, remote, &landing_region)) !=
        0) {
      fprintf(stderr, "%s: regcache_get(landing): %s\n", who,
              regcache_strerror(e));
      goto out;
    }
    me.landing_rkey = (uint32_t)regcache_region_rkey(landing_region);
  }
  me.landing_addr = (uintptr_t)landing;
  ex_rdma_local_addr(&r, &me.qp);
  if (xfer(fd, &me, sizeof me, 1)) goto out;
  if (!server && xfer(fd, &peer, sizeof peer, 0)) goto out;
  for (int i = 0; i < 16; i++)
    if (ex_rdma_post_recv(&r)) goto out;
  if (ex_rdma_connect(&r, &peer.qp) != 0) goto out;
  char sync = 'r'; /* both QPs are ready to receive before anyone writes */
  if (xfer(fd, &sync, 1, 1) || xfer(fd, &sync, 1, 0)) goto out;

  regcache_t *src_cache = me.no_cache ? NULL : cache;
  unsigned long long wrong = 0;
  for (uint32_t i = 0; i < me.iters; i++) {
    uint8_t *src = mem + stride * (i % me.pool);
    src_reg_t s;
    uint32_t lkey, imm;
    if (server) {
      if (ex_rdma_wait_recv(&r, &imm) || ex_rdma_post_recv(&r)) goto out;
      wrong += ex_count_wrong(landing, size, imm);
      ex_fill(src, size, imm + PONG_SEED);
      if (src_get(src_cache, r.pd, src, size, &s, &lkey)) goto out;
      e = ex_rdma_post_wait(&r, IBV_WR_RDMA_WRITE_WITH_IMM, src, lkey, size,
                            peer.landing_addr, peer.landing_rkey, imm);
      src_put(src_cache, &s);
      if (e) goto out;
    } else {
      ex_fill(src, size, i);
      const double t0 = ex_now_ns();
      if (src_get(src_cache, r.pd, src, size, &s, &lkey)) goto out;
      e = ex_rdma_post_wait(&r, IBV_WR_RDMA_WRITE_WITH_IMM, src, lkey, size,
                            peer.landing_addr, peer.landing_rkey, i);
      src_put(src_cache, &s);
      if (e || ex_rdma_wait_recv(&r, &imm) || ex_rdma_post_recv(&r)) goto out;
      lat[i] = (ex_now_ns() - t0) / 1000.0;
      if (imm != i) {
        fprintf(stderr, "client: pong %u for ping %u\n", imm, i);
        goto out;
      }
      wrong += ex_count_wrong(landing, size, i + PONG_SEED);
    }
  }
  if (xfer(fd, &sync, 1, 1) || xfer(fd, &sync, 1, 0)) goto out; /* both done */

  regcache_stats_t st;
  regcache_get_stats(cache, &st);
  if (!server) {
    double sum = 0;
    for (uint32_t i = 0; i < me.iters; i++) sum += lat[i];
    qsort(lat, me.iters, sizeof *lat, cmp_double);
    printf(
        "client: %u round trips of %zu bytes from a pool of %u buffers, %s: "
        "mean %.1f us, p50 %.1f us, p99 %.1f us\n",
        me.iters, size, me.pool,
        me.no_cache ? "no cache (ibv_reg_mr every time)" : "regcache",
        sum / me.iters, lat[me.iters / 2], lat[(size_t)(me.iters * 0.99)]);
  }
  if (me.no_cache) {
    printf(
        "%s: registrations %u (one per message, plus the landing buffer 1)\n",
        who, me.iters);
  } else {
    printf(
        "%s: hit rate %.1f %% (hits %llu, misses %llu; landing buffer "
        "included), "
        "registrations %llu\n",
        who, 100.0 * (double)st.hits / (double)(st.hits + st.misses),
        (unsigned long long)st.hits, (unsigned long long)st.misses,
        (unsigned long long)st.registrations);
  }
  printf("%s: wrong bytes %llu\n", who, wrong);
  rc = wrong == 0 ? 0 : 1;
out:
  if (rc != 0) fprintf(stderr, "%s: FAILED\n", who);
  if (landing_region != NULL) regcache_put(cache, landing_region);
  if (landing_mr != NULL) ibv_dereg_mr(landing_mr);
  regcache_destroy(cache);
  regcache_driver_close(drv);
  ex_rdma_close(&r);
  close(fd);
  free(lat);
  return rc;
}

/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * mpi_fi_monitor: Open MPI (pml cm, mtl ofi, verbs;ofi_rxm) moves large messages with
 * libfabric's rendezvous, whose buffers libfabric's MR cache registers; this program
 * frees, unmaps and discards those buffers between messages and reuses their addresses
 * with new contents, then checks every received byte. If the MR cache's memory monitor
 * misses a change, a cached registration still maps the old pages and the peer reads old
 * data (or writes into pages the program no longer sees): wrong bytes.
 *
 *   mpirun -np 2 ... mpi_fi_monitor [--size BYTES] [--msgs N] [--phases LIST]
 *
 * Phases (each N messages, ping-pong: rank 0 sends even messages, rank 1 odd ones; both
 * ranks apply the phase's change to their buffer before every message, the receiver
 * fills its buffer with 0 before receiving, the sender with the message's pattern):
 *   reuse     the same buffer every time, new contents (libfabric MR cache hits)
 *   free      free + malloc (M_MMAP_THRESHOLD fixed at 128 KiB: a real munmap + mmap)
 *   mmap      munmap + mmap at the same address (MAP_FIXED_NOREPLACE hint)
 *   dontneed  madvise(MADV_DONTNEED), then new contents
 * Output (rank 0): one line per phase
 *   MPI-FI phase=<p> msgs=<n> size=<s> same_address=<k> wrong=<bytes> us_per_msg=<t>
 * and `MPI-FI total msgs=<n> wrong=<bytes>`. Exit 0 unless MPI fails (the caller judges
 * the counts: tests/rxe/run-mpi-fi-monitor.sh).
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

enum { PH_REUSE, PH_FREE, PH_MMAP, PH_DONTNEED, PH_N };
static const char *kNames[PH_N] = {"reuse", "free", "mmap", "dontneed"};

static unsigned char Pattern(size_t i, long msg) {
  return (unsigned char)(((i * 131u) + (size_t)msg * 7u) & 0xffu) | 1u;
}

typedef struct buf {
  unsigned char *p;
  size_t len;
  int kind; /* 0 malloc, 1 mmap */
} buf_t;

static unsigned char *Map(void *hint, size_t len) {
  void *p = mmap(hint, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | (hint ? MAP_FIXED_NOREPLACE : 0),
                 -1, 0);
  if (p == MAP_FAILED && hint)
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
             0);
  if (p == MAP_FAILED) {
    perror("mmap");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

/* Applies the phase's change; returns 1 if the buffer kept its address. */
static int Change(buf_t *b, int phase) {
  uintptr_t old = (uintptr_t)b->p; /* an integer: gcc 12 -Wuse-after-free */
  switch (phase) {
    case PH_FREE:
      free(b->p);
      b->p = malloc(b->len);
      if (!b->p) MPI_Abort(MPI_COMM_WORLD, 2);
      break;
    case PH_MMAP:
      munmap(b->p, b->len);
      b->p = Map((void *)old, b->len);
      break;
    case PH_DONTNEED:
      madvise(b->p, b->len, MADV_DONTNEED);
      break;
    default:
      break;
  }
  return (uintptr_t)b->p == old;
}

static void Release(buf_t *b) {
  if (b->kind == 1)
    munmap(b->p, b->len);
  else
    free(b->p);
}

int main(int argc, char **argv) {
  size_t size = 256 * 1024;
  long msgs = 512;
  char phases[128] = "reuse,free,mmap,dontneed";
  /* Fixed before the first allocation: glibc would otherwise raise the threshold at the
   * first free of an mmap'ed chunk and serve later ones from the heap (free would unmap
   * nothing). No heap trimming either: the phases choose what changes. */
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  MPI_Init(&argc, &argv);
  int rank, np;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &np);
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--size") && i + 1 < argc)
      size = strtoul(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--msgs") && i + 1 < argc)
      msgs = strtol(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--phases") && i + 1 < argc)
      snprintf(phases, sizeof phases, "%s", argv[++i]);
  }
  if (np != 2 || size == 0 || msgs <= 0) {
    if (rank == 0)
      fprintf(stderr,
              "mpi_fi_monitor: needs 2 ranks, --size > 0, --msgs > 0\n");
    MPI_Finalize();
    return 2;
  }
  long total_msgs = 0;
  unsigned long long total_wrong = 0;
  long msg_id =
      0; /* global message number: every message has its own pattern */
  char list[128];
  snprintf(list, sizeof list, "%s", phases);
  for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    int ph = -1;
    for (int k = 0; k < PH_N; ++k)
      if (!strcmp(tok, kNames[k])) ph = k;
    if (ph < 0) {
      if (rank == 0) fprintf(stderr, "mpi_fi_monitor: unknown phase %s\n", tok);
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
    buf_t b = {NULL, size, ph == PH_MMAP || ph == PH_DONTNEED};
    b.p = b.kind ? Map(NULL, size) : malloc(size);
    if (!b.p) MPI_Abort(MPI_COMM_WORLD, 2);
    unsigned long long wrong = 0;
    long same = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (long m = 0; m < msgs; ++m, ++msg_id) {
      const int sender = (int)(m & 1);
      /* The first message of a phase only populates the cache. */
      if (m > 0) same += Change(&b, ph);
      if (rank == sender) {
        for (size_t i = 0; i < size; ++i) b.p[i] = Pattern(i, msg_id);
        MPI_Send(b.p, (int)size, MPI_BYTE, 1 - rank, 1, MPI_COMM_WORLD);
      } else {
        memset(b.p, 0, size);
        MPI_Recv(b.p, (int)size, MPI_BYTE, 1 - rank, 1, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
        for (size_t i = 0; i < size; ++i) wrong += b.p[i] != Pattern(i, msg_id);
      }
    }
    double t = MPI_Wtime() - t0;
    unsigned long long all_wrong = 0;
    long all_same = 0;
    MPI_Reduce(&wrong, &all_wrong, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0,
               MPI_COMM_WORLD);
    MPI_Reduce(&same, &all_same, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
      printf(
          "MPI-FI phase=%s msgs=%ld size=%zu same_address=%ld wrong=%llu "
          "us_per_msg=%.1f\n",
          kNames[ph], msgs, size, all_same, all_wrong, t / (double)msgs * 1e6);
      fflush(stdout);
    }
    total_msgs += msgs;
    total_wrong += all_wrong;
    Release(&b);
  }
  if (rank == 0) {
    printf("MPI-FI total msgs=%ld wrong=%llu\n", total_msgs, total_wrong);
    fflush(stdout);
  }
  MPI_Finalize();
  return 0;
}

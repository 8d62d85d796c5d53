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
 *                                   [--late-regcache LIB] [--probe]
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
 *
 * Coexistence with another patcher (libfabric's memhooks, which patches libc's entry
 * points when libfabric's MR cache starts, i.e. in MPI_Init):
 *   --late-regcache LIB  after MPI_Init, dlopen LIB (libregcache-fi-monitor.so) and call
 *                        its regcache_fi_monitor_import(): regcache arrives after the
 *                        other patcher (the preloaded library arrives before it).
 *   --probe              at the end, each rank checks that regcache's notifier still sees
 *                        unmaps: it subscribes to a fresh mapping, unmaps it and waits (at
 *                        most 5 s: the uffd source delivers from its own thread) for the
 *                        callback. Prints, per rank,
 *   MPI-FI probe rank=<r> register=<rc> source=<s> seen=<0|1> munmap_entry=<first byte>
 *                        (regcache's source after the probe; libc munmap's first byte:
 *                        e9 = a jmp, someone patched it).
 * regcache's calls are looked up with dlsym: the program does not link regcache.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
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

/* regcache/notifier.h's subscription calls, declared here (looked up with dlsym; the
 * layout is the public header's regcache_notifier_ops_t). */
typedef struct probe_ops {
  void (*start)(void *arg, const void *addr, size_t len);
  void (*end)(void *arg, const void *addr, size_t len);
  void (*release)(void *arg);
} probe_ops_t;
typedef int (*register_range_fn)(const probe_ops_t *, void *, const void *,
                                 size_t, void **);
typedef int (*unregister_fn)(void *);
typedef const char *(*source_fn)(void);

static void ProbeStart(void *arg, const void *addr, size_t len) {
  (void)addr;
  (void)len;
  __atomic_store_n((int *)arg, 1, __ATOMIC_RELEASE);
}
static void ProbeRelease(void *arg) { (void)arg; }

/* Does regcache's notifier see an unmap now? See --probe above. */
static void Probe(int rank) {
  register_range_fn reg = (register_range_fn)dlsym(
      RTLD_DEFAULT, "regcache_notifier_register_range");
  unregister_fn unreg =
      (unregister_fn)dlsym(RTLD_DEFAULT, "regcache_notifier_unregister");
  source_fn source = (source_fn)dlsym(RTLD_DEFAULT, "regcache_notifier_source");
  const unsigned char *entry =
      (const unsigned char *)dlsym(RTLD_NEXT, "munmap");
  int rc = -ENOENT, seen = 0;
  if (reg && unreg && source) {
    static const probe_ops_t ops = {ProbeStart, NULL, ProbeRelease};
    static int fired;
    const size_t len = 2 * 4096;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *sub = NULL;
    if (p != MAP_FAILED) {
      memset(p, 1, len);
      /* Registering makes the notifier verify its hooks (another patcher overwrote
       * them: it switches sources and invalidates everything, which may fire `fired`
       * now: reset it after). */
      rc = reg(&ops, &fired, p, len, &sub);
      __atomic_store_n(&fired, 0, __ATOMIC_RELEASE);
      munmap(p, len);
      /* Bounded wait: the uffd source delivers from its monitor thread after the
       * unmap; 5 s is far above its latency even under TCG. */
      for (int i = 0; i < 5000 && !__atomic_load_n(&fired, __ATOMIC_ACQUIRE);
           ++i) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
      }
      seen = __atomic_load_n(&fired, __ATOMIC_ACQUIRE);
      if (rc == 0) unreg(sub);
    }
  }
  printf(
      "MPI-FI probe rank=%d register=%d source=%s seen=%d munmap_entry=%02x\n",
      rank, rc, source ? source() : "absent", seen, entry ? entry[0] : 0);
  fflush(stdout);
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
  const char *late = NULL;
  int probe = 0;
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
    else if (!strcmp(argv[i], "--late-regcache") && i + 1 < argc)
      late = argv[++i];
    else if (!strcmp(argv[i], "--probe"))
      probe = 1;
  }
  if (late) {
    /* After MPI_Init: libfabric's MR cache exists and its monitor has started. */
    void *h = dlopen(late, RTLD_NOW | RTLD_GLOBAL);
    int (*import)(void) =
        h ? (int (*)(void))dlsym(h, "regcache_fi_monitor_import") : NULL;
    const int rc = import ? import() : -ENOENT;
    printf("MPI-FI late-regcache rank=%d import=%d%s%s\n", rank, rc,
           h ? "" : " dlopen: ", h ? "" : dlerror());
    fflush(stdout);
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
  if (probe) Probe(rank);
  MPI_Finalize();
  return 0;
}

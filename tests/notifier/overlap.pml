/* SPDX-License-Identifier: BSD-3-Clause */
/* tests/notifier/overlap.pml - overlap-only waiting (notifier/address_space.cc, "RANGES IN
 * FLIGHT"), with the cache's miss protocol on top.
 *
 * Two addresses, X = 0 and Y = 1; memory is one version number per address. Dispatcher d
 * runs ranges on address d: claim its g_ranges entry, snapshot g_gen (does it see S?),
 * move S's sequence if it sees S and overlaps it, run the cache's whole-space callback
 * (invalidates the published registration if it overlaps), change the memory, then end.
 * The registrar (an interval subscriber: until issue 14 the cache's miss; the miss now
 * uses the range log instead, modelled in interval_log.pml) registers an interval
 * subscription S on address I,
 * checks the table (Register's Dekker scan, entry by entry), read_begin (waits for the
 * overlapping entries it saw, then for S's nactive count), pins the memory, and under the
 * cache lock either retries (sequence moved) or publishes.
 *
 * Checked, in every interleaving:
 *   - no stale publish: at publish the pinned version is the current one, and no change
 *     happens to published, still-valid memory (assertions below);
 *   - overlap-only: the range on Y may stay in flight forever (a bracket held open) while
 *     the registrar works on X: the registrar must still finish, or spin reports an
 *     invalid end state (it would block on a range that does not overlap it).
 * Negative controls (ctest, expected to FAIL): -DNO_SYNC drops read_begin's wait for the
 * ranges Register saw (stale publish); -DWAIT_ALL waits for every range in flight, not
 * only overlapping ones (the registrar blocks behind the range on Y forever).
 * Each atomic of the implementation is one Promela statement (seq_cst).
 */
#define X 0
#define Y 1

byte mem[2];            /* page version per address                                  */
byte entry[2];          /* g_ranges: entry d holds address+1 while range d is in flight */
bit visible = 0;        /* S published and g_gen stored                                 */
byte nactive = 0;        /* S->seq_word: active count                                    */
byte starts = 0;        /* S->seq_word: starts                                          */
bit published = 0;      /* the cache's index holds the registration of I                */
bit pub_valid = 0;      /* ... and it was not invalidated since                          */
byte pub_ver = 0;       /* the version it pinned                                        */
byte I = X;             /* the registrar's interval                                     */
bit reg_done = 0;

proctype Dispatcher(byte a) {
  byte n = 0;
  bit sees;
  do
  :: n < 2 ->
     entry[a] = a + 1;                      /* Claim: CAS of the entry           */
     sees = visible;                        /* f->gen = g_gen                    */
     if :: sees && a == I -> atomic { nactive++; starts++ } :: else -> skip fi;
     /* the cache's whole-space start callback (under its lock)            */
     atomic { if :: published && a == I -> pub_valid = 0 :: else -> skip fi };
     mem[a]++;                              /* the unmap / change                */
     assert(!(published && pub_valid && a == I));
     if
     :: a == Y && I == X ->                 /* a bracket on Y held open forever  */
end_hold: (false)
     :: true -> skip
     fi;
     if :: sees && a == I -> nactive-- :: else -> skip fi;
     entry[a] = 0;                          /* Unclaim                           */
     n++
  :: n >= 2 -> break
  od
}

proctype Registrar() {
  bit need = 0, ok = 0;
  byte seq, pin, tries = 0;
  /* Register: publish, store g_gen, then scan the table (one entry per step) */
  visible = 1;
#ifdef WAIT_ALL
  if :: entry[X] != 0 -> need = 1 :: else -> skip fi;
  if :: entry[Y] != 0 -> need = 1 :: else -> skip fi;
#else
  if :: entry[X] == I + 1 -> need = 1 :: else -> skip fi;
  if :: entry[Y] == I + 1 -> need = 1 :: else -> skip fi;
#endif
  /* read_begin: first the ranges Register saw (entry by entry), ... */
#ifndef NO_SYNC
  /* A futex wait until one scan finds no such entry: modelled as blocking
   * until each entry, read in scan order, is clear (every passing scan of the
   * implementation is one of these traces). */
  if
  :: need ->
#ifdef WAIT_ALL
     (entry[X] == 0); (entry[Y] == 0)
#else
     (entry[X] != I + 1); (entry[Y] != I + 1)
#endif
  :: else -> skip
  fi;
#endif
again:
  /* ... then S's own active count, and the sequence                         */
  atomic { nactive == 0 -> seq = starts };
  pin = mem[I];                              /* driver registration pins pages   */
  atomic {                                   /* cache lock; read_retry           */
    if
    :: starts != seq -> tries++
    :: else ->
       assert(pin == mem[I]);
       published = 1; pub_valid = 1; pub_ver = pin; ok = 1
    fi
  };
  if
  :: !ok && tries < 3 -> goto again          /* undo, register again             */
  :: else -> skip
  fi;
  reg_done = 1
}

init {
  if :: I = X :: I = Y fi;
  atomic {
    run Dispatcher(X);
    run Dispatcher(Y);
    run Registrar()
  }
}

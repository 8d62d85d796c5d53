/* SPDX-License-Identifier: BSD-3-Clause */
/* tests/notifier/interval_log.pml - ReadBeginInterval / ReadRetryInterval
 * (notifier/address_space.cc, "RANGE LOG"), with the cache's miss protocol on
 * top: the interval check a miss uses instead of registering an interval
 * subscription (issue 14).
 *
 * Two addresses, X = 0 and Y = 1; memory is one version number per address.
 * Dispatcher d runs two ranges on address d: claim its g_ranges entry, then,
 * if an interval read is in flight (g_log_on, read after the claim), log
 * itself as LogRange does (take a slot number s with one increment of
 * lognext; CAS the entry's tag from an older, not busy value to BUSY | s+1,
 * else write nothing; write the span; store the tag s+1), run the cache's
 * whole-space start callback: its filter first (one load of whether the
 * cache's bounds cover I: outside them the callback returns at once), then
 * under the cache lock (invalidates the published registration if it
 * overlaps); change the memory, then end. The log has K = 2 entries, so four
 * ranges wrap it.
 * The registrar (the cache's miss) on address I: read_begin_interval (count
 * the read in, token =
 * lognext, then scan the table entry by entry; an overlapping entry: wait for
 * it to clear and start again), pin the memory, then under the cache lock
 * widen the bounds to cover I (Miss::PublishIndexed's seq_cst stores), then
 * read_retry_interval (now = lognext; now - t > K: retry; each entry i in
 * [t, now): tag not i + 1 before or after reading the span, or the span
 * overlaps: retry) and publish or retry.
 *
 * Checked, in every interleaving:
 *   - no stale publish: at publish the pinned version is the current one,
 *     and no change happens to published, still-valid memory (assertions);
 *   - overlap-only: the range on Y may stay in flight forever while the
 *     registrar works on X: the registrar must still finish (else spin
 *     reports an invalid end state).
 * Negative controls (ctest, expected to FAIL): -DNO_WAIT (begin does not wait
 * for overlapping ranges in flight), -DNO_LOG (ranges do not log),
 * -DLATE_COUNT (the read is counted in after the token and the scan: a range
 * that claimed after the scan and read no reader in flight is missed), -DNO_CAS
 * (writers store span and tag unconditionally: a writer of an older lap,
 * slow between its increment and its stores, overwrites a newer span after
 * the newer writer checked nothing; the first version of LogRange, which
 * this model caught), -DLATE_WIDEN (the bounds are widened after the log
 * check: a callback that read them before the widening skips the cache, and
 * the check read the log before its range logged itself).
 * Each atomic of the implementation is one Promela statement (seq_cst).
 */
#define X 0
#define Y 1
#define K 2
#define NOADDR 9
#define BUSY 128

byte mem[2];           /* page version per address                           */
byte entry[2];         /* g_ranges: address+1 while range d is in flight     */
byte lognext = 0;      /* g_log_next                                         */
byte tag[K];           /* g_range_log[i].tag: slot number + 1 once written   */
byte span[K];          /* g_range_log[i].span: the address                   */
bit lock = 0;          /* the cache's lock                                   */
byte readers = 0;      /* g_log_on: interval reads in flight                 */
bit covered = 0;       /* the cache's filter bounds [lo_, hi_) cover I       */
bit published = 0;     /* the cache's index holds the registration of I      */
bit pub_valid = 0;     /* ... and it was not invalidated since               */
byte I = X;            /* the registrar's interval                           */

proctype Dispatcher(byte a) {
  byte n = 0, s;
  bit own;
  do
  :: n < 2 ->
     entry[a] = a + 1;                      /* Claim                         */
#ifndef NO_LOG
     if
     :: readers > 0 ->                      /* g_log_on, read after the claim */
     atomic { s = lognext; lognext++ };     /* fetch_add                     */
#ifdef NO_CAS
     span[s % K] = a;
     tag[s % K] = s + 1;
#else
     atomic {                               /* CAS: older, not busy -> busy  */
       if
       :: tag[s % K] < s + 1 -> tag[s % K] = BUSY | (s + 1); own = 1
       :: else -> own = 0                   /* busy (>= BUSY) or newer       */
       fi
     };
     if
     :: own -> span[s % K] = a; tag[s % K] = s + 1
     :: else -> skip
     fi;
#endif
     :: else -> skip                        /* no read in flight: no log     */
     fi;
#endif
     /* the cache's whole-space start callback: the filter (seq_cst loads of
      * the bounds, after the log increment), then under its lock           */
     if
     :: covered ->
        atomic { lock == 0 -> if :: published && a == I -> pub_valid = 0 :: else -> skip fi }
     :: else -> skip                        /* outside the bounds            */
     fi;
     mem[a]++;                              /* the unmap / change            */
     assert(!(published && pub_valid && a == I));
     if
     :: a == Y && I == X ->                 /* a bracket on Y held open forever */
end_hold: (false)
     :: true -> skip
     fi;
     entry[a] = 0;                          /* Unclaim                       */
     n++
  :: n >= 2 -> break
  od
}

proctype Registrar() {
  byte t, now, i, pin, sp, tries = 0;
  bit retry, counted = 0;
#ifndef LATE_COUNT
  readers++; counted = 1                    /* counted in before the token   */
#endif
again:
  /* read_begin_interval: token, then the table entry by entry             */
  t = lognext;
#ifndef NO_WAIT
  if
  :: entry[X] == I + 1 -> (entry[X] != I + 1); goto again
  :: else -> skip
  fi;
  if
  :: entry[Y] == I + 1 -> (entry[Y] != I + 1); goto again
  :: else -> skip
  fi;
#endif
#ifdef LATE_COUNT
  if :: !counted -> readers++; counted = 1 :: else -> skip fi;
#endif
  pin = mem[I];                             /* the driver pins the pages     */
  atomic { lock == 0 -> lock = 1 };
#ifndef LATE_WIDEN
  covered = 1;                              /* widen the bounds, then check  */
#endif
  /* read_retry_interval, under the lock                                   */
  retry = 0;
  now = lognext;
  if
  :: now - t > K -> retry = 1
  :: else ->
     i = t;
     do
     :: i < now && !retry ->
        if :: tag[i % K] != i + 1 -> retry = 1 :: else -> skip fi;
        sp = span[i % K];
        if :: tag[i % K] != i + 1 -> retry = 1 :: else -> skip fi;
        if :: sp == I -> retry = 1 :: else -> skip fi;
        i++
     :: else -> break
     od
  fi;
  if
  :: retry -> tries++
  :: else ->
#ifdef LATE_WIDEN
     covered = 1;
#endif
     assert(pin == mem[I]);
     published = 1; pub_valid = 1
  fi;
  lock = 0;
  if
  :: retry && tries < 3 -> goto again       /* deregister, register again   */
  :: else -> skip
  fi;
  readers--                                 /* ReadEndInterval               */
}

init {
  byte k;
  for (k : 0 .. K - 1) { span[k] = NOADDR }
  if :: I = X :: I = Y fi;
  atomic {
    run Dispatcher(X);
    run Dispatcher(Y);
    run Registrar()
  }
}

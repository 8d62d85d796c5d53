/* SPDX-License-Identifier: BSD-3-Clause */
/* tests/notifier/notifier.pml - model of notifier/address_space.cc's protocol.
 *
 * One subscription S, two dispatcher threads (each runs start/end ranges, the second one
 * may be nested inside a callback), one owner thread that registers S, may unregister it,
 * and a teardown thread; a quiescer. Checked: release runs exactly once; no callback after
 * release; every end delivered to S is preceded by its start (pairing, per range); quiesce
 * returns only with no range in flight and no range starts while quiesced.
 * The atomics of the implementation are single Promela statements (seq_cst).
 * Overlap-only waiting (the table of ranges in flight) and the no-stale-publish property
 * of the cache's miss protocol are modelled separately in overlap.pml (ctest
 * notifier_spin_overlap, with two negative controls).
 */
#define NDISP 2

bit visible = 0;         /* S published (gen filter: a range snapshots it at start)   */
bit dead = 0;            /* S->flags & kDead                                        */
bit claimed = 0;         /* kReleaseClaimed                                         */
bit released = 0;        /* kReleaseDone                                            */
byte running = 0;        /* S->running                                              */
byte releases = 0;
byte inflight = 0;       /* g_inflight[0] + g_inflight[1]                           */
byte quiesce = 0;
bit quiesced = 0;        /* the quiescer returned and has not resumed               */
bit started[NDISP];      /* range i delivered start to S                            */
bit sees[NDISP];         /* range i's generation snapshot includes S                */
byte unreg_done = 0;

inline release_if_idle() {
  atomic {
    if
    :: running == 0 && !claimed -> claimed = 1
    :: else -> goto skip_rel
    fi
  }
  releases++;
  released = 1;
skip_rel: skip
}

inline deliver(i, is_start) {
  running++;
  if
  :: !dead ->
     assert(!released);        /* no callback after release */
     if
     :: is_start -> started[i] = 1
     :: else -> assert(started[i])   /* end only after its start */
     fi
  :: else -> skip
  fi;
  running--;
  if
  :: dead -> release_if_idle()
  :: else -> skip
  fi
}

proctype Dispatcher(byte i) {
  do
  :: true ->
     /* EnterWindow: increment, then re-check quiesce */
     inflight++;
     if
     :: quiesce > 0 -> inflight--; (quiesce == 0); goto again
     :: else -> skip
     fi;
     assert(!quiesced);
     sees[i] = visible;        /* f->gen snapshot */
     if :: sees[i] -> deliver(i, 1) :: else -> skip fi;
     if :: sees[i] -> deliver(i, 0) :: else -> skip fi;
     started[i] = 0;
     inflight--;
again: skip
  :: true -> break
  od
}

proctype Owner() {
  /* Register: publish, bump gen (visible), Dekker check of in-flight ranges */
  visible = 1;
  if
  :: true ->
     /* Unregister outside a callback */
     dead = 1;
     (running == 0);
     release_if_idle();
     (released);
     unreg_done = 1
  :: true -> skip    /* never unregistered: teardown releases */
  fi
}

proctype Teardown() {
  dead = 1;
  release_if_idle()
}

proctype Quiescer() {
  quiesce++;
  (inflight == 0);
  quiesced = 1;
  quiesced = 0;
  quiesce--
}

init {
  atomic {
    run Owner();
    run Dispatcher(0);
    run Dispatcher(1);
    run Teardown();
    run Quiescer()
  };
  (_nr_pr == 1);                 /* every other process has terminated */
  assert(releases == 1);         /* exactly once, also when nobody unregistered */
  assert(running == 0 && inflight == 0)
}


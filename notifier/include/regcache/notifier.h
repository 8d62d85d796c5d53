/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * regcache/notifier.h - the process's address space, with subscribers (C99).
 *
 * This is the Linux kernel's mmu_notifier moved into the process. The address space is
 * one object; subscribers register on it and are told, through three callbacks, when
 * memory they care about is about to change:
 *
 *   invalidate_range_start(arg, addr, len)  called BEFORE memory in [addr, addr+len)
 *       is unmapped, remapped or discarded. From this point the subscriber must not hand
 *       out translations (registrations) of that range.
 *   invalidate_range_end(arg, addr, len)    called after the change; always paired with
 *       exactly one earlier start with the same range, on the same thread.
 *   release(arg)                            the address space is being torn down, or the
 *       subscriber unregistered. Runs exactly once per subscriber; no callback follows.
 *
 * Any callback pointer may be NULL (that event is then not delivered); ops itself may not.
 *
 * EVENT SOURCES. REGCACHE_MONITOR=auto|patch|uffd|none selects how events are seen:
 *   patch  libc's munmap/mremap/madvise/brk/sbrk/shmdt/shmat/mmap(MAP_FIXED) entry points
 *          are patched, so glibc-internal callers (free, realloc, heap trim, thread-stack
 *          release) are caught. start runs before the syscall, end after it.
 *   uffd   a userfaultfd monitor thread sees UNMAP/REMOVE/REMAP of watched mappings.
 *          The kernel reports UNMAP after the unmap; see docs/notifier.md for the window.
 *   ucm    UCX's libucm owns libc's entry points: its events are imported (a handler
 *          before and one after each hooked call, registered with libucm's
 *          ucm_set_event_handler; libucm is found with dlopen(RTLD_NOLOAD), never
 *          loaded or linked by regcache). start runs before the syscall, end after.
 *   none   no automatic events: the host reports unmaps with regcache_notify_unmap_start()
 *          / _end() or regcache_notify_unmapped() (explicit source). Chosen explicitly,
 *          it is the host's declaration that it reports every unmap: caching stays on.
 *   auto   patch; else ucm if libucm patched libc first; else uffd; else ucm if libucm
 *          is loaded; else no source can see unmaps: the notifier is BLIND, caches stop
 *          caching (see regcache_notifier_caching_safe()) and one warning says why.
 *          If another library overwrites the patch source later, the notifier switches
 *          to ucm (libucm), else uffd, else becomes blind, and invalidates everything.
 * Explicit notification through regcache_notify_unmapped() always works, in every mode.
 *
 * WHERE CALLBACKS RUN. Inside the unmapping thread's munmap()/free()/madvise() (patch and
 * explicit sources) or on the uffd monitor thread (uffd source), possibly while that
 * thread holds malloc's arena lock. A callback therefore:
 *   - MUST NOT block on a lock that any thread may hold while it frees or unmaps memory;
 *   - SHOULD NOT allocate (it is tolerated: nested events are dispatched, recursion is
 *     bounded, but the allocator may be in an inconsistent state);
 *   - MUST NOT call regcache_notifier_register*() or the read-side calls
 *     regcache_notifier_read_begin() (which may wait for the very range being delivered);
 *   - MAY call regcache_notifier_unregister(), on itself or on any other subscriber;
 *   - MUST NOT fork() (the child could not know which callbacks were running).
 * Callbacks of different ranges may run concurrently on different threads.
 *
 * GUARANTEES (each has a test in tests/notifier/):
 *   1. register may fail cleanly (teardown in progress, event source not installable,
 *      out of memory): it returns a negative errno and leaves no trace.
 *   2. register is serialized against ranges in flight: a subscriber added while another
 *      thread is between start and end never sees an end without its start.
 *      A registration waits only for in-flight ranges that overlap it: the first
 *      read_begin of an interval subscription waits for the ranges in flight at
 *      registration that overlap its interval (a whole-space subscription: all of them),
 *      never for unrelated ones, however long they stay open (the kernel's
 *      mmu_interval_notifier rule). regcache_get() follows it: a get of memory no
 *      range in flight overlaps does not wait.
 *   3. unregister is safe at any time, from any thread, also inside a callback. Once it
 *      returns (outside a callback) none of that subscriber's callbacks runs or will run.
 *   4. release runs exactly once per subscriber: from teardown or from unregister,
 *      whichever comes first. At process exit it runs from the library destructor
 *      (after atexit handlers registered after the library was loaded; see
 *      docs/notifier.md) and never waits for ranges in flight on other threads.
 *   5. quiesce/resume: regcache_notifier_quiesce() returns once no range is in flight
 *      and holds new ranges of OTHER threads off (their unmapping threads wait) until
 *      resume. The quiescing thread's own ranges proceed and are delivered (it may
 *      unmap or free memory while quiesced; it cannot be racing with itself). See
 *      regcache_notifier_quiesce() for the exceptions (uffd, fork).
 *   6. interval subscriptions carry a sequence number: read_begin()/read_retry() tell
 *      whether an invalidation of the interval started in between (mmu_interval_notifier).
 *   7. fork: the child's notifier state is fresh whatever the parent's threads were
 *      doing (inside a hooked munmap, between regcache_notify_unmap_start and _end,
 *      inside register/unregister, quiesced): the child keeps only the forking
 *      thread's own open ranges and quiesces; no range, lock, waiter or callback of
 *      another thread is inherited, so nothing in the child waits for the parent's
 *      work. Subscriptions are inherited (their memory is). pthread_atfork handlers do
 *      this; caches (regcache.h) additionally forget the parent's registrations.
 *
 * Every int-returning call returns 0 (or a documented non-negative value) on success or a
 * negative errno on failure. All calls are thread-safe.
 */
#ifndef REGCACHE_NOTIFIER_H
#define REGCACHE_NOTIFIER_H

#include <stddef.h>
#include <stdint.h>

#include <regcache/export.h>

REGCACHE_EXTERN_C_BEGIN

/* A subscription. Opaque; owned by the library from register until unregister. */
typedef struct regcache_notifier regcache_notifier_t;

typedef struct regcache_notifier_ops {
  void (*invalidate_range_start)(void *arg, const void *addr, size_t len);
  void (*invalidate_range_end)(void *arg, const void *addr, size_t len);
  void (*release)(void *arg);
} regcache_notifier_ops_t;

/*
 * Subscribes to every event the active source can see. ops must stay valid until
 * release has run. Returns 0 and sets *notifier_p, or:
 *   -EINVAL     ops or notifier_p is NULL;
 *   -ESHUTDOWN  the address space is being or has been torn down;
 *   -ENOMEM     out of memory;
 *   other       the configured event source could not be installed (e.g. -ENOSYS).
 */
REGCACHE_API int regcache_notifier_register(const regcache_notifier_ops_t *ops,
                                            void *arg,
                                            regcache_notifier_t **notifier_p);

/*
 * Subscribes to events that overlap [addr, addr+len) only. With the uffd source, the
 * mappings under the interval become watched, so this works with every source. Errors as
 * regcache_notifier_register(), plus -EINVAL for len == 0 or a wrapping range, and with
 * the uffd source (which can only watch mappings that exist, and only those no other
 * userfaultfd owns): -EFAULT when part of the interval is not mapped (nothing is
 * watched), -EBUSY when a mapping under it cannot be watched (another userfaultfd owns
 * it, or the kernel cannot watch its type): its changes would not be reported.
 */
REGCACHE_API int regcache_notifier_register_range(
    const regcache_notifier_ops_t *ops, void *arg, const void *addr, size_t len,
    regcache_notifier_t **notifier_p);

/*
 * Ends a subscription and runs its release callback (unless teardown already did).
 * Outside a callback: waits until none of its callbacks is running, then returns; none
 * runs afterwards. Inside a callback (of any subscriber): returns at once; the
 * subscription receives nothing more, and its memory is reclaimed after the dispatch.
 * Returns 0, or -EINVAL for NULL.
 */
REGCACHE_API int regcache_notifier_unregister(regcache_notifier_t *notifier);

/*
 * Sequence protocol of an interval subscription (the kernel's mmu_interval_read_begin /
 * mmu_interval_read_retry):
 *
 *     seq = read_begin(sub)          waits while an invalidation of sub is in flight
 *     ... pin / register memory, no lock held ...
 *     lock(user_lock)
 *     if (read_retry(sub, seq)) { unlock; undo; goto again; }   an invalidation started
 *     publish the registration
 *     unlock(user_lock)
 *
 * read_begin stores the sequence in *seq_p and returns 0 (-EINVAL for NULL, -EDEADLK if
 * called from inside a callback). With the uffd source, read_begin of an interval watches
 * the mappings under it again (a mapping that replaced the one watched at register would
 * otherwise be unwatched); if that is no longer possible (part of it unmapped, or owned
 * by another userfaultfd), read_retry reports a change, so bound your retry loop.
 * read_retry returns 1 if an invalidation of the interval started after read_begin, 0
 * if not, negative errno on bad input.
 */
REGCACHE_API int regcache_notifier_read_begin(regcache_notifier_t *notifier,
                                              uint64_t *seq_p);
REGCACHE_API int regcache_notifier_read_retry(
    const regcache_notifier_t *notifier, uint64_t seq);

/*
 * Explicit source: the caller says [addr, addr+len) is about to be (or has just been)
 * unmapped or discarded. Delivers start and end to every overlapping subscriber before it
 * returns. For hosts that already hook memory (Open MPI's patcher, UCX's ucm): call it
 * from the hook, before the memory changes, and again after it changed, or better use
 * the bracket below: with one call before the change, another thread may register the
 * old pages between the call and the change (measured in tests/reliability). Returns 0,
 * -EINVAL for a wrapping range. len == 0 is a no-op.
 */
REGCACHE_API int regcache_notify_unmapped(const void *addr, size_t len);

/*
 * Explicit source, bracketed (the kernel's invalidate_range_start/end): call
 * regcache_notify_unmap_start() before the memory in [addr, addr+len) changes and
 * regcache_notify_unmap_end() with the same range after it changed, on the same thread.
 * In between, overlapping cached registrations are gone and new registrations of the
 * range wait (in other threads) until the end, so no thread can register the old pages
 * between the notification and the change, which a single regcache_notify_unmapped()
 * before the change cannot prevent. Brackets nest (up to 8 per thread). The calling
 * thread must not call regcache_get() on memory in between (-EDEADLK).
 * Returns 0; -EINVAL for len == 0, a wrapping range, or an end that does not match the
 * thread's innermost open start; -EOVERFLOW when nested too deep.
 */
REGCACHE_API int regcache_notify_unmap_start(const void *addr, size_t len);
REGCACHE_API int regcache_notify_unmap_end(const void *addr, size_t len);

/*
 * Quiesce / resume (EMM's stop/start). quiesce returns once no range is in flight and
 * holds new ranges of other threads off until resume; nests (a counter); any thread may
 * resume. The quiescing thread's own ranges (its munmap, free, madvise or
 * regcache_notify_*() calls while its quiesce is in force) are not held off: they are
 * delivered at once, so a quiescer that unmaps memory never waits for itself. Not
 * from inside a callback or between the caller's own notify_unmap_start/_end (-EDEADLK).
 * resume without quiesce gives -EINVAL. Exceptions, each because waiting would hang:
 *   - uffd source: the monitor thread's deliveries are not held off (the kernel keeps
 *     the unmapping thread inside munmap until the monitor reads its event; holding
 *     the monitor would hold that thread, and forever if it is the quiescer);
 *     quiesce still waits for the deliveries in flight when it is called;
 *   - ranges begun while the event source is being installed (the first register);
 *   - while the quiescing thread itself is inside fork(): a thread held off inside
 *     free() holds malloc's lock, which fork() takes, so held-off ranges proceed
 *     until fork() returns.
 */
REGCACHE_API int regcache_notifier_quiesce(void);
REGCACHE_API int regcache_notifier_resume(void);

/* The active event source: "patch", "uffd", "ucm" or "none" (explicit only, or blind).
 * Never NULL. */
REGCACHE_API const char *regcache_notifier_source(void);

/*
 * NO BLIND CACHING. A cache may keep a registration after its put only while some source
 * sees every unmap before the memory changes. When none does (auto found neither patch,
 * ucm nor uffd; or the patch source was overwritten by another library and neither ucm
 * nor uffd could take over) the notifier is blind: caches register at get and deregister
 * at the last put (the behaviour of max_regions 0), and one warning says why.
 *
 * regcache_notifier_set_external(1) declares that the host reports every unmap, remap or
 * discard of memory it gets from a cache through regcache_notify_unmap_start()/_end() (or
 * regcache_notify_unmapped()) before the memory changes, e.g. from its own memory hooks.
 * Caching then stays on whatever the source; the host owns that promise. 0 withdraws the
 * declaration: gets from then on follow the rule above (regions cached before stay until
 * invalidated or evicted). REGCACHE_MONITOR=none is the same declaration made by
 * configuration. Returns 0, or -EINVAL for a value other than 0 or 1. Any time, any thread.
 */
REGCACHE_API int regcache_notifier_set_external(int on);

/*
 * 1 when caching is safe (a source sees every unmap, or the host declared external), 0
 * when the notifier is blind and caches do not cache. Installs the configured source
 * first if no cache or subscriber did yet, so the answer is the one a cache would get.
 * Negative errno: the configured source cannot be installed (e.g. -ENOSYS for an explicit
 * REGCACHE_MONITOR=patch on a system without it), -EDEADLK from inside a callback,
 * -EINVAL for a bad REGCACHE_* value. The answer can change from 1 to 0 later, when
 * another library overwrites the patch source and nothing can take over.
 */
REGCACHE_API int regcache_notifier_caching_safe(void);

/* Why the notifier is blind ("" when it is not), e.g. "patch: libc already patched by
 * another library; uffd: Operation not permitted". Never NULL; static storage. */
REGCACHE_API const char *regcache_notifier_blind_reason(void);

REGCACHE_EXTERN_C_END

#endif /* REGCACHE_NOTIFIER_H */

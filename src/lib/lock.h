/* SPDX-License-Identifier: MIT */
/*
 * lock.h - mutexes that know their owner, and the library's assertions.
 *
 * Linux states a lock rule once and checks it where it is relied on
 * (lockdep_assert_held); we do the same with two small tools:
 *
 *  - struct ulock: a mutex that records the thread holding it, so "held by
 *    me" is one load. The public API uses it to turn misuse into errors
 *    (unlock by a thread that does not hold the lock: -EPERM; relock:
 *    -EDEADLK) in every build, and internal code asserts it in debug builds.
 *  - uodp_assert(): an invariant checked when the library is built with
 *    -DUODP_DEBUG=ON (CI runs the suite in that build), compiled out
 *    otherwise. A failed assertion prints the condition and aborts.
 *
 * Thread identity is the address of a thread-local byte: unique among live
 * threads, free to read, and never 0.
 */
#ifndef UODP_LIB_LOCK_H
#define UODP_LIB_LOCK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef UODP_DEBUG
#define uodp_assert(cond)                                                      \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr,                                        \
				"uodp: assertion failed: %s (%s:%d)\n", #cond, \
				__FILE__, __LINE__);                           \
			abort();                                               \
		}                                                              \
	} while (0)
#define UODP_DEBUG_ON 1
#else
#define uodp_assert(cond) ((void)0)
#define UODP_DEBUG_ON 0
#endif

/* Abort with a message in debug builds: for misuse the API cannot report
 * (a released handle passed again). */
#define uodp_misuse(what)                                                \
	do {                                                             \
		if (UODP_DEBUG_ON) {                                     \
			fprintf(stderr, "uodp: misuse: %s (%s)\n", what, \
				__func__);                               \
			abort();                                         \
		}                                                        \
	} while (0)

/* initial-exec: one %fs-relative load, no __tls_get_addr call (libuodp is
 * a shared library; see docs/INDEX-NOTES.md on initial-exec TLS there) */
extern __thread char ulock_self_tag __attribute__((tls_model("initial-exec")));
static inline uintptr_t ulock_self(void)
{
	return (uintptr_t)&ulock_self_tag;
}

struct ulock {
	pthread_mutex_t m;
	_Atomic uintptr_t owner; /* ulock_self() of the holder, or 0 */
};

static inline int ulock_init(struct ulock *l)
{
	atomic_init(&l->owner, 0);
	return pthread_mutex_init(&l->m, NULL);
}
static inline void ulock_destroy(struct ulock *l)
{
	pthread_mutex_destroy(&l->m);
}
static inline bool ulock_held(struct ulock *l)
{
	return atomic_load_explicit(&l->owner, memory_order_relaxed) ==
	       ulock_self();
}
static inline void ulock_lock(struct ulock *l)
{
	uodp_assert(!ulock_held(l));
	pthread_mutex_lock(&l->m);
	atomic_store_explicit(&l->owner, ulock_self(), memory_order_relaxed);
}
static inline void ulock_unlock(struct ulock *l)
{
	uodp_assert(ulock_held(l));
	atomic_store_explicit(&l->owner, 0, memory_order_relaxed);
	pthread_mutex_unlock(&l->m);
}
/* pthread_cond_*wait() on a ulock: the owner leaves and comes back. */
static inline int ulock_wait(struct ulock *l, pthread_cond_t *c,
			     const struct timespec *deadline)
{
	int r;

	uodp_assert(ulock_held(l));
	atomic_store_explicit(&l->owner, 0, memory_order_relaxed);
	r = deadline ? pthread_cond_timedwait(c, &l->m, deadline) :
		       pthread_cond_wait(c, &l->m);
	atomic_store_explicit(&l->owner, ulock_self(), memory_order_relaxed);
	return r;
}

#define ulock_assert_held(l) uodp_assert(ulock_held(l))

/*
 * Cancellation: no library call is a cancellation point. Blocking calls
 * (condition waits, pread, poll) are cancellation points in POSIX, and a
 * thread cancelled inside one would leave our locks held; so every entry
 * point that may block disables cancellation for its duration. Each call
 * is an atomic operation on the thread's cancellation state; a path that
 * reaches no cancellation point (uodp_umem_get/release on a manual
 * context, which never call the notifier) may skip the pair, as long as
 * it takes it around whatever part may block (freeing a context closes a
 * file).
 */
static inline int nocancel_begin(void)
{
	int old;

	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
	return old;
}
static inline void nocancel_end(int old)
{
	pthread_setcancelstate(old, NULL);
}

#endif

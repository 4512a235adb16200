/* SPDX-License-Identifier: MIT */
/*
 * mono.h - bounded waits on CLOCK_MONOTONIC, for the engine (map_and_lock's
 * bound, the invalidation waits of release and destroy). The device keeps
 * its own two helpers (src/device/dev.c): it uses only the public API, as
 * a driver outside the library would (tests/check-layers.sh).
 *
 * A caller's time bound must neither lengthen nor shrink when the wall
 * clock steps (settimeofday(), NTP). pthread_cond_timedwait() reads its
 * deadline on the clock of the condition variable's attributes
 * (CLOCK_REALTIME by default), so the two go together: a condition
 * variable waited on with a timeout is made by mono_cond_init(), and its
 * deadline by mono_after().
 */
#ifndef UODP_LIB_MONO_H
#define UODP_LIB_MONO_H

#include <errno.h>
#include <pthread.h>
#include <time.h>

/* A condition variable whose timed waits run on CLOCK_MONOTONIC. 0 or the
 * pthread error (positive). */
static inline int mono_cond_init(pthread_cond_t *c)
{
	pthread_condattr_t ca;
	int r = pthread_condattr_init(&ca);

	if (r)
		return r;
	r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (!r)
		r = pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
	return r;
}

/* *@ts = now + @ms on CLOCK_MONOTONIC. */
static inline void mono_after(struct timespec *ts, unsigned ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

#endif

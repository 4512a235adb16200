/* SPDX-License-Identifier: MIT */
/*
 * backoff.h - telling a hole from a shortage when the kernel answers both
 * with ENOMEM (used by the fault path's populate(), engine/fault.c).
 *
 * MADV_POPULATE_READ/WRITE fail with ENOMEM both where nothing is mapped
 * and where the kernel is short of memory. A second call that fails only
 * on a hole (mincore()) tells them apart, but the two are not atomic:
 * another thread that unmaps and maps the same page in a loop can make the
 * first meet the hole and the second the new mapping. Such a pair proves
 * nothing, and trying again at once does not make the next pair
 * independent of it: both calls take the mmap lock, each queues behind the
 * other thread's next munmap() or mmap(), and the threads fall into step
 * (measured on 6.18 under test_monitor's test_hole_churn: up to eight such
 * pairs in a row, where three made populate() report -ENOMEM, about one
 * run in 100 under load). So a shortage is reported only after a page
 * stayed mapped through BACKOFF_TRIES failing calls, each retry after a
 * pause that grows (backoff_pause()): a pause longer than a munmap/mmap
 * cycle takes the retry out of step, and a real shortage outlasts the
 * whole sequence (about 1 ms of pauses, paid only when the kernel said
 * ENOMEM for a page that is mapped).
 */
#ifndef UODP_LIB_BACKOFF_H
#define UODP_LIB_BACKOFF_H

#include <time.h>

#include "lib/lock.h"

/* Why 10: pauses of 1, 2, ... 256 us (about 0.5 ms, plus the kernel's
 * timer slack, 50 us a sleep by default): many munmap/mmap cycles of the
 * racing thread (a few microseconds each), and 10 "hole then mapped"
 * answers in a row out of step; and short next to what a shortage costs
 * anyway (reclaim). */
#define BACKOFF_TRIES 10

/* Pause before retry @n (0 = the first retry): 2^n microseconds, at most
 * 1 ms. nanosleep() is a cancellation point and no library call is one
 * (lock.h): disabled around it. */
static inline void backoff_pause(unsigned n)
{
	struct timespec ts = { 0, 1000L << (n < 10 ? n : 10) };
	int cs = nocancel_begin();

	nanosleep(&ts, NULL);
	nocancel_end(cs);
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * uodp_hooks.h - the few functions libuodp-hooks.so exports besides its
 * libc wrappers (munmap, mremap, madvise, mmap, mmap64, shmat, shmdt). Programs
 * that only preload the library need none of them; tests and benchmarks
 * use them to switch the fast path and read its counters.
 */
#ifndef UODP_HOOKS_H
#define UODP_HOOKS_H

#include "notifier/intercept.h" /* struct uodp_icpt_stats */

/* Turn the in-thread fast path on (1) or off (0); returns the previous
 * setting. Off, the wrappers only forward to libc (the kernel reports). */
int uodp_hooks_enable(int on);
/* 1 once a libuodp notifier has attached (its first subscriber). */
int uodp_hooks_attached(void);
/* The fast path's counters; -ENOENT before a notifier attached. */
int uodp_hooks_stats(struct uodp_icpt_stats *out);

#endif

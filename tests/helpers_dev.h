/* SPDX-License-Identifier: MIT */
/*
 * helpers_dev.h - what the device tests (test_dev_*.c, test_timed_waits.c)
 * shared by copy: a check for forked children, running a child to its
 * exit, and a hold that keeps a thread inside a device test hook.
 * Public API only (uodp.h, uodp_dev.h), plus the hooks the tests declare.
 */
#ifndef UODP_TESTS_HELPERS_DEV_H
#define UODP_TESTS_HELPERS_DEV_H

#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

/* In a forked child (cmocka's asserts belong to the parent): on failure
 * print the condition and exit with @code, which the parent reports. */
#define T_DEV_CHECK(cond, code)                                         \
	do {                                                            \
		if (!(cond)) {                                          \
			fprintf(stderr, "child: %s:%d: %s\n", __FILE__, \
				__LINE__, #cond);                       \
			_exit(code);                                    \
		}                                                       \
	} while (0)

/* Run @fn(@arg) in a forked child; fail unless it exits 0. A child that
 * guards itself with alarm() and is killed by SIGALRM hung. */
static inline void t_dev_in_child(void (*fn)(unsigned), unsigned arg)
{
	int st;
	pid_t pid;

	fflush(NULL); /* nothing buffered is written twice */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		fn(arg);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (WIFSIGNALED(st))
		fail_msg("child killed by signal %d%s", WTERMSIG(st),
			 WTERMSIG(st) == SIGALRM ? " (SIGALRM: it hung)" : "");
	if (WEXITSTATUS(st))
		fail_msg("child failed with %d", WEXITSTATUS(st));
}

/*
 * A hold in a test hook: the test closes it, the hooked thread calls
 * t_hold_here() (says it is in, then waits while the hold is closed), the
 * test waits with t_hold_wait_in() until the thread is there, does what
 * must happen meanwhile, and releases it. Unlike helpers.h's t_gate
 * (mutex and condition variable) the held thread spins on sched_yield():
 * no cancellation point, no lock, nothing a device hook (which may run
 * under the region lock) could deadlock on.
 */
struct t_hold {
	atomic_int closed, in;
};

static inline void t_hold_close(struct t_hold *g)
{
	atomic_store(&g->in, 0);
	atomic_store(&g->closed, 1);
}

static inline void t_hold_here(struct t_hold *g)
{
	atomic_store(&g->in, 1);
	while (atomic_load(&g->closed))
		sched_yield();
}

static inline void t_hold_wait_in(struct t_hold *g)
{
	while (!atomic_load(&g->in))
		usleep(1000);
}

static inline void t_hold_release(struct t_hold *g)
{
	atomic_store(&g->closed, 0);
}

#endif

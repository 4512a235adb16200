/* SPDX-License-Identifier: MIT */
/*
 * test_dev_races.c - concurrency defects of the software device, each made
 * deterministic with a test hook or a forked child:
 *
 *  - deregistration while an operation on the key is in flight returns once
 *    the operation ends (it used to wait for a wakeup that never came);
 *  - a fault allocates nothing while it holds a lock an invalidation waits
 *    for: the allocation hook runs an invalidation of the very range and
 *    waits for it to finish, as an allocator blocked on a userfaultfd event
 *    waits for the kernel monitor's invalidation;
 *  - an application SIGSEGV handler that chains to the device's handler,
 *    with the device's handler put in front of it again by a later
 *    uodp_dev_open(), runs once per fault (no endless mutual recursion);
 *  - a synchronous operation, a queued one and an implicit-region child
 *    fault all complete while another thread invalidates in a loop.
 *
 * Liveness checks wait with a generous timeout (a hang is the defect; a
 * passing run never waits for it).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "uodp.h"
#include "uodp_dev.h"

#define VA(p) ((uint64_t)(uintptr_t)(p))
#define HANG_SECONDS 30 /* a liveness wait that only a defect reaches */

/* Internal hooks of src/device (tests link the static library). */
extern void (*dev_test_hook_before_install)(struct uodp_umem *umem);
extern void (*dev_test_hook_alloc)(struct uodp_umem *umem);

static size_t PS;

static struct uodp_dev *open_dev(unsigned flags)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL | flags };
	struct uodp_dev *dev = NULL;

	assert_int_equal(uodp_dev_open(&a, &dev), 0);
	return dev;
}

static char *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

/* Join @t, waiting at most HANG_SECONDS; true when it ended. */
static bool join_bounded(pthread_t t)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += HANG_SECONDS;
	return pthread_timedjoin_np(t, NULL, &ts) == 0;
}

/* A one-shot gate: a thread waits until another opens it. */
struct gate {
	pthread_mutex_t m;
	pthread_cond_t c;
	bool open;
};
#define GATE_INIT                                                          \
	{                                                                  \
		PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false \
	}

static void gate_open(struct gate *g)
{
	pthread_mutex_lock(&g->m);
	g->open = true;
	pthread_cond_broadcast(&g->c);
	pthread_mutex_unlock(&g->m);
}

static void gate_wait(struct gate *g)
{
	pthread_mutex_lock(&g->m);
	while (!g->open)
		pthread_cond_wait(&g->c, &g->m);
	pthread_mutex_unlock(&g->m);
}

/* ------------------------------------------------------------------------ */
/* Deregistration with an operation in flight                                */
/* ------------------------------------------------------------------------ */

static struct gate dr_in_fault = GATE_INIT, dr_go = GATE_INIT;
static struct uodp_dev *dr_dev;
static uint32_t dr_key;
static char *dr_mem;
static int dr_read_status, dr_dereg_status;
static atomic_int dr_hook_calls;

static void dr_hook(struct uodp_umem *umem)
{
	(void)umem;
	if (atomic_fetch_add(&dr_hook_calls, 1))
		return;
	gate_open(&dr_in_fault); /* the read holds its key reference */
	gate_wait(&dr_go);
}

static void *dr_reader(void *arg)
{
	char b[64];

	(void)arg;
	dr_read_status =
		uodp_dev_read(dr_dev, dr_key, VA(dr_mem), b, sizeof(b));
	return NULL;
}

static void *dr_deregister(void *arg)
{
	(void)arg;
	dr_dereg_status = uodp_dev_dereg_mr(dr_dev, dr_key);
	return NULL;
}

static void test_dereg_waits_for_inflight_op(void **state)
{
	pthread_t rd, dr;
	bool ended;

	(void)state;
	dr_dev = open_dev(0);
	dr_mem = map_anon(4 * PS);
	memset(dr_mem, 0x5a, 4 * PS);
	assert_int_equal(uodp_dev_reg_mr(dr_dev, VA(dr_mem), 4 * PS,
					 UODP_DEV_ACCESS_ALL, &dr_key),
			 0);
	atomic_store(&dr_hook_calls, 0);
	dev_test_hook_before_install = dr_hook;
	assert_int_equal(pthread_create(&rd, NULL, dr_reader, NULL), 0);
	gate_wait(&dr_in_fault);
	assert_int_equal(pthread_create(&dr, NULL, dr_deregister, NULL), 0);
	/* The key is gone for new users as soon as dereg starts... */
	while (uodp_dev_mr_children(dr_dev, dr_key) != -ENOENT)
		sched_yield();
	/* ...and dereg waits for the read, which now finishes. */
	gate_open(&dr_go);
	assert_int_equal(pthread_join(rd, NULL), 0);
	dev_test_hook_before_install = NULL;
	assert_int_equal(dr_read_status, 0);
	ended = join_bounded(dr);
	if (!ended)
		fail_msg("uodp_dev_dereg_mr() still waits %d s after the last "
			 "operation on its key ended",
			 HANG_SECONDS); /* device leaked: its thread hangs */
	assert_int_equal(dr_dereg_status, 0);
	assert_int_equal(uodp_dev_close(dr_dev), 0);
	munmap(dr_mem, 4 * PS);
}

/* ------------------------------------------------------------------------ */
/* No allocation under a lock an invalidation waits for                      */
/* ------------------------------------------------------------------------ */

static struct uodp_dev *al_dev;
static char *al_mem;
static size_t al_len;
static atomic_int al_hook_calls, al_inval_done;
static int al_inval_status;

static void *al_invalidate(void *arg)
{
	(void)arg;
	al_inval_status = uodp_invalidate_range(uodp_dev_ctx(al_dev), al_mem,
						al_len, UODP_EVENT_MANUAL);
	atomic_store(&al_inval_done, 1);
	return NULL;
}

/* Where the device is about to allocate on the fault path: behave like an
 * allocator blocked on a userfaultfd event of this very range, which only
 * returns once the monitor has invalidated the range. */
static void al_hook(struct uodp_umem *umem)
{
	pthread_t t;

	(void)umem;
	atomic_fetch_add(&al_hook_calls, 1);
	assert_int_equal(pthread_create(&t, NULL, al_invalidate, NULL), 0);
	if (!join_bounded(t)) {
		/* Deadlock in real life. Let the fault go on (the
		 * invalidation then completes) and report it. */
		pthread_detach(t);
		atomic_store(&al_inval_done, -1);
	}
}

static void test_fault_allocates_without_locks(void **state)
{
	uint32_t k;
	char b[64];
	int r;

	(void)state;
	al_dev = open_dev(0);
	al_len = 4 * PS;
	al_mem = map_anon(al_len);
	memset(al_mem, 0x33, al_len);
	assert_int_equal(uodp_dev_reg_mr(al_dev, VA(al_mem), al_len,
					 UODP_DEV_ACCESS_ALL, &k),
			 0);
	atomic_store(&al_hook_calls, 0);
	atomic_store(&al_inval_done, 0);
	dev_test_hook_alloc = al_hook;
	r = uodp_dev_read(al_dev, k, VA(al_mem), b, sizeof(b));
	dev_test_hook_alloc = NULL;
	assert_true(atomic_load(&al_hook_calls) >= 1);
	if (atomic_load(&al_inval_done) != 1)
		fail_msg("an invalidation could not finish while the fault "
			 "path allocated memory (lock held across malloc)");
	assert_int_equal(al_inval_status, 0);
	assert_int_equal(r, 0);
	assert_int_equal((unsigned char)b[0], 0x33);
	/* The leaf exists now: later faults allocate nothing. */
	atomic_store(&al_hook_calls, 0);
	dev_test_hook_alloc = al_hook;
	assert_int_equal(uodp_invalidate_range(uodp_dev_ctx(al_dev), al_mem,
					       al_len, UODP_EVENT_MANUAL),
			 0);
	assert_int_equal(uodp_dev_read(al_dev, k, VA(al_mem), b, sizeof(b)), 0);
	dev_test_hook_alloc = NULL;
	assert_int_equal(atomic_load(&al_hook_calls), 0);
	assert_int_equal(uodp_dev_close(al_dev), 0);
	munmap(al_mem, al_len);
}

/* ------------------------------------------------------------------------ */
/* A chaining application handler behind the device's own                    */
/* ------------------------------------------------------------------------ */

static atomic_int *ch_calls; /* shared with the parent */
static struct sigaction ch_prev;

/* The usual shape of a library's handler: handle what is ours (nothing
 * here), pass the rest to the handler that was there before. */
static void chaining_handler(int sig, siginfo_t *si, void *uc)
{
	if (atomic_fetch_add(ch_calls, 1) >= 64)
		_exit(40); /* endless recursion: stop before the stack ends */
	if ((ch_prev.sa_flags & SA_SIGINFO) && ch_prev.sa_sigaction) {
		ch_prev.sa_sigaction(sig, si, uc);
		return;
	}
	if (ch_prev.sa_handler != SIG_DFL && ch_prev.sa_handler != SIG_IGN) {
		ch_prev.sa_handler(sig);
		return;
	}
	signal(sig, SIG_DFL);
}

static void test_chaining_handler_no_loop(void **state)
{
	int st;
	pid_t pid;

	(void)state;
	ch_calls = mmap(NULL, PS, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(ch_calls != MAP_FAILED);
	atomic_store(ch_calls, 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
		struct sigaction sa;
		struct uodp_dev *d1, *d2;
		volatile char *bad = mmap(NULL, PS, PROT_NONE,
					  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		signal(SIGSEGV, SIG_DFL);
		if (uodp_dev_open(&a, &d1)) /* the device's handler */
			_exit(20);
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = chaining_handler;
		sa.sa_flags = SA_SIGINFO | SA_NODEFER;
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGSEGV, &sa, &ch_prev)) /* chains to it */
			_exit(21);
		if (uodp_dev_open(&a, &d2)) /* device's handler in front */
			_exit(22);
		(void)*bad; /* nobody's fault: must end in the default */
		_exit(23);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 40)
		fail_msg("handlers called each other endlessly (%d calls)",
			 atomic_load(ch_calls));
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGSEGV);
	/* The application handler ran (once per delivery; the fault is
	 * delivered again after the default action was restored). */
	assert_true(atomic_load(ch_calls) >= 1);
	assert_true(atomic_load(ch_calls) <= 2);
	munmap(ch_calls, PS);
}

/* The device's handler still recovers its own guarded faults after a
 * chaining handler was put behind it, and the application's handler still
 * sees the faults that are not the device's. */
static sigjmp_buf own_jb;
static void own_handler(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	atomic_fetch_add(ch_calls, 1);
	siglongjmp(own_jb, sig);
}

static void test_handler_stack_still_recovers(void **state)
{
	int st;
	pid_t pid;

	(void)state;
	ch_calls = mmap(NULL, PS, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(ch_calls != MAP_FAILED);
	atomic_store(ch_calls, 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
		struct sigaction sa;
		struct uodp_dev *d1, *d2;
		uint64_t *p = mmap(NULL, PS, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		volatile char *bad = mmap(NULL, PS, PROT_NONE,
					  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint32_t k;
		uint64_t old;
		int i;

		signal(SIGSEGV, SIG_DFL);
		if (uodp_dev_open(&a, &d1))
			_exit(20);
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = own_handler;
		sa.sa_flags = SA_SIGINFO | SA_NODEFER;
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGSEGV, &sa, NULL))
			_exit(21);
		if (uodp_dev_open(&a, &d2))
			_exit(22);
		p[0] = 1;
		if (uodp_dev_reg_mr(d2, VA(p), PS, UODP_DEV_ACCESS_ALL, &k))
			_exit(24);
		for (i = 0; i < 3; i++) {
			/* the application's fault, recovered by its own
			 * handler (which jumps out of the chain) */
			if (sigsetjmp(own_jb, 1) == 0) {
				(void)*bad;
				_exit(25);
			}
			/* a stale device entry over a hole: the device's */
			if (uodp_dev_fetch_add(d2, k, VA(p), 1, &old))
				_exit(26);
			if (munmap(p, PS))
				_exit(27);
			if (uodp_dev_fetch_add(d2, k, VA(p), 1, &old) !=
			    -EFAULT)
				_exit(28);
			p = mmap(p, PS, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				 0);
			if (p == MAP_FAILED)
				_exit(29);
			uodp_invalidate_range(uodp_dev_ctx(d2), p, PS,
					      UODP_EVENT_MANUAL);
		}
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_int_equal(atomic_load(ch_calls), 3);
	munmap(ch_calls, PS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dereg_waits_for_inflight_op),
		cmocka_unit_test(test_fault_allocates_without_locks),
		cmocka_unit_test(test_chaining_handler_no_loop),
		cmocka_unit_test(test_handler_stack_still_recovers),
	};

	PS = (size_t)sysconf(_SC_PAGESIZE);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

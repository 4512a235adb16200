/* SPDX-License-Identifier: MIT */
/*
 * test_timed_waits.c - every timed wait of the library measures its bound
 * on CLOCK_MONOTONIC: a step of the wall clock must neither cut nor
 * lengthen it.
 *
 * The wall clock cannot be stepped without privileges, so this program
 * steps the clock the library reads: it defines clock_gettime() itself
 * (the library's calls resolve to it: the test links the static library)
 * and, while 'realtime_step' is set, answers CLOCK_REALTIME a day in the
 * past. A deadline computed on CLOCK_REALTIME is then long gone for the
 * kernel, which compares it with the real wall clock: the wait returns at
 * once. On CLOCK_MONOTONIC (and a condition variable waiting on it) the
 * wait lasts its bound. Only lower bounds are asserted (a wait may take
 * longer on a busy machine, never less), so nothing here flakes.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "uodp.h"
#include "uodp_dev.h"

#include "helpers_dev.h" /* t_hold */

#define VA(p) ((uint64_t)(uintptr_t)(p))
/* the bound waited for: long enough to tell from an immediate return
 * (microseconds) on any machine, short enough for the suite */
#define BOUND_MS 50
/* a day: far beyond any bound and any scheduling delay */
#define STEP_SEC (24 * 3600)

static atomic_int realtime_step;

int clock_gettime(clockid_t clk, struct timespec *ts)
{
	long r = syscall(SYS_clock_gettime, clk, ts);

	if (!r && clk == CLOCK_REALTIME && atomic_load(&realtime_step))
		ts->tv_sec -= STEP_SEC;
	return (int)r;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The interposition works: else the tests below would prove nothing. */
static void test_step_seen(void **state)
{
	struct timespec a, b;

	(void)state;
	clock_gettime(CLOCK_REALTIME, &a);
	atomic_store(&realtime_step, 1);
	clock_gettime(CLOCK_REALTIME, &b);
	atomic_store(&realtime_step, 0);
	assert_true(a.tv_sec - b.tv_sec >= STEP_SEC - 1);
}

/* uodp_dev_poll_wait(): a request held in its fault (test hook) keeps the
 * queue outstanding; the wait must last its bound although the wall clock
 * went back a day. (On CLOCK_REALTIME it returned at once: the deadline
 * was a day old for the kernel.) */
extern void (*dev_test_hook_before_install)(struct uodp_umem *umem);
static struct t_hold hold;

static void hold_hook(struct uodp_umem *umem)
{
	(void)umem;
	t_hold_here(&hold);
}

static void test_poll_wait_monotonic(void **state)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL,
				   .exec_workers = 1,
				   .fault_workers = 1 };
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	struct uodp_dev_wr wr = { 0 };
	struct uodp_dev_queue *q;
	struct uodp_dev_wc wc;
	struct uodp_dev *dev;
	int64_t t0, t1;
	uint32_t key;
	char *p, b[8];

	(void)state;
	p = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	assert_true(p != MAP_FAILED);
	assert_int_equal(uodp_dev_open(&a, &dev), 0);
	assert_int_equal(
		uodp_dev_reg_mr(dev, VA(p), ps, UODP_DEV_ACCESS_ALL, &key), 0);
	assert_int_equal(uodp_dev_queue_create(dev, 4, &q), 0);
	t_hold_close(&hold);
	dev_test_hook_before_install = hold_hook;
	wr.opcode = UODP_DEV_OP_READ;
	wr.key = key;
	wr.va = VA(p);
	wr.len = sizeof(b);
	wr.buf = b;
	wr.wr_id = 7;
	assert_int_equal(uodp_dev_post(q, &wr), 0);
	t_hold_wait_in(&hold);

	atomic_store(&realtime_step, 1);
	t0 = mono_ms();
	assert_int_equal(uodp_dev_poll_wait(q, &wc, 1, BOUND_MS), 0);
	t1 = mono_ms();
	atomic_store(&realtime_step, 0);
	assert_true(t1 - t0 >= BOUND_MS);

	t_hold_release(&hold);
	assert_int_equal(uodp_dev_poll_wait(q, &wc, 1, 10000), 1);
	dev_test_hook_before_install = NULL;
	assert_int_equal(wc.wr_id, 7);
	assert_int_equal(wc.status, 0);
	assert_int_equal(uodp_dev_queue_destroy(q), 0);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, ps);
}

/* uodp_umem_map_and_lock()'s bound: an invalidation left open keeps the
 * fault retrying; -EBUSY comes after the bound, on CLOCK_MONOTONIC. */
static void cb_nop(struct uodp_umem *umem, const struct uodp_range *r,
		   void *priv)
{
	(void)umem;
	(void)r;
	(void)priv;
}

static void test_map_and_lock_monotonic(void **state)
{
	struct uodp_ctx_ops ops = { .invalidate = cb_nop };
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	struct uodp_range tok;
	struct uodp_ctx *ctx;
	struct uodp_umem *u;
	int64_t t0, t1;
	char *p;

	(void)state;
	p = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	assert_true(p != MAP_FAILED);
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx), 0);
	assert_int_equal(uodp_umem_get(ctx, p, ps, UODP_ACCESS_ALL, &u), 0);
	uodp_range_init(&tok, p, ps, UODP_EVENT_MANUAL);
	assert_int_equal(uodp_invalidate_range_start(ctx, &tok), 0);

	atomic_store(&realtime_step, 1);
	t0 = mono_ms();
	assert_int_equal(uodp_umem_map_and_lock(u, p, ps, UODP_ACCESS_READ,
						BOUND_MS),
			 -EBUSY);
	t1 = mono_ms();
	atomic_store(&realtime_step, 0);
	assert_true(t1 - t0 >= BOUND_MS);

	assert_int_equal(uodp_invalidate_range_end(&tok), 0);
	assert_int_equal(uodp_umem_map_and_lock(u, p, ps, UODP_ACCESS_READ,
						BOUND_MS),
			 1);
	assert_int_equal(uodp_umem_unlock(u), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(p, ps);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_step_seen),
		cmocka_unit_test(test_poll_wait_monotonic),
		cmocka_unit_test(test_map_and_lock_monotonic),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

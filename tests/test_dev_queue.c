/* SPDX-License-Identifier: MIT */
/*
 * test_dev_queue.c - the device's asynchronous queue: posting, polling,
 * errors refused at post time or reported as completions, flow control,
 * and the fault workers: a request stuck in a fault (held by a test hook)
 * must not stall requests whose pages are present.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "uodp.h"
#include "uodp_dev.h"

#define VA(p) ((uint64_t)(uintptr_t)(p))

static size_t PS;

struct fx {
	struct uodp_dev *dev;
	struct uodp_dev_queue *q;
	char *buf;
	size_t len;
	uint32_t key;
};

static int setup(void **state)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL,
				   .exec_workers = 2,
				   .fault_workers = 1 };
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(uodp_dev_open(&a, &f->dev), 0);
	f->len = 64 * PS;
	f->buf = mmap(NULL, f->len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(f->buf != MAP_FAILED);
	for (size_t i = 0; i < f->len; i++)
		f->buf[i] = (char)(i * 3);
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), f->len,
					 UODP_DEV_ACCESS_ALL, &f->key),
			 0);
	assert_int_equal(uodp_dev_queue_create(f->dev, 64, &f->q), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	/* close destroys the queue and deregisters the key itself */
	assert_int_equal(uodp_dev_close(f->dev), 0);
	munmap(f->buf, f->len);
	free(f);
	return 0;
}

/* Poll until @n completions arrived (they are appended to @wc). */
static void wait_n(struct uodp_dev_queue *q, struct uodp_dev_wc *wc, int n)
{
	int got = 0, r;

	while (got < n) {
		r = uodp_dev_poll_wait(q, wc + got, n - got, 10000);
		assert_true(r > 0);
		got += r;
	}
}

static struct uodp_dev_wc *by_id(struct uodp_dev_wc *wc, int n, uint64_t id)
{
	for (int i = 0; i < n; i++)
		if (wc[i].wr_id == id)
			return &wc[i];
	fail_msg("no completion for wr_id %llu", (unsigned long long)id);
	return NULL;
}

static void test_args(void **state)
{
	struct fx *f = *state;
	struct uodp_dev_queue *q;
	struct uodp_dev_wr wr = { .opcode = UODP_DEV_OP_READ,
				  .key = f->key,
				  .va = VA(f->buf),
				  .len = 8 };
	struct uodp_dev_wc wc;
	char b[8];

	assert_int_equal(uodp_dev_queue_create(f->dev, 0, &q), -EINVAL);
	assert_int_equal(
		uodp_dev_queue_create(f->dev, UODP_DEV_QUEUE_DEPTH_MAX + 1, &q),
		-EINVAL);
	assert_int_equal(uodp_dev_queue_create(f->dev, 4, NULL), -EINVAL);
	assert_int_equal(uodp_dev_queue_create(NULL, 4, &q), -EINVAL);
	assert_int_equal(uodp_dev_post(NULL, &wr), -EINVAL);
	assert_int_equal(uodp_dev_post(f->q, NULL), -EINVAL);
	assert_int_equal(uodp_dev_poll(NULL, &wc, 1), -EINVAL);
	assert_int_equal(uodp_dev_poll(f->q, NULL, 1), -EINVAL);
	assert_int_equal(uodp_dev_poll(f->q, &wc, -1), -EINVAL);
	assert_int_equal(uodp_dev_queue_destroy(NULL), -EINVAL);

	/* refused at post time: nothing completes */
	assert_int_equal(uodp_dev_post(f->q, &wr), -EINVAL); /* NULL buf */
	wr.buf = b;
	wr.opcode = 99;
	assert_int_equal(uodp_dev_post(f->q, &wr), -EINVAL);
	wr.opcode = UODP_DEV_OP_READ;
	wr.key = f->key + 1;
	assert_int_equal(uodp_dev_post(f->q, &wr), -ENOENT);
	wr.key = f->key;
	wr.va = VA(f->buf) + f->len - 4;
	assert_int_equal(uodp_dev_post(f->q, &wr), -ERANGE);
	wr.opcode = UODP_DEV_OP_FETCH_ADD;
	wr.va = VA(f->buf) + 3;
	assert_int_equal(uodp_dev_post(f->q, &wr), -EINVAL);
	assert_int_equal(uodp_dev_poll(f->q, &wc, 1), 0);
	/* nothing outstanding: poll_wait returns at once */
	assert_int_equal(uodp_dev_poll_wait(f->q, &wc, 1, -1), 0);
}

static void test_all_opcodes(void **state)
{
	struct fx *f = *state;
	uint64_t *w = (uint64_t *)(f->buf + 20 * PS);
	char rd[100], src[3 * 4096];
	struct uodp_dev_wc wc[7];
	struct uodp_dev_wr wr[7] = {
		{ .wr_id = 1,
		  .opcode = UODP_DEV_OP_READ,
		  .key = f->key,
		  .va = VA(f->buf) + 5,
		  .len = sizeof(rd),
		  .buf = rd },
		{ .wr_id = 2,
		  .opcode = UODP_DEV_OP_WRITE,
		  .key = f->key,
		  .va = VA(f->buf) + 30 * PS,
		  .len = sizeof(src),
		  .buf = src },
		{ .wr_id = 3,
		  .opcode = UODP_DEV_OP_COPY,
		  .key = f->key,
		  .va = VA(f->buf) + 40 * PS,
		  .src_key = f->key,
		  .src_va = VA(f->buf),
		  .len = 5 * PS },
		{ .wr_id = 4,
		  .opcode = UODP_DEV_OP_FETCH_ADD,
		  .key = f->key,
		  .va = VA(w),
		  .compare_add = 5 },
		{ .wr_id = 5,
		  .opcode = UODP_DEV_OP_CMP_SWAP,
		  .key = f->key,
		  .va = VA(w) + 8,
		  .compare_add = 0,
		  .swap = 77 },
		{ .wr_id = 6,
		  .opcode = UODP_DEV_OP_PREFETCH,
		  .key = f->key,
		  .va = VA(f->buf) + 50 * PS,
		  .len = 4 * PS },
		{ .wr_id = 7,
		  .opcode = UODP_DEV_OP_PREFETCH_WRITE,
		  .key = f->key,
		  .va = VA(f->buf) + 60 * PS,
		  .len = 4 * PS },
	};
	struct uodp_dev_stats s;
	uint8_t st[4];
	int i;

	assert_true(PS <= 4096);
	w[0] = 10;
	w[1] = 0;
	for (i = 0; i < (int)sizeof(src); i++)
		src[i] = (char)(i ^ 0x5a);
	for (i = 0; i < 7; i++)
		assert_int_equal(uodp_dev_post(f->q, &wr[i]), 0);
	wait_n(f->q, wc, 7);
	for (i = 0; i < 7; i++)
		assert_int_equal(wc[i].status, 0);
	assert_int_equal(by_id(wc, 7, 1)->bytes, sizeof(rd));
	assert_int_equal(by_id(wc, 7, 1)->opcode, UODP_DEV_OP_READ);
	assert_memory_equal(rd, f->buf + 5, sizeof(rd));
	/* the copy may have run before or after the write; the first pages
	 * are not touched by the write */
	assert_memory_equal(f->buf + 40 * PS, f->buf, 5 * PS);
	assert_memory_equal(f->buf + 30 * PS, src, sizeof(src));
	assert_int_equal(by_id(wc, 7, 4)->old, 10);
	assert_int_equal(w[0], 15);
	assert_int_equal(by_id(wc, 7, 5)->old, 0);
	assert_int_equal(w[1], 77);
	assert_int_equal(uodp_dev_snapshot(f->dev, f->key, VA(f->buf) + 60 * PS,
					   4 * PS, st),
			 4);
	for (i = 0; i < 4; i++)
		assert_int_equal(st[i], UODP_DEV_PAGE_WRITE);
	s = (uodp_dev_stats(f->dev, &s), s);
	assert_int_equal(s.async_posted, 7);
	assert_int_equal(s.async_completed, 7);
	assert_true(s.async_faults >= 1);
}

static void test_error_completions(void **state)
{
	struct fx *f = *state;
	struct uodp_dev_wc wc[3];
	char b[64];
	struct uodp_dev_wr wr = { .wr_id = 9,
				  .opcode = UODP_DEV_OP_READ,
				  .key = f->key,
				  .va = VA(f->buf) + 10 * PS,
				  .len = sizeof(b),
				  .buf = b };

	assert_int_equal(munmap(f->buf + 10 * PS, PS), 0);
	assert_int_equal(mprotect(f->buf + 11 * PS, PS, PROT_READ), 0);
	assert_int_equal(uodp_dev_post(f->q, &wr), 0);
	wr.wr_id = 10;
	wr.opcode = UODP_DEV_OP_WRITE;
	wr.va = VA(f->buf) + 11 * PS;
	assert_int_equal(uodp_dev_post(f->q, &wr), 0);
	wr.wr_id = 11;
	wr.opcode = UODP_DEV_OP_FETCH_ADD;
	assert_int_equal(uodp_dev_post(f->q, &wr), 0);
	wait_n(f->q, wc, 3);
	assert_int_equal(by_id(wc, 3, 9)->status, -EFAULT);
	assert_int_equal(by_id(wc, 3, 10)->status, -EACCES);
	assert_int_equal(by_id(wc, 3, 11)->status, -EACCES);
}

static void test_flow_control(void **state)
{
	struct fx *f = *state;
	struct uodp_dev_queue *q;
	struct uodp_dev_wc wc[2];
	char b[3][8]; /* one buffer per request in flight */
	struct uodp_dev_wr wr = { .opcode = UODP_DEV_OP_READ,
				  .key = f->key,
				  .va = VA(f->buf),
				  .len = 8 };

	assert_int_equal(uodp_dev_queue_create(f->dev, 2, &q), 0);
	wr.buf = b[0];
	assert_int_equal(uodp_dev_post(q, &wr), 0);
	wr.buf = b[1];
	assert_int_equal(uodp_dev_post(q, &wr), 0);
	/* two not yet polled, done or not: full */
	assert_int_equal(uodp_dev_post(q, &wr), -ENOSPC);
	wait_n(q, wc, 1);
	wr.buf = b[2];
	assert_int_equal(uodp_dev_post(q, &wr), 0);
	wait_n(q, wc, 2);
	assert_int_equal(uodp_dev_poll(q, wc, 2), 0);
	assert_int_equal(uodp_dev_queue_destroy(q), 0);
}

/* A request held in its fault must not stall the others. */
extern void (*dev_test_hook_before_install)(struct uodp_umem *umem);
static pthread_mutex_t hk_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hk_cond = PTHREAD_COND_INITIALIZER;
static bool hk_entered, hk_release;

static void hook_hold(struct uodp_umem *umem)
{
	(void)umem;
	pthread_mutex_lock(&hk_lock);
	hk_entered = true;
	pthread_cond_broadcast(&hk_cond);
	while (!hk_release)
		pthread_cond_wait(&hk_cond, &hk_lock);
	pthread_mutex_unlock(&hk_lock);
}

static void test_fault_does_not_stall(void **state)
{
	struct fx *f = *state;
	char *slow = mmap(NULL, 4 * PS, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char b[16][64], sb[64];
	struct uodp_dev_wc wc[17];
	struct uodp_dev_wr wr = { .opcode = UODP_DEV_OP_READ,
				  .key = f->key,
				  .len = 64 };
	uint32_t sk;
	int i;

	assert_true(slow != MAP_FAILED);
	strcpy(slow, "slow page");
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(slow), 4 * PS,
					 UODP_DEV_ACCESS_READ, &sk),
			 0);
	/* the fast region's pages are present */
	assert_int_equal(
		uodp_dev_prefetch(f->dev, f->key, VA(f->buf), 16 * PS, 0), 0);
	hk_entered = hk_release = false;
	dev_test_hook_before_install = hook_hold;

	wr.wr_id = 100;
	wr.key = sk;
	wr.va = VA(slow);
	wr.buf = sb;
	assert_int_equal(uodp_dev_post(f->q, &wr), 0);
	pthread_mutex_lock(&hk_lock);
	while (!hk_entered)
		pthread_cond_wait(&hk_cond, &hk_lock);
	pthread_mutex_unlock(&hk_lock);

	/* the fault worker is stuck; exec workers serve everyone else */
	wr.key = f->key;
	for (i = 0; i < 16; i++) {
		wr.wr_id = (uint64_t)i;
		wr.va = VA(f->buf) + (uint64_t)i * PS;
		wr.buf = b[i];
		assert_int_equal(uodp_dev_post(f->q, &wr), 0);
	}
	wait_n(f->q, wc, 16);
	for (i = 0; i < 16; i++) {
		assert_true(wc[i].wr_id < 16);
		assert_int_equal(wc[i].status, 0);
		assert_memory_equal(b[wc[i].wr_id], f->buf + wc[i].wr_id * PS,
				    64);
	}
	assert_int_equal(uodp_dev_poll(f->q, wc, 1), 0); /* 100 still held */

	pthread_mutex_lock(&hk_lock);
	hk_release = true;
	pthread_cond_broadcast(&hk_cond);
	pthread_mutex_unlock(&hk_lock);
	wait_n(f->q, wc, 1);
	dev_test_hook_before_install = NULL;
	assert_int_equal(wc[0].wr_id, 100);
	assert_int_equal(wc[0].status, 0);
	assert_string_equal(sb, "slow page");
	munmap(slow, 4 * PS);
}

/* Several threads, several queues, many requests: every one completes
 * once; destroy and close with requests in flight. */
struct poster {
	struct fx *f;
	struct uodp_dev_queue *q;
	int n, done, bad;
};

static void *poster_main(void *arg)
{
	struct poster *p = arg;
	struct uodp_dev_wc wc[16];
	uint64_t *ctr = (uint64_t *)(p->f->buf + 63 * PS);
	struct uodp_dev_wr wr = { .opcode = UODP_DEV_OP_FETCH_ADD,
				  .key = p->f->key,
				  .va = VA(ctr),
				  .compare_add = 1 };
	int posted = 0, r, i;

	while (p->done < p->n) {
		while (posted < p->n) {
			wr.wr_id = (uint64_t)posted;
			r = uodp_dev_post(p->q, &wr);
			if (r == -ENOSPC)
				break;
			if (r)
				p->bad++;
			posted++;
		}
		r = uodp_dev_poll_wait(p->q, wc, 16, 10000);
		if (r <= 0) {
			p->bad++;
			break;
		}
		for (i = 0; i < r; i++)
			if (wc[i].status)
				p->bad++;
		p->done += r;
	}
	return NULL;
}

static void test_many(void **state)
{
	struct fx *f = *state;
	struct poster p[3];
	pthread_t t[3];
	uint64_t *ctr = (uint64_t *)(f->buf + 63 * PS);
	struct uodp_dev_wr wr = { .opcode = UODP_DEV_OP_PREFETCH,
				  .key = f->key,
				  .va = VA(f->buf),
				  .len = f->len };
	int i;

	*ctr = 0;
	for (i = 0; i < 3; i++) {
		p[i].f = f;
		p[i].n = 2000;
		p[i].done = p[i].bad = 0;
		assert_int_equal(uodp_dev_queue_create(f->dev, 8, &p[i].q), 0);
		assert_int_equal(
			pthread_create(&t[i], NULL, poster_main, &p[i]), 0);
	}
	for (i = 0; i < 3; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(p[i].bad, 0);
		assert_int_equal(p[i].done, 2000);
	}
	assert_int_equal(*ctr, 6000);
	/* in flight at destroy / close: they finish first */
	for (i = 0; i < 8; i++)
		assert_int_equal(uodp_dev_post(p[0].q, &wr), 0);
	assert_int_equal(uodp_dev_queue_destroy(p[0].q), 0);
	for (i = 0; i < 8; i++)
		assert_int_equal(uodp_dev_post(p[1].q, &wr), 0);
	/* p[1].q and p[2].q are left to uodp_dev_close() (teardown) */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_args, setup, teardown),
		cmocka_unit_test_setup_teardown(test_all_opcodes, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_error_completions, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_flow_control, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fault_does_not_stall,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_many, setup, teardown),
	};

	PS = (size_t)sysconf(_SC_PAGESIZE);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

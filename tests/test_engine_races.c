/* SPDX-License-Identifier: MIT */
/*
 * test_engine_races.c - every race the retry protocol handles, provoked on
 * purpose. The engine's test hooks stop a fault between populate and install
 * (or an invalidation right after its tree walk), and the other side of the
 * race runs exactly there; threads meet at barriers, not sleeps.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/internal.h"
#include "uodp.h"

#define NPAGES 64

static size_t page;

/* What the driver callback saw. */
struct seen {
	pthread_mutex_t lock;
	int calls;
	uint64_t start[16], end[16];
	struct uodp_umem *umem[16];
};

static struct seen seen = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void record(struct uodp_umem *umem, uint64_t s, uint64_t e, void *p)
{
	(void)p;
	pthread_mutex_lock(&seen.lock);
	if (seen.calls < 16) {
		seen.umem[seen.calls] = umem;
		seen.start[seen.calls] = s;
		seen.end[seen.calls] = e;
	}
	seen.calls++;
	pthread_mutex_unlock(&seen.lock);
}

static const struct uodp_ctx_ops record_ops = { .invalidate_range = record };

struct fixture {
	struct uodp_ctx *ctx;
	struct uodp_umem *umem;
	char *buf;
	uint64_t base;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	page = (size_t)sysconf(_SC_PAGESIZE);
	f->buf = mmap(NULL, NPAGES * page, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(f->buf != MAP_FAILED);
	f->base = (uint64_t)(uintptr_t)f->buf;
	assert_int_equal(uodp_ctx_create(&record_ops, UODP_CTX_MANUAL, &f->ctx),
			 0);
	assert_int_equal(uodp_umem_get(f->ctx, f->base, NPAGES * page,
				       UODP_ACCESS_ALL, &f->umem),
			 0);
	memset(&seen.calls, 0, sizeof(seen) - offsetof(struct seen, calls));
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	engine_test_hook_before_install = NULL;
	engine_test_hook_after_start_walk = NULL;
	if (f->umem)
		assert_int_equal(uodp_umem_release(f->umem), 0);
	assert_int_equal(uodp_ctx_destroy(f->ctx), 0);
	munmap(f->buf, NPAGES * page);
	free(f);
	return 0;
}

static uint64_t count_entries(struct uodp_umem *umem, uint64_t s, uint64_t e)
{
	uint64_t n = 0, va;

	for (va = s; va < e; va += page)
		n += uodp_umem_entry(umem, va) != 0;
	return n;
}

/* --- 1. An invalidation starting between read_seq and install ----------- */

static struct fixture *hook_f;
static uint64_t hook_s, hook_e;
static int hook_mode; /* 0: start only, 1: start + end, 2: other region */

static void invalidate_in_window(struct uodp_umem *umem)
{
	(void)umem;
	engine_test_hook_before_install = NULL; /* once */
	assert_int_equal(
		uodp_invalidate_range_start(hook_f->ctx, hook_s, hook_e), 0);
	if (hook_mode >= 1)
		assert_int_equal(uodp_invalidate_range_end(hook_f->ctx, hook_s,
							   hook_e),
				 0);
}

static void map_with_window_race(void **state, int mode, uint64_t s, uint64_t e)
{
	struct fixture *f = *state;
	struct uodp_umem_stats st;
	uint64_t seq = uodp_umem_read_seq(f->umem);
	int64_t n;

	hook_f = f;
	hook_mode = mode;
	hook_s = s;
	hook_e = e;
	engine_test_hook_before_install = invalidate_in_window;
	n = uodp_umem_map(f->umem, f->base, 8 * page, UODP_ACCESS_WRITE, seq);
	assert_int_equal(n, -EAGAIN);
	assert_int_equal(count_entries(f->umem, f->base, f->base + 8 * page),
			 0);
	assert_true(uodp_umem_retry(f->umem, seq));
	assert_int_equal(uodp_umem_stats(f->umem, &st), 0);
	assert_int_equal(st.eagain, 1);
	if (mode == 0)
		assert_int_equal(uodp_invalidate_range_end(f->ctx, s, e), 0);
	/* A fresh fault succeeds. */
	seq = uodp_umem_read_seq(f->umem);
	assert_int_equal(uodp_umem_map(f->umem, f->base, 8 * page,
				       UODP_ACCESS_WRITE, seq),
			 8);
	assert_int_equal(count_entries(f->umem, f->base, f->base + 8 * page),
			 8);
}

static void test_start_in_window(void **state)
{
	struct fixture *f = *state;

	map_with_window_race(state, 0, f->base, f->base + page);
}

static void test_start_end_in_window(void **state)
{
	struct fixture *f = *state;

	/* The invalidation ran entirely inside the window: only the sequence
	 * tells the fault. Even a range outside the pages being mapped (but
	 * in the region) forces the retry: counters are per region. */
	map_with_window_race(state, 1, f->base + 40 * page,
			     f->base + 41 * page);
}

static void test_other_region_no_retry(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *other;
	uint64_t seq = uodp_umem_read_seq(f->umem);
	char *mem = mmap(NULL, page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_int_equal(uodp_umem_get(f->ctx, (uintptr_t)mem, page,
				       UODP_ACCESS_ALL, &other),
			 0);
	hook_f = f;
	hook_mode = 1;
	hook_s = (uintptr_t)mem;
	hook_e = hook_s + page;
	engine_test_hook_before_install = invalidate_in_window;
	assert_int_equal(uodp_umem_map(f->umem, f->base, 2 * page,
				       UODP_ACCESS_READ, seq),
			 2);
	assert_int_equal(seen.calls, 1);
	assert_ptr_equal(seen.umem[0], other);
	assert_int_equal(uodp_umem_release(other), 0);
	munmap(mem, page);
}

/* --- 2. An invalidation starting while a map runs (two threads) ---------- */

static pthread_barrier_t bar;

static void park_in_window(struct uodp_umem *umem)
{
	(void)umem;
	engine_test_hook_before_install = NULL;
	pthread_barrier_wait(&bar); /* populated, about to install */
	pthread_barrier_wait(&bar); /* the invalidation has started */
}

static void *mapper(void *arg)
{
	struct fixture *f = arg;
	uint64_t seq = uodp_umem_read_seq(f->umem);

	return (void *)(intptr_t)uodp_umem_map(f->umem, f->base, NPAGES * page,
					       UODP_ACCESS_WRITE, seq);
}

static void test_invalidation_during_map(void **state)
{
	struct fixture *f = *state;
	pthread_t t;
	void *ret;

	pthread_barrier_init(&bar, NULL, 2);
	engine_test_hook_before_install = park_in_window;
	pthread_create(&t, NULL, mapper, f);
	pthread_barrier_wait(&bar);
	assert_int_equal(uodp_invalidate_range_start(f->ctx, f->base,
						     f->base + NPAGES * page),
			 0);
	pthread_barrier_wait(&bar);
	pthread_join(t, &ret);
	assert_int_equal((intptr_t)ret, -EAGAIN);
	/* Nothing was installed, neither during nor after start(). */
	assert_int_equal(
		count_entries(f->umem, f->base, f->base + NPAGES * page), 0);
	assert_int_equal(uodp_invalidate_range_end(f->ctx, f->base,
						   f->base + NPAGES * page),
			 0);
	pthread_barrier_destroy(&bar);
}

/* A fault that starts while an invalidation is running retries, and the
 * region's wait blocks until the invalidation ends. */
struct waiter {
	struct uodp_umem *umem;
	atomic_int done;
	int ret;
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;

	w->ret = uodp_umem_wait(w->umem);
	atomic_store(&w->done, 1);
	return NULL;
}

static void test_map_while_running_and_waiters(void **state)
{
	struct fixture *f = *state;
	struct waiter w[3];
	pthread_t t[3];
	uint64_t seq;
	int i;

	assert_int_equal(uodp_invalidate_range_start(f->ctx, f->base,
						     f->base + page),
			 0);
	seq = uodp_umem_read_seq(f->umem);
	assert_int_equal(uodp_umem_map(f->umem, f->base + 10 * page, page,
				       UODP_ACCESS_READ, seq),
			 -EAGAIN);
	for (i = 0; i < 3; i++) {
		w[i].umem = f->umem;
		atomic_init(&w[i].done, 0);
		pthread_create(&t[i], NULL, wait_thread, &w[i]);
	}
	usleep(20000); /* give them time to block; the check below is not timed */
	for (i = 0; i < 3; i++)
		assert_int_equal(atomic_load(&w[i].done), 0);
	assert_int_equal(
		uodp_invalidate_range_end(f->ctx, f->base, f->base + page), 0);
	for (i = 0; i < 3; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].ret, 0);
	}
	/* The sequence moved: the old seq can never install. */
	assert_true(uodp_umem_read_seq(f->umem) != seq);
	uodp_umem_lock(f->umem);
	assert_true(uodp_umem_retry(f->umem, seq));
	assert_false(uodp_umem_retry(f->umem, uodp_umem_read_seq(f->umem)));
	uodp_umem_unlock(f->umem);
}

/* --- 3. A region registered while an invalidation runs ------------------- */

static void test_register_during_invalidation(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *late;
	struct waiter w = { 0 };
	pthread_t t;
	uint64_t seq;

	/* Two invalidations run; the region must stay without counters
	 * until both have ended. */
	assert_int_equal(uodp_invalidate_range_start(f->ctx, f->base,
						     f->base + page),
			 0);
	assert_int_equal(uodp_invalidate_range_start(f->ctx, f->base + 4 * page,
						     f->base + 5 * page),
			 0);
	assert_int_equal(uodp_umem_get(f->ctx, f->base, 8 * page,
				       UODP_ACCESS_ALL, &late),
			 0);
	seq = uodp_umem_read_seq(late);
	assert_int_equal(uodp_umem_map(late, f->base + 2 * page, page,
				       UODP_ACCESS_READ, seq),
			 -EAGAIN);
	w.umem = late;
	atomic_init(&w.done, 0);
	pthread_create(&t, NULL, wait_thread, &w);

	/* end() finds the late region in the tree: it must not lower
	 * counters that start() never raised. */
	assert_int_equal(
		uodp_invalidate_range_end(f->ctx, f->base, f->base + page), 0);
	seq = uodp_umem_read_seq(late);
	assert_int_equal(uodp_umem_map(late, f->base + 2 * page, page,
				       UODP_ACCESS_READ, seq),
			 -EAGAIN);
	usleep(20000);
	assert_int_equal(atomic_load(&w.done), 0);

	assert_int_equal(uodp_invalidate_range_end(f->ctx, f->base + 4 * page,
						   f->base + 5 * page),
			 0);
	pthread_join(t, NULL);
	assert_int_equal(w.ret, 0);
	seq = uodp_umem_read_seq(late);
	assert_int_equal(uodp_umem_map(late, f->base + 2 * page, page,
				       UODP_ACCESS_READ, seq),
			 1);
	/* And its counters now work: an invalidation makes it retry. */
	assert_int_equal(uodp_invalidate_range(f->ctx, f->base + 2 * page,
					       f->base + 3 * page),
			 0);
	assert_int_equal(uodp_umem_entry(late, f->base + 2 * page), 0);
	uodp_umem_lock(late);
	assert_true(uodp_umem_retry(late, seq));
	uodp_umem_unlock(late);
	assert_int_equal(uodp_umem_release(late), 0);
}

/* Released while still waiting for its counters: leaves the list. */
static void test_release_without_counters(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *late;

	assert_int_equal(uodp_invalidate_range_start(f->ctx, f->base,
						     f->base + page),
			 0);
	assert_int_equal(uodp_umem_get(f->ctx, f->base, page, UODP_ACCESS_ALL,
				       &late),
			 0);
	assert_int_equal(uodp_umem_release(late), 0);
	assert_int_equal(
		uodp_invalidate_range_end(f->ctx, f->base, f->base + page), 0);
	assert_int_equal(atomic_load(&f->ctx->nc_pending), 0);
}

/* --- 4. Overlapping regions ---------------------------------------------- */

static void test_overlapping_regions(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *a, *b;
	uint64_t seq;
	int i, hit_a = 0, hit_b = 0, hit_f = 0;

	assert_int_equal(uodp_umem_get(f->ctx, f->base + 4 * page, 8 * page,
				       UODP_ACCESS_ALL, &a),
			 0);
	assert_int_equal(uodp_umem_get(f->ctx, f->base + 8 * page, 8 * page,
				       UODP_ACCESS_ALL, &b),
			 0);
	seq = uodp_umem_read_seq(a);
	assert_int_equal(uodp_umem_map(a, f->base + 4 * page, 8 * page,
				       UODP_ACCESS_WRITE, seq),
			 8);
	seq = uodp_umem_read_seq(b);
	assert_int_equal(uodp_umem_map(b, f->base + 8 * page, 8 * page,
				       UODP_ACCESS_WRITE, seq),
			 8);
	assert_int_equal(uodp_invalidate_range(f->ctx, f->base + 10 * page,
					       f->base + 13 * page),
			 0);
	assert_int_equal(seen.calls, 3); /* f->umem, a, b */
	for (i = 0; i < 3; i++) {
		if (seen.umem[i] == a) {
			hit_a++;
			assert_int_equal(seen.start[i], f->base + 10 * page);
			assert_int_equal(seen.end[i], f->base + 12 * page);
		} else if (seen.umem[i] == b) {
			hit_b++;
			assert_int_equal(seen.start[i], f->base + 10 * page);
			assert_int_equal(seen.end[i], f->base + 13 * page);
		} else if (seen.umem[i] == f->umem) {
			hit_f++;
		}
	}
	assert_int_equal(hit_a + hit_b + hit_f, 3);
	assert_int_equal(
		count_entries(a, f->base + 4 * page, f->base + 12 * page), 6);
	assert_int_equal(
		count_entries(b, f->base + 8 * page, f->base + 16 * page), 5);
	assert_int_equal(uodp_umem_release(a), 0);
	assert_int_equal(uodp_umem_release(b), 0);
}

/* --- 5. Release during an invalidation ----------------------------------- */

static pthread_barrier_t cb_bar;
static atomic_int released;

static void blocking_cb(struct uodp_umem *umem, uint64_t s, uint64_t e, void *p)
{
	(void)umem;
	(void)s;
	(void)e;
	(void)p;
	pthread_barrier_wait(&cb_bar); /* the releaser may now try */
	usleep(20000);
	/* The region's memory is still valid: release waits for us. */
	assert_int_equal(atomic_load(&released), 0);
	assert_int_equal(uodp_umem_start(umem) != 0, 1);
}

static void *invalidator(void *arg)
{
	struct fixture *f = arg;

	uodp_invalidate_range(f->ctx, f->base, f->base + NPAGES * page);
	return NULL;
}

static void test_release_during_callback(void **state)
{
	static const struct uodp_ctx_ops ops = { .invalidate_range =
							 blocking_cb };
	struct uodp_ctx *ctx;
	struct uodp_umem *umem;
	struct fixture g;
	pthread_t t;

	(void)state;
	g.buf = mmap(NULL, NPAGES * page, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	g.base = (uintptr_t)g.buf;
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx), 0);
	g.ctx = ctx;
	assert_int_equal(uodp_umem_get(ctx, g.base, NPAGES * page,
				       UODP_ACCESS_ALL, &umem),
			 0);
	atomic_store(&released, 0);
	pthread_barrier_init(&cb_bar, NULL, 2);
	pthread_create(&t, NULL, invalidator, &g);
	pthread_barrier_wait(&cb_bar);
	assert_int_equal(uodp_umem_release(umem), 0);
	atomic_store(&released, 1);
	pthread_join(t, NULL);
	pthread_barrier_destroy(&cb_bar);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(g.buf, NPAGES * page);
}

/* Release between start() and end(): end() must not touch it. */
static void test_release_between_start_end(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(uodp_invalidate_range_start(f->ctx, f->base,
						     f->base + page),
			 0);
	assert_int_equal(uodp_umem_release(f->umem), 0);
	f->umem = NULL;
	assert_int_equal(
		uodp_invalidate_range_end(f->ctx, f->base, f->base + page), 0);
}

/* --- 6. Destroy while a fault waits -------------------------------------- */

static void test_destroy_wakes_waiters(void **state)
{
	struct fixture *f = *state;
	struct waiter w = { .umem = f->umem };
	struct uodp_ctx *ctx;
	struct uodp_umem *umem;
	pthread_t t;
	char *mem = mmap(NULL, page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	(void)state;
	assert_int_equal(uodp_ctx_create(&record_ops, UODP_CTX_MANUAL, &ctx),
			 0);
	assert_int_equal(uodp_umem_get(ctx, (uintptr_t)mem, page,
				       UODP_ACCESS_ALL, &umem),
			 0);
	assert_int_equal(uodp_invalidate_range_start(ctx, (uintptr_t)mem,
						     (uintptr_t)mem + page),
			 0);
	w.umem = umem;
	atomic_init(&w.done, 0);
	pthread_create(&t, NULL, wait_thread, &w);
	usleep(20000);
	assert_int_equal(atomic_load(&w.done), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	pthread_join(t, NULL);
	assert_int_equal(w.ret, -ENODEV);
	assert_int_equal(uodp_umem_map(umem, (uintptr_t)mem, page,
				       UODP_ACCESS_READ,
				       uodp_umem_read_seq(umem)),
			 -ENODEV);
	assert_int_equal(uodp_umem_release(umem), 0);
	munmap(mem, page);
}

/* --- 7. A frame changed under a live entry (root only: needs pfns) ------- */

static void test_frame_changed(void **state)
{
	struct fixture *f = *state;
	uint64_t seq, va = f->base + 3 * page;
	void *p, *keep;

	seq = uodp_umem_read_seq(f->umem);
	assert_int_equal(
		uodp_umem_map(f->umem, va, page, UODP_ACCESS_WRITE, seq), 1);
	if (!uodp_umem_pfn(f->umem, va))
		skip(); /* frames hidden from unprivileged users */
	/* Replace the page without any notification (a manual context has
	 * no monitor). The old frame is moved away, not freed, so the kernel
	 * cannot hand the same frame back: the new page's frame differs. */
	keep = mmap(NULL, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(keep != MAP_FAILED);
	p = mremap((void *)(uintptr_t)va, page, page,
		   MREMAP_MAYMOVE | MREMAP_FIXED, keep);
	assert_true(p == keep);
	p = mmap((void *)(uintptr_t)va, page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	assert_true(p == (void *)(uintptr_t)va);
	seq = uodp_umem_read_seq(f->umem);
	assert_int_equal(uodp_umem_map(f->umem, va, page, UODP_ACCESS_WRITE,
				       seq),
			 -EAGAIN);
	assert_int_equal(seen.calls, 1);
	assert_int_equal(seen.start[0], va);
	assert_int_equal(seen.end[0], va + page);
	assert_int_equal(uodp_umem_entry(f->umem, va), 0);
	seq = uodp_umem_read_seq(f->umem);
	assert_int_equal(
		uodp_umem_map(f->umem, va, page, UODP_ACCESS_WRITE, seq), 1);
	munmap(keep, page);
}

/* --- 8. Faults and invalidations hammering one region -------------------- */

struct storm {
	struct fixture *f;
	atomic_int stop;
	atomic_long installs, violations;
};

static void *fault_thread(void *arg)
{
	struct storm *s = arg;
	unsigned seed = (unsigned)(uintptr_t)pthread_self();

	while (!atomic_load(&s->stop)) {
		uint64_t pg = (uint64_t)rand_r(&seed) % NPAGES;
		uint64_t va = s->f->base + pg * page, seq;
		int64_t n;

		uodp_umem_wait(s->f->umem);
		seq = uodp_umem_read_seq(s->f->umem);
		n = uodp_umem_map(s->f->umem, va, page, UODP_ACCESS_WRITE, seq);
		if (n == 1) {
			uodp_umem_lock(s->f->umem);
			if (!uodp_umem_retry(s->f->umem, seq))
				atomic_fetch_add(&s->installs, 1);
			uodp_umem_unlock(s->f->umem);
		}
	}
	return NULL;
}

static void test_storm(void **state)
{
	struct fixture *f = *state;
	struct storm s = { .f = f };
	pthread_t t[3];
	unsigned seed = 1;
	int i, round;

	for (i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, fault_thread, &s);
	/* Progress-driven, not timed: at least 2000 invalidations, and go on
	 * until the faulting threads have installed often enough that the
	 * race was really exercised (they get the CPU between rounds). */
	for (round = 0; round < 2000 || atomic_load(&s.installs) < 200;
	     round++) {
		uint64_t a = (uint64_t)rand_r(&seed) % NPAGES;
		uint64_t b = a + 1 + (uint64_t)rand_r(&seed) % (NPAGES - a);
		uint64_t s0 = f->base + a * page, e0 = f->base + b * page;
		int k;

		assert_true(round < 1000000); /* no install at all: a bug */
		assert_int_equal(uodp_invalidate_range_start(f->ctx, s0, e0),
				 0);
		/* While it runs, nothing may appear in its range. */
		for (k = 0; k < 3; k++)
			if (count_entries(f->umem, s0, e0))
				atomic_fetch_add(&s.violations, 1);
		assert_int_equal(uodp_invalidate_range_end(f->ctx, s0, e0), 0);
		sched_yield();
	}
	atomic_store(&s.stop, 1);
	for (i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(atomic_load(&s.violations), 0);
	assert_true(atomic_load(&s.installs) >= 200);
	assert_int_equal(atomic_load(&f->ctx->notifier_count), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_start_in_window, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_start_end_in_window, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_other_region_no_retry,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalidation_during_map,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_map_while_running_and_waiters, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_register_during_invalidation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_without_counters,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_overlapping_regions, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_release_during_callback,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_release_between_start_end,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_destroy_wakes_waiters,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_frame_changed, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_storm, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

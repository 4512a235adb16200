/* SPDX-License-Identifier: MIT */
/*
 * test_engine_races.c - every race the retry protocol handles, provoked on
 * purpose. The engine's test hooks stop a fault between populate and
 * install (or an invalidation right after its tree walk), and the other
 * side of the race runs exactly there; threads meet at gates, not sleeps.
 * Covers the 0.1 races on the 0.2 API (low-level read_begin/map/read_retry
 * and the map_and_lock loop), the stripes of 0.2 (an invalidation of other
 * pages of the region does not make a fault retry; one that overlaps it
 * never lets it install), and issue 12's findings 6 (get racing destroy)
 * and 12 (thread cancellation inside a blocked fault; a cancellation
 * pending across a manual context's get and release).
 */
#include "helpers.h"
#include "lib/backoff.h" /* BACKOFF_TRIES */

#define NPAGES 64 /* 64 stripes of one page */

static size_t page;

/* --- 1. An invalidation between populate and install (one thread) ------- */

static struct t_fx *hook_f;
static void *hook_p;
static size_t hook_n;
static int hook_mode;	      /* 0: start only, 1: start + end */
static unsigned hook_slow_ms; /* the attempt takes this long first */
static struct uodp_range hook_r;

static void invalidate_in_window(struct uodp_umem *umem)
{
	(void)umem;
	engine_test_hook_before_install = NULL; /* once */
	if (hook_slow_ms)
		usleep(hook_slow_ms * 1000);
	t_start(hook_f->ctx, &hook_r, hook_p, hook_n);
	if (hook_mode >= 1)
		t_end(&hook_r);
}

static void arm(struct t_fx *f, int mode, void *p, size_t n)
{
	hook_f = f;
	hook_mode = mode;
	hook_slow_ms = 0;
	hook_p = p;
	hook_n = n;
	engine_test_hook_before_install = invalidate_in_window;
}

/* Low level: the whole region's sequence; any invalidation of the region
 * in the window makes map() fail -EAGAIN with nothing installed. */
static void map_with_window_race(struct t_fx *f, int mode, void *p, size_t n)
{
	int64_t seq = uodp_umem_read_begin(f->umem);

	assert_true(seq >= 0);
	arm(f, mode, p, n);
	assert_int_equal(uodp_umem_map(f->umem, f->buf, 8 * page,
				       UODP_ACCESS_WRITE, (uint64_t)seq),
			 -EAGAIN);
	assert_int_equal(t_count(f->umem, f->buf, 8), 0);
	assert_true(t_retry(f->umem, (uint64_t)seq));
	assert_int_equal(t_stats(f->umem).retries, 1);
	if (mode == 0)
		t_end(&hook_r);
	/* A fresh fault succeeds. */
	assert_int_equal(
		t_map_seq(f->umem, f->buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_int_equal(t_count(f->umem, f->buf, 8), 8);
}

static void test_start_in_window(void **state)
{
	struct t_fx *f = *state;

	map_with_window_race(f, 0, f->buf, 1);
}

static void test_start_end_in_window(void **state)
{
	struct t_fx *f = *state;

	/* Entirely inside the window and outside the pages being mapped:
	 * only the region's sequence tells the low-level fault. */
	map_with_window_race(f, 1, t_pg(f->buf, 40), 1);
}

/* map_and_lock over pages 0-7; an invalidation of page 40 (another
 * stripe) runs entirely in the window: installed at the first attempt. */
static void test_other_stripe_no_retry(void **state)
{
	struct t_fx *f = *state;
	uint64_t e[8];

	arm(f, 1, t_pg(f->buf, 40), 1);
	assert_int_equal(uodp_umem_map_and_lock(f->umem, f->buf, 8 * page,
						UODP_ACCESS_WRITE, 0),
			 8);
	assert_int_equal(uodp_umem_entries_locked(f->umem, f->buf, 8, e), 0);
	for (int i = 0; i < 8; i++)
		assert_int_equal(e[i],
				 t_want(t_pg(f->buf, i), UODP_ACCESS_WRITE));
	assert_int_equal(uodp_umem_unlock(f->umem), 0);
	assert_int_equal(t_stats(f->umem).retries, 0);
	assert_int_equal(t_rec_count(), 1);
}

/* The same with an overlapping invalidation (page 3): the first attempt
 * collides and installs nothing; the loop maps again and succeeds. */
static void test_overlap_in_window_retries(void **state)
{
	struct t_fx *f = *state;

	arm(f, 1, t_pg(f->buf, 3), 1);
	assert_int_equal(t_fault(f->umem, f->buf, 8 * page, UODP_ACCESS_WRITE),
			 8);
	assert_int_equal(t_stats(f->umem).retries, 1);
	assert_int_equal(t_stats(f->umem).map_calls, 2);
	assert_int_equal(t_count(f->umem, f->buf, 8), 8);
}

/* The bound counts from the call, as the kernel's
 * ib_umem_odp_map_dma_and_lock() counts its HMM timeout: a first attempt
 * slower than the bound (300 ms, bound 200 ms) that collides gets no
 * second one: -EBUSY, nothing installed, lock free. */
static void test_timeout_from_call(void **state)
{
	struct t_fx *f = *state;

	arm(f, 1, t_pg(f->buf, 3), 1);
	hook_slow_ms = 300;
	assert_int_equal(uodp_umem_map_and_lock(f->umem, f->buf, 8 * page,
						UODP_ACCESS_WRITE, 200),
			 -EBUSY);
	assert_int_equal(uodp_umem_unlock(f->umem), -EPERM);
	assert_int_equal(t_stats(f->umem).retries, 1);
}

/* An overlapping invalidation started (not ended) in the window: with a
 * 50 ms bound map_and_lock gives -EBUSY, nothing installed, lock free. */
static void test_overlap_running_busy(void **state)
{
	struct t_fx *f = *state;

	arm(f, 0, t_pg(f->buf, 7), 2);
	assert_int_equal(uodp_umem_map_and_lock(f->umem, f->buf, 8 * page,
						UODP_ACCESS_WRITE, 50),
			 -EBUSY);
	assert_int_equal(uodp_umem_unlock(f->umem), -EPERM);
	assert_int_equal(t_count(f->umem, f->buf, 8), 0);
	t_end(&hook_r);
	assert_int_equal(t_fault(f->umem, f->buf, 8 * page, UODP_ACCESS_WRITE),
			 8);
}

/* Stripes of several pages (a 1024-page region: 16 pages a stripe). An
 * invalidation of other pages of the SAME stripe makes the fault retry
 * (stripes are the unit), one of another stripe does not; both install. */
static void test_wide_stripes(void **state)
{
	struct t_fx g;

	(void)state;
	t_fx_init(&g, 1024, UODP_CTX_MANUAL);
	/* Own frames: a write after a read must not change the frame (the
	 * shared zero page), which is a retry of its own (EVENT_FRAME). */
	memset(g.buf, 1, 32 * page);
	arm(&g, 1, t_pg(g.buf, 8), 8); /* pages 8-15: stripe 0 */
	assert_int_equal(t_fault(g.umem, g.buf, 8 * page, UODP_ACCESS_READ), 8);
	assert_int_equal(t_stats(g.umem).retries, 1);
	arm(&g, 1, t_pg(g.buf, 512), 8); /* stripe 32 */
	assert_int_equal(t_fault(g.umem, g.buf, 8 * page, UODP_ACCESS_WRITE),
			 8);
	assert_int_equal(t_stats(g.umem).retries, 1);
	/* A window across two stripes sees an invalidation of either. */
	arm(&g, 1, t_pg(g.buf, 31), 1);
	assert_int_equal(t_fault(g.umem, t_pg(g.buf, 14), 4 * page,
				 UODP_ACCESS_WRITE),
			 4);
	assert_int_equal(t_stats(g.umem).retries, 2);
	t_fx_fini(&g);
}

static void test_other_region_no_retry(void **state)
{
	struct t_fx *f = *state;
	char *mem = t_buf(1);
	struct uodp_umem *other = t_get(f->ctx, mem, page, UODP_ACCESS_ALL);
	int64_t seq = uodp_umem_read_begin(f->umem);

	arm(f, 1, mem, 1);
	assert_int_equal(uodp_umem_map(f->umem, f->buf, 2 * page,
				       UODP_ACCESS_READ, (uint64_t)seq),
			 2);
	assert_int_equal(t_rec_count(), 1);
	assert_ptr_equal(t_rec.c[0].umem, other);
	assert_int_equal(uodp_umem_release(other), 0);
	t_unmap(mem, 1);
}

/* --- 2. An invalidation starting while a fault runs (two threads) -------- */

struct fault_arg {
	struct t_fx *f;
	void *p;
	size_t n;
	unsigned timeout_ms;
	int low_level;
	uint64_t entries[NPAGES];
};

static int64_t fault_thread(void *arg)
{
	struct fault_arg *a = arg;
	int64_t r, seq;

	if (a->low_level) {
		seq = uodp_umem_read_begin(a->f->umem);
		if (seq < 0)
			return seq;
		return uodp_umem_map(a->f->umem, a->p, a->n * page,
				     UODP_ACCESS_WRITE, (uint64_t)seq);
	}
	r = uodp_umem_map_and_lock(a->f->umem, a->p, a->n * page,
				   UODP_ACCESS_WRITE, a->timeout_ms);
	if (r > 0) {
		/* What the driver would write into its page table. */
		assert_int_equal(uodp_umem_entries_locked(a->f->umem, a->p,
							  (size_t)r,
							  a->entries),
				 0);
		assert_int_equal(uodp_umem_unlock(a->f->umem), 0);
	}
	return r;
}

static void test_invalidation_during_map(void **state)
{
	struct t_fx *f = *state;
	struct fault_arg a = { f, f->buf, NPAGES, 0, 1, { 0 } };
	struct t_thread t;
	struct uodp_range r;

	t_park_next_install(f->umem);
	t_thread_start(&t, fault_thread, &a);
	t_gate_wait_arrived(&t_install_gate);
	t_start(f->ctx, &r, f->buf, NPAGES);
	t_gate_open(&t_install_gate);
	assert_int_equal(t_thread_join(&t), -EAGAIN);
	/* Nothing was installed, neither during nor after start(). */
	assert_int_equal(t_count(f->umem, f->buf, NPAGES), 0);
	t_end(&r);
}

/* The same with map_and_lock and a partial overlap: the fault of pages
 * 0-15 parked, an invalidation of 12-19 starts and stays. The fault waits
 * for it (it never installs while it runs), then installs after end(). */
static void test_partial_overlap_waits(void **state)
{
	struct t_fx *f = *state;
	struct fault_arg a = { f, f->buf, 16, UODP_TIMEOUT_INFINITE, 0, { 0 } };
	struct t_thread t;
	struct uodp_range r;

	t_park_next_install(f->umem);
	t_thread_start(&t, fault_thread, &a);
	t_gate_wait_arrived(&t_install_gate);
	t_start(f->ctx, &r, t_pg(f->buf, 12), 8);
	t_count_waits();
	t_gate_open(&t_install_gate);
	t_wait_blocked(1);
	assert_int_equal(atomic_load(&t.done), 0);
	assert_int_equal(t_count(f->umem, f->buf, NPAGES), 0);
	t_end(&r);
	assert_int_equal(t_thread_join(&t), 16);
	for (int i = 0; i < 16; i++)
		assert_int_equal(a.entries[i],
				 t_want(t_pg(f->buf, i), UODP_ACCESS_WRITE));
	assert_true(t_stats(f->umem).retries >= 1);
}

/* A fault of pages 0-7 parked; an invalidation of 32-39 (other stripes)
 * starts and stays: the fault installs at once. */
static void test_disjoint_running_installs(void **state)
{
	struct t_fx *f = *state;
	struct fault_arg a = { f, f->buf, 8, 5000, 0, { 0 } };
	struct t_thread t;
	struct uodp_range r;

	t_park_next_install(f->umem);
	t_thread_start(&t, fault_thread, &a);
	t_gate_wait_arrived(&t_install_gate);
	t_start(f->ctx, &r, t_pg(f->buf, 32), 8);
	t_gate_open(&t_install_gate);
	assert_int_equal(t_thread_join(&t), 8);
	assert_int_equal(t_stats(f->umem).retries, 0);
	/* And a new fault there still waits for the invalidation. */
	assert_int_equal(uodp_umem_map_and_lock(f->umem, t_pg(f->buf, 32), page,
						UODP_ACCESS_READ, 0),
			 -EBUSY);
	t_end(&r);
}

/* Faults that begin while an invalidation runs wait for it. */
static int64_t begin_thread(void *arg)
{
	return uodp_umem_read_begin(arg);
}

static void test_waiters(void **state)
{
	struct t_fx *f = *state;
	struct fault_arg a = { f, f->buf, 1, UODP_TIMEOUT_INFINITE, 0, { 0 } };
	struct t_thread w[3], m;
	struct uodp_range r;
	int64_t seq = uodp_umem_read_begin(f->umem);
	int i;

	t_start(f->ctx, &r, f->buf, 1);
	assert_int_equal(uodp_umem_map(f->umem, t_pg(f->buf, 10), page,
				       UODP_ACCESS_READ, (uint64_t)seq),
			 -EAGAIN);
	t_count_waits();
	for (i = 0; i < 3; i++)
		t_thread_start(&w[i], begin_thread, f->umem);
	t_thread_start(&m, fault_thread, &a);
	t_wait_blocked(4);
	for (i = 0; i < 3; i++)
		assert_int_equal(atomic_load(&w[i].done), 0);
	assert_int_equal(atomic_load(&m.done), 0);
	t_end(&r);
	for (i = 0; i < 3; i++)
		assert_true(t_thread_join(&w[i]) >= 0);
	assert_int_equal(t_thread_join(&m), 1);
	/* The sequence moved: the old one can never install. */
	assert_true(t_retry(f->umem, (uint64_t)seq));
	assert_false(t_retry(f->umem, (uint64_t)w[0].ret));
}

/* --- 3. A region registered while an invalidation runs ------------------- */

static void test_register_during_invalidation(void **state)
{
	struct t_fx *f = *state;
	struct uodp_umem *late;
	struct uodp_range r1, r2;
	struct t_thread w;
	int64_t seq;

	/* Two invalidations run; the late region must not fault until both
	 * have ended (its birth period). */
	t_start(f->ctx, &r1, f->buf, 1);
	t_start(f->ctx, &r2, t_pg(f->buf, 4), 1);
	late = t_get(f->ctx, f->buf, 8 * page, UODP_ACCESS_ALL);
	assert_int_equal(uodp_umem_map(late, t_pg(f->buf, 2), page,
				       UODP_ACCESS_READ, 0),
			 -EAGAIN);
	assert_int_equal(uodp_umem_map_and_lock(late, t_pg(f->buf, 2), page,
						UODP_ACCESS_READ, 0),
			 -EBUSY);
	t_count_waits();
	t_thread_start(&w, begin_thread, late);

	/* end() finds the late region in the tree: it must not lower
	 * counts that start() never raised. */
	t_end(&r1);
	assert_int_equal(uodp_umem_map_and_lock(late, t_pg(f->buf, 2), page,
						UODP_ACCESS_READ, 0),
			 -EBUSY);
	t_wait_blocked(1);
	assert_int_equal(atomic_load(&w.done), 0);

	t_end(&r2);
	seq = t_thread_join(&w);
	assert_true(seq >= 0);
	assert_int_equal(uodp_umem_map(late, t_pg(f->buf, 2), page,
				       UODP_ACCESS_READ, (uint64_t)seq),
			 1);
	/* And its counts now work: an invalidation makes it retry. */
	t_inval(f->ctx, t_pg(f->buf, 2), 1);
	assert_int_equal(t_entry(late, t_pg(f->buf, 2)), 0);
	assert_true(t_retry(late, (uint64_t)seq));
	assert_int_equal(t_fault(late, t_pg(f->buf, 2), page, UODP_ACCESS_READ),
			 1);
	assert_int_equal(uodp_umem_release(late), 0);
}

/* Released while still in its birth period: nothing left behind. */
static void test_release_born_in_period(void **state)
{
	struct t_fx *f = *state;
	struct uodp_umem *late;
	struct uodp_range r;

	t_start(f->ctx, &r, f->buf, 1);
	late = t_get(f->ctx, f->buf, page, UODP_ACCESS_ALL);
	assert_int_equal(uodp_umem_release(late), 0);
	t_end(&r);
	assert_true(uodp_ctx_sync(f->ctx));
	assert_int_equal(t_fault(f->umem, f->buf, page, UODP_ACCESS_READ), 1);
}

/* --- 4. Overlapping regions ---------------------------------------------- */

static void test_overlapping_regions(void **state)
{
	struct t_fx *f = *state;
	struct uodp_umem *a, *b;
	char *p = f->buf;

	a = t_get(f->ctx, t_pg(p, 4), 8 * page, UODP_ACCESS_ALL);
	b = t_get(f->ctx, t_pg(p, 8), 8 * page, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(a, t_pg(p, 4), 8 * page, UODP_ACCESS_WRITE),
			 8);
	assert_int_equal(t_fault(b, t_pg(p, 8), 8 * page, UODP_ACCESS_WRITE),
			 8);
	t_inval(f->ctx, t_pg(p, 10), 3);
	assert_int_equal(t_rec_count(), 3); /* f->umem, a, b */
	assert_true(t_rec_find(0, a, t_pg(p, 10), t_pg(p, 12), -1) >= 0);
	assert_true(t_rec_find(0, b, t_pg(p, 10), t_pg(p, 13), -1) >= 0);
	assert_true(t_rec_find(0, f->umem, t_pg(p, 10), t_pg(p, 13), -1) >= 0);
	assert_int_equal(t_count(a, t_pg(p, 4), 8), 6);
	assert_int_equal(t_count(b, t_pg(p, 8), 8), 5);
	assert_int_equal(uodp_umem_release(a), 0);
	assert_int_equal(uodp_umem_release(b), 0);
}

/* --- 5. Release during an invalidation ----------------------------------- */

static struct t_gate cb_gate = T_GATE_INIT;
static atomic_int released, cb_bad;

static void blocking_cb(struct uodp_umem *umem, const struct uodp_range *r,
			void *p)
{
	(void)r;
	(void)p;
	t_gate_pass(&cb_gate);
	/* The region's memory is still valid: release waits for us. (No
	 * cmocka assert on this thread: it would longjmp across threads.) */
	if (atomic_load(&released) || !uodp_umem_start(umem))
		atomic_store(&cb_bad, 1);
}

static int64_t invalidator(void *arg)
{
	struct t_fx *g = arg;

	return uodp_invalidate_range(g->ctx, g->buf, NPAGES * page,
				     UODP_EVENT_MANUAL);
}

static int64_t releaser(void *arg)
{
	int r = uodp_umem_release(arg);

	atomic_store(&released, 1);
	return r;
}

static void test_release_during_callback(void **state)
{
	static const struct uodp_ctx_ops ops = { .invalidate = blocking_cb };
	struct t_fx g = { 0 };
	struct t_thread inv, rel;

	(void)state;
	g.npages = NPAGES;
	g.buf = t_buf(NPAGES);
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &g.ctx), 0);
	g.umem = t_get(g.ctx, g.buf, NPAGES * page, UODP_ACCESS_ALL);
	atomic_store(&released, 0);
	atomic_store(&cb_bad, 0);
	t_gate_reset(&cb_gate);
	t_thread_start(&inv, invalidator, &g);
	t_gate_wait_arrived(&cb_gate);
	t_thread_start(&rel, releaser, g.umem);
	/* Release blocks on the tree's rwlock (the walk holds it for the
	 * callback): no engine hook sees that, so this is a chance, not a
	 * gate. Too short a sleep makes the test weaker, never wrong: the
	 * callback itself checks that release has not returned under it. */
	t_let_block();
	assert_int_equal(atomic_load(&released), 0);
	t_gate_open(&cb_gate);
	assert_int_equal(t_thread_join(&inv), 0);
	assert_int_equal(t_thread_join(&rel), 0);
	assert_int_equal(atomic_load(&cb_bad), 0);
	g.umem = NULL;
	t_fx_fini(&g);
}

/* Release between start() and end(): end() must not touch it. */
static void test_release_between_start_end(void **state)
{
	struct t_fx *f = *state;
	struct uodp_range r;

	t_start(f->ctx, &r, f->buf, 1);
	assert_int_equal(uodp_umem_release(f->umem), 0);
	f->umem = NULL;
	t_end(&r);
	assert_true(uodp_ctx_sync(f->ctx));
}

/* --- 6. Destroy while faults wait ---------------------------------------- */

static void test_destroy_wakes_waiters(void **state)
{
	struct t_fx g;
	struct fault_arg a = { &g, NULL, 1, UODP_TIMEOUT_INFINITE, 0, { 0 } };
	struct t_thread w, m;
	struct uodp_range r;

	(void)state;
	t_fx_init(&g, 1, UODP_CTX_MANUAL);
	a.p = g.buf;
	t_start(g.ctx, &r, g.buf, 1);
	t_count_waits();
	t_thread_start(&w, begin_thread, g.umem);
	t_thread_start(&m, fault_thread, &a);
	t_wait_blocked(2);
	assert_int_equal(atomic_load(&w.done), 0);
	assert_int_equal(atomic_load(&m.done), 0);
	assert_int_equal(uodp_ctx_destroy(g.ctx), 0);
	assert_int_equal(t_thread_join(&w), -ENODEV);
	assert_int_equal(t_thread_join(&m), -ENODEV);
	assert_int_equal(t_map_seq(g.umem, g.buf, page, UODP_ACCESS_READ),
			 -ENODEV);
	assert_int_equal(uodp_umem_map(g.umem, g.buf, page, UODP_ACCESS_READ,
				       0),
			 -ENODEV);
	/* The token of the context's last invalidation still ends. */
	t_end(&r);
	g.ctx = NULL;
	t_fx_fini(&g);
}

/* --- 7. A frame changed under a live entry (needs frames: root) ---------- */

static void test_frame_changed(void **state)
{
	struct t_fx *f = *state;
	char *va = t_pg(f->buf, 3);
	char *keep;

	assert_int_equal(t_fault(f->umem, va, page, UODP_ACCESS_WRITE), 1);
	if (!uodp_umem_pfn(f->umem, va))
		t_skip("page frames hidden from this process (not root)");
	/* Replace the page without any notification (a manual context has
	 * no monitor): its frame moves to keep[k] and va stays mapped, empty
	 * (MREMAP_DONTUNMAP: no moment where va is a hole someone else's
	 * mmap could take). The old frames stay alive in keep, so the kernel
	 * cannot hand the same frame back. */
	keep = t_map(2, PROT_NONE, MAP_PRIVATE);
	assert_ptr_equal(
		mremap(va, page, page,
		       MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, keep),
		keep);
	/* The low-level map sees it, invalidates (EVENT_FRAME), -EAGAIN. */
	assert_int_equal(t_map_seq(f->umem, va, page, UODP_ACCESS_WRITE),
			 -EAGAIN);
	assert_int_equal(t_rec_count(), 1);
	assert_true(t_rec_find(0, f->umem, va, va + page, UODP_EVENT_FRAME) >=
		    0);
	assert_int_equal(t_entry(f->umem, va), 0);
	assert_int_equal(t_map_seq(f->umem, va, page, UODP_ACCESS_WRITE), 1);
	/* map_and_lock hides the retry. */
	assert_ptr_equal(mremap(va, page, page,
				MREMAP_MAYMOVE | MREMAP_FIXED |
					MREMAP_DONTUNMAP,
				keep + page),
			 keep + page);
	assert_int_equal(t_fault(f->umem, va, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(t_rec_count(), 2);
	t_unmap(keep, 2);
}

/* --- 8. Faults and invalidations hammering one region -------------------- */

struct storm {
	struct t_fx *f;
	atomic_int stop;
	atomic_long installs, violations;
	/* Pages being invalidated right now, [lo, hi) as lo << 32 | hi: one
	 * word, so that a reader never pairs an old bound with a new one. */
	_Atomic uint64_t running;
};

static void *storm_fault(void *arg)
{
	struct storm *s = arg;
	unsigned seed = (unsigned)(uintptr_t)pthread_self();

	while (!atomic_load(&s->stop)) {
		size_t pg = (size_t)rand_r(&seed) % NPAGES;
		size_t n = 1 + (size_t)rand_r(&seed) % 4;
		int64_t r;

		if (pg + n > NPAGES)
			n = NPAGES - pg;
		r = uodp_umem_map_and_lock(s->f->umem, t_pg(s->f->buf, pg),
					   n * page, UODP_ACCESS_WRITE, 100);
		if (r > 0) {
			/* With the lock held no invalidation of these pages
			 * runs: the test's running range must not overlap. */
			uint64_t run = atomic_load(&s->running);
			size_t lo = (size_t)(run >> 32),
			       hi = (size_t)(run & 0xffffffffu);

			if (pg < hi && lo < pg + (size_t)r)
				atomic_fetch_add(&s->violations, 1);
			atomic_fetch_add(&s->installs, 1);
			uodp_umem_unlock(s->f->umem);
		}
	}
	return NULL;
}

static void test_storm(void **state)
{
	struct t_fx *f = *state;
	struct storm s = { .f = f };
	pthread_t t[3];
	unsigned seed = 1;
	int i;
	long round;

	atomic_init(&s.running, 0);
	for (i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, storm_fault, &s);
	/* Progress-driven, not timed: at least 2000 invalidations, and on
	 * until the faulting threads have installed often enough that the
	 * race was really exercised. */
	for (round = 0; round < 2000 || atomic_load(&s.installs) < 200;
	     round++) {
		size_t a = (size_t)rand_r(&seed) % NPAGES;
		size_t b = a + 1 + (size_t)rand_r(&seed) % (NPAGES - a);
		struct uodp_range r;

		assert_true(round < 1000000); /* no install at all: a bug */
		t_start(f->ctx, &r, t_pg(f->buf, a), b - a);
		atomic_store(&s.running, (uint64_t)a << 32 | b);
		/* While it runs, nothing may appear in its range. */
		if (t_count(f->umem, t_pg(f->buf, a), b - a))
			atomic_fetch_add(&s.violations, 1);
		atomic_store(&s.running, 0);
		t_end(&r);
		sched_yield();
	}
	atomic_store(&s.stop, 1);
	for (i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(atomic_load(&s.violations), 0);
	assert_true(atomic_load(&s.installs) >= 200);
	assert_true(uodp_ctx_sync(f->ctx));
	assert_int_equal(f->ctx->active, 0);
}

/* --- 9. Issue 12 finding 6: uodp_umem_get racing uodp_ctx_destroy ------- */

struct getter {
	struct uodp_ctx *ctx;
	char *buf;
	atomic_int *go;
	atomic_long ok;
	long nodev, other;
};

static void *get_loop(void *arg)
{
	struct getter *g = arg;
	struct uodp_umem *u;
	int r;

	while (!atomic_load(g->go))
		sched_yield();
	/* Until the context refuses us for good, and a while beyond. */
	for (long i = 0; g->nodev < 200; i++) {
		r = uodp_umem_get(g->ctx, g->buf, page, UODP_ACCESS_ALL, &u);
		if (r == 0) {
			atomic_fetch_add(&g->ok, 1);
			if (uodp_umem_release(u))
				g->other++;
		} else if (r == -ENODEV) {
			g->nodev++;
		} else {
			g->other++;
		}
		if (i > 50000000)
			break; /* never refused: a failure below */
	}
	return NULL;
}

static void test_get_races_destroy(void **state)
{
	enum {
		N = 4
	};
	struct getter g[N];
	pthread_t t[N];
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(1);
	/* Kept alive: the context's memory stays until it is released, so
	 * the getters never pass a freed handle (that is undefined). */
	struct uodp_umem *keep = t_get(ctx, buf, page, UODP_ACCESS_ALL);
	atomic_int go;
	int i;

	(void)state;
	atomic_init(&go, 0);
	for (i = 0; i < N; i++) {
		g[i] = (struct getter){ .ctx = ctx, .buf = buf, .go = &go };
		atomic_init(&g[i].ok, 0);
		pthread_create(&t[i], NULL, get_loop, &g[i]);
	}
	atomic_store(&go, 1);
	/* Let them get going (progress, not time), then destroy. */
	while (!atomic_load(&g[0].ok) && !atomic_load(&g[1].ok))
		sched_yield();
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	for (i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(g[i].other, 0);
		assert_int_equal(g[i].nodev, 200);
	}
	assert_int_equal(uodp_umem_release(keep), 0); /* frees the context */
	t_unmap(buf, 1);
}

/* --- 10. Issue 12 finding 12: cancellation inside a blocked fault -------- */

struct cancel_arg {
	struct uodp_umem *umem;
	void *p;
	atomic_long result; /* map_and_lock's, before the thread died */
};

static void *cancel_victim(void *arg)
{
	struct cancel_arg *c = arg;
	int64_t r;

	pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
	r = uodp_umem_map_and_lock(c->umem, c->p, page, UODP_ACCESS_READ,
				   UODP_TIMEOUT_INFINITE);
	atomic_store(&c->result, (long)r);
	if (r > 0)
		uodp_umem_unlock(c->umem);
	/* The first cancellation point outside the library. */
	for (;;)
		pthread_testcancel();
	return NULL;
}

static void cancel_blocked_fault(struct t_fx *f)
{
	struct cancel_arg c = { .umem = f->umem, .p = f->buf };
	struct uodp_range r;
	pthread_t t;
	void *ret;

	atomic_init(&c.result, 12345);
	t_start(f->ctx, &r, f->buf, 1);
	t_count_waits();
	assert_int_equal(pthread_create(&t, NULL, cancel_victim, &c), 0);
	t_wait_blocked(1);
	assert_int_equal(pthread_cancel(t), 0);
	/* A chance for a wrongly cancellable wait to act on the request:
	 * what must not happen cannot be gated. Too short a sleep makes
	 * the test weaker, never wrong. */
	t_let_block();
	/* Still blocked in the library, not cancelled there. */
	assert_int_equal(atomic_load(&c.result), 12345);
	t_end(&r);
	assert_int_equal(pthread_join(t, &ret), 0);
	assert_ptr_equal(ret, PTHREAD_CANCELED);
	assert_int_equal(atomic_load(&c.result), 1);
	/* No lock leaked: invalidations and faults of the region work. */
	t_inval(f->ctx, f->buf, NPAGES);
	assert_int_equal(t_fault(f->umem, f->buf, page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_lock(f->umem), 0);
	assert_int_equal(uodp_umem_unlock(f->umem), 0);
}

static void test_cancel_blocked_fault(void **state)
{
	cancel_blocked_fault(*state);
}

/*
 * The same where uodp_umem_map_and_lock() does not disable cancellation
 * for the whole call (a context that records no frames and does not pin:
 * nothing on its path is a cancellation point but the waits, which
 * disable it themselves): the wait on a running invalidation (stripes),
 * and the wait of a region born during invalidations (period).
 */
static void test_cancel_blocked_fault_no_frames(void **state)
{
	struct t_fx g;

	(void)state;
	t_fx_init(&g, 64, UODP_CTX_MANUAL | UODP_CTX_NO_FRAMES);
	cancel_blocked_fault(&g);
	t_fx_fini(&g);
}

static void test_cancel_blocked_fault_born(void **state)
{
	struct t_fx g;
	struct cancel_arg c;
	struct uodp_range r;
	pthread_t t;
	void *ret;

	(void)state;
	t_fx_init(&g, 64, UODP_CTX_MANUAL | UODP_CTX_NO_FRAMES);
	t_start(g.ctx, &r, g.buf, 1);
	/* born while it runs: its faults wait for the period to end */
	c.umem = t_get(g.ctx, t_pg(g.buf, 8), 8 * page, UODP_ACCESS_ALL);
	c.p = t_pg(g.buf, 8);
	atomic_init(&c.result, 12345);
	t_count_waits();
	assert_int_equal(pthread_create(&t, NULL, cancel_victim, &c), 0);
	t_wait_blocked(1);
	assert_int_equal(pthread_cancel(t), 0);
	t_let_block(); /* see cancel_blocked_fault() */
	assert_int_equal(atomic_load(&c.result), 12345);
	t_end(&r);
	assert_int_equal(pthread_join(t, &ret), 0);
	assert_ptr_equal(ret, PTHREAD_CANCELED);
	assert_int_equal(atomic_load(&c.result), 1);
	assert_int_equal(t_fault(c.umem, c.p, page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_release(c.umem), 0);
	t_fx_fini(&g);
}

/* The same in read_begin, the low-level wait. */
static void *cancel_victim_begin(void *arg)
{
	struct cancel_arg *c = arg;
	int64_t r;

	r = uodp_umem_read_begin(c->umem);
	atomic_store(&c->result, (long)r);
	for (;;)
		pthread_testcancel();
	return NULL;
}

static void test_cancel_blocked_begin(void **state)
{
	struct t_fx *f = *state;
	struct cancel_arg c = { .umem = f->umem, .p = f->buf };
	struct uodp_range r;
	pthread_t t;
	void *ret;

	atomic_init(&c.result, -12345);
	t_start(f->ctx, &r, f->buf, NPAGES);
	t_count_waits();
	assert_int_equal(pthread_create(&t, NULL, cancel_victim_begin, &c), 0);
	t_wait_blocked(1);
	assert_int_equal(pthread_cancel(t), 0);
	/* A chance for a wrongly cancellable wait to act on the request:
	 * what must not happen cannot be gated. Too short a sleep makes
	 * the test weaker, never wrong. */
	t_let_block();
	assert_int_equal(atomic_load(&c.result), -12345);
	t_end(&r);
	assert_int_equal(pthread_join(t, &ret), 0);
	assert_ptr_equal(ret, PTHREAD_CANCELED);
	assert_true(atomic_load(&c.result) >= 0);
	t_inval(f->ctx, f->buf, NPAGES);
	assert_int_equal(t_fault(f->umem, f->buf, page, UODP_ACCESS_READ), 1);
}

/*
 * Registration and release on a manual context skip the cancellation state
 * (nothing on their path is a cancellation point), except around freeing a
 * destroyed context (it closes a file): a thread with a cancellation
 * pending goes through get, release and the release that frees the
 * context, and is cancelled only at its own cancellation point after.
 */
struct cancel_manual {
	struct uodp_ctx *ctx, *dead;
	struct uodp_umem *last;
	char *p;
	int r[3];
	atomic_int returned;
};

static void *cancelled_manual(void *arg)
{
	struct cancel_manual *c = arg;
	struct uodp_umem *u = NULL;

	pthread_cancel(pthread_self()); /* pending until a cancellation point */
	c->r[0] = uodp_umem_get(c->ctx, c->p, page, UODP_ACCESS_ALL, &u);
	c->r[1] = u ? uodp_umem_release(u) : -1;
	c->r[2] = uodp_umem_release(c->last); /* frees c->dead */
	atomic_store(&c->returned, 1);
	for (;;)
		pthread_testcancel();
	return NULL;
}

static void test_cancel_pending_manual(void **state)
{
	struct cancel_manual c = { 0 };
	pthread_t t;
	void *ret;

	(void)state;
	c.ctx = t_ctx(UODP_CTX_MANUAL);
	c.dead = t_ctx(UODP_CTX_MANUAL);
	c.p = aligned_alloc(page, 2 * page);
	assert_non_null(c.p);
	assert_int_equal(uodp_umem_get(c.dead, c.p + page, page,
				       UODP_ACCESS_ALL, &c.last),
			 0);
	/* Destroyed with a live region: the last release frees it. */
	assert_int_equal(uodp_ctx_destroy(c.dead), 0);
	atomic_init(&c.returned, 0);
	assert_int_equal(pthread_create(&t, NULL, cancelled_manual, &c), 0);
	assert_int_equal(pthread_join(t, &ret), 0);
	assert_ptr_equal(ret, PTHREAD_CANCELED);
	assert_int_equal(atomic_load(&c.returned), 1);
	assert_int_equal(c.r[0], 0);
	assert_int_equal(c.r[1], 0);
	assert_int_equal(c.r[2], 0);
	assert_int_equal(uodp_ctx_destroy(c.ctx), 0);
	free(c.p);
}

/* --- MADV_POPULATE's ENOMEM: a hole, or a shortage (lib/backoff.h) ----- */

/*
 * test_monitor's test_hole_churn failed about once in 100 runs with
 * -ENOMEM: MADV_POPULATE_READ met the churning page unmapped (ENOMEM), the
 * mincore() that tells a hole from a shortage met it mapped again, and
 * this repeated in step (both calls queue on the mmap lock behind the
 * other thread's next munmap or mmap: eight times in a row measured) past
 * the three tries populate() allowed. The hook plays that thread exactly:
 * a hole before each madvise(), the page back before each mincore().
 */
static char *flip_page;
static int flip_left, flip_fails;

static void flip_hook(uint64_t va, bool failed)
{
	if ((char *)(uintptr_t)va != flip_page)
		return;
	if (!failed) { /* madvise() next: a hole while flips are left */
		if (flip_left > 0 && munmap(flip_page, page) != 0)
			abort();
		return;
	}
	flip_fails++;
	if (flip_left > 0) { /* mincore() next: mapped again */
		flip_left--;
		if (t_map_hole(flip_page, page, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1) != flip_page)
			abort(); /* low memory: nobody else maps there */
	}
}

static int64_t flip_fault_t(int flips, unsigned timeout_ms, int64_t *ns)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_low_buf(3);
	struct uodp_umem *u = t_get(ctx, buf, 3 * page, UODP_ACCESS_ALL);
	struct timespec a, b;
	int64_t r;

	flip_page = buf + page;
	flip_left = flips;
	flip_fails = 0;
	assert_int_equal(munmap(flip_page, page), 0);
	engine_test_hook_populate = flip_hook;
	clock_gettime(CLOCK_MONOTONIC, &a);
	r = uodp_umem_map_and_lock(u, flip_page, page, UODP_ACCESS_READ,
				   timeout_ms);
	clock_gettime(CLOCK_MONOTONIC, &b);
	engine_test_hook_populate = NULL;
	*ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
	if (r > 0)
		assert_int_equal(uodp_umem_unlock(u), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	/* Every flip mapped the page back: it is mapped now. */
	t_unmap_pages(buf, 0, 3);
	return r;
}

static int64_t flip_fault(int flips, int64_t *ns)
{
	return flip_fault_t(flips, UODP_TIMEOUT_INFINITE, ns);
}

/* Eight "hole, then mapped" answers in a row, as measured: not a shortage,
 * the page is faulted in once the flipping stops. */
static void test_populate_hole_flips(void **state)
{
	int64_t ns;

	(void)state;
	assert_int_equal(flip_fault(8, &ns), 1);
	assert_int_equal(flip_fails, 8);
}

/* Without end: indistinguishable from a shortage, -ENOMEM, after
 * BACKOFF_TRIES failures and the pauses between them (out of step with
 * whoever flips the page: never retried at once). */
static void test_populate_hole_flips_forever(void **state)
{
	int64_t ns, pauses = 0;
	unsigned n;

	(void)state;
	assert_int_equal(flip_fault(1000, &ns), -ENOMEM);
	assert_int_equal(flip_fails, BACKOFF_TRIES);
	for (n = 0; n + 1 < BACKOFF_TRIES; n++)
		pauses += 1000LL << (n < 10 ? n : 10);
	assert_true(ns >= pauses);
}

/* The backoff is inside map_and_lock's time bound: with timeout 0 (one
 * attempt) a page refused while mapped is tried once, and the call says
 * -EBUSY (not told from a shortage in time). Before, the backoff ran its
 * BACKOFF_TRIES attempts and pauses whatever the bound, and said -ENOMEM. */
static void test_populate_flips_timeout0(void **state)
{
	int64_t ns;

	(void)state;
	assert_int_equal(flip_fault_t(1000, 0, &ns), -EBUSY);
	assert_int_equal(flip_fails, 1);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, t_fx_setup, t_fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_start_in_window),
		T(test_start_end_in_window),
		T(test_other_stripe_no_retry),
		T(test_overlap_in_window_retries),
		T(test_overlap_running_busy),
		T(test_timeout_from_call),
		cmocka_unit_test(test_wide_stripes),
		T(test_other_region_no_retry),
		T(test_invalidation_during_map),
		T(test_partial_overlap_waits),
		T(test_disjoint_running_installs),
		T(test_waiters),
		T(test_register_during_invalidation),
		T(test_release_born_in_period),
		T(test_overlapping_regions),
		cmocka_unit_test(test_release_during_callback),
		T(test_release_between_start_end),
		cmocka_unit_test(test_destroy_wakes_waiters),
		T(test_frame_changed),
		T(test_storm),
		cmocka_unit_test(test_get_races_destroy),
		T(test_cancel_blocked_fault),
		cmocka_unit_test(test_cancel_blocked_fault_no_frames),
		cmocka_unit_test(test_cancel_blocked_fault_born),
		T(test_cancel_blocked_begin),
		cmocka_unit_test(test_cancel_pending_manual),
		cmocka_unit_test(test_populate_hole_flips),
		cmocka_unit_test(test_populate_hole_flips_forever),
		cmocka_unit_test(test_populate_flips_timeout0),
	};

	page = t_page_size();
	return t_run(tests, NULL, NULL);
}

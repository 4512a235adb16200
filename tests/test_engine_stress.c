/* SPDX-License-Identifier: MIT */
/*
 * test_engine_stress.c - everything at once on a manual context, checked
 * against the protocol's promise rather than a schedule:
 *
 *  - two fault threads: map_and_lock on random windows of random live
 *    regions; with the lock held, the window must overlap no invalidation
 *    that has started (start() returned) and not ended, and the entries
 *    must be the window's pages;
 *  - two invalidator threads: start() / end() pairs on random ranges of
 *    the buffer; between the two, no region may hold an entry in the
 *    range;
 *  - one registrar thread: releases a random region and registers a new
 *    one over a random window, all the while (regions born during an
 *    invalidation must wait for its period).
 *
 * Progress-driven, not timed: it runs until every thread made enough
 * progress (a cap turns a livelock into a failure).
 */
#include "helpers.h"

#define NPAGES 256
#define NSLOTS 8
#define NINV 2

static size_t page;

struct slot {
	pthread_rwlock_t lock; /* read: in use; write: being replaced */
	struct uodp_umem *umem;
	size_t first, n; /* pages of the buffer it covers */
};

static struct {
	struct uodp_ctx *ctx;
	char *buf;
	struct slot slot[NSLOTS];
	/* Running invalidations, published after start() returned and
	 * withdrawn before end(): first << 32 | last + 1 (0: none). */
	_Atomic uint64_t running[NINV];
	atomic_int stop;
	atomic_long faults, invals, replaced, violations, other_errors;
} S;

static uint64_t rnd(unsigned *seed)
{
	return (uint64_t)rand_r(seed);
}

static bool overlaps_running(size_t a, size_t b)
{
	for (int i = 0; i < NINV; i++) {
		uint64_t r = atomic_load(&S.running[i]);
		size_t lo = (size_t)(r >> 32), hi = (size_t)(r & 0xffffffffu);

		if (r && a < hi && lo < b)
			return true;
	}
	return false;
}

static void *fault_thread(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	uint64_t e[16];

	while (!atomic_load(&S.stop)) {
		struct slot *sl = &S.slot[rnd(&seed) % NSLOTS];
		size_t off, n;
		int64_t r;

		pthread_rwlock_rdlock(&sl->lock);
		off = (size_t)rnd(&seed) % sl->n;
		n = 1 + (size_t)rnd(&seed) % 16;
		if (off + n > sl->n)
			n = sl->n - off;
		r = uodp_umem_map_and_lock(
			sl->umem, t_pg(S.buf, sl->first + off), n * page,
			rnd(&seed) & 1 ? UODP_ACCESS_WRITE : UODP_ACCESS_READ,
			200);
		if (r > 0) {
			size_t a = sl->first + off;

			if (overlaps_running(a, a + (size_t)r))
				atomic_fetch_add(&S.violations, 1);
			if (uodp_umem_entries_locked(sl->umem, t_pg(S.buf, a),
						     (size_t)r, e))
				atomic_fetch_add(&S.other_errors, 1);
			for (int64_t i = 0; i < r; i++)
				if ((e[i] & UODP_ENTRY_ADDR_MASK) !=
				    (uintptr_t)t_pg(S.buf, a + (size_t)i))
					atomic_fetch_add(&S.violations, 1);
			uodp_umem_unlock(sl->umem);
			atomic_fetch_add(&S.faults, 1);
		} else if (r != -EBUSY) {
			atomic_fetch_add(&S.other_errors, 1);
		}
		pthread_rwlock_unlock(&sl->lock);
	}
	return NULL;
}

/* No live region holds an entry in pages [a, b). */
static void check_empty(size_t a, size_t b)
{
	uint64_t e;

	for (int i = 0; i < NSLOTS; i++) {
		struct slot *sl = &S.slot[i];

		pthread_rwlock_rdlock(&sl->lock);
		for (size_t p = a; p < b; p++) {
			if (p < sl->first || p >= sl->first + sl->n)
				continue;
			uodp_umem_lock(sl->umem);
			if (uodp_umem_entries_locked(sl->umem, t_pg(S.buf, p),
						     1, &e) ||
			    e)
				atomic_fetch_add(&S.violations, 1);
			uodp_umem_unlock(sl->umem);
		}
		pthread_rwlock_unlock(&sl->lock);
	}
}

static void *inval_thread(void *arg)
{
	int me = (int)(uintptr_t)arg;
	unsigned seed = 1000u + (unsigned)me;

	while (!atomic_load(&S.stop)) {
		size_t a = (size_t)rnd(&seed) % NPAGES;
		size_t b = a + 1 + (size_t)rnd(&seed) % 24;
		struct uodp_range r;

		if (b > NPAGES)
			b = NPAGES;
		uodp_range_init(&r, t_pg(S.buf, a), (b - a) * page,
				UODP_EVENT_MANUAL);
		if (uodp_invalidate_range_start(S.ctx, &r)) {
			atomic_fetch_add(&S.other_errors, 1);
			continue;
		}
		atomic_store(&S.running[me], (uint64_t)a << 32 | b);
		check_empty(a, b);
		atomic_store(&S.running[me], 0);
		if (uodp_invalidate_range_end(&r))
			atomic_fetch_add(&S.other_errors, 1);
		atomic_fetch_add(&S.invals, 1);
		sched_yield();
	}
	return NULL;
}

static void new_region(struct slot *sl, unsigned *seed)
{
	sl->first = (size_t)rnd(seed) % NPAGES;
	sl->n = 1 + (size_t)rnd(seed) % 64;
	if (sl->first + sl->n > NPAGES)
		sl->n = NPAGES - sl->first;
	if (uodp_umem_get(S.ctx, t_pg(S.buf, sl->first), sl->n * page,
			  UODP_ACCESS_ALL, &sl->umem))
		abort();
}

static void *registrar(void *arg)
{
	unsigned seed = 77;

	(void)arg;
	while (!atomic_load(&S.stop)) {
		struct slot *sl = &S.slot[rnd(&seed) % NSLOTS];

		pthread_rwlock_wrlock(&sl->lock);
		if (uodp_umem_release(sl->umem))
			atomic_fetch_add(&S.other_errors, 1);
		new_region(sl, &seed);
		pthread_rwlock_unlock(&sl->lock);
		atomic_fetch_add(&S.replaced, 1);
		sched_yield();
	}
	return NULL;
}

static void test_stress(void **state)
{
	pthread_t f[2], inv[NINV], reg;
	unsigned seed = 5;
	long rounds = 0;

	(void)state;
	memset(&S, 0, sizeof(S));
	S.buf = t_buf(NPAGES);
	memset(S.buf, 1, NPAGES * page); /* own frames */
	S.ctx = t_ctx(UODP_CTX_MANUAL);
	for (int i = 0; i < NSLOTS; i++) {
		pthread_rwlock_init(&S.slot[i].lock, NULL);
		new_region(&S.slot[i], &seed);
	}
	for (int i = 0; i < 2; i++)
		pthread_create(&f[i], NULL, fault_thread,
			       (void *)(uintptr_t)(i + 1));
	for (int i = 0; i < NINV; i++)
		pthread_create(&inv[i], NULL, inval_thread,
			       (void *)(uintptr_t)i);
	pthread_create(&reg, NULL, registrar, NULL);
	/* Why these counts: each kind of step thousands of times, so that
	 * every interleaving the hooks test one by one occurs many times. */
	while (atomic_load(&S.faults) < 5000 || atomic_load(&S.invals) < 3000 ||
	       atomic_load(&S.replaced) < 500) {
		usleep(1000);
		if (++rounds > 600000) /* 10 minutes: no progress */
			break;
	}
	atomic_store(&S.stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(f[i], NULL);
	for (int i = 0; i < NINV; i++)
		pthread_join(inv[i], NULL);
	pthread_join(reg, NULL);
	print_message("stress: %ld faults, %ld invalidations, %ld regions "
		      "replaced\n",
		      atomic_load(&S.faults), atomic_load(&S.invals),
		      atomic_load(&S.replaced));
	assert_int_equal(atomic_load(&S.violations), 0);
	assert_int_equal(atomic_load(&S.other_errors), 0);
	assert_true(atomic_load(&S.faults) >= 5000);
	assert_true(atomic_load(&S.invals) >= 3000);
	assert_true(uodp_ctx_sync(S.ctx));
	for (int i = 0; i < NSLOTS; i++) {
		assert_int_equal(uodp_umem_release(S.slot[i].umem), 0);
		pthread_rwlock_destroy(&S.slot[i].lock);
	}
	assert_int_equal(uodp_ctx_destroy(S.ctx), 0);
	t_unmap(S.buf, NPAGES);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stress),
	};

	page = t_page_size();
	return t_run(tests, NULL, NULL);
}

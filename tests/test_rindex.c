/* SPDX-License-Identifier: MIT */
/*
 * test_rindex.c - the B+-tree interval index (src/lib/rindex.c) against a
 * brute-force oracle.
 *
 * Every query's answer is compared, in order, with a scan of the intervals
 * known to be in the index sorted by (start, owner), the order the iterator
 * promises. Mixes of inserts, removes and queries run from fixed seeds over
 * sparse, clustered (heavily overlapping) and duplicate intervals;
 * rindex_check runs along the way and after each phase. Node accounting
 * (reserve, garbage, stash) is checked by the byte counters, and leaks by
 * ASan in the sanitizer build.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/rindex.h"

struct item {
	uint64_t start, last;
	int in; /* currently in the index under test */
};

/* splitmix64: small, deterministic, good enough for test data. */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static int cmp_items(const void *a, const void *b)
{
	const struct item *x = *(const struct item *const *)a;
	const struct item *y = *(const struct item *const *)b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x == y)
		return 0;
	return (uintptr_t)x < (uintptr_t)y ? -1 : 1;
}

/* Insert with a fresh reserve, as a writer would. */
static int ins(struct rindex *idx, struct item *it)
{
	struct rindex_reserve r;
	int err;

	assert_int_equal(rindex_reserve(&r, idx), 0);
	err = rindex_insert(idx, &r, it->start, it->last, it);
	rindex_reserve_release(&r);
	if (!err)
		it->in = 1;
	return err;
}

static int del(struct rindex *idx, struct item *it, int collect)
{
	struct rindex_garbage g;
	int err = rindex_remove(idx, it->start, it->last, it);

	if (!err)
		it->in = 0;
	if (collect) {
		rindex_take_garbage(idx, &g);
		rindex_free_garbage(idx, &g);
	}
	return err;
}

/* Compare the iterator with a scan of @items; @scratch holds 2n. */
static void check_query(const struct rindex *idx, struct item *items, size_t n,
			struct item **scratch, uint64_t qs, uint64_t ql)
{
	struct item **exp = scratch, **got = scratch + n, *o;
	struct rindex_iter it;
	size_t ne = 0, ng = 0, i;

	for (i = 0; i < n; i++)
		if (items[i].in && items[i].start <= ql && items[i].last >= qs)
			exp[ne++] = &items[i];
	qsort(exp, ne, sizeof(*exp), cmp_items);
	for (o = rindex_iter_first(idx, qs, ql, &it); o;
	     o = rindex_iter_next(&it)) {
		assert_true(ng < ne); /* also stops a runaway iteration */
		got[ng++] = o;
	}
	assert_int_equal(ng, ne);
	for (i = 0; i < ne; i++)
		assert_ptr_equal(got[i], exp[i]);
	/* Once done, the iterator stays done. */
	assert_null(rindex_iter_next(&it));
}

static void test_empty(void **state)
{
	struct rindex idx;
	struct rindex_iter it;
	struct item a = { 1, 2, 0 };

	(void)state;
	assert_int_equal(rindex_init(&idx), 0);
	assert_int_equal(rindex_check(&idx), 0);
	assert_int_equal(rindex_count(&idx), 0);
	assert_null(rindex_iter_first(&idx, 0, UINT64_MAX, &it));
	assert_null(rindex_iter_next(&it));
	assert_null(rindex_iter_first(&idx, 0, 0, &it));
	assert_int_equal(rindex_remove(&idx, 1, 2, &a), -ENOENT);
	assert_int_equal(rindex_bytes(&idx), 0);
	rindex_destroy(&idx);
}

static void test_edges(void **state)
{
	struct item v[6] = {
		{ 0, 0, 0 },
		{ UINT64_MAX, UINT64_MAX, 0 },
		{ 0, UINT64_MAX, 0 },
		{ 0, UINT64_MAX, 0 }, /* duplicate bounds, other owner */
		{ 5, 10, 0 },
		{ 10, 20, 0 },
	};
	struct item *scratch[12];
	struct rindex_reserve r;
	struct rindex idx;
	struct rindex_iter it;
	size_t i;

	(void)state;
	assert_int_equal(rindex_init(&idx), 0);
	for (i = 0; i < 6; i++)
		assert_int_equal(ins(&idx, &v[i]), 0);
	assert_int_equal(rindex_count(&idx), 6);
	assert_int_equal(rindex_check(&idx), 0);

	/* Invalid and duplicate inserts change nothing. */
	assert_int_equal(rindex_reserve(&r, &idx), 0);
	assert_int_equal(rindex_insert(&idx, &r, 3, 2, &v[0]), -EINVAL);
	assert_int_equal(rindex_insert(&idx, &r, 1, 2, NULL), -EINVAL);
	assert_int_equal(rindex_insert(&idx, &r, 0, 0, &v[0]), -EEXIST);
	/* Same start and owner, other last: still the same key. */
	assert_int_equal(rindex_insert(&idx, &r, 0, 7, &v[0]), -EEXIST);
	rindex_reserve_release(&r);
	rindex_reserve_release(&r); /* harmless twice */
	assert_int_equal(rindex_count(&idx), 6);
	assert_int_equal(rindex_check(&idx), 0);

	check_query(&idx, v, 6, scratch, 0, 0);
	check_query(&idx, v, 6, scratch, UINT64_MAX, UINT64_MAX);
	check_query(&idx, v, 6, scratch, 0, UINT64_MAX);
	check_query(&idx, v, 6, scratch, 10, 10);
	check_query(&idx, v, 6, scratch, 11, 11);
	check_query(&idx, v, 6, scratch, 21, UINT64_MAX - 1);
	/* qs > ql: nothing. */
	assert_null(rindex_iter_first(&idx, 10, 5, &it));

	/* Absent: wrong owner, wrong last, wrong start. */
	assert_int_equal(rindex_remove(&idx, 0, 0, &v[1]), -ENOENT);
	assert_int_equal(rindex_remove(&idx, 5, 11, &v[4]), -ENOENT);
	assert_int_equal(rindex_remove(&idx, 6, 10, &v[4]), -ENOENT);
	assert_int_equal(del(&idx, &v[2], 1), 0);
	assert_int_equal(del(&idx, &v[2], 1), -ENOENT);
	check_query(&idx, v, 6, scratch, 0, UINT64_MAX);
	for (i = 0; i < 6; i++)
		if (v[i].in)
			assert_int_equal(del(&idx, &v[i], 0), 0);
	assert_int_equal(rindex_count(&idx), 0);
	assert_int_equal(rindex_check(&idx), 0);
	assert_int_equal(rindex_tree_bytes(&idx), 0);
	rindex_destroy(&idx); /* frees the uncollected garbage too */
}

/*
 * Where intervals go (buckets or B+-tree) at the routing boundaries, and
 * queries that must look into the previous bucket, across a radix leaf,
 * and merge the two structures in (start, owner) order.
 */
static void test_buckets(void **state)
{
	const uint64_t B = 1ULL << RINDEX_BUCKET_SHIFT, TOP = 1ULL << 48;
	const uint64_t M = 1ULL << RINDEX_SMALL_SHIFT; /* longest small */
	struct item v[200], *scratch[400];
	struct rindex idx;
	size_t i, nv = 0;

	(void)state;
	assert_int_equal(rindex_init(&idx), 0);
	v[nv++] = (struct item){ B, B + M - 1, 0 };	/* small: M - 1 */
	v[nv++] = (struct item){ B, B + M, 0 };		/* big: M */
	v[nv++] = (struct item){ TOP - 1, TOP - 1, 0 }; /* small */
	v[nv++] = (struct item){ TOP - 1, TOP + 5, 0 }; /* small */
	v[nv++] = (struct item){ TOP, TOP, 0 };		/* big: >= 2^48 */
	v[nv++] = (struct item){ 2 * B - B / 2, 2 * B + B / 2 - 1,
				 0 }; /* crosses */
	v[nv++] = (struct item){ 256 * B - B / 2, 256 * B + B / 2 - 1,
				 0 };				    /* leaf */
	v[nv++] = (struct item){ 300 * B - 1, 300 * B + M - 2, 0 }; /* reach */
	for (i = 0; i < nv; i++)
		assert_int_equal(ins(&idx, &v[i]), 0);
	assert_int_equal(idx.nsmall, 6);
	assert_int_equal(idx.big.count, 2);
	assert_int_equal(rindex_check(&idx), 0);
	check_query(&idx, v, nv, scratch, 2 * B + 10, 2 * B + 10);
	check_query(&idx, v, nv, scratch, 256 * B, 256 * B);
	check_query(&idx, v, nv, scratch, 256 * B + B / 2, 257 * B);
	/* The farthest bucket a small interval reaches, and the next. */
	check_query(&idx, v, nv, scratch, 300 * B + M - 2, 300 * B + M - 2);
	check_query(&idx, v, nv, scratch, 300 * B + M - 1, 300 * B + M + B);
	check_query(&idx, v, nv, scratch, TOP, TOP);
	check_query(&idx, v, nv, scratch, TOP + 5, UINT64_MAX);
	check_query(&idx, v, nv, scratch, TOP + 6, UINT64_MAX);
	check_query(&idx, v, nv, scratch, 0, UINT64_MAX);
	/* One start, many owners: the bucket fills its largest class and
	 * the rest overflows to the B+-tree; order is still by owner. */
	for (i = nv; i < 200; i++) {
		v[i] = (struct item){ 5 * B + B / 4, 5 * B + B / 2, 0 };
		assert_int_equal(ins(&idx, &v[i]), 0);
	}
	nv = 200;
	assert_true(idx.big.count > 2);
	assert_int_equal(rindex_check(&idx), 0);
	check_query(&idx, v, nv, scratch, 5 * B, 6 * B);
	check_query(&idx, v, nv, scratch, 0, UINT64_MAX);
	/* Same key in the other structure: -EEXIST either way. */
	assert_int_equal(ins(&idx, &(struct item){ B, B + 2 * M, 0 }), 0);
	{
		struct rindex_reserve r;

		assert_int_equal(rindex_reserve(&r, &idx), 0);
		assert_int_equal(rindex_insert(&idx, &r, B, B + 10, &v[1]),
				 -EEXIST);
		assert_int_equal(rindex_insert(&idx, &r, B, B + 2 * M, &v[0]),
				 -EEXIST);
		assert_int_equal(rindex_insert(&idx, &r, 5 * B + B / 4,
					       5 * B + B / 4, &v[199]),
				 -EEXIST);
		rindex_reserve_release(&r);
	}
	for (i = 0; i < nv; i++)
		assert_int_equal(del(&idx, &v[i], i & 1), 0);
	assert_int_equal(rindex_count(&idx), 1);
	assert_int_equal(rindex_check(&idx), 0);
	rindex_destroy(&idx);
}

enum shape {
	SH_SPARSE,    /* short intervals spread over 2^40: few overlaps */
	SH_CLUSTERED, /* intervals of all lengths in a small range */
	SH_DUPS,      /* a handful of bounds shared by many owners */
	SH_FULL,      /* anywhere in the 64-bit range, edges included */
	SH_PAGES,     /* page regions of 1..20 pages in 16 MiB: bucket
		       * crossings, small and big (> 64 KiB) intervals */
	SH_EDGE,      /* at bucket, radix-leaf and 2^48 boundaries, lengths
		       * around the bucket size */
	SH_WIDE,      /* small intervals over the whole radix (2^48) */
};

/* Lengths (last - start) around the 64-KiB bucket size. */
static const uint64_t edge_len[] = { 0,	    1,	   4095,  65534,
				     65535, 65536, 65537, 131071 };

static void gen(struct item *it, enum shape sh, uint64_t *seed)
{
	uint64_t a, b;

	switch (sh) {
	case SH_SPARSE:
		a = rng_next(seed) >> 24;
		b = a + (rng_next(seed) & 0xfff);
		break;
	case SH_CLUSTERED:
		a = rng_next(seed) % 100000;
		b = a + (rng_next(seed) % 3 ? rng_next(seed) % 500 :
					      rng_next(seed) % 50000);
		break;
	case SH_DUPS:
		a = (rng_next(seed) % 8) * 100;
		b = a + (rng_next(seed) % 4) * 60;
		break;
	case SH_PAGES:
		a = (UINT64_C(0x7f0000000000) >> 12) + rng_next(seed) % 4096;
		a <<= 12;
		b = a + ((rng_next(seed) % 20) + 1) * 4096 - 1;
		break;
	case SH_EDGE: {
		/* Near one of a few bucket boundaries, some at a radix leaf
		 * boundary (256 buckets) and at the top of the radix. */
		static const uint64_t bnd[] = {
			0,
			1ULL << 16,
			3ULL << 16,
			256ULL << 16,
			(1ULL << 48) - (1ULL << 16),
			1ULL << 48,
			(1ULL << 48) + (1ULL << 16),
		};
		a = bnd[rng_next(seed) % 7] + rng_next(seed) % 9 - 4;
		if (a > UINT64_MAX - 200000)
			a = 0; /* wrapped below 0 */
		b = a + edge_len[rng_next(seed) % 8];
		break;
	}
	case SH_WIDE:
		a = rng_next(seed) >> 16;
		b = a + (rng_next(seed) & 0x3ffff);
		break;
	default:
		a = rng_next(seed);
		b = rng_next(seed);
		if (rng_next(seed) % 8 == 0)
			a = rng_next(seed) & 1 ? 0 : UINT64_MAX;
		if (a > b) {
			uint64_t t = a;

			a = b;
			b = t;
		}
		break;
	}
	it->start = a;
	it->last = b;
}

/* A query of the shape's scale. */
static void gen_query(enum shape sh, uint64_t *seed, uint64_t *qs, uint64_t *ql)
{
	struct item q;

	gen(&q, sh, seed);
	if (rng_next(seed) % 4 == 0) /* points */
		q.last = q.start;
	/* Wide queries: many buckets and radix leaves, gaps skipped. */
	if (sh == SH_WIDE && rng_next(seed) % 4 == 0)
		q.last = q.start +
			 (rng_next(seed) >> (16 + rng_next(seed) % 48));
	if (q.last < q.start)
		q.last = UINT64_MAX;
	*qs = q.start;
	*ql = q.last;
}

/* @nops random operations on a pool of @n items of shape @sh. */
static void run_mix(enum shape sh, uint64_t seed, size_t n, size_t nops)
{
	struct item *items = calloc(n, sizeof(*items));
	struct item **scratch = calloc(2 * n, sizeof(*scratch));
	struct rindex idx;
	size_t op, i, in = 0;
	uint64_t qs, ql;

	assert_non_null(items);
	assert_non_null(scratch);
	assert_int_equal(rindex_init(&idx), 0);
	for (i = 0; i < n; i++)
		gen(&items[i], sh, &seed);
	for (op = 0; op < nops; op++) {
		uint64_t r = rng_next(&seed) % 100;
		/* Phases: grow to most of the pool, then churn, then drain. */
		size_t phase = op * 3 / nops;
		uint64_t p_ins = phase == 0 ? 60 : phase == 1 ? 35 : 10;

		i = rng_next(&seed) % n;
		if (r < p_ins) {
			int was = items[i].in, err = ins(&idx, &items[i]);

			assert_int_equal(err, was ? -EEXIST : 0);
			if (!was)
				in++;
		} else if (r < 70) {
			int was = items[i].in,
			    err = del(&idx, &items[i], rng_next(&seed) & 1);

			assert_int_equal(err, was ? 0 : -ENOENT);
			if (was)
				in--;
		} else {
			gen_query(sh, &seed, &qs, &ql);
			check_query(&idx, items, n, scratch, qs, ql);
		}
		assert_int_equal(rindex_count(&idx), in);
		if (op % 997 == 0)
			assert_int_equal(rindex_check(&idx), 0);
	}
	assert_int_equal(rindex_check(&idx), 0);
	/* Every item, then everything, once more. */
	for (i = 0; i < n; i++)
		check_query(&idx, items, n, scratch, items[i].start,
			    items[i].start);
	check_query(&idx, items, n, scratch, 0, UINT64_MAX);
	for (i = 0; i < n; i++)
		if (items[i].in)
			assert_int_equal(del(&idx, &items[i], i & 1), 0);
	assert_int_equal(rindex_count(&idx), 0);
	assert_int_equal(rindex_check(&idx), 0);
	rindex_destroy(&idx);
	free(items);
	free(scratch);
}

static void test_mix_sparse(void **state)
{
	(void)state;
	run_mix(SH_SPARSE, 1, 3000, 100000);
}

static void test_mix_clustered(void **state)
{
	(void)state;
	run_mix(SH_CLUSTERED, 2, 2000, 100000);
}

static void test_mix_dups(void **state)
{
	(void)state;
	run_mix(SH_DUPS, 3, 1500, 100000);
}

static void test_mix_full(void **state)
{
	(void)state;
	run_mix(SH_FULL, 4, 2000, 100000);
}

static void test_mix_pages(void **state)
{
	(void)state;
	run_mix(SH_PAGES, 5, 3000, 100000);
}

static void test_mix_edge(void **state)
{
	(void)state;
	run_mix(SH_EDGE, 6, 1500, 100000);
}

static void test_mix_wide(void **state)
{
	(void)state;
	run_mix(SH_WIDE, 7, 3000, 60000);
}

/* Small pools keep the tree at 1-2 levels, where root changes happen. */
static void test_mix_small(void **state)
{
	uint64_t seed;

	(void)state;
	for (seed = 10; seed < 20; seed++)
		run_mix(seed % 4 == 0 ? SH_CLUSTERED :
			seed % 4 == 1 ? SH_DUPS :
			seed % 4 == 2 ? SH_EDGE :
					SH_PAGES,
			seed, 40, 5000);
}

/*
 * Ascending, descending and shuffled fills of 10^5 intervals, then removal
 * in random order: deep trees, lopsided splits, every kind of rebalance.
 */
static void test_orders(void **state)
{
	const size_t n = 100000;
	struct item *items = calloc(n, sizeof(*items));
	size_t *perm = calloc(n, sizeof(*perm));
	struct item *scratch[64];
	struct rindex idx;
	struct rindex_iter it;
	uint64_t seed = 77, bytes;
	size_t i, j, k, t, mode;

	(void)state;
	assert_non_null(items);
	assert_non_null(perm);
	for (mode = 0; mode < 3; mode++) {
		assert_int_equal(rindex_init(&idx), 0);
		for (i = 0; i < n; i++) {
			items[i].start = 8192 * i;
			items[i].last = 8192 * i + 4095;
			items[i].in = 0;
			perm[i] = mode == 1 ? n - 1 - i : i;
		}
		for (i = n; mode == 2 && i > 1; i--) {
			j = rng_next(&seed) % i;
			t = perm[i - 1];
			perm[i - 1] = perm[j];
			perm[j] = t;
		}
		for (i = 0; i < n; i++)
			assert_int_equal(ins(&idx, &items[perm[i]]), 0);
		assert_int_equal(rindex_check(&idx), 0);
		bytes = rindex_tree_bytes(&idx);
		/* Memory per interval: <= 384 B / 7 slots per leaf (the
		 * minimum fill) plus inner nodes. */
		assert_true(bytes / n < 70);
		for (k = 0; k < 1000; k++) {
			i = rng_next(&seed) % n;
			assert_ptr_equal(
				rindex_iter_first(&idx, items[i].start + 5,
						  items[i].start + 5, &it),
				&items[i]);
			assert_null(rindex_iter_next(&it));
			/* The gap after it. */
			assert_null(rindex_iter_first(&idx, items[i].last + 1,
						      items[i].last + 4096,
						      &it));
		}
		/* A window of 10 items. */
		check_query(&idx, items + 500, 10, scratch, items[500].start,
			    items[509].last);
		for (i = n; i > 1; i--) {
			j = rng_next(&seed) % i;
			t = perm[i - 1];
			perm[i - 1] = perm[j];
			perm[j] = t;
		}
		for (i = 0; i < n; i++) {
			assert_int_equal(
				del(&idx, &items[perm[i]], i % 64 == 0), 0);
			if (i % 20000 == 0)
				assert_int_equal(rindex_check(&idx), 0);
		}
		assert_int_equal(rindex_count(&idx), 0);
		assert_int_equal(rindex_check(&idx), 0);
		rindex_destroy(&idx);
	}
	free(items);
	free(perm);
}

/*
 * Where the blocks go: a reserve holds one insert's worst case and gives
 * it back on release, remove feeds the garbage (never frees), inserts
 * reuse garbage before the reserve, and the byte counters add up at every
 * step. Both structures are exercised: page regions (buckets and radix
 * nodes) and 1-MiB regions (B+-tree nodes). Leaks show under ASan.
 */
static void test_reserve_garbage(void **state)
{
	const size_t n = 3000;
	struct item *items = calloc(n, sizeof(*items));
	struct rindex_reserve r, r2;
	struct rindex_garbage g;
	struct rindex idx;
	uint64_t tree, all;
	size_t i, k;

	(void)state;
	assert_non_null(items);
	assert_int_equal(rindex_init(&idx), 0);
	/* A reserve holds the worst case; it is not the index's memory. */
	assert_int_equal(rindex_reserve(&r, &idx), 0);
	assert_non_null(r.pool);
	assert_true(r.pool->n[RINDEX_NKINDS - 1] >= RINDEX_MAX_HEIGHT);
	assert_true(r.pool->total >= RINDEX_MAX_HEIGHT + 8);
	assert_int_equal(rindex_bytes(&idx), 0);
	/* A second reserve while the first is out gets its own blocks. */
	assert_int_equal(rindex_reserve(&r2, &idx), 0);
	assert_non_null(r2.pool);
	assert_true(r2.pool != r.pool);
	rindex_reserve_release(&r);
	rindex_reserve_release(&r2); /* the thread keeps one pool only */
	assert_null(r.pool);
	rindex_reserve_release(&r); /* harmless twice */
	assert_int_equal(rindex_bytes(&idx), 0);

	for (k = 0; k < 2; k++) {
		for (i = 0; i < n; i++) {
			/* k = 0: pages, 5 per bucket; k = 1: 1 MiB each. */
			items[i].start = k ? (i << 21) : 12288 * i;
			items[i].last =
				items[i].start + (k ? (1u << 20) : 4096) - 1;
			assert_int_equal(ins(&idx, &items[i]), 0);
		}
		tree = rindex_tree_bytes(&idx);
		assert_true(tree > 0);
		/* Growth leaves garbage too (sparse leaves made dense). */
		all = rindex_bytes(&idx);
		assert_true(all >= tree);
		/* Removing everything frees nothing: the blocks are
		 * garbage. */
		for (i = 0; i < n; i++)
			assert_int_equal(del(&idx, &items[i], 0), 0);
		assert_int_equal(rindex_tree_bytes(&idx), 0);
		assert_int_equal(rindex_bytes(&idx), all);
		all = rindex_bytes(&idx);
		/* Inserting again reuses garbage: the held total does not
		 * grow. */
		for (i = 0; i < n; i++)
			assert_int_equal(ins(&idx, &items[i]), 0);
		assert_true(rindex_bytes(&idx) <= all);
		assert_int_equal(rindex_check(&idx), 0);
		for (i = 0; i < n; i++)
			assert_int_equal(del(&idx, &items[i], 0), 0);
		/* Detached garbage no longer counts; freeing it refills
		 * the thread's pool and frees the rest. */
		rindex_take_garbage(&idx, &g);
		assert_int_equal(rindex_bytes(&idx), 0);
		assert_true(g.pool.total > 0);
		rindex_free_garbage(&idx, &g);
		assert_int_equal(g.pool.total, 0);
		rindex_free_garbage(&idx, &g); /* harmless twice */
		assert_int_equal(rindex_check(&idx), 0);
	}
	rindex_destroy(&idx);
	free(items);
}

/*
 * Writers on several threads, as the engine runs them: reserve and free
 * garbage outside a write lock, insert/remove under it, queries under a
 * read lock. Each thread keeps a spare pool; a reserve taken on one thread
 * may be used and released on another (the pool moves with it). Pools are
 * freed at thread exit: ASan reports a leak otherwise.
 */
struct mt {
	struct rindex idx;
	pthread_rwlock_t lock;
	struct item *items;
	size_t per; /* items per thread */
	struct rindex_reserve handed;
	int bad;
};

struct mt_arg {
	struct mt *m;
	unsigned t;
};

static void *mt_writer(void *arg)
{
	struct mt_arg *a = arg;
	struct mt *m = a->m;
	struct item *mine = m->items + a->t * m->per;
	uint64_t seed = 100 + a->t;
	size_t round, i;

	for (round = 0; round < 20; round++) {
		for (i = 0; i < m->per; i++) {
			struct rindex_reserve r;
			struct rindex_garbage g;
			struct rindex_iter it;
			struct item *x = &mine[i];
			int err;

			if (!x->in) {
				if (rindex_reserve(&r, &m->idx))
					m->bad = 1;
				pthread_rwlock_wrlock(&m->lock);
				err = rindex_insert(&m->idx, &r, x->start,
						    x->last, x);
				pthread_rwlock_unlock(&m->lock);
				rindex_reserve_release(&r);
				if (err)
					m->bad = 1;
				x->in = 1;
			} else if (rng_next(&seed) & 1) {
				pthread_rwlock_wrlock(&m->lock);
				err = rindex_remove(&m->idx, x->start, x->last,
						    x);
				rindex_take_garbage(&m->idx, &g);
				pthread_rwlock_unlock(&m->lock);
				rindex_free_garbage(&m->idx, &g);
				if (err)
					m->bad = 1;
				x->in = 0;
			}
			/* Own items are stable: one that is in is found
			 * (others' 1-MiB items may overlap any page). */
			pthread_rwlock_rdlock(&m->lock);
			if (x->in && !rindex_iter_first(&m->idx, x->start,
							x->start, &it))
				m->bad = 1;
			pthread_rwlock_unlock(&m->lock);
		}
	}
	return NULL;
}

/* Takes the reserve handed over by the main thread, uses and releases it
 * here, then exits: the pool dies with this thread. */
static void *mt_taker(void *arg)
{
	struct mt *m = arg;
	struct item *x = &m->items[0];

	pthread_rwlock_wrlock(&m->lock);
	if (rindex_insert(&m->idx, &m->handed, x->start, x->last, x))
		m->bad = 1;
	pthread_rwlock_unlock(&m->lock);
	rindex_reserve_release(&m->handed);
	x->in = 1;
	return NULL;
}

static void test_threads(void **state)
{
	const unsigned nt = 4;
	const size_t per = 3000;
	struct mt m;
	struct mt_arg args[4];
	pthread_t th[4];
	size_t i, in = 0;
	unsigned t;

	(void)state;
	memset(&m, 0, sizeof(m));
	assert_int_equal(rindex_init(&m.idx), 0);
	assert_int_equal(pthread_rwlock_init(&m.lock, NULL), 0);
	m.per = per;
	m.items = calloc(nt * per, sizeof(*m.items));
	assert_non_null(m.items);
	for (i = 0; i < nt * per; i++) {
		/* Interleaved pages (shared buckets and radix leaves across
		 * threads), every 50th one 1 MiB long (B+-tree). */
		m.items[i].start = 0x7f0000000000ULL + 4096 * i;
		m.items[i].last =
			m.items[i].start + (i % 50 ? 4095 : (1u << 20) - 1);
	}
	/* Reserve here, insert and release on another thread. */
	assert_int_equal(rindex_reserve(&m.handed, &m.idx), 0);
	assert_int_equal(pthread_create(&th[0], NULL, mt_taker, &m), 0);
	assert_int_equal(pthread_join(th[0], NULL), 0);
	assert_null(m.handed.pool);
	/* Concurrent writers (item 0 belongs to thread 0 and is in). */
	for (t = 0; t < nt; t++) {
		args[t].m = &m;
		args[t].t = t;
		assert_int_equal(
			pthread_create(&th[t], NULL, mt_writer, &args[t]), 0);
	}
	for (t = 0; t < nt; t++)
		assert_int_equal(pthread_join(th[t], NULL), 0);
	assert_int_equal(m.bad, 0);
	for (i = 0; i < nt * per; i++)
		in += m.items[i].in;
	assert_int_equal(rindex_count(&m.idx), in);
	assert_int_equal(rindex_check(&m.idx), 0);
	rindex_destroy(&m.idx);
	pthread_rwlock_destroy(&m.lock);
	free(m.items);
}

/* rindex_check must notice broken bookkeeping. */
static void test_check_detects(void **state)
{
	struct item v[100];
	struct rindex idx;
	size_t i;

	(void)state;
	assert_int_equal(rindex_init(&idx), 0);
	for (i = 0; i < 100; i++) {
		v[i].start = 10 * i;
		v[i].last = 10 * i + 5;
		v[i].in = 0;
		assert_int_equal(ins(&idx, &v[i]), 0);
	}
	assert_int_equal(rindex_check(&idx), 0);
	idx.count++;
	assert_int_equal(rindex_check(&idx), -1);
	idx.count--;
	idx.nsmall++;
	assert_int_equal(rindex_check(&idx), -1);
	idx.nsmall--;
	idx.nblk[0]++;
	assert_int_equal(rindex_check(&idx), -1);
	idx.nblk[0]--;
	assert_int_equal(rindex_check(&idx), 0);
	rindex_destroy(&idx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_edges),
		cmocka_unit_test(test_buckets),
		cmocka_unit_test(test_mix_sparse),
		cmocka_unit_test(test_mix_clustered),
		cmocka_unit_test(test_mix_dups),
		cmocka_unit_test(test_mix_full),
		cmocka_unit_test(test_mix_pages),
		cmocka_unit_test(test_mix_edge),
		cmocka_unit_test(test_mix_wide),
		cmocka_unit_test(test_mix_small),
		cmocka_unit_test(test_orders),
		cmocka_unit_test(test_reserve_garbage),
		cmocka_unit_test(test_threads),
		cmocka_unit_test(test_check_detects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

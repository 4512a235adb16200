/* SPDX-License-Identifier: MIT */
/*
 * test_pgtable.c - unit tests of the sparse translation table (lib/pgtable).
 *
 * Checks lazy allocation (init allocates nothing, memory goes back to 0 when
 * emptied), the dense memory cost per page, every pgt_for_each() contract
 * (order, skipping, stopping, in-walk writes), boundaries of leaves, nodes
 * and nslots, the leaf fast path, allocation failures (through the
 * pgt_test_fail_alloc() hook), and a seeded random run against a naive model
 * whose expected memory use is recomputed from the radix geometry.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lib/pgtable.h"

#define FAN 512u
#define NODE_BYTES (8u + FAN * 8u) /* header + 512 slots */

static void test_init_allocates_nothing(void **state)
{
	static const struct {
		uint64_t n;
		unsigned levels;
	} cases[] = {
		{ 1, 0 },	   { 511, 0 },	      { 512, 0 },
		{ 513, 1 },	   { 1ull << 18, 1 }, { (1ull << 18) + 1, 2 },
		{ 1ull << 28, 3 }, { 1ull << 36, 3 }, { (1ull << 36) + 1, 4 },
		{ 1ull << 40, 4 }, { UINT64_MAX, 7 },
	};
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pgt t;

		memset(&t, 0xa5, sizeof(t));
		pgt_init(&t, cases[i].n);
		assert_null(t.root);
		assert_int_equal(t.nslots, cases[i].n);
		assert_int_equal(t.levels, cases[i].levels);
		assert_int_equal(t.used, 0);
		assert_int_equal(t.bytes, 0);
		assert_int_equal(pgt_get(&t, 0), 0);
		assert_int_equal(pgt_get(&t, cases[i].n - 1), 0);
		pgt_destroy(&t);
		assert_int_equal(t.bytes, 0);
	}
}

static void test_get_set_clear(void **state)
{
	struct pgt t;

	(void)state;
	pgt_init(&t, 1ull << 28);
	assert_int_equal(pgt_set(&t, 5, 0x1234), 0);
	assert_int_equal(t.used, 1);
	/* A 2^28-slot table: a leaf, 2 full inner nodes and a root of 2
	 * slots (3 inner levels). */
	assert_int_equal(t.bytes, 3 * NODE_BYTES + 8 + 2 * 8);
	assert_int_equal(pgt_get(&t, 5), 0x1234);
	assert_int_equal(pgt_get(&t, 4), 0);
	assert_int_equal(pgt_get(&t, 6), 0);
	assert_int_equal(pgt_set(&t, 5, 0x99), 0); /* overwrite: same count */
	assert_int_equal(t.used, 1);
	assert_int_equal(pgt_get(&t, 5), 0x99);
	assert_int_equal(pgt_set(&t, 6, UINT64_MAX), 0);
	assert_int_equal(t.used, 2);
	assert_int_equal(pgt_get(&t, 6), UINT64_MAX);

	/* Out of range: -EINVAL, nothing changes. */
	uint64_t bytes = t.bytes;
	assert_int_equal(pgt_set(&t, 1ull << 28, 1), -EINVAL);
	assert_int_equal(pgt_set(&t, UINT64_MAX, 1), -EINVAL);
	assert_int_equal(pgt_get(&t, 1ull << 28), 0);
	assert_int_equal(t.used, 2);
	assert_int_equal(t.bytes, bytes);

	/* Clearing an absent slot allocates nothing. */
	assert_int_equal(pgt_set(&t, 1ull << 27, 0), 0);
	assert_int_equal(t.bytes, bytes);

	assert_int_equal(pgt_set(&t, 5, 0), 0);
	assert_int_equal(t.used, 1);
	assert_int_equal(pgt_get(&t, 5), 0);
	assert_int_equal(pgt_set(&t, 6, 0), 0);
	assert_int_equal(t.used, 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);

	/* Still usable; destroy frees everything and leaves it usable. */
	assert_int_equal(pgt_set(&t, 100, 1), 0);
	assert_int_equal(pgt_set(&t, (1ull << 28) - 1, 2), 0);
	pgt_destroy(&t);
	assert_int_equal(t.used, 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);
	assert_int_equal(pgt_get(&t, 100), 0);
	assert_int_equal(pgt_set(&t, 100, 3), 0);
	assert_int_equal(pgt_get(&t, 100), 3);
	pgt_destroy(&t);
}

static void test_memory_returns_to_zero(void **state)
{
	struct pgt t;
	uint64_t n = 1ull << 36;

	(void)state;
	pgt_init(&t, n);
	/* Scattered words in different leaves and nodes. */
	for (uint64_t i = 0; i < 64; i++)
		assert_int_equal(pgt_set(&t, (i * 0x9e3779b97ull) % n, i + 1),
				 0);
	assert_true(t.bytes > 0);
	for (uint64_t i = 64; i-- > 0;)
		assert_int_equal(pgt_set(&t, (i * 0x9e3779b97ull) % n, 0), 0);
	assert_int_equal(t.used, 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);
	pgt_destroy(&t);
}

static int clear_cb(uint64_t idx, uint64_t *word, void *arg)
{
	(void)idx;
	(void)arg;
	*word = 0;
	return 0;
}

static void test_dense_bytes_per_page(void **state)
{
	struct pgt t;
	const uint64_t pages = 262144; /* 1 GiB of 4 KiB pages */
	const uint64_t starts[] = { 0, 1000, (1ull << 18) - 7 };

	(void)state;
	for (size_t s = 0; s < 3; s++) {
		uint64_t start = starts[s];

		pgt_init(&t, 1ull << 28);
		for (uint64_t i = 0; i < pages; i++)
			assert_int_equal(pgt_set(&t, start + i, i | 1), 0);
		assert_int_equal(t.used, pages);
		assert_true(t.bytes <= 16 * t.used);
		/* In fact 8.02 to 8.07 bytes per page. */
		assert_true(t.bytes * 100 <= 810 * t.used);
		assert_int_equal(pgt_for_each(&t, 0, t.nslots, clear_cb, NULL),
				 pages);
		assert_int_equal(t.used, 0);
		assert_int_equal(t.bytes, 0);
		assert_null(t.root);
		pgt_destroy(&t);
	}
}

/* A log of visited words, with a scripted action per visit. */
struct vlog {
	uint64_t idx[4096];
	uint64_t val[4096];
	size_t n;
	size_t stop_at; /* return nonzero at this visit (1-based), 0: never */
	int action;	/* 0 keep, 1 clear, 2 add 1, 3 clear every other */
};

static int log_cb(uint64_t idx, uint64_t *word, void *arg)
{
	struct vlog *v = arg;

	assert_true(*word != 0);
	assert_true(v->n < 4096);
	v->idx[v->n] = idx;
	v->val[v->n] = *word;
	v->n++;
	switch (v->action) {
	case 1:
		*word = 0;
		break;
	case 2:
		*word += 1;
		break;
	case 3:
		if (v->n & 1)
			*word = 0;
		break;
	}
	return v->stop_at && v->n == v->stop_at;
}

static void fill_sparse(struct pgt *t, const uint64_t *idx, size_t n)
{
	for (size_t i = 0; i < n; i++)
		assert_int_equal(pgt_set(t, idx[i], idx[i] * 2 + 1), 0);
}

/* Ascending, across leaf (512) and node (2^18, 2^27) boundaries. */
static const uint64_t sparse_idx[] = {
	0,
	1,
	510,
	511,
	512,
	513,
	1023,
	1024,
	(1ull << 18) - 1,
	1ull << 18,
	(1ull << 18) + 1,
	(1ull << 27) - 1,
	1ull << 27,
	(1ull << 27) + 511,
	(1ull << 27) + 512,
	(1ull << 36) - 2,
	(1ull << 36) - 1,
};
#define NSPARSE (sizeof(sparse_idx) / sizeof(sparse_idx[0]))

static void test_for_each_order_and_ranges(void **state)
{
	struct pgt t;
	static struct vlog v;

	(void)state;
	pgt_init(&t, 1ull << 36);
	fill_sparse(&t, sparse_idx, NSPARSE);
	assert_int_equal(t.used, NSPARSE);

	/* Every range [from, to) over boundary points, against the list. */
	for (size_t a = 0; a < NSPARSE; a++) {
		for (int da = -1; da <= 1; da++) {
			for (size_t b = a; b < NSPARSE; b++) {
				for (int db = -1; db <= 1; db++) {
					uint64_t from = sparse_idx[a] + da;
					uint64_t to = sparse_idx[b] + db;
					size_t k = 0;

					if (sparse_idx[a] == 0 && da < 0)
						continue;
					memset(&v, 0, sizeof(v));
					uint64_t r = pgt_for_each(&t, from, to,
								  log_cb, &v);
					assert_int_equal(r, v.n);
					for (size_t i = 0; i < NSPARSE; i++) {
						uint64_t x = sparse_idx[i];

						if (x < from || x >= to)
							continue;
						assert_true(k < v.n);
						assert_int_equal(v.idx[k], x);
						assert_int_equal(v.val[k],
								 x * 2 + 1);
						k++;
					}
					assert_int_equal(k, v.n);
				}
			}
		}
	}
	/* Empty and clamped ranges. */
	memset(&v, 0, sizeof(v));
	assert_int_equal(pgt_for_each(&t, 10, 10, log_cb, &v), 0);
	assert_int_equal(pgt_for_each(&t, 11, 10, log_cb, &v), 0);
	assert_int_equal(pgt_for_each(&t, 1ull << 36, UINT64_MAX, log_cb, &v),
			 0);
	assert_int_equal(pgt_for_each(&t, 0, UINT64_MAX, log_cb, &v), NSPARSE);
	assert_int_equal(v.idx[NSPARSE - 1], (1ull << 36) - 1);
	pgt_destroy(&t);
}

/*
 * Skipping: a table of 2^64-1 slots with three words, walked over its whole
 * range, would never finish if empty subtrees were scanned slot by slot.
 */
static void test_for_each_skips_empty(void **state)
{
	struct pgt t;
	static struct vlog v;

	(void)state;
	pgt_init(&t, UINT64_MAX);
	assert_int_equal(pgt_set(&t, 3, 7), 0);
	assert_int_equal(pgt_set(&t, 1ull << 45, 8), 0);
	assert_int_equal(pgt_set(&t, UINT64_MAX - 1, 9), 0);
	assert_int_equal(pgt_get(&t, UINT64_MAX - 1), 9);
	assert_int_equal(pgt_get(&t, UINT64_MAX), 0);
	memset(&v, 0, sizeof(v));
	assert_int_equal(pgt_for_each(&t, 0, UINT64_MAX, log_cb, &v), 3);
	assert_int_equal(v.idx[0], 3);
	assert_int_equal(v.idx[1], 1ull << 45);
	assert_int_equal(v.idx[2], UINT64_MAX - 1);
	memset(&v, 0, sizeof(v));
	assert_int_equal(pgt_for_each(&t, 4, UINT64_MAX - 1, log_cb, &v), 1);
	assert_int_equal(v.idx[0], 1ull << 45);
	v.n = 0;
	v.action = 1;
	assert_int_equal(pgt_for_each(&t, 0, UINT64_MAX, log_cb, &v), 3);
	assert_int_equal(t.used, 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);
	pgt_destroy(&t);
}

static void test_for_each_stop(void **state)
{
	struct pgt t;
	static struct vlog v;

	(void)state;
	pgt_init(&t, 1ull << 36);
	fill_sparse(&t, sparse_idx, NSPARSE);
	for (size_t k = 1; k <= NSPARSE; k++) {
		memset(&v, 0, sizeof(v));
		v.stop_at = k;
		assert_int_equal(pgt_for_each(&t, 0, 1ull << 36, log_cb, &v),
				 k);
		assert_int_equal(v.n, k);
		assert_int_equal(v.idx[k - 1], sparse_idx[k - 1]);
	}
	/* Stop while clearing: words after the stop stay. */
	memset(&v, 0, sizeof(v));
	v.stop_at = 5;
	v.action = 1;
	assert_int_equal(pgt_for_each(&t, 0, 1ull << 36, log_cb, &v), 5);
	assert_int_equal(t.used, NSPARSE - 5);
	for (size_t i = 0; i < NSPARSE; i++)
		assert_int_equal(pgt_get(&t, sparse_idx[i]),
				 i < 5 ? 0 : sparse_idx[i] * 2 + 1);
	/* Stop in the middle of a leaf that is emptied up to the stop: the
	 * leaf is kept as long as it holds words. */
	memset(&v, 0, sizeof(v));
	v.stop_at = 1;
	v.action = 1;
	assert_int_equal(pgt_for_each(&t, 0, 1ull << 36, log_cb, &v), 1);
	assert_int_equal(v.idx[0], sparse_idx[5]);
	assert_int_equal(pgt_get(&t, sparse_idx[6]), sparse_idx[6] * 2 + 1);
	pgt_destroy(&t);
	assert_int_equal(t.bytes, 0);
}

static void test_for_each_modify(void **state)
{
	struct pgt t;
	static struct vlog v;

	(void)state;
	pgt_init(&t, 1ull << 36);
	fill_sparse(&t, sparse_idx, NSPARSE);
	uint64_t bytes = t.bytes;

	/* Change to other nonzero values: counts and memory unchanged. */
	memset(&v, 0, sizeof(v));
	v.action = 2;
	assert_int_equal(pgt_for_each(&t, 0, 1ull << 36, log_cb, &v), NSPARSE);
	assert_int_equal(t.used, NSPARSE);
	assert_int_equal(t.bytes, bytes);
	for (size_t i = 0; i < NSPARSE; i++)
		assert_int_equal(pgt_get(&t, sparse_idx[i]),
				 sparse_idx[i] * 2 + 2);

	/* Clear every other word (1st, 3rd, ...). */
	memset(&v, 0, sizeof(v));
	v.action = 3;
	assert_int_equal(pgt_for_each(&t, 0, 1ull << 36, log_cb, &v), NSPARSE);
	assert_int_equal(t.used, NSPARSE / 2);
	for (size_t i = 0; i < NSPARSE; i++)
		assert_int_equal(pgt_get(&t, sparse_idx[i]),
				 (i & 1) ? sparse_idx[i] * 2 + 2 : 0);
	/* Leaves holding only cleared words are gone: 510 and 511 share a
	 * leaf with 0 and 1; [2^27+511] has its leaf alone. */
	assert_true(t.bytes < bytes);

	/* Clear a sub-range crossing node boundaries, then the rest. */
	memset(&v, 0, sizeof(v));
	v.action = 1;
	assert_int_equal(pgt_for_each(&t, 512, (1ull << 27) + 1, log_cb, &v),
			 4); /* 513, 1024, 2^18, 2^27 - 1 */
	for (size_t i = 0; i < NSPARSE; i++) {
		uint64_t x = sparse_idx[i];
		int gone = !(i & 1) || (x >= 512 && x < (1ull << 27) + 1);

		assert_int_equal(pgt_get(&t, x), gone ? 0 : x * 2 + 2);
	}
	memset(&v, 0, sizeof(v));
	v.action = 1;
	pgt_for_each(&t, 0, 1ull << 36, log_cb, &v);
	assert_int_equal(t.used, 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);
	pgt_destroy(&t);
}

/* Indexes around nslots - 1 for various table sizes. */
static void test_nslots_edges(void **state)
{
	static const uint64_t sizes[] = {
		1, 511, 512, 513, 1ull << 28, 1ull << 36, (1ull << 18) + 1
	};
	static struct vlog v;

	(void)state;
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		uint64_t n = sizes[s], last = n - 1, room = 0;
		struct pgt t;

		pgt_init(&t, n);
		assert_int_equal(pgt_set(&t, n, 1), -EINVAL);
		assert_int_equal(pgt_set(&t, last, 0xabc), 0);
		if (n == 1)
			assert_int_equal(t.bytes, 16); /* root leaf of 1 */
		if (n == 511)
			assert_int_equal(t.bytes, 8 + 511 * 8);
		if (n > 1)
			assert_int_equal(pgt_set(&t, last - 1, 0xdef), 0);
		assert_int_equal(pgt_get(&t, last), 0xabc);
		assert_int_equal(pgt_get(&t, n), 0);

		memset(&v, 0, sizeof(v));
		assert_int_equal(pgt_for_each(&t, 0, n, log_cb, &v),
				 n > 1 ? 2 : 1);
		assert_int_equal(v.idx[v.n - 1], last);
		if (n > 1)
			assert_int_equal(v.idx[0], last - 1);
		memset(&v, 0, sizeof(v));
		assert_int_equal(pgt_for_each(&t, last, n, log_cb, &v), 1);
		assert_int_equal(v.idx[0], last);

		uint64_t *w = pgt_leaf_slot(&t, last, &room);
		assert_non_null(w);
		assert_int_equal(room, 1);
		assert_int_equal(*w, 0xabc);
		errno = 0;
		assert_null(pgt_leaf_slot(&t, n, &room));
		assert_int_equal(errno, EINVAL);
		if (n > 1) {
			/* last - 1 is alone in its leaf when last starts one */
			uint64_t r = last % 512 ? 2 : 1;

			w = pgt_leaf_slot(&t, last - 1, &room);
			assert_non_null(w);
			assert_int_equal(room, r);
			assert_int_equal(w[0], 0xdef);
			if (r == 2)
				assert_int_equal(w[1], 0xabc);
		}

		memset(&v, 0, sizeof(v));
		v.action = 1;
		pgt_for_each(&t, 0, n, log_cb, &v);
		assert_int_equal(t.used, 0);
		assert_int_equal(t.bytes, 0);
		assert_null(t.root);
		pgt_destroy(&t);
	}
}

static void test_leaf_slot(void **state)
{
	struct pgt t;
	uint64_t n = 1ull << 28, start = 300, count = 2000, room;
	static struct vlog v;

	(void)state;
	pgt_init(&t, n);
	/* Fill [start, start + count) through the fast path. */
	for (uint64_t i = start; i < start + count;) {
		uint64_t *w = pgt_leaf_slot(&t, i, &room);
		uint64_t k;

		assert_non_null(w);
		assert_int_equal(room, 512 - (i % 512));
		for (k = 0; k < room && i + k < start + count; k++)
			w[k] = (i + k) << 12 | 1;
		pgt_leaf_account(&t, i, (int64_t)k);
		i += k;
	}
	assert_int_equal(t.used, count);
	for (uint64_t i = start - 2; i < start + count + 2; i++)
		assert_int_equal(pgt_get(&t, i),
				 i >= start && i < start + count ? i << 12 | 1 :
								   0);
	memset(&v, 0, sizeof(v));
	assert_int_equal(pgt_for_each(&t, 0, n, log_cb, &v), count);
	assert_int_equal(v.idx[0], start);
	assert_int_equal(v.idx[count - 1], start + count - 1);

	/* A leaf obtained and left unwritten is released by account(0). */
	uint64_t bytes = t.bytes;
	uint64_t *w = pgt_leaf_slot(&t, 1ull << 20, &room);
	assert_non_null(w);
	assert_int_equal(*w, 0);
	assert_true(t.bytes > bytes);
	pgt_leaf_account(&t, 1ull << 20, 0);
	assert_int_equal(t.bytes, bytes);
	/* ... or by clearing a slot of it with pgt_set(). */
	assert_non_null(pgt_leaf_slot(&t, 1ull << 20, &room));
	assert_int_equal(pgt_set(&t, (1ull << 20) + 3, 0), 0);
	assert_int_equal(t.bytes, bytes);

	/* Empty through the fast path: the leaves go once their count is 0. */
	for (uint64_t i = start; i < start + count;) {
		uint64_t *p = pgt_leaf_slot(&t, i, &room);
		uint64_t k;

		assert_non_null(p);
		for (k = 0; k < room && i + k < start + count; k++) {
			assert_true(p[k] != 0);
			p[k] = 0;
		}
		pgt_leaf_account(&t, i, -(int64_t)k);
		i += k;
	}
	assert_int_equal(t.used, 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);

	/* A dense gigabyte through the fast path costs <= 16 B a page. */
	for (uint64_t i = 0; i < 262144;) {
		uint64_t *p = pgt_leaf_slot(&t, i, &room);

		assert_non_null(p);
		for (uint64_t k = 0; k < room; k++)
			p[k] = 1;
		pgt_leaf_account(&t, i, (int64_t)room);
		i += room;
	}
	assert_int_equal(t.used, 262144);
	assert_true(t.bytes <= 16 * t.used);
	pgt_destroy(&t);
	assert_int_equal(t.bytes, 0);
}

static void test_alloc_failure(void **state)
{
	struct pgt t;
	const uint64_t n = 1ull << 36; /* 3 inner levels + leaf */

	(void)state;
	pgt_init(&t, n);
	/* An empty table: each of the 4 allocations of the path can fail. */
	for (unsigned k = 1; k <= 4; k++) {
		pgt_test_fail_alloc(k);
		assert_int_equal(pgt_set(&t, 12345, 1), -ENOMEM);
		pgt_test_fail_alloc(0);
		pgt_reap(&t); /* nodes of the failed path are kept for reuse */
		assert_null(t.root);
		assert_int_equal(t.used, 0);
		assert_int_equal(t.bytes, 0);
	}
	/* Exactly 4 allocations are needed: the 5th failing is harmless. */
	pgt_test_fail_alloc(5);
	assert_int_equal(pgt_set(&t, 12345, 1), 0);
	pgt_test_fail_alloc(0);
	pgt_reap(&t); /* nodes of the failed path are kept for reuse */

	/* A partial path: a far index needs 3 new nodes. */
	uint64_t bytes = t.bytes;
	const uint64_t far = (1ull << 27) * 3 + 77;
	for (unsigned k = 1; k <= 3; k++) {
		pgt_test_fail_alloc(k);
		assert_int_equal(pgt_set(&t, far, 2), -ENOMEM);
		pgt_test_fail_alloc(0);
		pgt_reap(&t); /* nodes of the failed path are kept for reuse */
		assert_int_equal(t.bytes, bytes);
		assert_int_equal(t.used, 1);
		assert_int_equal(pgt_get(&t, far), 0);
		assert_int_equal(pgt_get(&t, 12345), 1);
	}
	/* The fast path fails the same way. */
	uint64_t room = 99;
	pgt_test_fail_alloc(1);
	errno = 0;
	assert_null(pgt_leaf_slot(&t, far, &room));
	assert_int_equal(errno, ENOMEM);
	pgt_test_fail_alloc(0);
	pgt_reap(&t); /* nodes of the failed path are kept for reuse */
	assert_int_equal(t.bytes, bytes);
	/* Clearing never allocates. */
	pgt_test_fail_alloc(1);
	assert_int_equal(pgt_set(&t, 12345, 0), 0);
	pgt_test_fail_alloc(0);
	pgt_reap(&t); /* nodes of the failed path are kept for reuse */
	assert_int_equal(t.bytes, 0);
	pgt_destroy(&t);
}

/* ---- randomized test against a naive model ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

#define NCAND 1500

struct model {
	uint64_t idx[NCAND]; /* candidate indexes, sorted, distinct */
	uint64_t val[NCAND]; /* model word of each candidate */
	size_t n;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void model_init(struct model *m, uint64_t nslots)
{
	size_t n = 0;

	while (n < NCAND) {
		uint64_t r = rnd(), x;

		switch (r % 5) {
		case 0: /* anywhere */
			x = rnd() % nslots;
			break;
		case 1: /* near a leaf boundary */
			x = (rnd() % nslots & ~511ull) + (rnd() % 5) - 2;
			break;
		case 2: /* near a level-1 node boundary */
			x = (rnd() % nslots & ~((1ull << 18) - 1)) +
			    (rnd() % 5) - 2;
			break;
		case 3: /* near the end */
			x = nslots - 1 - rnd() % 600;
			break;
		default: /* clustered near the start */
			x = rnd() % 2048;
			break;
		}
		if (x < nslots)
			m->idx[n++] = x;
	}
	qsort(m->idx, n, sizeof(m->idx[0]), cmp_u64);
	m->n = 0;
	for (size_t i = 0; i < n; i++)
		if (m->n == 0 || m->idx[m->n - 1] != m->idx[i])
			m->idx[m->n++] = m->idx[i];
	memset(m->val, 0, sizeof(m->val));
}

/* Memory the table must hold for the model's nonzero words. */
static uint64_t model_bytes(const struct model *m, const struct pgt *t)
{
	uint64_t bytes = 0, used = 0;

	for (size_t i = 0; i < m->n; i++)
		used += m->val[i] != 0;
	if (!used)
		return 0;
	for (unsigned l = 0; l < t->levels; l++) {
		unsigned sh = 9 * (l + 1);
		uint64_t prev = 0, nodes = 0;
		int have = 0;

		for (size_t i = 0; i < m->n; i++) {
			if (!m->val[i])
				continue;
			if (!have || (m->idx[i] >> sh) != prev)
				nodes++;
			prev = m->idx[i] >> sh;
			have = 1;
		}
		bytes += nodes * NODE_BYTES;
	}
	return bytes + 8 + 8 * (((t->nslots - 1) >> (9 * t->levels)) + 1);
}

struct rwalk {
	struct model *m;
	size_t pos; /* next candidate expected at or after */
	uint64_t stop_after;
	uint64_t seen;
};

static int rwalk_cb(uint64_t idx, uint64_t *word, void *arg)
{
	struct rwalk *w = arg;
	struct model *m = w->m;

	while (w->pos < m->n && (m->idx[w->pos] < idx || !m->val[w->pos]))
		w->pos++;
	assert_true(w->pos < m->n);
	assert_int_equal(m->idx[w->pos], idx);
	assert_int_equal(m->val[w->pos], *word);
	switch (rnd() % 4) {
	case 0:
		*word = 0;
		break;
	case 1:
		*word = rnd() | 1;
		break;
	default:
		break;
	}
	m->val[w->pos] = *word;
	w->pos++;
	w->seen++;
	return w->seen == w->stop_after;
}

static void random_run(uint64_t seed, uint64_t nslots, unsigned steps)
{
	static struct model m;
	struct pgt t;
	uint64_t room;

	rng_state = seed;
	model_init(&m, nslots);
	pgt_init(&t, nslots);
	for (unsigned s = 0; s < steps; s++) {
		size_t j = rnd() % m.n;
		uint64_t op = rnd() % 10;

		if (op < 5) { /* set or clear one */
			uint64_t v = rnd() % 3 ? rnd() | 1 : 0;

			assert_int_equal(pgt_set(&t, m.idx[j], v), 0);
			m.val[j] = v;
		} else if (op < 7) { /* a run through the fast path */
			uint64_t *p = pgt_leaf_slot(&t, m.idx[j], &room);
			int64_t delta = 0;

			assert_non_null(p);
			for (size_t k = j;
			     k < m.n && m.idx[k] - m.idx[j] < room; k++) {
				uint64_t *w = &p[m.idx[k] - m.idx[j]];
				uint64_t v = rnd() % 2 ? rnd() | 1 : 0;

				assert_int_equal(*w, m.val[k]);
				delta += (v != 0) - (*w != 0);
				*w = v;
				m.val[k] = v;
			}
			pgt_leaf_account(&t, m.idx[j], delta);
		} else if (op < 9) { /* walk a range, maybe modifying */
			size_t j2 = rnd() % m.n;
			uint64_t from = m.idx[j < j2 ? j : j2];
			uint64_t to = m.idx[j < j2 ? j2 : j];
			struct rwalk w = { .m = &m };
			uint64_t expect = 0, r;

			if (rnd() % 2 && from > 0)
				from -= rnd() % 2;
			to += rnd() % 2;
			if (rnd() % 8 == 0) {
				from = 0;
				to = nslots;
			}
			for (size_t k = 0; k < m.n; k++)
				if (m.val[k] && m.idx[k] >= from &&
				    m.idx[k] < to)
					expect++;
			w.stop_after = rnd() % 3 ? 0 : rnd() % (expect + 1);
			if (w.stop_after && w.stop_after < expect)
				expect = w.stop_after;
			while (w.pos < m.n && m.idx[w.pos] < from)
				w.pos++;
			r = pgt_for_each(&t, from, to, rwalk_cb, &w);
			assert_int_equal(r, expect);
			assert_int_equal(w.seen, expect);
		} else { /* check everything */
			uint64_t used = 0;

			for (size_t k = 0; k < m.n; k++) {
				assert_int_equal(pgt_get(&t, m.idx[k]),
						 m.val[k]);
				if (m.idx[k] + 1 < nslots &&
				    (k + 1 == m.n ||
				     m.idx[k + 1] != m.idx[k] + 1))
					assert_int_equal(
						pgt_get(&t, m.idx[k] + 1), 0);
				used += m.val[k] != 0;
			}
			assert_int_equal(t.used, used);
		}
		assert_int_equal(t.bytes, model_bytes(&m, &t));
	}
	/* Clear everything through a walk: memory back to 0. */
	pgt_for_each(&t, 0, nslots, clear_cb, NULL);
	assert_int_equal(t.used, 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);
	pgt_destroy(&t);
}

static void test_random(void **state)
{
	static const uint64_t sizes[] = { 1,
					  2,
					  511,
					  512,
					  513,
					  1ull << 18,
					  (1ull << 18) + 3,
					  1ull << 28,
					  1ull << 36,
					  1ull << 40,
					  UINT64_MAX };

	(void)state;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		for (uint64_t seed = 1; seed <= 3; seed++)
			random_run(seed * 1000003 + i, sizes[i], 4000);
}

static int zero_all_cb(uint64_t idx, uint64_t *word, void *arg)
{
	(void)idx;
	(void)arg;
	*word = 0;
	return 0;
}

/* Emptied nodes are kept for reuse, never freed by clearing (clearing runs
 * on the monitor thread, where free() may deadlock); pgt_reap() frees. */
static void test_graveyard(void **state)
{
	struct pgt t;
	uint64_t i, live;

	(void)state;
	pgt_init(&t, (uint64_t)1 << 20);
	for (i = 0; i < 4096; i++)
		assert_int_equal(pgt_set(&t, i, i + 1), 0);
	live = t.bytes;
	assert_int_equal(t.cached_bytes, 0);
	for (i = 0; i < 4096; i++)
		assert_int_equal(pgt_set(&t, i, 0), 0);
	assert_int_equal(t.bytes, 0);
	assert_null(t.root);
	assert_int_equal(t.cached_bytes, live);
	/* Refilling reuses the graveyard before asking the allocator. */
	for (i = 0; i < 4096; i++)
		assert_int_equal(pgt_set(&t, i, 7), 0);
	assert_int_equal(t.bytes, live);
	assert_int_equal(t.cached_bytes, 0);
	for (i = 0; i < 4096; i++)
		assert_int_equal(pgt_get(&t, i), 7);
	/* Reaped nodes are gone for good. */
	pgt_for_each(&t, 0, t.nslots, zero_all_cb, NULL);
	assert_int_equal(t.cached_bytes, live);
	pgt_reap(&t);
	assert_int_equal(t.cached_bytes, 0);
	assert_null(t.graveyard);
	pgt_destroy(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_graveyard),
		cmocka_unit_test(test_init_allocates_nothing),
		cmocka_unit_test(test_get_set_clear),
		cmocka_unit_test(test_memory_returns_to_zero),
		cmocka_unit_test(test_dense_bytes_per_page),
		cmocka_unit_test(test_for_each_order_and_ranges),
		cmocka_unit_test(test_for_each_skips_empty),
		cmocka_unit_test(test_for_each_stop),
		cmocka_unit_test(test_for_each_modify),
		cmocka_unit_test(test_nslots_edges),
		cmocka_unit_test(test_leaf_slot),
		cmocka_unit_test(test_alloc_failure),
		cmocka_unit_test(test_random),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_itree.c - the interval tree (src/lib/itree.c) against a naive model.
 *
 * Every query result is compared, in order, with a brute-force scan of the
 * nodes known to be in the tree, sorted by (start, address): the exact order
 * the iterator promises. itree_check runs after mutations, and its own
 * ability to detect corruption is tested so that a passing check means
 * something. All randomness comes from fixed seeds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "lib/itree.h"

struct item {
	struct itree_node node;
	int in; /* currently linked in the tree under test */
};

/* splitmix64: small, deterministic, good enough for test data. */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform in [lo, hi], any lo <= hi including the full 64-bit range. */
static uint64_t rng_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
	uint64_t span = hi - lo;

	if (span == UINT64_MAX)
		return rng_next(s);
	return lo + rng_next(s) % (span + 1);
}

static int cmp_nodes(const void *a, const void *b)
{
	const struct itree_node *x = *(const struct itree_node *const *)a;
	const struct itree_node *y = *(const struct itree_node *const *)b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x == y)
		return 0;
	return (uintptr_t)x < (uintptr_t)y ? -1 : 1;
}

static int overlaps(const struct itree_node *n, uint64_t start, uint64_t last)
{
	return n->start <= last && n->last >= start;
}

/*
 * Compare the iterator's answer to [start, last] with a scan of @items.
 * @scratch must hold @n pointers (twice: expected and actual halves).
 */
static void check_query(const struct itree *t, struct item *items, size_t n,
			struct itree_node **scratch, uint64_t start,
			uint64_t last)
{
	struct itree_node **exp = scratch, **got = scratch + n;
	struct itree_node *it;
	size_t ne = 0, ng = 0, i;

	for (i = 0; i < n; i++)
		if (items[i].in && overlaps(&items[i].node, start, last))
			exp[ne++] = &items[i].node;
	qsort(exp, ne, sizeof(*exp), cmp_nodes);

	for (it = itree_iter_first(t, start, last); it;
	     it = itree_iter_next(it, start, last)) {
		assert_true(ng < ne); /* also stops a runaway iteration */
		got[ng++] = it;
	}
	assert_int_equal(ng, ne);
	for (i = 0; i < ne; i++)
		assert_ptr_equal(got[i], exp[i]);
}

static void set_iv(struct item *it, uint64_t start, uint64_t last)
{
	it->node.start = start;
	it->node.last = last;
}

static void add(struct itree *t, struct item *it)
{
	assert_false(it->in);
	itree_insert(t, &it->node);
	it->in = 1;
}

static void del(struct itree *t, struct item *it)
{
	assert_true(it->in);
	itree_remove(t, &it->node);
	it->in = 0;
}

static void shuffle(struct item **v, size_t n, uint64_t *seed)
{
	size_t i, j;
	struct item *tmp;

	for (i = n; i > 1; i--) {
		j = rng_next(seed) % i;
		tmp = v[i - 1];
		v[i - 1] = v[j];
		v[j] = tmp;
	}
}

static void test_empty(void **state)
{
	struct itree t = ITREE_INIT;
	struct itree t2;

	(void)state;
	assert_int_equal(itree_check(&t), 0);
	assert_null(itree_iter_first(&t, 0, UINT64_MAX));
	assert_null(itree_iter_first(&t, 0, 0));
	assert_null(itree_iter_first(&t, UINT64_MAX, UINT64_MAX));
	itree_init(&t2);
	assert_null(t2.root);
	assert_int_equal(t2.count, 0);
	assert_int_equal(itree_check(&t2), 0);
}

static void test_single(void **state)
{
	struct itree t = ITREE_INIT;
	struct item a = { 0 };
	struct itree_node *scratch[2];
	static const uint64_t q[][2] = {
		{ 0, 9 },   { 0, 10 },		{ 10, 10 },	   { 20, 20 },
		{ 21, 30 }, { 15, 15 },		{ 0, UINT64_MAX }, { 12, 18 },
		{ 5, 25 },  { 21, UINT64_MAX },
	};
	size_t i;

	(void)state;
	set_iv(&a, 10, 20);
	add(&t, &a);
	assert_int_equal(t.count, 1);
	assert_int_equal(itree_check(&t), 0);
	assert_ptr_equal(itree_iter_first(&t, 15, 15), &a.node);
	assert_null(itree_iter_next(&a.node, 15, 15));
	assert_null(itree_iter_first(&t, 0, 9));
	assert_null(itree_iter_first(&t, 21, 21));
	for (i = 0; i < sizeof(q) / sizeof(q[0]); i++)
		check_query(&t, &a, 1, scratch, q[i][0], q[i][1]);
	del(&t, &a);
	assert_int_equal(t.count, 0);
	assert_null(t.root);
	assert_int_equal(itree_check(&t), 0);
	assert_null(itree_iter_first(&t, 0, UINT64_MAX));
}

#define NIDENT 200
static void test_identical(void **state)
{
	struct itree t = ITREE_INIT;
	struct item *v = calloc(NIDENT, sizeof(*v));
	struct itree_node **scratch = calloc(2 * NIDENT, sizeof(*scratch));
	struct itree_node *it, *prev = NULL;
	size_t i, n = 0;

	(void)state;
	assert_non_null(v);
	assert_non_null(scratch);
	for (i = 0; i < NIDENT; i++) {
		set_iv(&v[i], 5, 9);
		add(&t, &v[i]);
		assert_int_equal(itree_check(&t), 0);
	}
	/* All of them, in address order. */
	for (it = itree_iter_first(&t, 7, 7); it;
	     it = itree_iter_next(it, 7, 7)) {
		if (prev)
			assert_true((uintptr_t)prev < (uintptr_t)it);
		prev = it;
		n++;
	}
	assert_int_equal(n, NIDENT);
	check_query(&t, v, NIDENT, scratch, 0, 5);
	check_query(&t, v, NIDENT, scratch, 9, 100);
	check_query(&t, v, NIDENT, scratch, 0, 4);
	check_query(&t, v, NIDENT, scratch, 10, UINT64_MAX);
	/* Remove every other one: exactly those must go. */
	for (i = 0; i < NIDENT; i += 2) {
		del(&t, &v[i]);
		assert_int_equal(itree_check(&t), 0);
	}
	assert_int_equal(t.count, NIDENT / 2);
	check_query(&t, v, NIDENT, scratch, 6, 8);
	for (i = 1; i < NIDENT; i += 2)
		del(&t, &v[i]);
	assert_int_equal(itree_check(&t), 0);
	assert_null(t.root);
	free(scratch);
	free(v);
}

#define NNEST 100
static void test_nested(void **state)
{
	struct itree t = ITREE_INIT;
	struct item v[NNEST] = { 0 };
	struct itree_node *scratch[2 * NNEST];
	uint64_t x;
	size_t i;

	(void)state;
	/* [i, 1000 - i]: each strictly inside the previous. */
	for (i = 0; i < NNEST; i++) {
		set_iv(&v[i], i, 1000 - i);
		add(&t, &v[i]);
	}
	assert_int_equal(itree_check(&t), 0);
	for (x = 0; x <= 1001; x++)
		check_query(&t, v, NNEST, scratch, x, x);
	check_query(&t, v, NNEST, scratch, 500, 500);
	check_query(&t, v, NNEST, scratch, 0, UINT64_MAX);
	check_query(&t, v, NNEST, scratch, 1001, UINT64_MAX);
	check_query(&t, v, NNEST, scratch, 950, 960);
	/* Outermost removed first, then queries again. */
	for (i = 0; i < NNEST; i += 3) {
		del(&t, &v[i]);
		assert_int_equal(itree_check(&t), 0);
	}
	for (x = 0; x <= 1001; x += 7)
		check_query(&t, v, NNEST, scratch, x, x + 3);
}

#define NPOINT 1000
static void test_points(void **state)
{
	struct itree t = ITREE_INIT;
	struct item *v = calloc(NPOINT, sizeof(*v));
	struct itree_node **scratch = calloc(2 * NPOINT, sizeof(*scratch));
	struct itree_node *it;
	uint64_t x, n;
	size_t i;

	(void)state;
	assert_non_null(v);
	assert_non_null(scratch);
	/* Points 0, 2, 4, ...: odd queries miss, even ones hit one. */
	for (i = 0; i < NPOINT; i++) {
		set_iv(&v[i], 2 * i, 2 * i);
		add(&t, &v[i]);
	}
	assert_int_equal(itree_check(&t), 0);
	for (x = 0; x < 2 * NPOINT + 2; x++) {
		it = itree_iter_first(&t, x, x);
		if (x % 2 || x >= 2 * NPOINT) {
			assert_null(it);
		} else {
			assert_ptr_equal(it, &v[x / 2].node);
			assert_null(itree_iter_next(it, x, x));
		}
	}
	/* [a, b] holds every even point between. */
	for (x = 0; x < 2 * NPOINT; x += 37) {
		n = 0;
		for (it = itree_iter_first(&t, x, x + 100); it;
		     it = itree_iter_next(it, x, x + 100))
			n++;
		assert_int_equal(
			n,
			(x + 100 < 2 * NPOINT ? x + 100 : 2 * NPOINT - 2) / 2 -
				(x + 1) / 2 + 1);
		check_query(&t, v, NPOINT, scratch, x, x + 100);
	}
	free(scratch);
	free(v);
}

static void test_extremes(void **state)
{
	struct itree t = ITREE_INIT;
	struct item v[8] = { 0 };
	struct itree_node *scratch[16];
	static const uint64_t q[][2] = {
		{ 0, 0 },
		{ 1, 1 },
		{ UINT64_MAX, UINT64_MAX },
		{ UINT64_MAX - 1, UINT64_MAX - 1 },
		{ 0, UINT64_MAX },
		{ 2, UINT64_MAX - 2 },
		{ UINT64_MAX / 2, UINT64_MAX / 2 },
		{ UINT64_MAX / 2 + 1, UINT64_MAX },
	};
	size_t i, j;

	(void)state;
	set_iv(&v[0], 0, 0);
	set_iv(&v[1], UINT64_MAX, UINT64_MAX);
	set_iv(&v[2], 0, UINT64_MAX);
	set_iv(&v[3], UINT64_MAX - 1, UINT64_MAX);
	set_iv(&v[4], 0, 1);
	set_iv(&v[5], UINT64_MAX / 2, UINT64_MAX / 2);
	set_iv(&v[6], 1, UINT64_MAX - 1);
	set_iv(&v[7], 0, UINT64_MAX);
	for (i = 0; i < 8; i++) {
		add(&t, &v[i]);
		assert_int_equal(itree_check(&t), 0);
		for (j = 0; j < sizeof(q) / sizeof(q[0]); j++)
			check_query(&t, v, 8, scratch, q[j][0], q[j][1]);
	}
	assert_int_equal(t.root->subtree_last, UINT64_MAX);
	for (i = 0; i < 8; i++) {
		del(&t, &v[(i * 3) % 8]);
		assert_int_equal(itree_check(&t), 0);
		for (j = 0; j < sizeof(q) / sizeof(q[0]); j++)
			check_query(&t, v, 8, scratch, q[j][0], q[j][1]);
	}
	assert_null(t.root);
}

#define NREMOVE 3000
static void test_remove_all_random(void **state)
{
	struct item *v = calloc(NREMOVE, sizeof(*v));
	struct item **order = calloc(NREMOVE, sizeof(*order));
	struct itree_node **scratch = calloc(2 * NREMOVE, sizeof(*scratch));
	uint64_t seed, s, a;
	size_t i;

	(void)state;
	assert_non_null(v);
	assert_non_null(order);
	assert_non_null(scratch);
	for (seed = 1; seed <= 5; seed++) {
		struct itree t = ITREE_INIT;

		s = seed;
		for (i = 0; i < NREMOVE; i++) {
			a = rng_range(&s, 0, 10000);
			set_iv(&v[i], a, a + rng_range(&s, 0, 300));
			add(&t, &v[i]);
			order[i] = &v[i];
		}
		assert_int_equal(itree_check(&t), 0);
		shuffle(order, NREMOVE, &s);
		for (i = 0; i < NREMOVE; i++) {
			del(&t, order[i]);
			assert_int_equal(t.count, NREMOVE - i - 1);
			assert_int_equal(itree_check(&t), 0);
			if (i % 97 == 0) {
				a = rng_range(&s, 0, 10400);
				check_query(&t, v, NREMOVE, scratch, a,
					    a + rng_range(&s, 0, 500));
			}
		}
		assert_null(t.root);
	}
	free(scratch);
	free(order);
	free(v);
}

/*
 * A random interval whose shape depends on @mode: a crowded small universe
 * (many overlaps and equal starts), a sparse full 64-bit one, or one biased
 * towards the ends of the address space.
 */
static void random_iv(uint64_t *s, int mode, uint64_t *start, uint64_t *last)
{
	static const uint64_t edges[] = {
		0,	   1, 2, UINT64_MAX / 2, UINT64_MAX - 2, UINT64_MAX - 1,
		UINT64_MAX
	};
	uint64_t a, len;

	switch (mode) {
	case 0:
		a = rng_range(s, 0, 200);
		len = rng_range(s, 0, 20);
		break;
	case 1:
		a = rng_next(s);
		len = rng_range(s, 0, UINT64_MAX - a);
		if (rng_next(s) % 2)
			len >>= rng_range(s, 0, 63);
		break;
	default:
		a = edges[rng_next(s) % (sizeof(edges) / sizeof(edges[0]))];
		if (rng_next(s) % 2)
			len = rng_range(s, 0, UINT64_MAX - a);
		else
			len = rng_range(s, 0, a == UINT64_MAX ? 0 : 3);
		if (len > UINT64_MAX - a)
			len = UINT64_MAX - a;
		break;
	}
	*start = a;
	*last = a + len;
}

#define NPOOL 256
#define NSEEDS 20
#define NOPS 5000
static void test_random_model(void **state)
{
	struct item *v = calloc(NPOOL, sizeof(*v));
	struct itree_node **scratch = calloc(2 * NPOOL, sizeof(*scratch));
	uint64_t seed, s, a, b;
	size_t op, i, mutations, queries = 0;
	int mode;

	(void)state;
	assert_non_null(v);
	assert_non_null(scratch);
	for (seed = 1; seed <= NSEEDS; seed++) {
		struct itree t = ITREE_INIT;

		s = seed * 1000003;
		mode = seed % 3;
		mutations = 0;
		for (i = 0; i < NPOOL; i++)
			v[i].in = 0;
		for (op = 0; op < NOPS; op++) {
			uint64_t r = rng_next(&s) % 10;
			struct item *it = &v[rng_next(&s) % NPOOL];

			if (r < 4) {
				if (!it->in) {
					random_iv(&s, mode, &a, &b);
					set_iv(it, a, b);
					add(&t, it);
					mutations++;
				}
			} else if (r < 7) {
				if (it->in) {
					del(&t, it);
					mutations++;
				}
			} else {
				random_iv(&s, mode, &a, &b);
				check_query(&t, v, NPOOL, scratch, a, b);
				queries++;
				continue;
			}
			/* Check after every batch of 4 mutations. */
			if (mutations % 4 == 0)
				assert_int_equal(itree_check(&t), 0);
		}
		assert_int_equal(itree_check(&t), 0);
		b = 0;
		for (i = 0; i < NPOOL; i++)
			b += v[i].in;
		assert_int_equal(t.count, b);
		/* A point query on every endpoint in the tree. */
		for (i = 0; i < NPOOL; i++) {
			if (!v[i].in)
				continue;
			a = v[i].node.start;
			b = v[i].node.last;
			check_query(&t, v, NPOOL, scratch, a, a);
			check_query(&t, v, NPOOL, scratch, b, b);
		}
		for (i = 0; i < NPOOL; i++)
			if (v[i].in)
				del(&t, &v[i]);
		assert_null(t.root);
		assert_int_equal(itree_check(&t), 0);
	}
	assert_true(queries > NSEEDS * NOPS / 5);
	free(scratch);
	free(v);
}

#define NLARGE 100000
static void test_large(void **state)
{
	struct itree t = ITREE_INIT;
	struct item *v = calloc(NLARGE, sizeof(*v));
	struct item **order = calloc(NLARGE, sizeof(*order));
	struct itree_node **scratch = calloc(2 * NLARGE, sizeof(*scratch));
	uint64_t s = 42, a;
	size_t i;

	(void)state;
	assert_non_null(v);
	assert_non_null(order);
	assert_non_null(scratch);
	/* Page-like regions of 1..16 pages over a 4 GiB space. */
	for (i = 0; i < NLARGE; i++) {
		a = rng_range(&s, 0, 1ULL << 20) << 12;
		set_iv(&v[i], a, a + (rng_range(&s, 1, 16) << 12) - 1);
		add(&t, &v[i]);
		order[i] = &v[i];
	}
	assert_int_equal(t.count, NLARGE);
	assert_int_equal(itree_check(&t), 0);
	for (i = 0; i < 200; i++) {
		a = rng_range(&s, 0, (1ULL << 32) + (1ULL << 17));
		check_query(&t, v, NLARGE, scratch, a,
			    a + rng_range(&s, 0, 1ULL << 16));
	}
	check_query(&t, v, NLARGE, scratch, 0, UINT64_MAX);
	shuffle(order, NLARGE, &s);
	for (i = 0; i < NLARGE / 2; i++)
		del(&t, order[i]);
	assert_int_equal(itree_check(&t), 0);
	for (i = 0; i < 100; i++) {
		a = rng_range(&s, 0, 1ULL << 32);
		check_query(&t, v, NLARGE, scratch, a, a + 4095);
	}
	for (i = NLARGE / 2; i < NLARGE; i++)
		del(&t, order[i]);
	assert_int_equal(t.count, 0);
	assert_null(t.root);
	assert_int_equal(itree_check(&t), 0);
	free(scratch);
	free(order);
	free(v);
}

static int has_red_child(const struct itree_node *n)
{
	return (n->left && n->left->red) || (n->right && n->right->red);
}

/* itree_check must notice each kind of damage, or it proves nothing. */
static void test_check_detects(void **state)
{
	struct itree t = ITREE_INIT;
	struct item v[64] = { 0 };
	struct itree_node *r, *l, *red = NULL, *tmp;
	uint64_t saved;
	size_t i;

	(void)state;
	for (i = 0; i < 64; i++) {
		set_iv(&v[i], i * 10, i * 10 + 5);
		add(&t, &v[i]);
	}
	assert_int_equal(itree_check(&t), 0);
	r = t.root;
	l = r->left;

	/* Stale augmentation. */
	saved = l->subtree_last;
	l->subtree_last++;
	assert_int_equal(itree_check(&t), -1);
	l->subtree_last = saved;
	assert_int_equal(itree_check(&t), 0);

	/* Red root. */
	r->red = 1;
	assert_int_equal(itree_check(&t), -1);
	r->red = 0;

	/* Black height mismatch: a black non-root node with no red child
	 * turned red shortens its paths by one black, unlike its sibling's. */
	for (i = 0; i < 64; i++) {
		tmp = &v[i].node;
		if (tmp != r && !tmp->red && !has_red_child(tmp)) {
			red = tmp;
			break;
		}
	}
	assert_non_null(red);
	red->red = 1;
	assert_int_equal(itree_check(&t), -1);
	red->red = 0;
	assert_int_equal(itree_check(&t), 0);

	/* Broken parent link. */
	tmp = l->parent;
	l->parent = l;
	assert_int_equal(itree_check(&t), -1);
	l->parent = tmp;

	/* Order violation alone: the rightmost node claims start 0 (its
	 * `last` and so every subtree_last stay valid). */
	for (tmp = r; tmp->right; tmp = tmp->right)
		;
	saved = tmp->start;
	tmp->start = 0;
	assert_int_equal(itree_check(&t), -1);
	tmp->start = saved;
	assert_int_equal(itree_check(&t), 0);

	/* Empty interval. */
	saved = l->start;
	l->start = l->last + 1;
	assert_int_equal(itree_check(&t), -1);
	l->start = saved;

	/* Count mismatch. */
	t.count++;
	assert_int_equal(itree_check(&t), -1);
	t.count--;
	assert_int_equal(itree_check(&t), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_single),
		cmocka_unit_test(test_identical),
		cmocka_unit_test(test_nested),
		cmocka_unit_test(test_points),
		cmocka_unit_test(test_extremes),
		cmocka_unit_test(test_remove_all_random),
		cmocka_unit_test(test_random_model),
		cmocka_unit_test(test_large),
		cmocka_unit_test(test_check_detects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * rindex.c - the interval index: a radix front of small buckets for short
 * intervals, a B+-tree for the rest (see rindex.h for the design and the
 * allocation rule).
 *
 * Owns its blocks only; owners are opaque. Invariants (checked by
 * rindex_check, asserted on the way with -DUODP_DEBUG):
 *   radix: every radix node present has at least one child, counted
 *     exactly in its nc (a sparse leaf
 *     1..cap non-empty slots by increasing index); a slot is empty,
 *     inline (one interval) or a block of 2..cap entries sorted by
 *     strictly increasing (start, owner), each starting inside the bucket
 *     and shorter than SMAX; the slot's largest-last offset is exact; the
 *     count of bucket-crossing slots kept above each leaf is exact;
 *   B+-tree: every leaf is at depth height - 1; keys (start, owner)
 *     strictly increase along the leaves; an inner slot's key is exactly
 *     its child's smallest key, and its maxlast exactly the largest `last`
 *     below it; every node but the root has >= RINDEX_MIN slots; an inner
 *     root has >= 2 (a root with one child is replaced by the child);
 *   a key (start, owner) is in at most one place.
 * Functions that may run under the caller's lock (insert, remove, take
 * garbage, queries) never call malloc or free.
 */
#include "rindex.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#ifdef UODP_DEBUG
#include <assert.h>
#define rindex_assert(x) assert(x)
#else
#define rindex_assert(x) ((void)0)
#endif

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ------------------------------------------------------------------ */
/* geometry                                                           */
/* ------------------------------------------------------------------ */

#define BB RINDEX_BUCKET_SHIFT
#define BSIZE (UINT64_C(1) << BB)
/* Longest small interval (last - start < SMAX): may start in one bucket
 * and reach up to LOOKBACK buckets further, so a query looks that far
 * back. */
#define SMAX (UINT64_C(1) << RINDEX_SMALL_SHIFT)
#define LOOKBACK (SMAX >> BB)
/* Starts below this may live in buckets. */
#define RLIMIT (UINT64_C(1) << RINDEX_RADIX_BITS)
/* Bucket numbers: 0 .. NBUCKETS - 1. */
#define KBITS (RINDEX_RADIX_BITS - BB)
#define NBUCKETS (UINT64_C(1) << KBITS)
/* A root of RB bits, two inner levels of IB bits, a leaf level of LB. */
#define LB 8
#if BB <= 13
#define IB 9
#else
#define IB 8
#endif
#define RB (KBITS - LB - 2 * IB)
#define RFAN (1u << RB)
#define IFAN (1u << IB)
#define LFAN (1u << LB)
#define SH0 (LB + 2 * IB) /* root digit */
#define SH1 (LB + IB)
#define SH2 LB

_Static_assert(BB >= 12 && BB <= 16, "bucket offsets are u16");
_Static_assert(RINDEX_SMALL_SHIFT >= BB && RINDEX_SMALL_SHIFT <= 16,
	       "small lengths are u16, at least one bucket");
_Static_assert(RB >= 4 && RB <= 12, "radix root between 128 B and 32 KiB");

/* Offsets and lengths inside a bucket: < 2^BB. */
typedef uint16_t boff_t;

/* nc: the number of non-NULL c[], so that a remove emptying a node
 * knows it without scanning the node (512 pointers, 64 cache lines: the
 * scans were most of a lone small region's release). */
struct rroot {
	void *c[RFAN];
	uint32_t nc;
};

/*
 * x[i]: how many slots of leaf c[i] hold an interval reaching past its own
 * bucket (largest last offset >= BSIZE). Only used at the level above the
 * leaves: when a leaf has none, a query starting in it skips the look-back
 * (see rindex_iter_first), which is otherwise 8 more slots to read.
 */
struct rinner {
	void *c[IFAN];
	uint16_t x[IFAN];
	uint32_t nc; /* non-NULL c[], as in struct rroot */
};

/*
 * One bucket's slot in a radix leaf (32 B). A bucket of one or two
 * intervals holds them inline (no further memory, no further cache miss);
 * of three or more, a pointer to a bucket block. max is always the
 * bucket's largest last, as an offset from the bucket base (< BSIZE +
 * SMAX), so a query can skip a slot without looking further.
 *   n 0:        empty, all zero;
 *   n 1 or 2:   p[i] owner, e[i] = start offset << 16 | length, in key
 *               order;
 *   n SL_BLOCK: p[0] the bucket block (3 or more entries).
 */
struct rslot {
	void *p[2];
	uint32_t e[2];
	uint32_t max;
	uint32_t n;
};
_Static_assert(sizeof(struct rslot) == 32, "two slots per cache line");
#define SL_BLOCK 3u
#define E_OFF(e) ((e) >> 16)
#define E_LEN(e) ((e)&0xffffu)

static inline uint32_t e_make(uint32_t off, uint32_t len)
{
	return off << 16 | len;
}

struct rleaf {
	struct rslot s[LFAN];
};

/*
 * A sparse leaf: up to cap of a leaf's LFAN slots, all non-empty, listed
 * by increasing slot index: idx[cap] (padded to 8 bytes), then the slots.
 * Size classes of 3, 7 and 15 slots, grown by copy; a leaf starts
 * sparse (a region alone in its 2 MiB costs a 112-byte leaf, not 8 KiB)
 * and is made dense when it needs a 16th slot; never back (remove does
 * not allocate). Bit 0 of the pointer to a leaf tells them apart.
 */
struct rmini {
	uint8_t n;
	uint8_t kind;
	uint8_t pad[6];
};
#define LEAF_MINI ((uintptr_t)1)
#define MCAP(kind) ((4u << ((kind)-K_M0)) - 1u)
#define MIDXB(cap) (((cap) + 8u) & ~7u)
#define MINI_BYTES(cap) \
	(sizeof(struct rmini) + MIDXB(cap) + (cap) * sizeof(struct rslot))

static inline bool is_mini(const void *lp)
{
	return (uintptr_t)lp & LEAF_MINI;
}

static inline struct rmini *as_mini(const void *lp)
{
	return (struct rmini *)((uintptr_t)lp & ~LEAF_MINI);
}

static inline uint8_t *m_idx(const struct rmini *m)
{
	return (uint8_t *)(m + 1);
}

/*
 * A bucket block: n >= 2 entries sorted by (start, owner), held as three
 * arrays of cap (its size class): off[] (start - bucket base), len[]
 * (last - start), owner[]. 12 B per entry.
 */
struct rindex_bucket {
	uint16_t n;
	uint16_t kind;
	uint32_t pad;
	boff_t e[]; /* off[cap] ; len[cap] ; owner (void *)[cap] */
};

#define F RINDEX_FANOUT
/* Fewest slots of a non-root node: half, rounded down, so that a split of
 * F + 1 slots (>= 8 each side, or 9/7 for runs at an end) and a merge of
 * an underfull node with a sibling (<= 6 + 9 = 15) both stay in bounds. */
#define RINDEX_MIN (F / 2)

/*
 * One B+-tree node. The header and each array take two cache lines (a
 * 4-byte count padded to 8, then 15 8-byte slots = 128 B; the later arrays
 * are padded to 128 B likewise). Leaves are allocated without the last
 * array (kowner), which only inner nodes need.
 */
struct rindex_node {
	uint32_t n;   /* slots in use */
	uint32_t pad; /* keeps start[] 8-aligned and the header 8 bytes */
	uint64_t start[F];
	uint64_t last[F]; /* leaf: last; inner: max last below the child */
	uint64_t pad1;
	void *ptr[F]; /* leaf: owner; inner: child node */
	uint64_t pad2;
	void *kowner[F]; /* inner only: owner half of the child's min key */
	uint64_t pad3;
};

#define LEAF_BYTES offsetof(struct rindex_node, kowner)
#define INNER_BYTES sizeof(struct rindex_node)

_Static_assert(LEAF_BYTES == 384, "leaf is 6 cache lines");
_Static_assert(INNER_BYTES == 512, "inner node is 8 cache lines");
_Static_assert(F < 32, "slot masks are 32-bit");

/* Block kinds. Buckets come in size classes of 4 << i entries. */
enum {
	K_RROOT,
	K_RINNER,
	K_RLEAF,
	K_M0, /* sparse leaf of 3 slots */
	K_M1,
	K_M2, /* sparse leaf of 15 slots: the largest */
	K_B0, /* bucket of 4 entries */
	K_B1,
	K_B2,
	K_B3,
	K_B4, /* bucket of 64 entries: the largest */
	K_BTLEAF,
	K_BTINNER,
	K_N
};
_Static_assert(K_N == RINDEX_NKINDS, "kinds");

#define BUCKET_BYTES(cap)               \
	(sizeof(struct rindex_bucket) + \
	 (2 * sizeof(boff_t) + 8) * (size_t)(cap))
#define BCAP(kind) (4u << ((kind)-K_B0))
#define BCAP_MAX BCAP(K_B4)

static inline struct rslot *m_s(const struct rmini *m)
{
	return (struct rslot *)((uint8_t *)(m + 1) + MIDXB(MCAP(m->kind)));
}

static const size_t kind_bytes[K_N] = {
	sizeof(struct rroot), sizeof(struct rinner), sizeof(struct rleaf),
	MINI_BYTES(3),	      MINI_BYTES(7),	     MINI_BYTES(15),
	BUCKET_BYTES(4),      BUCKET_BYTES(8),	     BUCKET_BYTES(16),
	BUCKET_BYTES(32),     BUCKET_BYTES(64),	     LEAF_BYTES,
	INNER_BYTES,
};

/*
 * Worst case of one insert, per kind: a radix path (root, two inner
 * nodes, a sparse leaf new or grown, or the dense leaf replacing a full
 * one), one bucket block (new or grown, of any class), and the B+-tree's
 * (one leaf, a split at every level plus a new root).
 */
static const uint32_t kind_need[K_N] = {
	1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, RINDEX_MAX_HEIGHT,
};

/* What a thread's pool keeps when freed garbage refills it: one insert's
 * worth, plus a few sparse leaves, bucket blocks and B+-tree leaves (the
 * kinds that churn as buckets and leaves fill and empty); the rest is
 * freed. */
#define POOL_CAP(k) (kind_need[k] + ((k) >= K_M0 && (k) <= K_BTLEAF ? 4u : 0u))

/* cap is a multiple of 4: owner[] stays 8-aligned. */
static inline boff_t *b_off(const struct rindex_bucket *b)
{
	return (boff_t *)b->e;
}
static inline boff_t *b_len(const struct rindex_bucket *b, unsigned cap)
{
	return (boff_t *)b->e + cap;
}
static inline void **b_own(const struct rindex_bucket *b, unsigned cap)
{
	return (void **)((boff_t *)b->e + 2 * cap);
}

/* ------------------------------------------------------------------ */
/* block supply (see ALLOCATION RULE in rindex.h)                     */
/* ------------------------------------------------------------------ */

static void *blk_alloc(unsigned k)
{
	size_t sz = kind_bytes[k];
	void *p;

	if (k >= K_M0 && k <= K_B4)
		p = malloc(sz); /* 16-aligned is enough; saves memalign slack */
	else
		p = aligned_alloc(64, (sz + 63) & ~(size_t)63);
	/* Zeroed once: radix nodes start empty, B+-tree masks read all F
	 * slots, never uninitialised ones. */
	if (p)
		memset(p, 0, sz);
	return p;
}

static inline void pool_push(struct rindex_pool *p, unsigned k, void *blk)
{
	*(void **)blk = p->head[k];
	p->head[k] = blk;
	p->n[k]++;
	p->total++;
}

static inline void *pool_pop(struct rindex_pool *p, unsigned k)
{
	void *blk = p->head[k];

	if (blk) {
		p->head[k] = *(void **)blk;
		p->n[k]--;
		p->total--;
		*(void **)blk = NULL; /* radix nodes must come back all-NULL */
	}
	return blk;
}

static void pool_free_all(struct rindex_pool *p)
{
	unsigned k;
	void *blk;

	for (k = 0; k < K_N; k++)
		while ((blk = pool_pop(p, k)))
			free(blk);
}

/*
 * The calling thread's spare pool: a heap object holding at least one
 * insert's worst case (after a top-up). A reserve takes the whole pool
 * (one pointer move) and hands it back on release; freed garbage refills
 * it. Per thread, not per index (a block is only memory), and reachable
 * from one place at a time (this thread's slot or one reserve): no lock,
 * no atomic. Freed when the thread exits.
 */
static __thread struct rindex_pool *tls_pool
	__attribute__((tls_model("initial-exec")));
static __thread bool tls_registered __attribute__((tls_model("initial-exec")));
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static int tls_key_err;

static void tls_dtor(void *arg)
{
	struct rindex_pool *p = tls_pool;

	(void)arg;
	tls_pool = NULL;
	if (p) {
		pool_free_all(p);
		free(p);
	}
}

static void tls_key_init(void)
{
	tls_key_err = pthread_key_create(&tls_key, tls_dtor);
}

static void tls_register(void)
{
	pthread_once(&tls_once, tls_key_init);
	/* The value only makes the destructor run; without a key the pool
	 * is simply not freed at thread exit. */
	if (!tls_key_err)
		pthread_setspecific(tls_key, &tls_registered);
	tls_registered = true;
}

/* Hand the pool @p to the thread's slot, or free it if the slot is full
 * (a second reserve was taken while the first was out). */
static void pool_park(struct rindex_pool *p)
{
	if (unlikely(!tls_registered))
		tls_register(); /* released on another thread than taken */
	if (!tls_pool) {
		tls_pool = p;
		return;
	}
	pool_free_all(p);
	free(p);
}

/* Make @p hold one insert's worst case. Returns 0 or -ENOMEM. */
static int pool_top_up(struct rindex_pool *p)
{
	unsigned k;
	void *blk;

	for (k = 0; k < K_N; k++)
		while (p->n[k] < kind_need[k]) {
			if (!(blk = blk_alloc(k)))
				return -ENOMEM;
			pool_push(p, k, blk);
		}
	p->dirty = 0;
	return 0;
}

int rindex_reserve(struct rindex_reserve *r, struct rindex *idx)
{
	struct rindex_pool *p = tls_pool;

	r->idx = idx;
	r->pool = NULL;
	if (likely(p != NULL)) {
		tls_pool = NULL;
	} else {
		if (!tls_registered)
			tls_register();
		if (!(p = calloc(1, sizeof(*p))))
			return -ENOMEM;
		p->dirty = 1;
	}
	if (unlikely(p->dirty) && pool_top_up(p)) {
		pool_park(p); /* what was made stays for the next try */
		return -ENOMEM;
	}
	r->pool = p;
	return 0;
}

void rindex_reserve_release(struct rindex_reserve *r)
{
	struct rindex_pool *p = r->pool;

	r->pool = NULL;
	if (p)
		pool_park(p);
}

void rindex_take_garbage(struct rindex *idx, struct rindex_garbage *g)
{
	g->pool.total = idx->garbage.total;
	if (likely(!g->pool.total))
		return;
	g->pool = idx->garbage;
	memset(&idx->garbage, 0, sizeof(idx->garbage));
}

void rindex_free_garbage(struct rindex *idx, struct rindex_garbage *g)
{
	struct rindex_pool *tp = tls_pool;
	unsigned k;
	void *blk;

	(void)idx;
	if (likely(!g->pool.total))
		return;
	/* Into the thread's pool up to its caps (not counted as a top-up:
	 * kinds taken by inserts may still be short), the rest freed. */
	for (k = 0; k < K_N; k++)
		while ((blk = pool_pop(&g->pool, k))) {
			if (tp && tp->n[k] < POOL_CAP(k))
				pool_push(tp, k, blk);
			else
				free(blk);
		}
}

/* A block for an insert: garbage first (memory already ours), then the
 * reserve. Under the caller's lock: never allocates. */
static void *take_blk(struct rindex *idx, struct rindex_reserve *r, unsigned k)
{
	void *blk = pool_pop(&idx->garbage, k);

	if (!blk) {
		rindex_assert(r && r->pool && r->pool->n[k]);
		blk = pool_pop(r->pool, k);
		r->pool->dirty = 1;
	}
	idx->nblk[k]++;
	return blk;
}

static void put_garbage(struct rindex *idx, unsigned k, void *blk)
{
	idx->nblk[k]--;
	pool_push(&idx->garbage, k, blk);
}

/* ------------------------------------------------------------------ */
/* keys                                                               */
/* ------------------------------------------------------------------ */

static inline void *key_owner(const struct rindex_node *nd, unsigned i,
			      bool leaf)
{
	return leaf ? nd->ptr[i] : nd->kowner[i];
}

/* (s1, o1) < (s2, o2) in the index order. */
static inline bool key_less(uint64_t s1, const void *o1, uint64_t s2,
			    const void *o2)
{
	return s1 < s2 || (s1 == s2 && (uintptr_t)o1 < (uintptr_t)o2);
}

/* Last slot whose key is <= (s, o), or -1 when all keys are greater. */
static int route(const struct rindex_node *nd, uint64_t s, const void *o)
{
	int i = (int)nd->n - 1;

	while (i >= 0 && key_less(s, o, nd->start[i], nd->kowner[i]))
		i--;
	return i;
}

/* Largest `last` among the slots of @nd. */
static uint64_t node_max(const struct rindex_node *nd)
{
	uint64_t m = 0;
	unsigned i;

	for (i = 0; i < nd->n; i++)
		if (nd->last[i] > m)
			m = nd->last[i];
	return m;
}

/* Make inner slot @i of @p describe its child @c exactly. */
static void refresh_slot(struct rindex_node *p, unsigned i,
			 const struct rindex_node *c, bool cleaf)
{
	p->start[i] = c->start[0];
	p->kowner[i] = key_owner(c, 0, cleaf);
	p->last[i] = node_max(c);
}

/* ------------------------------------------------------------------ */
/* slot moves                                                         */
/* ------------------------------------------------------------------ */

/* Copy @cnt slots src[s..] to dst[d..] (ranges may overlap in one node). */
static void move_slots(struct rindex_node *dst, unsigned d,
		       const struct rindex_node *src, unsigned s, unsigned cnt,
		       bool leaf)
{
	if (!cnt)
		return;
	memmove(&dst->start[d], &src->start[s], cnt * sizeof(uint64_t));
	memmove(&dst->last[d], &src->last[s], cnt * sizeof(uint64_t));
	memmove(&dst->ptr[d], &src->ptr[s], cnt * sizeof(void *));
	if (!leaf)
		memmove(&dst->kowner[d], &src->kowner[s], cnt * sizeof(void *));
}

static void set_slot(struct rindex_node *nd, unsigned i, uint64_t start,
		     void *kown, uint64_t last, void *ptr, bool leaf)
{
	nd->start[i] = start;
	nd->last[i] = last;
	nd->ptr[i] = ptr;
	if (!leaf)
		nd->kowner[i] = kown;
}

/* Open slot @p of a non-full node and fill it. */
static void insert_slot(struct rindex_node *nd, unsigned p, uint64_t start,
			void *kown, uint64_t last, void *ptr, bool leaf)
{
	rindex_assert(nd->n < F && p <= nd->n);
	move_slots(nd, p + 1, nd, p, nd->n - p, leaf);
	set_slot(nd, p, start, kown, last, ptr, leaf);
	nd->n++;
}

static void delete_slot(struct rindex_node *nd, unsigned p, bool leaf)
{
	rindex_assert(p < nd->n);
	move_slots(nd, p, nd, p + 1, nd->n - p - 1, leaf);
	nd->n--;
}

/*
 * Insert a slot at @p of full node @nd, moving the upper part into a new
 * node @nn. F + 1 slots are split evenly, except that an insert at either
 * end (ascending or descending registration order) leaves the node it
 * grows away from fuller (9/7): sequential runs then fill leaves to 60%
 * rather than 50%, while every node keeps >= RINDEX_MIN.
 */
static void split_insert(struct rindex_node *nd, struct rindex_node *nn,
			 unsigned p, uint64_t start, void *kown, uint64_t last,
			 void *ptr, bool leaf)
{
	unsigned total = F + 1, nl;

	if (p == F)
		nl = total - RINDEX_MIN;
	else if (p == 0)
		nl = RINDEX_MIN;
	else
		nl = total / 2;
	if (p < nl) {
		/* New slot goes left: move nd[nl-1 ..] right first. */
		move_slots(nn, 0, nd, nl - 1, F - (nl - 1), leaf);
		nn->n = F - (nl - 1);
		nd->n = nl - 1;
		insert_slot(nd, p, start, kown, last, ptr, leaf);
	} else {
		move_slots(nn, 0, nd, nl, F - nl, leaf);
		nn->n = F - nl;
		nd->n = nl;
		insert_slot(nn, p - nl, start, kown, last, ptr, leaf);
	}
	rindex_assert(nd->n == nl && nn->n == total - nl);
}

/*
 * Child @i of @p (at the level above @leaf children) has fewer than
 * RINDEX_MIN slots: merge it with a neighbour if both fit in one node,
 * else share the neighbours' slots evenly. Refreshes the parent's slots.
 */
static void rebalance(struct rindex *idx, struct rindex_node *p, unsigned i,
		      bool leaf)
{
	unsigned j = i > 0 ? i - 1 : i; /* pair (j, j + 1) */
	struct rindex_node *a = p->ptr[j], *b = p->ptr[j + 1];
	unsigned total = a->n + b->n, nl;

	rindex_assert(p->n >= 2);
	if (total <= F) {
		move_slots(a, a->n, b, 0, b->n, leaf);
		a->n = total;
		b->n = 0;
		put_garbage(idx, leaf ? K_BTLEAF : K_BTINNER, b);
		delete_slot(p, j + 1, false);
		refresh_slot(p, j, a, leaf);
		return;
	}
	nl = total / 2;
	if (a->n > nl) { /* a gives its top to b's front */
		unsigned m = a->n - nl;

		move_slots(b, m, b, 0, b->n, leaf);
		move_slots(b, 0, a, nl, m, leaf);
		b->n += m;
		a->n = nl;
	} else { /* b gives its front to a's top */
		unsigned m = nl - a->n;

		move_slots(a, a->n, b, 0, m, leaf);
		move_slots(b, 0, b, m, b->n - m, leaf);
		a->n = nl;
		b->n -= m;
	}
	refresh_slot(p, j, a, leaf);
	refresh_slot(p, j + 1, b, leaf);
}

/*
 * Slots of @nd that may hold an overlap of [qs, ql]: start <= ql and
 * last (maxlast) >= qs. Runs over all F slots without branches (no
 * mispredictions on the data); slots past n are masked off. gcc -O2 does
 * not vectorise it; explicit AVX-512 compares are a possible next step.
 */
static inline uint32_t node_mask(const struct rindex_node *nd, uint64_t qs,
				 uint64_t ql)
{
	uint32_t m = 0;
	unsigned i;

	for (i = 0; i < F; i++)
		m |= (uint32_t)((nd->start[i] <= ql) & (nd->last[i] >= qs))
		     << i;
	return m & ((UINT32_C(1) << nd->n) - 1);
}

/* ------------------------------------------------------------------ */
/* B+-tree: insert, remove, lookup                                    */
/* ------------------------------------------------------------------ */

static struct rindex_node *take_node(struct rindex *idx,
				     struct rindex_reserve *r, bool leaf)
{
	struct rindex_node *nd = take_blk(idx, r, leaf ? K_BTLEAF : K_BTINNER);

	nd->n = 0;
	return nd;
}

/* Is (start, owner) in the B+-tree? */
__attribute__((noinline)) static bool
bt_contains(const struct rindex_bt *t, uint64_t start, const void *owner)
{
	const struct rindex_node *nd = t->root;
	unsigned lv, p;
	int i;

	if (!nd)
		return false;
	for (lv = 0; lv + 1 < t->height; lv++) {
		i = route(nd, start, owner);
		if (i < 0)
			return false;
		nd = nd->ptr[i];
	}
	for (p = 0; p < nd->n; p++)
		if (nd->start[p] == start && nd->ptr[p] == owner)
			return true;
	return false;
}

__attribute__((noinline)) static int bt_insert(struct rindex *idx,
					       struct rindex_reserve *r,
					       uint64_t start, uint64_t last,
					       void *owner)
{
	struct rindex_bt *t = &idx->big;
	struct rindex_node *path[RINDEX_MAX_HEIGHT], *nd, *nn, *root;
	unsigned slot[RINDEX_MAX_HEIGHT], p, lv, h = t->height;
	uint64_t s;
	void *kown, *ptr;
	int i;
	bool leaf;

	if (!t->root) {
		nd = take_node(idx, r, true);
		set_slot(nd, 0, start, NULL, last, owner, true);
		nd->n = 1;
		t->root = nd;
		t->height = 1;
		t->count = 1;
		return 0;
	}
	/* Read-only descent first: an -EEXIST must leave nothing changed. */
	nd = t->root;
	for (lv = 0; lv + 1 < h; lv++) {
		i = route(nd, start, owner);
		path[lv] = nd;
		slot[lv] = i < 0 ? 0 : (unsigned)i;
		nd = nd->ptr[slot[lv]];
	}
	for (p = 0;
	     p < nd->n && !key_less(start, owner, nd->start[p], nd->ptr[p]);
	     p++)
		if (nd->start[p] == start && nd->ptr[p] == owner)
			return -EEXIST;

	/* The new interval is below every slot of the path. A new minimum
	 * (leaf position 0) becomes the key of the slot-0 chain above. */
	for (lv = 0; lv + 1 < h; lv++)
		if (path[lv]->last[slot[lv]] < last)
			path[lv]->last[slot[lv]] = last;
	if (p == 0)
		for (lv = h - 1; lv-- > 0;) {
			path[lv]->start[slot[lv]] = start;
			path[lv]->kowner[slot[lv]] = owner;
			if (slot[lv])
				break;
		}
	t->count++;

	/* Insert into the leaf; a full node splits and passes its new
	 * right half up as one more slot of the parent. */
	s = start;
	kown = owner;
	ptr = owner;
	leaf = true;
	for (lv = h - 1;; lv--) {
		if (nd->n < F) {
			insert_slot(nd, p, s, kown, last, ptr, leaf);
			return 0;
		}
		nn = take_node(idx, r, leaf);
		split_insert(nd, nn, p, s, kown, last, ptr, leaf);
		/* The slot for nn, to insert one level up. */
		s = nn->start[0];
		kown = key_owner(nn, 0, leaf);
		last = node_max(nn);
		ptr = nn;
		if (lv == 0) {
			root = take_node(idx, r, false);
			root->ptr[0] = nd;
			refresh_slot(root, 0, nd, leaf);
			set_slot(root, 1, s, kown, last, ptr, false);
			root->n = 2;
			t->root = root;
			t->height++;
			rindex_assert(t->height <= RINDEX_MAX_HEIGHT);
			return 0;
		}
		/* nd lost its upper half: its maxlast may have dropped. */
		path[lv - 1]->last[slot[lv - 1]] = node_max(nd);
		p = slot[lv - 1] + 1;
		nd = path[lv - 1];
		leaf = false;
	}
}

__attribute__((noinline)) static int
bt_remove(struct rindex *idx, uint64_t start, uint64_t last, void *owner)
{
	struct rindex_bt *t = &idx->big;
	struct rindex_node *path[RINDEX_MAX_HEIGHT], *nd, *root;
	unsigned slot[RINDEX_MAX_HEIGHT], p, lv, h = t->height;
	int i;

	if (!t->root)
		return -ENOENT;
	nd = t->root;
	for (lv = 0; lv + 1 < h; lv++) {
		i = route(nd, start, owner);
		if (i < 0)
			return -ENOENT;
		path[lv] = nd;
		slot[lv] = (unsigned)i;
		nd = nd->ptr[i];
	}
	for (p = 0; p < nd->n; p++)
		if (nd->start[p] == start && nd->ptr[p] == owner)
			break;
	if (p == nd->n || nd->last[p] != last)
		return -ENOENT;
	delete_slot(nd, p, true);
	t->count--;

	/* Bottom-up: refresh each parent slot (key and maxlast may have
	 * changed), rebalancing a child that fell below the minimum. */
	for (lv = h - 1; lv-- > 0;) {
		bool cleaf = lv == h - 2;

		if (nd->n < RINDEX_MIN)
			rebalance(idx, path[lv], slot[lv], cleaf);
		else
			refresh_slot(path[lv], slot[lv], nd, cleaf);
		nd = path[lv];
	}
	root = t->root;
	if (h == 1 && !root->n) {
		put_garbage(idx, K_BTLEAF, root);
		t->root = NULL;
		t->height = 0;
	} else if (h > 1 && root->n == 1) {
		t->root = root->ptr[0];
		put_garbage(idx, K_BTINNER, root);
		t->height--;
	}
	return 0;
}

static void bt_free(struct rindex_node *nd, unsigned levels)
{
	unsigned i;

	if (levels > 1)
		for (i = 0; i < nd->n; i++)
			bt_free(nd->ptr[i], levels - 1);
	free(nd);
}

/* ------------------------------------------------------------------ */
/* radix front                                                        */
/* ------------------------------------------------------------------ */

static inline bool is_small(uint64_t start, uint64_t last)
{
	return start < RLIMIT && last - start < SMAX;
}

/* Slot @i of the leaf @lp, dense or sparse; NULL if a sparse one lacks
 * it. */
static inline struct rslot *leaf_slot(void *lp, unsigned i)
{
	struct rmini *m;
	unsigned j;

	if (likely(!is_mini(lp)))
		return &((struct rleaf *)lp)->s[i];
	m = as_mini(lp);
	for (j = 0; j < m->n; j++)
		if (m_idx(m)[j] == i)
			return &m_s(m)[j];
	return NULL;
}

/* The slot of bucket number @bk, or NULL if its radix path is missing;
 * *pn2 the inner node above its leaf. */
static inline struct rslot *radix_slot(const struct rindex *idx, uint64_t bk,
				       struct rinner **pn2)
{
	const struct rroot *n0 = idx->radix;
	struct rinner *n1, *n2;
	struct rslot *sl;
	void *lp;

	if (!n0 || !(n1 = n0->c[bk >> SH0]) ||
	    !(n2 = n1->c[(bk >> SH1) & (IFAN - 1)]) ||
	    !(lp = n2->c[(bk >> SH2) & (IFAN - 1)]) ||
	    !(sl = leaf_slot(lp, bk & (LFAN - 1))))
		return NULL;
	*pn2 = n2;
	return sl;
}

/* Does a slot of the leaves holding buckets @lo .. @hi (at most two
 * leaves) reach past its bucket? */
static inline bool radix_cross(const struct rindex *idx, uint64_t lo,
			       uint64_t hi)
{
	const struct rroot *n0 = idx->radix;
	const struct rinner *n1, *n2;
	uint64_t bk;

	for (bk = lo;; bk = hi) {
		if ((n1 = n0->c[bk >> SH0]) &&
		    (n2 = n1->c[(bk >> SH1) & (IFAN - 1)]) &&
		    n2->x[(bk >> SH2) & (IFAN - 1)])
			return true;
		if (bk == hi || (bk >> LB) == (hi >> LB))
			return false;
	}
}

/* Does the slot hold an interval reaching past its bucket? */
static inline bool slot_cross(const struct rslot *sl)
{
	return sl->max >= BSIZE;
}

/* The slot of @bk, creating the missing radix nodes from garbage/@r;
 * *pn2 the inner node above its leaf. */
static struct rslot *radix_make_slot(struct rindex *idx,
				     struct rindex_reserve *r, uint64_t bk,
				     struct rinner **pn2)
{
	struct rroot *n0;
	struct rinner *n1, *n2;
	struct rleaf *lf;
	struct rmini *m, *nm;
	struct rslot *ms;
	unsigned i, j;
	uint8_t *mi;
	void **pp;

	if (!idx->radix)
		idx->radix = take_blk(idx, r, K_RROOT);
	n0 = idx->radix;
	pp = &n0->c[bk >> SH0];
	if (!*pp) {
		*pp = take_blk(idx, r, K_RINNER);
		n0->nc++;
	}
	n1 = *pp;
	pp = &n1->c[(bk >> SH1) & (IFAN - 1)];
	if (!*pp) {
		*pp = take_blk(idx, r, K_RINNER);
		n1->nc++;
	}
	n2 = *pp;
	*pn2 = n2;
	pp = &n2->c[(bk >> SH2) & (IFAN - 1)];
	i = bk & (LFAN - 1);
	if (!*pp) {
		n2->nc++;
		m = take_blk(idx, r, K_M0);
		m->n = 0;
		m->kind = K_M0;
		*pp = (void *)((uintptr_t)m | LEAF_MINI);
	}
	if (!is_mini(*pp))
		return &((struct rleaf *)*pp)->s[i];
	/* Sparse leaf: the slot is known to be missing (else the caller
	 * would have found it). Open it in order, growing the leaf into
	 * the next class, or making it dense, when full. */
	m = as_mini(*pp);
	if (m->n == MCAP(m->kind)) {
		if (m->kind == K_M2) {
			/* all-empty: fresh or garbage */
			lf = take_blk(idx, r, K_RLEAF);
			for (j = 0; j < m->n; j++)
				lf->s[m_idx(m)[j]] = m_s(m)[j];
			put_garbage(idx, m->kind, m);
			*pp = lf;
			return &lf->s[i];
		}
		nm = take_blk(idx, r, m->kind + 1u);
		nm->n = m->n;
		nm->kind = (uint8_t)(m->kind + 1u);
		memcpy(m_idx(nm), m_idx(m), m->n);
		memcpy(m_s(nm), m_s(m), m->n * sizeof(struct rslot));
		put_garbage(idx, m->kind, m);
		m = nm;
		*pp = (void *)((uintptr_t)m | LEAF_MINI);
	}
	mi = m_idx(m);
	ms = m_s(m);
	for (j = 0; j < m->n && mi[j] < i; j++)
		;
	rindex_assert(j == m->n || mi[j] != i);
	memmove(&mi[j + 1], &mi[j], m->n - j);
	memmove(&ms[j + 1], &ms[j], (m->n - j) * sizeof(ms[0]));
	mi[j] = (uint8_t)i;
	memset(&ms[j], 0, sizeof(ms[j]));
	m->n++;
	return &ms[j];
}

/*
 * Where (off, o) goes in @b: the index of the first entry whose key is not
 * below it; *found tells whether that entry is (off, o) itself.
 */
static inline unsigned bucket_pos(const struct rindex_bucket *b, boff_t off,
				  const void *o, bool *found)
{
	unsigned cap = BCAP(b->kind), i, n = b->n, p = 0;
	const boff_t *offs = b_off(b);
	void *const *own = b_own(b, cap);

	/* Sorted: the position is the number of smaller starts, counted
	 * without data-dependent branches (it is random); the owner array
	 * is only read on equal starts. */
	for (i = 0; i < n; i++)
		p += offs[i] < off;
	while (p < n && offs[p] == off && (uintptr_t)own[p] < (uintptr_t)o)
		p++;
	*found = p < n && offs[p] == off && own[p] == o;
	return p;
}

/* Open entry @p of a bucket with room and fill it. */
static inline void bucket_put(struct rindex_bucket *b, unsigned p, boff_t off,
			      boff_t len, void *o)
{
	unsigned cap = BCAP(b->kind), i;
	boff_t *offs = b_off(b), *lens = b_len(b, cap);
	void **own = b_own(b, cap);

	rindex_assert(b->n < cap && p <= b->n);
	/* Short moves (a bucket holds a few entries): plain loops beat
	 * three memmove calls. */
	for (i = b->n; i > p; i--) {
		offs[i] = offs[i - 1];
		lens[i] = lens[i - 1];
		own[i] = own[i - 1];
	}
	offs[p] = off;
	lens[p] = len;
	own[p] = o;
	b->n++;
}

/* Copy @b's entries into the larger @nb (a fresh block of kind k + 1). */
static void bucket_copy(struct rindex_bucket *nb, const struct rindex_bucket *b)
{
	unsigned cap = BCAP(b->kind), ncap = BCAP(nb->kind), n = b->n;

	memcpy(b_off(nb), b_off(b), n * sizeof(boff_t));
	memcpy(b_len(nb, ncap), b_len(b, cap), n * sizeof(boff_t));
	memcpy(b_own(nb, ncap), b_own(b, cap), n * sizeof(void *));
	nb->n = (uint16_t)n;
}

/* Largest last offset of @b's entries. */
static uint32_t bucket_maxoff(const struct rindex_bucket *b)
{
	unsigned cap = BCAP(b->kind), i;
	const boff_t *offs = b_off(b), *lens = b_len(b, cap);
	uint32_t m = 0, l;

	for (i = 0; i < b->n; i++) {
		l = (uint32_t)offs[i] + lens[i];
		if (l > m)
			m = l;
	}
	return m;
}

/* Non-NULL children of a radix node, counted (rindex_check and debug
 * assertions; the remove path keeps nc instead). */
static unsigned inner_count(void *const *c, unsigned fan)
{
	unsigned i, n = 0;

	for (i = 0; i < fan; i++)
		n += c[i] != NULL;
	return n;
}

static bool leaf_empty(const struct rleaf *lf)
{
	unsigned i;

	for (i = 0; i < LFAN; i++)
		if (lf->s[i].n)
			return false;
	return true;
}

/* Insert into the bucket of @start; @sl its slot if its path exists, @p
 * the position in its block if it has one. The key is known absent. */
static void small_insert(struct rindex *idx, struct rindex_reserve *r,
			 struct rslot *sl, struct rinner *n2, unsigned p,
			 uint64_t start, uint64_t last, void *owner)
{
	uint64_t base = start & ~(BSIZE - 1);
	uint32_t off = (uint32_t)(start - base), ml = (uint32_t)(last - base);
	uint32_t e = e_make(off, ml - off);
	unsigned i2 = (unsigned)(start >> (BB + SH2)) & (IFAN - 1);
	struct rindex_bucket *b, *nb;

	if (!sl)
		sl = radix_make_slot(idx, r, start >> BB, &n2);
	idx->nsmall++;
	/* The slot starts reaching past its bucket (max only grows here). */
	if (ml >= BSIZE && !slot_cross(sl))
		n2->x[i2]++;
	if (sl->max < ml)
		sl->max = ml;
	switch (sl->n) {
	case 0:
		sl->p[0] = owner;
		sl->e[0] = e;
		sl->n = 1;
		return;
	case 1:
		if (key_less(off, owner, E_OFF(sl->e[0]), sl->p[0])) {
			sl->p[1] = sl->p[0];
			sl->e[1] = sl->e[0];
			sl->p[0] = owner;
			sl->e[0] = e;
		} else {
			sl->p[1] = owner;
			sl->e[1] = e;
		}
		sl->n = 2;
		return;
	case 2:
		/* Third interval: all three move to a block of the smallest
		 * class, in key order. */
		b = take_blk(idx, r, K_B0);
		b->kind = K_B0;
		b->n = 0;
		bucket_put(b, 0, (boff_t)E_OFF(sl->e[0]),
			   (boff_t)E_LEN(sl->e[0]), sl->p[0]);
		bucket_put(b, 1, (boff_t)E_OFF(sl->e[1]),
			   (boff_t)E_LEN(sl->e[1]), sl->p[1]);
		p = key_less(off, owner, E_OFF(sl->e[0]), sl->p[0]) ? 0 :
		    key_less(off, owner, E_OFF(sl->e[1]), sl->p[1]) ? 1 :
								      2;
		bucket_put(b, p, (boff_t)off, (boff_t)(ml - off), owner);
		sl->p[0] = b;
		sl->p[1] = NULL;
		sl->e[0] = sl->e[1] = 0;
		sl->n = SL_BLOCK;
		return;
	}
	b = sl->p[0];
	if (b->n == BCAP(b->kind)) {
		rindex_assert(b->kind < K_B4);
		nb = take_blk(idx, r, b->kind + 1u);
		nb->kind = (uint16_t)(b->kind + 1u);
		bucket_copy(nb, b);
		put_garbage(idx, b->kind, b);
		sl->p[0] = b = nb;
	}
	bucket_put(b, p, (boff_t)off, (boff_t)(ml - off), owner);
}

/* Remove (start, last, owner) from its bucket: 0, -ENOENT, or 1 when the
 * key is not in the bucket (it may be in the B+-tree). */
static int small_remove(struct rindex *idx, uint64_t start, uint64_t last,
			void *owner)
{
	uint64_t bk = start >> BB, base = start & ~(BSIZE - 1);
	uint32_t off = (uint32_t)(start - base), ml = (uint32_t)(last - base);
	unsigned i2 = (unsigned)(bk >> SH2) & (IFAN - 1);
	struct rroot *n0 = idx->radix;
	struct rinner *n1, *n2;
	struct rslot *sl;
	struct rindex_bucket *b;
	struct rmini *mi;
	unsigned p, cap, m, j;
	boff_t *offs, *lens;
	void **own, *lp;
	bool found, was;

	if (!n0 || !(n1 = n0->c[bk >> SH0]) ||
	    !(n2 = n1->c[(bk >> SH1) & (IFAN - 1)]) || !(lp = n2->c[i2]) ||
	    !(sl = leaf_slot(lp, bk & (LFAN - 1))) || !sl->n)
		return 1;
	was = slot_cross(sl);
	if (sl->n <= 2) {
		for (j = 0; j < sl->n; j++)
			if (sl->p[j] == owner && E_OFF(sl->e[j]) == off)
				break;
		if (j == sl->n)
			return 1;
		/* The key is here and nowhere else: a wrong last is a
		 * miss. */
		if (E_OFF(sl->e[j]) + E_LEN(sl->e[j]) != ml)
			return -ENOENT;
		idx->nsmall--;
		if (sl->n == 2) {
			sl->p[0] = sl->p[1 - j];
			sl->e[0] = sl->e[1 - j];
			sl->p[1] = NULL;
			sl->e[1] = 0;
			sl->n = 1;
			sl->max = E_OFF(sl->e[0]) + E_LEN(sl->e[0]);
			if (was && !slot_cross(sl))
				n2->x[i2]--;
			return 0;
		}
		memset(sl, 0, sizeof(*sl));
		if (was)
			n2->x[i2]--;
		goto prune;
	}
	b = sl->p[0];
	p = bucket_pos(b, (boff_t)off, owner, &found);
	if (!found)
		return 1;
	cap = BCAP(b->kind);
	offs = b_off(b);
	lens = b_len(b, cap);
	own = b_own(b, cap);
	if ((uint32_t)offs[p] + lens[p] != ml)
		return -ENOENT;
	idx->nsmall--;
	m = b->n - 1u;
	for (; p < m; p++) {
		offs[p] = offs[p + 1];
		lens[p] = lens[p + 1];
		own[p] = own[p + 1];
	}
	b->n--;
	if (b->n >= 3) {
		if (ml == sl->max)
			sl->max = bucket_maxoff(b);
	} else {
		/* Two left: back inline; the block becomes garbage (not
		 * freed: we may be under the caller's lock). */
		sl->p[0] = own[0];
		sl->p[1] = own[1];
		sl->e[0] = e_make(offs[0], lens[0]);
		sl->e[1] = e_make(offs[1], lens[1]);
		sl->n = 2;
		sl->max = bucket_maxoff(b);
		put_garbage(idx, b->kind, b);
	}
	if (was && !slot_cross(sl))
		n2->x[i2]--;
	return 0;
prune:
	/* The slot is empty: a sparse leaf drops it. Every radix node left
	 * empty becomes garbage. */
	if (is_mini(lp)) {
		mi = as_mini(lp);
		j = (unsigned)(sl - m_s(mi));
		memmove(&m_idx(mi)[j], &m_idx(mi)[j + 1], mi->n - j - 1u);
		memmove(&m_s(mi)[j], &m_s(mi)[j + 1],
			(mi->n - j - 1u) * sizeof(struct rslot));
		if (--mi->n)
			return 0;
		n2->c[i2] = NULL;
		put_garbage(idx, mi->kind, mi);
	} else {
		if (!leaf_empty(lp))
			return 0;
		n2->c[i2] = NULL;
		put_garbage(idx, K_RLEAF, lp);
	}
	rindex_assert(n2->nc > 0 && n1->nc > 0 && n0->nc > 0);
	if (--n2->nc)
		return 0;
	rindex_assert(!inner_count(n2->c, IFAN));
	n1->c[(bk >> SH1) & (IFAN - 1)] = NULL;
	put_garbage(idx, K_RINNER, n2);
	if (--n1->nc)
		return 0;
	rindex_assert(!inner_count(n1->c, IFAN));
	n0->c[bk >> SH0] = NULL;
	put_garbage(idx, K_RINNER, n1);
	if (--n0->nc)
		return 0;
	rindex_assert(!inner_count(n0->c, RFAN));
	idx->radix = NULL;
	put_garbage(idx, K_RROOT, n0);
	return 0;
}

static void radix_free(struct rroot *n0)
{
	unsigned i, j, k, s;

	if (!n0)
		return;
	for (i = 0; i < RFAN; i++) {
		struct rinner *n1 = n0->c[i];

		if (!n1)
			continue;
		for (j = 0; j < IFAN; j++) {
			struct rinner *n2 = n1->c[j];

			if (!n2)
				continue;
			for (k = 0; k < IFAN; k++) {
				void *lp = n2->c[k];
				struct rleaf *lf = lp;
				struct rmini *m = as_mini(lp);

				if (!lp)
					continue;
				if (is_mini(lp)) {
					for (s = 0; s < m->n; s++)
						if (m_s(m)[s].n == SL_BLOCK)
							free(m_s(m)[s].p[0]);
					free(m);
					continue;
				}
				for (s = 0; s < LFAN; s++)
					if (lf->s[s].n == SL_BLOCK)
						free(lf->s[s].p[0]);
				free(lf);
			}
			free(n2);
		}
		free(n1);
	}
	free(n0);
}

/* ------------------------------------------------------------------ */
/* public: init, destroy, insert, remove                              */
/* ------------------------------------------------------------------ */

int rindex_init(struct rindex *idx)
{
	memset(idx, 0, sizeof(*idx));
	return 0;
}

void rindex_destroy(struct rindex *idx)
{
	radix_free(idx->radix);
	if (idx->big.root)
		bt_free(idx->big.root, idx->big.height);
	pool_free_all(&idx->garbage);
	memset(idx, 0, sizeof(*idx));
}

int rindex_insert(struct rindex *idx, struct rindex_reserve *r, uint64_t start,
		  uint64_t last, void *owner)
{
	struct rslot *sl = NULL;
	struct rinner *n2 = NULL;
	struct rindex_bucket *b = NULL;
	unsigned p = 0;
	bool found;
	int err;

	if (start > last || !owner)
		return -EINVAL;
	rindex_assert(!r || r->idx == idx);
	/* Read-only checks first: an -EEXIST must leave nothing changed.
	 * The key (start, owner) may sit in the bucket of start whatever
	 * the interval's length. */
	if (likely(start < RLIMIT) &&
	    (sl = radix_slot(idx, start >> BB, &n2)) && sl->n) {
		uint32_t off = (uint32_t)(start & (BSIZE - 1));

		if (sl->n <= 2) {
			if ((sl->p[0] == owner && E_OFF(sl->e[0]) == off) ||
			    (sl->p[1] == owner && E_OFF(sl->e[1]) == off))
				return -EEXIST;
		} else {
			b = sl->p[0];
			p = bucket_pos(b, (boff_t)off, owner, &found);
			if (found)
				return -EEXIST;
		}
	}
	if (unlikely(!is_small(start, last) || (b && b->n == BCAP_MAX))) {
		/* Big, or its bucket is at the largest class: B+-tree
		 * (which checks its own duplicates). */
		err = bt_insert(idx, r, start, last, owner);
		if (err)
			return err;
	} else {
		if (unlikely(idx->big.root != NULL) &&
		    bt_contains(&idx->big, start, owner))
			return -EEXIST;
		small_insert(idx, r, sl, n2, p, start, last, owner);
	}
	idx->count++;
	return 0;
}

int rindex_remove(struct rindex *idx, uint64_t start, uint64_t last,
		  void *owner)
{
	int err = 1;

	if (start > last)
		return -ENOENT;
	if (likely(is_small(start, last)))
		err = small_remove(idx, start, last, owner);
	if (err > 0)
		err = bt_remove(idx, start, last, owner);
	if (!err)
		idx->count--;
	return err;
}

/* ------------------------------------------------------------------ */
/* queries                                                            */
/* ------------------------------------------------------------------ */

/*
 * The first radix leaf holding a key in [*bcp, bend]'s leaves; *bcp moves
 * up to where that leaf's search starts. NULL when none. Skips a missing
 * subtree at a time.
 */
static const void *find_leaf(const struct rroot *root, uint64_t *bcp,
			     uint64_t bend)
{
	uint64_t bc = *bcp;
	const struct rinner *n1, *n2;
	const void *lf;

	while (bc <= bend) {
		if (!(n1 = root->c[bc >> SH0])) {
			bc = ((bc >> SH0) + 1) << SH0;
			continue;
		}
		if (!(n2 = n1->c[(bc >> SH1) & (IFAN - 1)])) {
			bc = ((bc >> SH1) + 1) << SH1;
			continue;
		}
		if (!(lf = n2->c[(bc >> SH2) & (IFAN - 1)])) {
			bc = ((bc >> SH2) + 1) << SH2;
			continue;
		}
		*bcp = bc;
		return lf;
	}
	return NULL;
}

/* The next small interval overlapping the query (owner, *sp its start),
 * or NULL. Buckets in address order, each in (start, owner) order. */
static inline void *small_next(struct rindex_iter *it, uint64_t *sp)
{
	const struct rindex_bucket *b;
	const struct rleaf *lf;
	const struct rmini *m;
	const struct rslot *sl;
	const void *lp;
	uint64_t bc, base;
	unsigned j;

	for (;;) {
		if ((sl = it->isl)) {
			/* The two inline intervals of a slot. */
			for (j = it->bi; j < sl->n; j++) {
				uint64_t s = it->bbase + E_OFF(sl->e[j]);

				if (s > it->ql)
					break;
				if (s + E_LEN(sl->e[j]) >= it->qs) {
					it->bi = j + 1;
					*sp = s;
					return sl->p[j];
				}
			}
			it->isl = NULL;
		}
		if ((b = it->bk)) {
			unsigned cap = BCAP(b->kind), i, n = b->n;
			const boff_t *off = b_off(b), *len = b_len(b, cap);

			for (i = it->bi; i < n; i++) {
				uint64_t s = it->bbase + off[i];

				if (s > it->ql)
					break;
				if (s + len[i] >= it->qs) {
					it->bi = i + 1;
					*sp = s;
					return b_own(b, cap)[i];
				}
			}
			it->bk = NULL;
		}
		for (;;) {
			uint64_t stop;

			bc = it->bcur;
			if (bc > it->bend)
				return NULL;
			if (!(lp = it->rleaf)) {
				lp = find_leaf(it->root, &bc, it->bend);
				if (!lp) {
					it->bcur = it->bend + 1;
					return NULL;
				}
				it->rleaf = lp;
			}
			/* Scan this leaf's slots up to bend: skip empty ones
			 * and those whose intervals all end before qs. */
			stop = bc | (LFAN - 1);
			if (stop > it->bend)
				stop = it->bend;
			sl = NULL;
			if (likely(!is_mini(lp))) {
				lf = lp;
				for (; bc <= stop; bc++) {
					const struct rslot *c =
						&lf->s[bc & (LFAN - 1)];

					if (c->n &&
					    (bc << BB) + c->max >= it->qs) {
						sl = c;
						break;
					}
				}
			} else {
				const uint8_t *mi;
				const struct rslot *ms;

				m = as_mini(lp);
				mi = m_idx(m);
				ms = m_s(m);
				for (j = 0;
				     j < m->n && mi[j] < (bc & (LFAN - 1)); j++)
					;
				for (; j < m->n; j++) {
					bc = (bc & ~(uint64_t)(LFAN - 1)) |
					     mi[j];
					if (bc > stop)
						break;
					if ((bc << BB) + ms[j].max >= it->qs) {
						sl = &ms[j];
						break;
					}
				}
			}
			if (!sl) {
				bc = stop + 1;
				it->bcur = bc;
				if (!(bc & (LFAN - 1)))
					it->rleaf =
						NULL; /* on to the next leaf */
				continue;
			}
			it->bcur = bc + 1;
			if (!((bc + 1) & (LFAN - 1)))
				it->rleaf = NULL;
			base = bc << BB;
			if (sl->n == 1) {
				/* The common case, without iterator state. */
				if (base + E_OFF(sl->e[0]) > it->ql)
					continue;
				*sp = base + E_OFF(sl->e[0]);
				return sl->p[0];
			}
			if (sl->n == SL_BLOCK)
				it->bk = sl->p[0];
			else
				it->isl = sl;
			it->bi = 0;
			it->bbase = base;
			break;
		}
	}
}

/* The next B+-tree interval overlapping the query, or NULL. */
static void *bt_next(struct rindex_iter *it, uint64_t *sp)
{
	while (it->top >= 0) {
		unsigned t = (unsigned)it->top, i;
		const struct rindex_node *nd = it->lvl[t].node, *c;

		if (!it->lvl[t].mask) {
			it->top--;
			continue;
		}
		i = (unsigned)__builtin_ctz(it->lvl[t].mask);
		it->lvl[t].mask &= it->lvl[t].mask - 1;
		if (t == it->leaf) {
			*sp = nd->start[i];
			return nd->ptr[i];
		}
		c = nd->ptr[i];
		it->lvl[t + 1].node = c;
		it->lvl[t + 1].mask = node_mask(c, it->qs, it->ql);
		it->top++;
	}
	return NULL;
}

void *rindex_iter_next(struct rindex_iter *it)
{
	uint64_t s;
	void *o;

	if (likely(!it->merge))
		return small_next(it, &s);
	/* Both streams are in (start, owner) order: merge them. */
	if (it->sm_owner &&
	    (!it->bg_owner || key_less(it->sm_start, it->sm_owner, it->bg_start,
				       it->bg_owner))) {
		o = it->sm_owner;
		it->sm_owner = small_next(it, &it->sm_start);
	} else if ((o = it->bg_owner)) {
		it->bg_owner = bt_next(it, &it->bg_start);
	}
	return o;
}

void *rindex_iter_first(const struct rindex *idx, uint64_t qs, uint64_t ql,
			struct rindex_iter *it)
{
	uint64_t b0;

	it->qs = qs;
	it->ql = ql;
	it->root = idx->radix;
	it->rleaf = NULL;
	it->bk = NULL;
	it->isl = NULL;
	it->merge = 0;
	it->top = -1;
	it->bcur = 1;
	it->bend = 0;
	if (unlikely(qs > ql))
		return NULL;
	if (likely(idx->radix != NULL)) {
		/* Intervals of the LOOKBACK buckets before qs's may reach
		 * into it (lengths are below SMAX); none from further. */
		const struct rroot *n0 = idx->radix;
		const struct rinner *n1, *n2;

		b0 = qs >> BB;
		it->bcur = b0 > LOOKBACK ? b0 - LOOKBACK : 0;
		it->bend = (ql >> BB) < NBUCKETS ? ql >> BB : NBUCKETS - 1;
		/* Usually no slot there reaches past its bucket: then only
		 * buckets from qs's own on can overlap. The common case (the
		 * look-back within qs's leaf) walks the radix once here and
		 * hands the leaf to the scan. */
		if (b0 < NBUCKETS && (it->bcur >> LB) == (b0 >> LB)) {
			unsigned i2 = (unsigned)(b0 >> SH2) & (IFAN - 1);

			if (!(n1 = n0->c[b0 >> SH0]) ||
			    !(n2 = n1->c[(b0 >> SH1) & (IFAN - 1)]) ||
			    !n2->c[i2]) {
				it->bcur = b0; /* no leaf: nothing before */
			} else {
				if (!n2->x[i2])
					it->bcur = b0;
				it->rleaf = n2->c[i2];
			}
		} else if (it->bcur < b0 && it->bcur < NBUCKETS &&
			   !radix_cross(idx, it->bcur,
					b0 - 1 < NBUCKETS ? b0 - 1 :
							    NBUCKETS - 1)) {
			it->bcur = b0;
		}
	}
	if (unlikely(idx->big.root != NULL)) {
		it->merge = 1;
		it->leaf = idx->big.height - 1;
		it->top = 0;
		it->lvl[0].node = idx->big.root;
		it->lvl[0].mask = node_mask(idx->big.root, qs, ql);
		it->bg_owner = bt_next(it, &it->bg_start);
		it->sm_owner = small_next(it, &it->sm_start);
	}
	return rindex_iter_next(it);
}

/* ------------------------------------------------------------------ */
/* accounting and checking                                            */
/* ------------------------------------------------------------------ */

uint64_t rindex_tree_bytes(const struct rindex *idx)
{
	uint64_t b = 0;
	unsigned k;

	for (k = 0; k < K_N; k++)
		b += idx->nblk[k] * kind_bytes[k];
	return b;
}

uint64_t rindex_bytes(const struct rindex *idx)
{
	uint64_t b = rindex_tree_bytes(idx);
	unsigned k;

	for (k = 0; k < K_N; k++)
		b += (uint64_t)idx->garbage.n[k] * kind_bytes[k];
	return b;
}

struct check_state {
	const struct rindex *idx;
	bool have_prev;
	uint64_t prev_start;
	const void *prev_owner;
	uint64_t entries, leaves, inners;
};

/* Is (start, owner) in a bucket? */
static bool in_bucket(const struct rindex *idx, uint64_t start,
		      const void *owner)
{
	const struct rslot *sl;
	uint32_t off = (uint32_t)(start & (BSIZE - 1));
	bool found = false;

	struct rinner *n2;

	if (start >= RLIMIT || !(sl = radix_slot(idx, start >> BB, &n2)) ||
	    !sl->n)
		return false;
	if (sl->n <= 2)
		return (sl->p[0] == owner && E_OFF(sl->e[0]) == off) ||
		       (sl->p[1] == owner && E_OFF(sl->e[1]) == off);
	bucket_pos(sl->p[0], (boff_t)off, owner, &found);
	return found;
}

/* Validate the subtree at @nd (@levels levels, leaves included); report
 * its smallest key and largest last. Returns 0 or -1. */
static int check_node(const struct rindex_node *nd, unsigned levels,
		      bool is_root, struct check_state *cs, uint64_t *min_s,
		      const void **min_o, uint64_t *max_l)
{
	bool leaf = levels == 1;
	uint64_t ms, ml, m = 0;
	const void *mo;
	unsigned i;

	if (!nd || nd->n > F || (!is_root && nd->n < RINDEX_MIN) || !nd->n)
		return -1;
	if (is_root && !leaf && nd->n < 2)
		return -1;
	if (leaf) {
		cs->leaves++;
		for (i = 0; i < nd->n; i++) {
			if (nd->start[i] > nd->last[i] || !nd->ptr[i])
				return -1;
			if (cs->have_prev &&
			    !key_less(cs->prev_start, cs->prev_owner,
				      nd->start[i], nd->ptr[i]))
				return -1;
			/* The key is in one place only. */
			if (in_bucket(cs->idx, nd->start[i], nd->ptr[i]))
				return -1;
			cs->have_prev = true;
			cs->prev_start = nd->start[i];
			cs->prev_owner = nd->ptr[i];
			cs->entries++;
			if (nd->last[i] > m)
				m = nd->last[i];
		}
	} else {
		cs->inners++;
		for (i = 0; i < nd->n; i++) {
			if (check_node(nd->ptr[i], levels - 1, false, cs, &ms,
				       &mo, &ml))
				return -1;
			if (ms != nd->start[i] || mo != nd->kowner[i] ||
			    ml != nd->last[i])
				return -1;
			if (ml > m)
				m = ml;
		}
	}
	*min_s = nd->start[0];
	*min_o = key_owner(nd, 0, leaf);
	*max_l = m;
	return 0;
}

static int check_bt(const struct rindex *idx)
{
	const struct rindex_bt *t = &idx->big;
	struct check_state cs = { .idx = idx };
	uint64_t ms, ml;
	const void *mo;

	if (!t->root)
		return t->height || t->count || idx->nblk[K_BTLEAF] ||
				       idx->nblk[K_BTINNER] ?
			       -1 :
			       0;
	if (!t->height || t->height > RINDEX_MAX_HEIGHT)
		return -1;
	if (check_node(t->root, t->height, true, &cs, &ms, &mo, &ml))
		return -1;
	if (cs.entries != t->count || cs.leaves != idx->nblk[K_BTLEAF] ||
	    cs.inners != idx->nblk[K_BTINNER])
		return -1;
	return 0;
}

static int check_slot(const struct rslot *sl, uint64_t base, uint64_t *nb,
		      uint64_t *ne)
{
	const struct rindex_bucket *b = sl->p[0];
	unsigned cap, i;
	const boff_t *offs, *lens;
	void *const *own;
	uint32_t m = 0, o;

	if (!sl->n)
		return sl->p[0] || sl->p[1] || sl->e[0] || sl->e[1] || sl->max ?
			       -1 :
			       0;
	if (sl->n <= 2) {
		if (sl->n == 1 && (sl->p[1] || sl->e[1]))
			return -1;
		for (i = 0; i < sl->n; i++) {
			o = E_OFF(sl->e[i]);
			if (!sl->p[i] || o >= BSIZE)
				return -1;
			if (i &&
			    !key_less(E_OFF(sl->e[0]), sl->p[0], o, sl->p[1]))
				return -1;
			if (o + E_LEN(sl->e[i]) > m)
				m = o + E_LEN(sl->e[i]);
		}
		if (m != sl->max)
			return -1;
		*ne += sl->n;
		return 0;
	}
	if (sl->n != SL_BLOCK || sl->p[1] || sl->e[0] || sl->e[1] || !b ||
	    b->kind < K_B0 || b->kind > K_B4)
		return -1;
	cap = BCAP(b->kind);
	offs = b_off(b);
	lens = b_len(b, cap);
	own = b_own(b, cap);
	if (b->n < 3 || b->n > cap)
		return -1;
	for (i = 0; i < b->n; i++) {
		if (!own[i] || (uint64_t)offs[i] + 1 > BSIZE ||
		    (uint64_t)lens[i] + 1 > SMAX)
			return -1;
		if (i && !key_less(base + offs[i - 1], own[i - 1],
				   base + offs[i], own[i]))
			return -1;
	}
	if (sl->max != bucket_maxoff(b))
		return -1;
	nb[b->kind]++;
	*ne += b->n;
	return 0;
}

static int check_radix(const struct rindex *idx)
{
	const struct rroot *n0 = idx->radix;
	const struct rinner *n1, *n2;
	const struct rleaf *lf;
	const struct rmini *m;
	uint64_t nb[K_N] = { 0 }, ne = 0, bk;
	unsigned i, j, k, s, kk;

	if (n0) {
		nb[K_RROOT]++;
		if (!n0->nc || n0->nc != inner_count(n0->c, RFAN))
			return -1;
	}
	for (i = 0; n0 && i < RFAN; i++) {
		if (!(n1 = n0->c[i]))
			continue;
		nb[K_RINNER]++;
		if (!n1->nc || n1->nc != inner_count(n1->c, IFAN))
			return -1;
		for (j = 0; j < IFAN; j++) {
			if (!(n2 = n1->c[j]))
				continue;
			nb[K_RINNER]++;
			if (!n2->nc || n2->nc != inner_count(n2->c, IFAN))
				return -1;
			for (k = 0; k < IFAN; k++) {
				unsigned nx = 0;

				if (!(lf = n2->c[k])) {
					if (n2->x[k])
						return -1;
					continue;
				}
				if (is_mini(lf)) {
					const uint8_t *mi;
					const struct rslot *ms;

					m = as_mini(lf);
					if (m->kind < K_M0 || m->kind > K_M2 ||
					    !m->n || m->n > MCAP(m->kind))
						return -1;
					nb[m->kind]++;
					mi = m_idx(m);
					ms = m_s(m);
					for (s = 0; s < m->n; s++) {
						if ((s && mi[s] <= mi[s - 1]) ||
						    !ms[s].n)
							return -1;
						nx += slot_cross(&ms[s]);
						bk = ((uint64_t)i << SH0) |
						     ((uint64_t)j << SH1) |
						     ((uint64_t)k << SH2) |
						     mi[s];
						if (check_slot(&ms[s], bk << BB,
							       nb, &ne))
							return -1;
					}
					if (nx != n2->x[k])
						return -1;
					continue;
				}
				nb[K_RLEAF]++;
				if (leaf_empty(lf))
					return -1;
				for (s = 0; s < LFAN; s++)
					nx += slot_cross(&lf->s[s]);
				if (nx != n2->x[k])
					return -1;
				for (s = 0; s < LFAN; s++) {
					bk = ((uint64_t)i << SH0) |
					     ((uint64_t)j << SH1) |
					     ((uint64_t)k << SH2) | s;
					if (check_slot(&lf->s[s], bk << BB, nb,
						       &ne))
						return -1;
				}
			}
		}
	}
	for (kk = K_RROOT; kk <= K_B4; kk++)
		if (nb[kk] != idx->nblk[kk])
			return -1;
	return ne == idx->nsmall ? 0 : -1;
}

int rindex_check(const struct rindex *idx)
{
	if (check_radix(idx) || check_bt(idx))
		return -1;
	return idx->count == idx->nsmall + idx->big.count ? 0 : -1;
}

/* SPDX-License-Identifier: MIT */
/*
 * pgtable.c - the sparse translation table of a region (see pgtable.h).
 *
 * Owns every node of a table; nothing else points into it except the slot
 * pointers handed out by pgt_leaf_slot() (valid until the next call that
 * may free the leaf).
 *
 * Shape. A radix tree of fixed depth: leaves hold PGT_FAN (512) words,
 * inner nodes PGT_FAN child pointers, each behind an 8-byte header holding
 * the count of nonzero words (leaf) or present children (inner). The depth
 * is fixed by pgt_init() from nslots (levels = number of inner levels:
 * 0 up to 512 slots, 1 up to 2^18, 2 up to 2^27, 3 up to 2^36, 4 up to 2^45,
 * at most 7 for 2^64), so an index is split into 9-bit digits and a lookup
 * is `levels + 1` loads. The root alone is sized to what nslots needs (a
 * 1-slot table holds a 16-byte leaf), every other node is full size.
 *
 * Why 512: a full leaf is 8 + 4096 bytes for 512 pages, so a densely
 * mapped region costs 4104/512 = 8.016 bytes per page for the leaves plus
 * 4104/512^2 (~0.016) per level above: about 8.03 bytes per mapped page,
 * within the 16-byte budget. The worst case is a lone mapped page in an
 * otherwise empty subtree: one leaf plus one node per inner level, e.g.
 * 4 * 4104 = ~16 KiB for a single page of a 2^36-slot table, and 4104 bytes
 * per page when every mapped page lies in its own leaf (one page in 512).
 * Smaller leaves would cut that waste but add depth (one more load per
 * lookup) and more nodes to walk. t->bytes counts the sizes requested from
 * calloc(), not the allocator's own overhead (a few bytes per node).
 *
 * Freeing. An emptied node is not given back to the allocator but put on
 * the table's graveyard, which later allocations reuse and pgt_reap()
 * frees: invalidations run on the notifier's monitor thread, where free()
 * could trim a registered heap (brk/madvise), raise a userfaultfd event and
 * wait for the monitor thread itself (see pgtable.h).
 *
 * Invariants: a node's count equals its nonzero words / non-NULL children;
 * t->used is the sum of the leaf counts; t->bytes the sum of the allocated
 * node sizes. A node with count 0 is freed at once by every operation that
 * empties it, and t->root is NULL iff the table holds no node. The one
 * exception is a leaf allocated by pgt_leaf_slot() whose caller has not yet
 * written it: it lives, empty, until pgt_leaf_account() (any delta, even 0),
 * pgt_set() or pgt_for_each() on it, or pgt_destroy().
 *
 * Not thread safe: the caller holds the lock that protects the table.
 */
#include "lib/pgtable.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PGT_BITS 9u
#define PGT_FAN (1u << PGT_BITS)
#define PGT_MASK ((uint64_t)PGT_FAN - 1)
#define PGT_MAX_LEVELS 7u /* 9 * 7 + 9 >= 64 */

struct pgt_hdr {
	uint64_t count; /* nonzero words (leaf) or present children (inner) */
};

struct pgt_leaf {
	struct pgt_hdr h;
	uint64_t word[];
};

struct pgt_inner {
	struct pgt_hdr h;
	struct pgt_hdr *child[];
};

/* Test hook: when nonzero, the fail_countdown-th call to the allocator
 * (pgt_node_malloc) fails; reused graveyard nodes do not count. */
static unsigned fail_countdown;

void pgt_test_fail_alloc(unsigned n)
{
	fail_countdown = n;
}

void *pgt_node_malloc(size_t size)
{
	void *n;

	if (fail_countdown && --fail_countdown == 0) {
		errno = ENOMEM;
		return NULL;
	}
	n = malloc(size);
	if (!n)
		errno = ENOMEM;
	return n;
}

/* Shift of the digit that selects a child of a node at @level (leaf: 0). */
static inline unsigned level_shift(unsigned level)
{
	return level * PGT_BITS;
}

static inline unsigned digit(uint64_t idx, unsigned level)
{
	return (unsigned)((idx >> level_shift(level)) & PGT_MASK);
}

/* Number of slots of a node at @level: full, except at the root. */
static uint64_t node_fan(const struct pgt *t, unsigned level)
{
	if (level < t->levels)
		return PGT_FAN;
	return ((t->nslots - 1) >> level_shift(level)) + 1;
}

static size_t node_size(const struct pgt *t, unsigned level)
{
	return sizeof(struct pgt_hdr) + node_fan(t, level) * sizeof(uint64_t);
}

/* A node on the graveyard: its memory, reused for the list link. */
struct pgt_dead {
	struct pgt_dead *next;
	uint64_t size;
};

/*
 * Pop a graveyard node of @sz bytes, or NULL. Only a root may be smaller
 * than full size, and a root is freed last (it empties last), so it sits
 * at the head of the graveyard until a root is allocated again: looking at
 * the first two nodes finds a full-size one whenever the head is a root.
 * A miss only costs a calloc().
 */
static struct pgt_hdr *grave_pop(struct pgt *t, size_t sz)
{
	struct pgt_dead **pp = (struct pgt_dead **)&t->graveyard, *d;
	int i;

	for (i = 0; i < 2 && (d = *pp); i++, pp = &d->next) {
		if (d->size == sz) {
			*pp = d->next;
			t->cached_bytes -= sz;
			memset(d, 0, sz);
			return (struct pgt_hdr *)d;
		}
	}
	return NULL;
}

static struct pgt_hdr *node_alloc(struct pgt *t, unsigned level)
{
	size_t sz = node_size(t, level);
	struct pgt_hdr *n;

	n = grave_pop(t, sz);
	if (!n && t->no_alloc) {
		errno = EWOULDBLOCK;
		return NULL;
	}
	if (!n) {
		n = pgt_node_malloc(sz);
		if (n)
			memset(n, 0, sz);
	}
	if (n)
		t->bytes += sz;
	return n;
}

/* Emptied nodes go to the graveyard, not to free(): see pgtable.h. */
static void node_free(struct pgt *t, struct pgt_hdr *n, unsigned level)
{
	size_t sz = node_size(t, level);
	struct pgt_dead *d = (struct pgt_dead *)n;

	t->bytes -= sz;
	d->size = sz;
	d->next = t->graveyard;
	t->graveyard = d;
	t->cached_bytes += sz;
}

void pgt_free_nodes(void *list)
{
	struct pgt_dead *d = list, *next;

	for (; d; d = next) {
		next = d->next;
		free(d);
	}
}

void *pgt_take_graveyard(struct pgt *t)
{
	void *list = t->graveyard;

	t->graveyard = NULL;
	t->cached_bytes = 0;
	return list;
}

void pgt_reap(struct pgt *t)
{
	pgt_free_nodes(pgt_take_graveyard(t));
}

void pgt_stock(struct pgt *t, void *node, size_t size)
{
	struct pgt_dead *d = node;

	d->size = size;
	d->next = t->graveyard;
	t->graveyard = d;
	t->cached_bytes += size;
}

void pgt_init(struct pgt *t, uint64_t nslots)
{
	unsigned levels = 0;

	/* Enough inner levels that the root's digit covers the top index. */
	while (levels < PGT_MAX_LEVELS &&
	       ((nslots ? nslots - 1 : 0) >> level_shift(levels + 1)) != 0)
		levels++;
	t->root = NULL;
	t->nslots = nslots;
	t->levels = levels;
	t->used = 0;
	t->bytes = 0;
	t->graveyard = NULL;
	t->cached_bytes = 0;
	t->no_alloc = false;
}

static void free_subtree(struct pgt *t, struct pgt_hdr *n, unsigned level)
{
	if (level > 0) {
		struct pgt_inner *in = (struct pgt_inner *)n;
		uint64_t fan = node_fan(t, level);

		for (uint64_t i = 0; i < fan && in->h.count; i++) {
			if (!in->child[i])
				continue;
			free_subtree(t, in->child[i], level - 1);
			in->child[i] = NULL;
			in->h.count--;
		}
	}
	node_free(t, n, level);
}

void pgt_destroy(struct pgt *t)
{
	if (t->root)
		free_subtree(t, t->root, t->levels);
	t->root = NULL;
	t->used = 0;
	pgt_reap(t);
	assert(t->bytes == 0);
}

uint64_t pgt_get(const struct pgt *t, uint64_t idx)
{
	const struct pgt_hdr *n = t->root;

	if (idx >= t->nslots)
		return 0;
	for (unsigned l = t->levels; n && l > 0; l--)
		n = ((const struct pgt_inner *)n)->child[digit(idx, l)];
	return n ? ((const struct pgt_leaf *)n)->word[digit(idx, 0)] : 0;
}

/*
 * The path to @idx: slot[l] is the address of the pointer to the node of
 * level l (slot[levels] is &t->root); nodes that do not exist stop the
 * path. Returns the lowest level reached whose node exists, or levels + 1
 * when there is no root.
 */
struct pgt_path {
	struct pgt_hdr **slot[PGT_MAX_LEVELS + 1];
};

static unsigned path_find(struct pgt *t, uint64_t idx, struct pgt_path *p)
{
	struct pgt_hdr **s = (struct pgt_hdr **)&t->root;
	unsigned l = t->levels;

	for (;;) {
		p->slot[l] = s;
		if (!*s)
			return l + 1;
		if (l == 0)
			return 0;
		s = &((struct pgt_inner *)*s)->child[digit(idx, l)];
		l--;
	}
}

/*
 * Free the nodes of @p from level @l up that hold nothing, unlinking each
 * from its parent (whose count drops) or from t->root.
 */
static void path_prune(struct pgt *t, struct pgt_path *p, unsigned l)
{
	for (; l <= t->levels; l++) {
		struct pgt_hdr *n = *p->slot[l];

		if (!n || n->count)
			return;
		node_free(t, n, l);
		*p->slot[l] = NULL;
		if (l < t->levels)
			(*p->slot[l + 1])->count--;
	}
}

/*
 * Make the path to @idx's leaf exist. All missing nodes are allocated
 * before any is linked, so on -ENOMEM the table is untouched.
 */
static struct pgt_leaf *path_make(struct pgt *t, uint64_t idx,
				  struct pgt_path *p)
{
	struct pgt_hdr *fresh[PGT_MAX_LEVELS + 1];
	unsigned top = path_find(t, idx, p); /* levels below top are missing */

	for (unsigned l = 0; l < top; l++) {
		fresh[l] = node_alloc(t, l);
		if (!fresh[l]) {
			while (l-- > 0)
				node_free(t, fresh[l], l);
			return NULL;
		}
	}
	for (unsigned l = top; l-- > 0;) {
		*p->slot[l] = fresh[l];
		if (l < t->levels)
			(*p->slot[l + 1])->count++;
		if (l > 0)
			p->slot[l - 1] = &((struct pgt_inner *)fresh[l])
						  ->child[digit(idx, l)];
	}
	return (struct pgt_leaf *)*p->slot[0];
}

unsigned pgt_need(const struct pgt *t, uint64_t idx, size_t sizes[PGT_MAX_PATH])
{
	struct pgt_path p;
	unsigned top, l;

	if (idx >= t->nslots)
		return 0;
	top = path_find((struct pgt *)t, idx, &p); /* only reads */
	for (l = 0; l < top; l++)
		sizes[l] = node_size(t, l);
	return top;
}

int pgt_set(struct pgt *t, uint64_t idx, uint64_t val)
{
	struct pgt_path p;
	struct pgt_leaf *lf;
	uint64_t *w;

	if (idx >= t->nslots)
		return -EINVAL;
	if (val == 0) {
		if (path_find(t, idx, &p) != 0)
			return 0; /* no leaf: already empty */
		lf = (struct pgt_leaf *)*p.slot[0];
	} else {
		lf = path_make(t, idx, &p);
		if (!lf)
			return -errno;
	}
	w = &lf->word[digit(idx, 0)];
	if (*w && !val) {
		lf->h.count--;
		t->used--;
	} else if (!*w && val) {
		lf->h.count++;
		t->used++;
	}
	*w = val;
	path_prune(t, &p, 0);
	return 0;
}

uint64_t *pgt_leaf_slot(struct pgt *t, uint64_t idx, uint64_t *room)
{
	struct pgt_path p;
	struct pgt_leaf *lf;
	uint64_t r;

	if (idx >= t->nslots) {
		errno = EINVAL;
		return NULL;
	}
	lf = path_make(t, idx, &p);
	if (!lf)
		return NULL; /* errno: ENOMEM or EWOULDBLOCK */
	r = PGT_FAN - digit(idx, 0);
	if (r > t->nslots - idx)
		r = t->nslots - idx;
	if (room)
		*room = r;
	return &lf->word[digit(idx, 0)];
}

void pgt_leaf_account(struct pgt *t, uint64_t idx, int64_t delta)
{
	struct pgt_path p;
	struct pgt_leaf *lf;

	/* Accounting words of a leaf that does not exist is a caller bug:
	 * caught in debug builds, ignored otherwise. */
	if (idx >= t->nslots || path_find(t, idx, &p) != 0) {
		assert(delta == 0);
		return;
	}
	lf = (struct pgt_leaf *)*p.slot[0];
	assert(delta >= 0 || lf->h.count >= (uint64_t)-delta);
	assert(delta <= 0 || lf->h.count + (uint64_t)delta <= PGT_FAN);
	lf->h.count += (uint64_t)delta;
	t->used += (uint64_t)delta;
	path_prune(t, &p, 0);
}

/* State of one pgt_for_each() walk. */
struct pgt_walk {
	struct pgt *t;
	int (*fn)(uint64_t idx, uint64_t *word, void *arg);
	void *arg;
	uint64_t visited;
};

static int walk_leaf(struct pgt_walk *wk, struct pgt_leaf *lf, uint64_t base,
		     unsigned lo, unsigned hi)
{
	uint64_t *w = lf->word;

	for (unsigned i = lo; i <= hi; i++) {
		int stop;

		if (!w[i])
			continue;
		wk->visited++;
		stop = wk->fn(base + i, &w[i], wk->arg);
		if (!w[i]) {
			lf->h.count--;
			wk->t->used--;
		}
		if (stop)
			return 1;
	}
	return 0;
}

/*
 * Walk the node *@slot of @level over [from, last], both inside the node's
 * span (so their digits above @level are equal); @base is the index of the
 * node's first slot. Frees the node's emptied children (after each child's
 * walk, so no callback ever sees freed memory); the caller frees the node
 * itself if it ends empty.
 */
static int walk_node(struct pgt_walk *wk, struct pgt_hdr *n, unsigned level,
		     uint64_t base, uint64_t from, uint64_t last)
{
	struct pgt_inner *in = (struct pgt_inner *)n;
	unsigned lo = digit(from, level), hi = digit(last, level);
	uint64_t cspan = (uint64_t)1 << level_shift(level);

	if (level == 0)
		return walk_leaf(wk, (struct pgt_leaf *)n, base, lo, hi);
	for (unsigned i = lo; i <= hi && in->h.count; i++) {
		struct pgt_hdr *c = in->child[i];
		uint64_t cbase = base + ((uint64_t)i << level_shift(level));
		uint64_t cfrom = i == lo ? from : cbase;
		uint64_t clast = i == hi ? last : cbase + (cspan - 1);
		int stop;

		if (!c)
			continue;
		stop = walk_node(wk, c, level - 1, cbase, cfrom, clast);
		if (!c->count) {
			node_free(wk->t, c, level - 1);
			in->child[i] = NULL;
			in->h.count--;
		}
		if (stop)
			return 1;
	}
	return 0;
}

uint64_t pgt_for_each(struct pgt *t, uint64_t from, uint64_t to,
		      int (*fn)(uint64_t idx, uint64_t *word, void *arg),
		      void *arg)
{
	struct pgt_walk wk = { .t = t, .fn = fn, .arg = arg };
	struct pgt_hdr *root = t->root;

	if (to > t->nslots)
		to = t->nslots;
	if (!root || from >= to)
		return 0;
	walk_node(&wk, root, t->levels, 0, from, to - 1);
	if (!root->count) {
		node_free(t, root, t->levels);
		t->root = NULL;
	}
	return wk.visited;
}

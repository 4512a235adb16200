/* SPDX-License-Identifier: MIT */
/*
 * itree.h - an intrusive interval tree of closed intervals [start, last].
 *
 * Owns nothing but the links of the nodes it is given. A red-black tree
 * ordered by (start, node address), each node augmented with the largest
 * `last` of its subtree, so that all intervals overlapping a query are found
 * in O(log n + k). The notifier's index of watched mappings (its
 * domains, src/notifier/watch.c): few, and each embeds its node, so an
 * insert allocates nothing under the notifier's lock. Contexts index their
 * regions with rindex.h, built for 10^6 regions. Not thread safe: the
 * caller locks.
 */
#ifndef UODP_ITREE_H
#define UODP_ITREE_H

#include <stdint.h>

struct itree_node {
	uint64_t start;	       /* first address of the interval */
	uint64_t last;	       /* last address (inclusive) */
	uint64_t subtree_last; /* max `last` in this subtree (maintained) */
	struct itree_node *left, *right, *parent;
	int red;
};

struct itree {
	struct itree_node *root;
	uint64_t count;
};

#define ITREE_INIT   \
	{            \
		0, 0 \
	}

static inline void itree_init(struct itree *t)
{
	t->root = 0;
	t->count = 0;
}

/* Insert @n (start <= last, set by the caller). O(log n). */
void itree_insert(struct itree *t, struct itree_node *n);

/* Remove @n, which must be in @t. O(log n). */
void itree_remove(struct itree *t, struct itree_node *n);

/*
 * The first node (in start order) overlapping [start, last], or NULL;
 * then the next one after @n overlapping the same query, or NULL.
 * Visiting all k overlaps costs O(log n + k) ... more precisely each call to
 * itree_iter_next is O(log n) amortised at worst.
 */
struct itree_node *itree_iter_first(const struct itree *t, uint64_t start,
				    uint64_t last);
struct itree_node *itree_iter_next(const struct itree_node *n, uint64_t start,
				   uint64_t last);

/* Debug/test aid: check red-black and augmentation invariants. Returns 0 if
 * valid, -1 otherwise. O(n). */
int itree_check(const struct itree *t);

#endif

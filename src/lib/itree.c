/* SPDX-License-Identifier: MIT */
/*
 * itree.c - the interval tree behind a context's region lookup.
 *
 * Owns only the link fields of the nodes it is given (left, right, parent,
 * red, subtree_last); `start` and `last` belong to the caller and must not
 * change while a node is in a tree. The tree is a red-black tree keyed by
 * (start, node address), so identical intervals are still totally ordered
 * and removal of a particular node never has to search among equals.
 *
 * Augmentation invariant, relied upon by every query:
 *   n->subtree_last == max(n->last, n->left->subtree_last,
 *                          n->right->subtree_last)
 * It is restored by: the descent of an insertion (raising ancestors), a
 * rotation (the node moving up inherits the old top's value, the node moving
 * down is recomputed from its children), and after a removal a recomputation
 * along the path from the lowest changed node to the root. Each is O(log n).
 *
 * Queries prune a subtree when its subtree_last < query start (nothing in it
 * reaches the query) and stop at the first node whose start > query last
 * (everything after it in order starts later still).
 *
 * No locking here: the caller serialises all use of a tree.
 */
#include "itree.h"

#include <stddef.h>

/* Strict total order: by start, then by node address. */
static int node_less(const struct itree_node *a, const struct itree_node *b)
{
	if (a->start != b->start)
		return a->start < b->start;
	return (uintptr_t)a < (uintptr_t)b;
}

/* Value the augmentation invariant demands for @n given its children. */
static uint64_t subtree_max(const struct itree_node *n)
{
	uint64_t m = n->last;

	if (n->left && n->left->subtree_last > m)
		m = n->left->subtree_last;
	if (n->right && n->right->subtree_last > m)
		m = n->right->subtree_last;
	return m;
}

/* Recompute subtree_last from @n up to the root. */
static void propagate_up(struct itree_node *n)
{
	for (; n; n = n->parent)
		n->subtree_last = subtree_max(n);
}

/* Make @parent (or the root if @parent is NULL) point at @new, not @old. */
static void replace_child(struct itree *t, struct itree_node *parent,
			  struct itree_node *old, struct itree_node *new)
{
	if (!parent)
		t->root = new;
	else if (parent->left == old)
		parent->left = new;
	else
		parent->right = new;
}

/*
 * Rotations keep the set of nodes under the rotated position unchanged, so
 * the node moving up takes over the old top's subtree_last; only the node
 * moving down needs recomputing (its children changed).
 */
static void rotate_left(struct itree *t, struct itree_node *x)
{
	struct itree_node *y = x->right;

	x->right = y->left;
	if (y->left)
		y->left->parent = x;
	y->parent = x->parent;
	replace_child(t, x->parent, x, y);
	y->left = x;
	x->parent = y;
	y->subtree_last = x->subtree_last;
	x->subtree_last = subtree_max(x);
}

static void rotate_right(struct itree *t, struct itree_node *x)
{
	struct itree_node *y = x->left;

	x->left = y->right;
	if (y->right)
		y->right->parent = x;
	y->parent = x->parent;
	replace_child(t, x->parent, x, y);
	y->right = x;
	x->parent = y;
	y->subtree_last = x->subtree_last;
	x->subtree_last = subtree_max(x);
}

static int is_red(const struct itree_node *n)
{
	return n && n->red;
}

/* Restore "no red node has a red child" after linking red leaf @n. */
static void insert_fixup(struct itree *t, struct itree_node *n)
{
	struct itree_node *p, *g, *u;

	while ((p = n->parent) && p->red) {
		g = p->parent; /* exists: a red node is never the root */
		if (p == g->left) {
			u = g->right;
			if (is_red(u)) {
				p->red = 0;
				u->red = 0;
				g->red = 1;
				n = g;
				continue;
			}
			if (n == p->right) {
				rotate_left(t, p);
				p = n;
			}
			rotate_right(t, g);
		} else {
			u = g->left;
			if (is_red(u)) {
				p->red = 0;
				u->red = 0;
				g->red = 1;
				n = g;
				continue;
			}
			if (n == p->left) {
				rotate_right(t, p);
				p = n;
			}
			rotate_left(t, g);
		}
		/* p now sits where g was, with g as a child. */
		p->red = 0;
		g->red = 1;
		break;
	}
	t->root->red = 0;
}

void itree_insert(struct itree *t, struct itree_node *n)
{
	struct itree_node *parent = NULL, **link = &t->root;

	n->left = NULL;
	n->right = NULL;
	n->red = 1;
	n->subtree_last = n->last;
	/* Every node on the descent path gains @n in its subtree. */
	while (*link) {
		parent = *link;
		if (parent->subtree_last < n->last)
			parent->subtree_last = n->last;
		link = node_less(n, parent) ? &parent->left : &parent->right;
	}
	n->parent = parent;
	*link = n;
	t->count++;
	insert_fixup(t, n);
}

/*
 * A black node was removed above @x (possibly NULL), whose parent is
 * @parent: every path through @x is one black short. Push the deficit up or
 * absorb it with recolouring and rotations.
 */
static void remove_fixup(struct itree *t, struct itree_node *x,
			 struct itree_node *parent)
{
	struct itree_node *w;

	while (x != t->root && !is_red(x)) {
		/*
		 * The sibling w exists: its side has black height >= 1 more
		 * than x's. Hence when x is NULL it is the NULL child.
		 */
		if (x == parent->left) {
			w = parent->right;
			if (w->red) {
				w->red = 0;
				parent->red = 1;
				rotate_left(t, parent);
				w = parent->right;
			}
			if (!is_red(w->left) && !is_red(w->right)) {
				w->red = 1;
				x = parent;
				parent = x->parent;
				continue;
			}
			if (!is_red(w->right)) {
				w->left->red = 0;
				w->red = 1;
				rotate_right(t, w);
				w = parent->right;
			}
			w->red = parent->red;
			parent->red = 0;
			w->right->red = 0;
			rotate_left(t, parent);
		} else {
			w = parent->left;
			if (w->red) {
				w->red = 0;
				parent->red = 1;
				rotate_right(t, parent);
				w = parent->left;
			}
			if (!is_red(w->left) && !is_red(w->right)) {
				w->red = 1;
				x = parent;
				parent = x->parent;
				continue;
			}
			if (!is_red(w->left)) {
				w->right->red = 0;
				w->red = 1;
				rotate_left(t, w);
				w = parent->left;
			}
			w->red = parent->red;
			parent->red = 0;
			w->left->red = 0;
			rotate_right(t, parent);
		}
		x = t->root;
		break;
	}
	if (x)
		x->red = 0;
}

void itree_remove(struct itree *t, struct itree_node *n)
{
	struct itree_node *x, *xparent, *s;
	int removed_red;

	if (!n->left || !n->right) {
		/* At most one child: splice @n out directly. */
		x = n->left ? n->left : n->right;
		xparent = n->parent;
		replace_child(t, xparent, n, x);
		if (x)
			x->parent = xparent;
		removed_red = n->red;
	} else {
		/*
		 * Two children: the in-order successor s (leftmost of the
		 * right subtree, so it has no left child) takes @n's place
		 * and colour; the colour lost is s's own, at s's old spot.
		 */
		s = n->right;
		while (s->left)
			s = s->left;
		removed_red = s->red;
		x = s->right;
		if (s->parent == n) {
			xparent = s;
		} else {
			xparent = s->parent;
			xparent->left = x;
			if (x)
				x->parent = xparent;
			s->right = n->right;
			n->right->parent = s;
		}
		s->left = n->left;
		n->left->parent = s;
		s->parent = n->parent;
		replace_child(t, n->parent, n, s);
		s->red = n->red;
	}
	/* s (if used) lies on this path, so it is recomputed too. */
	propagate_up(xparent);
	t->count--;
	if (!removed_red)
		remove_fixup(t, x, xparent);
	n->left = NULL;
	n->right = NULL;
	n->parent = NULL;
}

/*
 * First node in order within the subtree at @n overlapping [start, last].
 * Precondition: n->subtree_last >= start.
 *
 * If the left subtree reaches start, the answer (if any) is there: some node
 * X in it has X->last >= start; either X->start <= last and X overlaps, or
 * X->start > last and then @n and all on its right start after the query.
 */
static struct itree_node *subtree_first(struct itree_node *n, uint64_t start,
					uint64_t last)
{
	for (;;) {
		if (n->left && n->left->subtree_last >= start) {
			n = n->left;
			continue;
		}
		if (n->start > last)
			return NULL;
		if (n->last >= start)
			return n;
		if (n->right && n->right->subtree_last >= start) {
			n = n->right;
			continue;
		}
		return NULL;
	}
}

struct itree_node *itree_iter_first(const struct itree *t, uint64_t start,
				    uint64_t last)
{
	if (!t->root || t->root->subtree_last < start)
		return NULL;
	return subtree_first(t->root, start, last);
}

struct itree_node *itree_iter_next(const struct itree_node *n, uint64_t start,
				   uint64_t last)
{
	struct itree_node *node = (struct itree_node *)n, *prev;

	for (;;) {
		/* Successors below @node: its right subtree, if it reaches. */
		if (node->right && node->right->subtree_last >= start)
			return subtree_first(node->right, start, last);
		/* Otherwise climb to the first ancestor we are left of. */
		do {
			prev = node;
			node = node->parent;
			if (!node)
				return NULL;
		} while (prev == node->right);
		if (node->start > last)
			return NULL;
		if (node->last >= start)
			return node;
	}
}

/* State of an in-order validation walk. */
struct check_walk {
	const struct itree_node *prev; /* last node visited in order */
	uint64_t seen;		       /* nodes visited so far */
	uint64_t limit;		       /* t->count: more means a cycle */
};

/*
 * Validate the subtree at @n whose parent should be @parent. Returns its
 * black height (counting NULL leaves as 1), or -1 on any violation.
 */
static int check_subtree(const struct itree_node *n,
			 const struct itree_node *parent, struct check_walk *w,
			 unsigned depth)
{
	int lh, rh;

	if (!n)
		return 1;
	/* A valid tree of <= 2^64 nodes is at most ~128 deep. */
	if (depth > 130 || n->parent != parent || n->start > n->last)
		return -1;
	if (n->red && (is_red(n->left) || is_red(n->right)))
		return -1;
	lh = check_subtree(n->left, n, w, depth + 1);
	if (lh < 0)
		return -1;
	if (++w->seen > w->limit)
		return -1;
	if (w->prev && !node_less(w->prev, n))
		return -1;
	w->prev = n;
	rh = check_subtree(n->right, n, w, depth + 1);
	if (rh < 0 || lh != rh)
		return -1;
	if (n->subtree_last != subtree_max(n))
		return -1;
	return lh + !n->red;
}

int itree_check(const struct itree *t)
{
	struct check_walk w = { NULL, 0, t->count };

	if (t->root && t->root->red)
		return -1;
	if (check_subtree(t->root, NULL, &w, 0) < 0)
		return -1;
	return w.seen == t->count ? 0 : -1;
}

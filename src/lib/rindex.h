/* SPDX-License-Identifier: MIT */
/*
 * rindex.h - a cache-dense index of closed intervals [start, last]: the
 * region index meant to replace the red-black itree behind a context's
 * overlap lookups (issue 11).
 *
 * Role: maps intervals to opaque owner pointers and answers "every interval
 * overlapping [qs, ql]". Stores nothing in the owner (non-intrusive). Not
 * thread safe: the caller serialises writers against everything (a write
 * lock) and may run any number of queries in parallel (a read lock).
 *
 * DESIGN
 *
 * Layout. A B+-tree ordered by the composite key (start, owner), so equal
 * intervals of different owners are still totally ordered and a removal
 * descends straight to its entry. Every node has RINDEX_FANOUT (15) slots
 * held as parallel arrays, one array per field, each array with the node
 * header filling exactly two 64-byte cache lines:
 *
 *   leaf  (384 B, 6 lines): n | start[15] ; last[15] ; owner[15]
 *   inner (512 B, 8 lines): n | start[15] ; maxlast[15] ; child[15] ;
 *                           owner[15] (the owner half of each child's key)
 *
 * An inner slot carries its child's smallest key (start, owner) and the
 * largest `last` in the child's subtree. A query [qs, ql] descends into
 * the children with start <= ql (keys are sorted: a prefix) and
 * maxlast >= qs (anything else cannot reach the query), so it is exact:
 * every overlap is found and nothing else is returned.
 *
 * Cost per level of a query: the start and maxlast lines (2 + 2, read in
 * parallel: their addresses do not depend on each other) and one line of
 * the child array. The owner half of the key is only read by insert and
 * remove, so it lives in its own lines that queries never touch. At 10^6
 * regions inserted in random order nodes are ~70% full (the classic
 * ln 2 of random B-tree insertion), so the tree is 6 levels deep against
 * the ~40 levels of a red-black tree: about 6 dependent cache misses per
 * cold query instead of ~20 (the top levels stay cached in both).
 *
 * Complexity: query O(log n + k) node visits (each O(FANOUT), branch-free
 * mask building); insert and remove O(FANOUT log n). Memory: ~37 B per
 * interval in leaves at 70% fill plus ~4 B in inner nodes (see
 * rindex_bytes()), against 56 B of an itree node per region.
 *
 * ALLOCATION RULE
 *
 * Nothing that can run under the caller's lock allocates or frees memory:
 * a malloc or free there may trim a heap that a userfaultfd monitor
 * watches, the kernel then blocks the thread until the monitor reads the
 * event, and the monitor waits for the lock: deadlock. Hence:
 *
 *   - queries never allocate (the iterator lives on the caller's stack);
 *   - rindex_reserve(), called BEFORE the write lock, sets aside the worst
 *     case an insert can need: one leaf and RINDEX_MAX_HEIGHT inner nodes
 *     (a split at every level plus a new root). It takes them from the
 *     index's spare stash (its own small mutex, never held while
 *     allocating) and mallocs only what the stash lacks. An insert under
 *     the lock takes nodes from the index's garbage first, then from the
 *     reserve: it never fails for want of memory;
 *   - remove never frees: emptied or merged-away nodes go to the index's
 *     garbage list. The caller detaches it under the lock with
 *     rindex_take_garbage() and, after unlocking, hands it to
 *     rindex_free_garbage(), which refills the stash and frees the rest;
 *   - rindex_reserve_release(), after unlocking, returns what an insert did
 *     not use (to the stash, or free()).
 *
 * A typical writer:
 *
 *   struct rindex_reserve r;
 *   if (rindex_reserve(&r, idx)) return -ENOMEM;     (no lock held)
 *   wrlock(); err = rindex_insert(idx, &r, s, l, owner); unlock();
 *   rindex_reserve_release(&r);                        (no lock held)
 *
 *   struct rindex_garbage g;
 *   wrlock(); rindex_remove(idx, s, l, owner); rindex_take_garbage(idx, &g);
 *   unlock(); rindex_free_garbage(idx, &g);
 */
#ifndef UODP_RINDEX_H
#define UODP_RINDEX_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Slots per node. 15 because a 4-byte count plus padding and 15 8-byte
 * keys fill exactly two cache lines, so one array of a node is two lines
 * and a node-level scan never straddles a third; 15-wide nodes keep a
 * 10^6-entry tree at 6 levels. Wider nodes (31) halve nothing that matters
 * (one level less) but double the lines read per level.
 */
#define RINDEX_FANOUT 15

/*
 * Height bound. A non-root node holds at least RINDEX_FANOUT / 2 = 7
 * slots, so a tree of height h holds >= 2 * 7^(h-1) intervals; at 24 B
 * per interval in leaves, the 2^47-byte user address space holds fewer
 * than 2^43, so h <= 15. 16 leaves a margin; it sizes the iterator stack
 * and the reserve.
 */
#define RINDEX_MAX_HEIGHT 16

/*
 * Radix front (see RADIX FRONT above). Addresses below 2^RINDEX_RADIX_BITS
 * are split into buckets of 2^RINDEX_BUCKET_SHIFT bytes; an interval whose
 * start lies there and whose length is at most one bucket lives in the
 * bucket of its start. Everything else lives in the B+-tree.
 */
#define RINDEX_BUCKET_SHIFT 13
#define RINDEX_SMALL_SHIFT 16
#define RINDEX_RADIX_BITS 48

/* Kinds of blocks an index allocates (radix nodes, bucket size classes,
 * B+-tree nodes); private to rindex.c, sized here for the structs. */
#define RINDEX_NKINDS 10

struct rindex_node;   /* private to rindex.c: B+-tree node */
struct rindex_bucket; /* private to rindex.c: radix bucket */

/* Lists of free blocks, one per kind, linked through each block's first
 * word. */
struct rindex_pool {
	void *head[RINDEX_NKINDS];
	uint32_t n[RINDEX_NKINDS];
	uint32_t total; /* blocks, all kinds */
	uint32_t dirty; /* a block was taken since the last top-up */
};

/* The B+-tree holding big intervals (and overflow of full buckets). */
struct rindex_bt {
	struct rindex_node *root; /* NULL when empty */
	unsigned height;	  /* levels, leaves included; 0 when empty */
	uint64_t count;		  /* intervals in the B+-tree */
};

struct rindex {
	void *radix;	/* radix root (private type); NULL when no bucket */
	uint64_t count; /* intervals */
	uint64_t nsmall; /* intervals in buckets */
	struct rindex_bt big;
	uint64_t nblk[RINDEX_NKINDS]; /* blocks in the structure, per kind */
	/* Blocks removed from the structure: under the caller's lock,
	 * reused by inserts, detached by rindex_take_garbage(). */
	struct rindex_pool garbage;
};

/* Blocks set aside for one insert; lives on the writer's stack. */
struct rindex_reserve {
	struct rindex *idx;
	struct rindex_pool *pool; /* a spare pool, owned by the reserve */
};

/* Blocks detached from an index's garbage, to be freed outside the lock. */
struct rindex_garbage {
	struct rindex_pool pool;
};

/* Overlap iterator; lives on the caller's stack, allocates nothing. */
struct rindex_iter {
	uint64_t qs, ql;
	/* Bucket stream: buckets bcur..bend still to visit, the radix leaf
	 * covering bcur (NULL: look it up), the bucket being scanned. */
	const void *root, *rleaf;
	const struct rindex_bucket *bk;
	uint64_t bcur, bend, bbase;
	unsigned bi;
	/* Merge of the two streams (only when the B+-tree is not empty):
	 * the next candidate of each, NULL when that stream is done. */
	int merge;
	void *sm_owner, *bg_owner;
	uint64_t sm_start, bg_start;
	/* B+-tree stream. */
	int top;       /* index of the deepest level in lvl[], -1: done */
	unsigned leaf; /* level index of the leaves (height - 1) */
	struct {
		const struct rindex_node *node;
		uint32_t mask; /* slots of node still to visit */
	} lvl[RINDEX_MAX_HEIGHT];
};

/* Initialise an empty index. Returns 0 or a negative errno (mutex). */
int rindex_init(struct rindex *idx);

/* Free every node (tree, garbage, stash). No other use may be running. */
void rindex_destroy(struct rindex *idx);

/*
 * Set aside the worst case one insert needs, for @idx. Call with no lock
 * held (it may malloc). Fills @r completely (any previous content is
 * ignored). Returns 0 or -ENOMEM (then @r holds nothing).
 */
int rindex_reserve(struct rindex_reserve *r, struct rindex *idx);

/* Give back what @r still holds (stash or free). Call with no lock held.
 * @r is empty afterwards and may be released again harmlessly. */
void rindex_reserve_release(struct rindex_reserve *r);

/*
 * Insert [start, last] owned by @owner, taking nodes only from the index's
 * garbage and from @r (which must come from rindex_reserve() on @idx and
 * not have served another insert since). Never allocates.
 * Returns 0, -EINVAL (start > last or owner NULL) or -EEXIST (this owner
 * already has an interval at this start); on error nothing changed.
 */
int rindex_insert(struct rindex *idx, struct rindex_reserve *r, uint64_t start,
		  uint64_t last, void *owner);

/*
 * Remove the interval [start, last] of @owner (all three must match).
 * Never frees: emptied nodes go to the garbage. Returns 0 or -ENOENT.
 */
int rindex_remove(struct rindex *idx, uint64_t start, uint64_t last,
		  void *owner);

/* Detach the garbage (under the caller's lock; does not free). */
void rindex_take_garbage(struct rindex *idx, struct rindex_garbage *g);

/* Recycle or free detached garbage. Call with no lock held. */
void rindex_free_garbage(struct rindex *idx, struct rindex_garbage *g);

/*
 * The owner of the first interval (in (start, owner) order) overlapping
 * [qs, ql], or NULL; then the next one, or NULL when done. The index must
 * not change between the calls of one iteration. qs > ql yields nothing.
 */
void *rindex_iter_first(const struct rindex *idx, uint64_t qs, uint64_t ql,
			struct rindex_iter *it);
void *rindex_iter_next(struct rindex_iter *it);

/* Number of intervals. */
static inline uint64_t rindex_count(const struct rindex *idx)
{
	return idx->count;
}

/* Bytes held by the index: tree nodes, garbage and stash (not @idx
 * itself, nor reserves held by writers). */
uint64_t rindex_bytes(const struct rindex *idx);

/* Bytes of the tree's nodes only: the memory per interval is this / count. */
uint64_t rindex_tree_bytes(const struct rindex *idx);

/*
 * Check every invariant (order, keys, maxlast, fill, equal leaf depth,
 * counts). O(n). Returns 0 if valid, -1 otherwise. For tests.
 */
int rindex_check(const struct rindex *idx);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * rindex.h - a cache-dense index of closed intervals [start, last]: a
 * context's region index, behind its overlap lookups (issue 11; it
 * replaced the red-black itree there).
 *
 * Role: maps intervals to opaque owner pointers and answers "every interval
 * overlapping [qs, ql]". Stores nothing in the owner (non-intrusive). Not
 * thread safe: the caller serialises writers against everything (a write
 * lock) and may run any number of queries in parallel (a read lock).
 *
 * DESIGN
 *
 * Two structures, each interval in exactly one:
 *
 *   - a radix front for SMALL intervals (last - start < 64 KiB, start below
 *     2^48: user addresses), the common case of registered regions;
 *   - a B+-tree for everything else (BIG intervals), and for the overflow
 *     of a crowded bucket (below). Usually empty; a query skips it with
 *     one NULL test.
 *
 * Radix front. The address space below 2^48 is cut into 8-KiB buckets
 * (RINDEX_BUCKET_SHIFT); a small interval lives in the bucket of its
 * start. Bucket numbers (35 bits) index a fixed 4-level radix tree, like a
 * page table, allocated lazily: a root of 512 pointers, two inner levels
 * of 512, and leaves of 256 32-byte slots (8 KiB, covering 2 MiB). A leaf
 * starts SPARSE (its non-empty slots listed by slot index, in classes of
 * 3, 7 and 15 slots: a small region alone in its 2 MiB costs ~120 B, not
 * 8 KiB) and becomes dense when it needs a 16th slot. A slot holds its
 * bucket:
 *
 *   - empty;
 *   - one or two intervals INLINE: owner pointers + start offsets and
 *     lengths, so one-page regions (8 KiB apart or contiguous) cost one
 *     slot and a lookup or insert ends at the leaf (no further pointer, no
 *     further cache miss);
 *   - three or more: a pointer to a bucket block, a small array sorted by
 *     (start, owner) (offsets and lengths as u16, owners; 12 B per entry;
 *     size classes of 4 .. 64 entries, grown by copy).
 *
 * Every slot also carries the largest `last` of its bucket (as an offset),
 * so a query can skip a bucket from the slot alone. Since a small interval
 * is shorter than 64 KiB = 8 buckets, one starting in bucket b reaches at
 * most bucket b + 8: a query [qs, ql] visits the slots of buckets
 * (qs >> 13) - 8 .. (ql >> 13) and nothing else. The inner node above the
 * leaves counts, per leaf, the slots whose intervals cross their bucket's
 * end; when none do (one-page regions never do), a query starts at
 * qs's own bucket. It is exact: every overlap is found, nothing else
 * returned. A bucket that would exceed 64 entries (64 intervals starting
 * in 8 KiB: duplicates or tiny intervals) sends the excess to the B+-tree,
 * which keeps queries exact at B+-tree cost.
 *
 * B+-tree, ordered by the composite key (start, owner), so equal
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
 * maxlast >= qs (anything else cannot reach the query).
 *
 * Order. Both structures yield their overlaps in (start, owner) order
 * (buckets in address order, each sorted); when the B+-tree is not empty
 * the iterator merges the two streams, so the documented order holds.
 * A key (start, owner) is unique across both: insert checks the bucket of
 * start and, if not empty, the B+-tree.
 *
 * Complexity: a query of a page is a 4-level descent (the upper levels
 * stay cached) and one slot, or up to 9 slots of one leaf when crossing
 * intervals are near: O(1), about one cache miss per cold query; a query
 * spanning many buckets walks them in order, skipping missing subtrees.
 * Insert/remove of a small interval: O(bucket size); of a big one:
 * O(FANOUT log n). Memory (docs/INDEX-NOTES.md): 32 B per region for
 * one-page regions 8 KiB apart, 16 B when contiguous, ~120 B for a small
 * region alone in its 2 MiB, at most 512 B (a dense leaf holding 16
 * regions); B+-tree ~41 B per big interval.
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
 *     case an insert can need, per block kind: a radix path (root, two
 *     inner nodes, a sparse leaf of each class, a dense leaf), one bucket
 *     block of each size class, and the
 *     B+-tree's (one leaf, RINDEX_MAX_HEIGHT inner nodes: a split at every
 *     level plus a new root). Each thread keeps one spare POOL of blocks
 *     (thread-local, so no lock and no atomic): the reserve takes the
 *     whole pool (a pointer move) and mallocs only what an earlier insert
 *     consumed (at most a few blocks, and only when an insert needed new
 *     memory). No pre-check of the index is made (it would read the index
 *     without its lock); the worst case is cheap to hold because it is
 *     reused from insert to insert. An insert under the lock takes blocks
 *     from the index's garbage first, then from the reserve: it never
 *     fails for want of memory;
 *   - remove never frees: an emptied radix node, a bucket block emptied to
 *     one entry (that entry goes back inline) or a merged-away B+-tree node
 *     go to the index's garbage lists. The caller detaches them under the
 *     lock with rindex_take_garbage() and, after unlocking, hands them to
 *     rindex_free_garbage(), which refills the calling thread's pool (up
 *     to its caps) and frees the rest;
 *   - rindex_reserve_release(), after unlocking, hands the pool back to
 *     the calling thread (or frees it if that thread already has one: a
 *     second reserve was taken meanwhile). A reserve may be released on
 *     another thread than the one that took it; its pool then stays
 *     there. A thread's pool is freed when the thread exits.
 *
 * Spare memory: at most one pool per thread that writes, ~33 KiB (a 4-KiB
 * root, two 5-KiB inner nodes, an 8-KiB dense leaf, one sparse leaf and
 * one bucket block per class, 8.5 KiB of B+-tree nodes), up to ~44 KiB
 * with the few recycled blocks it may keep, plus the garbage the caller
 * has not collected.
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
 * Radix front (see DESIGN). Addresses below 2^RINDEX_RADIX_BITS are split
 * into buckets of 2^RINDEX_BUCKET_SHIFT bytes; an interval starting there
 * and shorter than 2^RINDEX_SMALL_SHIFT bytes lives in the bucket of its
 * start. Everything else lives in the B+-tree. 8-KiB buckets were chosen
 * by measurement (docs/INDEX-NOTES.md): one-page regions then sit one or
 * two to a bucket, inline.
 */
#define RINDEX_BUCKET_SHIFT 13
#define RINDEX_SMALL_SHIFT 16
#define RINDEX_RADIX_BITS 48

/* Kinds of blocks an index allocates (radix nodes, bucket size classes,
 * B+-tree nodes); private to rindex.c, sized here for the structs. */
#define RINDEX_NKINDS 13

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
	void *radix;	 /* radix root (private type); NULL when no bucket */
	uint64_t count;	 /* intervals */
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
	const void *isl; /* slot whose two inline intervals are scanned */
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

/* Initialise an empty index (allocates nothing). Returns 0. */
int rindex_init(struct rindex *idx);

/* Free every block (structure and garbage). No other use may be running.
 * Threads' spare pools are not the index's: they outlive it. */
void rindex_destroy(struct rindex *idx);

/*
 * Set aside the worst case one insert needs, for @idx. Call with no lock
 * held (it may malloc). Fills @r completely (any previous content is
 * ignored). Returns 0 or -ENOMEM (then @r holds nothing).
 */
int rindex_reserve(struct rindex_reserve *r, struct rindex *idx);

/* Give back what @r still holds (to the calling thread's pool, or free).
 * Call with no lock held. @r is empty afterwards and may be released again
 * harmlessly. */
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

/* Bytes held by the index: its blocks in use and its garbage (not @idx
 * itself, nor reserves or threads' spare pools). Requested sizes: malloc's
 * own overhead (8-16 B per block) is not counted. */
uint64_t rindex_bytes(const struct rindex *idx);

/* Bytes of the blocks in use only: the memory per interval is this / count. */
uint64_t rindex_tree_bytes(const struct rindex *idx);

/*
 * Check every invariant (radix: no empty node, slots and blocks sorted,
 * in bounds, largest-last exact; B+-tree: order, keys, maxlast, fill,
 * equal leaf depth; keys unique across both; counts). O(n). Returns 0 if
 * valid, -1 otherwise. For tests.
 */
int rindex_check(const struct rindex *idx);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * pgtable.h - a sparse, lazily allocated table of 64-bit words indexed by
 * page number; 0 means "empty".
 *
 * It is the translation table of a region: creating one allocates nothing,
 * so registration is O(1) in the region's size, and memory grows only with
 * the pages that hold a nonzero word. A radix tree of fixed depth (chosen
 * from the number of slots at init) whose leaves hold the words; a leaf or
 * an inner node is freed as soon as it holds no nonzero word, so memory
 * shrinks back when pages are unmapped. Iteration skips empty subtrees.
 * Not thread safe: the caller locks (the region lock).
 */
#ifndef UODP_PGTABLE_H
#define UODP_PGTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 56 bytes: every region holds two (engine/internal.h), so no padding. */
struct pgt {
	void *root;	       /* NULL until the first nonzero word */
	uint64_t nslots;       /* number of slots (indexes 0 .. nslots-1) */
	unsigned levels;       /* inner levels above the leaves */
	bool no_alloc;	       /* never call the allocator (see below) */
	uint64_t used;	       /* number of nonzero words */
	uint64_t bytes;	       /* memory held by live nodes and leaves */
	void *graveyard;       /* emptied nodes kept for reuse (see below) */
	uint64_t cached_bytes; /* memory held by the graveyard */
};

/* Most nodes one write can need (a leaf and every inner level). */
#define PGT_MAX_PATH 8

/* Prepare an empty table of @nslots slots (>= 1). Allocates nothing. */
void pgt_init(struct pgt *t, uint64_t nslots);

/* Free every node. The table is empty (and still usable) afterwards. */
void pgt_destroy(struct pgt *t);

/*
 * Nodes emptied by any operation are not freed but kept on the table's
 * graveyard, and node allocations reuse them first. So clearing words never
 * calls free(): the engine clears entries on the notifier's monitor thread,
 * where free() could trim a registered heap (sbrk/madvise), raise a
 * userfaultfd event and wait for that very thread. pgt_reap() gives the
 * graveyard back to the allocator; call it from threads that may free
 * (the fault path, release). pgt_destroy() reaps too.
 */
void pgt_reap(struct pgt *t);

/*
 * Tables guarded by a lock that the notifier's monitor thread may wait for
 * must not call the allocator under it either: malloc() may wait for the
 * arena lock of a thread whose free() is blocked on a userfaultfd event,
 * i.e. on the monitor thread. Such tables set no_alloc: node allocations
 * then only reuse graveyard nodes, and a write that needs more fails with
 * the table unchanged (pgt_set: -EWOULDBLOCK; pgt_leaf_slot: NULL, errno
 * EWOULDBLOCK). The caller then learns the sizes of the nodes a write at
 * @idx needs (pgt_need), allocates them with the lock dropped, and gives
 * them to the table (pgt_stock) before trying again.
 */
unsigned pgt_need(const struct pgt *t, uint64_t idx,
		  size_t sizes[PGT_MAX_PATH]);
/* Allocate a node of @size bytes for pgt_stock() (malloc(), honouring
 * the pgt_test_fail_alloc() hook). */
void *pgt_node_malloc(size_t size);
/* Add a node of @size bytes, from pgt_node_malloc(), to the graveyard. */
void pgt_stock(struct pgt *t, void *node, size_t size);
/* Detach the graveyard (to free it with pgt_free_nodes() once the lock is
 * dropped), or NULL. */
void *pgt_take_graveyard(struct pgt *t);
void pgt_free_nodes(void *list);

/* The word at @idx (0 if empty or idx >= nslots). */
uint64_t pgt_get(const struct pgt *t, uint64_t idx);

/* Store @val at @idx (< nslots). Storing 0 empties the slot and frees nodes
 * that become empty. Returns 0, or -ENOMEM (table unchanged) when a node
 * could not be allocated, or -EINVAL (table unchanged) if idx >= nslots. */
int pgt_set(struct pgt *t, uint64_t idx, uint64_t val);

/*
 * Visit the nonzero words with index in [from, to) in ascending order,
 * skipping empty subtrees without touching their slots. @fn receives the
 * index and a pointer to the word, which it may change (including to 0:
 * the table then keeps its counts and frees emptied nodes). A nonzero
 * return from @fn stops the walk. Returns the number of words visited.
 * @fn must not call other pgt functions on @t.
 */
uint64_t pgt_for_each(struct pgt *t, uint64_t from, uint64_t to,
		      int (*fn)(uint64_t idx, uint64_t *word, void *arg),
		      void *arg);

/*
 * Fast path for filling a run: a pointer to the slot @idx in its leaf,
 * allocating the path if needed, and in *@room how many consecutive slots
 * (idx, idx+1, ...) the same leaf holds from there. Callers that write
 * through the pointer must report each slot they turn from 0 to nonzero or
 * back with pgt_leaf_account(). Returns NULL on -ENOMEM (errno ENOMEM,
 * table unchanged) or if idx >= nslots (errno EINVAL). A leaf it allocated
 * stays, empty, until pgt_leaf_account() (delta 0 is fine) or another call
 * that touches it finds it empty.
 */
uint64_t *pgt_leaf_slot(struct pgt *t, uint64_t idx, uint64_t *room);
/* Adjust the nonzero count of the leaf holding @idx by @delta (positive:
 * slots filled through pgt_leaf_slot; negative: emptied) and free the leaf
 * (and empty parents) if it holds nothing. */
void pgt_leaf_account(struct pgt *t, uint64_t idx, int64_t delta);

/* Test hook: make the @n-th node allocation from now fail (1: the next
 * one); 0 disables. Not thread safe; for unit tests only. */
void pgt_test_fail_alloc(unsigned n);

#endif

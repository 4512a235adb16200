/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the engine's objects, their locks and the invariants of the
 * retry protocol. Every engine file includes it; nothing outside src/ does.
 *
 * Lock order (outermost first); no function takes them in another order:
 *
 *   1. ctx->mon_lock   (mutex)  the monitor's life cycle, its kernel
 *                               registrations and ctx->nwatched. Never taken
 *                               by the monitor thread, so the thread can be
 *                               joined under it. Never held while waiting
 *                               for the tree lock: a writer of the tree waits
 *                               for running invalidation callbacks, and a
 *                               callback may wait for a device thread that
 *                               is faulting, i.e. waiting for mon_lock in
 *                               uodp_umem_map().
 *   2. ctx->tree_lock  (rwlock) the region tree, the region list, the list of
 *                               regions without private counters,
 *                               ctx->nregions, ctx->dying, ctx->destroyed.
 *                               Read: invalidations walk the tree (and call
 *                               the driver under it). Write: registration,
 *                               release, activation of counters, teardown;
 *                               writers hold it briefly and never call out.
 *   3. umem->lock      (mutex)  the region's translation table, its
 *                               notifier counters (seq, count, active, dying)
 *                               and its condition variable. Also the driver's
 *                               lock around uodp_umem_retry() (uodp_umem_lock).
 *   4. ctx->pin_lock   (mutex)  the per-page mlock reference counts of
 *                               pinning mode.
 *
 * No engine lock is held while the driver's invalidate_range runs except the
 * tree lock for reading; no lock at all is held during madvise/pagemap I/O.
 */
#ifndef UODP_ENGINE_INTERNAL_H
#define UODP_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/itree.h"
#include "lib/pgtable.h"
#include "uodp.h"

#define UODP_CTX_MAGIC 0x75636f6e74787431ull  /* "uctxt1" */
#define UODP_UMEM_MAGIC 0x756d656d72656731ull /* "umemreg1" */

/*
 * A translation-table word (struct pgt slot) of one page:
 *   bits 0-1   UODP_ACCESS_* the page is mapped with; nonzero iff mapped
 *   bit  2     DIRTY: was mapped writable since the last dirty_take()
 *   bit  3     PINNED: the engine holds an mlock reference (pinning mode)
 *   bits 12-63 page frame number (0 when pagemap does not reveal it)
 * A word with only DIRTY set is an unmapped page of the dirty set.
 */
#define W_ACCESS_MASK ((uint64_t)UODP_ACCESS_ALL)
#define W_DIRTY ((uint64_t)1 << 2)
#define W_PINNED ((uint64_t)1 << 3)
#define W_PFN_SHIFT 12

/* Highest user address the engine accepts (56-bit, five-level paging). */
#define UODP_VA_LIMIT ((uint64_t)1 << 56)

struct umon;

struct uodp_ctx {
	uint64_t magic;
	struct uodp_ctx_ops ops;
	unsigned flags;
	unsigned long fork_gen; /* engine_fork_generation at creation */
	int pagemap_fd;		/* /proc/self/pagemap, -1 if unusable */
	bool pagemap_pfns; /* pagemap shows frame numbers (CAP_SYS_ADMIN) */
	unsigned page_shift;

	pthread_mutex_t mon_lock; /* see lock order above */
	struct umon *mon;	  /* kernel monitor, NULL when none runs */
	uint64_t nwatched;	  /* regions registered with it */

	pthread_rwlock_t tree_lock;    /* see lock order above */
	struct itree tree;	       /* regions by [start, end - 1] */
	struct uodp_umem *umems;       /* all regions (for teardown) */
	struct uodp_umem *no_counters; /* regions waiting for counters */
	uint64_t nregions;
	bool dying;	/* uodp_ctx_destroy() started: no new regions */
	bool destroyed; /* it finished: the last release frees the context;
			 * set and read under mon_lock + tree_lock */

	/*
	 * Invalidations running now (start() done, end() not yet). Raised
	 * before an invalidation walks the tree and lowered after its end()
	 * walked it, without the tree lock. A region registered while it is
	 * nonzero gets no private counters (it goes on no_counters) because
	 * the running invalidation's start() may have missed it while its
	 * end() would not; it is activated when the count drops to zero.
	 */
	atomic_long notifier_count;
	/* Regions on no_counters, readable without the tree lock so that an
	 * ending invalidation takes the write lock only when needed. */
	atomic_long nc_pending;

	pthread_mutex_t pin_lock; /* see lock order above */
	struct pgt pins;	  /* page number -> mlock reference count */
};

struct uodp_umem {
	uint64_t magic;
	struct uodp_ctx *ctx;
	uint64_t start, end; /* page aligned, start < end */
	unsigned access;     /* rights the region was registered with */
	_Atomic(void *) priv;

	struct itree_node node;	       /* in ctx->tree; under ctx->tree_lock */
	struct uodp_umem *next, *prev; /* ctx->umems; under tree_lock */
	struct uodp_umem *next_nc;     /* ctx->no_counters; under tree_lock */
	bool on_nc;		       /* on that list; under tree_lock */

	pthread_mutex_t lock; /* see lock order above; recursive, so that
			       * entry readers work with or without it */
	pthread_cond_t idle;  /* broadcast when count drops to 0 or dying */
	struct pgt table;     /* page index -> word (see W_*) */

	/*
	 * The retry protocol. Under umem->lock:
	 *  - count: invalidations running on this region (start accounted,
	 *    end not yet). While nonzero no fault installs an entry.
	 *  - seq: bumped by every invalidation's end. A fault that read seq
	 *    before populating and finds it unchanged (and count zero) under
	 *    the lock knows that no invalidation overlapped its window, so
	 *    the pages it populated are still the ones mapped.
	 *  - active: counters are kept (see ctx->notifier_count). While
	 *    false, retry is always true.
	 *  - dying: the context is gone; retry is always true, wait fails.
	 * seq is also read without the lock (uodp_umem_read_seq), so it is
	 * atomic; it is only written under the lock.
	 */
	_Atomic uint64_t seq;
	long count;
	bool active;
	bool dying;

	uint64_t mapped; /* words with access bits; under lock */
	struct {
		uint64_t map_calls, pages_mapped, invalidations,
			pages_invalidated, eagain;
	} stats; /* under lock */
};

/* Common checks of public entry points. */
static inline bool ctx_valid(const struct uodp_ctx *ctx)
{
	return ctx && ctx->magic == UODP_CTX_MAGIC;
}
static inline bool umem_valid(const struct uodp_umem *umem)
{
	return umem && umem->magic == UODP_UMEM_MAGIC;
}
/* In a child forked since the context was created? (ctx.c) */
extern atomic_ulong engine_fork_generation;
static inline bool ctx_forked(const struct uodp_ctx *ctx)
{
	return atomic_load_explicit(&engine_fork_generation,
				    memory_order_relaxed) != ctx->fork_gen;
}
bool umem_retry_locked(const struct uodp_umem *umem, uint64_t seq);

static inline uint64_t umem_page(const struct uodp_umem *umem, uint64_t va)
{
	return (va - umem->start) >> umem->ctx->page_shift;
}

/*
 * table.c: no allocation under a lock the monitor may wait for.
 * table_refill(): called with @lock held after a no_alloc write failed with
 * EWOULDBLOCK at @idx; drops @lock, allocates the nodes, retakes it and
 * stocks them. The caller re-checks what the lock protected (the retry
 * protocol) and tries again. Returns 0 or -ENOMEM.
 * table_trim(): with the lock held, detach the graveyard when it holds more
 * than the live table plus TABLE_SPARE_BYTES; free the result with
 * pgt_free_nodes() after dropping the lock.
 */
#define TABLE_SPARE_BYTES ((uint64_t)256 << 10)
int table_refill(struct pgt *t, pthread_mutex_t *lock, uint64_t idx);
void *table_trim(struct pgt *t);

/* ctx.c */
void ctx_stop_monitor_locked(struct uodp_ctx *ctx); /* mon_lock held */
void ctx_release(struct uodp_ctx *ctx); /* last region of a destroyed ctx */
void ctx_notifier_end(struct uodp_ctx *ctx);

/* pin.c: mlock reference counts of pinning mode (ctx->pin_lock inside).
 * pin_range() takes a reference on each of @n pages from @va and returns
 * how many it took (*err: why it stopped early, -ENOMEM); unpin_range()
 * drops one on each of @n pages (never fails, never allocates). */
uint64_t pin_range(struct uodp_ctx *ctx, uint64_t va, uint64_t n, int *err);
void unpin_range(struct uodp_ctx *ctx, uint64_t va, uint64_t n);

/* invalidate.c */
/* Drop the entries of [start, end) (page aligned, inside the region), taking
 * umem->lock. Writable ones join the dirty set, pinned ones are unpinned.
 * With @invalidation the region's invalidation counters are updated.
 * Returns the number of entries dropped. */
uint64_t umem_drop_range(struct uodp_umem *umem, uint64_t start, uint64_t end,
			 bool invalidation);
/* One-region invalidation (frame changed under an entry). */
void umem_invalidate_one(struct uodp_umem *umem, uint64_t start, uint64_t end);

/*
 * Test hooks: called, when set, at the points named. They let tests stop a
 * thread exactly where a race window is and run the other side there.
 * Never set outside tests.
 */
extern void (*engine_test_hook_before_install)(struct uodp_umem *umem);
extern void (*engine_test_hook_after_start_walk)(struct uodp_ctx *ctx);

#endif

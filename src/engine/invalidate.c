/* SPDX-License-Identifier: MIT */
/*
 * invalidate.c - invalidations over the region index: the one-shot walk
 * (kernel events, uodp_invalidate_range()), the bracketed start/end pair
 * paired by a caller-owned token, the relay walk of deferred delivery, and
 * dropping entries (with dirty marking).
 *
 * The protocol steps themselves (counters, sequences, periods) are in
 * protocol.c; this file decides which regions get them, in what order, and
 * under which lock the driver is called.
 */
#include <errno.h>

#include "engine/internal.h"

struct drop_arg {
	struct uodp_umem *umem;
	bool gone; /* unpin_gone(), not unpin_range() */
	uint64_t dropped;
	uint64_t pin_start, pin_len; /* pinned pages to unpin, as a run */
};

static void unpin_run(const struct drop_arg *arg)
{
	if (arg->gone)
		unpin_gone(arg->umem->ctx, arg->pin_start, arg->pin_len);
	else
		unpin_range(arg->umem->ctx, arg->pin_start, arg->pin_len);
}

/* Turn a mapped word into its unmapped form: a page mapped writable joins
 * the dirty set (the device may have written it), others keep whatever
 * dirty state they had. Pinned pages are unpinned a run at a time. */
static int drop_word(uint64_t idx, uint64_t *word, void *argp)
{
	struct drop_arg *arg = argp;
	struct uodp_umem *umem = arg->umem;
	uint64_t w = *word, page = page_size_of(umem->ctx);

	if (!(w & W_ACCESS_MASK))
		return 0;
	if (w & W_PINNED) {
		uint64_t va = umem->start + idx * page;

		if (arg->pin_len &&
		    arg->pin_start + arg->pin_len * page != va) {
			unpin_run(arg);
			arg->pin_len = 0;
		}
		if (!arg->pin_len)
			arg->pin_start = va;
		arg->pin_len++;
	}
	*word = (w & (UODP_ACCESS_WRITE | W_DIRTY)) ? W_DIRTY : 0;
	arg->dropped++;
	return 0;
}

uint64_t umem_drop_range(struct uodp_umem *umem, uint64_t start, uint64_t end,
			 bool invalidation)
{
	uint64_t n;

	if (umem_watch_only(umem))
		return 0;
	ulock_lock(&umem->lock);
	n = umem_drop_range_locked(umem, start, end, invalidation, false);
	ulock_unlock(&umem->lock);
	return n;
}

uint64_t umem_drop_range_locked(struct uodp_umem *umem, uint64_t start,
				uint64_t end, bool invalidation, bool gone)
{
	struct drop_arg arg = { .umem = umem, .gone = gone };

	ulock_assert_held(&umem->lock);
	/* No translation at all (a region watched but never mapped, or one
	 * already dropped whole): no word has access bits, and drop_word()
	 * changes only those (dirty and pinned words are mapped ones), so
	 * the walk of the table would change nothing. */
	if (umem->mapped)
		pgt_for_each(&umem->table, umem_page(umem, start),
			     umem_page(umem, end), drop_word, &arg);
	if (arg.pin_len)
		unpin_run(&arg);
	umem->mapped -= arg.dropped;
	arg.dropped += huge_drop_locked(umem, start, end);
	if (invalidation)
		umem->stats.pages_invalidated += arg.dropped;
	return arg.dropped;
}

void (*engine_test_hook_after_start_walk)(struct uodp_ctx *ctx);

/* [s, e) clamped to the region. */
static void clamp(const struct uodp_umem *umem, uint64_t start, uint64_t end,
		  uint64_t *s, uint64_t *e)
{
	*s = start > umem->start ? start : umem->start;
	*e = end < umem->end ? end : umem->end;
}

/*
 * The one-shot walk: for each overlapping region, start, call the driver,
 * drop, end - all under the tree read lock, so no region enters or leaves
 * the index meanwhile: a region registered concurrently is either found by
 * the walk or registered after it, when the change is complete. So a
 * one-shot walk needs no period (ONE_SHOT accounts every region it finds)
 * and does not hold back regions registered meanwhile elsewhere: a process
 * that unmaps all the time does not keep new regions from faulting.
 */
void ctx_invalidate(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
		    enum uodp_event ev, bool gone)
{
	struct rindex_iter it;
	struct uodp_umem *umem;
	uint64_t period = ONE_SHOT, s, e;

	atomic_fetch_add(&ctx->inflight, 1);
	pthread_rwlock_rdlock(&ctx->tree_lock);
	for_each_overlap(ctx, it, umem, start, end)
	{
		clamp(umem, start, end, &s, &e);
		inval_locked(umem, s, e, ev, period, gone);
	}
	if (engine_test_hook_after_start_walk)
		engine_test_hook_after_start_walk(ctx);
	pthread_rwlock_unlock(&ctx->tree_lock);
	atomic_fetch_sub(&ctx->inflight, 1);
}

/*
 * A one-region invalidation, for a page whose frame changed under a live
 * entry. Held in a period of its own like any invalidation, and called
 * under the tree read lock, so the driver's callback runs under the same
 * rules as for any other invalidation.
 */
void umem_invalidate_one(struct uodp_umem *umem, uint64_t start, uint64_t end,
			 enum uodp_event ev)
{
	struct uodp_ctx *ctx = umem->ctx;
	uint64_t period = ONE_SHOT;

	atomic_fetch_add(&ctx->inflight, 1);
	pthread_rwlock_rdlock(&ctx->tree_lock);
	inval_locked(umem, start, end, ev, period, false);
	pthread_rwlock_unlock(&ctx->tree_lock);
	atomic_fetch_sub(&ctx->inflight, 1);
}

/* ---- deferred delivery: the two halves of a kernel event ---- */

/* Monitor thread: raise the stripes of the range on every overlapping
 * region so faults wait or retry from now on. No driver call, nothing that
 * can block on an application thread but the tree read lock, whose
 * writers never wait. */
void ctx_deferred_begin(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
			bool gone)
{
	struct rindex_iter it;
	struct uodp_umem *umem;
	uint64_t s, e;

	/* The period still opens: a region registered from now until the
	 * finish may have been missed by this walk, and its faults wait. */
	ctx_inval_begin(ctx);
	pthread_rwlock_rdlock(&ctx->tree_lock);
	for_each_overlap(ctx, it, umem, start, end)
	{
		clamp(umem, start, end, &s, &e);
		inval_deferred_begin(umem, s, e, gone);
	}
	pthread_rwlock_unlock(&ctx->tree_lock);
}

/* Why 32: a batch lives on the relay thread's stack (256 bytes); larger
 * invalidations take one more short read-locked walk per 32 regions. */
#define RELAY_BATCH 32

/*
 * Collect up to RELAY_BATCH overlapping regions not yet handled by walk
 * @id, each with a reference, under the read lock. The index yields
 * overlaps in (start, owner) order, so each walk resumes at *@from, the
 * start of the last region collected: the regions of earlier batches are
 * not walked again (before, each batch walked from @start and skipped them,
 * quadratic in the regions of one event). A region that starts before
 * *@from and reaches past it is met again and skipped by relay_done;
 * regions that end before *@from were all collected already, or were
 * registered after the walk passed them, hence after every begin this
 * finish stands for, and have nothing pending.
 */
static unsigned relay_collect(struct uodp_ctx *ctx, uint64_t *from,
			      uint64_t end, uint64_t id,
			      struct uodp_umem **batch)
{
	struct rindex_iter it;
	struct uodp_umem *umem;
	unsigned k = 0;

	pthread_rwlock_rdlock(&ctx->tree_lock);
	for_each_overlap(ctx, it, umem, *from, end)
	{
		if (umem->relay_done == id)
			continue;
		umem->relay_done = id;
		atomic_fetch_add(&umem->refs, 1);
		batch[k++] = umem;
		if (k == RELAY_BATCH)
			break;
	}
	pthread_rwlock_unlock(&ctx->tree_lock);
	/* start never changes, and the reference keeps the region alive. */
	if (k && batch[k - 1]->start > *from)
		*from = batch[k - 1]->start;
	return k;
}

/*
 * What a finish takes pending on a region is the hull of every begin
 * there since the last take, and a merged finish is the hull of several
 * events (the notifier's, mixed ones reported as UNMAP): either may cover
 * memory still mapped, between the events or under a REMOVE, whose pins
 * must be dropped with munlock() (as a manual invalidation's), or it stays
 * locked for good (test_pinned_deferred_hull); and memory gone, a later
 * UNMAP's, where munlock() would unlock what the application mapped there
 * since (test_pinned_deferred_remove_hull). So each begin says whether its
 * memory is gone, not the finish: inval_call_pending().
 */
/*
 * Relay thread: call the driver with no uodp lock held, drop, end. The
 * regions are held by a reference, not by the tree lock, so the callback
 * may take locks under which other threads register or release regions,
 * and may release its own region (umem_put() frees it after us).
 * A finish may stand for @merged begins (the notifier merges them when its
 * queue is full, [start, end) being the hull): each region settles what is
 * pending on it (its own hull and stripes), whichever finish gets there
 * first, and the context ends all @merged invalidations.
 */
void ctx_deferred_finish(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
			 enum uodp_event ev, unsigned merged)
{
	struct uodp_umem *batch[RELAY_BATCH];
	uint64_t id = ++ctx->relay_id, from = start;
	struct inval_pend p;
	unsigned k, i;

	while ((k = relay_collect(ctx, &from, end, id, batch)) > 0) {
		for (i = 0; i < k; i++) {
			struct uodp_umem *umem = batch[i];

			if (inval_deferred_take(umem, &p)) {
				if (!atomic_load(&umem->released))
					inval_call_pending(umem, &p, ev);
				inval_end_mask(umem, p.mask);
			}
			umem_put(umem);
		}
	}
	while (merged--)
		ctx_inval_end(ctx);
}

/* ---- the public entry points ---- */

/* The checks every entry point makes; rounds the range out to pages. */
static int invalidate_args(struct uodp_ctx *ctx, uint64_t addr, uint64_t len,
			   uint64_t *start, uint64_t *end)
{
	int r;

	if (!ctx_valid(ctx))
		return -EINVAL;
	r = page_round(ctx, addr, len, start, end);
	if (r)
		return r;
	if (ctx_forked(ctx))
		return -ECHILD;
	return callback_check(false);
}

UODP_API int uodp_invalidate_range(struct uodp_ctx *ctx, void *addr, size_t len,
				   enum uodp_event event)
{
	uint64_t start, end;
	int r, cs;

	if ((unsigned)event > UODP_EVENT_MAX)
		return -EINVAL;
	r = invalidate_args(ctx, (uintptr_t)addr, len, &start, &end);
	if (r)
		return r;
	r = ctx_enter(ctx);
	if (r)
		return r;
	cs = nocancel_begin();
	ctx_settle_moves(ctx); /* before it unpins: see there */
	ctx_invalidate(ctx, start, end, event, false);
	nocancel_end(cs);
	ctx_leave(ctx);
	return 0;
}

/*
 * The token: reserved[] of the caller's struct uodp_range. [0] is the state
 * word (magic while started), [1] the context, [2] the period, [3]/[4] the
 * rounded range, [5] the token's own address: a copy of a started token
 * lives elsewhere, so it is no token (ending it changes nothing). The state
 * word is claimed with a compare-and-swap, so of two end() calls racing on
 * one token exactly one succeeds.
 */
enum {
	TOK_STATE,
	TOK_CTX,
	TOK_PERIOD,
	TOK_START,
	TOK_END,
	TOK_SELF
};

static _Atomic uint64_t *tok_state(struct uodp_range *range)
{
	return (_Atomic uint64_t *)&range->reserved[TOK_STATE];
}

UODP_API int uodp_invalidate_range_start(struct uodp_ctx *ctx,
					 struct uodp_range *range)
{
	struct rindex_iter it;
	struct uodp_umem *umem;
	uint64_t start, end, period, s, e, zero = 0;
	unsigned i;
	int r, cs;

	if (!range)
		return -EINVAL;
	for (i = 0; i < sizeof(range->reserved) / sizeof(range->reserved[0]);
	     i++)
		if (range->reserved[i])
			return -EINVAL; /* in use, or not initialised */
	if ((unsigned)range->event > UODP_EVENT_MAX || range->flags ||
	    range->end <= range->start)
		return -EINVAL;
	r = invalidate_args(ctx, (uintptr_t)range->start,
			    (uintptr_t)range->end - (uintptr_t)range->start,
			    &start, &end);
	if (r)
		return r;
	if (!atomic_compare_exchange_strong(tok_state(range), &zero,
					    UODP_RANGE_MAGIC - 1))
		return -EINVAL; /* another start() claimed it just now */
	/* The open token holds the context: its end() may come after
	 * uodp_ctx_destroy(), and must find live memory. Taken inside
	 * ctx_enter(), and never from 0 (ctx_hold()): a destroy racing us
	 * may have dropped the last hold, and its ctx_free() then waits for
	 * our ctx_leave() to free. */
	r = ctx_enter(ctx);
	if (!r && !ctx_hold(ctx)) {
		ctx_leave(ctx);
		r = -ENODEV;
	}
	if (r) {
		atomic_store(tok_state(range), 0); /* unclaimed again */
		return r;
	}
	ctx_leave(ctx); /* the hold keeps the memory from here on */

	cs = nocancel_begin();
	ctx_settle_moves(ctx); /* before it unpins: see there */
	period = ctx_inval_begin(ctx);
	pthread_rwlock_rdlock(&ctx->tree_lock);
	for_each_overlap(ctx, it, umem, start, end)
	{
		clamp(umem, start, end, &s, &e);
		inval_start(umem, s, e, period);
		inval_call(umem, s, e, range->event, CB_LOCKED, false);
	}
	if (engine_test_hook_after_start_walk)
		engine_test_hook_after_start_walk(ctx);
	pthread_rwlock_unlock(&ctx->tree_lock);
	nocancel_end(cs);

	range->reserved[TOK_CTX] = (uint64_t)(uintptr_t)ctx;
	range->reserved[TOK_PERIOD] = period;
	range->reserved[TOK_START] = start;
	range->reserved[TOK_END] = end;
	range->reserved[TOK_SELF] = (uint64_t)(uintptr_t)range;
	atomic_store(tok_state(range), UODP_RANGE_MAGIC);
	return 0;
}

/*
 * end() walks the same range again. Every region it finds was either in
 * the index when start() walked it (and was accounted there, unless born
 * in this period), or was registered since - while this invalidation held
 * the period odd, so it was born in it and is skipped here too. So end()
 * lowers exactly the counts start() raised: a mismatched end() is not
 * possible, only an invalid token, which changes nothing.
 */
UODP_API int uodp_invalidate_range_end(struct uodp_range *range)
{
	uint64_t expect = UODP_RANGE_MAGIC, start, end, period, s, e;
	struct rindex_iter it;
	struct uodp_umem *umem;
	struct uodp_ctx *ctx;
	int cs;

	if (!range)
		return -EINVAL;
	if (!atomic_compare_exchange_strong(tok_state(range), &expect,
					    UODP_RANGE_MAGIC + 1))
		return -EINVAL; /* never started, ended, or being ended */
	ctx = (struct uodp_ctx *)(uintptr_t)range->reserved[TOK_CTX];
	if (range->reserved[TOK_SELF] != (uint64_t)(uintptr_t)range ||
	    !ctx_valid(ctx)) {
		/* A copy of a started token: not ours to end. */
		atomic_store(tok_state(range), UODP_RANGE_MAGIC);
		return -EINVAL;
	}
	if (ctx_forked(ctx)) {
		atomic_store(tok_state(range), UODP_RANGE_MAGIC);
		return -ECHILD;
	}
	period = range->reserved[TOK_PERIOD];
	start = range->reserved[TOK_START];
	end = range->reserved[TOK_END];

	cs = nocancel_begin();
	pthread_rwlock_rdlock(&ctx->tree_lock);
	for_each_overlap(ctx, it, umem, start, end)
	{
		clamp(umem, start, end, &s, &e);
		inval_end(umem, s, e, period);
	}
	pthread_rwlock_unlock(&ctx->tree_lock);
	ctx_inval_end(ctx);
	/* The token's hold: the context may have been destroyed meanwhile,
	 * and then this end() may be its last user. */
	if (ctx_drop(ctx))
		ctx_release(ctx);
	nocancel_end(cs);

	/* The token may be started again. */
	for (unsigned i = 1;
	     i < sizeof(range->reserved) / sizeof(range->reserved[0]); i++)
		range->reserved[i] = 0;
	atomic_store(tok_state(range), 0);
	return 0;
}

UODP_API int64_t uodp_umem_unmap(struct uodp_umem *umem, const void *addr,
				 size_t len)
{
	uint64_t va = (uintptr_t)addr, bound;

	if (!umem_valid(umem))
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (ulock_held(&umem->lock))
		return -EDEADLK;
	bound = va + len < va ? UINT64_MAX : va + len;
	/* Clamp first, then round out: an empty range drops nothing even
	 * when addr is not page aligned. */
	if (va < umem->start)
		va = umem->start;
	if (bound > umem->end)
		bound = umem->end;
	if (va >= bound)
		return 0;
	/* Cannot fail: 0 < bound - va and bound <= end, a user address. */
	(void)page_round(umem->ctx, va, bound - va, &va, &bound);
	ctx_settle_moves(umem->ctx); /* before it unpins: see there */
	return (int64_t)umem_drop_range(umem, va, bound, false);
}

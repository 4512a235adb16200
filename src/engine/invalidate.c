/* SPDX-License-Identifier: MIT */
/*
 * invalidate.c - the notifier side of the retry protocol: invalidate
 * start/end over the region tree, the per-region accounting that makes
 * racing faults retry, and dropping entries (with dirty marking).
 *
 * start() raises the context's and each overlapping region's counters
 * before the driver drops its translations; end() bumps each region's
 * sequence and lowers the counters. A fault installs entries only if, under
 * the region lock, the counter is zero and the sequence is still the one it
 * read before populating (uodp_umem_retry()).
 */
#include <errno.h>

#include "engine/internal.h"

struct drop_arg {
	struct uodp_umem *umem;
	uint64_t dropped;
	uint64_t pin_start, pin_len; /* pinned pages to unpin, as a run */
};

/* Turn a mapped word into its unmapped form: a page mapped writable joins
 * the dirty set (the device may have written it), others keep whatever
 * dirty state they had. Pinned pages are unpinned a run at a time. */
static int drop_word(uint64_t idx, uint64_t *word, void *argp)
{
	struct drop_arg *arg = argp;
	struct uodp_umem *umem = arg->umem;
	uint64_t w = *word;

	if (!(w & W_ACCESS_MASK))
		return 0;
	if (w & W_PINNED) {
		uint64_t va = umem->start + (idx << umem->ctx->page_shift);

		if (arg->pin_len &&
		    arg->pin_start + (arg->pin_len << umem->ctx->page_shift) !=
			    va) {
			unpin_range(umem->ctx, arg->pin_start, arg->pin_len);
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
	struct drop_arg arg = { .umem = umem };

	pthread_mutex_lock(&umem->lock);
	pgt_for_each(&umem->table, umem_page(umem, start), umem_page(umem, end),
		     drop_word, &arg);
	if (arg.pin_len)
		unpin_range(umem->ctx, arg.pin_start, arg.pin_len);
	umem->mapped -= arg.dropped;
	if (invalidation)
		umem->stats.pages_invalidated += arg.dropped;
	pthread_mutex_unlock(&umem->lock);
	return arg.dropped;
}

/* Raise the region's counter: from now until the matching end, faults on it
 * cannot install entries. Regions without private counters are skipped:
 * their faults retry until they get them. */
static void umem_start_account(struct uodp_umem *umem)
{
	pthread_mutex_lock(&umem->lock);
	if (umem->active)
		umem->count++;
	umem->stats.invalidations++;
	pthread_mutex_unlock(&umem->lock);
}

/* Bump the sequence before lowering the counter: a fault that read the
 * sequence while this invalidation ran sees either the counter or the new
 * sequence, never neither. Wake waiters when nothing runs any more. */
static void umem_end_account(struct uodp_umem *umem)
{
	pthread_mutex_lock(&umem->lock);
	if (umem->active && umem->count > 0) {
		atomic_fetch_add(&umem->seq, 1);
		if (--umem->count == 0)
			pthread_cond_broadcast(&umem->idle);
	}
	pthread_mutex_unlock(&umem->lock);
}

static void umem_invalidate_start(struct uodp_umem *umem, uint64_t start,
				  uint64_t end)
{
	struct uodp_ctx *ctx = umem->ctx;

	umem_start_account(umem);
	if (ctx->ops.invalidate_range)
		ctx->ops.invalidate_range(umem, start, end, ctx->ops.priv);
	umem_drop_range(umem, start, end, true);
}

void (*engine_test_hook_after_start_walk)(struct uodp_ctx *ctx);

static int round_range(const struct uodp_ctx *ctx, uint64_t *start,
		       uint64_t *end)
{
	uint64_t mask = ((uint64_t)1 << ctx->page_shift) - 1;

	if (*start >= *end)
		return -EINVAL;
	*start &= ~mask;
	*end = (*end > UODP_VA_LIMIT - mask) ? UODP_VA_LIMIT :
					       (*end + mask) & ~mask;
	return *start < *end ? 0 : -EINVAL;
}

#define for_each_overlap(ctx, node, s, e)                             \
	for (node = itree_iter_first(&(ctx)->tree, (s), (e)-1); node; \
	     node = itree_iter_next(node, (s), (e)-1))

static inline struct uodp_umem *node_umem(struct itree_node *n)
{
	return (struct uodp_umem *)((char *)n -
				    __builtin_offsetof(struct uodp_umem, node));
}

/* The checks every entry point makes; rounds the range out to pages. */
static int invalidate_args(struct uodp_ctx *ctx, uint64_t *start, uint64_t *end)
{
	int r;

	if (!ctx_valid(ctx))
		return -EINVAL;
	r = round_range(ctx, start, end);
	if (r)
		return r;
	return ctx_forked(ctx) ? -ECHILD : 0;
}

/*
 * The start walk: raise each overlapping region's counter, call the driver,
 * drop the entries. With @one_shot, also end each region right away: the
 * tree read lock is held from the first region's start to the last one's
 * end, so no region enters or leaves the tree meanwhile and each gets
 * exactly the start and end that start() + end() would give it (the
 * private-counter rule has nothing to catch). The context count is raised
 * either way, so that activation of regions registered during *other*
 * invalidations waits for this one too.
 */
static int invalidate_walk(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
			   bool one_shot)
{
	struct itree_node *n;
	int r = invalidate_args(ctx, &start, &end);

	if (r)
		return r;
	/* Raised before the walk: a region registered from now on, which the
	 * walk may miss, gets no private counters (see notifier_count). */
	atomic_fetch_add(&ctx->notifier_count, 1);
	pthread_rwlock_rdlock(&ctx->tree_lock);
	for_each_overlap(ctx, n, start, end)
	{
		struct uodp_umem *umem = node_umem(n);
		uint64_t s = start > umem->start ? start : umem->start;
		uint64_t e = end < umem->end ? end : umem->end;

		umem_invalidate_start(umem, s, e);
		if (one_shot)
			umem_end_account(umem);
	}
	if (engine_test_hook_after_start_walk)
		engine_test_hook_after_start_walk(ctx);
	pthread_rwlock_unlock(&ctx->tree_lock);
	if (one_shot)
		ctx_notifier_end(ctx);
	return 0;
}

UODP_API int uodp_invalidate_range_start(struct uodp_ctx *ctx, uint64_t start,
					 uint64_t end)
{
	return invalidate_walk(ctx, start, end, false);
}

UODP_API int uodp_invalidate_range_end(struct uodp_ctx *ctx, uint64_t start,
				       uint64_t end)
{
	struct itree_node *n;
	int r = invalidate_args(ctx, &start, &end);

	if (r)
		return r;
	if (atomic_load(&ctx->notifier_count) <= 0)
		return -EINVAL;

	/* Every region found here was either in the tree when start() walked
	 * it (and accounted if active) or registered since, while this
	 * invalidation ran, hence without counters: end accounting never
	 * lowers a counter start() did not raise. */
	pthread_rwlock_rdlock(&ctx->tree_lock);
	for_each_overlap(ctx, n, start, end) umem_end_account(node_umem(n));
	pthread_rwlock_unlock(&ctx->tree_lock);
	ctx_notifier_end(ctx);
	return 0;
}

/* start() + end() in one walk, for changes already made. */
UODP_API int uodp_invalidate_range(struct uodp_ctx *ctx, uint64_t start,
				   uint64_t end)
{
	return invalidate_walk(ctx, start, end, true);
}

/*
 * A one-region invalidation, for a page whose frame changed under a live
 * entry: the fault path found the device may hold a translation of a frame
 * that is no longer mapped there. Accounted on the region only, so faults
 * racing it retry; the tree lock is held for reading so the driver's
 * callback runs under the same rules as for any other invalidation.
 */
void umem_invalidate_one(struct uodp_umem *umem, uint64_t start, uint64_t end)
{
	struct uodp_ctx *ctx = umem->ctx;

	pthread_rwlock_rdlock(&ctx->tree_lock);
	umem_invalidate_start(umem, start, end);
	umem_end_account(umem);
	pthread_rwlock_unlock(&ctx->tree_lock);
}

UODP_API int64_t uodp_umem_unmap(struct uodp_umem *umem, uint64_t va,
				 uint64_t bound)
{
	uint64_t mask;

	if (!umem_valid(umem) || va > bound)
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	mask = ((uint64_t)1 << umem->ctx->page_shift) - 1;
	/* Clamp first, then round out: an empty [va, bound) drops nothing
	 * even when va is not page aligned. bound <= end is page aligned
	 * below UODP_VA_LIMIT, so rounding it up cannot overflow. */
	if (va < umem->start)
		va = umem->start;
	if (bound > umem->end)
		bound = umem->end;
	if (va >= bound)
		return 0;
	va &= ~mask;
	bound = (bound + mask) & ~mask;
	return (int64_t)umem_drop_range(umem, va, bound, false);
}

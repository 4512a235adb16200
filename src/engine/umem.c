/* SPDX-License-Identifier: MIT */
/*
 * umem.c - memory regions: registration and release, their lifetime, the
 * region lock and the read side of the retry protocol (read_begin,
 * read_retry), entry lookups, the dirty set and counters.
 *
 * Registration allocates one object whatever the region's size (its
 * stripes are at most UMEM_MAX_STRIPES): the translation table is created
 * empty and grows with mapped pages only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"

int page_round(const struct uodp_ctx *ctx, uint64_t addr, uint64_t len,
	       uint64_t *start, uint64_t *end)
{
	uint64_t mask = page_size_of(ctx) - 1;

	if (len == 0)
		return -EINVAL;
	if (addr + len < addr || addr + len > UODP_VA_LIMIT)
		return -ERANGE;
	*start = addr & ~mask;
	*end = (addr + len + mask) & ~mask;
	return 0;
}

/* Stripes: the fewest power-of-two runs of pages, at most
 * UMEM_MAX_STRIPES of them, that cover the region. */
static unsigned stripe_shift_for(uint64_t npages)
{
	unsigned s = 0;

	while (((npages + ((uint64_t)1 << s) - 1) >> s) > UMEM_MAX_STRIPES)
		s++;
	return s;
}

static struct uodp_umem *umem_alloc(const struct uodp_ctx *ctx, uint64_t start,
				    uint64_t end, unsigned access)
{
	uint64_t npages = (end - start) >> ctx->page_shift;
	unsigned shift = stripe_shift_for(npages);
	unsigned n = (unsigned)((npages + ((uint64_t)1 << shift) - 1) >> shift);
	/* The first 2 MiB boundary at or above start: a whole block fits? */
	uint64_t b = (start + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
	bool huge = b + HUGE_SIZE <= end;
	struct uodp_umem *umem;
	struct umem_huge *h;

	umem = calloc(1, sizeof(*umem) + n * sizeof(struct stripe) +
				 (huge ? sizeof(struct umem_huge) : 0));
	if (!umem)
		return NULL;
	if (ulock_init(&umem->lock))
		goto err_free;
	/* Waits are bounded on the monotonic clock (map_and_lock). */
	if (mono_cond_init(&umem->idle))
		goto err_lock;
	umem->ctx = (struct uodp_ctx *)ctx;
	umem->start = start;
	umem->end = end;
	umem->access = access;
	umem->stripe_shift = shift;
	umem->nstripes = n;
	umem->has_huge = huge;
	atomic_init(&umem->refs, 1);
	atomic_init(&umem->priv, NULL);
	atomic_init(&umem->dying, false);
	atomic_init(&umem->released, false);
	pgt_init(&umem->table, npages);
	umem->table.no_alloc = true; /* see table.c */
	h = umem_huge(umem);
	if (h) {
		pgt_init(&h->table,
			 ((end - 1) >> HUGE_SHIFT) - (start >> HUGE_SHIFT) + 1);
		h->table.no_alloc = true;
	}
	umem->magic = UODP_UMEM_MAGIC;
	return umem;

err_lock:
	ulock_destroy(&umem->lock);
err_free:
	free(umem);
	return NULL;
}

/*
 * Free a region's memory. In debug builds the object itself stays,
 * poisoned, so that a handle used after release is caught (umem_valid()
 * aborts on the dead magic) instead of reading reused memory.
 */
static void umem_free(struct uodp_umem *umem)
{
	umem->magic = UODP_DEAD_MAGIC;
	pgt_destroy(&umem->table);
	if (umem->has_huge)
		pgt_destroy(&umem_huge(umem)->table);
	pthread_cond_destroy(&umem->idle);
	ulock_destroy(&umem->lock);
	if (!UODP_DEBUG_ON)
		free(umem);
}

void umem_put(struct uodp_umem *umem)
{
	if (atomic_fetch_sub(&umem->refs, 1) == 1)
		umem_free(umem);
}

/* Put the region in the index, with its birth period (see internal.h);
 * tree write lock held. The index's nodes come from @res, reserved before
 * the lock was taken (no allocation under it), so this cannot fail. */
static void ctx_add_region(struct uodp_ctx *ctx, struct uodp_umem *umem,
			   struct rindex_reserve *res)
{
	uint64_t p;
	int r;

	/* One atomic read, as umem_ready() makes: the period is written only
	 * under inv_lock, and holding that lock around the read would order
	 * nothing more (an invalidation's walk is ordered against us by the
	 * tree lock, not by inv_lock: a walk that ran before our write lock
	 * follows its period bump, so we read the bumped period). */
	p = atomic_load(&ctx->period);
	umem->birth = (p & 1) ? p : 0;
	r = rindex_insert(&ctx->tree, res, umem->start, umem->end - 1, umem);
	uodp_assert(r == 0); /* a new owner: never -EEXIST */
	(void)r;
	umem->in_tree = true;
	ctx->nregions++;
	atomic_fetch_add(&ctx->holds, 1); /* dropped by its release */
}

/* Take the region out of the index; tree write lock held. Emptied index
 * nodes are detached into @g, freed once the lock is dropped. */
static void ctx_remove_region(struct uodp_ctx *ctx, struct uodp_umem *umem,
			      struct rindex_garbage *g)
{
	int r = rindex_remove(&ctx->tree, umem->start, umem->end - 1, umem);

	uodp_assert(r == 0);
	(void)r;
	rindex_take_garbage(&ctx->tree, g);
	umem->in_tree = false;
	ctx->nregions--;
}

static int umem_get(struct uodp_ctx *ctx, void *addr, size_t len,
		    unsigned access, struct uodp_umem **out);

UODP_API int uodp_umem_get(struct uodp_ctx *ctx, void *addr, size_t len,
			   unsigned access, struct uodp_umem **out)
{
	bool manual;
	int r, cs;

	if (!ctx_valid(ctx))
		return -EINVAL;
	/* The notifier reads /proc/self/maps (a cancellation point) under
	 * its locks and ours: no cancellation inside. A manual context calls
	 * no notifier and nothing else here is a cancellation point, so it
	 * skips the two atomic operations (see nocancel_begin()). */
	manual = ctx->flags & UODP_CTX_MANUAL;
	cs = manual ? 0 : nocancel_begin();
	r = ctx_enter(ctx);
	if (!r) {
		r = umem_get(ctx, addr, len, access, out);
		ctx_leave(ctx);
	}
	if (!manual)
		nocancel_end(cs);
	return r;
}

static int umem_get(struct uodp_ctx *ctx, void *addr, size_t len,
		    unsigned access, struct uodp_umem **out)
{
	struct rindex_reserve res;
	struct uodp_umem *umem;
	uint64_t start, end;
	int r;

	if (!out || !access ||
	    (access &
	     ~(UODP_ACCESS_ALL | UODP_ACCESS_WATCH | UODP_ACCESS_LAZY_WATCH)) ||
	    ((access & UODP_ACCESS_WATCH) && (access & UODP_ACCESS_ALL)) ||
	    ((access & UODP_ACCESS_LAZY_WATCH) && !(access & UODP_ACCESS_ALL)))
		return -EINVAL;
	r = page_round(ctx, (uintptr_t)addr, len, &start, &end);
	if (r)
		return r;
	if (ctx_forked(ctx))
		return -ECHILD;
	r = callback_check(true);
	if (r)
		return r;
	umem = umem_alloc(ctx, start, end, access);
	if (!umem)
		return -ENOMEM;
	/* Watch first, so that no event for the range can be missed once the
	 * region is in the index. */
	r = ctx_watch(ctx, start, end, access & UODP_ACCESS_LAZY_WATCH);
	if (r)
		goto err_free;
	/* The index's nodes are allocated now, before the write lock that an
	 * invalidation (the monitor thread) may wait for. */
	if (rindex_reserve(&res, &ctx->tree)) {
		r = -ENOMEM;
		goto err_unwatch;
	}
	pthread_rwlock_wrlock(&ctx->tree_lock);
	if (ctx->dying) {
		pthread_rwlock_unlock(&ctx->tree_lock);
		r = -ENODEV;
		goto err_reserve;
	}
	ctx_add_region(ctx, umem, &res);
	pthread_rwlock_unlock(&ctx->tree_lock);
	rindex_reserve_release(&res);
	*out = umem;
	return 0;

err_reserve:
	rindex_reserve_release(&res);
err_unwatch:
	ctx_unwatch(ctx, start, end);
err_free:
	umem->magic = 0;
	pgt_destroy(&umem->table);
	if (umem->has_huge)
		pgt_destroy(&umem_huge(umem)->table);
	pthread_cond_destroy(&umem->idle);
	ulock_destroy(&umem->lock);
	free(umem);
	return r;
}

UODP_API int uodp_umem_release(struct uodp_umem *umem)
{
	struct rindex_garbage garbage;
	struct uodp_ctx *ctx;
	bool free_ctx, was, nocancel;
	int r, cs = 0;

	if (!umem_valid(umem))
		return -EINVAL;
	ctx = umem->ctx;
	if (ctx_forked(ctx))
		return -ECHILD;
	r = callback_check(true);
	if (r)
		return r;
	if (ulock_held(&umem->lock))
		return -EDEADLK;
	was = atomic_exchange(&umem->released, true);
	if (was)
		return -EINVAL; /* a racing second release */
	/* The notifier's unregistration, as in get; a manual context has
	 * none, and only freeing the context (below) may reach a
	 * cancellation point (close). */
	nocancel = !(ctx->flags & UODP_CTX_MANUAL);
	if (nocancel)
		cs = nocancel_begin();
	ctx_settle_moves(ctx);
	umem_drop_range(umem, umem->start, umem->end, false);
	if (ctx->flags & UODP_CTX_PIN)
		pin_trim();
	ctx_unwatch(ctx, umem->start, umem->end);
	pthread_rwlock_wrlock(&ctx->tree_lock);
	ctx_remove_region(ctx, umem, &garbage);
	pthread_rwlock_unlock(&ctx->tree_lock);
	rindex_free_garbage(NULL, &garbage); /* touches no index */
	umem_put(umem); /* a relay walk may still hold it */
	/* The region's hold on the context: past this we no longer touch
	 * the context unless it was the last and we free it. */
	free_ctx = ctx_drop(ctx);
	if (free_ctx) {
		if (!nocancel)
			cs = nocancel_begin();
		nocancel = true;
		ctx_release(ctx);
	}
	if (nocancel)
		nocancel_end(cs);
	return 0;
}

UODP_API void *uodp_umem_start(const struct uodp_umem *umem)
{
	return umem_valid(umem) ? (void *)(uintptr_t)umem->start : NULL;
}

UODP_API void *uodp_umem_end(const struct uodp_umem *umem)
{
	return umem_valid(umem) ? (void *)(uintptr_t)umem->end : NULL;
}

UODP_API unsigned uodp_umem_access(const struct uodp_umem *umem)
{
	return umem_valid(umem) ? umem->access : 0;
}

UODP_API struct uodp_ctx *uodp_umem_ctx(const struct uodp_umem *umem)
{
	return umem_valid(umem) ? umem->ctx : NULL;
}

UODP_API void uodp_umem_set_priv(struct uodp_umem *umem, void *priv)
{
	if (umem_valid(umem))
		atomic_store(&umem->priv, priv);
}

UODP_API void *uodp_umem_priv(const struct uodp_umem *umem)
{
	return umem_valid(umem) ?
		       atomic_load(&((struct uodp_umem *)umem)->priv) :
		       NULL;
}

/* ---- the lock and the low-level protocol steps ---- */

UODP_API int uodp_umem_lock(struct uodp_umem *umem)
{
	if (!umem_valid(umem))
		return -EINVAL;
	if (ulock_held(&umem->lock))
		return -EDEADLK;
	ulock_lock(&umem->lock);
	return 0;
}

UODP_API int uodp_umem_unlock(struct uodp_umem *umem)
{
	if (!umem_valid(umem))
		return -EINVAL;
	if (!ulock_held(&umem->lock))
		return -EPERM;
	ulock_unlock(&umem->lock);
	return 0;
}

UODP_API int64_t uodp_umem_read_begin(struct uodp_umem *umem)
{
	int64_t r;
	int cs;

	if (!umem_valid(umem))
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (ulock_held(&umem->lock))
		return -EDEADLK;
	r = callback_check(false);
	if (r)
		return r;
	cs = nocancel_begin();
	r = fault_begin(umem, 0, umem_npages(umem), NULL);
	nocancel_end(cs);
	return r;
}

UODP_API bool uodp_umem_read_retry(struct uodp_umem *umem, uint64_t seq)
{
	if (!umem_valid(umem))
		return true;
	if (!ulock_held(&umem->lock)) {
		uodp_misuse("uodp_umem_read_retry() without the region lock");
		return true;
	}
	return fault_retry_locked(umem, 0, umem_npages(umem), seq);
}

/* ---- entries ---- */

static uint64_t word_entry(const struct uodp_umem *umem, uint64_t idx,
			   uint64_t w)
{
	return (w & W_ACCESS_MASK) ?
		       (umem->start + (idx << umem->ctx->page_shift)) |
			       (w & W_ACCESS_MASK) :
		       0;
}

/* The word of page @idx: its base-page word, or for a page under a huge
 * entry the huge word (*@huge set). Region lock held. */
static uint64_t page_word(const struct uodp_umem *umem, uint64_t idx,
			  bool *huge)
{
	uint64_t w;

	ulock_assert_held((struct ulock *)&umem->lock);
	w = pgt_get(&umem->table, idx);

	*huge = false;
	if (!(w & W_ACCESS_MASK) && umem_hmapped(umem)) {
		uint64_t hw = huge_word_locked(
			umem, umem->start + (idx << umem->ctx->page_shift));

		if (hw & W_ACCESS_MASK) {
			*huge = true;
			return hw;
		}
	}
	return w;
}

static uint64_t page_entry(const struct uodp_umem *umem, uint64_t idx)
{
	bool huge;
	uint64_t w = page_word(umem, idx, &huge), e = word_entry(umem, idx, w);

	return e && huge ? e | UODP_ENTRY_HUGE : e;
}

UODP_API int uodp_umem_entries_locked(struct uodp_umem *umem, const void *addr,
				      size_t n, uint64_t *out)
{
	uint64_t va = (uintptr_t)addr, idx, i, npages;

	if (!umem_valid(umem) || !out)
		return -EINVAL;
	npages = umem_npages(umem);
	if (va < umem->start || va >= umem->end)
		return -ERANGE;
	idx = umem_page(umem, va);
	if (n > npages - idx)
		return -ERANGE;
	if (!ulock_held(&umem->lock))
		return -EPERM;
	for (i = 0; i < n; i++)
		out[i] = umem_watch_only(umem) ? 0 : page_entry(umem, idx + i);
	return 0;
}

UODP_API uint64_t uodp_umem_pfn(struct uodp_umem *umem, const void *addr)
{
	uint64_t va = (uintptr_t)addr, w, idx;
	bool mine, huge;

	if (!umem_valid(umem) || va < umem->start || va >= umem->end ||
	    umem_watch_only(umem))
		return 0;
	mine = ulock_held(&umem->lock);
	if (!mine)
		ulock_lock(&umem->lock);
	idx = umem_page(umem, va);
	w = page_word(umem, idx, &huge);
	if (!mine)
		ulock_unlock(&umem->lock);
	if (!(w & W_ACCESS_MASK) || !(w >> W_PFN_SHIFT))
		return 0;
	/* Under a huge entry: the head frame plus the page's offset. */
	return (w >> W_PFN_SHIFT) +
	       (huge ? (va & (HUGE_SIZE - 1)) >> umem->ctx->page_shift : 0);
}

struct visit_arg {
	struct uodp_umem *umem;
	int (*fn)(void *page, uint64_t entry, void *arg);
	void *arg;
	int64_t visited;
	bool stopped;	   /* @fn returned nonzero */
	uint64_t from, to; /* pages [from, to) are asked for */
	uint64_t next;	   /* huge walk: base pages from here not walked */
};

static int visit_entry(struct visit_arg *a, uint64_t e)
{
	a->visited++;
	if (a->fn((void *)(uintptr_t)(e & UODP_ENTRY_ADDR_MASK), e, a->arg))
		a->stopped = true;
	return a->stopped;
}

static int visit_word(uint64_t idx, uint64_t *word, void *argp)
{
	struct visit_arg *a = argp;
	uint64_t e = word_entry(a->umem, idx, *word);

	return e ? visit_entry(a, e) : 0;
}

/* Base-page words of pages [from, to); true if @fn stopped the walk. */
static bool visit_base(struct visit_arg *a, uint64_t from, uint64_t to)
{
	if (from < to)
		pgt_for_each(&a->umem->table, from, to, visit_word, a);
	return a->stopped;
}

/*
 * One nonzero word of the huge table (block @bi): the base pages before
 * the block, then, if the word is a live entry, the block's pages asked
 * for, each a HUGE entry. A word without access (an untaken dirty huge
 * word) covers no page: its block's base words are walked later with the
 * rest (a base-page word and a live huge entry never cover the same page).
 */
static int visit_huge_word(uint64_t bi, uint64_t *word, void *argp)
{
	struct visit_arg *a = argp;
	const struct uodp_umem *umem = a->umem;
	uint64_t va = ((umem->start >> HUGE_SHIFT) + bi) << HUGE_SHIFT;
	uint64_t first = umem_page(umem, va);
	uint64_t last = first + HUGE_PAGES(umem->ctx);

	if (!(*word & W_ACCESS_MASK))
		return 0;
	if (first < a->from)
		first = a->from;
	if (last > a->to)
		last = a->to;
	if (visit_base(a, a->next, first))
		return 1;
	for (uint64_t idx = first; idx < last; idx++)
		if (visit_entry(a,
				word_entry(umem, idx, *word) | UODP_ENTRY_HUGE))
			return 1;
	a->next = last;
	return 0;
}

UODP_API int64_t uodp_umem_for_each_entry(
	struct uodp_umem *umem, const void *addr, size_t len,
	int (*fn)(void *page, uint64_t entry, void *arg), void *arg)
{
	struct visit_arg a = { .umem = umem, .fn = fn, .arg = arg };
	uint64_t start = (uintptr_t)addr, end;

	if (!umem_valid(umem) || !fn)
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (!ulock_held(&umem->lock))
		return -EPERM;
	end = start + len < start ? UINT64_MAX : start + len;
	if (start < umem->start)
		start = umem->start;
	if (end > umem->end)
		end = umem->end;
	if (start >= end || umem_watch_only(umem))
		return 0;
	a.from = a.next = umem_page(umem, start);
	a.to = umem_page(umem, end - 1) + 1;
	/* Huge entries present: the huge table's words in block order, the
	 * base words between them (both walks skip empty subtrees, so an
	 * unmapped stretch costs nothing whatever its size). Blocks lie
	 * wholly inside the region (huge_candidate). */
	if (umem_hmapped(umem))
		pgt_for_each(&umem_huge(umem)->table,
			     (start >> HUGE_SHIFT) -
				     (umem->start >> HUGE_SHIFT),
			     ((end - 1) >> HUGE_SHIFT) -
				     (umem->start >> HUGE_SHIFT) + 1,
			     visit_huge_word, &a);
	if (!a.stopped)
		visit_base(&a, a.next, a.to);
	return a.visited;
}

UODP_API int64_t uodp_umem_dirty_take(struct uodp_umem *umem, void **pages,
				      size_t max)
{
	void *dead;
	size_t n;

	if (!umem_valid(umem) || (!pages && max))
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (ulock_held(&umem->lock))
		return -EDEADLK;
	if (!max || umem_watch_only(umem))
		return 0;
	ulock_lock(&umem->lock);
	n = dirty_take_locked(umem, pages, max);
	dead = table_trim(&umem->table);
	ulock_unlock(&umem->lock);
	pgt_free_nodes(dead);
	return (int64_t)n;
}

UODP_API int uodp_umem_stats(struct uodp_umem *umem,
			     struct uodp_umem_stats *out, size_t size)
{
	struct uodp_umem_stats s = { 0 };

	if (!umem_valid(umem) || !out || !size)
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (ulock_held(&umem->lock))
		return -EDEADLK;
	ulock_lock(&umem->lock);
	s.map_calls = umem->stats.map_calls;
	s.pages_mapped = umem->stats.pages_mapped;
	s.invalidations = umem->stats.invalidations;
	s.pages_invalidated = umem->stats.pages_invalidated;
	s.retries = umem->stats.retries;
	s.mapped_now =
		umem->mapped + umem_hmapped(umem) * HUGE_PAGES(umem->ctx);
	s.huge_now = umem_hmapped(umem);
	s.table_bytes = umem->table.bytes +
			(umem->has_huge ? umem_huge(umem)->table.bytes : 0);
	ulock_unlock(&umem->lock);
	memcpy(out, &s, size < sizeof(s) ? size : sizeof(s));
	return 0;
}

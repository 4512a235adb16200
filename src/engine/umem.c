/* SPDX-License-Identifier: MIT */
/*
 * umem.c - memory regions: registration and release, the region lock and
 * the read side of the retry protocol (seq, retry, wait), entry lookups,
 * the dirty set and counters.
 *
 * Registration allocates one fixed-size object whatever the region's size:
 * the translation table is created empty and grows with mapped pages only.
 */
#include <errno.h>
#include <stdlib.h>

#include "engine/internal.h"
#include "notifier/monitor.h"

static int umem_init_locks(struct uodp_umem *umem)
{
	pthread_mutexattr_t ma;
	int r;

	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
	r = pthread_mutex_init(&umem->lock, &ma);
	pthread_mutexattr_destroy(&ma);
	if (r)
		return -r;
	r = pthread_cond_init(&umem->idle, NULL);
	if (r) {
		pthread_mutex_destroy(&umem->lock);
		return -r;
	}
	return 0;
}

static void umem_free(struct uodp_umem *umem)
{
	umem->magic = 0;
	pgt_destroy(&umem->table);
	pthread_cond_destroy(&umem->idle);
	pthread_mutex_destroy(&umem->lock);
	free(umem);
}

/* Round [addr, addr + len) out to pages; -EINVAL if it overflows or leaves
 * the user address space. */
static int page_range(const struct uodp_ctx *ctx, uint64_t addr, uint64_t len,
		      uint64_t *start, uint64_t *end)
{
	uint64_t mask = ((uint64_t)1 << ctx->page_shift) - 1;

	if (len == 0 || addr + len < addr || addr + len > UODP_VA_LIMIT)
		return -EINVAL;
	*start = addr & ~mask;
	*end = (addr + len + mask) & ~mask;
	return 0;
}

/* Put the region in the tree. Counters are private only if no invalidation
 * runs now (see ctx->notifier_count); otherwise the region waits on
 * no_counters until the last running invalidation ends. */
static void ctx_add_region(struct uodp_ctx *ctx, struct uodp_umem *umem)
{
	itree_insert(&ctx->tree, &umem->node);
	umem->next = ctx->umems;
	if (ctx->umems)
		ctx->umems->prev = umem;
	ctx->umems = umem;
	ctx->nregions++;
	if (atomic_load(&ctx->notifier_count) == 0) {
		umem->active = true;
	} else {
		umem->on_nc = true;
		umem->next_nc = ctx->no_counters;
		ctx->no_counters = umem;
		atomic_fetch_add(&ctx->nc_pending, 1);
	}
}

static void ctx_remove_region(struct uodp_ctx *ctx, struct uodp_umem *umem)
{
	struct uodp_umem **pp;

	itree_remove(&ctx->tree, &umem->node);
	if (umem->prev)
		umem->prev->next = umem->next;
	else
		ctx->umems = umem->next;
	if (umem->next)
		umem->next->prev = umem->prev;
	ctx->nregions--;
	if (umem->on_nc) {
		for (pp = &ctx->no_counters; *pp != umem; pp = &(*pp)->next_nc)
			;
		*pp = umem->next_nc;
		umem->on_nc = false;
		atomic_fetch_sub(&ctx->nc_pending, 1);
	}
}

/* Kernel registration of a new region; ctx->mon_lock held. Starts the
 * monitor with the context's first region. */
static int umem_watch(struct uodp_ctx *ctx, uint64_t start, uint64_t end)
{
	int r;

	if (ctx->flags & UODP_CTX_MANUAL)
		return 0;
	pthread_mutex_lock(&ctx->mon_lock);
	if (!ctx->mon) {
		r = umon_create(ctx, &ctx->mon);
		if (r)
			goto out;
	}
	r = umon_register(ctx->mon, start, end);
	if (!r)
		ctx->nwatched++;
	else if (!ctx->nwatched)
		ctx_stop_monitor_locked(ctx);
out:
	pthread_mutex_unlock(&ctx->mon_lock);
	return r;
}

/* Undo umem_watch(). The monitor goes with the last watched region (or
 * went already, with uodp_ctx_destroy()). */
static void umem_unwatch(struct uodp_ctx *ctx, uint64_t start, uint64_t end)
{
	if (ctx->flags & UODP_CTX_MANUAL)
		return;
	pthread_mutex_lock(&ctx->mon_lock);
	if (ctx->mon) {
		umon_unregister(ctx->mon, start, end);
		if (--ctx->nwatched == 0)
			ctx_stop_monitor_locked(ctx);
	}
	pthread_mutex_unlock(&ctx->mon_lock);
}

UODP_API int uodp_umem_get(struct uodp_ctx *ctx, uint64_t addr, uint64_t len,
			   unsigned access, struct uodp_umem **out)
{
	struct uodp_umem *umem;
	uint64_t start, end;
	int r;

	if (!ctx_valid(ctx) || !out || !access || (access & ~UODP_ACCESS_ALL))
		return -EINVAL;
	r = page_range(ctx, addr, len, &start, &end);
	if (r)
		return r;
	if (ctx_forked(ctx))
		return -ECHILD;

	umem = calloc(1, sizeof(*umem));
	if (!umem)
		return -ENOMEM;
	r = umem_init_locks(umem);
	if (r)
		goto err_free;
	umem->ctx = ctx;
	umem->start = start;
	umem->end = end;
	umem->access = access;
	umem->node.start = start;
	umem->node.last = end - 1;
	pgt_init(&umem->table, (end - start) >> ctx->page_shift);
	umem->table.no_alloc = true; /* see table.c */
	atomic_init(&umem->seq, 0);
	atomic_init(&umem->priv, NULL);
	umem->magic = UODP_UMEM_MAGIC;

	/* Kernel registration first, so that no event for the range can be
	 * missed once the region is in the tree. */
	r = umem_watch(ctx, start, end);
	if (r)
		goto err_locks;
	pthread_rwlock_wrlock(&ctx->tree_lock);
	if (ctx->dying) {
		pthread_rwlock_unlock(&ctx->tree_lock);
		r = -ENODEV;
		goto err_unwatch;
	}
	ctx_add_region(ctx, umem);
	pthread_rwlock_unlock(&ctx->tree_lock);
	*out = umem;
	return 0;

err_unwatch:
	umem_unwatch(ctx, start, end);
err_locks:
	umem->magic = 0;
	pgt_destroy(&umem->table);
	pthread_cond_destroy(&umem->idle);
	pthread_mutex_destroy(&umem->lock);
err_free:
	free(umem);
	return r;
}

UODP_API int uodp_umem_release(struct uodp_umem *umem)
{
	struct uodp_ctx *ctx;
	bool free_ctx;

	if (!umem_valid(umem))
		return -EINVAL;
	ctx = umem->ctx;
	if (ctx_forked(ctx))
		return -ECHILD;

	umem_drop_range(umem, umem->start, umem->end, false);
	umem_unwatch(ctx, umem->start, umem->end);

	/* Whether we free the context is decided under the write lock, as
	 * uodp_ctx_destroy() decides it; past this unlock we no longer touch
	 * the context unless we are the one to free it. */
	pthread_rwlock_wrlock(&ctx->tree_lock);
	ctx_remove_region(ctx, umem);
	free_ctx = ctx->destroyed && ctx->nregions == 0;
	pthread_rwlock_unlock(&ctx->tree_lock);

	umem_free(umem);
	if (free_ctx)
		ctx_release(ctx);
	return 0;
}

UODP_API uint64_t uodp_umem_start(const struct uodp_umem *umem)
{
	return umem_valid(umem) ? umem->start : 0;
}

UODP_API uint64_t uodp_umem_end(const struct uodp_umem *umem)
{
	return umem_valid(umem) ? umem->end : 0;
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

UODP_API uint64_t uodp_umem_read_seq(struct uodp_umem *umem)
{
	return umem_valid(umem) ? atomic_load(&umem->seq) : 0;
}

UODP_API void uodp_umem_lock(struct uodp_umem *umem)
{
	if (umem_valid(umem))
		pthread_mutex_lock(&umem->lock);
}

UODP_API void uodp_umem_unlock(struct uodp_umem *umem)
{
	if (umem_valid(umem))
		pthread_mutex_unlock(&umem->lock);
}

/* The check a fault makes, under the region lock, before it installs
 * anything (see struct uodp_umem for the invariants). */
bool umem_retry_locked(const struct uodp_umem *umem, uint64_t seq)
{
	return !umem->active || umem->dying || umem->count > 0 ||
	       atomic_load(&umem->seq) != seq;
}

UODP_API bool uodp_umem_retry(struct uodp_umem *umem, uint64_t seq)
{
	bool r;

	if (!umem_valid(umem))
		return true;
	pthread_mutex_lock(&umem->lock);
	r = umem_retry_locked(umem, seq);
	pthread_mutex_unlock(&umem->lock);
	return r;
}

UODP_API int uodp_umem_wait(struct uodp_umem *umem)
{
	int r;

	if (!umem_valid(umem))
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	pthread_mutex_lock(&umem->lock);
	while (!umem->dying && (umem->count > 0 || !umem->active))
		pthread_cond_wait(&umem->idle, &umem->lock);
	r = umem->dying ? -ENODEV : 0;
	pthread_mutex_unlock(&umem->lock);
	return r;
}

static bool umem_holds(const struct uodp_umem *umem, uint64_t va)
{
	return umem_valid(umem) && va >= umem->start && va < umem->end;
}

static uint64_t page_va(const struct uodp_umem *umem, uint64_t idx)
{
	return umem->start + (idx << umem->ctx->page_shift);
}

static uint64_t word_entry(const struct uodp_umem *umem, uint64_t idx,
			   uint64_t w)
{
	return (w & W_ACCESS_MASK) ? page_va(umem, idx) | (w & W_ACCESS_MASK) :
				     0;
}

UODP_API uint64_t uodp_umem_entry(struct uodp_umem *umem, uint64_t va)
{
	uint64_t idx, w;

	if (!umem_holds(umem, va))
		return 0;
	idx = umem_page(umem, va);
	pthread_mutex_lock(&umem->lock);
	w = pgt_get(&umem->table, idx);
	pthread_mutex_unlock(&umem->lock);
	return word_entry(umem, idx, w);
}

UODP_API uint64_t uodp_umem_pfn(struct uodp_umem *umem, uint64_t va)
{
	uint64_t w;

	if (!umem_holds(umem, va))
		return 0;
	pthread_mutex_lock(&umem->lock);
	w = pgt_get(&umem->table, umem_page(umem, va));
	pthread_mutex_unlock(&umem->lock);
	return (w & W_ACCESS_MASK) ? w >> W_PFN_SHIFT : 0;
}

struct visit_arg {
	struct uodp_umem *umem;
	int (*fn)(uint64_t va, uint64_t entry, void *arg);
	void *arg;
	int64_t visited;
};

static int visit_word(uint64_t idx, uint64_t *word, void *argp)
{
	struct visit_arg *a = argp;

	if (!(*word & W_ACCESS_MASK))
		return 0;
	a->visited++;
	return a->fn(page_va(a->umem, idx), word_entry(a->umem, idx, *word),
		     a->arg);
}

/* Clamp [start, end) to the region as page indexes; false if empty. */
static bool index_range(const struct uodp_umem *umem, uint64_t start,
			uint64_t end, uint64_t *from, uint64_t *to)
{
	if (start < umem->start)
		start = umem->start;
	if (end > umem->end)
		end = umem->end;
	if (start >= end)
		return false;
	*from = umem_page(umem, start);
	*to = umem_page(umem, end - 1) + 1;
	return true;
}

UODP_API int64_t uodp_umem_for_each_entry(
	struct uodp_umem *umem, uint64_t start, uint64_t end,
	int (*fn)(uint64_t va, uint64_t entry, void *arg), void *arg)
{
	struct visit_arg a = { .umem = umem, .fn = fn, .arg = arg };
	uint64_t from, to;

	if (!umem_valid(umem) || !fn)
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (!index_range(umem, start, end, &from, &to))
		return 0;
	pthread_mutex_lock(&umem->lock);
	pgt_for_each(&umem->table, from, to, visit_word, &a);
	pthread_mutex_unlock(&umem->lock);
	return a.visited;
}

struct dirty_arg {
	struct uodp_umem *umem;
	uint64_t *vas;
	size_t max, n;
};

static int take_dirty(uint64_t idx, uint64_t *word, void *argp)
{
	struct dirty_arg *a = argp;

	if (!(*word & W_DIRTY))
		return 0;
	if (a->n == a->max)
		return 1;
	a->vas[a->n++] = page_va(a->umem, idx);
	*word &= ~W_DIRTY;
	return 0;
}

UODP_API int64_t uodp_umem_dirty_take(struct uodp_umem *umem, uint64_t *vas,
				      size_t max)
{
	struct dirty_arg a = { .umem = umem, .vas = vas, .max = max };
	void *dead;

	if (!umem_valid(umem) || (!vas && max))
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (!max)
		return 0;
	pthread_mutex_lock(&umem->lock);
	pgt_for_each(&umem->table, 0, umem->table.nslots, take_dirty, &a);
	dead = table_trim(&umem->table);
	pthread_mutex_unlock(&umem->lock);
	pgt_free_nodes(dead);
	return (int64_t)a.n;
}

UODP_API int uodp_umem_stats(struct uodp_umem *umem,
			     struct uodp_umem_stats *out)
{
	if (!umem_valid(umem) || !out)
		return -EINVAL;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	pthread_mutex_lock(&umem->lock);
	out->map_calls = umem->stats.map_calls;
	out->pages_mapped = umem->stats.pages_mapped;
	out->invalidations = umem->stats.invalidations;
	out->pages_invalidated = umem->stats.pages_invalidated;
	out->eagain = umem->stats.eagain;
	out->mapped_now = umem->mapped;
	out->table_bytes = umem->table.bytes;
	pthread_mutex_unlock(&umem->lock);
	return 0;
}

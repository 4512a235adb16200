/* SPDX-License-Identifier: MIT */
/*
 * uodp_ofi_guard.c - libfabric MRs revoked when their memory goes away.
 *
 * Each guarded MR has a monitor-only (WATCH) region on a deferred context.
 * The callback (uodp's relay thread, no uodp lock held) closes the MR.
 * With UODP_OFI_GUARD_STRICT the context is strict: fence (monitor
 * thread, before the kernel event is read, i.e. before munmap() returns)
 * waits for the running progress section and holds new ones back; unfence
 * (relay thread, after the callback) lets them go on. A gate of a mutex
 * and a condition variable, not a rwlock: fence and unfence run on
 * different threads.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>

#include "uodp.h"
#include "uodp_ofi_guard.h"

struct uodp_ofi_guard {
	struct uodp_ctx *ctx;
	unsigned flags;
	uodp_ofi_guard_revoked_fn revoked;
	void *arg;
	pthread_mutex_t lock; /* MR state; the gate */
	pthread_cond_t cond;
	unsigned fenced;  /* fences not yet lifted */
	unsigned active;  /* progress sections running */
	atomic_uint nmrs; /* registrations not yet closed */
};

struct uodp_ofi_guard_mr {
	struct uodp_ofi_guard *g;
	struct uodp_umem *umem;
	struct fid_mr *mr; /* NULL once revoked or closed (g->lock) */
	bool dead;	   /* the memory went away (g->lock) */
	uint64_t key;
	void *desc;
	atomic_bool revoked;
};

static __thread bool in_callback;

static void on_invalidate(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv)
{
	struct uodp_ofi_guard *g = priv;
	struct uodp_ofi_guard_mr *gm = range->umem_priv;
	struct fid_mr *mr;

	(void)umem;
	if (!gm || range->event == UODP_EVENT_TEARDOWN)
		return;
	pthread_mutex_lock(&g->lock);
	mr = gm->mr;
	gm->mr = NULL;
	gm->dead = true;
	pthread_mutex_unlock(&g->lock);
	if (!mr)
		return; /* not registered yet: mr_reg sees dead */
	fi_close(&mr->fid);
	atomic_store(&gm->revoked, true);
	if (g->revoked) {
		in_callback = true;
		g->revoked(gm, g->arg);
		in_callback = false;
	}
}

static void on_fence(struct uodp_ctx *ctx, void *priv)
{
	struct uodp_ofi_guard *g = priv;

	(void)ctx;
	pthread_mutex_lock(&g->lock);
	g->fenced++;
	while (g->active)
		pthread_cond_wait(&g->cond, &g->lock);
	pthread_mutex_unlock(&g->lock);
}

static void on_unfence(struct uodp_ctx *ctx, void *priv)
{
	struct uodp_ofi_guard *g = priv;

	(void)ctx;
	pthread_mutex_lock(&g->lock);
	g->fenced--;
	pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

UODP_OFI_GUARD_API void uodp_ofi_guard_progress_begin(struct uodp_ofi_guard *g)
{
	if (!g || !(g->flags & UODP_OFI_GUARD_STRICT))
		return;
	pthread_mutex_lock(&g->lock);
	while (g->fenced)
		pthread_cond_wait(&g->cond, &g->lock);
	g->active++;
	pthread_mutex_unlock(&g->lock);
}

UODP_OFI_GUARD_API void uodp_ofi_guard_progress_end(struct uodp_ofi_guard *g)
{
	if (!g || !(g->flags & UODP_OFI_GUARD_STRICT))
		return;
	pthread_mutex_lock(&g->lock);
	if (--g->active == 0)
		pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

UODP_OFI_GUARD_API int uodp_ofi_guard_open(unsigned flags,
					   uodp_ofi_guard_revoked_fn revoked,
					   void *arg,
					   struct uodp_ofi_guard **out)
{
	struct uodp_ctx_ops ops = { .invalidate = on_invalidate };
	struct uodp_ofi_guard *g;
	unsigned cf = UODP_CTX_DEFERRED | UODP_CTX_NO_FRAMES;
	int r;

	if (!out || (flags & ~UODP_OFI_GUARD_STRICT))
		return -EINVAL;
	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->flags = flags;
	g->revoked = revoked;
	g->arg = arg;
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->cond, NULL);
	ops.priv = g;
	if (flags & UODP_OFI_GUARD_STRICT) {
		ops.fence = on_fence;
		ops.unfence = on_unfence;
		cf |= UODP_CTX_STRICT;
	}
	r = uodp_ctx_create(&ops, cf, &g->ctx);
	if (r) {
		pthread_cond_destroy(&g->cond);
		pthread_mutex_destroy(&g->lock);
		free(g);
		return r;
	}
	*out = g;
	return 0;
}

UODP_OFI_GUARD_API int uodp_ofi_guard_close(struct uodp_ofi_guard *g)
{
	if (!g)
		return -EINVAL;
	if (atomic_load(&g->nmrs))
		return -EBUSY;
	uodp_ctx_destroy(g->ctx);
	pthread_cond_destroy(&g->cond);
	pthread_mutex_destroy(&g->lock);
	free(g);
	return 0;
}

UODP_OFI_GUARD_API int
uodp_ofi_guard_mr_reg(struct uodp_ofi_guard *g, struct fid_domain *domain,
		      struct fid_ep *ep, void *buf, size_t len, uint64_t access,
		      uint64_t requested_key, struct uodp_ofi_guard_mr **out)
{
	struct uodp_ofi_guard_mr *gm;
	struct fid_mr *mr;
	int r;

	if (!g || !domain || !buf || !len || !out)
		return -EINVAL;
	gm = calloc(1, sizeof(*gm));
	if (!gm)
		return -ENOMEM;
	gm->g = g;
	/* Watch first, priv set before the MR exists: an invalidation from
	 * now on either finds the MR or marks the registration dead. */
	r = uodp_umem_get(g->ctx, buf, len, UODP_ACCESS_WATCH, &gm->umem);
	if (r)
		goto err_free;
	uodp_umem_set_priv(gm->umem, gm);
	r = fi_mr_reg(domain, buf, len, access, 0, requested_key, 0, &mr, NULL);
	if (r)
		goto err_release;
	if (ep) {
		r = fi_mr_bind(mr, &ep->fid, 0);
		if (!r)
			r = fi_mr_enable(mr);
		if (r)
			goto err_close;
	}
	gm->key = fi_mr_key(mr);
	gm->desc = fi_mr_desc(mr);
	pthread_mutex_lock(&g->lock);
	if (gm->dead) {
		pthread_mutex_unlock(&g->lock);
		r = -EFAULT; /* unmapped while we registered it */
		goto err_close;
	}
	gm->mr = mr;
	pthread_mutex_unlock(&g->lock);
	atomic_fetch_add(&g->nmrs, 1);
	*out = gm;
	return 0;
err_close:
	fi_close(&mr->fid);
err_release:
	uodp_umem_release(gm->umem);
	while (!uodp_ctx_sync(g->ctx)) /* see uodp_ofi_guard_mr_close() */
		sched_yield();
err_free:
	free(gm);
	return r;
}

UODP_OFI_GUARD_API uint64_t
uodp_ofi_guard_mr_key(const struct uodp_ofi_guard_mr *gm)
{
	return gm ? gm->key : 0;
}

UODP_OFI_GUARD_API void *
uodp_ofi_guard_mr_desc(const struct uodp_ofi_guard_mr *gm)
{
	return gm ? gm->desc : NULL;
}

UODP_OFI_GUARD_API bool
uodp_ofi_guard_mr_revoked(const struct uodp_ofi_guard_mr *gm)
{
	return gm && atomic_load(&((struct uodp_ofi_guard_mr *)gm)->revoked);
}

UODP_OFI_GUARD_API int uodp_ofi_guard_mr_close(struct uodp_ofi_guard_mr *gm)
{
	struct uodp_ofi_guard *g;
	struct fid_mr *mr;

	if (!gm)
		return -EINVAL;
	if (in_callback)
		return -EDEADLK;
	g = gm->g;
	pthread_mutex_lock(&g->lock);
	mr = gm->mr;
	gm->mr = NULL;
	pthread_mutex_unlock(&g->lock);
	if (mr)
		fi_close(&mr->fid);
	uodp_umem_release(gm->umem);
	/* A callback that began before the release may still use @gm: it
	 * runs inside an invalidation in flight, so once the context is in
	 * sync none runs (and none starts: the region is released). Why
	 * poll: uodp has no wait call; in flight lasts microseconds. */
	while (!uodp_ctx_sync(g->ctx))
		sched_yield();
	atomic_fetch_sub(&g->nmrs, 1);
	free(gm);
	return 0;
}

UODP_OFI_GUARD_API struct uodp_ctx *
uodp_ofi_guard_ctx(const struct uodp_ofi_guard *g)
{
	return g ? g->ctx : NULL;
}

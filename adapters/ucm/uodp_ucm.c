/* SPDX-License-Identifier: MIT */
/*
 * uodp_ucm.c - UCX's VM_UNMAPPED event fed from uodp's kernel monitor.
 *
 * A UODP_CTX_DEFERRED context with monitor-only (WATCH) regions; its
 * callback runs on uodp's relay thread with no uodp lock held and calls
 * ucm_vm_munmap(), which runs UCX's handlers (ucs_rcache's queues the
 * range and invalidates under its page-table lock when it can take it).
 * UCX's handlers may release rcache regions there, whose mem_dereg may
 * call uodp_ucm_unwatch(): uodp allows a release from a deferred callback,
 * and nothing here holds a lock across ucm_vm_munmap() that unwatch takes.
 *
 * As in libuodp-ofi, an anchor region over a page of our own, registered
 * at start, subscribes the context at once, so that uodp_ucm_start()
 * reports an unavailable or forbidden kernel monitor; no unwatch (made
 * under UCX's page-table lock) waits for the relay thread.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <ucm/api/ucm.h>

#include "uodp.h"
#include "uodp_ucm.h"
#include "watchset.h"

static struct {
	pthread_mutex_t lock; /* start / stop / refresh */
	pthread_rwlock_t lookup;
	struct watchset watches_set; /* the watches, by (addr, len) */
	struct uodp_ctx *ctx;
	struct uodp_umem *anchor, *all;
	void *anchor_page;
	unsigned flags;
	atomic_bool started;
	atomic_uint_fast64_t events, watches, refreshes;
} g = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.watches_set = WATCHSET_INIT,
};

static int anchor_tag;
static __thread bool in_handler; /* inside our callback */

static void on_invalidate(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv)
{
	(void)umem;
	(void)priv;
	if (range->umem_priv == &anchor_tag ||
	    range->event == UODP_EVENT_TEARDOWN || !atomic_load(&g.started))
		return;
	/* Held for writing across the dispatch: a lookup section between
	 * uodp_ucm_lookup_begin() and _end() sees no event land. */
	pthread_rwlock_wrlock(&g.lookup);
	in_handler = true;
	atomic_fetch_add_explicit(&g.events, 1, memory_order_relaxed);
	ucm_vm_munmap(range->start,
		      (size_t)((char *)range->end - (char *)range->start));
	in_handler = false;
	pthread_rwlock_unlock(&g.lookup);
}

/* ---- watches ---- */

UODP_UCM_API int uodp_ucm_watch(void *addr, size_t len)
{
	int r;

	if (!atomic_load(&g.started))
		return -ENOENT;
	r = watchset_add(&g.watches_set, g.ctx, addr, len, NULL);
	if (r)
		return r;
	atomic_fetch_add(&g.watches, 1);
	return 0;
}

UODP_UCM_API int uodp_ucm_unwatch(void *addr, size_t len)
{
	return watchset_remove(&g.watches_set, addr, len);
}

static void unwatch_all(void)
{
	watchset_clear(&g.watches_set);
}

/* The user address space, for UODP_UCM_WATCH_ALL: from the first page to
 * the top of the lower half. Why 47 bits: x86-64 and arm64 (48-bit VA)
 * user space without 5-level paging opt-in ends there; mappings above it
 * exist only for programs that ask mmap() for them. */
static int watch_all(struct uodp_umem **out)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uintptr_t top = ((uintptr_t)1 << 47) - page;

	return uodp_umem_get(g.ctx, (void *)page, top - page, UODP_ACCESS_WATCH,
			     out);
}

UODP_UCM_API int uodp_ucm_refresh(void)
{
	struct uodp_umem *n, *old;
	int r;

	pthread_mutex_lock(&g.lock);
	if (!atomic_load(&g.started)) {
		r = -ENOENT;
		goto out;
	}
	if (!(g.flags & UODP_UCM_WATCH_ALL)) {
		r = -EINVAL;
		goto out;
	}
	/* New first, so that no mapping goes unwatched in between. */
	r = watch_all(&n);
	if (r)
		goto out;
	old = g.all;
	g.all = n;
	uodp_umem_release(old);
	atomic_fetch_add(&g.refreshes, 1);
out:
	pthread_mutex_unlock(&g.lock);
	return r;
}

/* ---- start / stop ---- */

static void teardown(void)
{
	if (g.all)
		uodp_umem_release(g.all);
	g.all = NULL;
	if (g.anchor)
		uodp_umem_release(g.anchor);
	g.anchor = NULL;
	if (g.ctx)
		uodp_ctx_destroy(g.ctx);
	g.ctx = NULL;
	if (g.anchor_page)
		munmap(g.anchor_page, (size_t)sysconf(_SC_PAGESIZE));
	g.anchor_page = NULL;
}

static bool hooks_on(void)
{
	return ucm_global_opts.mmap_hook_mode != UCM_MMAP_HOOK_NONE ||
	       ucm_global_opts.enable_malloc_hooks;
}

UODP_UCM_API int uodp_ucm_start(unsigned flags)
{
	static const struct uodp_ctx_ops ops = { .invalidate = on_invalidate };
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	pthread_rwlockattr_t ra;
	int r;

	if (flags & ~UODP_UCM_WATCH_ALL)
		return -EINVAL;
	pthread_mutex_lock(&g.lock);
	if (atomic_load(&g.started)) {
		r = -EALREADY;
		goto out;
	}
	if (hooks_on()) {
		r = -EBUSY;
		goto out;
	}
	r = uodp_ctx_create(&ops, UODP_CTX_DEFERRED | UODP_CTX_NO_FRAMES,
			    &g.ctx);
	if (r)
		goto out;
	g.anchor_page = mmap(NULL, page, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g.anchor_page == MAP_FAILED) {
		g.anchor_page = NULL;
		r = -ENOMEM;
		goto err;
	}
	/* Also starts the kernel monitor: -ENOSYS / -EPERM show here. */
	r = uodp_umem_get(g.ctx, g.anchor_page, page, UODP_ACCESS_WATCH,
			  &g.anchor);
	if (r)
		goto err;
	uodp_umem_set_priv(g.anchor, &anchor_tag);
	g.flags = flags;
	if (flags & UODP_UCM_WATCH_ALL) {
		r = watch_all(&g.all);
		if (r)
			goto err;
	}
	/* Writers first: a stream of lookups must not starve the relay. */
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(
		&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&g.lookup, &ra);
	pthread_rwlockattr_destroy(&ra);
	ucm_set_external_event(UCM_EVENT_VM_UNMAPPED);
	atomic_store(&g.started, true);
	goto out;
err:
	teardown();
out:
	pthread_mutex_unlock(&g.lock);
	return r;
}

UODP_UCM_API int uodp_ucm_stop(void)
{
	int r = 0;

	pthread_mutex_lock(&g.lock);
	if (!atomic_load(&g.started)) {
		r = -ENOENT;
		goto out;
	}
	atomic_store(&g.started, false);
	unwatch_all();
	teardown(); /* ctx_destroy waits for a callback that runs */
	pthread_rwlock_destroy(&g.lookup);
out:
	pthread_mutex_unlock(&g.lock);
	return r;
}

/* ---- the lookup lock ---- */

UODP_UCM_API int uodp_ucm_lookup_begin(unsigned timeout_ms)
{
	struct timespec ts;
	uint64_t now, deadline;

	if (in_handler)
		return -EDEADLK;
	if (!atomic_load(&g.started))
		return -ENOENT;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	deadline = now + (uint64_t)timeout_ms * 1000000ull;
	for (;;) {
		/* Read side first, then the check: an event read after the
		 * check waits for _end() before it reaches UCX. */
		pthread_rwlock_rdlock(&g.lookup);
		if (uodp_ctx_sync(g.ctx))
			return 0;
		pthread_rwlock_unlock(&g.lookup);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		now = (uint64_t)ts.tv_sec * 1000000000ull +
		      (uint64_t)ts.tv_nsec;
		if (now >= deadline)
			return -EBUSY;
		sched_yield();
	}
}

UODP_UCM_API void uodp_ucm_lookup_end(void)
{
	pthread_rwlock_unlock(&g.lookup);
}

UODP_UCM_API struct uodp_ctx *uodp_ucm_ctx(void)
{
	return atomic_load(&g.started) ? g.ctx : NULL;
}

UODP_UCM_API void uodp_ucm_stats(struct uodp_ucm_stats *out)
{
	if (!out)
		return;
	out->events = atomic_load(&g.events);
	out->watches = atomic_load(&g.watches);
	out->watched = atomic_load(&g.watches_set.count);
	out->refreshes = atomic_load(&g.refreshes);
}

/* SPDX-License-Identifier: MIT */
/*
 * uodp_ofi.c - a libfabric imported memory monitor on uodp.
 *
 * libfabric's cache calls our export ops with its cache lock (mm_lock)
 * held, and start/stop with its monitor list lock held for writing; its
 * notify takes both. So nothing here may wait for the thread that calls
 * notify, and notify is called only from the deferred callback, which runs
 * on uodp's relay thread with no uodp lock held:
 *
 *   application thread (mm_lock held)     relay thread
 *   subscribe -> uodp_umem_get(WATCH)     invalidate callback
 *   unsubscribe -> uodp_umem_release         -> libfabric notify (mm_lock)
 *   valid -> uodp_ctx_sync (one load)           -> our unsubscribe
 *
 * uodp_umem_release() never waits for the relay thread (the context's
 * notifier subscription lasts until uodp_ctx_destroy()), so releasing under
 * mm_lock is safe. An anchor region over a page of our own, registered at
 * import, subscribes the context at once: an unavailable or forbidden
 * kernel monitor fails the import, not the first subscribe.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext.h>

#include "uodp.h"
#include "uodp_ofi.h"
#include "watchset.h"

/* Subscriptions: libfabric names one by (addr, len) only and may subscribe
 * a pair more than once; the watch set (adapters/common/watchset.h) keeps
 * each with a region of its own, and unsubscribe takes the oldest. */
static struct {
	pthread_mutex_t lock; /* import / close */
	struct watchset subs;
	struct uodp_ctx *ctx;
	struct uodp_umem *anchor;
	void *anchor_page;
	struct fid *cache_fid; /* fi_open("mr_cache") */
	atomic_bool imported;
	atomic_bool started;
	atomic_uint_fast64_t subscribes, sub_errors, unsubscribes, notifies,
		invalid;
} g = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.subs = WATCHSET_INIT,
};

static int anchor_tag; /* the anchor region's priv */

static struct fid_mem_monitor monitor;

/* ---- the deferred callback: the only caller of notify ---- */

static void on_invalidate(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv)
{
	struct fid_mem_monitor *m = &monitor;

	(void)umem;
	(void)priv;
	if (range->umem_priv == &anchor_tag ||
	    range->event == UODP_EVENT_TEARDOWN)
		return;
	if (!atomic_load(&g.imported) || !m->import_ops ||
	    !m->import_ops->notify)
		return;
	atomic_fetch_add_explicit(&g.notifies, 1, memory_order_relaxed);
	m->import_ops->notify(
		m, range->start,
		(size_t)((char *)range->end - (char *)range->start));
}

/* ---- export ops ---- */

static int mon_start(struct fid_mem_monitor *m)
{
	(void)m;
	atomic_store(&g.started, true);
	return 0;
}

/* Called with libfabric's monitor list lock held for writing: must not
 * wait for the relay thread, which may be waiting for that lock. The cache
 * unsubscribed its entries before; anything left is released here
 * (uodp_umem_release() does not wait for callbacks). */
static void release_all(void)
{
	watchset_clear(&g.subs);
}

static void mon_stop(struct fid_mem_monitor *m)
{
	(void)m;
	atomic_store(&g.started, false);
	release_all();
}

static int mon_subscribe(struct fid_mem_monitor *m, const void *addr,
			 size_t len)
{
	int r;

	(void)m;
	if (!len)
		return -FI_EINVAL;
	/* The set calls uodp outside its lock: registration may take system
	 * calls, and our own unsubscribe (from notify, on the relay thread)
	 * takes that lock. */
	r = watchset_add(&g.subs, g.ctx, (void *)addr, len, NULL);
	if (r) {
		atomic_fetch_add(&g.sub_errors, 1);
		return r; /* FI_E* values are errno values */
	}
	atomic_fetch_add(&g.subscribes, 1);
	return 0;
}

static void mon_unsubscribe(struct fid_mem_monitor *m, const void *addr,
			    size_t len)
{
	(void)m;
	/* -ENOENT: its subscribe failed, or stop released it. Allowed from
	 * our deferred callback too (notify -> unsubscribe). */
	if (!watchset_remove(&g.subs, addr, len))
		atomic_fetch_add(&g.unsubscribes, 1);
}

/* libfabric asks on every cache hit. False while any invalidation of the
 * process is in flight: from before the kernel event is read (which is
 * when munmap() returns) until notify() has removed the entries. Once it
 * is true again, notify() has run for every unmap that returned before
 * the call, so an entry still in the cache is not stale. Conservative: an
 * unrelated munmap in flight makes a hit re-register. */
static bool mon_valid(struct fid_mem_monitor *m, const void *addr, size_t len)
{
	bool ok;

	(void)m;
	(void)addr;
	(void)len;
	ok = uodp_ctx_sync(g.ctx);
	if (!ok)
		atomic_fetch_add_explicit(&g.invalid, 1, memory_order_relaxed);
	return ok;
}

static struct fi_ops_mem_monitor export_ops = {
	.size = sizeof(struct fi_ops_mem_monitor),
	.start = mon_start,
	.stop = mon_stop,
	.subscribe = mon_subscribe,
	.unsubscribe = mon_unsubscribe,
	.valid = mon_valid,
};

/* libfabric replaces fid.ops at import; this close is used only if the
 * import fails half-way. */
static int mon_close(struct fid *fid)
{
	(void)fid;
	return 0;
}

static struct fi_ops mon_fid_ops = {
	.size = sizeof(struct fi_ops),
	.close = mon_close,
};

/* ---- entry points ---- */

static void destroy_ctx(void)
{
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

static int create_ctx(void)
{
	static const struct uodp_ctx_ops ops = { .invalidate = on_invalidate };
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	int r;

	r = uodp_ctx_create(&ops, UODP_CTX_DEFERRED | UODP_CTX_NO_FRAMES,
			    &g.ctx);
	if (r)
		return r;
	g.anchor_page = mmap(NULL, page, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g.anchor_page == MAP_FAILED) {
		g.anchor_page = NULL;
		r = -ENOMEM;
		goto err;
	}
	/* The anchor also starts the kernel monitor now, so that import
	 * reports -ENOSYS / -EPERM rather than the first registration. */
	r = uodp_umem_get(g.ctx, g.anchor_page, page, UODP_ACCESS_WATCH,
			  &g.anchor);
	if (r)
		goto err;
	uodp_umem_set_priv(g.anchor, &anchor_tag);
	return 0;
err:
	destroy_ctx();
	return r;
}

/*
 * fi_open("mr_cache") does not initialise libfabric, and in 1.17 the
 * imported monitor's cache list is initialised only by that (fi_ini(), run
 * by the first fi_getinfo() or fi_fabric()): a notify before it walks a
 * zeroed list and crashes. A query for a provider that does not exist runs
 * fi_ini() and returns at once with FI_ENODATA.
 */
static void fabric_init(void)
{
	struct fi_info *hints = fi_allocinfo(), *info = NULL;

	if (!hints)
		return;
	hints->fabric_attr->prov_name = strdup("uodp-none");
	if (!fi_getinfo(FI_VERSION(1, 13), NULL, NULL, 0, hints, &info))
		fi_freeinfo(info);
	fi_freeinfo(hints);
}

UODP_OFI_API int uodp_ofi_import(unsigned flags)
{
	int r;

	if (flags)
		return -EINVAL;
	pthread_mutex_lock(&g.lock);
	if (atomic_load(&g.imported)) {
		r = -EALREADY;
		goto out;
	}
	r = create_ctx();
	if (r)
		goto out;
	fabric_init();
	/* FI_VERSION(1, 13): the first release with the import extension. */
	r = fi_open(FI_VERSION(1, 13), "mr_cache", NULL, 0, 0, &g.cache_fid,
		    NULL);
	if (r) {
		r = r == -FI_ENOSYS ? -ENOSYS : r;
		goto err_ctx;
	}
	memset(&monitor, 0, sizeof(monitor));
	monitor.fid.fclass = FI_CLASS_MEM_MONITOR;
	monitor.fid.ops = &mon_fid_ops;
	monitor.export_ops = &export_ops;
	atomic_store(&g.imported, true);
	r = fi_import_fid(g.cache_fid, &monitor.fid, 0);
	if (r) {
		atomic_store(&g.imported, false);
		fi_close(g.cache_fid);
		g.cache_fid = NULL;
		goto err_ctx;
	}
	goto out;
err_ctx:
	destroy_ctx();
out:
	pthread_mutex_unlock(&g.lock);
	return r;
}

UODP_OFI_API int uodp_ofi_close(void)
{
	int r = 0;

	pthread_mutex_lock(&g.lock);
	if (!atomic_load(&g.imported)) {
		r = -ENOENT;
		goto out;
	}
	if (atomic_load(&g.subs.count)) {
		r = -EBUSY;
		goto out;
	}
	/* libfabric's close of an imported monitor takes its locks, so no
	 * export op runs after it; notify is not called after imported
	 * turns false (the callback checks it), and ctx_destroy waits for a
	 * callback that runs. */
	fi_close(&monitor.fid);
	atomic_store(&g.imported, false);
	fi_close(g.cache_fid);
	g.cache_fid = NULL;
	destroy_ctx();
out:
	pthread_mutex_unlock(&g.lock);
	return r;
}

UODP_OFI_API struct fid_mem_monitor *uodp_ofi_monitor(void)
{
	return atomic_load(&g.imported) ? &monitor : NULL;
}

UODP_OFI_API struct uodp_ctx *uodp_ofi_ctx(void)
{
	return atomic_load(&g.imported) ? g.ctx : NULL;
}

UODP_OFI_API void uodp_ofi_stats(struct uodp_ofi_stats *out)
{
	if (!out)
		return;
	out->subscribes = atomic_load(&g.subscribes);
	out->sub_errors = atomic_load(&g.sub_errors);
	out->unsubscribes = atomic_load(&g.unsubscribes);
	out->notifies = atomic_load(&g.notifies);
	out->invalid = atomic_load(&g.invalid);
	out->watched = atomic_load(&g.subs.count);
}

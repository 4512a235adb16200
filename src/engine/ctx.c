/* SPDX-License-Identifier: MIT */
/*
 * ctx.c - contexts: creation, teardown (the release notifier), the
 * context-level notifier accounting and the library's small utilities.
 *
 * A context owns the region tree and the kernel monitor of one address
 * space. Its memory outlives uodp_ctx_destroy() while regions remain: they
 * point at it, so the last uodp_umem_release() frees it (see ctx_release()).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/internal.h"
#include "notifier/monitor.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define PM_PFN_MASK ((UINT64_C(1) << 55) - 1)
#define PM_PRESENT (UINT64_C(1) << 63)

/*
 * Fork detection without a system call on every entry point (getpid()
 * costs over a microsecond on virtual machines): a pthread_atfork() child
 * handler bumps a generation counter, and a context remembers the
 * generation it was created in. A child created by a raw clone()/fork
 * system call, bypassing libc, is not detected.
 */
atomic_ulong engine_fork_generation;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
	atomic_fetch_add(&engine_fork_generation, 1);
}

static void watch_forks(void)
{
	pthread_atfork(NULL, NULL, on_fork_child);
}

/*
 * Open /proc/self/pagemap and learn whether it shows frame numbers (it
 * does with CAP_SYS_ADMIN; unprivileged readers see 0). Without it the
 * engine simply records no frames.
 */
static void ctx_probe_pagemap(struct uodp_ctx *ctx)
{
	static volatile uint64_t probe = 1;
	uint64_t pm = 0;
	off_t off;

	ctx->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ctx->pagemap_pfns = false;
	if (ctx->pagemap_fd < 0)
		return;
	(void)probe; /* fault its page in: pagemap shows absent pages as 0 */
	off = (off_t)(((uintptr_t)&probe >> ctx->page_shift) * sizeof(pm));
	if (pread(ctx->pagemap_fd, &pm, sizeof(pm), off) == sizeof(pm) &&
	    (pm & PM_PRESENT) && (pm & PM_PFN_MASK))
		ctx->pagemap_pfns = true;
}

/* MADV_POPULATE_* arrived in Linux 5.14; without them there is no fault
 * path. Probe on a page we know is mapped (our own stack). */
static bool kernel_has_populate(unsigned page_shift)
{
	char stack_page[1];
	uintptr_t page = (uintptr_t)stack_page &
			 ~(((uintptr_t)1 << page_shift) - 1);

	return madvise((void *)page, (size_t)1 << page_shift,
		       MADV_POPULATE_READ) == 0;
}

static int init_locks(struct uodp_ctx *ctx)
{
	pthread_mutexattr_t ma;
	int r;

	r = pthread_mutex_init(&ctx->mon_lock, NULL);
	if (r)
		return -r;
	r = pthread_rwlock_init(&ctx->tree_lock, NULL);
	if (r)
		goto err_mon;
	pthread_mutexattr_init(&ma);
	r = pthread_mutex_init(&ctx->pin_lock, &ma);
	pthread_mutexattr_destroy(&ma);
	if (r)
		goto err_tree;
	return 0;

err_tree:
	pthread_rwlock_destroy(&ctx->tree_lock);
err_mon:
	pthread_mutex_destroy(&ctx->mon_lock);
	return -r;
}

UODP_API int uodp_ctx_create(const struct uodp_ctx_ops *ops, unsigned flags,
			     struct uodp_ctx **out)
{
	struct uodp_ctx *ctx;
	long page_size = sysconf(_SC_PAGESIZE);
	int r;

	if (!out || (flags & ~UODP_CTX_FLAGS_ALL))
		return -EINVAL;
	if ((flags & UODP_CTX_STRICT) &&
	    ((flags & UODP_CTX_MANUAL) || !ops || !ops->fence || !ops->unfence))
		return -EINVAL;

	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	if (ops)
		ctx->ops = *ops;
	ctx->flags = flags;
	pthread_once(&fork_once, watch_forks);
	ctx->fork_gen = atomic_load(&engine_fork_generation);
	ctx->page_shift = (unsigned)__builtin_ctzl((unsigned long)page_size);
	if (!kernel_has_populate(ctx->page_shift)) {
		r = -ENOSYS;
		goto err_free;
	}
	r = init_locks(ctx);
	if (r)
		goto err_free;
	itree_init(&ctx->tree);
	atomic_init(&ctx->notifier_count, 0);
	atomic_init(&ctx->nc_pending, 0);
	pgt_init(&ctx->pins, UODP_VA_LIMIT >> ctx->page_shift);
	ctx->pins.no_alloc = true; /* see table.c */
	if (flags & UODP_CTX_NO_FRAMES)
		ctx->pagemap_fd = -1;
	else
		ctx_probe_pagemap(ctx);
	ctx->magic = UODP_CTX_MAGIC;
	*out = ctx;
	return 0;

err_free:
	free(ctx);
	return r;
}

static void ctx_free(struct uodp_ctx *ctx)
{
	ctx->magic = 0;
	if (ctx->pagemap_fd >= 0)
		close(ctx->pagemap_fd);
	pgt_destroy(&ctx->pins);
	pthread_mutex_destroy(&ctx->pin_lock);
	pthread_rwlock_destroy(&ctx->tree_lock);
	pthread_mutex_destroy(&ctx->mon_lock);
	free(ctx);
}

/*
 * Stop the kernel monitor, if one runs. Caller holds ctx->mon_lock and no
 * other engine lock: the monitor thread may be waiting for the tree lock
 * inside an invalidation, and joining it must let it finish.
 */
void ctx_stop_monitor_locked(struct uodp_ctx *ctx)
{
	if (ctx->mon) {
		umon_destroy(ctx->mon);
		ctx->mon = NULL;
		ctx->nwatched = 0;
	}
}

/*
 * The release notifier: every region is invalidated as a whole and marked
 * dying. Its counters are raised and never lowered, so uodp_umem_retry()
 * stays true and no fault installs anything again; waiters are woken and
 * see the dying flag.
 */
static void ctx_kill_regions(struct uodp_ctx *ctx)
{
	struct uodp_umem *umem;

	atomic_fetch_add(&ctx->notifier_count, 1);
	pthread_rwlock_rdlock(&ctx->tree_lock);
	for (umem = ctx->umems; umem; umem = umem->next) {
		pthread_mutex_lock(&umem->lock);
		if (umem->active)
			umem->count++;
		umem->dying = true;
		umem->stats.invalidations++; /* as any invalidation of it */
		pthread_cond_broadcast(&umem->idle);
		pthread_mutex_unlock(&umem->lock);

		if (ctx->ops.invalidate_range)
			ctx->ops.invalidate_range(umem, umem->start, umem->end,
						  ctx->ops.priv);
		umem_drop_range(umem, umem->start, umem->end, true);
	}
	pthread_rwlock_unlock(&ctx->tree_lock);
}

UODP_API int uodp_ctx_destroy(struct uodp_ctx *ctx)
{
	bool free_now;

	if (!ctx_valid(ctx) || ctx->dying)
		return -EINVAL;
	if (ctx_forked(ctx))
		return -ECHILD;

	/* No region can be added from here on (uodp_umem_get checks dying
	 * under the tree lock), so no monitor can be started again. */
	pthread_rwlock_wrlock(&ctx->tree_lock);
	ctx->dying = true;
	pthread_rwlock_unlock(&ctx->tree_lock);

	pthread_mutex_lock(&ctx->mon_lock);
	ctx_stop_monitor_locked(ctx);
	pthread_mutex_unlock(&ctx->mon_lock);

	ctx_kill_regions(ctx);

	/* Decide who frees the context: us if no region is left, else the
	 * last uodp_umem_release(). Both decide under the tree write lock,
	 * and a releaser touches the context no more once it dropped it, so
	 * exactly one of us frees it, after the other is done with it. */
	pthread_rwlock_wrlock(&ctx->tree_lock);
	ctx->destroyed = true;
	free_now = ctx->nregions == 0;
	pthread_rwlock_unlock(&ctx->tree_lock);
	if (free_now)
		ctx_free(ctx);
	return 0;
}

/* Called by uodp_umem_release() after it dropped both locks, when it was the
 * last region of a destroyed context. */
void ctx_release(struct uodp_ctx *ctx)
{
	ctx_free(ctx);
}

/*
 * An invalidation of the context ended. When it was the last one running,
 * regions registered meanwhile get their private counters: with no
 * invalidation running, no start() can have missed them any more.
 */
void ctx_notifier_end(struct uodp_ctx *ctx)
{
	struct uodp_umem *umem, *next;

	if (atomic_fetch_sub(&ctx->notifier_count, 1) != 1)
		return;
	if (!atomic_load(&ctx->nc_pending))
		return;

	pthread_rwlock_wrlock(&ctx->tree_lock);
	/* Re-check under the write lock: an invalidation that started since
	 * raised the count before taking the tree lock, and will activate the
	 * list itself when it ends. */
	if (atomic_load(&ctx->notifier_count) == 0) {
		for (umem = ctx->no_counters; umem; umem = next) {
			next = umem->next_nc;
			pthread_mutex_lock(&umem->lock);
			umem->active = true;
			umem->on_nc = false;
			umem->next_nc = NULL;
			pthread_cond_broadcast(&umem->idle);
			pthread_mutex_unlock(&umem->lock);
		}
		ctx->no_counters = NULL;
		atomic_store(&ctx->nc_pending, 0);
	}
	pthread_rwlock_unlock(&ctx->tree_lock);
}

UODP_API const char *uodp_strerror(int err)
{
	if (err > 0)
		err = -err;
	switch (err) {
	case 0:
		return "success";
	case -EINVAL:
		return "invalid argument";
	case -EFAULT:
		return "memory not mapped at that address, or outside the region";
	case -EACCES:
		return "the process may not access that memory with the requested rights";
	case -EAGAIN:
		return "an invalidation raced with the fault: wait and retry";
	case -ENODEV:
		return "the context was destroyed";
	case -ECHILD:
		return "the context belongs to the parent process (used after fork)";
	case -ENOMEM:
		return "out of memory, or mlock limit (RLIMIT_MEMLOCK) reached";
	case -ENOSYS:
		return "kernel feature missing (userfaultfd, or MADV_POPULATE_* "
		       "of Linux 5.14): use UODP_CTX_MANUAL or a newer kernel";
	case -EPERM:
		return "userfaultfd not permitted here: use UODP_CTX_MANUAL";
	case -EBUSY:
		return "another userfaultfd already watches that memory";
	case -EOPNOTSUPP:
		return "the kernel monitor cannot follow this mapping type: "
		       "use UODP_CTX_MANUAL";
	default:
		/* INT_MIN has no positive counterpart: no errno anyway. */
		return err == INT_MIN ? "unknown error" : strerror(-err);
	}
}

UODP_API const char *uodp_version(void)
{
	return UODP_VERSION_STRING;
}

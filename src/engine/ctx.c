/* SPDX-License-Identifier: MIT */
/*
 * ctx.c - contexts: creation, teardown (the release notifier), the
 * subscription to the process-wide notifier and the library's small
 * utilities (messages, version).
 *
 * A context owns the region index of one address space and subscribes to
 * the process-wide notifier (src/notifier) while it has watched regions.
 * Its memory outlives uodp_ctx_destroy() while regions or open range tokens
 * remain: they point at it (ctx->holds), so the last uodp_umem_release() or
 * uodp_invalidate_range_end() frees it (ctx_drop(), ctx_release()).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/internal.h"
#include "notifier/notifier.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

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
	pin_fork_child(); /* the child inherits no mlock() */
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
	struct stat st;
	off_t off;

	ctx->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ctx->pagemap_pfns = false;
	if (ctx->pagemap_fd < 0)
		return;
	if (fstat(ctx->pagemap_fd, &st)) {
		close(ctx->pagemap_fd);
		ctx->pagemap_fd = -1;
		return;
	}
	ctx->pagemap_dev = st.st_dev;
	ctx->pagemap_ino = st.st_ino;
	(void)probe; /* fault its page in: pagemap shows absent pages as 0 */
	off = (off_t)(((uintptr_t)&probe >> ctx->page_shift) * sizeof(pm));
	if (pread(ctx->pagemap_fd, &pm, sizeof(pm), off) == sizeof(pm) &&
	    (pm & PM_PRESENT) && (pm & PM_PFN_MASK))
		ctx->pagemap_pfns = true;
}

bool ctx_pagemap_ours(struct uodp_ctx *ctx)
{
	struct stat st;

	if (ctx->pagemap_fd < 0 || atomic_load(&ctx->pagemap_lost))
		return false;
	if (fstat(ctx->pagemap_fd, &st) || st.st_dev != ctx->pagemap_dev ||
	    st.st_ino != ctx->pagemap_ino) {
		atomic_store(&ctx->pagemap_lost, true); /* for good */
		return false;
	}
	return true;
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

__thread char ulock_self_tag __attribute__((tls_model("initial-exec")));

static int init_locks(struct uodp_ctx *ctx)
{
	int r;

	r = pthread_mutex_init(&ctx->sub_lock, NULL);
	if (r)
		return -r;
	r = pthread_rwlock_init(&ctx->tree_lock, NULL);
	if (r)
		goto err_sub;
	r = pthread_mutex_init(&ctx->inv_lock, NULL);
	if (r)
		goto err_tree;
	r = mono_cond_init(&ctx->inv_idle);
	if (r)
		goto err_inv;
	return 0;

err_inv:
	pthread_mutex_destroy(&ctx->inv_lock);
err_tree:
	pthread_rwlock_destroy(&ctx->tree_lock);
err_sub:
	pthread_mutex_destroy(&ctx->sub_lock);
	return -r;
}

static bool reserved_zero(const struct uodp_ctx_ops *ops)
{
	unsigned i;

	for (i = 0; i < sizeof(ops->reserved) / sizeof(ops->reserved[0]); i++)
		if (ops->reserved[i])
			return false;
	return true;
}

/* The argument rules of uodp_ctx_create(), in the order the API lists. */
static int create_check(const struct uodp_ctx_ops *ops, unsigned flags,
			struct uodp_ctx **out)
{
	if (!ops || !out || (flags & ~UODP_CTX_FLAGS_ALL) || ops->comp_mask ||
	    !reserved_zero(ops))
		return -EINVAL;
	if (!ops->invalidate && !(flags & UODP_CTX_PIN))
		return -EINVAL;
	if ((flags & UODP_CTX_STRICT) &&
	    ((flags & UODP_CTX_MANUAL) || !ops->fence || !ops->unfence))
		return -EINVAL;
	return callback_check(false);
}

static int ctx_create(const struct uodp_ctx_ops *ops, unsigned flags,
		      struct uodp_ctx **out);

UODP_API int uodp_ctx_create(const struct uodp_ctx_ops *ops, unsigned flags,
			     struct uodp_ctx **out)
{
	int r, cs;

	/* Probing pagemap opens and reads files: no cancellation inside. */
	cs = nocancel_begin();
	r = ctx_create(ops, flags, out);
	nocancel_end(cs);
	return r;
}

static int ctx_create(const struct uodp_ctx_ops *ops, unsigned flags,
		      struct uodp_ctx **out)
{
	struct uodp_ctx *ctx;
	long page_size = sysconf(_SC_PAGESIZE);
	int r;

	r = create_check(ops, flags, out);
	if (r)
		return r;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
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
	rindex_init(&ctx->tree);
	atomic_init(&ctx->period, 0);
	atomic_init(&ctx->inflight, 0);
	atomic_init(&ctx->users, 0);
	atomic_init(&ctx->holds, 1); /* uodp_ctx_destroy() drops it */
	if (flags & UODP_CTX_PIN)
		pin_init(); /* the process's pin counts (pin.c) */
	ctx_probe_pagemap(ctx);
	if (flags & UODP_CTX_NO_FRAMES)
		ctx->pagemap_pfns = false;
	ctx->scan_huge = huge_probe(ctx);
	ctx->magic = UODP_CTX_MAGIC;
	*out = ctx;
	return 0;

err_free:
	free(ctx);
	return r;
}

void (*engine_test_hook_entered)(struct uodp_ctx *ctx);

int ctx_enter(struct uodp_ctx *ctx)
{
	atomic_fetch_add(&ctx->users, 1);
	if (engine_test_hook_entered)
		engine_test_hook_entered(ctx);
	if (atomic_load(&ctx->holds) == 0) {
		atomic_fetch_sub(&ctx->users, 1);
		return -ENODEV;
	}
	return 0;
}

void ctx_leave(struct uodp_ctx *ctx)
{
	atomic_fetch_sub(&ctx->users, 1);
}

bool ctx_hold(struct uodp_ctx *ctx)
{
	long h = atomic_load(&ctx->holds);

	do {
		if (h == 0)
			return false;
	} while (!atomic_compare_exchange_weak(&ctx->holds, &h, h + 1));
	return true;
}

static void ctx_free(struct uodp_ctx *ctx)
{
	/* A call that entered before the last hold went is on its way out
	 * (it saw the destroy, or holds a hold of its own: then we would
	 * not be here). Short: an entry checks and leaves, or a get reaches
	 * its tree-locked check of dying. */
	while (atomic_load(&ctx->users))
		sched_yield();
	ctx->magic = UODP_DEAD_MAGIC;
	unf_free(ctx->sub); /* detached by uodp_ctx_destroy() */
	if (ctx_pagemap_ours(ctx))
		close(ctx->pagemap_fd);
	rindex_destroy(&ctx->tree);
	pthread_cond_destroy(&ctx->inv_idle);
	pthread_mutex_destroy(&ctx->inv_lock);
	pthread_rwlock_destroy(&ctx->tree_lock);
	pthread_mutex_destroy(&ctx->sub_lock);
	if (!UODP_DEBUG_ON) /* debug builds keep it poisoned (umem.c) */
		free(ctx);
}

/* ---- the notifier's event sink ---- */

void ctx_deferred_begin(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
			bool gone);
void ctx_deferred_finish(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
			 enum uodp_event ev, unsigned merged);

static enum uodp_event event_of(enum unf_event ev)
{
	switch (ev) {
	case UNF_REMOVE:
		return UODP_EVENT_REMOVE;
	case UNF_REMAP:
		return UODP_EVENT_REMAP;
	case UNF_UNMAP:
	default:
		return UODP_EVENT_UNMAP;
	}
}

static void sink_begin(void *owner, uint64_t start, uint64_t end,
		       enum unf_event ev)
{
	struct uodp_ctx *ctx = owner;

	if (ctx->flags & UODP_CTX_DEFERRED)
		ctx_deferred_begin(ctx, start, end, event_gone(event_of(ev)));
}

static void sink_finish(void *owner, uint64_t start, uint64_t end,
			enum unf_event ev, unsigned merged)
{
	struct uodp_ctx *ctx = owner;

	if (ctx->flags & UODP_CTX_DEFERRED)
		ctx_deferred_finish(ctx, start, end, event_of(ev), merged);
	else
		ctx_invalidate(ctx, start, end, event_of(ev),
			       event_gone(event_of(ev)));
}

/* Called before events are read, and after they are delivered: the
 * window in which uodp_ctx_sync() must say "in flight" although no
 * invalidation has begun yet (the unmapping thread returns on the read). */
static void sink_fence(void *owner)
{
	struct uodp_ctx *ctx = owner;
	int saved = engine_in_callback;

	atomic_fetch_add(&ctx->inflight, 1);
	if (ctx->flags & UODP_CTX_STRICT) {
		engine_in_callback = CB_LOCKED;
		ctx->ops.fence(ctx, ctx->ops.priv);
		engine_in_callback = saved;
	}
}

static void sink_unfence(void *owner)
{
	struct uodp_ctx *ctx = owner;
	int saved = engine_in_callback;

	if (ctx->flags & UODP_CTX_STRICT) {
		engine_in_callback = CB_LOCKED;
		ctx->ops.unfence(ctx, ctx->ops.priv);
		engine_in_callback = saved;
	}
	atomic_fetch_sub(&ctx->inflight, 1);
}

/* mremap() moved pages the context may have pinned: the kernel's mlock
 * went with them (see pin_moved()). */
static void sink_moved(void *owner, uint64_t from, uint64_t to, uint64_t len)
{
	struct uodp_ctx *ctx = owner;

	if (ctx->flags & UODP_CTX_PIN)
		pin_moved(ctx, from, to, len >> ctx->page_shift);
}

/* Before a pinning context drops pins on its own (a release, an
 * uodp_umem_unmap(), a manual invalidation - uodp_invalidate_range*() on
 * a context the monitor also watches, whose drop unpins as a release
 * does): a move the monitor has read but not yet reported
 * would find the source's counts gone and leave the destination locked
 * for good, so wait for the moves read so far (the mremap() that the
 * caller saw return among them). The wait is on the monitor's report
 * alone (unf_barrier(): only moved() runs between its read and report,
 * which takes nothing but the pin lock), so a caller may hold region or
 * driver locks. On the monitor thread itself (uodp_umem_unmap() from a
 * callback) it does not wait: the moves of a read are reported before
 * any of it is delivered. */
void ctx_settle_moves(struct uodp_ctx *ctx)
{
	if ((ctx->flags & UODP_CTX_PIN) && !(ctx->flags & UODP_CTX_MANUAL))
		unf_barrier();
}

static const struct unf_ops sink_ops = {
	.begin = sink_begin,
	.finish = sink_finish,
	.fence = sink_fence,
	.unfence = sink_unfence,
	.moved = sink_moved,
};

/* Subscription and watches: the first watched region subscribes, and the
 * subscription lasts until uodp_ctx_destroy() (see ctx_unwatch()).
 * sub_lock held across: it orders them. */
int ctx_watch(struct uodp_ctx *ctx, uint64_t start, uint64_t end, bool lazy)
{
	unsigned f;
	int r = 0;

	if (ctx->flags & UODP_CTX_MANUAL)
		return 0;
	pthread_mutex_lock(&ctx->sub_lock);
	if (ctx->sub_closed) {
		/* uodp_ctx_destroy() detached it: subscribing again would
		 * outlive the context (a get racing destroy). */
		r = -ENODEV;
		goto out;
	}
	if (!ctx->sub) {
		f = UNF_STRICT; /* fence/unfence bracket every delivery */
		if (ctx->flags & UODP_CTX_DEFERRED)
			f |= UNF_DEFERRED;
		/* ...but the hooks' in-thread ones, when the fence only
		 * raises inflight: ctx_invalidate() raises it over its walk,
		 * and the unmapping thread returns after it. */
		else if (!(ctx->flags & UODP_CTX_STRICT))
			f |= UNF_FENCE_READS;
		r = unf_subscribe(&sink_ops, ctx, f, &ctx->sub);
		if (r)
			goto out;
	}
	r = lazy ? unf_watch_lazy(ctx->sub, start, end) :
		   unf_watch(ctx->sub, start, end);
	if (!r)
		ctx->nwatched++; /* on error the subscription stays too */
out:
	pthread_mutex_unlock(&ctx->sub_lock);
	return r;
}

void ctx_unwatch(struct uodp_ctx *ctx, uint64_t start, uint64_t end)
{
	if (ctx->flags & UODP_CTX_MANUAL)
		return;
	pthread_mutex_lock(&ctx->sub_lock);
	if (ctx->sub) {
		unf_unwatch(ctx->sub, start, end);
		/* The subscription stays until uodp_ctx_destroy(): dropping
		 * it waits for queued deferred callbacks, and a release is
		 * often made under a lock those callbacks take (libfabric's
		 * cache lock around unsubscribe). */
		ctx->nwatched--;
	}
	pthread_mutex_unlock(&ctx->sub_lock);
}

/* The fault path's check that mappings made since the watch are watched.
 * Lock-free in the notifier's common case; sub, once set, stays valid
 * memory until ctx_free() (a fault racing uodp_ctx_destroy() may use it
 * after it was detached: the notifier then answers 0 at once). */
int ctx_prepare(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
		bool *settled)
{
	struct unf_sub *sub;
	int r;

	*settled = false;
	if (ctx->flags & UODP_CTX_MANUAL)
		return 0;
	sub = __atomic_load_n(&ctx->sub, __ATOMIC_ACQUIRE);
	r = sub ? unf_prepare(sub, start, end, settled) : 0;
	/* Registration forbidden (a sandbox entered since the region was
	 * registered): on the fault path -EPERM means "more access than the
	 * region has", so this refusal is -ENOSYS, as uodp_strerror() says
	 * it (userfaultfd forbidden: use UODP_CTX_MANUAL). */
	return r == -EPERM ? -ENOSYS : r;
}

void (*engine_test_hook_before_detach)(struct uodp_ctx *ctx);

/* Detach the subscription (no event is delivered after this returns) and
 * close it to new watches. Not under sub_lock: detaching waits for the
 * queued deferred callbacks, which may release regions (ctx_unwatch takes
 * sub_lock). The handle is freed by ctx_free(), when no fault can hold
 * it. */
static void ctx_unsubscribe(struct uodp_ctx *ctx)
{
	struct unf_sub *sub;

	pthread_mutex_lock(&ctx->sub_lock);
	ctx->sub_closed = true;
	sub = ctx->sub;
	pthread_mutex_unlock(&ctx->sub_lock);
	if (!sub)
		return;
	if (engine_test_hook_before_detach)
		engine_test_hook_before_detach(ctx);
	unf_detach(sub);
}

UODP_API bool uodp_ctx_sync(const struct uodp_ctx *ctx)
{
	return ctx && atomic_load_explicit(&((struct uodp_ctx *)ctx)->inflight,
					   memory_order_acquire) == 0;
}

/* The probe's region is never mapped: nothing to drop. */
static void probe_invalidate(struct uodp_umem *umem,
			     const struct uodp_range *range, void *priv)
{
	(void)umem;
	(void)range;
	(void)priv;
}

UODP_API int uodp_monitor_probe(void)
{
	const struct uodp_ctx_ops ops = { .invalidate = probe_invalidate };
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	struct uodp_umem *umem;
	struct uodp_ctx *ctx;
	void *p;
	int r;

	r = callback_check(false);
	if (r)
		return r;
	p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	r = uodp_ctx_create(&ops, 0, &ctx);
	if (!r) {
		r = uodp_umem_get(ctx, p, pg, UODP_ACCESS_READ, &umem);
		if (!r)
			uodp_umem_release(umem);
		uodp_ctx_destroy(ctx);
	}
	munmap(p, pg);
	return r;
}

/*
 * The release notifier: every region is invalidated as a whole and marked
 * dying, so retry stays true and no fault installs anything again. Waiters
 * on the region and on the context are woken and see the flag.
 */
static void ctx_kill_regions(struct uodp_ctx *ctx)
{
	struct uodp_umem *umem;
	struct rindex_iter it;
	uint64_t period = ONE_SHOT; /* one walk under the read lock */

	atomic_fetch_add(&ctx->inflight, 1);
	pthread_rwlock_rdlock(&ctx->tree_lock);
	/* The whole index (callbacks here run CB_LOCKED: none can register
	 * or release, so it does not change under the walk). */
	for_each_overlap(ctx, it, umem, 0, UINT64_MAX)
	{
		ulock_lock(&umem->lock);
		atomic_store(&umem->dying, true);
		pthread_cond_broadcast(&umem->idle);
		ulock_unlock(&umem->lock);
		inval_locked(umem, umem->start, umem->end, UODP_EVENT_TEARDOWN,
			     period, false);
	}
	pthread_rwlock_unlock(&ctx->tree_lock);
	atomic_fetch_sub(&ctx->inflight, 1);
	/* Faults waiting for a period to end see dying now. */
	pthread_mutex_lock(&ctx->inv_lock);
	pthread_cond_broadcast(&ctx->inv_idle);
	pthread_mutex_unlock(&ctx->inv_lock);
}

UODP_API int uodp_ctx_destroy(struct uodp_ctx *ctx)
{
	int r, cs;

	if (!ctx_valid(ctx))
		return -EINVAL;
	if (ctx_forked(ctx))
		return -ECHILD;
	r = callback_check(false);
	if (r)
		return r;
	/* No region can be added from here on (uodp_umem_get checks dying
	 * under the tree lock), so no subscription can start again. */
	pthread_rwlock_wrlock(&ctx->tree_lock);
	if (ctx->dying) {
		pthread_rwlock_unlock(&ctx->tree_lock);
		return -EINVAL; /* a racing second destroy */
	}
	ctx->dying = true;
	pthread_rwlock_unlock(&ctx->tree_lock);

	cs = nocancel_begin();
	ctx_unsubscribe(ctx);
	ctx_kill_regions(ctx);
	if (ctx->flags & UODP_CTX_PIN)
		pin_trim();

	/* Freed now, or by the last uodp_umem_release() or
	 * uodp_invalidate_range_end() (ctx->holds): a token open across the
	 * destroy ends on live memory. */
	if (ctx_drop(ctx))
		ctx_free(ctx);
	nocancel_end(cs);
	return 0;
}

bool ctx_drop(struct uodp_ctx *ctx)
{
	return atomic_fetch_sub(&ctx->holds, 1) == 1;
}

void ctx_release(struct uodp_ctx *ctx)
{
	ctx_free(ctx);
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
	case -ERANGE:
		return "address range outside the region (or the address space)";
	case -EFAULT:
		return "memory not mapped at that address";
	case -EACCES:
		return "the process may not access that memory with the requested rights";
	case -EPERM:
		return "not permitted: more access than the region has, the "
		       "region lock not held, or userfaultfd forbidden here "
		       "(use UODP_CTX_MANUAL)";
	case -EAGAIN:
		return "an invalidation collided with the fault, or no thread "
		       "could be created: try again";
	case -EBUSY:
		return "timed out behind invalidations, or another userfaultfd "
		       "already watches that memory";
	case -EDEADLK:
		return "call not allowed here: from an invalidation callback, "
		       "or with the region lock held";
	case -ENODEV:
		return "the context was destroyed";
	case -ECHILD:
		return "the context belongs to the parent process (used after fork)";
	case -ENOMEM:
		return "out of memory, or mlock limit (RLIMIT_MEMLOCK) reached";
	case -ENOSYS:
		return "kernel feature missing (userfaultfd, or MADV_POPULATE_* "
		       "of Linux 5.14): use UODP_CTX_MANUAL or a newer kernel";
	case -EOPNOTSUPP:
		return "the kernel monitor cannot follow this mapping type: "
		       "use UODP_CTX_MANUAL";
	case -EBADF:
		return "the kernel monitor lost its descriptors (closed or "
		       "replaced by the application): no invalidations";
	case -EPROTO:
		return "the library is not of the version asked for "
		       "(uodp_check_version())";
	default:
		/* INT_MIN has no positive counterpart: no errno anyway. */
		return err == INT_MIN ? "unknown error" : strerror(-err);
	}
}

UODP_API const char *uodp_version(void)
{
	return UODP_VERSION_STRING;
}

UODP_API int uodp_check_version(unsigned major, unsigned minor)
{
	if (major != UODP_VERSION_MAJOR || minor > UODP_VERSION_MINOR)
		return -EPROTO;
	return 0;
}

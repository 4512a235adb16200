/* SPDX-License-Identifier: MIT */
/*
 * dev.c - the device's life cycle, its engine context and the callbacks
 * the engine calls into it (invalidate_range, fence, unfence), counters.
 *
 * A device creates its own context, or shares the context of another
 * device (uodp_dev_attr.share: a group, so that two devices can mirror the
 * same memory under one kernel monitor, which allows one userfaultfd per
 * mapping). The callbacks get the group; invalidate_range finds the device
 * through the span (umem->priv). invalidate_range clears the device page
 * table of the span under its pt_lock taken for writing: the lock waits for
 * every access window that might use the entries (they hold it for
 * reading from the check to the end of the copy), so when the callback
 * returns no device access uses the invalidated pages. Strict ordering
 * adds a device-wide fence: fence() raises a flag and waits for the access
 * windows in progress to drain (new
 * access windows wait, running ones drain), unfence() releases it; both
 * run on the monitor thread and fence every device of the group.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device/device.h"

atomic_ulong dev_fork_gen;
static pthread_once_t dev_atfork_once = PTHREAD_ONCE_INIT;

static void dev_atfork_child(void)
{
	atomic_fetch_add(&dev_fork_gen, 1);
}

static void dev_atfork_install(void)
{
	pthread_atfork(NULL, NULL, dev_atfork_child);
}

int dev_check(const struct uodp_dev *dev)
{
	if (!dev || dev->magic != DEV_MAGIC)
		return -EINVAL;
	if (dev->fork_gen !=
	    atomic_load_explicit(&dev_fork_gen, memory_order_relaxed))
		return -ECHILD;
	return 0;
}

void dev_count_error(struct uodp_dev *dev, int err)
{
	switch (err) {
	case 0:
		return;
	case -EFAULT:
		dev_count(dev, ST_ERR_FAULT, 1);
		return;
	case -EACCES:
		dev_count(dev, ST_ERR_ACCESS, 1);
		return;
	case -EPERM:
		dev_count(dev, ST_ERR_PERM, 1);
		return;
	case -ERANGE:
		dev_count(dev, ST_ERR_RANGE, 1);
		return;
	default:
		dev_count(dev, ST_ERR_OTHER, 1);
	}
}

int dev_engine_error(int err)
{
	switch (err) {
	case -EPERM:
		/* The engine's "userfaultfd forbidden": here -EPERM is only
		 * about a key's rights. */
		return -ENOSYS;
	case -ERANGE:
		/* The engine's "leaves the address space" at registration:
		 * here -ERANGE is only "not inside the key's region". */
		return -EINVAL;
	default:
		return err;
	}
}

void dev_invalidate_range(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv)
{
	struct span *sp = range->umem_priv;
	uint64_t start = (uintptr_t)range->start, end = (uintptr_t)range->end;
	struct uodp_dev *dev;
	uint64_t n;

	(void)umem;
	(void)priv; /* the group: the span knows its device */
	if (!sp)
		return; /* registered just now: its table is empty */
	dev = sp->dev;
	dev_count(dev, ST_INVALIDATIONS, 1);
	if (start < sp->start)
		start = sp->start;
	if (end > sp->end)
		end = sp->end;
	if (start >= end)
		return;
	pthread_rwlock_wrlock(&sp->pt_lock);
	n = dpt_clear(&sp->dpt, (start - sp->start) >> dev->page_shift,
		      (end - sp->start + dev->page_size - 1) >>
			      dev->page_shift);
	pthread_rwlock_unlock(&sp->pt_lock);
	dev_count(dev, ST_PAGES_INVALIDATED, n);
}

/*
 * The strict fence of one device: a count of access windows in progress
 * and a flag, not a lock held from fence() to unfence(). (A pthread lock
 * held across the two callbacks is taken on the monitor thread under the
 * notifier's own lock and released under it again: ThreadSanitizer calls
 * that a lock-order inversion, and a driver's lock must not depend on how
 * the notifier orders its own.) Dekker-style: a window counts itself in,
 * then checks the flag; fence() sets the flag, then waits for the count to
 * drain; sequentially consistent atomics make at least one of them see the
 * other. The mutex and condition variable only carry the wakeups.
 */
void (*dev_test_hook_fence_wait)(struct uodp_dev *dev);

int dev_window_fence_enter(struct uodp_dev *dev)
{
	int cs;

	for (;;) {
		atomic_fetch_add(&dev->fence_active, 1);
		if (!atomic_load(&dev->fenced))
			return 0;
		dev_window_fence_leave(dev); /* back out, then wait */
		/* Inside a callback of a delivery the unfence comes after
		 * (another driver's context on the kernel monitor: the
		 * monitor fences every strict subscriber, then calls the
		 * others back): waiting would be waiting for ourselves. */
		if (callback_check(true))
			return -EDEADLK;
		/* The one wait of an access (pthread_cond_wait is a
		 * cancellation point): the caller holds a key reference. */
		cs = dev_nocancel_begin();
		pthread_mutex_lock(&dev->fence_mu);
		if (dev_test_hook_fence_wait && atomic_load(&dev->fenced))
			dev_test_hook_fence_wait(dev);
		while (atomic_load(&dev->fenced))
			pthread_cond_wait(&dev->fence_cv, &dev->fence_mu);
		pthread_mutex_unlock(&dev->fence_mu);
		dev_nocancel_end(cs);
	}
}

void dev_window_fence_leave(struct uodp_dev *dev)
{
	if (atomic_fetch_sub(&dev->fence_active, 1) == 1 &&
	    atomic_load(&dev->fenced)) {
		pthread_mutex_lock(&dev->fence_mu);
		pthread_cond_broadcast(&dev->fence_cv);
		pthread_mutex_unlock(&dev->fence_mu);
	}
}

/* Fence one device: new windows wait, running ones drain. */
static void fence_one(struct uodp_dev *dev)
{
	pthread_mutex_lock(&dev->fence_mu);
	atomic_fetch_add(&dev->fenced, 1);
	while (atomic_load(&dev->fence_active))
		pthread_cond_wait(&dev->fence_cv, &dev->fence_mu);
	pthread_mutex_unlock(&dev->fence_mu);
	dev_count(dev, ST_FENCES, 1);
}

static void unfence_one(struct uodp_dev *dev)
{
	pthread_mutex_lock(&dev->fence_mu);
	atomic_fetch_sub(&dev->fenced, 1);
	pthread_cond_broadcast(&dev->fence_cv);
	pthread_mutex_unlock(&dev->fence_mu);
}

/*
 * Fence every device of the group. The members fenced are marked, so that
 * unfence() lifts exactly those (a device that joins in between was not
 * fenced; one that leaves is closing and has no region left). No lock is
 * held from fence() to unfence().
 */
static void dev_fence(struct uodp_ctx *ctx, void *priv)
{
	struct devgroup *g = priv;
	struct uodp_dev *dev;

	(void)ctx;
	pthread_mutex_lock(&g->lock);
	for (dev = g->members; dev; dev = dev->gnext) {
		fence_one(dev);
		dev->group_fenced++;
	}
	pthread_mutex_unlock(&g->lock);
}

static void dev_unfence(struct uodp_ctx *ctx, void *priv)
{
	struct devgroup *g = priv;
	struct uodp_dev *dev;

	(void)ctx;
	pthread_mutex_lock(&g->lock);
	for (dev = g->members; dev; dev = dev->gnext) {
		if (dev->group_fenced) {
			dev->group_fenced--;
			unfence_one(dev);
		}
	}
	pthread_mutex_unlock(&g->lock);
}

/* A new group with a new context for @dev. */
static int group_create(struct uodp_dev *dev, unsigned flags)
{
	struct uodp_ctx_ops ops;
	struct devgroup *g;
	int r;

	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	if (pthread_mutex_init(&g->lock, NULL)) {
		free(g);
		return -ENOMEM;
	}
	memset(&ops, 0, sizeof(ops));
	ops.invalidate = dev_invalidate_range;
	ops.priv = g;
	if (flags & UODP_DEV_MANUAL)
		g->ctx_flags |= UODP_CTX_MANUAL;
	if (flags & UODP_DEV_STRICT) {
		g->ctx_flags |= UODP_CTX_STRICT;
		ops.fence = dev_fence;
		ops.unfence = dev_unfence;
	}
	/* The device reaches memory by virtual address: page frames are of
	 * no use to it, so the engine need not read them (NO_FRAMES). */
	r = uodp_ctx_create(&ops, g->ctx_flags | UODP_CTX_NO_FRAMES, &g->ctx);
	if (r) {
		r = dev_engine_error(r);
		pthread_mutex_destroy(&g->lock);
		free(g);
		return r;
	}
	g->members = dev;
	g->refs = 1;
	dev->group = g;
	dev->ctx = g->ctx;
	return 0;
}

/* Join the group of @other (its context, flags MANUAL/STRICT equal). */
static int group_join(struct uodp_dev *dev, struct uodp_dev *other,
		      unsigned flags)
{
	unsigned want = 0;
	struct devgroup *g;
	int r = dev_check(other);

	if (r)
		return r;
	g = other->group;
	if (flags & UODP_DEV_MANUAL)
		want |= UODP_CTX_MANUAL;
	if (flags & UODP_DEV_STRICT)
		want |= UODP_CTX_STRICT;
	if (want != g->ctx_flags)
		return -EINVAL;
	pthread_mutex_lock(&g->lock);
	dev->gnext = g->members;
	g->members = dev;
	g->refs++;
	pthread_mutex_unlock(&g->lock);
	dev->group = g;
	dev->ctx = g->ctx;
	return 0;
}

/* Leave the group; the last member destroys the context. The device has
 * no region left, so no callback concerns it any more. */
static void group_leave(struct uodp_dev *dev)
{
	struct devgroup *g = dev->group;
	struct uodp_dev **pp;
	bool last;

	pthread_mutex_lock(&g->lock);
	for (pp = &g->members; *pp; pp = &(*pp)->gnext) {
		if (*pp == dev) {
			*pp = dev->gnext;
			break;
		}
	}
	last = --g->refs == 0;
	pthread_mutex_unlock(&g->lock);
	if (!last)
		return;
	uodp_ctx_destroy(g->ctx);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

static int attr_check(const struct uodp_dev_attr *a)
{
	if (a->flags & ~UODP_DEV_FLAGS_ALL)
		return -EINVAL;
	if ((a->flags & UODP_DEV_MANUAL) && (a->flags & UODP_DEV_STRICT))
		return -EINVAL;
	if (a->fault_around > UODP_DEV_FAULT_AROUND_MAX ||
	    a->exec_workers > 64 || a->fault_workers > 64)
		return -EINVAL;
	return 0;
}

int dev_cond_init_timed(pthread_cond_t *c)
{
	pthread_condattr_t ca;
	int r;

	if (pthread_condattr_init(&ca))
		return -ENOMEM;
	r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (!r)
		r = pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
	return r ? -ENOMEM : 0;
}

void dev_deadline(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static int dev_locks_init(struct uodp_dev *dev)
{
	if (pthread_mutex_init(&dev->fence_mu, NULL))
		return -ENOMEM;
	if (pthread_cond_init(&dev->fence_cv, NULL))
		goto err_fence_mu;
	if (pthread_rwlock_init(&dev->mr_lock, NULL))
		goto err_fence;
	if (pthread_mutex_init(&dev->idle_lock, NULL))
		goto err_mr;
	if (pthread_cond_init(&dev->idle_cond, NULL))
		goto err_idle;
	if (pthread_mutex_init(&dev->pool_lock, NULL))
		goto err_cond;
	if (pthread_cond_init(&dev->exec_cond, NULL))
		goto err_pool;
	if (pthread_cond_init(&dev->fault_cond, NULL))
		goto err_exec;
	return 0;
err_exec:
	pthread_cond_destroy(&dev->exec_cond);
err_pool:
	pthread_mutex_destroy(&dev->pool_lock);
err_cond:
	pthread_cond_destroy(&dev->idle_cond);
err_idle:
	pthread_mutex_destroy(&dev->idle_lock);
err_mr:
	pthread_rwlock_destroy(&dev->mr_lock);
err_fence:
	pthread_cond_destroy(&dev->fence_cv);
err_fence_mu:
	pthread_mutex_destroy(&dev->fence_mu);
	return -ENOMEM;
}

static void dev_locks_destroy(struct uodp_dev *dev)
{
	pthread_cond_destroy(&dev->fault_cond);
	pthread_cond_destroy(&dev->exec_cond);
	pthread_mutex_destroy(&dev->pool_lock);
	pthread_cond_destroy(&dev->idle_cond);
	pthread_mutex_destroy(&dev->idle_lock);
	pthread_rwlock_destroy(&dev->mr_lock);
	pthread_cond_destroy(&dev->fence_cv);
	pthread_mutex_destroy(&dev->fence_mu);
}

UODP_API int uodp_dev_open(const struct uodp_dev_attr *attr,
			   struct uodp_dev **out)
{
	static const struct uodp_dev_attr defaults;
	struct uodp_dev *dev;
	int r, i;

	if (!attr)
		attr = &defaults;
	if (!out)
		return -EINVAL;
	r = attr_check(attr);
	if (r)
		return r;
	pthread_once(&dev_atfork_once, dev_atfork_install);
	rcv_init(); /* failure only disables the guarded paths */

	dev = calloc(1, sizeof(*dev));
	if (!dev)
		return -ENOMEM;
	dev->flags = attr->flags;
	dev->fault_around = attr->fault_around ? attr->fault_around :
						 UODP_DEV_FAULT_AROUND_DEFAULT;
	dev->nexec = attr->exec_workers ? attr->exec_workers : 2;
	dev->nfault = attr->fault_workers ? attr->fault_workers : 1;
	dev->page_size = (uint64_t)sysconf(_SC_PAGESIZE);
	dev->page_shift = (unsigned)__builtin_ctzll(dev->page_size);
	dev->pid = getpid();
	dev->fork_gen = atomic_load(&dev_fork_gen);
	atomic_init(&dev->fast_copy,
		    (attr->flags & UODP_DEV_FAST_COPY) && rcv_available());
	if (!atomic_load(&dev->fast_copy) && !dev_pvm_works()) {
		/* A sandbox forbids process_vm_readv/writev (seccomp):
		 * probed once here rather than failing every operation
		 * with the sandbox's EPERM. The guarded copy does the same
		 * job where it exists. */
		if (!rcv_available()) {
			free(dev);
			return -ENOSYS;
		}
		atomic_store(&dev->fast_copy, true);
	}
	for (i = 0; i < ST_COUNT; i++)
		atomic_init(&dev->stats[i], 0);
	atomic_init(&dev->retiring, 0);
	dev->free_top = UINT32_MAX; /* no free slot yet */
	r = dev_locks_init(dev);
	if (r)
		goto err_free;

	if (attr->share)
		r = group_join(dev, attr->share, attr->flags);
	else
		r = group_create(dev, attr->flags);
	if (r)
		goto err_locks;
	dev->magic = DEV_MAGIC;
	*out = dev;
	return 0;
err_locks:
	dev_locks_destroy(dev);
err_free:
	free(dev);
	return r;
}

UODP_API int uodp_dev_close(struct uodp_dev *dev)
{
	int r = dev_check(dev), cs;

	if (r)
		return r;
	/* It releases regions and may destroy the context, which the
	 * engine refuses from a callback: refuse before anything goes. */
	r = callback_check(false);
	if (r)
		return r;
	cs = dev_nocancel_begin(); /* waits for requests, workers, users */
	queues_destroy_all(dev);
	pool_stop(dev);
	mr_release_all(dev);
	group_leave(dev);
	dev->magic = 0;
	dev_locks_destroy(dev);
	free(dev);
	dev_nocancel_end(cs);
	return 0;
}

UODP_API struct uodp_ctx *uodp_dev_ctx(const struct uodp_dev *dev)
{
	if (!dev || dev->magic != DEV_MAGIC)
		return NULL;
	return dev->ctx;
}

UODP_API int uodp_dev_stats(const struct uodp_dev *dev,
			    struct uodp_dev_stats *out)
{
	uint64_t v[ST_COUNT];
	int i;

	if (!dev || dev->magic != DEV_MAGIC || !out)
		return -EINVAL;
	for (i = 0; i < ST_COUNT; i++)
		v[i] = atomic_load_explicit(&((struct uodp_dev *)dev)->stats[i],
					    memory_order_relaxed);
	memset(out, 0, sizeof(*out));
	/* Every operation counts as one of its kind, once (dop_prepare). */
	out->ops = v[ST_READS] + v[ST_WRITES] + v[ST_COPIES] + v[ST_ATOMICS] +
		   v[ST_PREFETCHES];
	out->reads = v[ST_READS];
	out->writes = v[ST_WRITES];
	out->copies = v[ST_COPIES];
	out->atomics = v[ST_ATOMICS];
	out->prefetches = v[ST_PREFETCHES];
	out->snapshots = v[ST_SNAPSHOTS];
	out->bytes_read = v[ST_BYTES_READ];
	out->bytes_written = v[ST_BYTES_WRITTEN];
	out->page_faults = v[ST_PAGE_FAULTS];
	out->pages_faulted = v[ST_PAGES_FAULTED];
	out->fault_retries = v[ST_FAULT_RETRIES];
	out->invalidations = v[ST_INVALIDATIONS];
	out->pages_invalidated = v[ST_PAGES_INVALIDATED];
	out->fences = v[ST_FENCES];
	out->races = v[ST_RACES];
	out->err_fault = v[ST_ERR_FAULT];
	out->err_access = v[ST_ERR_ACCESS];
	out->err_perm = v[ST_ERR_PERM];
	out->err_range = v[ST_ERR_RANGE];
	out->err_other = v[ST_ERR_OTHER];
	out->children_created = v[ST_CHILDREN_CREATED];
	out->children_released = v[ST_CHILDREN_RELEASED];
	out->async_posted = v[ST_ASYNC_POSTED];
	out->async_completed = v[ST_ASYNC_COMPLETED];
	out->async_faults = v[ST_ASYNC_FAULTS];
	return 0;
}

UODP_API const char *uodp_dev_opcode_name(enum uodp_dev_opcode op)
{
	switch (op) {
	case UODP_DEV_OP_READ:
		return "read";
	case UODP_DEV_OP_WRITE:
		return "write";
	case UODP_DEV_OP_COPY:
		return "copy";
	case UODP_DEV_OP_FETCH_ADD:
		return "fetch-add";
	case UODP_DEV_OP_CMP_SWAP:
		return "cmp-swap";
	case UODP_DEV_OP_PREFETCH:
		return "prefetch";
	case UODP_DEV_OP_PREFETCH_WRITE:
		return "prefetch-write";
	}
	return "?";
}

/*
 * One message per errno, as this layer uses it (the engine's own messages
 * are uodp_strerror()'s; where an engine error has several meanings the
 * device maps it to one of its own before returning it, see mr.c/dev.c).
 */
UODP_API const char *uodp_dev_strerror(int err)
{
	if (err > 0)
		err = -err;
	switch (err) {
	case 0:
		return "success";
	case -EINVAL:
		return "invalid argument: NULL pointer, unknown flag or opcode, "
		       "misaligned atomic address, or a range to register "
		       "that wraps or leaves the address space";
	case -ENOENT:
		return "no region has this key (never registered, or "
		       "deregistered)";
	case -ERANGE:
		return "the range is not inside the key's region (or wraps "
		       "around)";
	case -EPERM:
		return "the key's rights do not allow the operation";
	case -EFAULT:
		return "memory in the range, or the caller's buffer, is not "
		       "mapped by the process";
	case -EACCES:
		return "the process may not access that memory that way "
		       "(write to read-only memory, any access to PROT_NONE)";
	case -ENOMEM:
		return "out of memory";
	case -ENOSPC:
		return "no room: every key value is in use or retired, or the "
		       "queue holds as many requests as its depth";
	case -ENODEV:
		return "the device's context is being torn down (a call raced "
		       "uodp_dev_close())";
	case -ECHILD:
		return "the device belongs to the parent process (used after "
		       "fork)";
	case -ENOSYS:
		return "a kernel facility the device needs is missing or "
		       "forbidden: userfaultfd for the kernel monitor (use "
		       "UODP_DEV_MANUAL), or process_vm_readv/writev where no "
		       "guarded copy exists";
	case -EBUSY:
		return "(kernel monitor) another userfaultfd already watches "
		       "that memory";
	case -EOPNOTSUPP:
		return "(kernel monitor) the memory is of a kind the monitor "
		       "cannot follow: use UODP_DEV_MANUAL";
	case -EBADF:
		return "(kernel monitor) the monitor's descriptors were closed "
		       "or replaced by someone else: the monitor is gone";
	case -EAGAIN:
		return "no thread could be created (transient): try again";
	case -EMFILE:
	case -ENFILE:
		return "no file descriptor left for the kernel monitor";
	case -EDEADLK:
		return "called from an invalidation callback of an engine context "
		       "(the device's, or another driver's)";
	}
	return "unknown error";
}

/* SPDX-License-Identifier: MIT */
/*
 * monitor.c - the kernel notifier: one userfaultfd and one thread per
 * non-manual context, the user-space counterpart of an MMU notifier.
 *
 * Owns the fd, the thread, and the map of covered ranges (which addresses
 * at least one region covers, with a count per stretch) that decides what
 * the kernel has registered. Ranges are registered with
 * UFFDIO_REGISTER_MODE_WP only and no page is ever write-protected, so page
 * faults never reach us: the kernel sends only UNMAP, REMOVE and REMAP
 * events, and the thread turns each into uodp_invalidate_range_start() +
 * _end() of the range that went away.
 *
 * The kernel blocks the thread that unmaps until we read the event. Hence
 * the rules of the event path (everything the thread does after poll()):
 *  - it never allocates, frees, maps, unmaps or madvises: with a registered
 *    heap, malloc/free there could trim that heap and wait for ourselves;
 *    batches of messages live on the thread's stack;
 *  - it never takes ctx->mon_lock: the engine holds that lock to stop us
 *    (umon_destroy() joins the thread under it) and while it registers;
 *  - signals never end it: every asynchronous signal is blocked in the
 *    thread (so a profiler's SIGPROF is delivered elsewhere) and EINTR is
 *    retried anyway;
 *  - with strict ordering (UODP_CTX_STRICT) the driver is fenced before an
 *    event is read: the unmapping thread is released by the read, so once
 *    it returns the device is paused and stays so until the range is
 *    invalidated.
 *
 * Mappings created inside a covered range after its registration (a hole
 * filled later, MAP_FIXED over a region) are not registered by the kernel.
 * Replacing a registered mapping removes it first, which we see (UNMAP or
 * REMAP), so the thread bumps `epoch` before every read of events: the
 * read is what lets the unmapping call return, so when munmap() (or mmap
 * over, mremap) has returned, the bump is visible. A covered stretch is
 * "verified" at an epoch when, at that epoch, it was found fully mapped
 * before a registration call succeeded over it; umon_prepare_map() is a
 * single compare while every stretch is verified at the current epoch and
 * otherwise registers again. Only a mapping put into a hole needs that
 * registration, and stretches with holes are never verified.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "engine/internal.h"
#include "notifier/monitor.h"
#include "notifier/uffd.h"

#define MON_BATCH 32 /* messages read at once (32 bytes each, on stack) */

/*
 * A stretch of covered addresses: [start, end) is covered by `refs`
 * regions. Stretches are sorted, disjoint and never merged, so the bounds
 * of every registered region stay stretch boundaries while it lives.
 */
struct seg {
	uint64_t start, end;
	unsigned long refs;
	uint64_t verified; /* epoch + 1 at which fully mapped and registered */
};

struct umon {
	struct uodp_ctx *ctx;
	int uffd;
	int stopfd; /* eventfd: written once by umon_destroy() */
	uint64_t features;
	uint64_t page;
	bool strict;
	bool forked; /* we are a child: fds closed, no thread */
	pthread_t thread;
	pid_t pid;
	_Atomic pid_t tid;
	atomic_bool stop;

	/* Bumped by the thread before invalidating a vanished mapping. */
	_Atomic uint64_t epoch;
	/* epoch + 1 at which every stretch was verified, 0 if not. */
	_Atomic uint64_t full_at;

	/* The covered ranges; under ctx->mon_lock. */
	struct seg *segs;
	size_t nsegs, cap;

	struct {
		_Atomic uint64_t unmap, remove, remap, other, wakeups, fences,
			slow_prepares;
	} st;

	struct umon *next_all; /* all_mons; under all_lock */
};

/* ------------------------------------------------------------------------ */
/* fork: the child must not keep our fds                                     */
/* ------------------------------------------------------------------------ */

/*
 * A forked child inherits the userfaultfd. If it kept it, closing ours
 * would not release the kernel context, and a parent thread unmapping
 * memory still registered there (a mapping mremap()ed out of a region)
 * would wait for a reader that is gone. The child closes them at once.
 */
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static struct umon *all_mons; /* under all_lock */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_prepare(void)
{
	pthread_mutex_lock(&all_lock);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&all_lock);
}

static void atfork_child(void)
{
	struct umon *m;

	for (m = all_mons; m; m = m->next_all) {
		if (m->forked)
			continue;
		close(m->uffd);
		close(m->stopfd);
		m->forked = true;
	}
	pthread_mutex_unlock(&all_lock);
}

static void atfork_install(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void all_add(struct umon *m)
{
	pthread_once(&atfork_once, atfork_install);
	pthread_mutex_lock(&all_lock);
	m->next_all = all_mons;
	all_mons = m;
	pthread_mutex_unlock(&all_lock);
}

static void all_remove(struct umon *m)
{
	struct umon **pp;

	pthread_mutex_lock(&all_lock);
	for (pp = &all_mons; *pp; pp = &(*pp)->next_all) {
		if (*pp == m) {
			*pp = m->next_all;
			break;
		}
	}
	pthread_mutex_unlock(&all_lock);
}

/* ------------------------------------------------------------------------ */
/* The event path (monitor thread only)                                      */
/* ------------------------------------------------------------------------ */

static void stat_inc(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void mon_invalidate(struct umon *m, uint64_t start, uint64_t end)
{
	if (start >= end)
		return;
	/* The kernel reports after the fact: nothing to bracket, so the
	 * one-walk form (start and end per region under one tree lock). */
	uodp_invalidate_range(m->ctx, start, end);
}

/* A write-protect fault can only come from someone else's protection (we
 * never set one); lift it so the faulting thread is not stuck. */
static void mon_unblock_fault(struct umon *m, uint64_t addr)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = addr & ~(m->page - 1), .len = m->page },
		.mode = 0,
	};
	struct uffdio_range wake = wp.range;

	if (ioctl(m->uffd, UFFDIO_WRITEPROTECT, &wp))
		ioctl(m->uffd, UFFDIO_WAKE, &wake);
}

static void mon_handle(struct umon *m, const struct uffd_msg *msg)
{
	switch (msg->event) {
	case UFFD_EVENT_UNMAP:
		stat_inc(&m->st.unmap);
		mon_invalidate(m, msg->arg.remove.start, msg->arg.remove.end);
		break;
	case UFFD_EVENT_REMOVE:
		stat_inc(&m->st.remove);
		mon_invalidate(m, msg->arg.remove.start, msg->arg.remove.end);
		break;
	case UFFD_EVENT_REMAP:
		stat_inc(&m->st.remap);
		mon_invalidate(m, msg->arg.remap.from,
			       msg->arg.remap.from + msg->arg.remap.len);
		break;
	case UFFD_EVENT_PAGEFAULT:
		stat_inc(&m->st.other);
		mon_unblock_fault(m, msg->arg.pagefault.address);
		break;
	default:
		stat_inc(&m->st.other);
		break;
	}
}

/*
 * Read and handle what is queued, until a read comes back short (the queue
 * was empty at that moment). In strict mode the driver is fenced before
 * the first read and unfenced after the last event is handled. Returns the
 * number of messages handled.
 */
static unsigned mon_drain(struct umon *m)
{
	struct uffd_msg msgs[MON_BATCH];
	struct uodp_ctx *ctx = m->ctx;
	unsigned total = 0;
	bool fenced = false;
	ssize_t n;
	size_t i, cnt;

	for (;;) {
		if (m->strict && !fenced) {
			ctx->ops.fence(ctx, ctx->ops.priv);
			fenced = true;
		}
		/* Before the read that releases the unmapping thread: once its
		 * munmap() returns, the next fault looks at the mappings
		 * again (any pending event may be an UNMAP or a REMAP). */
		atomic_fetch_add(&m->epoch, 1);
		n = read(m->uffd, msgs, sizeof(msgs));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		cnt = (size_t)n / sizeof(msgs[0]);
		for (i = 0; i < cnt; i++)
			mon_handle(m, &msgs[i]);
		total += (unsigned)cnt;
		if (cnt < MON_BATCH)
			break;
	}
	if (fenced) {
		ctx->ops.unfence(ctx, ctx->ops.priv);
		stat_inc(&m->st.fences);
	}
	if (total)
		stat_inc(&m->st.wakeups);
	return total;
}

static bool fd_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void *mon_main(void *arg)
{
	struct umon *m = arg;
	struct pollfd pfd[2] = {
		{ .fd = m->uffd, .events = POLLIN },
		{ .fd = m->stopfd, .events = POLLIN },
	};

	atomic_store(&m->tid, (pid_t)syscall(SYS_gettid));
	while (!atomic_load(&m->stop)) {
		if (poll(pfd, 2, -1) < 0)
			continue; /* EINTR, or ENOMEM: try again */
		if (pfd[0].revents & POLLNVAL)
			break;
		if (pfd[0].revents)
			mon_drain(m);
	}
	/* Stopping: handle what is queued so nobody stays blocked (no fence
	 * call when nothing is). Events queued after this are released when
	 * the fd is closed. */
	if (fd_readable(m->uffd))
		mon_drain(m);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Covered ranges (ctx->mon_lock held)                                       */
/* ------------------------------------------------------------------------ */

/* Index of the first stretch ending after @addr. */
static size_t seg_find(const struct umon *m, uint64_t addr)
{
	size_t lo = 0, hi = m->nsegs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (m->segs[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int seg_reserve(struct umon *m, size_t extra)
{
	struct seg *s;
	size_t cap;

	if (m->nsegs + extra <= m->cap)
		return 0;
	cap = (m->nsegs + extra) * 2;
	s = realloc(m->segs, cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	m->segs = s;
	m->cap = cap;
	return 0;
}

static void seg_insert(struct umon *m, size_t i, struct seg s)
{
	memmove(&m->segs[i + 1], &m->segs[i],
		(m->nsegs - i) * sizeof(m->segs[0]));
	m->segs[i] = s;
	m->nsegs++;
}

/* Make @addr a stretch boundary. Capacity must have been reserved. */
static void seg_split(struct umon *m, uint64_t addr)
{
	size_t i = seg_find(m, addr);
	struct seg s;

	if (i == m->nsegs || m->segs[i].start >= addr)
		return;
	s = m->segs[i];
	s.start = addr;
	m->segs[i].end = addr;
	seg_insert(m, i + 1, s);
}

/* Count one more region over [start, end). */
static int cover_add(struct umon *m, uint64_t start, uint64_t end)
{
	size_t i, over = 0;
	uint64_t pos;

	for (i = seg_find(m, start); i < m->nsegs && m->segs[i].start < end;
	     i++)
		over++;
	/* two splits, at most over + 1 gaps, and two spare slots so that
	 * cover_del() never needs memory */
	if (seg_reserve(m, over + 5))
		return -ENOMEM;
	seg_split(m, start);
	seg_split(m, end);
	i = seg_find(m, start);
	for (pos = start; pos < end;) {
		if (i < m->nsegs && m->segs[i].start == pos) {
			m->segs[i].refs++;
			pos = m->segs[i++].end;
			continue;
		}
		struct seg gap = {
			.start = pos,
			.end = (i < m->nsegs && m->segs[i].start < end) ?
				       m->segs[i].start :
				       end,
			.refs = 1,
		};
		seg_insert(m, i++, gap);
		pos = gap.end;
	}
	return 0;
}

static int unregister_one(uint64_t s, uint64_t e, void *arg)
{
	struct umon *m = arg;

	uffd_unregister(m->uffd, s, e);
	return 0;
}

/* The kernel forgets [start, end). A range holding a mapping the kernel
 * refuses is refused as a whole: then mapping by mapping. */
static void kern_unregister(struct umon *m, uint64_t start, uint64_t end)
{
	if (uffd_unregister(m->uffd, start, end) == -EINVAL)
		uffd_for_each_vma(start, end, unregister_one, m);
}

struct reg_arg {
	struct umon *m;
	bool refused;
};

static int register_one(uint64_t s, uint64_t e, void *argp)
{
	struct reg_arg *arg = argp;
	int r = uffd_register(arg->m->uffd, s, e);

	if (r == -EINVAL || r == -EPERM) {
		arg->refused = true;
		return 0;
	}
	return r;
}

/* The kernel registers [start, end). Mappings it refuses are skipped and
 * reported in *@refused; holes are fine. Errors: -EBUSY, -ENOMEM. */
static int kern_register(struct umon *m, uint64_t start, uint64_t end,
			 bool *refused)
{
	struct reg_arg arg = { .m = m };
	int r = uffd_register(m->uffd, start, end);

	*refused = false;
	if (r != -EINVAL && r != -EPERM)
		return r == -EBUSY || r == 0 ? r : -ENOMEM;
	/* A refused mapping, or nothing mapped: look mapping by mapping. */
	r = uffd_for_each_vma(start, end, register_one, &arg);
	*refused = arg.refused;
	if (r && r != -EBUSY)
		r = -ENOMEM;
	return r;
}

/* Count one region less over [start, end); the kernel forgets stretches
 * that nobody covers any more. */
static void cover_del(struct umon *m, uint64_t start, uint64_t end)
{
	size_t i, j, first;
	uint64_t run_s = 0, run_e = 0;

	/* Boundaries exist already (cover_add made them, nothing merges);
	 * split anyway if memory allows, to stay correct if not. */
	if (!seg_reserve(m, 2)) {
		seg_split(m, start);
		seg_split(m, end);
	}
	first = seg_find(m, start);
	for (i = first; i < m->nsegs && m->segs[i].start < end; i++)
		if (m->segs[i].refs)
			m->segs[i].refs--;

	/* Compact, unregistering maximal runs of stretches now uncovered. */
	for (i = j = first; i < m->nsegs; i++) {
		struct seg *s = &m->segs[i];

		if (s->refs == 0) {
			if (run_e != s->start) {
				if (run_s < run_e)
					kern_unregister(m, run_s, run_e);
				run_s = s->start;
			}
			run_e = s->end;
			continue;
		}
		m->segs[j++] = *s;
	}
	m->nsegs = j;
	if (run_s < run_e)
		kern_unregister(m, run_s, run_e);
}

/* Recompute the fast path's answer: every stretch verified at @e0. */
static void full_update(struct umon *m, uint64_t e0)
{
	size_t i;

	for (i = 0; i < m->nsegs; i++) {
		if (m->segs[i].verified != e0 + 1) {
			atomic_store(&m->full_at, 0);
			return;
		}
	}
	atomic_store(&m->full_at, e0 + 1);
}

static void verify_range(struct umon *m, uint64_t start, uint64_t end,
			 uint64_t e0)
{
	size_t i;

	for (i = seg_find(m, start); i < m->nsegs && m->segs[i].start < end;
	     i++)
		m->segs[i].verified = e0 + 1;
}

/* ------------------------------------------------------------------------ */
/* Life cycle and registration (ctx->mon_lock held)                          */
/* ------------------------------------------------------------------------ */

/* Start the thread with every asynchronous signal blocked; synchronous
 * ones (a crash in a driver callback) keep their default handling. */
static int mon_start_thread(struct umon *m)
{
	static const int sync_sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL,
					 SIGTRAP, SIGSYS, SIGABRT };
	sigset_t all, old;
	size_t i;
	int r;

	sigfillset(&all);
	for (i = 0; i < sizeof(sync_sigs) / sizeof(sync_sigs[0]); i++)
		sigdelset(&all, sync_sigs[i]);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&m->thread, NULL, mon_main, m);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r)
		return r == EAGAIN ? -EAGAIN : -r;
	pthread_setname_np(m->thread, "uodp-monitor");
	return 0;
}

int umon_create(struct uodp_ctx *ctx, struct umon **out)
{
	struct umon *m;
	int r;

	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->ctx = ctx;
	m->page = (uint64_t)1 << ctx->page_shift;
	m->strict = ctx->flags & UODP_CTX_STRICT;
	m->pid = getpid();
	r = uffd_open(&m->features);
	if (r < 0)
		goto err_free;
	m->uffd = r;
	m->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->stopfd < 0) {
		r = -errno;
		goto err_uffd;
	}
	all_add(m);
	r = mon_start_thread(m);
	if (r)
		goto err_all;
	*out = m;
	return 0;

err_all:
	all_remove(m);
	close(m->stopfd);
err_uffd:
	close(m->uffd);
err_free:
	free(m);
	return r;
}

void umon_destroy(struct umon *m)
{
	uint64_t one = 1;
	size_t i, j;

	if (!m)
		return;
	if (m->forked || getpid() != m->pid)
		return; /* a child: no thread, fds closed at fork */

	/* No new event for covered ranges from here on. */
	for (i = 0; i < m->nsegs; i = j) {
		for (j = i + 1;
		     j < m->nsegs && m->segs[j].start == m->segs[j - 1].end;
		     j++)
			;
		kern_unregister(m, m->segs[i].start, m->segs[j - 1].end);
	}

	atomic_store(&m->stop, true);
	while (write(m->stopfd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	pthread_join(m->thread, NULL);

	all_remove(m);
	/* Releases the kernel context: whatever is still registered to it
	 * is dropped and any thread waiting on a late event goes on. */
	close(m->uffd);
	close(m->stopfd);
	free(m->segs);
	free(m);
}

int umon_register(struct umon *m, uint64_t start, uint64_t end)
{
	uint64_t e0 = atomic_load(&m->epoch);
	bool full, refused;
	int r;

	if (start >= end)
		return -EINVAL;
	/* Checked before registering: a mapping that appears in a hole
	 * after this is seen by no registration and must not count. */
	full = uffd_fully_mapped(start, end);
	r = cover_add(m, start, end);
	if (r)
		return r;
	r = kern_register(m, start, end, &refused);
	if (r) {
		cover_del(m, start, end);
		return r;
	}
	if (full && !refused)
		verify_range(m, start, end, e0);
	full_update(m, e0);
	return 0;
}

void umon_unregister(struct umon *m, uint64_t start, uint64_t end)
{
	if (start >= end)
		return;
	/* The fast path's answer stays right: fewer stretches to verify. */
	cover_del(m, start, end);
}

static int any_mapped_fn(uint64_t s, uint64_t e, void *arg)
{
	(void)s;
	(void)e;
	(void)arg;
	return 1;
}

/* Register the part [s, e) of a stretch that failed as a whole. */
static int prepare_part(struct umon *m, uint64_t s, uint64_t e)
{
	int r = uffd_register(m->uffd, s, e);

	if (r == 0 || r == -EBUSY)
		return r;
	if (r != -EINVAL && r != -EPERM)
		return -ENOMEM;
	/* Nothing mapped there: populating will say -EFAULT. */
	if (uffd_for_each_vma(s, e, any_mapped_fn, NULL) != 1)
		return 0;
	/* Something is mapped now; it may have appeared in a hole since the
	 * attempt above (the kernel refuses a range with no mapping at all).
	 * Only a second refusal means a mapping type the kernel refuses. */
	r = uffd_register(m->uffd, s, e);
	if (r == 0 || r == -EBUSY)
		return r;
	return -EOPNOTSUPP;
}

int umon_prepare_map(struct umon *m, uint64_t start, uint64_t end)
{
	uint64_t e0 = atomic_load(&m->epoch);
	uint64_t f = atomic_load(&m->full_at);
	size_t i;
	int r;

	if (f && f == e0 + 1)
		return 0;

	stat_inc(&m->st.slow_prepares);
	start &= ~(m->page - 1);
	end = (end + m->page - 1) & ~(m->page - 1);
	for (i = seg_find(m, start); i < m->nsegs && m->segs[i].start < end;
	     i++) {
		struct seg *s = &m->segs[i];
		bool full;

		if (s->verified == e0 + 1)
			continue;
		/* A stretch without holes is registered whole and verified
		 * (checked before: a mapping appearing after the check is
		 * not counted). One with holes cannot be verified: register
		 * only the part this call maps. */
		full = uffd_fully_mapped(s->start, s->end);
		if (full && uffd_register(m->uffd, s->start, s->end) == 0) {
			s->verified = e0 + 1;
			continue;
		}
		r = prepare_part(m, start > s->start ? start : s->start,
				 end < s->end ? end : s->end);
		if (r)
			return r;
	}
	full_update(m, e0);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Observation                                                               */
/* ------------------------------------------------------------------------ */

void umon_get_stats(struct umon *m, struct umon_stats *out)
{
	out->unmap = atomic_load(&m->st.unmap);
	out->remove = atomic_load(&m->st.remove);
	out->remap = atomic_load(&m->st.remap);
	out->other = atomic_load(&m->st.other);
	out->wakeups = atomic_load(&m->st.wakeups);
	out->fences = atomic_load(&m->st.fences);
	out->slow_prepares = atomic_load(&m->st.slow_prepares);
}

uint64_t umon_features(const struct umon *m)
{
	return m->features;
}

pid_t umon_tid(struct umon *m)
{
	return atomic_load(&m->tid);
}

bool umon_pending(struct umon *m)
{
	return fd_readable(m->uffd);
}

bool umon_stopping(struct umon *m)
{
	return atomic_load(&m->stop);
}

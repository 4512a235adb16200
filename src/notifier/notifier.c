/* SPDX-License-Identifier: MIT */
/*
 * notifier.c - the process-wide memory notifier: one userfaultfd, one
 * monitor thread and one relay thread per process, and the subscribers.
 * Watched mappings are in watch.c; the kernel calls in uffd.c.
 *
 * The monitor thread (uodp-monitor) polls the userfaultfd and a pipe (its
 * stop signal). When events are pending it drains them: strict subscribers
 * are fenced first, then events are read in batches of 32 on its stack,
 * and each goes to every subscriber: begin, then finish right away or, for
 * a deferred subscriber, a finish queued to the relay thread
 * (uodp-relay). It never allocates, frees, maps or unmaps, never waits for
 * the relay (a full queue coalesces), and has every asynchronous signal
 * blocked. Before each read it makes nf.epoch odd and after it even, having
 * logged the UNMAP / REMAP ranges for watch.c (see there).
 *
 * Our descriptors may be closed behind our back (a daemon closing "all
 * unknown fds"). The monitor sees POLLNVAL, POLLHUP on the pipe, or a
 * descriptor whose identity (st_dev, st_ino, access mode, recorded at
 * open) changed, checked before every read and every second; then the
 * notifier is "broken": no more events, subscribe / watch / prepare fail
 * with -EBADF until the last subscriber leaves, and a descriptor number
 * that is no longer ours is never read, written or closed.
 */
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lib/lock.h"
#include "notifier/nf.h"
#include "notifier/nf_icpt.h"

#define MON_BATCH 32	  /* messages read at once (32 bytes each, on stack) */
#define MON_CHECK_MS 1000 /* idle self-check of our descriptors */

struct nf_state nf = {
	.life_lock = NF_LOCK_INIT,
	.subs_lock = NF_LOCK_INIT,
	.watch_lock = NF_LOCK_INIT,
	.ring_lock = NF_LOCK_INIT,
	.ring_cv = PTHREAD_COND_INITIALIZER,
	.drained_cv = PTHREAD_COND_INITIALIZER,
	.uffd = -1,
	.pipe = { -1, -1 },
	.epoch = 2,
};

/* Test hook: a smaller relay ring (0 = NF_RING). */
unsigned unf_test_ring_cap;

/* ------------------------------------------------------------------------ */
/* Locks                                                                     */
/* ------------------------------------------------------------------------ */

/* How many nf_locks the calling thread holds (nf.h: nf_depth). */
_Thread_local unsigned nf_depth __attribute__((tls_model("initial-exec")));

void nf_lock(struct nf_lock *l)
{
	pthread_mutex_lock(&l->m);
	nf_depth++;
	atomic_store_explicit(&l->owner, (unsigned long)pthread_self(),
			      memory_order_relaxed);
}

void nf_unlock(struct nf_lock *l)
{
	atomic_store_explicit(&l->owner, 0, memory_order_relaxed);
	nf_depth--;
	pthread_mutex_unlock(&l->m);
}

bool nf_held(struct nf_lock *l)
{
	return atomic_load_explicit(&l->owner, memory_order_relaxed) ==
	       (unsigned long)pthread_self();
}

void nf_cond_wait(pthread_cond_t *c, struct nf_lock *l)
{
	atomic_store_explicit(&l->owner, 0, memory_order_relaxed);
	pthread_cond_wait(c, &l->m);
	atomic_store_explicit(&l->owner, (unsigned long)pthread_self(),
			      memory_order_relaxed);
}

void nf_assert_fail(const char *what, const char *file, int line)
{
	fprintf(stderr, "uodp notifier: %s at %s:%d\n", what, file, line);
	abort();
}

/* ------------------------------------------------------------------------ */
/* Descriptors                                                               */
/* ------------------------------------------------------------------------ */

static void mark_broken(void)
{
	int zero = 0;

	if (atomic_compare_exchange_strong(&nf.broken, &zero, -EBADF))
		atomic_store(&nf.all_ok, 0);
}

bool nf_uffd_ok(void)
{
	if (nf.uffd >= 0 && uffd_fd_is(nf.uffd, &nf.uffd_id))
		return true;
	mark_broken();
	return false;
}

static bool fds_ok(void)
{
	return nf_uffd_ok() && uffd_fd_is(nf.pipe[0], &nf.pipe_id[0]) &&
	       uffd_fd_is(nf.pipe[1], &nf.pipe_id[1]);
}

/* Close @fd only if it is still the file we opened. */
static void close_ours(int *fd, const struct uffd_fdid *id)
{
	if (*fd >= 0 && uffd_fd_is(*fd, id))
		close(*fd);
	*fd = -1;
}

/* ------------------------------------------------------------------------ */
/* Fences (strict subscribers)                                               */
/* ------------------------------------------------------------------------ */

/*
 * Fence references: one per drain that fenced @sub, released after the
 * finish of the last event that drain gave it. ops->fence runs when the
 * depth leaves 0, ops->unfence when it returns to 0, both under
 * fence_lock, so the subscriber sees them strictly alternate. Depth 0
 * means none of its finishes is pending, so a fence never waits for one.
 */
static void fence_get(struct unf_sub *sub)
{
	pthread_mutex_lock(&sub->fence_lock);
	if (sub->fence_depth++ == 0 && sub->ops->fence)
		sub->ops->fence(sub->owner);
	pthread_mutex_unlock(&sub->fence_lock);
}

static void fence_put(struct unf_sub *sub)
{
	pthread_mutex_lock(&sub->fence_lock);
	if (--sub->fence_depth == 0) {
		if (sub->ops->unfence)
			sub->ops->unfence(sub->owner);
		nf_stat_inc(&nf.st.fences);
	}
	pthread_mutex_unlock(&sub->fence_lock);
}

/* ------------------------------------------------------------------------ */
/* Relay ring (monitor side: never waits, never allocates)                   */
/* ------------------------------------------------------------------------ */

static uint64_t ring_cap(void)
{
	unsigned c = unf_test_ring_cap;

	return c && c < NF_RING ? c : NF_RING;
}

static void hull(struct nf_entry *x, uint64_t s, uint64_t e, enum unf_event ev)
{
	if (s < x->start)
		x->start = s;
	if (e > x->end)
		x->end = e;
	if (x->ev != ev) /* mixed: the strongest (over-invalidation is safe) */
		x->ev = UNF_UNMAP;
	x->merged++;
}

/* The last queued (not yet running) entry of @sub, or NULL. ring_lock. */
static struct nf_entry *last_queued(struct unf_sub *sub)
{
	NF_ASSERT_HELD(&nf.ring_lock);
	if (sub->ovf_set)
		return &sub->ovf;
	if (sub->has_last && sub->last_seq >= nf.ring_head)
		return &nf.ring[sub->last_seq % NF_RING];
	return NULL;
}

static void relay_queue(struct unf_sub *sub, uint64_t s, uint64_t e,
			enum unf_event ev)
{
	struct nf_entry *x;

	nf_lock(&nf.ring_lock);
	if (sub->ovf_set) { /* its later events follow it there */
		hull(&sub->ovf, s, e, ev);
		nf_stat_inc(&nf.st.coalesced);
	} else if (nf.ring_tail - nf.ring_head < ring_cap()) {
		x = &nf.ring[nf.ring_tail % NF_RING];
		*x = (struct nf_entry){ sub, s, e, ev, 0, 1 };
		sub->last_seq = nf.ring_tail++;
		sub->has_last = true;
		sub->inflight++;
		nf_stat_inc(&nf.st.relayed);
	} else if ((x = last_queued(sub))) {
		hull(x, s, e, ev);
		nf_stat_inc(&nf.st.coalesced);
	} else {
		/* Full of others' entries: the subscriber's own slot. */
		sub->ovf = (struct nf_entry){ sub, s, e, ev, 0, 1 };
		sub->ovf_set = true;
		sub->ovf_next = NULL;
		if (nf.ovf_last)
			nf.ovf_last->ovf_next = sub;
		else
			nf.ovf_list = sub;
		nf.ovf_last = sub;
		sub->inflight++;
		nf_stat_inc(&nf.st.coalesced);
	}
	nf.ring_kick = true;
	nf_unlock(&nf.ring_lock);
}

/* The drain that fenced a deferred @sub is over: release its reference
 * after the last finish it queued, or now if all of them ran. */
static void relay_unfence(struct unf_sub *sub)
{
	struct nf_entry *x;
	bool now = false;

	nf_lock(&nf.ring_lock);
	if ((x = last_queued(sub)))
		x->unfences++;
	else if (sub->running)
		sub->run_unfences++;
	else
		now = true;
	nf_unlock(&nf.ring_lock);
	if (now)
		fence_put(sub);
}

/* ------------------------------------------------------------------------ */
/* Relay thread                                                              */
/* ------------------------------------------------------------------------ */

static void *relay_main(void *arg)
{
	(void)arg;
	nf_lock(&nf.ring_lock);
	for (;;) {
		struct nf_entry x;
		struct unf_sub *sub;
		unsigned u;

		if (nf.ovf_list) {
			sub = nf.ovf_list;
			nf.ovf_list = sub->ovf_next;
			if (!nf.ovf_list)
				nf.ovf_last = NULL;
			x = sub->ovf;
			sub->ovf_set = false;
		} else if (nf.ring_head != nf.ring_tail) {
			x = nf.ring[nf.ring_head % NF_RING];
			nf.ring_head++;
			sub = x.sub;
		} else if (nf.relay_stop) {
			break;
		} else {
			nf_cond_wait(&nf.ring_cv, &nf.ring_lock);
			continue;
		}
		sub->running = true;
		nf_unlock(&nf.ring_lock);

		sub->ops->finish(sub->owner, x.start, x.end, x.ev, x.merged);

		/* Fence references released after this finish, including
		 * ones the monitor handed over while it ran. */
		u = x.unfences;
		for (;;) {
			nf_lock(&nf.ring_lock);
			u += sub->run_unfences;
			sub->run_unfences = 0;
			if (!u)
				break;
			nf_unlock(&nf.ring_lock);
			for (; u; u--)
				fence_put(sub);
		}
		sub->running = false;
		if (--sub->inflight == 0)
			pthread_cond_broadcast(&nf.drained_cv);
	}
	nf_unlock(&nf.ring_lock);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Monitor thread                                                            */
/* ------------------------------------------------------------------------ */

static void log_range(uint64_t s, uint64_t e)
{
	uint64_t i = atomic_fetch_add(&nf.log_claim, 1);
	struct nf_logent *l = &nf.log[i % NF_LOG];

	atomic_store(&l->start, s);
	atomic_store(&l->end, e);
	atomic_store(&nf.log_head, i + 1);
}

static void deliver(uint64_t s, uint64_t e, enum unf_event ev)
{
	struct unf_sub *sub;

	if (s >= e)
		return;
	NF_ASSERT_HELD(&nf.subs_lock);
	for (sub = nf.subs; sub; sub = sub->next) {
		if (sub->ops->begin)
			sub->ops->begin(sub->owner, s, e, ev);
		if (sub->flags & UNF_DEFERRED)
			relay_queue(sub, s, e, ev);
		else if (sub->ops->finish)
			sub->ops->finish(sub->owner, s, e, ev, 1);
	}
}

/* A REMAP's source and destination, to the subscribers that ask. */
static void moved(uint64_t from, uint64_t to, uint64_t len)
{
	struct unf_sub *sub;

	NF_ASSERT_HELD(&nf.subs_lock);
	for (sub = nf.subs; sub; sub = sub->next)
		if (sub->ops->moved)
			sub->ops->moved(sub->owner, from, to, len);
}

/* A write-protect fault can only come from someone else's protection (we
 * never set one); lift it so the faulting thread is not stuck. */
static void unblock_fault(uint64_t addr)
{
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
	struct uffdio_writeprotect wp = {
		.range = { .start = addr & ~(pg - 1), .len = pg },
		.mode = 0,
	};
	struct uffdio_range wake = wp.range;

	if (ioctl(nf.uffd, UFFDIO_WRITEPROTECT, &wp))
		ioctl(nf.uffd, UFFDIO_WAKE, &wake);
}

static void handle(const struct uffd_msg *m)
{
	switch (m->event) {
	case UFFD_EVENT_UNMAP:
		nf_stat_inc(&nf.st.unmap);
		deliver(m->arg.remove.start, m->arg.remove.end, UNF_UNMAP);
		break;
	case UFFD_EVENT_REMOVE:
		nf_stat_inc(&nf.st.remove);
		deliver(m->arg.remove.start, m->arg.remove.end, UNF_REMOVE);
		break;
	case UFFD_EVENT_REMAP:
		nf_stat_inc(&nf.st.remap);
		/* moved() ran already: report_moves() */
		deliver(m->arg.remap.from, m->arg.remap.from + m->arg.remap.len,
			UNF_REMAP);
		break;
	case UFFD_EVENT_PAGEFAULT:
		nf_stat_inc(&nf.st.other);
		unblock_fault(m->arg.pagefault.address);
		break;
	default:
		nf_stat_inc(&nf.st.other);
		break;
	}
}

/* One read of events: epoch odd around it, ranges logged before it turns
 * even. Returns the number of messages, 0 when none, -1 when broken. */
static ssize_t read_events(struct uffd_msg *msgs)
{
	ssize_t n;
	int err;
	size_t i;

	for (;;) {
		atomic_fetch_add(&nf.epoch, 1); /* odd */
		n = read(nf.uffd, msgs, MON_BATCH * sizeof(msgs[0]));
		err = errno;
		if (n > 0) {
			for (i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
				const struct uffd_msg *m = &msgs[i];

				if (m->event == UFFD_EVENT_UNMAP)
					log_range(m->arg.remove.start,
						  m->arg.remove.end);
				else if (m->event == UFFD_EVENT_REMAP) {
					log_range(m->arg.remap.from,
						  m->arg.remap.from +
							  m->arg.remap.len);
					atomic_fetch_add(&nf.moves_read, 1);
				}
			}
		}
		atomic_fetch_add(&nf.epoch, 1); /* even */
		if (n > 0)
			return n / (ssize_t)sizeof(msgs[0]);
		if (n < 0 && err == EINTR)
			continue;
		if (n < 0 && err == EAGAIN)
			return 0;
		return -1;
	}
}

void (*unf_test_hook_after_read)(void);

/* The moves of a read, reported before anything else of it is delivered
 * (see nf.moves_read): only moved() runs between the read and
 * moves_done, no driver code, so unf_barrier() never waits for a
 * driver. Each move is a read of its own in practice (the moving thread
 * waits for each of its events to be read before it sends the next), so
 * no earlier event of the same read is overtaken. */
static void report_moves(const struct uffd_msg *msgs, ssize_t n)
{
	uint64_t k = 0;
	ssize_t i;

	for (i = 0; i < n; i++) {
		const struct uffd_msg *m = &msgs[i];

		if (m->event != UFFD_EVENT_REMAP)
			continue;
		moved(m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
		k++;
	}
	if (k)
		atomic_fetch_add(&nf.moves_done, k);
}

/* Read and deliver what is queued until a read comes back short. Returns
 * false when our descriptor turned out not to be ours. */
static bool drain(void)
{
	struct uffd_msg msgs[MON_BATCH];
	struct unf_sub *sub;
	bool ok = true, any = false;
	ssize_t n, i;

	nf_lock(&nf.subs_lock);
	for (sub = nf.subs; sub; sub = sub->next)
		if (sub->flags & UNF_STRICT)
			fence_get(sub);
	for (;;) {
		/* Never read a descriptor number that is no longer ours:
		 * checked before each read, the next one of a drain after a
		 * full batch too (the application may have replaced it while
		 * the previous batch was delivered). */
		if (!nf_uffd_ok()) {
			ok = false;
			break;
		}
		n = read_events(msgs);
		if (n < 0) {
			mark_broken();
			ok = false;
		}
		if (n <= 0)
			break;
		any = true;
		if (unf_test_hook_after_read)
			unf_test_hook_after_read();
		report_moves(msgs, n);
		for (i = 0; i < n; i++)
			handle(&msgs[i]);
		if (n < MON_BATCH)
			break;
	}
	for (sub = nf.subs; sub; sub = sub->next) {
		if (!(sub->flags & UNF_STRICT))
			continue;
		if (sub->flags & UNF_DEFERRED)
			relay_unfence(sub);
		else
			fence_put(sub);
	}
	nf_unlock(&nf.subs_lock);
	if (any)
		nf_stat_inc(&nf.st.wakeups);
	/* Wake the relay only when something was queued for it: waking an
	 * idle relay for every event is a system call, and with the
	 * unmapping thread on the same CPU a context switch it waits
	 * behind (the 4 KiB one-CPU rows of the notify suite). */
	nf_lock(&nf.ring_lock);
	if (nf.ring_kick) {
		nf.ring_kick = false;
		pthread_cond_signal(&nf.ring_cv);
	}
	nf_unlock(&nf.ring_lock);
	return ok;
}

static bool fd_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void *mon_main(void *arg)
{
	struct pollfd pfd[2] = {
		{ .fd = nf.uffd, .events = POLLIN },
		{ .fd = nf.pipe[0], .events = POLLIN },
	};
	int r;

	(void)arg;
	atomic_store(&nf.mon_tid, (pid_t)syscall(SYS_gettid));
	while (!atomic_load(&nf.stop)) {
		r = poll(pfd, 2, MON_CHECK_MS);
		if (r < 0)
			continue; /* EINTR, or ENOMEM: try again */
		if (atomic_load(&nf.stop))
			break;
		if (r == 0) { /* idle: are our descriptors still ours? */
			if (!fds_ok())
				goto broken;
			continue;
		}
		/* closed (POLLNVAL), or the pipe's write end gone (POLLHUP)
		 * without a stop: not ours any more */
		if ((pfd[0].revents | pfd[1].revents) & (POLLNVAL | POLLERR) ||
		    (pfd[1].revents & POLLHUP))
			goto broken;
		if (pfd[1].revents & POLLIN) {
			if (!fds_ok())
				goto broken;
			continue; /* a stray wake-up: only stop writes here */
		}
		if (pfd[0].revents && !drain())
			goto broken;
	}
	/* Stopping: handle what is queued so nobody stays blocked. Events
	 * queued after this are released when the fd is closed. */
	if (nf_uffd_ok() && fd_readable(nf.uffd))
		drain();
	return NULL;
broken:
	mark_broken();
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Life cycle (life_lock held)                                               */
/* ------------------------------------------------------------------------ */

/*
 * Our threads' stacks. Why not glibc's: glibc madvise(MADV_DONTNEED)s a
 * thread's stack when the thread exits (to cache it), and munmaps it
 * later from whichever thread; if a region covers that stack (an implicit
 * region over the whole address space is watched whole mapping by whole
 * mapping), the exiting monitor would wait for an event only it can read.
 * A stack we map ourselves is never touched by glibc, sits between two
 * PROT_NONE guard pages (so the kernel never merges it into a neighbouring
 * mapping that a region may watch), and is unmapped only after the
 * userfaultfd is closed (nothing registered any more). Why 8 MiB: glibc's
 * default; deferred callbacks run the driver's code on the relay thread.
 */
#define NF_STACK_SIZE ((size_t)8 << 20)

static void *own_stack(size_t *len)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	char *p;

	*len = NF_STACK_SIZE + 2 * pg;
	p = mmap(NULL, *len, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (mprotect(p + pg, NF_STACK_SIZE, PROT_READ | PROT_WRITE)) {
		munmap(p, *len);
		return NULL;
	}
	return p;
}

static void free_stack(void **stack)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	if (*stack)
		munmap(*stack, NF_STACK_SIZE + 2 * pg);
	*stack = NULL;
}

/* Start @fn with every asynchronous signal blocked; synchronous ones (a
 * crash in an op) keep their default handling. */
static int start_thread(pthread_t *t, void *(*fn)(void *), const char *name,
			void **stack)
{
	pthread_attr_t attr;
	size_t len;
	static const int sync_sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL,
					 SIGTRAP, SIGSYS, SIGABRT };
	sigset_t all, old;
	size_t i;
	int r;

	sigfillset(&all);
	for (i = 0; i < sizeof(sync_sigs) / sizeof(sync_sigs[0]); i++)
		sigdelset(&all, sync_sigs[i]);
	*stack = own_stack(&len);
	if (!*stack)
		return -ENOMEM;
	if (pthread_attr_init(&attr)) {
		free_stack(stack);
		return -ENOMEM;
	}
	pthread_attr_setstack(&attr, (char *)*stack + sysconf(_SC_PAGESIZE),
			      NF_STACK_SIZE);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(t, &attr, fn, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (r) {
		free_stack(stack);
		return -EAGAIN; /* no thread, whatever the reason */
	}
	pthread_setname_np(*t, name);
	return 0;
}

static void stop_relay(void)
{
	nf_lock(&nf.ring_lock);
	nf.relay_stop = true;
	pthread_cond_broadcast(&nf.ring_cv);
	nf_unlock(&nf.ring_lock);
	pthread_join(nf.relay, NULL);
	nf.relay_stop = false;
}

static void close_all(void)
{
	close_ours(&nf.uffd, &nf.uffd_id);
	close_ours(&nf.pipe[0], &nf.pipe_id[0]);
	close_ours(&nf.pipe[1], &nf.pipe_id[1]);
}

static int nf_start(void)
{
	int r;

	NF_ASSERT_HELD(&nf.life_lock);
	r = uffd_open(&nf.features);
	if (r < 0)
		return r;
	nf.uffd = r;
	if (pipe2(nf.pipe, O_CLOEXEC | O_NONBLOCK)) {
		r = -errno;
		nf.pipe[0] = nf.pipe[1] = -1;
		close(nf.uffd);
		nf.uffd = -1;
		return r;
	}
	if ((r = uffd_fd_id(nf.uffd, &nf.uffd_id)) ||
	    (r = uffd_fd_id(nf.pipe[0], &nf.pipe_id[0])) ||
	    (r = uffd_fd_id(nf.pipe[1], &nf.pipe_id[1])))
		goto err_fds;
	/* Registration forbidden (seccomp): say so now, not at a watch. */
	r = uffd_register_probe(nf.uffd);
	if (r == -EPERM)
		goto err_fds;
	atomic_store(&nf.broken, 0);
	atomic_store(&nf.stop, false);
	nf.ring_head = nf.ring_tail = 0;
	r = start_thread(&nf.relay, relay_main, "uodp-relay", &nf.relay_stack);
	if (r)
		goto err_fds;
	r = start_thread(&nf.mon, mon_main, "uodp-monitor", &nf.mon_stack);
	if (r)
		goto err_relay;
	atomic_store(&nf.running, true);
	return 0;

err_relay:
	stop_relay();
err_fds:
	close(nf.uffd);
	close(nf.pipe[0]);
	close(nf.pipe[1]);
	nf.uffd = nf.pipe[0] = nf.pipe[1] = -1;
	free_stack(&nf.relay_stack); /* after the close: nothing registered */
	return r;
}

static void nf_stop(void)
{
	char one = 1;

	NF_ASSERT_HELD(&nf.life_lock);
	/* No new event for watched memory from here on. */
	nf_drop_all();
	atomic_store(&nf.stop, true);
	if (uffd_fd_is(nf.pipe[1], &nf.pipe_id[1]))
		while (write(nf.pipe[1], &one, 1) < 0 && errno == EINTR)
			;
	/* Not ours any more: the thread sees the flag within a second. */
	pthread_join(nf.mon, NULL);
	atomic_store(&nf.mon_tid, 0);
	stop_relay();
	/* Releases the kernel context: whatever is still registered to it
	 * is dropped and any thread waiting on a late event goes on. */
	close_all();
	/* Only now: with the userfaultfd closed, unmapping them sends no
	 * event (had a region covered them). */
	free_stack(&nf.mon_stack);
	free_stack(&nf.relay_stack);
	atomic_store(&nf.running, false);
	atomic_store(&nf.broken, 0);
}

/* ------------------------------------------------------------------------ */
/* Fork                                                                      */
/* ------------------------------------------------------------------------ */

/*
 * The child has no monitor (threads are not forked) and must not keep our
 * descriptors: a kept userfaultfd would keep the kernel context alive after
 * the parent closes it, and a parent thread unmapping memory still
 * registered there would wait for a reader that is gone.
 */
static void atfork_prepare(void)
{
	nf_lock(&nf.life_lock);
}

static void atfork_parent(void)
{
	nf_unlock(&nf.life_lock);
}

static void atfork_child(void)
{
	static const struct nf_lock init = NF_LOCK_INIT;
	uint64_t e;

	if (atomic_load(&nf.running))
		close_all();
	atomic_fetch_add(&nf.gen, 1);
	atomic_store(&nf.running, false);
	atomic_store(&nf.broken, 0);
	atomic_store(&nf.mon_tid, 0);
	nf.nsubs = 0;
	nf.subs = NULL;
	nf.relay_stop = false;
	nf.ring_head = nf.ring_tail = 0;
	nf.ovf_list = nf.ovf_last = NULL;
	memset(&nf.st, 0, sizeof(nf.st));
	/* The parent's monitor may have been between its two epoch bumps. */
	e = atomic_load(&nf.epoch);
	atomic_store(&nf.epoch, (e | 1) + 1);
	/* ... or between a move's read and its report. */
	atomic_store(&nf.moves_done, atomic_load(&nf.moves_read));
	nf_forget_all();
	/* Other threads of the parent may have held these. */
	nf.subs_lock = init;
	nf.watch_lock = init;
	nf.ring_lock = init;
	pthread_cond_init(&nf.ring_cv, NULL);
	pthread_cond_init(&nf.drained_cv, NULL);
	nf.life_lock = init; /* held by this thread in prepare */
	nf_depth = 0;	     /* every lock is free again */
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_install(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static bool ours(const struct unf_sub *sub)
{
	return sub &&
	       sub->gen == atomic_load_explicit(&nf.gen, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* API                                                                       */
/* ------------------------------------------------------------------------ */

int unf_subscribe(const struct unf_ops *ops, void *owner, unsigned flags,
		  struct unf_sub **out)
{
	struct unf_sub *sub;
	int r;

	if (!ops || !out ||
	    (flags & ~(UNF_STRICT | UNF_DEFERRED | UNF_FENCE_READS)) ||
	    ((flags & UNF_STRICT) && (!ops->fence || !ops->unfence)) ||
	    ((flags & UNF_DEFERRED) && !ops->finish) || /* the relay's call */
	    ((flags & UNF_FENCE_READS) &&
	     (flags & (UNF_STRICT | UNF_DEFERRED)) != UNF_STRICT))
		return -EINVAL;
	pthread_once(&atfork_once, atfork_install);
	nf_icpt_attach();
	sub = calloc(1, sizeof(*sub));
	if (!sub)
		return -ENOMEM;
	sub->ops = ops;
	sub->owner = owner;
	sub->flags = flags;
	pthread_mutex_init(&sub->fence_lock, NULL);

	nf_lock(&nf.life_lock);
	sub->gen = atomic_load(&nf.gen);
	if (!atomic_load(&nf.running)) {
		r = nf_start();
		if (r)
			goto err;
	} else if (atomic_load(&nf.broken)) {
		r = atomic_load(&nf.broken);
		goto err;
	}
	nf.nsubs++;
	nf_lock(&nf.subs_lock);
	sub->next = nf.subs;
	nf.subs = sub;
	nf_unlock(&nf.subs_lock);
	nf_unlock(&nf.life_lock);
	*out = sub;
	return 0;
err:
	nf_unlock(&nf.life_lock);
	pthread_mutex_destroy(&sub->fence_lock);
	free(sub);
	return r;
}

void unf_detach(struct unf_sub *sub)
{
	struct unf_sub **pp;

	if (!sub || !ours(sub) || atomic_exchange(&sub->detached, true))
		return; /* a parent's, in a forked child: only memory */
	/* No event reaches it after this (the monitor holds subs_lock for
	 * a whole drain). */
	nf_lock(&nf.subs_lock);
	for (pp = &nf.subs; *pp; pp = &(*pp)->next) {
		if (*pp == sub) {
			*pp = sub->next;
			break;
		}
	}
	nf_unlock(&nf.subs_lock);

	/* Its queued finishes run (and unfences), then it is ours alone. No
	 * notifier lock is held while waiting. */
	nf_lock(&nf.ring_lock);
	while (sub->inflight)
		nf_cond_wait(&nf.drained_cv, &nf.ring_lock);
	nf_unlock(&nf.ring_lock);

	nf_drop_sub(sub);

	nf_lock(&nf.life_lock);
	if (--nf.nsubs == 0 && atomic_load(&nf.running))
		nf_stop();
	nf_unlock(&nf.life_lock);
}

void unf_free(struct unf_sub *sub)
{
	if (!sub)
		return;
	pthread_mutex_destroy(&sub->fence_lock);
	free(sub);
}

void unf_unsubscribe(struct unf_sub *sub)
{
	unf_detach(sub);
	unf_free(sub);
}

static int watch(struct unf_sub *sub, uint64_t start, uint64_t end, bool lazy)
{
	if (!ours(sub))
		return -ECHILD;
	if (atomic_load(&sub->detached))
		return -ENODEV;
	if (start >= end)
		return -EINVAL;
	return nf_watch(sub, start, end, lazy);
}

int unf_watch(struct unf_sub *sub, uint64_t start, uint64_t end)
{
	return watch(sub, start, end, false);
}

int unf_watch_lazy(struct unf_sub *sub, uint64_t start, uint64_t end)
{
	return watch(sub, start, end, true);
}

void unf_unwatch(struct unf_sub *sub, uint64_t start, uint64_t end)
{
	if (!ours(sub) || start >= end || atomic_load(&sub->detached))
		return;
	nf_unwatch(sub, start, end);
}

int unf_prepare(struct unf_sub *sub, uint64_t start, uint64_t end,
		bool *settled)
{
	uint64_t e = atomic_load(&nf.epoch);
	int r, cs;

	if (settled)
		*settled = false;
	if (!ours(sub))
		return -ECHILD;
	if (e == atomic_load(&nf.all_ok))
		return 0;
	if (start >= end || atomic_load(&sub->detached))
		return 0;
	/* The slow path reads /proc/self/maps and may wait on the monitor:
	 * cancellation points, not to be acted on inside the library. The
	 * fast path above reaches none, and a fault through it pays no pair
	 * (uodp_umem_map_and_lock() leaves this to us). */
	cs = nocancel_begin();
	r = nf_prepare_slow(start, end, settled);
	nocancel_end(cs);
	return r;
}

void unf_get_stats(struct unf_stats *out)
{
	out->unmap = atomic_load(&nf.st.unmap);
	out->remove = atomic_load(&nf.st.remove);
	out->remap = atomic_load(&nf.st.remap);
	out->other = atomic_load(&nf.st.other);
	out->wakeups = atomic_load(&nf.st.wakeups);
	out->fences = atomic_load(&nf.st.fences);
	out->slow_prepares = atomic_load(&nf.st.slow_prepares);
	out->relayed = atomic_load(&nf.st.relayed);
	out->coalesced = atomic_load(&nf.st.coalesced);
	out->registrations = atomic_load(&nf.st.registrations);
	out->unsure_registrations = atomic_load(&nf.st.unsure_registrations);
	out->subscribers = atomic_load(&nf.nsubs);
}

pid_t unf_monitor_tid(void)
{
	return atomic_load(&nf.mon_tid);
}

bool unf_pending(void)
{
	int fd = nf.uffd;

	/* No lock: at worst a racing stop makes this poll a closed or
	 * reused number, which reads nothing. */
	return atomic_load(&nf.running) && !atomic_load(&nf.broken) &&
	       fd >= 0 && fd_readable(fd);
}

void (*unf_test_hook_barrier_wait)(void);

void unf_barrier(void)
{
	uint64_t want;
	bool hooked = false;

	if (!atomic_load(&nf.running))
		return;
	/* A read in progress may hold a move: wait for its epoch to turn
	 * even (moves_read counted by then), then for the report. Both
	 * waits are short and never on subscriber code (nf.moves_read). */
	while (atomic_load(&nf.epoch) & 1)
		sched_yield();
	want = atomic_load(&nf.moves_read);
	while (atomic_load(&nf.moves_done) < want) {
		if (!hooked && unf_test_hook_barrier_wait) {
			hooked = true;
			unf_test_hook_barrier_wait();
		}
		sched_yield();
	}
}

/* Test hook: our descriptor numbers (-1 when not running). */
void unf_test_fds(int *uffd, int *rd, int *wr)
{
	nf_lock(&nf.life_lock);
	*uffd = nf.uffd;
	*rd = nf.pipe[0];
	*wr = nf.pipe[1];
	nf_unlock(&nf.life_lock);
}

/* ------------------------------------------------------------------------ */
/* In-thread delivery (intercept.c, nf_icpt.h)                               */
/* ------------------------------------------------------------------------ */

bool nf_trylock(struct nf_lock *l)
{
	if (pthread_mutex_trylock(&l->m))
		return false;
	nf_depth++;
	atomic_store_explicit(&l->owner, (unsigned long)pthread_self(),
			      memory_order_relaxed);
	return true;
}

static int map_end_fn(const struct uffd_map *m, void *arg)
{
	*(uint64_t *)arg = m->end;
	return 1;
}

int unf_map_end(uint64_t addr, uint64_t *end)
{
	uint64_t e = 0;
	int r, cs;

	/* open() and read() are cancellation points, and callers hold
	 * locks (the hooks' in-thread delivery runs on an application
	 * thread). */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cs);
	r = uffd_for_each_map(addr, addr + 1, map_end_fn, &e);
	pthread_setcancelstate(cs, NULL);
	if (r < 0)
		return r;
	if (!e)
		return -ENOENT;
	*end = e;
	return 0;
}

/*
 * The same steps as drain() for a kernel event, on the calling thread:
 * strict subscribers fenced, each event to every subscriber (begin, then
 * finish or a finish queued to the relay), unfence after the last finish.
 * No event is read, so the epoch and the unmap log are not touched: the
 * caller (intercept.c) has already cut the pieces it took out.
 */
/* Does an in-thread delivery fence @sub? (UNF_FENCE_READS: not needed) */
static bool local_fence(const struct unf_sub *sub)
{
	return (sub->flags & (UNF_STRICT | UNF_FENCE_READS)) == UNF_STRICT;
}

void nf_deliver_local(const uint64_t *start, const uint64_t *end,
		      const enum unf_event *ev, unsigned n, bool moves)
{
	struct unf_sub *sub;
	bool relay = false;
	unsigned i;

	nf_lock(&nf.subs_lock);
	for (sub = nf.subs; sub; sub = sub->next) {
		if (local_fence(sub))
			fence_get(sub);
		if (sub->flags & UNF_DEFERRED)
			relay = true;
	}
	/* A move in the calling thread (the hooks' mremap): the source's
	 * REMAP, then the destination's UNMAP, as the kernel would report
	 * it (the destination first, see unf_ops.moved). What moved is the
	 * shorter of the two: a move that shrinks unmaps the source's tail
	 * (the kernel's REMAP has the new length), one that grows maps a new
	 * tail (the old length). A call that failed moved nothing (@moves
	 * false): its events are still delivered, a move is not reported
	 * (the kernel sends no REMAP either). */
	for (i = 0; moves && i + 1 < n; i++)
		if (ev[i] == UNF_REMAP && ev[i + 1] == UNF_UNMAP) {
			uint64_t len = end[i] - start[i];

			if (end[i + 1] - start[i + 1] < len)
				len = end[i + 1] - start[i + 1];
			atomic_fetch_add(&nf.moves_read, 1);
			moved(start[i], start[i + 1], len);
			atomic_fetch_add(&nf.moves_done, 1);
		}
	for (i = 0; i < n; i++)
		deliver(start[i], end[i], ev[i]);
	for (sub = nf.subs; sub; sub = sub->next) {
		if (!local_fence(sub))
			continue;
		if (sub->flags & UNF_DEFERRED)
			relay_unfence(sub);
		else
			fence_put(sub);
	}
	nf_unlock(&nf.subs_lock);
	/* Only a deferred subscriber has work queued (a wake-up of an idle
	 * relay is a system call, and on one CPU a context switch). */
	if (relay) {
		nf_lock(&nf.ring_lock);
		nf.ring_kick = false;
		pthread_cond_signal(&nf.ring_cv);
		nf_unlock(&nf.ring_lock);
	}
}

/* SPDX-License-Identifier: MIT */
/*
 * intercept.c - the notifier's side of the in-thread fast path for
 * munmap / mremap / madvise / mmap(MAP_FIXED) / shmdt (the contract and
 * why: intercept.h; the wrappers: hooks/uodp_hooks.c).
 *
 * before(): with the watch lock (tried, never waited for: the calling
 * thread may be inside an allocator whose lock a thread in unf_watch()
 * waits for while holding the watch lock), the registered pieces of the
 * range are found; for an unmap they leave the pieces (so a mapping made
 * there later is registered again by watch / prepare), and they are
 * unregistered, so the kernel sends no event for them and does not make
 * the thread wait. after(): madvise's pieces are registered again (the
 * mapping stays), then the event is delivered to every subscriber from
 * this thread (nf_deliver_local: the monitor's steps).
 *
 * Why no event is lost:
 *  - a part of the range still registered (not in the pieces, a piece
 *    re-registered by a concurrent watch / prepare) sends its kernel event
 *    as before; the monitor delivers it;
 *  - what was unregistered is covered by the delivery, which comes after
 *    the real call (after the pages are gone, as the kernel's UNMAP); after
 *    a refused call, over what it unmapped, the rest registered again
 *    (failed()); a fault in between installs an entry the
 *    delivery drops (the engine's periods make a fault that overlaps it
 *    retry);
 *  - the pieces are cut before the real call, under the watch lock, so
 *    unf_prepare() no longer takes its one-compare fast path over the
 *    range: a fault there re-registers first. madvise keeps its pieces and
 *    registers them again; if that fails the pieces are marked dirty
 *    (forgotten at the next sync, re-registered on demand).
 * What is weaker than the kernel path: another thread that unmaps the same
 * range with a raw system call while this one is between before() and
 * after() is not made to wait (its event is the delivery of this thread,
 * which comes a little later). Two threads unmapping the same memory at
 * once is itself a use-after-free race of the application.
 */
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "lib/lock.h" /* nocancel_begin() */
#include "notifier/intercept.h"
#include "notifier/nf_icpt.h"

enum {
	ST_NONE,
	ST_FAST,
	ST_SHM,
	ST_SILENT
};

/* Counters of the paths that hold the watch lock: plain, under it (an
 * atomic add is a locked instruction, for nothing while the lock is
 * held). */
static struct {
	uint64_t fast, passed, toomany, rereg, events;
} ist_l;
/* Counters of the paths without the lock (busy, shm, shmat's, a failure
 * that could not take it). */
static struct {
	_Atomic uint64_t fast, busy, dirty, shm, events;
	_Atomic int64_t events_adj; /* a failed call's change to events */
} ist;

static void inc(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* Why 4 tries with a yield between: the watch lock is held for short
 * lookups by other fast paths (a few microseconds); a holder that reads
 * /proc/self/maps or allocates takes longer, and then the kernel path is
 * cheaper than waiting (and waiting could deadlock, see above). */
static bool watch_trylock(void)
{
	int i;

	for (i = 0; i < 4; i++) {
		if (nf_trylock(&nf.watch_lock))
			return true;
		sched_yield();
	}
	return false;
}

/*
 * Is nf.uffd still our userfaultfd? The identity check (fstat + fcntl) costs
 * two system calls, a third of a 4 KiB munmap; it runs at most once per
 * tick of the coarse clock (4 ms at HZ=250) and the answer is reused
 * within it, by before() and by madvise's re-registration alike. The
 * monitor checks at every read and every idle second; a descriptor closed
 * and reopened by the application as another userfaultfd within one tick
 * is the window left. Watch lock held.
 */
static _Atomic int64_t fd_checked_tick = -1;

static bool fd_ok(void)
{
	struct timespec t;
	int64_t tick;

	if (clock_gettime(CLOCK_MONOTONIC_COARSE, &t))
		return nf_uffd_ok();
	tick = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
	if (atomic_load(&fd_checked_tick) == tick)
		return !atomic_load(&nf.broken);
	if (!nf_uffd_ok())
		return false;
	atomic_store(&fd_checked_tick, tick);
	return true;
}

/* The calling thread is inside the notifier (an op running on the monitor
 * or in a delivery of ours calls munmap): never re-enter. */
static bool inside(void)
{
	return nf_depth != 0;
}

struct shm_ext {
	uint64_t at, end;
};

static int shm_walk(const struct uffd_map *m, void *arg)
{
	struct shm_ext *x = arg;

	if (!m->sysv || m->start != (x->end ? x->end : x->at))
		return 1;
	x->end = m->end;
	return 0;
}

/* The end of the SysV attachment at @at (its mappings are contiguous,
 * several when mprotect split them), 0 when none is there. */
static uint64_t shm_extent(uint64_t at)
{
	struct shm_ext x = { at, 0 };

	uffd_for_each_map(at, UINT64_MAX, shm_walk, &x);
	return x.end;
}

static int before(struct uodp_icpt *ic)
{
	struct nf_piece tmp[UODP_ICPT_MAXP];
	bool cut = !(ic->flags & UODP_ICPT_KEEP);
	size_t n = 0, i;
	int k;

	ic->np = 0;
	ic->state = ST_NONE;
	if (!atomic_load(&nf.running) || atomic_load(&nf.broken) || !ic->nr ||
	    ic->nr > UODP_ICPT_MAXR || inside())
		return 0;
	if (ic->flags & UODP_ICPT_SHM) {
		/* shmdt sends no kernel event: deliver one if anyone listens */
		uint64_t end;

		if (!atomic_load(&nf.nsubs))
			return 0;
		end = shm_extent(ic->r[0].start);
		if (!end)
			return 0;
		ic->r[0].end = end;
		ic->r[0].ev = UNF_UNMAP;
		ic->nr = 1;
		ic->state = ST_SHM;
		return 1;
	}
	if (ic->flags & UODP_ICPT_SILENT) {
		/* No lock tried, no piece claimed: there is nothing to keep
		 * from the kernel (it sends nothing), and a back-out would
		 * lose the event. */
		if (!atomic_load(&nf.nsubs) || ic->nr != 1)
			return 0;
		ic->r[0].ev = UNF_UNMAP;
		ic->state = ST_SILENT;
		return 1;
	}
	if (!watch_trylock()) {
		inc(&ist.busy);
		return 0;
	}
	if (!atomic_load(&nf.running) || atomic_load(&nf.broken))
		goto pass;
	for (i = 0; i < ic->nr; i++) {
		k = nf_icpt_claim(ic->r[i].start, ic->r[i].end, tmp + n,
				  UODP_ICPT_MAXP - n, cut);
		if (k < 0) {
			/* Ranges already cut stay registered: their kernel
			 * events come; the pieces are re-made on demand. */
			ist_l.toomany++;
			nf_unlock(&nf.watch_lock);
			return 0;
		}
		n += (size_t)k;
	}
	if (!n || !fd_ok()) /* nothing of ours, or not our fd */
		goto pass;
	for (i = 0; i < n; i++) {
		/* A failure leaves the range registered: its event comes. */
		uffd_unregister(nf.uffd, tmp[i].start, tmp[i].end);
		ic->p[i].start = tmp[i].start;
		ic->p[i].end = tmp[i].end;
	}
	ic->np = (unsigned)n;
	ic->state = ST_FAST;
	/* Counted here, under the lock (a madvise sent back to the kernel
	 * and a refused call correct it, see after()). */
	ist_l.fast++;
	ist_l.events += ic->nr;
	nf_unlock(&nf.watch_lock);
	return 1;
pass:
	ist_l.passed++;
	nf_unlock(&nf.watch_lock);
	return 0;
}

/* madvise: the mapping stays; register again what we took out, where it
 * is still a piece of a record (a record dropped meanwhile is not
 * revived). True when that is done: what stays watched is registered
 * again (the kernel reports it). */
static bool restore(struct uodp_icpt *ic, bool ok)
{
	bool bad = false;
	unsigned i;

	if (!watch_trylock()) {
		nf_icpt_mark_dirty();
		inc(&ist.dirty);
		return false;
	}
	if (!atomic_load(&nf.running) || atomic_load(&nf.broken) || !fd_ok()) {
		nf_unlock(&nf.watch_lock);
		return false;
	}
	for (i = 0; i < ic->np; i++) {
		if (!nf_icpt_covered(ic->p[i].start, ic->p[i].end))
			continue;
		nf_stat_inc(&nf.st.registrations);
		if (uffd_register(nf.uffd, ic->p[i].start, ic->p[i].end))
			bad = true;
		else
			ist_l.rereg++;
	}
	if (!bad && !ok) { /* sent back to the kernel: not delivered here */
		ist_l.fast--;
		ist_l.events -= ic->nr;
	}
	nf_unlock(&nf.watch_lock);
	if (bad) { /* changed under us: forget the pieces, re-made later */
		nf_icpt_mark_dirty();
		inc(&ist.dirty);
	}
	return !bad;
}

/*
 * An unmap, move or MAP_FIXED that the kernel refused (munmap's ENOMEM at
 * vm.max_map_count, EINVAL, EBADF...). before() took its pieces out of the
 * userfaultfd, but the call changed nothing, or only part: mmap(MAP_FIXED)
 * and mremap(MREMAP_FIXED) may fail after unmapping what they replace,
 * mremap after cutting a shrunk source's tail. A delivery over the whole
 * range would drop the translations of memory still mapped, and unpin a
 * UODP_CTX_PIN context's pages under its device (which may hold their
 * frames and have no invalidate callback at all).
 *
 * The rule, as the kernel path: what the call removed is reported, what it
 * left mapped is not. The maps are read (this path only: a failure is
 * rare); each part of a piece still mapped is registered again (the
 * kernel reports what happens to it from now on), each hole is delivered
 * as an UNMAP. The mapped parts that cannot be registered again (the
 * watch lock is busy, the registration fails) and whatever the maps could
 * not tell (unreadable: EMFILE...) are delivered too, but as a REMOVE:
 * nothing is lost, and the memory may still be mapped, so a pinning
 * subscriber must drop its pins with munlock() (an UNMAP is gone to the
 * engine: no munlock, and pages still mapped stayed locked for good,
 * test_failed_unreadable_unlocks).
 * Only what a record still holds is registered again: a record unwatched
 * between before() and after() left nothing to register for (a
 * registration nobody knows of makes its munmaps wait for the monitor;
 * test_failed_unwatched_not_registered), and its memory, unchanged, gets
 * no event; a part only partly inside records (they changed meanwhile) is
 * delivered as a REMOVE instead.
 * Another thread that unmaps the same memory meanwhile, and maps something
 * else there before the maps are read, is a use-after-free race of the
 * application (see the top of this file); its unmap then goes unreported.
 */
#define FAIL_MAX (2 * UODP_ICPT_MAXP)

void (*unf_test_hook_icpt_failed)(void);

struct fail_walk {
	uint64_t at, end; /* the piece's part not walked yet */
	bool reg;	  /* may register (watch lock held, fd ours) */
	unsigned n, cap;  /* ranges, and how many this piece may reach */
	uint64_t s[FAIL_MAX], e[FAIL_MAX];
	enum unf_event ev[FAIL_MAX]; /* UNMAP: a hole; REMOVE: may be mapped */
};

static void fail_add(struct fail_walk *w, uint64_t s, uint64_t e,
		     enum unf_event ev)
{
	if (s >= e)
		return;
	if (w->n && w->e[w->n - 1] == s && w->ev[w->n - 1] == ev) {
		w->e[w->n - 1] = e; /* contiguous, same kind: one range */
		return;
	}
	if (w->n == w->cap) {
		/* full: the last one, this piece's (failed() keeps a range
		 * free for each piece), grows to the piece's end, over
		 * mapped memory perhaps */
		w->e[w->n - 1] = w->end;
		w->ev[w->n - 1] = UNF_REMOVE;
		return;
	}
	w->s[w->n] = s;
	w->e[w->n] = e;
	w->ev[w->n] = ev;
	w->n++;
}

static int fail_map(const struct uffd_map *m, void *arg)
{
	struct fail_walk *w = arg;
	uint64_t s = m->start > w->at ? m->start : w->at;
	uint64_t e = m->end < w->end ? m->end : w->end;
	int rec;

	if (s >= e)
		return 0;
	fail_add(w, w->at, s, UNF_UNMAP); /* a hole before it */
	if (!w->reg) {
		fail_add(w, s, e, UNF_REMOVE); /* mapped, not watched again */
	} else if ((rec = nf_icpt_recorded(s, e)) == 0) {
		/* Its record went (an unwatch between before() and now): a
		 * registration here would be nobody's, its munmaps made to
		 * wait for the monitor and reported for nothing. Nothing
		 * happened to this memory: nothing to deliver either. */
	} else if (rec == 1) {
		/* Records changed around it: not registered here (a record
		 * made since registered its mappings, or prepare will);
		 * its translations are dropped, as for a failure. */
		fail_add(w, s, e, UNF_REMOVE);
	} else {
		nf_stat_inc(&nf.st.registrations); /* an ioctl made */
		if (uffd_register(nf.uffd, s, e))
			fail_add(w, s, e, UNF_REMOVE);
		else
			ist_l.rereg++; /* w->reg: watch lock held */
	}
	w->at = e;
	return w->at >= w->end;
}

/* The ranges of @ic's pieces to deliver after a refused call, into @w. */
static void failed(struct uodp_icpt *ic, struct fail_walk *w)
{
	bool locked = watch_trylock();
	unsigned i;

	w->n = 0;
	w->reg = locked && atomic_load(&nf.running) &&
		 !atomic_load(&nf.broken) && fd_ok();
	for (i = 0; i < ic->np; i++) {
		w->at = ic->p[i].start;
		w->end = ic->p[i].end;
		/* One range left for each piece after this one, so that a
		 * full list grows only a range of the piece walked: grown
		 * from an earlier piece to this one's end, it covered the
		 * memory between the two, outside the call (an
		 * MREMAP_FIXED's source and destination) or reversed
		 * (test_failed_mremap_overflow). np <= UODP_ICPT_MAXP. */
		w->cap = FAIL_MAX - (ic->np - 1 - i);
		if (uffd_for_each_map(w->at, w->end, fail_map, w) < 0)
			fail_add(w, w->at, w->end, UNF_REMOVE); /* unreadable */
		else
			fail_add(w, w->at, w->end,
				 UNF_UNMAP); /* a hole at the end */
	}
	if (locked) {
		ist_l.events += w->n;
		ist_l.events -= ic->nr;
		nf_unlock(&nf.watch_lock);
	} else {
		atomic_fetch_add(&ist.events_adj,
				 (int64_t)w->n - (int64_t)ic->nr);
	}
	if (!w->reg)
		inc(&ist.dirty);
}

static void after(struct uodp_icpt *ic, int ok)
{
	uint64_t s[UODP_ICPT_MAXR], e[UODP_ICPT_MAXR];
	enum unf_event ev[UODP_ICPT_MAXR];
	unsigned i;

	if (ic->state == ST_NONE)
		return;
	if (ic->state == ST_SHM) {
		if (!ok) /* nothing was detached */
			return;
		inc(&ist.shm);
		inc(&ist.events);
	} else if (ic->state == ST_SILENT) {
		/* The replaced mappings' registration went with them: the
		 * pieces covering them are forgotten (re-made on demand),
		 * and the event covers the whole new attachment. */
		uint64_t end = ok ? shm_extent(ic->r[0].start) : 0;

		if (end > ic->r[0].end)
			ic->r[0].end = end;
		nf_icpt_mark_dirty();
		inc(&ist.fast);
		inc(&ist.events);
	} else if (!ok && !(ic->flags & UODP_ICPT_KEEP)) {
		struct fail_walk w;

		if (unf_test_hook_icpt_failed)
			unf_test_hook_icpt_failed();
		failed(ic, &w);
		ic->state = ST_NONE;
		if (w.n)
			nf_deliver_local(w.s, w.e, w.ev, w.n, false);
		return;
	} else if (ic->flags & UODP_ICPT_KEEP) {
		/* A failed madvise may have discarded part of the range (the
		 * mappings before the one it refused): once registered again,
		 * the call is made once more by the hooks and the kernel
		 * reports what it discards (UODP_ICPT_RETRY). */
		if (restore(ic, ok) && !ok) {
			ic->flags |= UODP_ICPT_RETRY;
			ic->state = ST_NONE;
			return;
		}
	}
	for (i = 0; i < ic->nr; i++) {
		s[i] = ic->r[i].start;
		e[i] = ic->r[i].end;
		ev[i] = (enum unf_event)ic->r[i].ev;
	}
	/* The call succeeded, or is shmat's (SILENT: see intercept.h). */
	nf_deliver_local(s, e, ev, ic->nr, ok);
	ic->state = ST_NONE;
}

/*
 * Cancellation is disabled where a half can reach a cancellation point
 * (after(), and shmdt's before()), as it is on the monitor
 * thread (never cancelled): the wrapped calls are no cancellation points
 * and neither is any uodp call (lib/lock.h), but this work reaches some
 * (the maps read of shmat and shmdt, the subscribers' fences and
 * callbacks, which may wait on a condition variable) on an application
 * thread that may have a cancellation pending. Cancelled there, it would
 * die holding subs_lock and a fence, or, after shmat(SHM_REMAP), before
 * delivering the event the kernel never sends (test_cancel_pending).
 */
static int icpt_before(struct uodp_icpt *ic)
{
	int cs, r;

	/* Only shmdt's half reaches a cancellation point (the maps read);
	 * the others try a lock, yield and make ioctl / fstat / fcntl(F_GETFL)
	 * calls, none of which is one (two atomic exchanges saved). */
	if (!(ic->flags & UODP_ICPT_SHM))
		return before(ic);
	cs = nocancel_begin();
	r = before(ic);
	nocancel_end(cs);
	return r;
}

static void icpt_after(struct uodp_icpt *ic, int ok)
{
	int cs;

	if (ic->state == ST_NONE)
		return;
	cs = nocancel_begin();
	after(ic, ok);
	nocancel_end(cs);
}

static void icpt_stats(struct uodp_icpt_stats *out)
{
	nf_lock(&nf.watch_lock); /* ist_l */
	out->fast = ist_l.fast + atomic_load(&ist.fast);
	out->passed = ist_l.passed;
	out->toomany = ist_l.toomany;
	out->rereg = ist_l.rereg;
	out->events = ist_l.events + atomic_load(&ist.events) +
		      (uint64_t)atomic_load(&ist.events_adj);
	nf_unlock(&nf.watch_lock);
	out->busy = atomic_load(&ist.busy);
	out->dirty = atomic_load(&ist.dirty);
	out->shm = atomic_load(&ist.shm);
}

static const struct uodp_icpt_ops icpt_ops = {
	.abi = UODP_ICPT_ABI,
	.size = sizeof(struct uodp_icpt_ops),
	.before = icpt_before,
	.after = icpt_after,
	.stats = icpt_stats,
	.filter = nf_filter,
	.filter_bits = NF_FILTER_BITS,
	.filter_shift = NF_FILTER_SHIFT,
};

static pthread_once_t attach_once = PTHREAD_ONCE_INIT;
static _Atomic bool attached;

static void attach(void)
{
	void *p = dlsym(RTLD_DEFAULT, UODP_HOOKS_ATTACH);
	uodp_hooks_attach_fn *fn;

	if (!p)
		return;
	memcpy(&fn, &p, sizeof(fn)); /* object to function pointer */
	fn(&icpt_ops);
	atomic_store(&attached, true);
}

void nf_icpt_attach(void)
{
	pthread_once(&attach_once, attach);
}

/* For tests and tools (not exported from the shared library). */
void unf_intercept_stats(struct uodp_icpt_stats *out);
bool unf_intercept_attached(void);

void unf_intercept_stats(struct uodp_icpt_stats *out)
{
	icpt_stats(out);
}

bool unf_intercept_attached(void)
{
	return atomic_load(&attached);
}

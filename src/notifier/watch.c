/* SPDX-License-Identifier: MIT */
/*
 * watch.c - the process's watched mappings: which address stretches our
 * userfaultfd has registered, who asked for them, and which parts are known
 * to be still mapped and registered.
 *
 * A record ("dom") is a stretch [start, end) made of WHOLE mappings (as
 * they were when registered) plus the ranges watched inside it. Records
 * are disjoint and kept in an interval tree under nf.watch_lock. A watch()
 * range always lies inside one record: a range over several mappings, or
 * a mapping overlapping an existing record, makes the records merge. So a
 * record holds a count of the watch() calls inside it (and, per
 * subscriber, how many are whose, to drop a subscriber's watches), never a
 * count per address: 10^6 disjoint regions inside one mapping are one
 * record with refs = 10^6, registered once, and no mapping is ever split
 * by registration (we register whole mappings only).
 *
 * Pieces: the parts of a record known to be mapped, without a hole, and
 * registered. A watch() of a range inside a piece is a counter increment
 * (no system call). Mappings change behind our back; the kernel tells us
 * (UNMAP, REMAP) and the monitor thread logs those ranges (nf.log, fixed
 * size, no allocation). Before using pieces, the log is applied: every
 * piece loses what was unmapped. Whatever is mapped there later (a hole
 * filled, MAP_FIXED over) is registered by the next watch() or prepare()
 * that finds its range outside the pieces.
 *
 * The protocol with the monitor thread (it never takes watch_lock): it
 * makes nf.epoch odd before each read() of events and even after having
 * logged the ranges that read returned. The read is what lets the
 * unmapping thread return, so once munmap() has returned, either the epoch
 * is odd (we wait for the read to end: it never blocks; the in-thread
 * fast path does not, see sync_log) or its range is in the log below
 * log_head. unf_prepare()'s fast path is one compare: while
 * every record is whole (its single piece covers it) and no event was read
 * since (all_ok == epoch), nothing can be unregistered.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "notifier/nf.h"
#include "notifier/nf_icpt.h"

/* Set on a thread in the intercept fast path (intercept.c): a piece that
 * would need a larger array is dropped instead (re-registered on demand),
 * because that thread may be inside an allocator. */
static _Thread_local bool cut_noalloc
	__attribute__((tls_model("initial-exec")));
/* Pieces may claim registrations the kernel no longer has: see
 * nf_icpt_mark_dirty(). */
static _Atomic bool pieces_dirty;
/* Unmapped ranges of intercepted calls not yet cut from the pieces (the
 * cut may need memory, which that thread must not allocate); applied by
 * the next sync of a thread that may. Under watch_lock. Why 64: a burst of
 * unmaps between two faults; beyond it they are cut at once, dropping the
 * smaller part of a piece that would need a larger array. */
#define NF_PEND 64
static struct nf_piece pend[NF_PEND];
static unsigned npend;

/*
 * The records' filter, for the hooks' quick check (intercept.h): one bit
 * per 2 MiB granule of address space, hashed into NF_FILTER_BITS; a set bit
 * means "a record may be there". Bits are set when a record is made and
 * rebuilt when one goes, under watch_lock; readers take no lock. A bit
 * that reads 0 for a record being made only sends that call the kernel
 * path (and for shmat, which the kernel does not report, there is nothing
 * of the record's yet: its registration is verified after, see
 * verify_registered()). A record that stays must never read 0: for shmat
 * the filter's "no" is final, so the rebuild computes the new words aside
 * and stores each once (a bit set before and after is set throughout).
 * Why 2 MiB and 4096 bits: a granule of one page table, and 512 bytes, so
 * that 8 GiB of scattered watched memory still leaves most bits clear.
 */
_Atomic uint64_t nf_filter[NF_FILTER_BITS / 64];

/* Set the bits of [s, e) in @f (nf_filter or a rebuild's copy). */
static void filter_set(_Atomic uint64_t *f, uint64_t s, uint64_t e)
{
	uint64_t g, last = (e - 1) >> NF_FILTER_SHIFT;

	if (last - (s >> NF_FILTER_SHIFT) >= NF_FILTER_BITS) {
		for (g = 0; g < NF_FILTER_BITS / 64; g++)
			atomic_store(&f[g], ~0ull);
		return;
	}
	for (g = s >> NF_FILTER_SHIFT; g <= last; g++) {
		uint64_t b = g % NF_FILTER_BITS;

		atomic_fetch_or(&f[b / 64], 1ull << (b % 64));
	}
}

void nf_filter_add(uint64_t s, uint64_t e)
{
	filter_set(nf_filter, s, e);
}

void (*unf_test_hook_filter_rebuild)(void);

/* Set again from the records (one went away): computed aside, then each
 * word stored once (see above). */
static void filter_rebuild(void)
{
	_Atomic uint64_t f[NF_FILTER_BITS / 64];
	struct itree_node *n;
	size_t i;

	NF_ASSERT_HELD(&nf.watch_lock);
	for (i = 0; i < NF_FILTER_BITS / 64; i++)
		atomic_init(&f[i], 0);
	for (n = itree_iter_first(&nf.doms, 0, UINT64_MAX); n;
	     n = itree_iter_next(n, 0, UINT64_MAX))
		filter_set(f, n->start, n->last + 1);
	if (unf_test_hook_filter_rebuild)
		unf_test_hook_filter_rebuild();
	for (i = 0; i < NF_FILTER_BITS / 64; i++)
		atomic_store(&nf_filter[i], atomic_load(&f[i]));
}

struct nf_pair {
	struct unf_sub *sub;
	uint64_t n;
	struct nf_pair *next;
};

struct nf_dom {
	struct itree_node node;	 /* [start, last] */
	uint64_t refs;		 /* watch() calls inside */
	struct nf_pair *pairs;	 /* the same, per subscriber */
	struct nf_piece *pieces; /* sorted, disjoint, not adjacent */
	size_t npieces, cap;
	bool whole; /* one piece covering the record */
};

#define DOM(n) ((struct nf_dom *)(n))

static uint64_t dom_start(const struct nf_dom *d)
{
	return d->node.start;
}

static uint64_t dom_end(const struct nf_dom *d)
{
	return d->node.last + 1;
}

static struct nf_dom *dom_first(uint64_t s, uint64_t e)
{
	return DOM(itree_iter_first(&nf.doms, s, e - 1));
}

static struct nf_dom *dom_next(struct nf_dom *d, uint64_t s, uint64_t e)
{
	return DOM(itree_iter_next(&d->node, s, e - 1));
}

/* Keep nf.unverified (records not whole) right after a pieces change. */
static void dom_recheck(struct nf_dom *d)
{
	bool whole = d->npieces == 1 && d->pieces[0].start == dom_start(d) &&
		     d->pieces[0].end == dom_end(d);

	if (whole && !d->whole)
		nf.unverified--;
	else if (!whole && d->whole)
		nf.unverified++;
	d->whole = whole;
}

static bool pieces_cover(const struct nf_dom *d, uint64_t s, uint64_t e)
{
	size_t lo = 0, hi = d->npieces;

	/* the last piece starting at or before s */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (d->pieces[mid].start <= s)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && d->pieces[lo - 1].end >= e;
}

/* Remove [s, e) from the pieces of @d (a log entry: that was unmapped). */
static void pieces_cut(struct nf_dom *d, uint64_t s, uint64_t e)
{
	size_t i;

	for (i = 0; i < d->npieces; i++) {
		struct nf_piece *p = &d->pieces[i];

		if (p->end <= s || p->start >= e)
			continue;
		if (p->start < s && p->end > e) { /* split in two */
			if (d->npieces == d->cap) {
				size_t cap = d->cap * 2 + 2;
				struct nf_piece *np =
					cut_noalloc ?
						NULL :
						realloc(d->pieces,
							cap * sizeof(*np));

				if (!np && cut_noalloc) {
					/* keep the larger side */
					if (s - p->start >= p->end - e)
						p->end = s;
					else
						p->start = e;
					return;
				}
				if (!np) { /* forget it: re-registered later */
					memmove(p, p + 1,
						(d->npieces - i - 1) *
							sizeof(*p));
					d->npieces--;
					return;
				}
				d->pieces = np;
				d->cap = cap;
				p = &d->pieces[i];
			}
			memmove(p + 1, p, (d->npieces - i) * sizeof(*p));
			d->npieces++;
			p[0].end = s;
			p[1].start = e;
			return;
		}
		if (p->start < s) {
			p->end = s;
		} else if (p->end > e) {
			p->start = e;
		} else {
			memmove(p, p + 1, (d->npieces - i - 1) * sizeof(*p));
			d->npieces--;
			i--;
		}
	}
}

static void unverify_range(uint64_t s, uint64_t e)
{
	struct nf_dom *d;

	NF_ASSERT_HELD(&nf.watch_lock);
	if (s >= e)
		return;
	for (d = dom_first(s, e); d; d = dom_next(d, s, e)) {
		pieces_cut(d, s, e);
		dom_recheck(d);
	}
}

static void unverify_all(void)
{
	unverify_range(0, UINT64_MAX);
}

/*
 * Apply the monitor's log up to an even epoch and return that epoch. Every
 * event read before that epoch is in the log: pieces are right after this.
 *
 * Without @wait (the in-thread fast path: nf_icpt_claim) an odd epoch is
 * not waited for: what is logged so far is applied and the odd epoch
 * returned, not recorded as synced, and update_all_ok() publishes nothing
 * for it. Why: the wait is for the monitor thread, which may be
 * descheduled in the middle of a read (a sched_yield loop; measured as most
 * of the fast path's cost when kernel events interleave with hooked
 * munmaps and the monitor runs on another CPU). What the wait protects is
 * not needed there: an event being read can only remove registrations
 * (its mapping is gone), so the pieces may claim more than the kernel has,
 * never less; the fast path then unregisters a range no longer registered
 * and delivers an unmap that happened, both harmless, and every range the
 * kernel still has registered is either cut by it or sends its event.
 */
static uint64_t sync_log(bool wait)
{
	uint64_t e, h, i;

	NF_ASSERT_HELD(&nf.watch_lock);
	/* Odd: a read is in progress (non-blocking, short). */
	while (((e = atomic_load(&nf.epoch)) & 1) && wait)
		sched_yield();
	if (!cut_noalloc && npend) {
		for (i = 0; i < npend; i++)
			unverify_range(pend[i].start, pend[i].end);
		npend = 0;
	}
	if (atomic_load(&pieces_dirty) && atomic_exchange(&pieces_dirty, false))
		unverify_all();
	else if (e == nf.synced_epoch)
		return e;
	h = atomic_load(&nf.log_head);
	if (h - nf.synced_head > NF_LOG) {
		unverify_all();
	} else {
		for (i = nf.synced_head; i < h; i++) {
			struct nf_logent *l = &nf.log[i % NF_LOG];
			uint64_t s = atomic_load(&l->start);
			uint64_t en = atomic_load(&l->end);

			/* Overwritten while we read it? (The monitor claims a
			 * slot before writing it.) Then forget everything. */
			if (atomic_load(&nf.log_claim) - i > NF_LOG) {
				unverify_all();
				break;
			}
			unverify_range(s, en);
		}
	}
	nf.synced_head = h;
	if (!(e & 1))
		nf.synced_epoch = e;
	return e;
}

static void update_all_ok(uint64_t e)
{
	uint64_t v = nf.unverified == 0 && !npend && !atomic_load(&nf.broken) &&
				     !(e & 1) ?
			     e :
			     0;

	NF_ASSERT_HELD(&nf.watch_lock);
	/* Stored only when it changes: a sequentially consistent store is an
	 * exchange (a locked instruction), and the hooks' fast path calls
	 * this at every munmap, mostly to store the 0 already there. The
	 * one store made without watch_lock (nf_icpt_mark_dirty()) only
	 * ever writes 0, which a skipped store would not have undone. */
	if (atomic_load_explicit(&nf.all_ok, memory_order_relaxed) != v)
		atomic_store(&nf.all_ok, v);
}

/* ------------------------------------------------------------------------ */
/* Kernel calls                                                              */
/* ------------------------------------------------------------------------ */

/* UFFDIO_REGISTER of [s, e). The descriptor was checked before the maps
 * were read (settle()), but the application may close or replace it
 * (finding 13) before this ioctl: whatever that call answers then
 * (ENOTTY from a file, EBADF from nothing, even EINVAL) is not about the
 * memory and must not read as a shortage or a refused mapping: -EBADF.
 * Checked after a success too: on the application's own userfaultfd
 * (which it may have opened at the number just freed) the ioctl succeeds,
 * and that registration is not ours to count (nor to undo). */
static int reg(uint64_t s, uint64_t e)
{
	int r;

	nf_stat_inc(&nf.st.registrations);
	r = uffd_register(nf.uffd, s, e);
	if (!nf_uffd_ok())
		return -EBADF;
	return r;
}

/* Why 3 tries: UFFDIO_UNREGISTER fails only transiently (ENOMEM while the
 * kernel splits a mapping; EINTR/EAGAIN on newer kernels), and a
 * registration we forgot about while the kernel keeps it would raise
 * events for memory no record holds. -EINVAL means the range is not (or no
 * longer) one the kernel accepts as a whole: the caller goes per mapping. */
static int unreg_retry(uint64_t s, uint64_t e)
{
	int r = 0, tries;

	for (tries = 0; tries < 3; tries++) {
		r = uffd_unregister(nf.uffd, s, e);
		if (r == 0 || r == -EINVAL)
			break;
	}
	return r;
}

/* One mapping the maps walk just found, clamped to the range @arg: an
 * error here is retried whatever it is (EINVAL too: the mapping existed a
 * moment ago). */
static int unregister_one(const struct uffd_map *m, void *arg)
{
	const struct nf_piece *r = arg;
	uint64_t s = m->start > r->start ? m->start : r->start;
	uint64_t e = m->end < r->end ? m->end : r->end;
	int tries;

	for (tries = 0; tries < 3 && s < e; tries++)
		if (uffd_unregister(nf.uffd, s, e) == 0)
			break;
	return 0;
}

/* The kernel forgets [s, e); errors (memory gone meanwhile) are silent. A
 * range the kernel refuses as a whole is done mapping by mapping (the
 * maps walk needs a descriptor: tried again once if none was free). */
static void unreg(uint64_t s, uint64_t e)
{
	struct nf_piece r = { s, e };

	if (!nf_uffd_ok())
		return; /* not our descriptor any more: never touch it */
	if (unreg_retry(s, e) == -EINVAL &&
	    uffd_for_each_map(s, e, unregister_one, &r) < 0)
		uffd_for_each_map(s, e, unregister_one, &r);
}

/* ------------------------------------------------------------------------ */
/* Registering what is mapped over a range                                   */
/* ------------------------------------------------------------------------ */

enum mstate {
	M_OK,	   /* registered, counted as a piece */
	M_GONE,	   /* gone before its registration: nothing registered */
	M_REFUSED, /* the kernel refuses it */
	M_BUSY,	   /* another userfaultfd has it */
	M_SYSV,
	M_CHANGED /* registered, but changed before the second read: not
		    * counted (verify_registered) */
};

struct mvec {
	struct uffd_map *m;
	unsigned char *st;
	size_t n, cap;
	int err;
};

static int collect(const struct uffd_map *m, void *arg)
{
	struct mvec *v = arg;

	if (v->n == v->cap) {
		size_t cap = v->cap * 2 + 8;
		struct uffd_map *nm = realloc(v->m, cap * sizeof(*nm));

		if (!nm)
			return -ENOMEM;
		v->m = nm;
		v->cap = cap;
	}
	v->m[v->n++] = *m;
	return 0;
}

/* Register one whole mapping; returns its state or a fatal -errno. */
static int reg_map(const struct uffd_map *m)
{
	int r;

	if (m->sysv)
		return M_SYSV;
	r = reg(m->start, m->end);
	/* -ENOMEM is a shortage (a split past vm.max_map_count), or, on
	 * kernels before 6.1 (find_vma_prev() finding nothing), a range with
	 * no mapping at or above its start: gone since we read the maps. 6.1
	 * and later answer -EINVAL for any wholly unmapped range (checked on
	 * 6.18), handled below. One may have come back since: once more,
	 * then it is real. */
	if (r == -ENOMEM) {
		if (!uffd_fully_mapped(m->start, m->end))
			return M_GONE;
		r = reg(m->start, m->end);
		if (r == -ENOMEM && !uffd_fully_mapped(m->start, m->end))
			return M_GONE;
	}
	if (r == -EINVAL) {
		/* Gone since we read the maps, or refused. Anonymous memory
		 * is never refused: it changed under us (finding 7: never
		 * report a churning page as a refused type). Otherwise, if
		 * it is still all mapped, a second refusal means refused. */
		if (m->anon || !uffd_fully_mapped(m->start, m->end))
			return M_GONE;
		r = reg(m->start, m->end);
		if (r == -EINVAL)
			return M_REFUSED;
	}
	if (r == -EPERM) {
		/* A MAP_SHARED file opened read-only, or a filter denying
		 * registration altogether (seccomp): tell them apart. */
		if (uffd_register_probe(nf.uffd) == -EPERM)
			return -EPERM;
		return M_REFUSED;
	}
	if (r == -EBUSY)
		return M_BUSY;
	if (r == -EBADF)
		return r; /* not our descriptor any more (reg()) */
	if (r)
		return -ENOMEM;
	return M_OK;
}

/* Is [s, e) inside one of the records overlapping it? */
static bool in_old_dom(uint64_t s, uint64_t e)
{
	struct nf_dom *d = dom_first(s, e);

	return d && dom_start(d) <= s && dom_end(d) >= e;
}

/* Undo the registrations of a failed call: mappings that no record held. */
static void rollback(const struct mvec *v)
{
	size_t i;

	for (i = 0; i < v->n; i++)
		if ((v->st[i] == M_OK || v->st[i] == M_CHANGED) &&
		    !in_old_dom(v->m[i].start, v->m[i].end))
			unreg(v->m[i].start, v->m[i].end);
}

/* [s, e) inside a record and its registered pieces: nothing to do. */
static bool known_registered(uint64_t s, uint64_t e)
{
	struct nf_dom *d = dom_first(s, e);

	return d && dom_start(d) <= s && dom_end(d) >= e &&
	       pieces_cover(d, s, e);
}

static int piece_cmp(const void *a, const void *b)
{
	const struct nf_piece *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort and merge overlapping or adjacent pieces in place. */
static size_t pieces_norm(struct nf_piece *p, size_t n)
{
	size_t i, j = 0;

	if (!n)
		return 0;
	qsort(p, n, sizeof(*p), piece_cmp);
	for (i = 1; i < n; i++) {
		if (p[i].start <= p[j].end) {
			if (p[i].end > p[j].end)
				p[j].end = p[i].end;
		} else {
			p[++j] = p[i];
		}
	}
	return j + 1;
}

void (*unf_test_hook_before_register)(void);
void (*unf_test_hook_after_register)(void);

/* Is @m among @v2's mappings, with the same extent and kind? Both sorted. */
static bool still_there(const struct uffd_map *m, const struct mvec *v2,
			size_t *from)
{
	size_t j;

	for (j = *from; j < v2->n && v2->m[j].start < m->start; j++)
		;
	*from = j;
	return j < v2->n && v2->m[j].start == m->start &&
	       v2->m[j].end == m->end && v2->m[j].anon == m->anon &&
	       v2->m[j].sysv == m->sysv;
}

/*
 * Registration is not atomic with the read of the maps before it, and the
 * kernel does not fail UFFDIO_REGISTER for holes in the range. A mapping
 * nobody had registered (one made in a record's hole) may be unmapped by
 * another thread in between - no event: it was not registered - and a
 * registration over it would "succeed" on what is left; counted as
 * registered, the hole would be taken for watched when something is mapped
 * there later, whose munmap would then reach no one (issue 12, finding
 * 11's last variant, found by the fuzzer: the device's queue worker
 * faulting while the main thread unmapped). Hence two rules:
 *  - each mapping is registered by itself (register_maps()), so one wholly
 *    gone fails (-EINVAL: M_GONE) instead of hiding in a larger range, and
 *    an identical one mapped later is not mistaken for it;
 *  - the maps are read again afterwards (here), so one partly unmapped in
 *    between (registered on what was left: its extent differs, and an
 *    unregistered refill never merges with the registered rest) is not
 *    counted either (M_CHANGED). The next prepare or watch over either
 *    settles it again. If the second read fails, nothing this call
 *    registered counts.
 * Both are counted in unsure_registrations.
 */
static void verify_registered(uint64_t s, uint64_t e, struct mvec *v)
{
	struct mvec v2 = { 0 };
	size_t i, from = 0;
	bool failed;

	failed = uffd_for_each_map(s, e, collect, &v2) != 0;
	for (i = 0; i < v->n; i++)
		if (v->st[i] == M_OK &&
		    (failed || !still_there(&v->m[i], &v2, &from))) {
			v->st[i] = M_CHANGED;
			nf_stat_inc(&nf.st.unsure_registrations);
		}
	free(v2.m);
}

/* Register the mappings of @v one by one (see above); those already known
 * registered cost nothing. Returns 0, or what settle() must fail with
 * (having rolled back). Sets *@fresh when a registration was made. */
static int register_maps(struct mvec *v, int refused_err, bool *fresh)
{
	size_t i;
	int r;

	*fresh = false;
	for (i = 0; i < v->n; i++) {
		if (known_registered(v->m[i].start, v->m[i].end)) {
			v->st[i] = M_OK;
			continue;
		}
		if (unf_test_hook_before_register)
			unf_test_hook_before_register();
		r = reg_map(&v->m[i]);
		if (r < 0) {
			rollback(v);
			return r;
		}
		v->st[i] = (unsigned char)r;
		*fresh |= r == M_OK;
		if (r == M_GONE)
			nf_stat_inc(&nf.st.unsure_registrations);
		if (r == M_BUSY || (r == M_REFUSED && refused_err)) {
			rollback(v);
			return r == M_BUSY ? -EBUSY : refused_err;
		}
	}
	return 0;
}

/*
 * Make sure the mappings overlapping [s, e) are registered (whole), and
 * make [s, e) part of one record: merged with the records it or its
 * mappings overlap, pieces updated. @refused_err: what a mapping the kernel
 * refuses means (0 for watch, -EOPNOTSUPP for prepare). @lazy (a lazy
 * watch): read and register nothing, only make the record; what is mapped
 * in it is then a hole to the pieces, registered by the prepare of a fault
 * that reaches it. On success *@out is the record. On error nothing new
 * stays registered and the records are unchanged.
 */
static int settle(uint64_t s, uint64_t e, int refused_err, bool lazy,
		  struct nf_dom **out)
{
	struct mvec v = { 0 };
	struct nf_dom *d, *nd;
	struct nf_piece *pc = NULL;
	uint64_t lo = s, hi = e;
	size_t i, npc = 0, cap;
	bool sysv = false, fresh;
	int r;

	NF_ASSERT_HELD(&nf.watch_lock);
	if (!nf_uffd_ok())
		return -EBADF;
	r = lazy ? 0 : uffd_for_each_map(s, e, collect, &v);
	if (r) {
		r = r == -ENOMEM ? r : -ENOMEM;
		goto out;
	}
	for (i = 0; i < v.n; i++)
		sysv |= v.m[i].sysv;
	if (sysv) {
		/* shmdt() sends no event: refused, nothing registered */
		r = -EOPNOTSUPP;
		goto out;
	}
	v.st = calloc(v.n + 1, 1);
	if (!v.st) {
		r = -ENOMEM;
		goto out;
	}
	if (v.n) {
		if (v.m[0].start < lo)
			lo = v.m[0].start;
		if (v.m[v.n - 1].end > hi)
			hi = v.m[v.n - 1].end;
		r = register_maps(&v, refused_err, &fresh);
		if (r)
			goto out;
		if (unf_test_hook_after_register)
			unf_test_hook_after_register();
		if (fresh)
			verify_registered(s, e, &v);
	}

	/* The record: [lo, hi) merged with every record it overlaps. */
	cap = v.n;
	for (d = dom_first(lo, hi); d; d = dom_next(d, lo, hi))
		cap += d->npieces;
	for (d = dom_first(lo, hi); d; d = dom_next(d, lo, hi)) {
		if (dom_start(d) < lo)
			lo = dom_start(d);
		if (dom_end(d) > hi)
			hi = dom_end(d);
	}
	pc = malloc((cap + 1) * sizeof(*pc));
	nd = calloc(1, sizeof(*nd));
	if (!pc || !nd) {
		free(nd);
		rollback(&v);
		r = -ENOMEM;
		goto out;
	}
	for (i = 0; i < v.n; i++)
		if (v.st[i] == M_OK)
			pc[npc++] =
				(struct nf_piece){ v.m[i].start, v.m[i].end };
	/* Take over the records merged: their counts and pieces. */
	while ((d = dom_first(lo, hi))) {
		struct nf_pair *p, *q;

		memcpy(pc + npc, d->pieces, d->npieces * sizeof(*pc));
		npc += d->npieces;
		nd->refs += d->refs;
		for (p = d->pairs; p; p = q) {
			struct nf_pair *x;

			q = p->next;
			for (x = nd->pairs; x && x->sub != p->sub; x = x->next)
				;
			if (x) {
				x->n += p->n;
				free(p);
			} else {
				p->next = nd->pairs;
				nd->pairs = p;
			}
		}
		itree_remove(&nf.doms, &d->node);
		nf.ndoms--;
		if (!d->whole)
			nf.unverified--;
		free(d->pieces);
		free(d);
	}
	nd->node.start = lo;
	nd->node.last = hi - 1;
	nd->pieces = pc;
	nd->cap = cap + 1;
	nd->npieces = pieces_norm(pc, npc);
	pc = NULL;
	itree_insert(&nf.doms, &nd->node);
	nf_filter_add(lo, hi);
	nf.ndoms++;
	nd->whole = false;
	nf.unverified++;
	dom_recheck(nd);
	*out = nd;
	r = 0;
out:
	free(pc);
	free(v.m);
	free(v.st);
	return r;
}

/* ------------------------------------------------------------------------ */
/* Entry points (from notifier.c, with the notifier running)                 */
/* ------------------------------------------------------------------------ */

static struct nf_pair **pair_of(struct nf_dom *d, struct unf_sub *sub)
{
	struct nf_pair **pp;

	for (pp = &d->pairs; *pp && (*pp)->sub != sub; pp = &(*pp)->next)
		;
	return pp;
}

static void dom_free(struct nf_dom *d, bool unregister)
{
	struct nf_pair *p, *q;

	NF_ASSERT_HELD(&nf.watch_lock);
	itree_remove(&nf.doms, &d->node);
	nf.ndoms--;
	if (!d->whole)
		nf.unverified--;
	/* Why 64: beyond it a rebuild per dropped record would make a storm
	 * of unwatches quadratic; the bits then stay (a false "may be
	 * watched" costs a lookup, never an event) until the last goes. */
	if (nf.ndoms <= 64)
		filter_rebuild();
	if (unregister)
		unreg(dom_start(d), dom_end(d));
	for (p = d->pairs; p; p = q) {
		q = p->next;
		free(p);
	}
	free(d->pieces);
	free(d);
}

int nf_watch(struct unf_sub *sub, uint64_t start, uint64_t end, bool lazy)
{
	struct nf_pair **pp, *np = NULL;
	struct nf_dom *d;
	uint64_t e;
	int r = 0;

	nf_lock(&nf.watch_lock);
	if (atomic_load(&nf.broken)) {
		r = atomic_load(&nf.broken);
		goto out;
	}
	e = sync_log(true);
	d = dom_first(start, end);
	if (!d || dom_start(d) > start || dom_end(d) < end ||
	    (!lazy && !pieces_cover(d, start, end))) {
		r = settle(start, end, 0, lazy, &d);
		if (r)
			goto out;
	}
	pp = pair_of(d, sub);
	if (!*pp) {
		np = calloc(1, sizeof(*np));
		if (!np) {
			/* A record made for this call alone goes again. */
			if (!d->refs)
				dom_free(d, true);
			r = -ENOMEM;
			goto out;
		}
		np->sub = sub;
		*pp = np;
	}
	(*pp)->n++;
	d->refs++;
	update_all_ok(e);
out:
	nf_unlock(&nf.watch_lock);
	return r;
}

void nf_unwatch(struct unf_sub *sub, uint64_t start, uint64_t end)
{
	struct nf_pair **pp, *p;
	struct nf_dom *d;

	nf_lock(&nf.watch_lock);
	d = dom_first(start, end);
	if (!d || dom_start(d) > start || dom_end(d) < end)
		goto out; /* never watched: nothing to do */
	pp = pair_of(d, sub);
	if (!*pp)
		goto out;
	p = *pp;
	if (--p->n == 0) {
		*pp = p->next;
		free(p);
	}
	if (--d->refs == 0)
		dom_free(d, true);
out:
	nf_unlock(&nf.watch_lock);
}

int nf_prepare_slow(uint64_t start, uint64_t end, bool *settled)
{
	struct nf_dom *d, *last;
	uint64_t e, s, en;
	int r = 0;

	nf_lock(&nf.watch_lock);
	if (atomic_load(&nf.broken)) {
		r = atomic_load(&nf.broken);
		goto out;
	}
	e = sync_log(true);
	d = dom_first(start, end);
	if (!d)
		goto done; /* not watched */
	if (dom_start(d) <= start && dom_end(d) >= end &&
	    pieces_cover(d, start, end))
		goto done; /* nothing changed here */
	for (last = d; dom_next(last, start, end);)
		last = dom_next(last, start, end);
	s = start > dom_start(d) ? start : dom_start(d);
	en = end < dom_end(last) ? end : dom_end(last);
	nf_stat_inc(&nf.st.slow_prepares);
	r = settle(s, en, -EOPNOTSUPP, false, &d);
	if (r)
		goto out;
	if (settled)
		*settled = true;
done:
	update_all_ok(e);
out:
	nf_unlock(&nf.watch_lock);
	return r;
}

void nf_drop_sub(struct unf_sub *sub)
{
	struct nf_dom *d, *next;

	nf_lock(&nf.watch_lock);
	for (d = dom_first(0, UINT64_MAX); d; d = next) {
		struct nf_pair **pp = pair_of(d, sub), *p = *pp;

		next = dom_next(d, 0, UINT64_MAX);
		if (!p)
			continue;
		*pp = p->next;
		d->refs -= p->n;
		free(p);
		if (d->refs == 0)
			dom_free(d, true);
	}
	nf_unlock(&nf.watch_lock);
}

void nf_drop_all(void)
{
	struct nf_dom *d;

	nf_lock(&nf.watch_lock);
	while ((d = dom_first(0, UINT64_MAX)))
		dom_free(d, true);
	atomic_store(&nf.all_ok, 0);
	nf_unlock(&nf.watch_lock);
}

void nf_forget_all(void)
{
	/* A forked child: the records are the parent's; forget them (the
	 * memory stays allocated: another thread may have been changing it
	 * when the parent forked). */
	itree_init(&nf.doms);
	nf.ndoms = nf.unverified = 0;
	atomic_store(&nf.all_ok, 0);
}

/* ------------------------------------------------------------------------ */
/* The in-thread fast path (intercept.c)                                     */
/* ------------------------------------------------------------------------ */

int nf_icpt_claim(uint64_t s, uint64_t e, struct nf_piece *out, size_t max,
		  bool cut)
{
	struct nf_dom *d;
	uint64_t ep;
	size_t n = 0, i;

	NF_ASSERT_HELD(&nf.watch_lock);
	cut_noalloc = true;
	ep = sync_log(false);
	for (d = dom_first(s, e); d; d = dom_next(d, s, e)) {
		for (i = 0; i < d->npieces; i++) {
			const struct nf_piece *p = &d->pieces[i];

			if (p->end <= s || p->start >= e)
				continue;
			if (n == max) {
				cut_noalloc = false;
				return -1;
			}
			out[n].start = p->start > s ? p->start : s;
			out[n].end = p->end < e ? p->end : e;
			n++;
		}
	}
	if (cut && n && npend < NF_PEND) {
		pend[npend].start = s;
		pend[npend].end = e;
		npend++;
	} else if (cut && n) {
		for (d = dom_first(s, e); d; d = dom_next(d, s, e)) {
			pieces_cut(d, s, e);
			dom_recheck(d);
		}
	}
	cut_noalloc = false;
	update_all_ok(ep);
	return (int)n;
}

bool nf_icpt_covered(uint64_t s, uint64_t e)
{
	NF_ASSERT_HELD(&nf.watch_lock);
	return known_registered(s, e);
}

int nf_icpt_recorded(uint64_t s, uint64_t e)
{
	NF_ASSERT_HELD(&nf.watch_lock);
	if (!dom_first(s, e))
		return 0;
	return in_old_dom(s, e) ? 2 : 1;
}

void nf_icpt_mark_dirty(void)
{
	atomic_store(&pieces_dirty, true);
	atomic_store(&nf.all_ok, 0);
	/* Why +2: the epoch's parity belongs to the monitor (odd while it
	 * reads); a change makes unf_prepare()'s one-compare fast path fail,
	 * and a sync that raced this store sees another epoch next time. */
	atomic_fetch_add(&nf.epoch, 2);
}

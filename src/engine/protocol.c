/* SPDX-License-Identifier: MIT */
/*
 * protocol.c - the retry protocol: periods (context) and stripes (region),
 * as described above struct uodp_ctx in internal.h. Everything that reads
 * or writes ctx->active/period or a region's stripes is here, so the
 * Promela model (model/uodp.pml) maps onto one file.
 */
#include <errno.h>

#include "engine/internal.h"

const struct timespec *deadline_at(struct deadline *d)
{
	if (!d || d->ms == UODP_TIMEOUT_INFINITE)
		return NULL;
	if (!d->set) {
		mono_after(&d->ts, d->ms);
		d->set = true;
	}
	return &d->ts;
}

bool deadline_passed(struct deadline *d)
{
	const struct timespec *ts;
	struct timespec now;

	if (d->ms == UODP_TIMEOUT_INFINITE)
		return false;
	if (!d->ms) /* one attempt */
		return true;
	ts = deadline_at(d);
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > ts->tv_sec ||
	       (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

/* ---- periods ---- */

uint64_t ctx_inval_begin(struct uodp_ctx *ctx)
{
	uint64_t p;

	atomic_fetch_add(&ctx->inflight, 1);
	pthread_mutex_lock(&ctx->inv_lock);
	if (ctx->active++ == 0)
		atomic_fetch_add(&ctx->period, 1); /* now odd */
	p = atomic_load(&ctx->period);
	uodp_assert(p & 1);
	pthread_mutex_unlock(&ctx->inv_lock);
	return p;
}

void ctx_inval_end(struct uodp_ctx *ctx)
{
	pthread_mutex_lock(&ctx->inv_lock);
	uodp_assert(ctx->active > 0);
	if (--ctx->active == 0) {
		atomic_fetch_add(&ctx->period, 1); /* now even */
		pthread_cond_broadcast(&ctx->inv_idle);
	}
	pthread_mutex_unlock(&ctx->inv_lock);
	atomic_fetch_sub(&ctx->inflight, 1);
}

/* Born while invalidations ran, and they still run: not ready. */
bool umem_ready(const struct uodp_umem *umem)
{
	return !umem->birth || umem->birth != atomic_load(&umem->ctx->period);
}

void (*engine_test_hook_before_wait)(struct uodp_umem *umem);

/* Wait on the context until the region is ready (or dying). */
static int wait_ready(struct uodp_umem *umem, struct deadline *dl)
{
	const struct timespec *deadline;
	struct uodp_ctx *ctx = umem->ctx;
	int r = 0, cs;

	if (umem_ready(umem))
		return 0;
	deadline = deadline_at(dl); /* waiting starts the clock */
	/* A condition wait is a cancellation point: not in the library
	 * (uodp_umem_map_and_lock() may not have disabled it). */
	cs = nocancel_begin();
	pthread_mutex_lock(&ctx->inv_lock);
	while (!umem_ready(umem) && !atomic_load(&umem->dying)) {
		if (engine_test_hook_before_wait)
			engine_test_hook_before_wait(umem);
		if (deadline)
			r = pthread_cond_timedwait(&ctx->inv_idle,
						   &ctx->inv_lock, deadline);
		else
			r = pthread_cond_wait(&ctx->inv_idle, &ctx->inv_lock);
		if (r == ETIMEDOUT) {
			r = -EBUSY;
			break;
		}
		r = 0;
	}
	pthread_mutex_unlock(&ctx->inv_lock);
	nocancel_end(cs);
	return r;
}

/* ---- stripes ---- */

static uint64_t stripes_seq_locked(const struct uodp_umem *umem, uint64_t a,
				   uint64_t b, bool *busy)
{
	unsigned i, first, last;
	uint64_t sum = 0;

	stripe_span(umem, a, b, &first, &last);
	*busy = false;
	for (i = first; i <= last; i++) {
		sum += umem->stripes[i].seq;
		*busy |= umem->stripes[i].count != 0;
	}
	/* Non-negative as an int64_t: 2^63 invalidations never happen. */
	return sum & ((uint64_t)INT64_MAX);
}

int64_t fault_begin(struct uodp_umem *umem, uint64_t a, uint64_t b,
		    struct deadline *deadline)
{
	uint64_t seq;
	bool busy, waited = false;
	int r, cs = 0;

	r = wait_ready(umem, deadline);
	if (r)
		return r;
	ulock_lock(&umem->lock);
	for (;;) {
		if (umem->dying) {
			r = -ENODEV;
			break;
		}
		seq = stripes_seq_locked(umem, a, b, &busy);
		if (!busy)
			break;
		/* A condition wait is a cancellation point (see wait_ready());
		 * restored once the lock is dropped. */
		if (!waited)
			cs = nocancel_begin();
		waited = true;
		if (engine_test_hook_before_wait)
			engine_test_hook_before_wait(umem);
		r = ulock_wait(&umem->lock, &umem->idle, deadline_at(deadline));
		if (r == ETIMEDOUT) {
			r = -EBUSY;
			break;
		}
		r = 0;
	}
	ulock_unlock(&umem->lock);
	if (waited)
		nocancel_end(cs);
	return r ? r : (int64_t)seq;
}

bool fault_retry_locked(const struct uodp_umem *umem, uint64_t a, uint64_t b,
			uint64_t seq)
{
	bool busy;

	ulock_assert_held((struct ulock *)&umem->lock);
	if (umem->dying || !umem_ready(umem))
		return true;
	return stripes_seq_locked(umem, a, b, &busy) != seq || busy;
}

/* Region born in this invalidation's period: it was not (or not surely)
 * in the tree when the invalidation began, so neither its start nor its
 * end accounts it; its faults wait for the period to end instead. */
static bool skip_accounting(const struct uodp_umem *umem, uint64_t period)
{
	return umem->birth && umem->birth == period;
}

static uint64_t stripe_mask(const struct uodp_umem *umem, uint64_t s,
			    uint64_t e)
{
	unsigned first, last;

	stripe_span(umem, umem_page(umem, s), umem_page(umem, e), &first,
		    &last);
	/* nstripes <= 64 (UMEM_MAX_STRIPES): one bit per stripe. */
	return (last - first == 63 ? ~(uint64_t)0 :
				     (((uint64_t)1 << (last - first + 1)) - 1))
	       << first;
}

void inval_start(struct uodp_umem *umem, uint64_t s, uint64_t e,
		 uint64_t period)
{
	unsigned i, first, last;

	ulock_lock(&umem->lock);
	umem->stats.invalidations++;
	if (!skip_accounting(umem, period)) {
		stripe_span(umem, umem_page(umem, s), umem_page(umem, e),
			    &first, &last);
		for (i = first; i <= last; i++)
			umem->stripes[i].count++;
	}
	ulock_unlock(&umem->lock);
}

/*
 * The deferred begin accounts every region its walk finds, born in this
 * period or not: unlike start()/end(), which walk the index twice and must
 * skip a region the first walk may have missed, a deferred invalidation
 * ends exactly the stripes its begin recorded in dp.mask, so a region found
 * here is ended once, by whichever finish takes its mask. Skipping it
 * would lose the callback: a region registered while an earlier deferred
 * event was still with the relay (the period open), whose memory is then
 * unmapped, would never hear of it - a registration cache keeps a stale
 * entry (seen with UCX's rcache: test_deferred_born_in_period).
 */
/* Record [s, e) among @p's gone ranges, merged with those it touches
 * (kept disjoint); not recorded when they are full (see UMEM_DGONE). */
static void pend_add_gone(struct inval_pend *p, uint64_t s, uint64_t e)
{
	unsigned i = 0;

	while (i < p->ngone) {
		if (p->ge[i] < s || p->gs[i] > e) {
			i++;
			continue;
		}
		/* touches: absorb it, and look again (it may join others) */
		s = p->gs[i] < s ? p->gs[i] : s;
		e = p->ge[i] > e ? p->ge[i] : e;
		p->ngone--;
		p->gs[i] = p->gs[p->ngone];
		p->ge[i] = p->ge[p->ngone];
		i = 0;
	}
	if (p->ngone == UMEM_DGONE)
		return;
	p->gs[p->ngone] = s;
	p->ge[p->ngone] = e;
	p->ngone++;
}

void inval_deferred_begin(struct uodp_umem *umem, uint64_t s, uint64_t e,
			  bool gone)
{
	struct inval_pend *p = &umem->dp;
	uint64_t m, fresh;

	ulock_lock(&umem->lock);
	umem->stats.invalidations++;
	m = stripe_mask(umem, s, e);
	/* the set bits only (a 4 KiB event sets one of up to 64) */
	for (fresh = m & ~p->mask; fresh; fresh &= fresh - 1)
		umem->stripes[__builtin_ctzll(fresh)].count++;
	if (!p->mask) {
		p->s = s;
		p->e = e;
		p->ngone = 0;
	} else {
		p->s = s < p->s ? s : p->s;
		p->e = e > p->e ? e : p->e;
	}
	if (gone)
		pend_add_gone(p, s, e);
	p->mask |= m;
	ulock_unlock(&umem->lock);
}

bool inval_deferred_take(struct uodp_umem *umem, struct inval_pend *p)
{
	ulock_lock(&umem->lock);
	*p = umem->dp;
	umem->dp.mask = 0;
	ulock_unlock(&umem->lock);
	return p->mask != 0;
}

/* Region lock held: bump the seq and lower the count of each stripe in
 * @mask (its set bits only). True when one fell to 0 (wake the idle). */
static bool end_mask_locked(struct uodp_umem *umem, uint64_t mask)
{
	bool wake = false;

	ulock_assert_held(&umem->lock);
	for (; mask; mask &= mask - 1) {
		unsigned i = (unsigned)__builtin_ctzll(mask);

		uodp_assert(i < umem->nstripes);
		uodp_assert(umem->stripes[i].count > 0);
		umem->stripes[i].seq++;
		if (--umem->stripes[i].count == 0)
			wake = true;
	}
	return wake;
}

void inval_end_mask(struct uodp_umem *umem, uint64_t mask)
{
	bool wake;

	ulock_lock(&umem->lock);
	wake = end_mask_locked(umem, mask);
	if (wake)
		pthread_cond_broadcast(&umem->idle);
	ulock_unlock(&umem->lock);
}

/* Bump seq before lowering count: a fault that began while this ran sees
 * either the count or the new seq, never neither. */
void inval_end(struct uodp_umem *umem, uint64_t s, uint64_t e, uint64_t period)
{
	if (!skip_accounting(umem, period))
		inval_end_mask(umem, stripe_mask(umem, s, e));
}

__thread int engine_in_callback __attribute__((tls_model("initial-exec")));

/* The public face of engine_in_callback: CB_LOCKED and CB_DEFERRED are
 * UODP_CALLBACK_LOCKED and UODP_CALLBACK_DEFERRED (callback.h defines them
 * so). */
UODP_API int uodp_in_callback(void)
{
	return engine_in_callback;
}

static void inval_callback(struct uodp_umem *umem, uint64_t s, uint64_t e,
			   enum uodp_event ev, int cb_kind);

void inval_call(struct uodp_umem *umem, uint64_t s, uint64_t e,
		enum uodp_event ev, int cb_kind, bool gone)
{
	uodp_assert(!ulock_held(&umem->lock));
	if (umem->ctx->ops.invalidate)
		inval_callback(umem, s, e, ev, cb_kind);
	if (!umem_watch_only(umem)) {
		ulock_lock(&umem->lock);
		umem_drop_range_locked(umem, s, e, true, gone);
		ulock_unlock(&umem->lock);
	}
}

/*
 * Pins inside a gone range belong to memory unmapped since they were made
 * (no fault installs while a begin is pending, so none is of a mapping
 * made there since): dropped without munlock(), which would hit whatever
 * is mapped there now. The rest of the hull (between the events, under a
 * REMOVE) may still be mapped: unlocked (test_pinned_deferred_hull,
 * test_pinned_deferred_remove_hull).
 */
void inval_call_pending(struct uodp_umem *umem, const struct inval_pend *p,
			enum uodp_event ev)
{
	uint64_t at = p->s, next, gs, ge;
	unsigned i;

	uodp_assert(!ulock_held(&umem->lock));
	if (umem->ctx->ops.invalidate)
		inval_callback(umem, p->s, p->e, ev, CB_DEFERRED);
	if (umem_watch_only(umem))
		return;
	ulock_lock(&umem->lock);
	while (at < p->e) {
		/* the first gone range ending after @at (they are disjoint) */
		gs = ge = p->e;
		for (i = 0; i < p->ngone; i++)
			if (p->ge[i] > at && p->gs[i] < gs) {
				gs = p->gs[i];
				ge = p->ge[i];
			}
		gs = gs > at ? gs : at;
		ge = ge < p->e ? ge : p->e;
		if (at < gs)
			umem_drop_range_locked(umem, at, gs, true, false);
		if (gs < ge)
			umem_drop_range_locked(umem, gs, ge, true, true);
		next = ge > gs ? ge : gs;
		at = next;
	}
	ulock_unlock(&umem->lock);
}

/* The driver's callback alone (no uodp lock held). */
static void inval_callback(struct uodp_umem *umem, uint64_t s, uint64_t e,
			   enum uodp_event ev, int cb_kind)
{
	struct uodp_ctx *ctx = umem->ctx;
	struct uodp_range r = {
		.start = (void *)(uintptr_t)s,
		.end = (void *)(uintptr_t)e,
		.event = ev,
		.umem_priv = atomic_load(&umem->priv),
	};
	int saved = engine_in_callback;

	engine_in_callback = cb_kind;
	ctx->ops.invalidate(umem, &r, ctx->ops.priv);
	engine_in_callback = saved;
}

/*
 * The three steps of an invalidation that runs in one walk under the tree
 * read lock (one-shot walks, a frame change, teardown): raise, call the
 * driver (CB_LOCKED), lower. The drop and the lowering share one hold of
 * the region lock (a fault sees both or neither); without a callback the
 * raise joins them: raised and lowered in one hold, no fault can see the
 * count, so only the seqs move (a fault that read them before retries).
 * One hold instead of three: each is a lock and an unlock, two atomic
 * exchanges on a line a faulting thread may own.
 */
void inval_locked(struct uodp_umem *umem, uint64_t s, uint64_t e,
		  enum uodp_event ev, uint64_t period, bool gone)
{
	uint64_t m = skip_accounting(umem, period) ? 0 :
						     stripe_mask(umem, s, e);
	bool wake = false;

	uodp_assert(!ulock_held(&umem->lock));
	if (umem->ctx->ops.invalidate) {
		inval_start(umem, s, e, period);
		inval_callback(umem, s, e, ev, CB_LOCKED);
		ulock_lock(&umem->lock);
		if (!umem_watch_only(umem))
			umem_drop_range_locked(umem, s, e, true, gone);
		wake = end_mask_locked(umem, m);
	} else {
		ulock_lock(&umem->lock);
		umem->stats.invalidations++;
		if (!umem_watch_only(umem))
			umem_drop_range_locked(umem, s, e, true, gone);
		for (; m; m &= m - 1)
			umem->stripes[__builtin_ctzll(m)].seq++;
	}
	if (wake)
		pthread_cond_broadcast(&umem->idle);
	ulock_unlock(&umem->lock);
}

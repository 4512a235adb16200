/* SPDX-License-Identifier: MIT */
/*
 * fault.c - the fault path: uodp_umem_map().
 *
 * User space has no get_user_pages(); MADV_POPULATE_WRITE / _READ play its
 * part (they fault pages in with the access asked for, or fail the way the
 * process itself would), and /proc/self/pagemap reveals frames where the
 * process may see them. Work is done in batches of up to FAULT_BATCH pages:
 * populate without any lock, read the frames, then install the batch under
 * the region lock only if no invalidation overlapped (the retry protocol).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/internal.h"
#include "lib/backoff.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define FAULT_BATCH 512 /* pages per populate + install step */

void (*engine_test_hook_before_install)(struct uodp_umem *umem);
void (*engine_test_hook_populate)(uint64_t va, bool failed);

/* Why one page could not be populated, as the error the API documents. */
static int populate_error(int err, uint64_t va, size_t page)
{
	unsigned char vec;

	switch (err) {
	case ENOMEM:
		/* A hole in the address space, or real memory shortage:
		 * mincore() tells them apart (it fails on unmapped memory). */
		if (mincore((void *)va, page, &vec) && errno == ENOMEM)
			return -EFAULT;
		return -ENOMEM;
	case EINVAL: /* PROT_NONE, write to read-only, VM_IO/PFNMAP */
	case EPERM:
		return -EACCES;
	case EFAULT:	/* SIGBUS: e.g. a file page past its end */
	case EHWPOISON: /* a poisoned page */
		return -EFAULT;
	case EAGAIN: /* still transient after retries: call it shortage */
		return -ENOMEM;
	default:
		return -err;
	}
}

static int madvise_retry(uint64_t va, size_t len, int advice)
{
	int tries = 0;

	while (madvise((void *)va, len, advice)) {
		if ((errno != EINTR && errno != EAGAIN) || ++tries > 100)
			return errno;
	}
	return 0;
}

/*
 * Populate @npages pages from @va. Returns the number of pages populated
 * before the first failing one, with *@err set to its error (0 if none).
 * The whole batch is tried at once; only on failure do we go page by page
 * to learn where it stopped, as get_user_pages() would report.
 * @dl (map_and_lock's bound, NULL: none) bounds the backoff too: a page
 * that another thread unmaps and maps again is a collision with an
 * invalidation like any other, and the caller's time bound is on the
 * whole call (internal.h). Past it, a page still not told from a shortage
 * stops the populate with -EBUSY (timeout 0: after the first refusal).
 */
static uint64_t populate(const struct uodp_ctx *ctx, uint64_t va,
			 uint64_t npages, bool write, struct deadline *dl,
			 int *err)
{
	size_t page = (size_t)1 << ctx->page_shift;
	int advice = write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
	uint64_t i;
	int e, tries;

	*err = 0;
	if (!madvise_retry(va, npages * page, advice))
		return npages;
	for (i = 0; i < npages; i++) {
		/* A page can be unmapped when madvise() looks and mapped
		 * again when mincore() does: only a page that fails while
		 * mapped, BACKOFF_TRIES times in a row and out of step with
		 * whoever maps and unmaps it (lib/backoff.h), is out of
		 * memory. */
		for (tries = 0;; tries++) {
			if (engine_test_hook_populate)
				engine_test_hook_populate(va + i * page, false);
			e = madvise_retry(va + i * page, page, advice);
			if (!e)
				break;
			if (engine_test_hook_populate)
				engine_test_hook_populate(va + i * page, true);
			*err = populate_error(e, va + i * page, page);
			if (*err != -ENOMEM || tries + 1 >= BACKOFF_TRIES)
				return i;
			if (dl && deadline_passed(dl)) {
				*err = -EBUSY; /* not told apart in time */
				return i;
			}
			backoff_pause((unsigned)tries);
		}
	}
	*err = 0;
	return npages;
}

/* Frame numbers of @n pages from @va into @pfns (0 where unknown). */
static void read_frames(const struct uodp_ctx *ctx, uint64_t va, uint64_t n,
			uint64_t *pfns)
{
	off_t off = (off_t)((va >> ctx->page_shift) * sizeof(uint64_t));
	ssize_t got = -1;
	uint64_t i;

	if (ctx->pagemap_pfns && ctx_pagemap_ours((struct uodp_ctx *)ctx))
		got = pread(ctx->pagemap_fd, pfns, n * sizeof(uint64_t), off);
	if (got != (ssize_t)(n * sizeof(uint64_t))) {
		for (i = 0; i < n; i++)
			pfns[i] = 0;
		return;
	}
	for (i = 0; i < n; i++)
		pfns[i] = (pfns[i] & PM_PRESENT) ? pfns[i] & PM_PFN_MASK : 0;
}

/* The pages whose stripes a fault checks, and their sequence. */
struct window {
	uint64_t a, b; /* page indexes [a, b) of the region */
	uint64_t seq;
};

struct install {
	uint64_t done;	      /* pages of the batch handled so far */
	uint64_t changed;     /* index of a page whose frame changed, or ~0 */
	uint64_t changed_end; /* ...invalidate to this index (0: batch end) */
	int err;	      /* why the batch stopped early (or 0) */
	bool *keep;	      /* pinning mode: page i's pin went to its entry */
};

/*
 * Install pages [res->done, n) of the batch starting at page index @idx;
 * umem->lock held and the retry check passed. A page already mapped keeps
 * its entry and gains @access, unless its frame is known to have changed:
 * then we stop and let the caller invalidate (the device may hold the old
 * frame). Stops with -EWOULDBLOCK when the table needs nodes: the caller
 * allocates them with the lock dropped and calls again.
 */
static void install_locked(struct uodp_umem *umem, uint64_t idx, uint64_t n,
			   const uint64_t *pfns, unsigned access,
			   struct install *res)
{
	uint64_t i, room = 0, *slot = NULL, w, nw, leaf = 0, start = res->done;
	int64_t filled = 0;

	ulock_assert_held(&umem->lock);
	for (i = res->done; i < n; i++, slot++, room--) {
		if (!room) {
			/* Next leaf: settle the count of the last one. */
			if (slot)
				pgt_leaf_account(&umem->table, leaf, filled);
			filled = 0;
			leaf = idx + i;
			slot = pgt_leaf_slot(&umem->table, leaf, &room);
			if (!slot) {
				res->err = -errno; /* EWOULDBLOCK or ENOMEM */
				break;
			}
		}
		w = *slot;
		if (w & W_ACCESS_MASK) {
			uint64_t old = w >> W_PFN_SHIFT;

			if (pfns[i] && old && old != pfns[i]) {
				res->changed = idx + i;
				break;
			}
			*slot = w | access;
			continue;
		}
		nw = (pfns[i] << W_PFN_SHIFT) | access | (w & W_DIRTY);
		if (res->keep) {
			nw |= W_PINNED;
			res->keep[i] = true;
		}
		filled += !w;
		*slot = nw;
		umem->mapped++;
	}
	if (slot)
		pgt_leaf_account(&umem->table, leaf, filled);
	res->done = i;
	umem->stats.pages_mapped += i - start;
}

/*
 * Install a populated batch under the region lock, if the retry protocol
 * allows. Returns 0 (see res for how far it got), -EAGAIN or -ENODEV.
 * With @hold, a batch installed whole keeps the lock: *@held is then
 * true, and the check made under it is map_and_lock's final one (the
 * same window, the same hold). Not when emptied table nodes wait to be
 * freed (never under the lock).
 */
static int install_batch(struct uodp_umem *umem, const struct window *w,
			 uint64_t idx, uint64_t n, const uint64_t *pfns,
			 unsigned access, bool huge, struct install *res,
			 bool hold, bool *held)
{
	void *dead;
	int r = 0;

	uint64_t va = umem->start + (idx << umem->ctx->page_shift);
	int h;

	ulock_lock(&umem->lock);
	for (;;) {
		/* The retry protocol's install-side check: no invalidation
		 * of the window runs and none ended since its sequence was
		 * read, so the pages we populated are still the ones mapped
		 * at these addresses. Made again after every refill, which
		 * drops the lock. */
		if (fault_retry_locked(umem, w->a, w->b, w->seq)) {
			r = atomic_load(&umem->dying) ? -ENODEV : -EAGAIN;
			break;
		}
		/* Batches never cross a 2 MiB boundary (map_window), so a
		 * batch is covered by at most one huge entry. */
		h = huge_covers_locked(umem, va, n, pfns, access);
		if (h == 1) {
			res->done = n;
			break;
		}
		if (h == HUGE_CHANGED) {
			/* The whole entry goes, so the driver hears of its
			 * whole block: it may map any page of it. */
			res->changed = umem_page(umem, va & ~(HUGE_SIZE - 1));
			res->changed_end = res->changed + HUGE_PAGES(umem->ctx);
			break;
		}
		if (huge) {
			h = huge_install_locked(umem, va, pfns[0], access);
			if (h == 1) {
				res->done = n;
				break;
			}
			if (h == HUGE_CHANGED) {
				res->changed = idx;
				break;
			}
			if (h == -EWOULDBLOCK) {
				res->err = table_refill(
					&umem_huge(umem)->table, &umem->lock,
					(va >> HUGE_SHIFT) -
						(umem->start >> HUGE_SHIFT));
				if (res->err)
					break;
				continue;
			}
			huge = false; /* base pages there: use them */
		}
		install_locked(umem, idx, n, pfns, access, res);
		if (res->err != -EWOULDBLOCK)
			break;
		res->err = table_refill(&umem->table, &umem->lock,
					idx + res->done);
		if (res->err)
			break;
	}
	if (r == -EAGAIN || res->changed != ~(uint64_t)0)
		umem->stats.retries++;
	dead = table_trim(&umem->table);
	if (hold && !r && !res->err && res->changed == ~(uint64_t)0 && !dead) {
		*held = true;
		return 0;
	}
	ulock_unlock(&umem->lock);
	pgt_free_nodes(dead);
	return r;
}

/* Pinning mode: give back the pins that did not go to an entry (page
 * already mapped, or not installed), a run at a time. */
static void unpin_rest(struct uodp_ctx *ctx, uint64_t va, uint64_t n,
		       const bool *keep)
{
	uint64_t i = 0, j, page = (uint64_t)1 << ctx->page_shift;

	while (i < n) {
		if (keep[i]) {
			i++;
			continue;
		}
		for (j = i; j < n && !keep[j]; j++)
			;
		unpin_range(ctx, va + i * page, j - i);
		i = j;
	}
}

/*
 * ctx_prepare() over [first, *end), or over its longest prefix that can be
 * watched: a neighbour that the monitor refuses (finding 17) only shortens
 * the fault, as a hole does. The error is returned only when @first's own
 * page cannot be watched. Bisection: a few more prepares, on errors only.
 */
static int prepare_prefix(struct uodp_ctx *ctx, uint64_t first, uint64_t *end,
			  bool *unsure)
{
	uint64_t page = page_size_of(ctx), lo, hi, mid;
	bool u;
	int r;

	r = ctx_prepare(ctx, first, *end, unsure);
	if (!r || *end - first == page)
		return r;
	r = ctx_prepare(ctx, first, first + page, unsure);
	if (r)
		return r;
	lo = first + page; /* [first, lo) can be watched */
	hi = *end;	   /* [first, hi) cannot */
	while (hi - lo > page) {
		mid = lo + (((hi - lo) / 2) & ~(page - 1));
		if (ctx_prepare(ctx, first, mid, &u) == 0) {
			lo = mid;
			*unsure |= u;
		} else {
			hi = mid;
		}
	}
	*unsure = true; /* the range changed under us: check after populate */
	*end = lo;
	return 0;
}

/* Checks of the fault entry points' arguments, in the order the API lists
 * them; on success [*first, *end) is the page-rounded range. */
static int map_check(struct uodp_umem *umem, const void *addr, size_t len,
		     unsigned access, uint64_t *first, uint64_t *end)
{
	uint64_t va = (uintptr_t)addr;

	if (!umem_valid(umem) || !len || !access || (access & ~UODP_ACCESS_ALL))
		return -EINVAL;
	if ((access & ~umem->access) || umem_watch_only(umem))
		return -EPERM;
	if (va < umem->start || va + len < va || va + len > umem->end)
		return -ERANGE;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	if (ulock_held(&umem->lock))
		return -EDEADLK;
	/* Cannot fail: len > 0 and va + len <= end, a user address. */
	(void)page_round(umem->ctx, va, len, first, end);
	return callback_check(false);
}

/*
 * Populate and install [first, end) in batches against window @w. Returns
 * the pages installed from @first, or an error when none were: -EAGAIN
 * when an invalidation of the window collided (or a frame changed, after
 * invalidating it), -ENODEV, or the populate's error (-EBUSY when @dl,
 * map_and_lock's bound, passed in its backoff; NULL: none). With @held
 * (map_and_lock), the last batch's install may keep the region lock:
 * *@held says so (then the return is > 0 and the retry check passed
 * under the lock still held).
 */
static int64_t map_window(struct uodp_umem *umem, uint64_t first, uint64_t end,
			  unsigned access, const struct window *w,
			  struct deadline *dl, bool *held)
{
	uint64_t pfns[FAULT_BATCH];
	bool keep[FAULT_BATCH];
	struct uodp_ctx *ctx = umem->ctx;
	uint64_t page = page_size_of(ctx), n, got, total = 0, va;
	bool write = access & UODP_ACCESS_WRITE,
	     pin = ctx->flags & UODP_CTX_PIN, unsure, again, last;
	int err = 0, r;

	/* Mappings made in the range since it was watched get watched now,
	 * before we populate them. */
	r = prepare_prefix(ctx, first, &end, &unsure);
	if (r)
		return r;
	for (va = first; va < end && !err; va += got * page) {
		struct install res = { .changed = ~(uint64_t)0 };

		/* Up to the next 2 MiB boundary: a batch is one huge page
		 * at most (FAULT_BATCH pages of 4 KiB is 2 MiB). */
		n = (end - va) / page;
		if (n > FAULT_BATCH)
			n = FAULT_BATCH;
		if (n > (HUGE_SIZE - (va & (HUGE_SIZE - 1))) / page)
			n = (HUGE_SIZE - (va & (HUGE_SIZE - 1))) / page;
		got = populate(ctx, va, n, write, dl, &err);
		if (got && pin) {
			/* Pins first: the pin table may need memory, which
			 * the region lock forbids (table.c). */
			got = pin_range(ctx, va, got, &err);
			memset(keep, 0, got * sizeof(keep[0]));
			res.keep = keep;
		}
		if (!got)
			break;
		if (unsure) {
			/* The range was not known whole and watched: a mapping
			 * may have appeared in a hole while we populated, with
			 * no event, and be gone or replaced by now. Its pages
			 * must not be installed unless it is watched: check
			 * again, and start over if anything had to be
			 * registered (the next attempt populates it watched). */
			r = ctx_prepare(ctx, va, va + got * page, &again);
			if (r || again) {
				if (pin)
					unpin_range(ctx, va, got);
				return r ? r : -EAGAIN;
			}
		}
		read_frames(ctx, va, got, pfns);
		if (engine_test_hook_before_install)
			engine_test_hook_before_install(umem);

		/* The last batch: the window ends, or populate stopped. */
		last = err || va + got * page >= end;
		r = install_batch(umem, w, umem_page(umem, va), got, pfns,
				  access, !pin && huge_candidate(umem, va, got),
				  &res, held && last && !pin, held);
		if (pin)
			unpin_rest(ctx, va, got, keep);
		if (r)
			return r;
		total += res.done;
		if (res.changed != ~(uint64_t)0) {
			/* Frames changed under live entries: drop them, from
			 * the first changed page to the end of the batch, in
			 * one invalidation, and let the driver fault again. */
			uint64_t cva = umem->start + res.changed * page;
			uint64_t cend =
				res.changed_end ?
					umem->start + res.changed_end * page :
					va + got * page;

			umem_invalidate_one(umem, cva, cend, UODP_EVENT_FRAME);
			return -EAGAIN;
		}
		if (res.err) {
			err = res.err;
			break;
		}
	}
	return total ? (int64_t)total : err;
}

static void count_call(struct uodp_umem *umem)
{
	ulock_lock(&umem->lock);
	umem->stats.map_calls++;
	ulock_unlock(&umem->lock);
}

UODP_API int64_t uodp_umem_map(struct uodp_umem *umem, const void *addr,
			       size_t len, unsigned access, uint64_t seq)
{
	struct window w;
	uint64_t first, end;
	int64_t r;
	int cs;

	r = map_check(umem, addr, len, access, &first, &end);
	if (r)
		return r;
	if (atomic_load(&umem->dying))
		return -ENODEV;
	/* The low-level steps work on the whole region's sequence. */
	w = (struct window){ 0, umem_npages(umem), seq };
	cs = nocancel_begin();
	count_call(umem);
	r = map_window(umem, first, end, access, &w, NULL, NULL);
	nocancel_end(cs);
	return r;
}

/*
 * The one fault loop of the library: begin on the window's stripes, map,
 * then lock and check; start again on a collision until the deadline.
 * Every error but a collision ends it at once.
 */
UODP_API int64_t uodp_umem_map_and_lock(struct uodp_umem *umem,
					const void *addr, size_t len,
					unsigned access, unsigned timeout_ms)
{
	struct deadline dl;
	struct window w;
	uint64_t first, end;
	int64_t r, seq;
	bool held, quiet;
	int cs = 0;

	r = map_check(umem, addr, len, access, &first, &end);
	if (r)
		return r;
	deadline_init(&dl, timeout_ms);
	w.a = umem_page(umem, first);
	w.b = umem_page(umem, end);
	/*
	 * No cancellation inside (nocancel_begin()), at the price of two
	 * atomic operations on the thread's cancel state, paid only where a
	 * cancellation point can be reached. fault_begin()'s waits disable it
	 * themselves, and so does the notifier's slow prepare (it reads
	 * /proc/self/maps; its fast path reaches none). What is left may
	 * reach one only where frames are read (pread of pagemap, and a frame
	 * change runs the driver's callbacks) or pages pinned: other contexts
	 * (every device's: UODP_CTX_NO_FRAMES) populate, lock and install
	 * with no cancellation point, and skip the pair, as a manual
	 * context's uodp_umem_get() does.
	 */
	quiet = !umem->ctx->pagemap_pfns && !(umem->ctx->flags & UODP_CTX_PIN);
	if (!quiet)
		cs = nocancel_begin();
	for (;;) {
		seq = fault_begin(umem, w.a, w.b, &dl);
		if (seq < 0) {
			r = seq;
			break;
		}
		w.seq = (uint64_t)seq;
		held = false;
		r = map_window(umem, first, end, access, &w, &dl, &held);
		if (held) {
			/* The last install kept the lock: its retry check,
			 * on this window, is the final one. */
			umem->stats.map_calls++;
			break;
		}
		if (r <= 0) {
			count_call(umem);
		} else {
			/* The attempt is counted under the lock it takes
			 * anyway (one lock round trip less per fault). */
			ulock_lock(&umem->lock);
			umem->stats.map_calls++;
			if (!fault_retry_locked(umem, w.a, w.b, w.seq))
				break; /* success: return with the lock */
			r = atomic_load(&umem->dying) ? -ENODEV : -EAGAIN;
			umem->stats.retries++;
			ulock_unlock(&umem->lock);
		}
		if (r != -EAGAIN)
			break;
		if (deadline_passed(&dl)) {
			r = -EBUSY;
			break;
		}
	}
	if (!quiet)
		nocancel_end(cs);
	return r;
}

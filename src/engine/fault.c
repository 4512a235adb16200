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
#include "notifier/monitor.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define FAULT_BATCH 512 /* pages per populate + install step */
#define PM_PFN_MASK ((UINT64_C(1) << 55) - 1)
#define PM_PRESENT (UINT64_C(1) << 63)

void (*engine_test_hook_before_install)(struct uodp_umem *umem);

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
 */
static uint64_t populate(const struct uodp_ctx *ctx, uint64_t va,
			 uint64_t npages, bool write, int *err)
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
		 * mapped, several times in a row, is out of memory. */
		for (tries = 0; tries < 3; tries++) {
			e = madvise_retry(va + i * page, page, advice);
			if (!e)
				break;
			*err = populate_error(e, va + i * page, page);
			if (*err != -ENOMEM)
				return i;
		}
		if (e)
			return i;
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

	if (ctx->pagemap_pfns)
		got = pread(ctx->pagemap_fd, pfns, n * sizeof(uint64_t), off);
	if (got != (ssize_t)(n * sizeof(uint64_t))) {
		for (i = 0; i < n; i++)
			pfns[i] = 0;
		return;
	}
	for (i = 0; i < n; i++)
		pfns[i] = (pfns[i] & PM_PRESENT) ? pfns[i] & PM_PFN_MASK : 0;
}

struct install {
	uint64_t done;	  /* pages of the batch handled so far */
	uint64_t changed; /* index of a page whose frame changed, or ~0 */
	int err;	  /* why the batch stopped early (or 0) */
	bool *keep;	  /* pinning mode: page i's pin went to its entry */
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
 */
static int install_batch(struct uodp_umem *umem, uint64_t idx, uint64_t n,
			 const uint64_t *pfns, unsigned access, uint64_t seq,
			 struct install *res)
{
	void *dead;
	int r = 0;

	pthread_mutex_lock(&umem->lock);
	for (;;) {
		/* The retry protocol's install-side check: no invalidation
		 * runs and none ended since seq was read, so the pages we
		 * populated are still the ones mapped at these addresses
		 * (invalidate.c bumps seq before lowering count). Made again
		 * after every refill, which drops the lock. */
		if (umem_retry_locked(umem, seq)) {
			r = umem->dying ? -ENODEV : -EAGAIN;
			break;
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
		umem->stats.eagain++;
	dead = table_trim(&umem->table);
	pthread_mutex_unlock(&umem->lock);
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

/* Checks of uodp_umem_map()'s arguments, in the order the API lists them. */
static int map_check(struct uodp_umem *umem, uint64_t va, uint64_t bcnt,
		     unsigned access)
{
	if (!umem_valid(umem) || !bcnt || !access ||
	    (access & ~UODP_ACCESS_ALL) || (access & ~umem->access))
		return -EINVAL;
	if (va < umem->start || va + bcnt < va || va + bcnt > umem->end)
		return -EFAULT;
	if (ctx_forked(umem->ctx))
		return -ECHILD;
	return 0;
}

/* Let the kernel monitor register mappings made after the region was. */
static int map_prepare(struct uodp_ctx *ctx, uint64_t start, uint64_t end)
{
	int r = 0;

	if (ctx->flags & UODP_CTX_MANUAL)
		return 0;
	pthread_mutex_lock(&ctx->mon_lock);
	if (ctx->mon)
		r = umon_prepare_map(ctx->mon, start, end);
	pthread_mutex_unlock(&ctx->mon_lock);
	return r;
}

UODP_API int64_t uodp_umem_map(struct uodp_umem *umem, uint64_t va,
			       uint64_t bcnt, unsigned access, uint64_t seq)
{
	uint64_t pfns[FAULT_BATCH];
	bool keep[FAULT_BATCH];
	struct uodp_ctx *ctx;
	uint64_t page, first, end, n, got, total = 0;
	bool write = access & UODP_ACCESS_WRITE, pin;
	int err = 0, r;

	r = map_check(umem, va, bcnt, access);
	if (r)
		return r;
	ctx = umem->ctx;
	pin = !ctx->ops.invalidate_range;
	page = (uint64_t)1 << ctx->page_shift;
	first = va & ~(page - 1);
	end = (va + bcnt + page - 1) & ~(page - 1);

	pthread_mutex_lock(&umem->lock);
	umem->stats.map_calls++;
	r = umem->dying ? -ENODEV : 0;
	pthread_mutex_unlock(&umem->lock);
	if (!r)
		r = map_prepare(ctx, first, end);
	if (r)
		return r;

	for (va = first; va < end && !err; va += got * page) {
		struct install res = { .changed = ~(uint64_t)0 };

		n = (end - va) / page;
		if (n > FAULT_BATCH)
			n = FAULT_BATCH;
		got = populate(ctx, va, n, write, &err);
		if (got && pin) {
			/* Pins first: the pin table may need memory, which
			 * the region lock forbids (table.c). */
			got = pin_range(ctx, va, got, &err);
			memset(keep, 0, got * sizeof(keep[0]));
			res.keep = keep;
		}
		if (!got)
			break;
		read_frames(ctx, va, got, pfns);
		if (engine_test_hook_before_install)
			engine_test_hook_before_install(umem);

		r = install_batch(umem, umem_page(umem, va), got, pfns, access,
				  seq, &res);
		if (pin)
			unpin_rest(ctx, va, got, keep);
		if (r)
			return r;
		total += res.done;
		if (res.changed != ~(uint64_t)0) {
			/* Frames changed under live entries: drop them, from
			 * the first changed page to the end of the batch, in
			 * one invalidation, and let the driver fault again. */
			uint64_t cva =
				umem->start + (res.changed << ctx->page_shift);

			umem_invalidate_one(umem, cva, va + got * page);
			return -EAGAIN;
		}
		if (res.err) {
			err = res.err;
			break;
		}
	}
	return total ? (int64_t)total : err;
}

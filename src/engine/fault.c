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
	int e;

	*err = 0;
	if (!madvise_retry(va, npages * page, advice))
		return npages;
	for (i = 0; i < npages; i++) {
		e = madvise_retry(va + i * page, page, advice);
		if (e) {
			*err = populate_error(e, va + i * page, page);
			return i;
		}
	}
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
	uint64_t done;	  /* pages installed */
	uint64_t changed; /* index of a page whose frame changed, or ~0 */
	int err;
};

/*
 * Install @n pages of the batch starting at page index @idx; umem->lock
 * held and the retry check passed. A page already mapped keeps its entry
 * and gains @access, unless its frame is known to have changed: then we
 * stop and let the caller invalidate it (the device may hold the old one).
 */
static void install_locked(struct uodp_umem *umem, uint64_t idx, uint64_t n,
			   const uint64_t *pfns, unsigned access,
			   struct install *res)
{
	bool pin = !umem->ctx->ops.invalidate_range;
	uint64_t i, room = 0, *slot = NULL, w, nw, leaf = 0;
	int64_t filled = 0;
	int r;

	for (i = 0; i < n; i++, slot++, room--) {
		if (!room) {
			/* Next leaf: settle the count of the last one (which
			 * also frees it if we left it empty). */
			if (slot)
				pgt_leaf_account(&umem->table, leaf, filled);
			filled = 0;
			leaf = idx + i;
			slot = pgt_leaf_slot(&umem->table, leaf, &room);
			if (!slot) {
				/* The previous leaf is settled; count the
				 * pages installed so far below. */
				res->err = -ENOMEM;
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
			res->done++;
			continue;
		}
		nw = (pfns[i] << W_PFN_SHIFT) | access | (w & W_DIRTY);
		if (pin) {
			r = pin_page(umem->ctx,
				     umem->start + ((idx + i)
						    << umem->ctx->page_shift));
			if (r) {
				res->err = r;
				break;
			}
			nw |= W_PINNED;
		}
		filled += !w;
		*slot = nw;
		umem->mapped++;
		res->done++;
	}
	if (slot)
		pgt_leaf_account(&umem->table, leaf, filled);
	umem->stats.pages_mapped += res->done;
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
	struct uodp_ctx *ctx;
	uint64_t page, first, end, idx, n, got, total = 0;
	bool write = access & UODP_ACCESS_WRITE;
	int err = 0, r;

	r = map_check(umem, va, bcnt, access);
	if (r)
		return r;
	ctx = umem->ctx;
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
		if (!got)
			break;
		read_frames(ctx, va, got, pfns);
		if (engine_test_hook_before_install)
			engine_test_hook_before_install(umem);

		idx = umem_page(umem, va);
		pthread_mutex_lock(&umem->lock);
		/* The retry protocol's install-side check: no invalidation
		 * runs and none ended since seq was read, so the pages we
		 * populated are still the ones mapped at these addresses
		 * (invalidate.c bumps seq before lowering count). */
		if (umem_retry_locked(umem, seq)) {
			r = umem->dying ? -ENODEV : -EAGAIN;
			if (r == -EAGAIN)
				umem->stats.eagain++;
			pthread_mutex_unlock(&umem->lock);
			return r;
		}
		install_locked(umem, idx, got, pfns, access, &res);
		table_trim_locked(&umem->table);
		pthread_mutex_unlock(&umem->lock);

		total += res.done;
		if (res.changed != ~(uint64_t)0) {
			uint64_t cva =
				umem->start + (res.changed << ctx->page_shift);

			umem_invalidate_one(umem, cva, cva + page);
			pthread_mutex_lock(&umem->lock);
			umem->stats.eagain++;
			pthread_mutex_unlock(&umem->lock);
			return -EAGAIN;
		}
		if (res.err) {
			err = res.err;
			break;
		}
	}
	return total ? (int64_t)total : err;
}

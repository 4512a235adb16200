/* SPDX-License-Identifier: MIT */
/*
 * pin.c - on-demand pinning, for drivers that cannot invalidate.
 *
 * With no invalidate_range callback a mapped page must not move under the
 * device, so the engine mlock()s it while it is mapped. mlock() is not
 * counted by the kernel, and regions may overlap, so the context keeps a
 * reference count per page (a sparse table indexed by page number) and
 * locks a page on its first reference and unlocks it on its last.
 * Caveat (documented): munlock() also undoes an mlock() the application
 * made itself on the same page.
 */
#include <errno.h>
#include <sys/mman.h>

#include "engine/internal.h"

int pin_page(struct uodp_ctx *ctx, uint64_t va)
{
	uint64_t pg = va >> ctx->page_shift, refs;
	size_t page = (size_t)1 << ctx->page_shift;
	void *dead;
	int r;

	pthread_mutex_lock(&ctx->pin_lock);
	/* Take the reference first: raising a count may need table nodes,
	 * allocated with the lock dropped (table.c), so the count is read
	 * again after each refill. */
	for (;;) {
		refs = pgt_get(&ctx->pins, pg);
		r = pgt_set(&ctx->pins, pg, refs + 1);
		if (r != -EWOULDBLOCK)
			break;
		r = table_refill(&ctx->pins, &ctx->pin_lock, pg);
		if (r)
			break;
	}
	/* Lowering a count back never allocates nor fails. */
	if (!r && !refs && mlock((void *)va, page)) {
		pgt_set(&ctx->pins, pg, refs);
		r = -ENOMEM; /* ENOMEM/EAGAIN/EPERM: over RLIMIT_MEMLOCK */
	}
	dead = table_trim(&ctx->pins);
	pthread_mutex_unlock(&ctx->pin_lock);
	pgt_free_nodes(dead);
	return r;
}

void unpin_page(struct uodp_ctx *ctx, uint64_t va)
{
	uint64_t pg = va >> ctx->page_shift, refs;

	pthread_mutex_lock(&ctx->pin_lock);
	refs = pgt_get(&ctx->pins, pg);
	if (refs == 1)
		/* Fails harmlessly (ENOMEM) if the page was unmapped. */
		munlock((void *)va, (size_t)1 << ctx->page_shift);
	/* Lowering a count neither allocates nor frees (emptied nodes go
	 * to the graveyard), so it cannot fail and is safe on the monitor
	 * thread. */
	if (refs)
		pgt_set(&ctx->pins, pg, refs - 1);
	pthread_mutex_unlock(&ctx->pin_lock);
}

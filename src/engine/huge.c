/* SPDX-License-Identifier: MIT */
/*
 * huge.c - huge-page entries: a 2 MiB block that the kernel maps with one
 * huge page (THP or hugetlb) gets one entry instead of 512.
 *
 * The kernel tells us which pages are huge through the PAGEMAP_SCAN ioctl
 * on /proc/self/pagemap (Linux 6.7+, category PAGE_IS_HUGE); where it is
 * missing every entry is a base page, as before. A region keeps its huge
 * entries in a second sparse table (struct umem_huge, internal.h) indexed
 * by 2 MiB block, and only for blocks entirely inside the region (a region
 * smaller than a huge page, or the ragged ends of one, keeps base-page
 * entries; a region without a whole block has no huge part at all).
 *
 * Rules that keep one answer per page:
 *  - a huge entry is installed only where the block has no base-page
 *    entry; a base-page fault in a block with a huge entry only upgrades
 *    the huge entry's access, unless a page's frame changed under it (a
 *    write broke a COW share and the kernel split the block): then the
 *    whole block is invalidated (EVENT_FRAME; the driver may hold any of
 *    its pages) and faulted again as base pages;
 *  - an invalidation that touches any page of a huge entry drops the whole
 *    entry: splitting it would need 512 base-page words, i.e. memory on the
 *    invalidation path, which may be the monitor thread (no allocation
 *    there). The driver was told only the invalidated range; its other
 *    translations stay valid, and the engine refaults the rest on demand;
 *  - a dropped writable huge entry marks its whole block dirty in the huge
 *    word (W_DIRTY with a count of pages already taken in the frame bits),
 *    and uodp_umem_dirty_take() reports its pages merged with the base-page
 *    dirty set, in ascending order, each page once.
 * Pinning mode (UODP_CTX_PIN) keeps base-page entries: pins are counted per
 * base page.
 */
#include <errno.h>
#include <sys/ioctl.h>

#include "engine/internal.h"

/* PAGEMAP_SCAN, defined by its kernel values (our headers are older). */
struct uodp_pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask;
	uint64_t return_mask;
};
struct uodp_page_region {
	uint64_t start, end, categories;
};
#define UODP_PAGEMAP_SCAN _IOWR('f', 16, struct uodp_pm_scan_arg)
#define UODP_PAGE_IS_HUGE (1ull << 6)

/* Is [va, va + HUGE_SIZE) mapped by huge pages? One ioctl. */
static bool block_is_huge(const struct uodp_ctx *ctx, uint64_t va)
{
	struct uodp_page_region reg[1];
	struct uodp_pm_scan_arg arg = {
		.size = sizeof(arg),
		.start = va,
		.end = va + HUGE_SIZE,
		.vec = (uint64_t)(uintptr_t)reg,
		.vec_len = 1,
		.category_mask = UODP_PAGE_IS_HUGE,
		.return_mask = UODP_PAGE_IS_HUGE,
	};
	long n = ioctl(ctx->pagemap_fd, UODP_PAGEMAP_SCAN, &arg);

	return n == 1 && reg[0].start == va && reg[0].end == va + HUGE_SIZE;
}

bool huge_probe(const struct uodp_ctx *ctx)
{
	static char probe[1];
	uint64_t va = (uintptr_t)probe & ~(HUGE_SIZE - 1);
	struct uodp_pm_scan_arg arg = {
		.size = sizeof(arg),
		.start = va,
		.end = va + HUGE_SIZE,
		.category_mask = UODP_PAGE_IS_HUGE,
		.return_mask = UODP_PAGE_IS_HUGE,
	};

	if (ctx->pagemap_fd < 0 || ctx->page_shift != 12)
		return false;
	/* vec_len 0 is a valid walk that reports nothing: it fails only
	 * where the ioctl is unknown (ENOTTY) or refused. */
	return ioctl(ctx->pagemap_fd, UODP_PAGEMAP_SCAN, &arg) >= 0;
}

/* Block index of @va in the region's huge table. */
static uint64_t hidx(const struct uodp_umem *umem, uint64_t va)
{
	return (va >> HUGE_SHIFT) - (umem->start >> HUGE_SHIFT);
}

/* Is @va's block entirely inside the region? */
static bool block_inside(const struct uodp_umem *umem, uint64_t va)
{
	uint64_t b = va & ~(HUGE_SIZE - 1);

	return b >= umem->start && b + HUGE_SIZE <= umem->end;
}

bool huge_candidate(const struct uodp_umem *umem, uint64_t va, uint64_t n)
{
	const struct uodp_ctx *ctx = umem->ctx;

	return ctx->scan_huge && !(ctx->flags & UODP_CTX_PIN) &&
	       !umem_watch_only(umem) && !(va & (HUGE_SIZE - 1)) &&
	       n == HUGE_PAGES(ctx) && block_inside(umem, va) &&
	       ctx_pagemap_ours(umem->ctx) && block_is_huge(ctx, va);
}

uint64_t huge_word_locked(const struct uodp_umem *umem, uint64_t va)
{
	ulock_assert_held((struct ulock *)&umem->lock);
	if (!umem_hmapped(umem) || !block_inside(umem, va))
		return 0;
	return pgt_get(&umem_huge(umem)->table, hidx(umem, va));
}

static int first_word(uint64_t idx, uint64_t *word, void *arg)
{
	(void)idx;
	(void)word;
	*(bool *)arg = true;
	return 1;
}

/*
 * Install a huge entry for the block at @va (a huge_candidate), region lock
 * held, retry check passed. Returns 1 when the block is now covered by a
 * huge entry, 0 when the caller must use base-page entries (the block has
 * some, or an old dirty huge word), HUGE_CHANGED when the frame changed
 * under the live entry, or -EWOULDBLOCK when the table needs a node
 * (refill and call again; note EWOULDBLOCK == EAGAIN on Linux).
 */
int huge_install_locked(struct uodp_umem *umem, uint64_t va, uint64_t pfn,
			unsigned access)
{
	struct umem_huge *h =
		umem_huge(umem); /* a candidate's block is inside */
	uint64_t i = hidx(umem, va), w = pgt_get(&h->table, i);
	uint64_t first = umem_page(umem, va);
	bool base = false;
	int r;

	ulock_assert_held(&umem->lock);
	if (w & W_ACCESS_MASK) {
		if (pfn && (w >> W_PFN_SHIFT) && (w >> W_PFN_SHIFT) != pfn)
			return HUGE_CHANGED;
		pgt_set(&h->table, i, w | access); /* slot exists */
		return 1;
	}
	if (w)
		return 0; /* dirty, unmapped: keep the base-page path */
	pgt_for_each(&umem->table, first, first + HUGE_PAGES(umem->ctx),
		     first_word, &base);
	if (base)
		return 0;
	r = pgt_set(&h->table, i, (pfn << W_PFN_SHIFT) | access);
	if (r)
		return r; /* -EWOULDBLOCK: no_alloc table needs a node */
	h->mapped++;
	umem->stats.pages_mapped += HUGE_PAGES(umem->ctx);
	return 1;
}

/* A base-page fault of @n pages from @va (inside one block, their frames
 * in @pfns, 0 where unknown) in a block with a live huge entry: upgrade
 * it. 1 when the block is covered, 0 when it has no live entry,
 * HUGE_CHANGED when a page's frame is not the entry's any more (a write
 * fault that broke a COW share split the block and gave the page a frame
 * of its own): then the entry must go, not gain access over old frames. */
int huge_covers_locked(struct uodp_umem *umem, uint64_t va, uint64_t n,
		       const uint64_t *pfns, unsigned access)
{
	uint64_t w, head, off = (va & (HUGE_SIZE - 1)) >> umem->ctx->page_shift;
	uint64_t i;

	ulock_assert_held(&umem->lock);
	w = huge_word_locked(umem, va);

	if (!(w & W_ACCESS_MASK))
		return 0;
	head = w >> W_PFN_SHIFT;
	for (i = 0; head && i < n; i++)
		if (pfns[i] && pfns[i] != head + off + i)
			return HUGE_CHANGED;
	if ((w & access) != access) /* a live word: the huge part exists */
		pgt_set(&umem_huge(umem)->table, hidx(umem, va), w | access);
	return 1;
}

struct hdrop {
	struct uodp_umem *umem;
	struct umem_huge *h;
	uint64_t pages;
};

static int drop_huge(uint64_t idx, uint64_t *word, void *argp)
{
	struct hdrop *a = argp;
	uint64_t w = *word;

	(void)idx;
	if (!(w & W_ACCESS_MASK))
		return 0;
	/* A writable entry: the whole block joins the dirty set, none of
	 * its pages taken yet. */
	*word = (w & (UODP_ACCESS_WRITE | W_DIRTY)) ? W_DIRTY : 0;
	if (*word)
		a->h->dirty++;
	a->h->mapped--;
	a->pages += HUGE_PAGES(a->umem->ctx);
	return 0;
}

uint64_t huge_drop_locked(struct uodp_umem *umem, uint64_t s, uint64_t e)
{
	struct hdrop a = { .umem = umem, .h = umem_huge(umem) };
	uint64_t from, to;

	ulock_assert_held(&umem->lock);
	if (!umem_hmapped(umem))
		return 0;
	from = (s >> HUGE_SHIFT) - (umem->start >> HUGE_SHIFT);
	to = ((e - 1) >> HUGE_SHIFT) - (umem->start >> HUGE_SHIFT) + 1;
	pgt_for_each(&a.h->table, from, to, drop_huge, &a);
	return a.pages;
}

/*
 * The dirty set of a region for uodp_umem_dirty_take(): dirty pages of
 * huge blocks merged with the base-page dirty set. Visits the huge table's
 * dirty blocks (none: one empty walk) and the base-page words between them
 * (both tables are sparse) and emits, in ascending order, each dirty page
 * once.
 */
struct hdirty {
	struct uodp_umem *umem;
	void **pages;
	size_t max, n;
	uint64_t block_end; /* base pages below it were handled */
};

static int emit_base(uint64_t idx, uint64_t *word, void *argp)
{
	struct hdirty *a = argp;

	if (!(*word & W_DIRTY))
		return 0;
	if (a->n == a->max)
		return 1;
	a->pages[a->n++] =
		(void *)(uintptr_t)(a->umem->start +
				    (idx << a->umem->ctx->page_shift));
	*word &= ~W_DIRTY;
	return 0;
}

/* Base pages of a dirty huge block are reported with it: clear theirs. */
static int clear_base_dirty(uint64_t idx, uint64_t *word, void *argp)
{
	(void)idx;
	(void)argp;
	*word &= ~W_DIRTY;
	return 0;
}

static int emit_block(uint64_t bi, uint64_t *word, void *argp)
{
	struct hdirty *a = argp;
	struct uodp_umem *umem = a->umem;
	uint64_t np = HUGE_PAGES(umem->ctx);
	uint64_t bva = ((umem->start >> HUGE_SHIFT) + bi) << HUGE_SHIFT;
	uint64_t first = umem_page(umem, bva), taken;

	if (!(*word & W_DIRTY) || (*word & W_ACCESS_MASK))
		return 0;
	taken = *word >> W_PFN_SHIFT;
	/* Base pages before this block first, in order; then those of the
	 * block's pages a partial take already reported: dirty again since
	 * (mapped writable as base pages, the block having no live entry,
	 * and dropped), they are reported on their own. */
	pgt_for_each(&umem->table, a->block_end, first + taken, emit_base, a);
	if (a->n == a->max)
		return 1;
	/* The rest are reported with the block. */
	pgt_for_each(&umem->table, first + taken, first + np, clear_base_dirty,
		     NULL);
	while (taken < np && a->n < a->max)
		a->pages[a->n++] =
			(void *)(uintptr_t)(bva +
					    (taken++ << umem->ctx->page_shift));
	a->block_end = first + np;
	if (taken < np) {
		*word = W_DIRTY | (taken << W_PFN_SHIFT);
		return 1;
	}
	*word = 0;
	umem_huge(umem)->dirty--;
	return 0;
}

size_t dirty_take_locked(struct uodp_umem *umem, void **pages, size_t max)
{
	struct hdirty a = { .umem = umem, .pages = pages, .max = max };
	struct umem_huge *h = umem_huge(umem);

	ulock_assert_held(&umem->lock);
	if (h)
		pgt_for_each(&h->table, 0, h->table.nslots, emit_block, &a);
	if (a.n < a.max)
		pgt_for_each(&umem->table, a.block_end, umem->table.nslots,
			     emit_base, &a);
	return a.n;
}

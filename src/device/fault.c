/* SPDX-License-Identifier: MIT */
/*
 * fault.c - device page faults: a miss in the device page table is
 * resolved through the engine with the retry protocol of uodp.h, then the
 * engine's entries are copied into the device page table.
 *
 * The window starts at the missing page (never before it: a hole or a
 * PROT_NONE page in front of the miss must not fail an access that does
 * not touch it) and covers the larger of the operation's remaining bytes
 * and the fault-around size, capped at FAULT_MAX pages and at the span.
 * It is mapped with the access the faulting operation needs; when the
 * engine fails the window as a whole (a neighbour the kernel monitor
 * refuses), the missing page is mapped alone, so that only the pages an
 * access touches decide its result. Entries are
 * installed while uodp_umem_map_and_lock() holds the region lock for us
 * (no invalidation ran since the pages were made present), and only for pages the
 * engine holds with at least that access; pages the engine could not map
 * (after a hole) stay missing and fault again if an access reaches them.
 *
 * Nothing is allocated under the region lock or the pt_lock (both are
 * waited for by invalidations, which may run on the kernel monitor's
 * thread): the device page-table leaves of the window are allocated first,
 * with no lock held (reserve_leaves()), and the install only writes words.
 */
#include <errno.h>
#include <stdlib.h>

#include "device/device.h"

#define FAULT_MAX 512	/* pages mapped by one fault at most */
#define NOMEM_RETRIES 4 /* see dev_fault() */

void (*dev_test_hook_before_install)(struct uodp_umem *umem);
void (*dev_test_hook_alloc)(struct uodp_umem *umem);

struct install_arg {
	struct span *sp;
	unsigned access;
	uint64_t installed;
	int err;
};

static int install_one(void *page, uint64_t entry, void *argp)
{
	struct install_arg *a = argp;
	uint64_t va = (uintptr_t)page;
	struct span *sp = a->sp;
	uint64_t idx = (va - sp->start) >> sp->dev->page_shift;
	uint64_t old;
	int r;

	if ((entry & a->access) != a->access)
		return 0;
	old = dpt_get(&sp->dpt, idx);
	if (old == ((va & ~(sp->dev->page_size - 1)) | (entry & DPT_ACCESS)))
		return 0;
	r = dpt_set(&sp->dpt, idx,
		    (va & ~(sp->dev->page_size - 1)) | (entry & DPT_ACCESS));
	if (r) {
		a->err = r;
		return 1;
	}
	a->installed++;
	return 0;
}

/* Install the engine's entries of [start, end); region lock held and the
 * retry check passed. */
static int install_locked(struct span *sp, uint64_t start, uint64_t end,
			  unsigned access, uint64_t *installed)
{
	struct install_arg a = { .sp = sp, .access = access };

	pthread_rwlock_wrlock(&sp->pt_lock);
	uodp_umem_for_each_entry(sp->umem, (void *)(uintptr_t)start,
				 end - start, install_one, &a);
	pthread_rwlock_unlock(&sp->pt_lock);
	*installed = a.installed;
	return a.err;
}

/* Make sure the device page table has the leaf of page @idx. Called with
 * no lock held; the allocation happens with none held either. The check
 * takes no lock (dpt_need_leaf()): one pt_lock round trip less per
 * fault. */
static int reserve_leaf(struct span *sp, uint64_t idx)
{
	uint64_t *leaf;
	bool used;

	if (!dpt_need_leaf(&sp->dpt, idx))
		return 0; /* leaves are freed only with the table */
	if (dev_test_hook_alloc)
		dev_test_hook_alloc(sp->umem);
	leaf = calloc(DPT_LEAF_SLOTS, sizeof(*leaf));
	if (!leaf)
		return -ENOMEM;
	pthread_rwlock_wrlock(&sp->pt_lock);
	used = dpt_add_leaf(&sp->dpt, idx, leaf);
	pthread_rwlock_unlock(&sp->pt_lock);
	if (!used)
		free(leaf); /* another fault was first */
	return 0;
}

/* The leaves of pages [start, end) of @sp (a fault window). */
static int reserve_leaves(struct span *sp, uint64_t start, uint64_t end)
{
	unsigned shift = sp->dev->page_shift;
	uint64_t first = (start - sp->start) >> shift;
	uint64_t last = (end - 1 - sp->start) >> shift, idx;
	int r;

	for (idx = first; idx <= last;
	     idx = ((idx >> DPT_LEAF_SHIFT) + 1) << DPT_LEAF_SHIFT) {
		r = reserve_leaf(sp, idx);
		if (r)
			return r;
	}
	return 0;
}

int dev_fault(struct uodp_dev *dev, struct span *sp, uint64_t va,
	      uint64_t len_hint, unsigned access)
{
	uint64_t ps = dev->page_size, start, end, want, installed;
	int64_t n;
	int r, nomem = 0;

	start = va & ~(ps - 1);
	want = (uint64_t)dev->fault_around * ps;
	if (len_hint + (va - start) > want)
		want = len_hint + (va - start);
	if (want > FAULT_MAX * ps)
		want = FAULT_MAX * ps;
	end = sp->end - start < want ? sp->end : start + want;
	if (start < sp->start || start >= sp->end)
		return -EFAULT;
	dev_count(dev, ST_PAGE_FAULTS, 1);
	r = reserve_leaves(sp, start, end);
	if (r)
		return r;
	for (;;) {
		/* The engine's one fault loop; it returns with the region
		 * lock held and the window's entries valid. */
		n = uodp_umem_map_and_lock(sp->umem, (void *)(uintptr_t)start,
					   end - start, access,
					   UODP_TIMEOUT_INFINITE);
		if (n == -ENOMEM && ++nomem < NOMEM_RETRIES) {
			/* The engine reports -ENOMEM when populating hit a
			 * hole that was mapped again before it looked
			 * (mincore): an address-space race, not a shortage.
			 * A real shortage persists over the retries. */
			dev_count(dev, ST_FAULT_RETRIES, 1);
			continue;
		}
		if (n < 0 && n != -ENODEV && end - start > ps) {
			/* The window is a guess; only the page the access
			 * touches decides its result. A neighbour the
			 * monitor refuses (-EOPNOTSUPP, -EBUSY) or that
			 * changes under us must not fail it: map that page
			 * alone (issue 12, finding 17). The access faults
			 * again, page by page, if it reaches further. */
			end = start + ps;
			dev_count(dev, ST_FAULT_RETRIES, 1);
			continue;
		}
		if (n < 0)
			return (int)n;
		if (dev_test_hook_before_install)
			dev_test_hook_before_install(sp->umem);
		r = install_locked(sp, start, start + (uint64_t)n * ps, access,
				   &installed);
		uodp_umem_unlock(sp->umem);
		if (r)
			return r;
		dev_count(dev, ST_PAGES_FAULTED, installed);
		return 0;
	}
}

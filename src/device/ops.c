/* SPDX-License-Identifier: MIT */
/*
 * ops.c - the synchronous operations (thin wrappers running a dma.c state
 * machine to completion on the caller's thread, faults included) and the
 * page-table snapshot, which reads the device page table only.
 */
#include <errno.h>
#include <string.h>

#include "device/device.h"

static int run_sync(struct uodp_dev *dev, struct dop *op, uint64_t *old)
{
	int r = dev_check(dev);

	if (r)
		return r;
	r = dop_prepare(dev, op);
	if (r) {
		dev_count_error(dev, r);
		return r;
	}
	/* Cancellation stays as the caller has it: the only waits of a
	 * run, the engine's fault (uodp_umem_map_and_lock) and the strict
	 * fence (dev_window_fence_enter), disable it themselves, so the
	 * warm path pays for no pthread_setcancelstate() pair. */
	dop_run(dev, op, NULL);
	r = op->status;
	if (old && !r)
		*old = op->old;
	dop_finish(dev, op);
	dev_count_error(dev, r);
	return r;
}

UODP_API int uodp_dev_read(struct uodp_dev *dev, uint32_t key, uint64_t va,
			   void *buf, size_t len)
{
	struct dop op = { .opcode = UODP_DEV_OP_READ,
			  .key = key,
			  .va = va,
			  .buf = buf,
			  .len = len };

	return run_sync(dev, &op, NULL);
}

UODP_API int uodp_dev_write(struct uodp_dev *dev, uint32_t key, uint64_t va,
			    const void *buf, size_t len)
{
	struct dop op = { .opcode = UODP_DEV_OP_WRITE,
			  .key = key,
			  .va = va,
			  .buf = (char *)buf,
			  .len = len };

	return run_sync(dev, &op, NULL);
}

UODP_API int uodp_dev_copy(struct uodp_dev *dev, uint32_t dst_key,
			   uint64_t dst_va, uint32_t src_key, uint64_t src_va,
			   size_t len)
{
	struct dop op = { .opcode = UODP_DEV_OP_COPY,
			  .key = dst_key,
			  .va = dst_va,
			  .key2 = src_key,
			  .va2 = src_va,
			  .len = len };

	return run_sync(dev, &op, NULL);
}

UODP_API int uodp_dev_fetch_add(struct uodp_dev *dev, uint32_t key, uint64_t va,
				uint64_t add, uint64_t *old)
{
	struct dop op = { .opcode = UODP_DEV_OP_FETCH_ADD,
			  .key = key,
			  .va = va,
			  .cmp_add = add };

	return run_sync(dev, &op, old);
}

UODP_API int uodp_dev_cmp_swap(struct uodp_dev *dev, uint32_t key, uint64_t va,
			       uint64_t compare, uint64_t swap, uint64_t *old)
{
	struct dop op = { .opcode = UODP_DEV_OP_CMP_SWAP,
			  .key = key,
			  .va = va,
			  .cmp_add = compare,
			  .swap = swap };

	return run_sync(dev, &op, old);
}

UODP_API int uodp_dev_prefetch(struct uodp_dev *dev, uint32_t key, uint64_t va,
			       size_t len, unsigned flags)
{
	struct dop op = { .key = key, .va = va, .len = len };

	if (flags & ~UODP_DEV_PREFETCH_WRITE)
		return dev_check(dev) ? dev_check(dev) : -EINVAL;
	op.opcode = (flags & UODP_DEV_PREFETCH_WRITE) ?
			    UODP_DEV_OP_PREFETCH_WRITE :
			    UODP_DEV_OP_PREFETCH;
	return run_sync(dev, &op, NULL);
}

static uint8_t page_state(uint64_t word)
{
	if (word & UODP_ACCESS_WRITE)
		return UODP_DEV_PAGE_WRITE;
	if (word & UODP_ACCESS_READ)
		return UODP_DEV_PAGE_READ;
	return UODP_DEV_PAGE_NONE;
}

/* States of pages [first, end) that lie in the span holding @first (or in
 * no span). Returns the address where it stopped; *@err -EDEADLK (and
 * @end) when the strict fence is up in a callback that it waits for. */
static uint64_t snapshot_span(struct uodp_dev *dev, struct dmr *mr,
			      uint64_t first, uint64_t end, uint8_t *states,
			      int *err)
{
	uint64_t ps = dev->page_size, stop, p, i;
	struct span *sp;
	int gerr; /* never set: no creation */

	sp = mr_span_get(dev, mr, first, false, &gerr);
	if (!sp || first < sp->start || first >= sp->end) {
		/* No child there: nothing mapped up to the next child. */
		stop = ((first >> IMPLICIT_SHIFT) + 1) << IMPLICIT_SHIFT;
		if (sp && first < sp->start)
			stop = sp->start;
		if (stop > end)
			stop = end;
		memset(states, UODP_DEV_PAGE_NONE, (stop - first) / ps);
		mr_span_put(mr, sp);
		return stop;
	}
	stop = end < sp->end ? end : sp->end;
	/* Strict ordering: the fence, as an access takes it. Once munmap
	 * has returned the monitor holds it until the invalidation is done,
	 * so nothing of the unmapped range is visible (issue 12, 8). */
	if ((dev->flags & UODP_DEV_STRICT) && dev_window_fence_enter(dev)) {
		mr_span_put(mr, sp);
		*err = -EDEADLK;
		return end;
	}
	pthread_rwlock_rdlock(&sp->pt_lock);
	for (p = first, i = 0; p < stop; p += ps, i++)
		states[i] = page_state(
			dpt_get(&sp->dpt, (p - sp->start) >> dev->page_shift));
	pthread_rwlock_unlock(&sp->pt_lock);
	if (dev->flags & UODP_DEV_STRICT)
		dev_window_fence_leave(dev);
	mr_span_put(mr, sp);
	return stop;
}

UODP_API int64_t uodp_dev_snapshot(struct uodp_dev *dev, uint32_t key,
				   uint64_t va, size_t len, uint8_t *states)
{
	uint64_t ps, first, end, p;
	struct dmr *mr;
	int r = dev_check(dev), cs;

	if (r)
		return r;
	if (!states && len)
		return -EINVAL;
	mr = mr_get(dev, key);
	if (!mr)
		return -ENOENT;
	r = mr_check_range(mr, va, len);
	if (r || !len)
		goto out;
	dev_count(dev, ST_SNAPSHOTS, 1);
	ps = dev->page_size;
	first = va & ~(ps - 1);
	end = (va + len + ps - 1) & ~(ps - 1);
	cs = dev_nocancel_begin(); /* the strict fence may wait */
	for (p = first; p < end;)
		p = snapshot_span(dev, mr, p, end, states + (p - first) / ps,
				  &r);
	dev_nocancel_end(cs);
	mr_put(dev, mr);
	return r ? r : (int64_t)((end - first) / ps);
out:
	mr_put(dev, mr);
	return r;
}

/* SPDX-License-Identifier: MIT */
/*
 * dma.c - the device's data path: operations as resumable state machines
 * (shared by the synchronous calls and the queue workers), the access
 * window, and the safe copy.
 *
 * An access window is: take the span's pt_lock for reading (and the fence
 * for reading under strict ordering), find how many pages from the current
 * address the device page table holds with the access needed, move the
 * bytes of those pages (at most WINDOW_MAX bytes), drop the locks. A miss
 * ends the step with a fault request; the caller resolves it (inline for
 * synchronous calls, on a fault worker for queued ones) and runs the
 * operation again from where it stopped.
 *
 * The bytes move with process_vm_readv/writev on our own pid: the kernel
 * walks the page tables at that instant and returns a short count or
 * EFAULT on a hole or a page the process may not access, so a racing
 * munmap/mprotect can never crash us. (UODP_DEV_FAST_COPY uses a guarded
 * memcpy instead, recover.c.) A failure after the device page table said
 * the page was there is a race with the application (or an mprotect that
 * nobody reported): the page is probed, and the operation completes with
 * -EFAULT (not mapped) or -EACCES (mapped but not accessible that way),
 * after at most RACE_RETRIES attempts when the probe finds it accessible.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include "device/device.h"

#define WINDOW_MAX (256 * 1024) /* bytes moved under one lock hold */
#define RACE_RETRIES 3

/* ------------------------------------------------------------------------ */
/* Moving bytes                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Move @n bytes between host @va and local @buf. Returns 0, or an error
 * with *@moved the bytes known to be moved and *@fail_va the host address
 * that failed.
 */
static int host_copy(struct uodp_dev *dev, bool to_host, uint64_t va, char *buf,
		     uint64_t n, uint64_t *moved, uint64_t *fail_va)
{
	struct iovec local = { buf, n }, remote = { (void *)va, n };
	ssize_t r;

	*moved = 0;
	if (dev->fast_copy) {
		if (to_host)
			r = rcv_copy((void *)va, buf, n, va, va + n, fail_va);
		else
			r = rcv_copy(buf, (void *)va, n, va, va + n, fail_va);
		return (int)r;
	}
	if (to_host)
		r = process_vm_writev(dev->pid, &local, 1, &remote, 1, 0);
	else
		r = process_vm_readv(dev->pid, &local, 1, &remote, 1, 0);
	if (r == (ssize_t)n)
		return 0;
	if (r >= 0) {
		*moved = (uint64_t)r;
		*fail_va = va + (uint64_t)r;
		return -EFAULT;
	}
	*fail_va = va;
	return errno == EFAULT ? -EFAULT : -errno;
}

/* Why host memory at @va failed: -EFAULT when it is not mapped (or cannot
 * even be read), -EACCES when it is mapped but not accessible, 0 when a
 * read works now (so a write failed for want of write permission, or the
 * memory came back). */
static int probe(struct uodp_dev *dev, uint64_t va)
{
	unsigned char vec;
	char c;
	struct iovec local = { &c, 1 }, remote = { (void *)va, 1 };
	uint64_t page = va & ~(dev->page_size - 1);

	if (process_vm_readv(dev->pid, &local, 1, &remote, 1, 0) == 1)
		return 0;
	if (mincore((void *)page, dev->page_size, &vec) && errno == ENOMEM)
		return -EFAULT;
	return -EACCES;
}

/* After a failed copy at @fail_va: the error to complete with, or 0 to
 * try again. */
static int race_verdict(struct uodp_dev *dev, struct dop *op, bool to_host,
			uint64_t fail_va)
{
	int r;

	dev_count(dev, ST_RACES, 1);
	r = probe(dev, fail_va);
	if (r)
		return r;
	if (++op->races < RACE_RETRIES)
		return 0;
	return to_host ? -EACCES : -EFAULT;
}

static void window_lock(struct uodp_dev *dev, struct span *sp)
{
	if (dev->flags & UODP_DEV_STRICT)
		pthread_rwlock_rdlock(&dev->fence_lock);
	pthread_rwlock_rdlock(&sp->pt_lock);
}

static void window_unlock(struct uodp_dev *dev, struct span *sp)
{
	pthread_rwlock_unlock(&sp->pt_lock);
	if (dev->flags & UODP_DEV_STRICT)
		pthread_rwlock_unlock(&dev->fence_lock);
}

/* Bytes from @va (inside @sp, at most @lim) whose pages the device page
 * table holds with @need. pt_lock held. */
static uint64_t window_avail(struct uodp_dev *dev, struct span *sp, uint64_t va,
			     uint64_t lim, uint64_t need)
{
	uint64_t ps = dev->page_size;
	uint64_t idx = (va - sp->start) >> dev->page_shift;
	uint64_t page = va & ~(ps - 1), avail = 0;

	while (avail < lim && (dpt_get(&sp->dpt, idx) & need) == need) {
		avail = page + ps - va;
		page += ps;
		idx++;
	}
	return avail < lim ? avail : lim;
}

/* The span holding @va with a reference; -EFAULT for addresses no span
 * can hold (the implicit region's first page). */
static struct span *span_at(struct uodp_dev *dev, struct dmr *mr, uint64_t va,
			    int *err)
{
	struct span *sp = mr_span_get(dev, mr, va, true, err);

	if (!sp)
		return NULL;
	if (va < sp->start || va >= sp->end) {
		mr_span_put(mr, sp);
		*err = -EFAULT;
		return NULL;
	}
	return sp;
}

/*
 * Move host [va, va + len) of @mr from/to @buf, resuming at *@done.
 * Returns 0 when all moved, 1 with *@fr filled on a miss, or an error.
 */
static int xfer(struct uodp_dev *dev, struct dop *op, struct dmr *mr,
		uint64_t va, char *buf, uint64_t len, bool to_host,
		uint64_t *done, struct fault_req *fr)
{
	uint64_t need = to_host ? UODP_ACCESS_WRITE : UODP_ACCESS_READ;
	uint64_t cur, rem, lim, n, moved, fail_va;
	struct span *sp;
	int r;

	while (*done < len) {
		cur = va + *done;
		rem = len - *done;
		sp = span_at(dev, mr, cur, &r);
		if (!sp)
			return r;
		lim = rem;
		if (lim > sp->end - cur)
			lim = sp->end - cur;
		if (lim > WINDOW_MAX)
			lim = WINDOW_MAX;
		window_lock(dev, sp);
		n = window_avail(dev, sp, cur, lim, need);
		if (!n) {
			window_unlock(dev, sp);
			fr->mr = mr;
			fr->sp = sp;
			fr->va = cur;
			fr->len = rem;
			fr->access = to_host ? UODP_ACCESS_ALL :
					       UODP_ACCESS_READ;
			return 1;
		}
		r = host_copy(dev, to_host, cur, buf + *done, n, &moved,
			      &fail_va);
		window_unlock(dev, sp);
		mr_span_put(mr, sp);
		*done += moved;
		dev_count(dev, to_host ? ST_BYTES_WRITTEN : ST_BYTES_READ,
			  r ? moved : n);
		if (!r) {
			*done += n - moved;
			op->races = 0;
			continue;
		}
		if (r != -EFAULT)
			return r;
		r = race_verdict(dev, op, to_host, fail_va);
		if (r)
			return r;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Operations                                                                */
/* ------------------------------------------------------------------------ */

static int atomic_step(struct uodp_dev *dev, struct dop *op,
		       struct fault_req *fr)
{
	struct span *sp;
	uint64_t e, old = 0;
	int r;

	for (;;) {
		sp = span_at(dev, op->mr, op->va, &r);
		if (!sp)
			return r;
		window_lock(dev, sp);
		e = dpt_get(&sp->dpt, (op->va - sp->start) >> dev->page_shift);
		if (!(e & UODP_ACCESS_WRITE) || !(e & UODP_ACCESS_READ)) {
			window_unlock(dev, sp);
			fr->mr = op->mr;
			fr->sp = sp;
			fr->va = op->va;
			fr->len = sizeof(uint64_t);
			fr->access = UODP_ACCESS_ALL;
			return 1;
		}
		if (op->opcode == UODP_DEV_OP_FETCH_ADD)
			r = rcv_fetch_add((uint64_t *)op->va, op->cmp_add,
					  &old);
		else
			r = rcv_cmp_swap((uint64_t *)op->va, op->cmp_add,
					 op->swap, &old);
		window_unlock(dev, sp);
		mr_span_put(op->mr, sp);
		if (!r) {
			op->old = old;
			op->done = sizeof(uint64_t);
			dev_count(dev, ST_BYTES_READ, sizeof(uint64_t));
			dev_count(dev, ST_BYTES_WRITTEN, sizeof(uint64_t));
			return 0;
		}
		r = race_verdict(dev, op, true, op->va);
		if (r)
			return r;
	}
}

static int prefetch_step(struct uodp_dev *dev, struct dop *op,
			 struct fault_req *fr)
{
	bool w = op->opcode == UODP_DEV_OP_PREFETCH_WRITE;
	uint64_t need = w ? UODP_ACCESS_WRITE : UODP_ACCESS_READ;
	uint64_t cur, rem, lim, n;
	struct span *sp;
	int r;

	while (op->done < op->len) {
		cur = op->va + op->done;
		rem = op->len - op->done;
		sp = span_at(dev, op->mr, cur, &r);
		if (!sp)
			return r;
		lim = rem < sp->end - cur ? rem : sp->end - cur;
		pthread_rwlock_rdlock(&sp->pt_lock);
		n = window_avail(dev, sp, cur, lim, need);
		pthread_rwlock_unlock(&sp->pt_lock);
		if (!n) {
			fr->mr = op->mr;
			fr->sp = sp;
			fr->va = cur;
			fr->len = rem;
			fr->access = w ? UODP_ACCESS_ALL : UODP_ACCESS_READ;
			return 1;
		}
		mr_span_put(op->mr, sp);
		op->done += n;
	}
	return 0;
}

static int copy_step(struct uodp_dev *dev, struct dop *op, struct fault_req *fr)
{
	int r;

	while (op->done < op->len) {
		if (op->phase == 0) {
			op->chunk = op->len - op->done;
			if (op->chunk > DOP_BOUNCE)
				op->chunk = DOP_BOUNCE;
			op->chunk_done = 0;
			op->phase = 1;
		}
		if (op->phase == 1) {
			r = xfer(dev, op, op->mr2, op->va2 + op->done,
				 op->bounce, op->chunk, false, &op->chunk_done,
				 fr);
			if (r)
				return r;
			op->chunk_done = 0;
			op->phase = 2;
		}
		r = xfer(dev, op, op->mr, op->va + op->done, op->bounce,
			 op->chunk, true, &op->chunk_done, fr);
		if (r)
			return r;
		op->done += op->chunk;
		op->phase = 0;
	}
	return 0;
}

/* One step: 0 finished (status set), 1 miss (*fr filled). */
static int dop_step(struct uodp_dev *dev, struct dop *op, struct fault_req *fr)
{
	int r;

	switch (op->opcode) {
	case UODP_DEV_OP_READ:
		r = xfer(dev, op, op->mr, op->va, op->buf, op->len, false,
			 &op->done, fr);
		break;
	case UODP_DEV_OP_WRITE:
		r = xfer(dev, op, op->mr, op->va, op->buf, op->len, true,
			 &op->done, fr);
		break;
	case UODP_DEV_OP_COPY:
		r = copy_step(dev, op, fr);
		break;
	case UODP_DEV_OP_FETCH_ADD:
	case UODP_DEV_OP_CMP_SWAP:
		r = atomic_step(dev, op, fr);
		break;
	default:
		r = prefetch_step(dev, op, fr);
		break;
	}
	if (r == 1)
		return 1;
	op->status = r;
	return 0;
}

int dop_fault(struct uodp_dev *dev, struct fault_req *fr)
{
	int r = dev_fault(dev, fr->sp, fr->va, fr->len, fr->access);

	mr_span_put(fr->mr, fr->sp);
	fr->sp = NULL;
	return r;
}

int dop_run(struct uodp_dev *dev, struct dop *op, struct fault_req *fr)
{
	struct fault_req f;
	int r;

	for (;;) {
		if (!dop_step(dev, op, &f))
			return 0;
		if (fr) {
			*fr = f;
			return 1;
		}
		r = dop_fault(dev, &f);
		if (r) {
			op->status = r;
			return 0;
		}
	}
}

/* The right an opcode needs on its target region. */
static unsigned right_of(enum uodp_dev_opcode opc)
{
	switch (opc) {
	case UODP_DEV_OP_READ:
	case UODP_DEV_OP_PREFETCH:
		return UODP_DEV_ACCESS_READ;
	case UODP_DEV_OP_WRITE:
	case UODP_DEV_OP_COPY:
	case UODP_DEV_OP_PREFETCH_WRITE:
		return UODP_DEV_ACCESS_WRITE;
	case UODP_DEV_OP_FETCH_ADD:
	case UODP_DEV_OP_CMP_SWAP:
		return UODP_DEV_ACCESS_ATOMIC;
	}
	return 0;
}

static const int op_counter[] = {
	[UODP_DEV_OP_READ] = ST_READS,
	[UODP_DEV_OP_WRITE] = ST_WRITES,
	[UODP_DEV_OP_COPY] = ST_COPIES,
	[UODP_DEV_OP_FETCH_ADD] = ST_ATOMICS,
	[UODP_DEV_OP_CMP_SWAP] = ST_ATOMICS,
	[UODP_DEV_OP_PREFETCH] = ST_PREFETCHES,
	[UODP_DEV_OP_PREFETCH_WRITE] = ST_PREFETCHES,
};

static bool is_atomic(enum uodp_dev_opcode opc)
{
	return opc == UODP_DEV_OP_FETCH_ADD || opc == UODP_DEV_OP_CMP_SWAP;
}

/*
 * Check the arguments (in the order the header lists the errors: arguments,
 * keys, rights, range) and take the references. op->key/key2 name the
 * regions; everything else is reset here.
 */
int dop_prepare(struct uodp_dev *dev, struct dop *op)
{
	unsigned right = right_of(op->opcode);
	int r;

	op->mr = op->mr2 = NULL;
	op->bounce = NULL;
	op->done = op->chunk = op->chunk_done = 0;
	op->phase = 0;
	op->races = 0;
	op->status = 0;
	if (!right)
		return -EINVAL;
	if ((op->opcode == UODP_DEV_OP_READ ||
	     op->opcode == UODP_DEV_OP_WRITE) &&
	    op->len && !op->buf)
		return -EINVAL;
	if (is_atomic(op->opcode)) {
		if (op->va & (sizeof(uint64_t) - 1))
			return -EINVAL;
		op->len = sizeof(uint64_t);
	}
	op->mr = mr_get(dev, op->key);
	if (!op->mr)
		return -ENOENT;
	if (op->opcode == UODP_DEV_OP_COPY) {
		op->mr2 = mr_get(dev, op->key2);
		if (!op->mr2) {
			r = -ENOENT;
			goto err;
		}
	}
	r = -EPERM;
	if (!(op->mr->access & right))
		goto err;
	if (op->mr2 && !(op->mr2->access & UODP_DEV_ACCESS_READ))
		goto err;
	r = mr_check_range(op->mr, op->va, op->len);
	if (!r && op->mr2)
		r = mr_check_range(op->mr2, op->va2, op->len);
	if (r)
		goto err;
	if (op->opcode == UODP_DEV_OP_COPY && op->len) {
		op->bounce =
			malloc(op->len < DOP_BOUNCE ? op->len : DOP_BOUNCE);
		if (!op->bounce) {
			r = -ENOMEM;
			goto err;
		}
	}
	dev_count(dev, ST_OPS, 1);
	dev_count(dev, op_counter[op->opcode], 1);
	return 0;
err:
	dop_finish(dev, op);
	return r;
}

void dop_finish(struct uodp_dev *dev, struct dop *op)
{
	if (op->mr)
		mr_put(dev, op->mr);
	if (op->mr2)
		mr_put(dev, op->mr2);
	free(op->bounce);
	op->mr = op->mr2 = NULL;
	op->bounce = NULL;
}

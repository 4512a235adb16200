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
 * memcpy instead, recover.c; so does a device whose process_vm_* a
 * sandbox forbids.) A failure after the device page table said the page
 * was there is a race with the application, a change nobody reported (an
 * mprotect, a truncated file), or the caller's own bad buffer: the host
 * page is probed the way a fresh fault maps it (so a stale entry fails
 * with the error a fresh fault gives), then the caller's byte; the
 * operation completes with -EFAULT (not mapped, past the end of a file, or
 * the caller's buffer) or -EACCES (not accessible that way), or tries
 * again, at most RACE_RETRIES times, when both are fine now.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "device/device.h"

#define WINDOW_MAX (256 * 1024) /* bytes moved under one lock hold */
#define RACE_RETRIES 3

/* ------------------------------------------------------------------------ */
/* Moving bytes                                                              */
/* ------------------------------------------------------------------------ */

/* process_vm_readv/writev refused by a sandbox (seccomp returns EPERM or
 * ENOSYS for them; on our own pid nothing else can refuse them). */
static bool pvm_forbidden(int err)
{
	return err == EPERM || err == ENOSYS;
}

bool dev_pvm_works(void)
{
	char a = 1, b = 0;
	struct iovec local = { &b, 1 }, remote = { &a, 1 };

	if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == 1)
		return true;
	return !pvm_forbidden(errno);
}

/*
 * Move @n bytes between host @va and local @buf. Returns 0, or an error
 * with *@moved the bytes known to be moved and *@fail_va the host address
 * that failed; *@local_bad when the caller's buffer is known to be the
 * culprit (the guarded copy tells which side faulted; process_vm_* does
 * not, race_verdict() finds out).
 */
static int host_copy(struct uodp_dev *dev, bool to_host, uint64_t va, char *buf,
		     uint64_t n, uint64_t *moved, uint64_t *fail_va,
		     bool *local_bad)
{
	struct iovec local = { buf, n }, remote = { (void *)va, n };
	uintptr_t lb = (uintptr_t)buf;
	uint64_t fa;
	ssize_t r;

	*moved = 0;
	*local_bad = false;
	if (atomic_load_explicit(&dev->fast_copy, memory_order_relaxed)) {
		if (to_host)
			r = rcv_copy((void *)va, buf, n, va, va + n, lb, lb + n,
				     &fa);
		else
			r = rcv_copy(buf, (void *)va, n, va, va + n, lb, lb + n,
				     &fa);
		if (!r)
			return 0;
		if (fa >= va && fa < va + n) {
			*fail_va = fa;
		} else {
			*local_bad = true;
			*fail_va = va + (fa - lb);
		}
		return -EFAULT;
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
	if (errno == EFAULT)
		return -EFAULT;
	if (pvm_forbidden(errno)) {
		/* A sandbox installed after uodp_dev_open() (it probed):
		 * go on with the guarded copy where there is one. */
		if (!rcv_available())
			return -ENOSYS;
		atomic_store(&dev->fast_copy, true);
		return host_copy(dev, to_host, va, buf, n, moved, fail_va,
				 local_bad);
	}
	return errno == ENOMEM ? -ENOMEM : -EFAULT;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/*
 * Why host memory at @va failed: fault its page in the way the device
 * wanted to use it (what a fresh device fault does through the engine),
 * so a stale entry fails with the error a fresh fault gives:
 * -EFAULT when it is not mapped or a file page past the end of its file
 * (SIGBUS), -EACCES when the process may not access it that way, 0 when
 * it works now (the memory came back: try again).
 */
static int probe(struct uodp_dev *dev, uint64_t va, bool write)
{
	void *page = (void *)(uintptr_t)(va & ~(dev->page_size - 1));
	unsigned char vec;
	int tries = 0;

	while (madvise(page, dev->page_size,
		       write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ)) {
		switch (errno) {
		case EINTR:
		case EAGAIN:
			if (++tries < 100)
				continue;
			return -EFAULT;
		case ENOMEM:
			/* a hole, or mapped again since (then retry) */
			if (mincore(page, dev->page_size, &vec) &&
			    errno == ENOMEM)
				return -EFAULT;
			return 0;
		case EINVAL: /* PROT_NONE, write to read-only, VM_IO */
		case EPERM:
			return -EACCES;
		default: /* EFAULT (SIGBUS: past the end), EHWPOISON */
			return -EFAULT;
		}
	}
	return 0;
}

/*
 * Is the caller's buffer byte @b good for the copy (read from for a write
 * to the host, written to for a read, with the host byte @h it should
 * receive)? Asked only after the host byte was found accessible.
 */
static bool local_ok(struct uodp_dev *dev, bool to_host, char *b, char *h)
{
	struct iovec local = { b, 1 }, remote = { h, 1 };
	uintptr_t lb = (uintptr_t)b;
	uint64_t fa;
	char c;

	if (rcv_available()) {
		if (to_host)
			return !rcv_copy(&c, b, 1, 0, 0, lb, lb + 1, &fa);
		return !rcv_copy(b, h, 1, (uintptr_t)h, (uintptr_t)h + 1, lb,
				 lb + 1, &fa) ||
		       fa != lb;
	}
	if (to_host) {
		local.iov_base = &c;
		remote.iov_base = b;
	}
	(void)dev;
	return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == 1;
}

/*
 * After a failed copy at host @fail_va (and caller's byte @lbuf, NULL for
 * atomics): the error to complete with, or 0 to try again.
 */
static int race_verdict(struct uodp_dev *dev, struct dop *op, bool to_host,
			uint64_t fail_va, char *lbuf, bool local_bad)
{
	int r;

	if (local_bad)
		return -EFAULT; /* the caller's buffer */
	dev_count(dev, ST_RACES, 1);
	r = probe(dev, fail_va, to_host);
	if (r)
		return r;
	if (lbuf && !local_ok(dev, to_host, lbuf, (char *)(uintptr_t)fail_va))
		return -EFAULT; /* the caller's buffer */
	if (++op->races < RACE_RETRIES)
		return 0;
	return -EFAULT;
}

/* 0, or -EDEADLK (nothing held: see dev_window_fence_enter()). */
static int window_lock(struct uodp_dev *dev, struct span *sp)
{
	int r;

	if (dev->flags & UODP_DEV_STRICT) {
		r = dev_window_fence_enter(dev);
		if (r)
			return r;
	}
	pthread_rwlock_rdlock(&sp->pt_lock);
	return 0;
}

static void window_unlock(struct uodp_dev *dev, struct span *sp)
{
	pthread_rwlock_unlock(&sp->pt_lock);
	if (dev->flags & UODP_DEV_STRICT)
		dev_window_fence_leave(dev);
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
	bool local_bad;
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
		/* A miss seen without the lock goes straight to its fault
		 * (dpt_peek()): a first touch pays no window for it. */
		if ((dpt_peek(&sp->dpt, (cur - sp->start) >> dev->page_shift) &
		     need) != need) {
			n = 0;
		} else {
			r = window_lock(dev, sp);
			if (r) {
				mr_span_put(mr, sp);
				return r;
			}
			n = window_avail(dev, sp, cur, lim, need);
			if (!n)
				window_unlock(dev, sp);
		}
		if (!n) {
			fr->mr = mr;
			fr->sp = sp;
			fr->va = cur;
			fr->len = rem;
			fr->access = to_host ? UODP_ACCESS_ALL :
					       UODP_ACCESS_READ;
			return 1;
		}
		r = host_copy(dev, to_host, cur, buf + *done, n, &moved,
			      &fail_va, &local_bad);
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
		r = race_verdict(dev, op, to_host, fail_va,
				 buf + (fail_va - va), local_bad);
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
		r = window_lock(dev, sp);
		if (r) {
			mr_span_put(op->mr, sp);
			return r;
		}
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
		r = race_verdict(dev, op, true, op->va, NULL, false);
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
		/* The strict fence too: once munmap returned, a prefetch
		 * must not report pages the monitor is invalidating. */
		r = window_lock(dev, sp);
		if (r) {
			mr_span_put(op->mr, sp);
			return r;
		}
		n = window_avail(dev, sp, cur, lim, need);
		window_unlock(dev, sp);
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

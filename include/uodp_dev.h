/* SPDX-License-Identifier: MIT */
/*
 * uodp_dev.h - a software DMA device that uses memory only through the uodp
 * engine (include/uodp.h), the way an RDMA adapter uses on-demand paging.
 *
 * A device owns one engine context (struct uodp_ctx) and mirrors the memory
 * of registered regions in its own device page table. Regions are named by
 * 32-bit keys. Every device access looks its pages up in that table; a miss
 * is a page fault, resolved through the engine (uodp_umem_map_and_lock()),
 * which maps a window of pages from the miss on. The engine's invalidate
 * callback clears the device page table and waits for device accesses in
 * flight before it returns.
 *
 * The device moves data with process_vm_readv()/process_vm_writev() on its
 * own process, so an application that unmaps or mprotects memory while the
 * device uses it gets error completions, never a crash. 8-byte atomics (and
 * copies with UODP_DEV_FAST_COPY) use a guarded instruction: a fault inside
 * it, on the host memory or on the caller's buffer, is caught by the
 * device's SIGSEGV/SIGBUS handler and turned into an error, whatever the
 * calling thread's signal mask; other faults go to the application's own
 * handler or disposition, SIG_IGN included (docs/DEVICE.md).
 *
 * Conventions for every function below:
 *  - errors are negative errno values (errno itself is not used); a call
 *    that fails because of a bad argument changes nothing;
 *  - operations that fail part way (-EFAULT, -EACCES) may have
 *    transferred some bytes before the failing page: a read's buffer and a
 *    write's target are then unspecified from that page on, never beyond
 *    the range of the operation;
 *  - every function may be called from any thread, concurrently, unless it
 *    says otherwise; a device and its objects must not be used after
 *    uodp_dev_close();
 *  - no function is a cancellation point: those that wait (for
 *    operations in flight, queued requests, completions, the strict fence)
 *    run with cancellation disabled, so a cancelled thread never leaves a
 *    device lock or reference held (a cancel acts after the call returns);
 *  - after fork() the child may not use the parent's devices: every call
 *    fails with -ECHILD (open a new device in the child);
 *  - one errno means one thing in this header (uodp_dev_strerror() gives
 *    the message); engine errors that mean something else here are
 *    translated before they are returned:
 *      -EINVAL  NULL device or pointer argument, unknown flag or opcode,
 *               misaligned atomic address, a range to register that
 *               wraps or leaves the user address space (the engine's
 *               -ERANGE there);
 *      -ENOENT  no region has this key (never registered, or
 *               deregistered: a dead key stays dead, it is never issued
 *               again by the device);
 *      -ERANGE  the range of an operation is not inside the key's region
 *               (a range that wraps around the address space included);
 *      -EPERM   the key's rights do not allow the operation (and nothing
 *               else: a forbidden userfaultfd is -ENOSYS here);
 *      -EFAULT  memory in the range is not mapped by the process (or was
 *               unmapped during the operation, or is a file page past
 *               the end of its file), or the caller's own buffer is not
 *               valid memory;
 *      -EACCES  the process may not access the memory that way (a write
 *               to read-only memory, any access to PROT_NONE memory);
 *      -ENOMEM  out of memory;
 *      -ENOSPC  no room: no key value left (reg), the queue is full (post);
 *      -ENODEV  the device's context is being torn down (only a call that
 *               races uodp_dev_close(), which is not allowed, sees it);
 *      -ECHILD  the device was opened by the parent of this process;
 *      -ENOSYS  a kernel facility the device needs is missing or forbidden
 *               (userfaultfd for the kernel monitor; process_vm_readv/
 *               writev where no guarded copy exists, see uodp_dev_open());
 *      -EBUSY   (kernel monitor) another userfaultfd watches the memory;
 *      -EOPNOTSUPP (kernel monitor) the memory is of a kind the monitor
 *               cannot follow (see uodp_umem_map_and_lock() in uodp.h);
 *      -EBADF   (kernel monitor) the monitor's descriptors were closed or
 *               replaced by someone else (a daemon closing every
 *               descriptor it does not know): the monitor is gone, faults
 *               and registrations are refused rather than served without
 *               invalidations;
 *      -EAGAIN  no thread could be created (transient);
 *      -EMFILE, -ENFILE  no file descriptor for the kernel monitor;
 *      -EDEADLK called from an invalidation callback of an engine
 *               context (the device's, or another driver's).
 *    Each function lists the ones it returns.
 */
#ifndef UODP_DEV_H
#define UODP_DEV_H

#include <stddef.h>
#include <stdint.h>

#include "uodp.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uodp_dev;
struct uodp_dev_queue;

/* ------------------------------------------------------------------------ */
/* The device                                                                */
/* ------------------------------------------------------------------------ */

/* Invalidations come only from uodp_invalidate_range*() on the device's
 * context (uodp_dev_ctx()); no kernel monitor (UODP_CTX_MANUAL). */
#define UODP_DEV_MANUAL (1u << 0)
/* Strict ordering (UODP_CTX_STRICT): the kernel monitor fences the device
 * (new accesses pause, those in flight drain) before it reads an event. */
#define UODP_DEV_STRICT (1u << 1)
/* Data path: memcpy inside a guarded window instead of process_vm_readv/
 * writev (faster for small transfers; x86-64 only, ignored elsewhere). */
#define UODP_DEV_FAST_COPY (1u << 2)
#define UODP_DEV_FLAGS_ALL \
	(UODP_DEV_MANUAL | UODP_DEV_STRICT | UODP_DEV_FAST_COPY)

#define UODP_DEV_FAULT_AROUND_DEFAULT 16u /* pages */
#define UODP_DEV_FAULT_AROUND_MAX 512u	  /* pages */

struct uodp_dev_attr {
	unsigned flags;		/* UODP_DEV_* */
	unsigned fault_around;	/* pages mapped from a miss on; 0: default */
	unsigned exec_workers;	/* queue workers running requests; 0: 2 */
	unsigned fault_workers; /* queue workers resolving faults; 0: 1 */
	/* Share the engine context of this open device instead of creating
	 * one (NULL: own context). Devices mirroring the same memory with
	 * the kernel monitor must share one: the kernel allows a single
	 * userfaultfd per mapping (-EBUSY otherwise). MANUAL and STRICT must
	 * be as the other device's. */
	struct uodp_dev *share;
};

/*
 * Open a device with its own engine context. @attr may be NULL (defaults:
 * kernel monitor, fault-around 16 pages, 2 + 1 workers). Worker threads
 * start with the first queue, with their own signal mask from creation
 * on (every asynchronous signal blocked, SIGSEGV/SIGBUS unblocked,
 * whatever the creating thread's; that thread's mask is as it was when
 * the call returns), and are named uodp-dev-exec / uodp-dev-fault.
 * A sandbox that forbids process_vm_readv/writev (seccomp) is detected
 * here, once: the device then copies with the guarded copy, as with
 * UODP_DEV_FAST_COPY (x86-64), or, where there is none, fails to open.
 * Errors: -EINVAL (@out NULL, unknown flag, STRICT with MANUAL,
 * fault_around > UODP_DEV_FAULT_AROUND_MAX, more than 64 workers of a
 * kind, @share not an open device or with other MANUAL/STRICT flags),
 * -ENOMEM, -ECHILD (@share opened by the parent), -ENOSYS (the kernel
 * lacks MADV_POPULATE_READ/WRITE, Linux < 5.14; or process_vm_readv/writev
 * are forbidden and there is no guarded copy), -EDEADLK (called from an
 * invalidation callback). Without UODP_DEV_MANUAL a missing or forbidden
 * userfaultfd shows at the first registration (-ENOSYS).
 */
UODP_API int uodp_dev_open(const struct uodp_dev_attr *attr,
			   struct uodp_dev **out);

/*
 * Close a device: destroy its queues (waiting for the requests they hold),
 * deregister its regions, destroy its context (the last device sharing it
 * does). No other call on the device
 * may run concurrently or follow. It never closes or writes a descriptor
 * it does not own (the context's descriptors are checked by the engine
 * before use). Errors: -EINVAL (NULL), -ECHILD (in a forked child:
 * nothing is freed), -EDEADLK (from an invalidation callback, deferred
 * ones included: nothing is closed).
 */
UODP_API int uodp_dev_close(struct uodp_dev *dev);

/* The engine context of the device (for uodp_invalidate_range*() and
 * uodp_ctx_* calls), or NULL for NULL. Owned by the device (and the devices
 * sharing it): never destroy it yourself. */
UODP_API struct uodp_ctx *uodp_dev_ctx(const struct uodp_dev *dev);

/* ------------------------------------------------------------------------ */
/* Memory regions                                                            */
/* ------------------------------------------------------------------------ */

#define UODP_DEV_ACCESS_READ (1u << 0)	 /* device may read the memory */
#define UODP_DEV_ACCESS_WRITE (1u << 1)	 /* device may write it */
#define UODP_DEV_ACCESS_ATOMIC (1u << 2) /* device may run atomics on it */
#define UODP_DEV_ACCESS_ALL \
	(UODP_DEV_ACCESS_READ | UODP_DEV_ACCESS_WRITE | UODP_DEV_ACCESS_ATOMIC)

/*
 * Register [addr, addr + len) under a new key, O(1) in @len (nothing is
 * mapped or allocated per page). Operations must stay inside these exact
 * bytes. The memory need not be mapped yet.
 * O(1) in the number of keys too (a free list of slots). A key value is
 * never issued twice by a device: a slot retires after its 255th key, so
 * a device issues at most (2^24 - 1) x 255 keys (about 4.3e9) in its life.
 * Errors: -EINVAL (@key NULL, @len 0, @addr + @len wraps or leaves the
 * user address space, @access 0 or unknown bits), -ENOMEM, -ENOSPC (no
 * key value left), -ECHILD, -EDEADLK (called from an invalidation
 * callback); with the kernel monitor also -EBADF, -ENOSYS (userfaultfd missing or
 * forbidden: use UODP_DEV_MANUAL), -EBUSY (another userfaultfd watches the
 * memory), -EOPNOTSUPP (the range holds SysV shared memory), -EMFILE /
 * -ENFILE, -EAGAIN (no monitor thread could be created).
 */
UODP_API int uodp_dev_reg_mr(struct uodp_dev *dev, uint64_t addr, uint64_t len,
			     unsigned access, uint32_t *key);

/*
 * Register the implicit region: a key covering the whole user address
 * space of four-level paging, [0, 2^47 - page size), on every machine.
 * With five-level paging (LA57, user space up to 2^56) the kernel maps
 * above 2^47 only where the application gives mmap() a hint above it:
 * such memory is outside the implicit key (its operations fail with
 * -ERANGE, as any outside a key's region); register it with
 * uodp_dev_reg_mr(). Engine regions ("children") are created
 * lazily, one per aligned 1 GiB, when a fault first reaches them, and
 * released by uodp_dev_mr_trim() (and on deregistration) once idle. With
 * the kernel monitor a child watches only the mappings its faults reach
 * (UODP_ACCESS_LAZY_WATCH of uodp.h), not its whole GiB.
 * Errors: -EINVAL (@key NULL, @access 0 or unknown bits), -ENOMEM,
 * -ENOSPC, -ECHILD. (The children's registration errors come with the
 * operations that create them.)
 */
UODP_API int uodp_dev_reg_implicit_mr(struct uodp_dev *dev, unsigned access,
				      uint32_t *key);

/*
 * Deregister a key: new operations on it fail with -ENOENT at once; the
 * call then waits for operations in flight on it (and queued requests
 * holding it) and releases its engine regions.
 * Queued requests finish on the workers whether or not anyone polls, so
 * the wait is bounded by their run time.
 * Errors: -EINVAL (NULL), -ENOENT, -ECHILD, -EDEADLK (from a callback of
 * a context without UODP_CTX_DEFERRED, e.g. a registration cache's: the
 * engine could not release the key's regions there; the key stays).
 */
UODP_API int uodp_dev_dereg_mr(struct uodp_dev *dev, uint32_t key);

/*
 * Implicit region: release every child that has no page in the device page
 * table and no operation in flight. Returns the number released (0 for an
 * explicit region). Errors: -EINVAL, -ENOENT, -ECHILD, -EDEADLK (as
 * uodp_dev_dereg_mr(): nothing released).
 */
UODP_API int uodp_dev_mr_trim(struct uodp_dev *dev, uint32_t key);

/* Number of engine regions (children) an implicit key currently has
 * (1 for an explicit key). Errors: -EINVAL, -ENOENT, -ECHILD. */
UODP_API int64_t uodp_dev_mr_children(struct uodp_dev *dev, uint32_t key);

/* ------------------------------------------------------------------------ */
/* Synchronous operations                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Device read: copy @len bytes at @va (in region @key, which needs
 * UODP_DEV_ACCESS_READ) into @buf. @len 0 succeeds at once. Pages missing
 * from the device page table are faulted in on the caller's thread.
 * Returns 0 or an error (see the conventions above). @buf must be valid
 * memory of the caller (a bad @buf yields -EFAULT, without a crash, on
 * every data path).
 * Errors of read, write, copy: -EINVAL, -ENOENT, -EPERM, -ERANGE, -EFAULT,
 * -EACCES, -ENOMEM, -ECHILD, -ENOSYS (process_vm_* forbidden after the
 * device was opened and no guarded copy exists; or, kernel monitor, a
 * page touched must be watched first, being mapped since the key's
 * registration, and a sandbox forbids userfaultfd registration), -EDEADLK;
 * with the kernel monitor -EBADF, -EBUSY and -EOPNOTSUPP (a page of the range is in memory the
 * monitor cannot follow; only the pages the operation touches count, not
 * the rest of the fault-around window, nor, for an implicit key, the rest
 * of its 1 GiB child); an implicit key's first access to a child may also
 * fail as the monitor's start does (uodp_dev_reg_mr()'s -EMFILE / -ENFILE,
 * -EAGAIN), and with userfaultfd forbidden every access through it fails
 * -ENOSYS (where uodp_dev_reg_mr() of an explicit key fails at once).
 */
UODP_API int uodp_dev_read(struct uodp_dev *dev, uint32_t key, uint64_t va,
			   void *buf, size_t len);

/* Device write: copy @len bytes of @buf to @va (needs ACCESS_WRITE). A
 * bad @buf is -EFAULT (never -EACCES, which is about the target). */
UODP_API int uodp_dev_write(struct uodp_dev *dev, uint32_t key, uint64_t va,
			    const void *buf, size_t len);

/*
 * Copy @len bytes from @src_va of region @src_key (ACCESS_READ) to @dst_va
 * of region @dst_key (ACCESS_WRITE), through a device bounce buffer (the
 * RDMA READ/WRITE analog). Overlapping ranges copy chunk by chunk (64 KiB),
 * front to back.
 */
UODP_API int uodp_dev_copy(struct uodp_dev *dev, uint32_t dst_key,
			   uint64_t dst_va, uint32_t src_key, uint64_t src_va,
			   size_t len);

/*
 * 8-byte atomics on @va (8-byte aligned, needs ACCESS_ATOMIC), atomic with
 * respect to the CPU's atomics and other device atomics. @old (may be
 * NULL) receives the value before the operation. compare-swap stores
 * @swap only when the value equals @compare. The guarded instruction works
 * whatever the calling thread's signal mask (SIGSEGV/SIGBUS are unblocked
 * while it runs).
 * Errors: as a write (-EACCES for memory the process may not write,
 * -EFAULT for a hole or a file page past its end), but -ENOSYS only from
 * userfaultfd (the guarded instruction needs no process_vm_*).
 */
UODP_API int uodp_dev_fetch_add(struct uodp_dev *dev, uint32_t key, uint64_t va,
				uint64_t add, uint64_t *old);
UODP_API int uodp_dev_cmp_swap(struct uodp_dev *dev, uint32_t key, uint64_t va,
			       uint64_t compare, uint64_t swap, uint64_t *old);

#define UODP_DEV_PREFETCH_WRITE (1u << 0) /* map writable (needs WRITE) */

/*
 * Fault [va, va + len) into the device page table now (like ibv_advise_mr
 * with PREFETCH / PREFETCH_WRITE), without moving data. Pages already
 * present with the access asked for are skipped. Errors as a read (write
 * with UODP_DEV_PREFETCH_WRITE); pages before a failing one stay mapped.
 * With UODP_DEV_STRICT it waits for an invalidation the monitor is running
 * (the strict fence), so it never reports pages of a range whose munmap()
 * has returned; from an invalidation callback the monitor runs while it
 * fences the device it fails -EDEADLK instead (as every access does).
 */
UODP_API int uodp_dev_prefetch(struct uodp_dev *dev, uint32_t key, uint64_t va,
			       size_t len, unsigned flags);

/* Per-page state of the device page table, as uodp_dev_snapshot() gives. */
#define UODP_DEV_PAGE_NONE 0  /* not in the device page table */
#define UODP_DEV_PAGE_READ 1  /* mapped for device reads */
#define UODP_DEV_PAGE_WRITE 2 /* mapped for device reads and writes */

/*
 * The device page table's state of each page of [va, va + len) (rounded
 * out to pages) into @states (one byte per page), without faulting and
 * without touching the memory (like test_hmm's SNAPSHOT). No rights are
 * needed. Returns the number of pages written. With UODP_DEV_STRICT it
 * takes the strict fence: once munmap() has returned, none of the
 * unmapped pages shows as mapped.
 * Errors: -EINVAL (NULL device, NULL @states with @len > 0), -ENOENT,
 * -ERANGE, -ECHILD, -EDEADLK (UODP_DEV_STRICT, from an invalidation
 * callback while the monitor fences the device: the unfence comes after
 * the callback, so the snapshot cannot wait for it).
 */
UODP_API int64_t uodp_dev_snapshot(struct uodp_dev *dev, uint32_t key,
				   uint64_t va, size_t len, uint8_t *states);

/* ------------------------------------------------------------------------ */
/* Counters                                                                  */
/* ------------------------------------------------------------------------ */

/* Cumulative since uodp_dev_open(); each is read atomically (the set is
 * not a consistent snapshot while operations run). */
struct uodp_dev_stats {
	uint64_t ops; /* operations started (sync and async) */
	uint64_t reads, writes, copies, atomics, prefetches, snapshots;
	uint64_t bytes_read;	    /* host memory read by the device */
	uint64_t bytes_written;	    /* host memory written by the device */
	uint64_t page_faults;	    /* device page-table misses resolved */
	uint64_t pages_faulted;	    /* pages installed by them */
	uint64_t fault_retries;	    /* -EAGAIN / retry of the protocol */
	uint64_t invalidations;	    /* invalidate_range callbacks */
	uint64_t pages_invalidated; /* device page-table entries cleared */
	uint64_t fences;	    /* strict-ordering fences */
	uint64_t races;		    /* accesses that hit memory changed
				       after the page table was checked */
	uint64_t err_fault, err_access, err_perm, err_range, err_other;
	uint64_t children_created, children_released; /* implicit region */
	uint64_t async_posted, async_completed, async_faults;
};

/* Errors: -EINVAL (NULL). Works in a forked child too (read only). */
UODP_API int uodp_dev_stats(const struct uodp_dev *dev,
			    struct uodp_dev_stats *out);

/* ------------------------------------------------------------------------ */
/* Asynchronous queue                                                        */
/* ------------------------------------------------------------------------ */

enum uodp_dev_opcode {
	UODP_DEV_OP_READ = 1,	   /* host [va, va+len) -> buf */
	UODP_DEV_OP_WRITE,	   /* buf -> host [va, va+len) */
	UODP_DEV_OP_COPY,	   /* (src_key, src_va) -> (key, va), len */
	UODP_DEV_OP_FETCH_ADD,	   /* *va += compare_add */
	UODP_DEV_OP_CMP_SWAP,	   /* *va == compare_add ? *va = swap */
	UODP_DEV_OP_PREFETCH,	   /* fault [va, va+len) for reads */
	UODP_DEV_OP_PREFETCH_WRITE /* ... for writes */
};

/* A work request. Buffers must stay valid until its completion is polled
 * (or the queue destroyed). */
struct uodp_dev_wr {
	uint64_t wr_id; /* returned in the completion */
	enum uodp_dev_opcode opcode;
	uint32_t key;	      /* target region */
	uint64_t va;	      /* target address */
	uint64_t len;	      /* bytes (not used by atomics) */
	void *buf;	      /* READ / WRITE: local buffer */
	uint32_t src_key;     /* COPY: source region */
	uint64_t src_va;      /* COPY: source address */
	uint64_t compare_add; /* FETCH_ADD: addend; CMP_SWAP: compare */
	uint64_t swap;	      /* CMP_SWAP: new value */
};

/* A completion. */
struct uodp_dev_wc {
	uint64_t wr_id;
	enum uodp_dev_opcode opcode;
	int status;	/* 0 or a negative errno as the sync calls return */
	uint64_t bytes; /* bytes transferred (or pages' bytes prefetched) */
	uint64_t old;	/* atomics: the value before the operation */
};

#define UODP_DEV_QUEUE_DEPTH_MAX 65536u

/*
 * Create a queue that holds up to @depth (1 .. UODP_DEV_QUEUE_DEPTH_MAX)
 * requests not yet polled. Requests run on the device's worker threads:
 * exec workers move data; a request that misses the device page table is
 * handed to fault workers and the exec worker goes on with other requests,
 * so one faulting request does not stall the others. Completions may come
 * in any order (match them by wr_id).
 * Errors: -EINVAL, -ENOMEM, -EAGAIN (no worker thread), -ECHILD.
 */
UODP_API int uodp_dev_queue_create(struct uodp_dev *dev, unsigned depth,
				   struct uodp_dev_queue **out);

/*
 * Destroy a queue after its requests finished; completions not polled are
 * dropped. No other call on the queue may run concurrently or follow.
 * Errors: -EINVAL (NULL), -ECHILD, -EDEADLK (from an invalidation
 * callback, not a UODP_CTX_DEFERRED one, with requests outstanding: they
 * may wait for that invalidation, e.g. in a strict device's fence; the
 * queue is kept).
 */
UODP_API int uodp_dev_queue_destroy(struct uodp_dev_queue *q);

/*
 * Post one request. Its key(s) and arguments are checked here: a request
 * that could not run (-EINVAL, -ENOENT, -ERANGE, -EPERM) is refused by
 * this call, not completed. Memory errors come as completions.
 * Errors: those, -ENOSPC (@depth requests not yet polled), -ENOMEM (a
 * copy's bounce buffer), -ECHILD. Completions carry the errors of the
 * synchronous calls.
 */
UODP_API int uodp_dev_post(struct uodp_dev_queue *q,
			   const struct uodp_dev_wr *wr);

/*
 * Take up to @max completions without blocking. Returns how many.
 * Errors: -EINVAL (NULL @q or @wc with @max > 0, @max < 0), -ECHILD.
 */
UODP_API int uodp_dev_poll(struct uodp_dev_queue *q, struct uodp_dev_wc *wc,
			   int max);

/*
 * As uodp_dev_poll() but wait up to @timeout_ms (-1: forever) for at least
 * one completion. Returns 0 on timeout, and 0 at once when the queue holds
 * no request at all. The timeout is measured on CLOCK_MONOTONIC (a step of
 * the wall clock neither lengthens nor cuts it). -EDEADLK when it would
 * wait forever from an invalidation callback (not a UODP_CTX_DEFERRED
 * one): see uodp_dev_queue_destroy().
 */
UODP_API int uodp_dev_poll_wait(struct uodp_dev_queue *q,
				struct uodp_dev_wc *wc, int max,
				int timeout_ms);

/* A short name of an opcode ("read", ...) or "?"; never NULL. */
UODP_API const char *uodp_dev_opcode_name(enum uodp_dev_opcode op);

/* A static description of an error code as this header uses it (the sign
 * is ignored; "unknown error" for codes it does not use; never NULL). */
UODP_API const char *uodp_dev_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif /* UODP_DEV_H */

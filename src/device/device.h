/* SPDX-License-Identifier: MIT */
/*
 * device.h - the software device's objects, locks and invariants (internal;
 * every src/device file includes it, nothing outside src/ does).
 *
 * Objects:
 *   struct uodp_dev   one engine context, the key table, counters, the
 *                     worker pool of the queues.
 *   struct dmr        a memory region by key: explicit (one span) or
 *                     implicit (a lazily filled array of spans, one per
 *                     aligned 1 GiB, created by faults, trimmed when idle).
 *   struct span       one engine region (umem) and the device page table
 *                     mirroring it. umem->priv points to its span.
 *
 * Lock order (outermost first):
 *   1. dev->mr_lock    (rwlock) the key table. Read: key lookup (takes a
 *                      reference on the dmr). Write: register/deregister.
 *   2. mr->kids_lock   (rwlock) implicit: the child array. Read: lookup and
 *                      reference of a child; write: creation and trim.
 *   3. the strict fence (dev->fence_active/fenced, not a lock held across
 *                      calls: dev.c) Every device access window counts
 *                      itself in; fence() waits for the count to drain
 *                      and makes new windows wait until unfence().
 *   4. umem lock       (engine) held by a fault from the return of
 *                      uodp_umem_map_and_lock() to the end of its install.
 *   5. span->pt_lock   (rwlock, writer preferring) the device page table.
 *                      Read: a device access window (check entries + copy
 *                      the data); write: install (under 4) and invalidate.
 * The invalidate_range callback takes only 5 (the engine holds its tree
 * read lock); it never allocates or frees memory (it may run on the
 * monitor thread). No device lock is held across
 * uodp_umem_map_and_lock() (an invalidation could be waiting for it), and neither
 * 3, 4 nor 5 (which the monitor thread may wait for) is ever held across
 * malloc/free, munmap/madvise/mremap or a wait for another thread: a
 * thread blocked in free() on a userfaultfd event keeps its arena locked
 * until the monitor reads the event. So a fault allocates its page-table
 * leaves before it takes any lock (fault.c). 1 and 2 are held across
 * allocation and engine registration calls; the monitor never waits for
 * them, nor for a thread that waits for them while holding 3-5.
 *
 * Invariant (what the retry protocol buys): a device page-table entry is
 * nonzero only if the engine mapped the page with at least its access bits
 * after the last invalidation of that page that ended before the entry was
 * written; invalidate_range clears it before the engine drops its own
 * entry, and no access window that saw it is still running when the
 * callback returns (the write lock waits for readers).
 */
#ifndef UODP_DEVICE_INTERNAL_H
#define UODP_DEVICE_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "uodp.h"
#include "uodp_dev.h"

/*
 * -EDEADLK when the calling thread is inside a driver callback of any
 * engine context and the operation may not run there: checked once before
 * an operation that changes device state and then makes engine calls the
 * engine would refuse half way (a deregistration whose uodp_umem_release()
 * fails after the key is gone: mr.c), or before a wait the callback could
 * be blocking (dev.c, queue.c). @release_ok: the operation only registers
 * and releases regions, which a deferred callback (UODP_CTX_DEFERRED) may
 * do. Through the engine's public uodp_in_callback() only: the device
 * includes no engine-internal header (tests/check-layers.sh).
 */
static inline int callback_check(bool release_ok)
{
	int cb = uodp_in_callback();

	if (cb == UODP_CALLBACK_LOCKED ||
	    (cb == UODP_CALLBACK_DEFERRED && !release_ok))
		return -EDEADLK;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Device page table (dpt.c)                                                 */
/* ------------------------------------------------------------------------ */

/*
 * A word per page: page-aligned virtual address | UODP_ACCESS_* bits;
 * 0 = not mapped. Two levels: a directory of leaf pointers (from the heap
 * up to 1 GiB of region, else reserved with mmap(MAP_NORESERVE) so it
 * costs nothing until used), and leaves of 512
 * words allocated on install and only freed with the table (clearing never
 * frees: the invalidate callback must not call free()).
 */
#define DPT_LEAF_SHIFT 9
#define DPT_LEAF_SLOTS (1u << DPT_LEAF_SHIFT)
#define DPT_ACCESS ((uint64_t)UODP_ACCESS_ALL)

struct dpt {
	uint64_t **dir;
	size_t dir_bytes;
	bool dir_mapped; /* mmap()ed (large), else calloc()ed */
	uint64_t npages;
	uint64_t used;	 /* nonzero words */
	uint64_t leaves; /* allocated leaves */
	uint64_t lo, hi; /* leaf indexes ever allocated are in [lo, hi) */
};

int dpt_init(struct dpt *t, uint64_t npages);
void dpt_destroy(struct dpt *t);
static inline uint64_t dpt_get(const struct dpt *t, uint64_t idx)
{
	const uint64_t *leaf = t->dir[idx >> DPT_LEAF_SHIFT];

	return leaf ? leaf[idx & (DPT_LEAF_SLOTS - 1)] : 0;
}
/*
 * The word of page @idx read with no lock held: a hint, never a licence
 * to access. A word that lacks the access needed lets an operation go
 * straight to its fault (always safe: the fault checks everything again
 * under the retry protocol, and installing a word that is already there
 * changes nothing), which saves the access window's pt_lock round trip on
 * every miss. A word that has it proves nothing: the window takes pt_lock
 * and reads it again (dpt_get()). Words are stored with atomic stores
 * (dpt_set(), dpt_clear()) so this read is not a data race; the leaf
 * pointer pairs with dpt_add_leaf()'s release store.
 */
static inline uint64_t dpt_peek(const struct dpt *t, uint64_t idx)
{
	const uint64_t *leaf = __atomic_load_n(&t->dir[idx >> DPT_LEAF_SHIFT],
					       __ATOMIC_ACQUIRE);

	return leaf ? __atomic_load_n(&leaf[idx & (DPT_LEAF_SLOTS - 1)],
				      __ATOMIC_RELAXED) :
		      0;
}
/*
 * Leaves are allocated with no lock held (the install runs under locks an
 * invalidation waits for, where malloc() is forbidden): dpt_need_leaf()
 * says whether page @idx lacks its leaf (no pt_lock needed: a leaf, once
 * added, stays until dpt_destroy(), which no fault can overlap since it
 * holds a reference on the span; the pointer is published atomically);
 * dpt_add_leaf() (pt_lock held for writing) installs a zeroed leaf of
 * DPT_LEAF_SLOTS words for it and returns false, leaving it to the caller
 * to free, when another thread was first. Leaves live as long as the table.
 */
bool dpt_need_leaf(const struct dpt *t, uint64_t idx);
bool dpt_add_leaf(struct dpt *t, uint64_t idx, uint64_t *leaf);
/* Store a nonzero word; never allocates: -ENOMEM when the leaf of @idx
 * was not added first. */
int dpt_set(struct dpt *t, uint64_t idx, uint64_t word);
/* Clear [from, to); returns the number of words cleared. Never frees. */
uint64_t dpt_clear(struct dpt *t, uint64_t from, uint64_t to);

/* ------------------------------------------------------------------------ */
/* Regions                                                                   */
/* ------------------------------------------------------------------------ */

struct uodp_dev;

struct span {
	struct uodp_dev *dev;
	struct uodp_umem *umem;
	uint64_t start, end;	  /* the umem's page-aligned bounds */
	unsigned umem_access;	  /* UODP_ACCESS_* of the umem */
	pthread_rwlock_t pt_lock; /* see lock order */
	struct dpt dpt;		  /* under pt_lock */
	atomic_long refs; /* implicit child: users (ops, queued faults) */
};

#define IMPLICIT_SHIFT 30 /* one child per aligned 1 GiB */
/* The implicit key's end (+ one page): the user address space of
 * four-level paging, on every machine. Why not 2^56 with LA57: the child
 * array is flat (1 MiB of reserved address space here, 512 MiB there)
 * and the trim walks it; memory above 2^47 exists only where mmap() was
 * given a hint above it, and an explicit key reaches it (uodp_dev.h). */
#define IMPLICIT_TOP ((UINT64_C(1) << 47))

struct dmr {
	uint32_t key;
	unsigned access; /* UODP_DEV_ACCESS_* */
	bool implicit;
	uint64_t start, end; /* exact bytes operations may touch */
	atomic_long refs;    /* 1 for the key table + 1 per user */
	struct span *span;   /* explicit */

	/* implicit */
	pthread_rwlock_t kids_lock; /* see lock order */
	struct span **kids;	    /* mmap'd array, by va >> IMPLICIT_SHIFT */
	size_t kids_bytes;
	uint64_t nkids;
};

/* ------------------------------------------------------------------------ */
/* The device                                                                */
/* ------------------------------------------------------------------------ */

#define DEV_MAGIC 0x7564657664657631ull /* "udevdev1" */

/* Counters: one atomic word each, indexes into dev->stats. */
enum {
	ST_READS, /* ops = the sum of the five kinds (uodp_dev_stats) */
	ST_WRITES,
	ST_COPIES,
	ST_ATOMICS,
	ST_PREFETCHES,
	ST_SNAPSHOTS,
	ST_BYTES_READ,
	ST_BYTES_WRITTEN,
	ST_PAGE_FAULTS,
	ST_PAGES_FAULTED,
	ST_FAULT_RETRIES,
	ST_INVALIDATIONS,
	ST_PAGES_INVALIDATED,
	ST_FENCES,
	ST_RACES,
	ST_ERR_FAULT,
	ST_ERR_ACCESS,
	ST_ERR_PERM,
	ST_ERR_RANGE,
	ST_ERR_OTHER,
	ST_CHILDREN_CREATED,
	ST_CHILDREN_RELEASED,
	ST_ASYNC_POSTED,
	ST_ASYNC_COMPLETED,
	ST_ASYNC_FAULTS,
	ST_COUNT
};

struct job;

/*
 * The devices sharing one engine context (uodp_dev_attr.share): the
 * context's callbacks get the group as priv. lock guards the member list
 * and refs; fence() takes it and holds it until unfence(), so the members
 * fenced are exactly the ones unfenced. Never taken by an access.
 */
struct devgroup {
	struct uodp_ctx *ctx;
	unsigned ctx_flags; /* UODP_CTX_* */
	pthread_mutex_t lock;
	struct uodp_dev *members; /* linked by uodp_dev.gnext */
	unsigned refs;
};

/* A work list of the worker pool (exec or fault). */
struct wlist {
	struct job *head, *tail;
};

struct uodp_dev {
	uint64_t magic;
	struct uodp_ctx *ctx;	/* group->ctx */
	struct devgroup *group; /* owns the context */
	struct uodp_dev *gnext; /* under group->lock */
	unsigned flags;
	unsigned fault_around; /* pages */
	unsigned nexec, nfault;
	uint64_t page_size;
	unsigned page_shift;
	pid_t pid;
	unsigned long fork_gen; /* dev_fork_gen at open */
	/* Copies use a guarded memcpy instead of process_vm_*: asked for
	 * (UODP_DEV_FAST_COPY), or set when a sandbox forbids process_vm_*
	 * (at open, or when an operation first meets the refusal). */
	atomic_bool fast_copy;

	pthread_rwlock_t mr_lock; /* see lock order */
	struct dmr **keys;	  /* slot -> region */
	uint8_t *gens;		  /* slot -> generation of its last key */
	uint32_t *free_next;	  /* free slot -> the next free slot */
	uint32_t free_top;	  /* first free slot, or UINT32_MAX */
	uint32_t nslots, cap;
	/* A deregistration waits on idle_cond (under idle_lock) until the
	 * region's users are gone. `retiring` counts such waiters: mr_put()
	 * takes idle_lock and wakes them only when it is nonzero, so an
	 * operation pays for the wakeup only while someone deregisters. */
	pthread_mutex_t idle_lock;
	pthread_cond_t idle_cond;
	atomic_long retiring;

	/* Strict fence (see lock order, 3): windows in progress, fence
	 * depth (fence() calls not yet undone), wakeups; group_fenced under
	 * group->lock: how many of those came from the group's fence(). */
	atomic_long fence_active;
	atomic_int fenced;
	pthread_mutex_t fence_mu;
	pthread_cond_t fence_cv;
	unsigned group_fenced;

	/* Worker pool (queue.c), started with the first queue. Lists and
	 * stop are under pool_lock. */
	pthread_mutex_t pool_lock;
	pthread_cond_t exec_cond, fault_cond; /* their list got work / stop */
	struct wlist exec_list, fault_list;
	bool pool_started, pool_stop;
	pthread_t *threads;
	unsigned nthreads;
	struct uodp_dev_queue *queues; /* under pool_lock */

	atomic_uint_fast64_t stats[ST_COUNT];
};

/*
 * No device call is a cancellation point (as no engine call is): a call
 * that may wait (for operations in flight, queued requests, completions,
 * the strict fence) runs with cancellation disabled, so a cancelled thread
 * never exits holding a device lock or a reference (issue 12, finding 12).
 * A cancel that arrives meanwhile acts at the caller's next cancellation
 * point. pthread_setcancelstate() is not a system call.
 */
static inline int dev_nocancel_begin(void)
{
	int old;

	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
	return old;
}

static inline void dev_nocancel_end(int old)
{
	pthread_setcancelstate(old, NULL);
}

static inline void dev_count(struct uodp_dev *dev, int which, uint64_t n)
{
	atomic_fetch_add_explicit(&dev->stats[which], n, memory_order_relaxed);
}

/* Count an operation's final status as an error kind. */
void dev_count_error(struct uodp_dev *dev, int err);

/* An error of uodp_ctx_create() / uodp_umem_get() as this layer names it
 * (one errno, one meaning: see uodp_dev.h). */
int dev_engine_error(int err);

/* Argument checks common to every public entry point. */
int dev_check(const struct uodp_dev *dev);

/* dev.c: an access window's part of the strict fence (STRICT only).
 * enter: 0, or -EDEADLK (not entered) when the device is fenced and the
 * calling thread is in a callback that the unfence waits for. */
int dev_window_fence_enter(struct uodp_dev *dev);
void dev_window_fence_leave(struct uodp_dev *dev);

/* dev.c: the context callbacks. */
void dev_invalidate_range(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv);

/* mr.c */
/* Look @key up and take a reference; NULL when it is not registered. */
struct dmr *mr_get(struct uodp_dev *dev, uint32_t key);
void mr_put(struct uodp_dev *dev, struct dmr *mr);
/* 0 when [va, va + len) is inside @mr, -ERANGE otherwise. */
int mr_check_range(const struct dmr *mr, uint64_t va, uint64_t len);
/*
 * The span holding @va with a reference taken (implicit: created if
 * @create and missing). NULL with *@err set when none: -ENOMEM, or 0 when
 * @create is false and the child does not exist.
 */
struct span *mr_span_get(struct uodp_dev *dev, struct dmr *mr, uint64_t va,
			 bool create, int *err);
void mr_span_put(struct dmr *mr, struct span *sp);
/* Deregister every key (dev_close). */
void mr_release_all(struct uodp_dev *dev);

/* fault.c */
/*
 * Resolve a device page-table miss at @va of @sp with @access (UODP_ACCESS
 * bits): map a window of pages through the engine from va's page on, at
 * least @len_hint bytes and the fault-around size, and install the
 * engine's entries under the retry protocol. Returns 0 when at least the
 * page of @va was installed, or the engine's error.
 */
int dev_fault(struct uodp_dev *dev, struct span *sp, uint64_t va,
	      uint64_t len_hint, unsigned access);

/* recover.c: guarded instructions (see docs/DEVICE.md). */
int rcv_init(void);
/* memcpy within a guarded window over host range [lo, hi) and the caller's
 * buffer [lo2, hi2). Returns 0, or -EFAULT with *@fault_va set to the
 * faulting address (in either range). Whatever the thread's signal mask
 * (the window unblocks SIGSEGV/SIGBUS while it runs). */
int rcv_copy(void *dst, const void *src, size_t n, uintptr_t lo, uintptr_t hi,
	     uintptr_t lo2, uintptr_t hi2, uint64_t *fault_va);
int rcv_fetch_add(uint64_t *p, uint64_t add, uint64_t *old);
int rcv_cmp_swap(uint64_t *p, uint64_t cmp, uint64_t swap, uint64_t *old);
bool rcv_available(void);
/*
 * A device worker's signal mask: every asynchronous signal blocked,
 * SIGSEGV/SIGBUS (and the other synchronous ones) unblocked. The pool
 * creates its workers with it (queue.c), so they have it from their
 * first instruction on.
 */
void rcv_worker_sigset(sigset_t *m);
/*
 * Called by a device worker thread as it starts: set that mask (again:
 * it was born with it), read it back and let this thread's guarded
 * windows skip their rt_sigprocmask() (why that is safe: recover.c). 0
 * or a negative errno (then the thread keeps paying the system call per
 * window).
 */
int rcv_worker_mask(void);
/* Test hook: called right before a guarded window's rt_sigprocmask(). */
extern void (*rcv_test_hook_mask_call)(void);

/* dma.c: true unless a sandbox (seccomp) refuses process_vm_readv. */
bool dev_pvm_works(void);

/* dma.c: operations as resumable state machines, for sync and async. */
struct fault_req {
	struct dmr *mr;	 /* the region of the span */
	struct span *sp; /* referenced; dop_fault() drops it */
	uint64_t va, len;
	unsigned access;
};

#define DOP_BOUNCE (64 * 1024)

struct dop {
	enum uodp_dev_opcode opcode;
	uint32_t key, key2; /* target and copy source keys */
	struct dmr *mr;	    /* target, referenced */
	struct dmr *mr2;    /* copy source, referenced */
	uint64_t va, va2, len;
	char *buf;
	uint64_t cmp_add, swap;
	uint64_t done; /* bytes finished */
	uint64_t old;  /* atomics */
	/* copy: a chunk is read into bounce, then written out */
	char *bounce;
	uint64_t chunk, chunk_done;
	int phase;
	unsigned races; /* consecutive failed copies after a good check */
	int status;
};

/* Check an operation's arguments and take its references. 0 or error. */
int dop_prepare(struct uodp_dev *dev, struct dop *op);
/* Drop references and free the bounce buffer. */
void dop_finish(struct uodp_dev *dev, struct dop *op);
/*
 * Run until the operation is finished (returns 0 with op->status set) or,
 * when @fr is non-NULL, until it misses the device page table (returns 1
 * with *@fr filled: the caller resolves the miss with dop_fault() and runs
 * it again). With @fr NULL misses are resolved inline.
 */
int dop_run(struct uodp_dev *dev, struct dop *op, struct fault_req *fr);
/* Resolve a miss reported by dop_run(); drops fr->sp. 0 or error. */
int dop_fault(struct uodp_dev *dev, struct fault_req *fr);

/* Test hooks (set only by tests): called by a fault after
 * uodp_umem_map_and_lock() returned (the region lock is held: the hook
 * must not invalidate the region; the engine's own hook runs before its
 * install with no lock held), and right before it allocates memory
 * (device page-table leaves; no device or engine lock is held there). */
extern void (*dev_test_hook_before_install)(struct uodp_umem *umem);
extern void (*dev_test_hook_alloc)(struct uodp_umem *umem);
/* ... and by an access that found the device fenced, right before it
 * waits for the unfence (fence_mu held: the hook must not call uodp; the
 * unfence cannot complete before the wait has begun). */
extern void (*dev_test_hook_fence_wait)(struct uodp_dev *dev);
/* ... and by a queue worker first thing, before any start-up of its own
 * (mask, cancel state, name): a test holds it there to see what the
 * thread was born with. */
extern void (*dev_test_hook_worker_start)(void);

/*
 * Timed waits (dev.c). Every bounded wait of the device (today:
 * uodp_dev_poll_wait()) measures its bound on CLOCK_MONOTONIC, never on
 * the wall clock: a settimeofday() or NTP step must neither lengthen nor
 * cut a wait. pthread_cond_timedwait() takes its deadline on the clock of
 * the condition variable's attributes (CLOCK_REALTIME by default), so the
 * two go together: a condition variable that is waited on with a timeout
 * is created by dev_cond_init_timed(), and its deadline computed by
 * dev_deadline(). 0 or -ENOMEM.
 */
int dev_cond_init_timed(pthread_cond_t *c);
/* now + @ms on CLOCK_MONOTONIC; @ms >= 0 */
void dev_deadline(struct timespec *ts, int ms);

/* queue.c */
void pool_stop(struct uodp_dev *dev);
void queues_destroy_all(struct uodp_dev *dev);

/* Fork detection: bumped in the child by a pthread_atfork handler. */
extern atomic_ulong dev_fork_gen;

#endif

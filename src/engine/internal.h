/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the engine's objects, their locks and the invariants of the
 * retry protocol. Every engine file includes it; nothing outside src/ does.
 *
 * THE PROTOCOL (0.2: periods and stripes)
 *
 * A fault populates pages without any lock and installs their entries under
 * the region lock only if no invalidation overlapped it. Two mechanisms
 * decide that, one per context and one per region:
 *
 *  - Periods (context). ctx->active counts the split invalidations running
 *    (a token's start() without its end(), a deferred begin without its
 *    finish: those drop the tree lock in the middle); one-shot walks hold
 *    the read lock throughout, so registration cannot interleave with them
 *    and they need no period. ctx->period is odd while active > 0 and even
 *    otherwise
 *    (bumped on 0 -> 1 and 1 -> 0, under ctx->inv_lock). A region registered
 *    during an odd period P records birth = P: the running invalidations may
 *    have walked the tree before it was there, so until the period moves on
 *    the region is not "ready" (faults wait, retry is true), and a
 *    token's start() and end() neither raise nor lower its counters (they
 *    test birth == period, which stays P for their whole life). A deferred
 *    begin accounts every region it finds, born in P or not: its finish
 *    ends exactly what the begin recorded (umem->dp.mask), and a region born
 *    in P must still hear of the events read after it was registered (a
 *    cache's entry for memory unmapped in the same period). Periods only
 *    grow, so once ctx->period != birth the region is ready for good. This
 *    is the kernel's deferred-insertion rule without the deferred list:
 *    nothing is kept per invalidation, and activating regions needs no lock.
 *
 *  - Stripes (region). A region is cut into at most UMEM_MAX_STRIPES equal
 *    power-of-two runs of pages, each with `count` (invalidations running
 *    on it) and `seq` (bumped by each one's end). An invalidation of
 *    [s, e) raises the count of every stripe it overlaps (start), calls the
 *    driver, drops the engine's entries, then bumps seq and lowers count
 *    (end). A fault over window W reads the sum of W's stripe seqs after
 *    waiting for their counts to be zero (begin), and installs only if,
 *    under the lock, the counts are still zero and the sum is unchanged
 *    (retry). Seqs only grow, so an unchanged sum means no stripe of W
 *    moved. So a fault retries only when an invalidation overlapped its own
 *    stripes: a storm on one half of a region does not starve faults on
 *    the other half (0.1 kept one seq per region, as Linux 2014 did).
 *
 * Why both are enough: an invalidation that began before the fault read
 * its sequence is seen by begin (count > 0: wait) or has ended (the address
 * space change is complete before the populate). One that begins after is
 * seen at install (count or seq moved), unless it walked the tree before
 * the region was there, and then birth holds the region back. The Promela
 * model in model/ checks this, and that each broken variant is caught.
 *
 * LOCKS (outermost first; no function takes them in another order)
 *
 *   1. ctx->sub_lock   (mutex)  the notifier subscription and the regions'
 *                               watch/unwatch calls. Never taken by an
 *                               invalidation.
 *   2. ctx->tree_lock  (rwlock) the region index, ctx->nregions,
 *                               ctx->dying. Read:
 *                               invalidation walks (callbacks of contexts
 *                               without UODP_CTX_DEFERRED run under it).
 *                               Write: registration, release, teardown;
 *                               writers hold it briefly, never allocate
 *                               and never call out.
 *   3. ctx->inv_lock   (mutex)  ctx->active and ctx->period; leaf lock.
 *   3. umem->lock      (ulock)  the region's table, stripes, dying flag and
 *                               stats; the driver's lock (uodp_umem_lock).
 *                               Never held while calling the driver.
 *   4. the pin lock    (ulock)  pinning-mode reference counts of the whole
 *                               process (pin.c: shared by all contexts);
 *                               leaf lock.
 *
 * inv_lock and umem->lock are never held together. No engine lock is held
 * across madvise/pagemap I/O. No allocator call is made under a lock an
 * invalidation may wait for (tree write lock, region lock, pin lock): see
 * table.c for why.
 */
#ifndef UODP_ENGINE_INTERNAL_H
#define UODP_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "engine/callback.h"
#include "lib/rindex.h"
#include "lib/lock.h"
#include "lib/mono.h" /* bounded waits on CLOCK_MONOTONIC */
#include "lib/pgtable.h"
#include "uodp.h"

#define UODP_CTX_MAGIC 0x75636f6e74787432ull   /* "uctxt2" */
#define UODP_UMEM_MAGIC 0x756d656d72656732ull  /* "umemreg2" */
#define UODP_DEAD_MAGIC 0x646561646465616full  /* released / destroyed */
#define UODP_RANGE_MAGIC 0x72616e6765746f6bull /* "rangetok" */

/*
 * A translation-table word (struct pgt slot) of one page:
 *   bits 0-1   UODP_ACCESS_* the page is mapped with; nonzero iff mapped
 *   bit  2     DIRTY: was mapped writable since the last dirty_take()
 *   bit  3     PINNED: the engine holds an mlock reference (UODP_CTX_PIN)
 *   bits 12-63 page frame number (0 when pagemap does not reveal it)
 * A word with only DIRTY set is an unmapped page of the dirty set.
 */
#define W_ACCESS_MASK ((uint64_t)UODP_ACCESS_ALL)
#define W_DIRTY ((uint64_t)1 << 2)
#define W_PINNED ((uint64_t)1 << 3)
#define W_PFN_SHIFT 12

/* Highest user address the engine accepts (56-bit, five-level paging). */
#define UODP_VA_LIMIT ((uint64_t)1 << 56)

/* Why 64 stripes: 16 bytes each, so a large region pays 1 KiB for them,
 * and a fault of one FAULT_BATCH (512 pages) on a region of up to 32768
 * pages (128 MiB) checks one or two stripes; one-page regions have one. */
#define UMEM_MAX_STRIPES 64

/* Huge entries (huge.c) cover one 2 MiB block: the PMD size of x86-64 and
 * of arm64 with 4 KiB pages, the size THP and default hugetlb use. Larger
 * hugetlb pages (1 GiB) are covered by several huge entries. */
#define HUGE_SHIFT 21
#define HUGE_SIZE ((uint64_t)1 << HUGE_SHIFT)
#define HUGE_PAGES(ctx) (HUGE_SIZE >> (ctx)->page_shift)

struct unf_sub;

struct uodp_ctx {
	uint64_t magic;
	struct uodp_ctx_ops ops;
	unsigned flags;
	unsigned long fork_gen; /* engine_fork_generation at creation */
	int pagemap_fd;		/* /proc/self/pagemap, -1 if unusable */
	/* Its identity: an application that closes "all unknown
	 * descriptors" may leave the number to another file, which we must
	 * then never read, ioctl or close (ctx_pagemap_ours()). */
	dev_t pagemap_dev;
	ino_t pagemap_ino;
	atomic_bool pagemap_lost;
	bool pagemap_pfns; /* pagemap shows frame numbers (CAP_SYS_ADMIN)
			    * and UODP_CTX_NO_FRAMES is not set */
	bool scan_huge;	   /* PAGEMAP_SCAN reports huge pages (huge.c) */
	unsigned page_shift;

	pthread_mutex_t sub_lock; /* see LOCKS above */
	struct unf_sub *sub;	  /* notifier subscription, NULL if none;
				   * freed by ctx_free() only */
	bool sub_closed;	  /* detached by destroy: no new watch */
	uint64_t nwatched;	  /* regions watched through it */

	pthread_rwlock_t tree_lock; /* see LOCKS above */
	struct rindex tree;	    /* regions by [start, end - 1] */
	uint64_t nregions;
	bool dying; /* uodp_ctx_destroy() started: no new regions */
	/* Calls that take the context handle (uodp_umem_get(),
	 * uodp_invalidate_range*() start) inside the library right now,
	 * between ctx_enter() and ctx_leave(): ctx_free() waits for them.
	 * With `holds` it is a Dekker pair (both sequentially consistent):
	 * an entry raises users, then reads holds; the freer drops the last
	 * hold, then reads users. So either the entry sees no hold left
	 * (-ENODEV) or the free sees the entry and waits for it to leave.
	 * An entry that begins after the free touched freed memory: that is
	 * the caller's race with uodp_ctx_destroy(), undefined (uodp.h). */
	atomic_long users;
	/* What keeps the context's memory: 1 until uodp_ctx_destroy(), 1 per
	 * region in the index, 1 per open range token (its end() uses the
	 * context, destroyed or not). Whoever drops the last frees it. Once
	 * 0 it never rises again (ctx_hold() refuses). */
	atomic_long holds;

	pthread_mutex_t inv_lock; /* see LOCKS above */
	pthread_cond_t inv_idle;  /* broadcast when the period turns even */
	long active;		  /* invalidations running */
	_Atomic uint64_t period;  /* odd while active > 0 */
	/* Invalidations in flight as uodp_ctx_sync() sees them: from the
	 * moment an event is read (or start() is called) until the driver's
	 * callback returned and end() ran. */
	atomic_long inflight;
	/* Relay walks of deferred invalidations (one relay thread at a
	 * time per context): the id marks regions already handled. */
	uint64_t relay_id;
};

struct stripe {
	uint64_t seq;	/* bumped by each invalidation's end */
	uint64_t count; /* invalidations running on these pages */
};

/* The counters of struct uodp_umem_stats that a region keeps (the rest is
 * computed when they are read, uodp_umem_stats()). */
struct umem_counts {
	uint64_t map_calls, pages_mapped, invalidations, pages_invalidated,
		retries;
};

/* The huge-entry state of a region (huge.c), only in regions that hold a
 * whole 2 MiB block (the only blocks that get huge entries): it follows
 * the stripes in the same allocation. All under the region lock. */
struct umem_huge {
	struct pgt table; /* 2 MiB block index -> huge word */
	uint64_t mapped;  /* mapped huge words */
	uint64_t dirty;	  /* dirty unmapped huge words */
};

/* Fields are ordered so that no padding is left (304 bytes on LP64, plus
 * 16 per stripe, plus 72 for the huge part of a region holding a whole
 * 2 MiB block: 320 for a region of one page); the small ones share the
 * first cache lines with what registration, release and the index walk
 * read. */
struct uodp_umem {
	uint64_t magic;
	struct uodp_ctx *ctx;
	uint64_t start, end;   /* page aligned, start < end */
	unsigned access;       /* rights the region was registered with */
	unsigned stripe_shift; /* pages per stripe, as a shift */
	unsigned nstripes;
	bool in_tree;	      /* under tree_lock */
	bool has_huge;	      /* a struct umem_huge follows the stripes */
	atomic_bool dying;    /* the context is gone: retry always true;
			      * written under lock, read anywhere */
	atomic_bool released; /* uodp_umem_release() ran (memory may live
			       * on while a relay walk holds it) */
	_Atomic(void *) priv;
	uint64_t birth; /* ctx->period at registration if odd, else 0 */

	/* Lifetime: one reference for the caller (dropped by release) and
	 * one per relay walk holding it outside the tree lock. The last
	 * reference frees the memory. */
	atomic_long refs;
	uint64_t relay_done; /* ctx->relay_id that handled it; relay only */
	/* Deferred invalidations begun on the region and not yet finished
	 * (under lock): the stripes they raised, once each, and the hull of
	 * their ranges. The notifier may merge several finishes into one
	 * (a full relay queue), so a finish settles whatever is pending on
	 * the region instead of undoing one begin. */
	/* dp.mask, dp.s, dp.e; and the ranges of those begins whose memory is gone (UNMAP, a
	 * REMAP's source), merged when they touch: the finish drops their
	 * pins without munlock() (what is mapped there since is not ours:
	 * an application's MAP_FIXED | MAP_LOCKED mapping), the rest of the
	 * hull with it. Why 4: the events one relay callback lets pile up on
	 * a region are few; beyond, a gone range is not recorded and its
	 * memory unlocked as before (only a lock made there since is lost). */
#define UMEM_DGONE 4
	struct inval_pend {
		uint64_t s, e, mask;
		unsigned ngone;
		uint64_t gs[UMEM_DGONE], ge[UMEM_DGONE];
	} dp;

	struct ulock lock;   /* see LOCKS above */
	pthread_cond_t idle; /* broadcast when a stripe count drops to 0 or
			      * the region dies */
	struct pgt table;    /* page index -> word (see W_*) */

	uint64_t mapped;	  /* words with access bits; under lock */
	struct umem_counts stats; /* under lock */
	struct stripe stripes[];  /* nstripes; under lock */
				  /* then struct umem_huge if has_huge */
};

/* The region's huge part, NULL when no 2 MiB block lies wholly inside it
 * (no huge entry can exist there). */
static inline struct umem_huge *umem_huge(const struct uodp_umem *umem)
{
	return umem->has_huge ? (struct umem_huge *)(uintptr_t)&umem
					->stripes[umem->nstripes] :
				NULL;
}
/* Mapped huge entries; region lock held. */
static inline uint64_t umem_hmapped(const struct uodp_umem *umem)
{
	const struct umem_huge *h = umem_huge(umem);

	return h ? h->mapped : 0;
}

/* ---- handles ---- */
static inline bool ctx_valid(const struct uodp_ctx *ctx)
{
	if (ctx && ctx->magic == UODP_DEAD_MAGIC)
		uodp_misuse("destroyed context used");
	return ctx && ctx->magic == UODP_CTX_MAGIC;
}
static inline bool umem_valid(const struct uodp_umem *umem)
{
	if (umem && umem->magic == UODP_DEAD_MAGIC)
		uodp_misuse("released region used");
	return umem && umem->magic == UODP_UMEM_MAGIC;
}
/* In a child forked since the context was created? (ctx.c) */
extern atomic_ulong engine_fork_generation;
static inline bool ctx_forked(const struct uodp_ctx *ctx)
{
	return atomic_load_explicit(&engine_fork_generation,
				    memory_order_relaxed) != ctx->fork_gen;
}

/* ---- callbacks: what the calling thread is inside of (callback.h) ---- */

/* ---- page arithmetic: the one place ---- */
/* A /proc/self/pagemap entry (Documentation/admin-guide/mm/pagemap.rst):
 * bit 63 page present, bits 0-54 its frame number (0 without
 * CAP_SYS_ADMIN, so present-with-frame-0 means "frame unknown"). */
#define PM_PFN_MASK ((UINT64_C(1) << 55) - 1)
#define PM_PRESENT (UINT64_C(1) << 63)

static inline uint64_t page_size_of(const struct uodp_ctx *ctx)
{
	return (uint64_t)1 << ctx->page_shift;
}
/* Round [addr, addr + len) out to pages. -EINVAL for len 0, -ERANGE when it
 * wraps or leaves the user address space. */
int page_round(const struct uodp_ctx *ctx, uint64_t addr, uint64_t len,
	       uint64_t *start, uint64_t *end);
static inline uint64_t umem_page(const struct uodp_umem *umem, uint64_t va)
{
	return (va - umem->start) >> umem->ctx->page_shift;
}
static inline uint64_t umem_npages(const struct uodp_umem *umem)
{
	return (umem->end - umem->start) >> umem->ctx->page_shift;
}
static inline bool umem_watch_only(const struct uodp_umem *umem)
{
	return umem->access & UODP_ACCESS_WATCH;
}

/* ---- the protocol (protocol.c) ---- */
/* Stripes of pages [a, b) of the region (b > a), inclusive. */
static inline void stripe_span(const struct uodp_umem *umem, uint64_t a,
			       uint64_t b, unsigned *first, unsigned *last)
{
	*first = (unsigned)(a >> umem->stripe_shift);
	*last = (unsigned)((b - 1) >> umem->stripe_shift);
}
bool umem_ready(const struct uodp_umem *umem);

/*
 * map_and_lock's bound: @ms on CLOCK_MONOTONIC from the call, as the
 * kernel's ODP fault counts its timeout (a caller's bound is on the whole
 * call, not on its waits only). ms == UODP_TIMEOUT_INFINITE: no bound
 * (deadline_at() returns NULL); ms == 0: one attempt, no clock read
 * unless the fault must wait (the deadline is then "now").
 */
struct deadline {
	unsigned ms;
	bool set;
	struct timespec ts;
};

const struct timespec *deadline_at(struct deadline *d);

static inline void deadline_init(struct deadline *d, unsigned ms)
{
	d->ms = ms;
	d->set = false;
	if (ms && ms != UODP_TIMEOUT_INFINITE)
		(void)deadline_at(d);
}

bool deadline_passed(struct deadline *d);

/* Wait (lock dropped, bounded by @deadline when not NULL) until the region
 * is ready and pages [a, b) have no invalidation running; return the
 * sequence of their stripes. -ENODEV (dying), -EBUSY (deadline passed). */
int64_t fault_begin(struct uodp_umem *umem, uint64_t a, uint64_t b,
		    struct deadline *deadline);
/* The install-side check; region lock held. */
bool fault_retry_locked(const struct uodp_umem *umem, uint64_t a, uint64_t b,
			uint64_t seq);

/* Invalidation of one region's part [s, e) (page aligned, inside it):
 * inval_start raises the counts (unless the region was born in @period),
 * inval_call runs the driver's callback and drops the engine's entries,
 * inval_end bumps seqs and lowers counts. */
void inval_start(struct uodp_umem *umem, uint64_t s, uint64_t e,
		 uint64_t period);
void inval_call(struct uodp_umem *umem, uint64_t s, uint64_t e,
		enum uodp_event ev, int cb_kind, bool gone);
void inval_end(struct uodp_umem *umem, uint64_t s, uint64_t e, uint64_t period);
/* All three in a row, the driver called with CB_LOCKED: for walks that
 * hold the tree read lock throughout. The drop and the end share one hold
 * of the region lock, and without a callback the start too. */
void inval_locked(struct uodp_umem *umem, uint64_t s, uint64_t e,
		  enum uodp_event ev, uint64_t period, bool gone);
/* Deferred halves (protocol.c): begin raises the stripes of [s, e) not
 * already pending (on every region found, born in the period or not: the
 * mask pairs it with its end); take removes what is pending on the region
 * (false if nothing), end_mask lowers those stripes. */
void inval_deferred_begin(struct uodp_umem *umem, uint64_t s, uint64_t e,
			  bool gone);
bool inval_deferred_take(struct uodp_umem *umem, struct inval_pend *p);
/* The callback over what a take returned, then the drop: the gone ranges'
 * pins without munlock(), the rest of [p->s, p->e) with it. */
void inval_call_pending(struct uodp_umem *umem, const struct inval_pend *p,
			enum uodp_event ev);
void inval_end_mask(struct uodp_umem *umem, uint64_t mask);
/* The period of a one-shot walk (start, call, end of every region under
 * one tree read lock): no birth equals it, so every region found is
 * accounted. */
#define ONE_SHOT 0
/* Context accounting around a split invalidation (a token's start..end,
 * a deferred begin..finish): returns its period. */
uint64_t ctx_inval_begin(struct uodp_ctx *ctx);
void ctx_inval_end(struct uodp_ctx *ctx);

/* Drop the entries of [start, end) (page aligned, inside the region),
 * taking umem->lock. Writable ones join the dirty set, pinned ones are
 * unpinned. Returns the number of entries dropped. */
uint64_t umem_drop_range(struct uodp_umem *umem, uint64_t start, uint64_t end,
			 bool invalidation);
/* The same, umem->lock held (not for a watch-only region); @gone: the
 * memory is unmapped, its pins are dropped without munlock (unpin_gone). */
uint64_t umem_drop_range_locked(struct uodp_umem *umem, uint64_t start,
				uint64_t end, bool invalidation, bool gone);

/* ---- regions (umem.c) ---- */
void umem_put(struct uodp_umem *umem); /* drop a reference */

/*
 * table.c: no allocation under a lock the monitor may wait for.
 * table_refill(): called with @lock held after a no_alloc write failed with
 * EWOULDBLOCK at @idx; drops @lock, allocates the nodes, retakes it and
 * stocks them. The caller re-checks what the lock protected (the retry
 * protocol) and tries again. Returns 0 or -ENOMEM.
 * table_trim(): with the lock held, detach the graveyard when it holds more
 * than the live table plus TABLE_SPARE_BYTES; free the result with
 * pgt_free_nodes() after dropping the lock.
 */
#define TABLE_SPARE_BYTES ((uint64_t)256 << 10)
int table_refill(struct pgt *t, struct ulock *lock, uint64_t idx);
void *table_trim(struct pgt *t);

/* ctx.c */
/* Enter / leave a call that takes the context handle (see ctx->users):
 * -ENODEV when the context's last hold is gone (destroyed, no region, no
 * open token: its memory then stays only until ctx_leave()). ctx_hold():
 * take one of ctx->holds between the two, false when the last is gone
 * (never from 0 back to 1: the freer may be waiting in ctx_free()). */
int ctx_enter(struct uodp_ctx *ctx);
void ctx_leave(struct uodp_ctx *ctx);
bool ctx_hold(struct uodp_ctx *ctx);
/* True when ctx->pagemap_fd is still the file we opened (one fstat). */
bool ctx_pagemap_ours(struct uodp_ctx *ctx);
/* Drop one of ctx->holds, after the caller's last access to the context:
 * true when it was the last, and the caller then frees the context with
 * ctx_release() (which may reach a cancellation point: close()). */
bool ctx_drop(struct uodp_ctx *ctx);
void ctx_release(struct uodp_ctx *ctx);
/* @lazy: UODP_ACCESS_LAZY_WATCH (unf_watch_lazy()). */
int ctx_watch(struct uodp_ctx *ctx, uint64_t start, uint64_t end, bool lazy);
void ctx_unwatch(struct uodp_ctx *ctx, uint64_t start, uint64_t end);
int ctx_prepare(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
		bool *settled);

/* pin.c: mlock reference counts of pinning mode, one per page for the
 * whole process (the pin lock inside); pin_init() sets them up once (a
 * pinning context's creation), before any other call.
 * pin_range() takes a reference on each of @n pages from @va and returns
 * how many it took (*err: why it stopped early, -ENOMEM); unpin_range()
 * drops one on each of @n pages (never fails, never allocates). */
uint64_t pin_range(struct uodp_ctx *ctx, uint64_t va, uint64_t n, int *err);
void unpin_range(struct uodp_ctx *ctx, uint64_t va, uint64_t n);
/* The same without munlock(): the pages are gone (an UNMAP or a REMAP's
 * source reported by the kernel monitor; the kernel unlocked them with
 * their mapping). What is mapped there now is not ours to unlock: a new
 * mapping the application locked (MAP_LOCKED, mlockall(MCL_FUTURE)) would
 * lose its lock, and the call would be a system call for nothing. */
void unpin_gone(struct uodp_ctx *ctx, uint64_t va, uint64_t n);
void pin_init(void);
/* The engine's fork handler (ctx.c, its one fork detector) calls this in
 * the child: fresh counts, a fresh lock. */
void pin_fork_child(void);
/* Free the counts' emptied nodes beyond the spare (table.c): unpinning
 * runs under region locks, where nothing is freed; called holding no lock
 * after a release or teardown unpinned. */
void pin_trim(void);
/* mremap() moved @n pages from @from to @to (a kernel REMAP, before its
 * invalidation): unlock the destination pages whose source page the
 * process had pinned. Monitor thread; never allocates. */
void pin_moved(struct uodp_ctx *ctx, uint64_t from, uint64_t to, uint64_t n);
/* ctx.c: wait until the moves the monitor has read are reported to a
 * pinning context (uodp_umem_release(), before it unpins). No lock held. */
void ctx_settle_moves(struct uodp_ctx *ctx);

/* huge.c: see the comment at its top. */
bool huge_probe(const struct uodp_ctx *ctx);
bool huge_candidate(const struct uodp_umem *umem, uint64_t va, uint64_t n);
uint64_t huge_word_locked(const struct uodp_umem *umem, uint64_t va);
#define HUGE_CHANGED 2
int huge_install_locked(struct uodp_umem *umem, uint64_t va, uint64_t pfn,
			unsigned access);
int huge_covers_locked(struct uodp_umem *umem, uint64_t va, uint64_t n,
		       const uint64_t *pfns, unsigned access);
uint64_t huge_drop_locked(struct uodp_umem *umem, uint64_t s, uint64_t e);
size_t dirty_take_locked(struct uodp_umem *umem, void **pages, size_t max);

/* invalidate.c: a one-region invalidation (frame changed under an entry). */
void umem_invalidate_one(struct uodp_umem *umem, uint64_t start, uint64_t end,
			 enum uodp_event ev);
/* Every region of @ctx overlapping [s, e), in address order; tree lock
 * held (read or write). The index is the only list of a context's
 * regions: teardown walks it whole. */
#define for_each_overlap(ctx, it, umem, s, e)                                 \
	for (umem = rindex_iter_first(&(ctx)->tree, (s), (e)-1, &(it)); umem; \
	     umem = rindex_iter_next(&(it)))

/* The walk over every region overlapping [start, end): the kernel
 * notifier's sink and the manual entry points use it. */
void ctx_invalidate(struct uodp_ctx *ctx, uint64_t start, uint64_t end,
		    enum uodp_event ev, bool gone);
/* A kernel monitor's event whose memory is gone when it is delivered (an
 * UNMAP, a REMAP's source; not a REMOVE: MADV_DONTNEED_LOCKED discards
 * locked pages and keeps the mapping locked). */
static inline bool event_gone(enum uodp_event ev)
{
	return ev == UODP_EVENT_UNMAP || ev == UODP_EVENT_REMAP;
}

/*
 * Test hooks: called, when set, at the points named. They let tests stop a
 * thread exactly where a race window is and run the other side there.
 * Never set outside tests.
 */
extern void (*engine_test_hook_before_install)(struct uodp_umem *umem);
/* populate(), page by page after the batch failed: about to populate page
 * @va (!@failed), or that failed and its error is about to be classified
 * (@failed: the madvise() / mincore() window of lib/backoff.h). */
extern void (*engine_test_hook_populate)(uint64_t va, bool failed);
extern void (*engine_test_hook_after_start_walk)(struct uodp_ctx *ctx);
/* A call that takes the context handle, inside ctx_enter(): the context
 * is counted in users and not yet checked for a destroy. */
extern void (*engine_test_hook_entered)(struct uodp_ctx *ctx);
/* uodp_ctx_destroy(), about to detach the subscription (no lock held). */
extern void (*engine_test_hook_before_detach)(struct uodp_ctx *ctx);
/* A fault or read_begin about to block until invalidations end (the birth
 * period of @umem, or its busy stripes), with the lock their end takes
 * held: a thread seen here is in its wait before anything can wake it.
 * Must not block or call the library. */
extern void (*engine_test_hook_before_wait)(struct uodp_umem *umem);

#endif

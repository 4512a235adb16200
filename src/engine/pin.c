/* SPDX-License-Identifier: MIT */
/*
 * pin.c - on-demand pinning, for drivers that cannot invalidate.
 *
 * With UODP_CTX_PIN a mapped page must not move under the
 * device, so the engine mlock()s it while it is mapped. mlock() is not
 * counted by the kernel, and regions may overlap, in one context or in
 * several (two drivers of one process pinning one buffer), so the process
 * keeps one reference count per page (a sparse table indexed by page
 * number, below every context: a context's unlock must not undo another's
 * lock) and locks a page on its first reference and unlocks it on its
 * last, a run of consecutive pages per system call.
 * Caveat (documented): munlock() also undoes an mlock() the application
 * made itself on the same page. Pages the kernel monitor reports unmapped
 * (UNMAP, a REMAP's source) lose their references without munlock()
 * (unpin_gone()): they are gone, and what is mapped there since is not
 * ours to unlock.
 *
 * mremap() moves a mapping's VM_LOCKED with its pages: after the move the
 * destination is locked, the counted source a hole. The REMAP invalidation
 * drops the source's references (its munlock finds nothing there), so the
 * destination would stay locked for good, and the application's own
 * MADV_DONTNEED on it would fail (issue 12, finding 15's semantics change
 * on memory uodp no longer pins). With the kernel monitor the notifier
 * reports the destination first (pin_moved(); the hooks' in-thread mremap
 * too), and a move that grows the mapping has its new tail unlocked as
 * well; a manual context must invalidate before it moves pinned memory
 * (uodp.h). A release, uodp_umem_unmap() or manual invalidation on
 * another thread may run between the monitor's read of the REMAP and this
 * report: it waits for the report first
 * (ctx_settle_moves()), else it would drop the source's counts and the
 * report would find nothing to unlock.
 */
#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/internal.h"
#include "notifier/notifier.h" /* unf_map_end() */

/* The process's pin counts: page number -> references, under lock (a leaf
 * lock, see LOCKS in internal.h). Set up by the first pinning context and
 * kept for the life of the process. */
static struct {
	struct ulock lock;
	struct pgt pins;
	unsigned shift;
} pin_g;
static pthread_once_t pin_once = PTHREAD_ONCE_INIT;
static atomic_bool pin_ready; /* pin_setup() ran */

static void pin_table_init(void)
{
	pin_g.shift =
		(unsigned)__builtin_ctzl((unsigned long)sysconf(_SC_PAGESIZE));
	pgt_init(&pin_g.pins, UODP_VA_LIMIT >> pin_g.shift);
	pin_g.pins.no_alloc = true; /* see table.c */
}

/* A forked child inherits no mlock() and starts with no pin: fresh counts
 * and a fresh lock (another thread may have held it at the fork). The
 * parent's nodes are left behind, not freed (another thread may have been
 * changing them), but kept reachable (leak checkers). */
static struct pgt pin_parent_table;

void pin_fork_child(void)
{
	if (!atomic_load(&pin_ready))
		return;
	pin_parent_table = pin_g.pins;
	ulock_init(&pin_g.lock);
	pin_table_init();
}

static void pin_setup(void)
{
	/* Cannot fail on Linux (a default mutex allocates nothing). */
	ulock_init(&pin_g.lock);
	pin_table_init();
	atomic_store(&pin_ready, true);
}

void pin_init(void)
{
	pthread_once(&pin_once, pin_setup);
}

void pin_trim(void)
{
	void *dead;

	ulock_lock(&pin_g.lock);
	dead = table_trim(&pin_g.pins);
	ulock_unlock(&pin_g.lock);
	pgt_free_nodes(dead);
}

/* Consecutive pages to munlock() with one system call: add pages in
 * ascending order, flush at the end (munlock fails harmlessly with ENOMEM
 * where a page is unmapped). */
struct unlock_run {
	uint64_t first, n;
	unsigned shift;
};

static void run_flush(struct unlock_run *r)
{
	uint64_t k;

	/* ENOMEM: a hole in the run (pages unmapped since they were
	 * pinned, under an invalidation wider than the unmap: a deferred
	 * context's merged one). munlock() stops at the first hole and
	 * would leave the mapped pages after it locked for good: page by
	 * page then (test_pinned_deferred_hull). */
	if (r->n && munlock((void *)(r->first << r->shift), r->n << r->shift) &&
	    errno == ENOMEM)
		for (k = 0; k < r->n; k++)
			munlock((void *)((r->first + k) << r->shift),
				(size_t)1 << r->shift);
	r->n = 0;
}

static void run_add(struct unlock_run *r, uint64_t pg)
{
	if (r->n && r->first + r->n != pg)
		run_flush(r);
	if (!r->n)
		r->first = pg;
	r->n++;
}

/* Drop one reference of @n pages from page number @pg; pin_lock held.
 * Lowering a count never allocates, so this cannot fail and is safe on the
 * monitor thread. Pages whose last reference goes are unlocked. */
static void unref_locked(struct uodp_ctx *ctx, uint64_t pg, uint64_t n,
			 bool unlock)
{
	struct unlock_run run = { .shift = ctx->page_shift };
	uint64_t i, refs;

	ulock_assert_held(&pin_g.lock);
	for (i = 0; i < n; i++) {
		refs = pgt_get(&pin_g.pins, pg + i);
		if (!refs)
			continue;
		pgt_set(&pin_g.pins, pg + i, refs - 1);
		if (refs == 1 && unlock)
			run_add(&run, pg + i);
	}
	run_flush(&run);
}

/* mlock() pages [first, first + len) of page numbers; pin_lock held. On
 * failure (RLIMIT_MEMLOCK) lock page by page, so that as many pages are
 * pinned as fit. Returns how many were locked, from @first. */
static uint64_t lock_run(struct uodp_ctx *ctx, uint64_t first, uint64_t len)
{
	unsigned shift = ctx->page_shift;
	uint64_t k;

	if (!len || !mlock((void *)(first << shift), len << shift))
		return len;
	for (k = 0; k < len; k++)
		if (mlock((void *)((first + k) << shift), (size_t)1 << shift))
			break;
	return k;
}

uint64_t pin_range(struct uodp_ctx *ctx, uint64_t va, uint64_t n, int *err)
{
	uint64_t pg = va >> ctx->page_shift, i = 0, refs, run = 0, len = 0;
	uint64_t got = 0;
	bool short_run = false;
	void *dead;
	int r = 0;

	ulock_lock(&pin_g.lock);
	/* Pages [run, run + len) went from 0 to 1 references and are not
	 * locked yet. The run is locked when it ends: at a page that starts
	 * another run, before a refill drops the lock (no other thread may
	 * see a counted page that is not locked), and at the end. */
	while (i < n) {
		refs = pgt_get(&pin_g.pins, pg + i);
		if (!refs && len && run + len != pg + i) {
			got = lock_run(ctx, run, len);
			if (got != len) {
				short_run = true;
				break;
			}
			len = 0;
		}
		r = pgt_set(&pin_g.pins, pg + i, refs + 1);
		if (r == -EWOULDBLOCK) {
			got = lock_run(ctx, run, len);
			if (got != len) {
				short_run = true;
				break;
			}
			len = 0;
			r = table_refill(&pin_g.pins, &pin_g.lock, pg + i);
			if (r)
				break;
			continue;
		}
		if (r)
			break;
		if (!refs) {
			if (!len)
				run = pg + i;
			len++;
		}
		i++;
	}
	if (!short_run && len) {
		got = lock_run(ctx, run, len);
		short_run = got != len;
	}
	if (short_run) {
		/* Pages from run + got on are not locked (RLIMIT_MEMLOCK):
		 * give back every reference taken from there on (page pg + i
		 * was not counted), and report the pages before. */
		unref_locked(ctx, run + got, pg + i - (run + got), true);
		i = run + got - pg;
		r = -ENOMEM;
	}
	dead = table_trim(&pin_g.pins);
	ulock_unlock(&pin_g.lock);
	pgt_free_nodes(dead);
	*err = r;
	return i;
}

void unpin_range(struct uodp_ctx *ctx, uint64_t va, uint64_t n)
{
	ulock_lock(&pin_g.lock);
	unref_locked(ctx, va >> ctx->page_shift, n, true);
	ulock_unlock(&pin_g.lock);
}

void unpin_gone(struct uodp_ctx *ctx, uint64_t va, uint64_t n)
{
	ulock_lock(&pin_g.lock);
	unref_locked(ctx, va >> ctx->page_shift, n, false);
	ulock_unlock(&pin_g.lock);
}

/* The source's pinned pages, a batch of runs at a time: pgt_for_each()
 * skips empty subtrees (a large move with few pinned pages costs their
 * number, not the move's length) but its callback may not look the table
 * up, so the destination's counts are read between batches. */
#define MOVED_BATCH 64

struct moved_scan {
	uint64_t first[MOVED_BATCH], n[MOVED_BATCH];
	unsigned k;
	uint64_t next; /* where the walk stopped (batch full), or its end */
};

static int moved_word(uint64_t idx, uint64_t *word, void *argp)
{
	struct moved_scan *m = argp;

	if (!*word)
		return 0;
	if (m->k && m->first[m->k - 1] + m->n[m->k - 1] == idx) {
		m->n[m->k - 1]++;
		return 0;
	}
	if (m->k == MOVED_BATCH) {
		m->next = idx;
		return 1;
	}
	m->first[m->k] = idx;
	m->n[m->k++] = 1;
	return 0;
}

/*
 * mremap() moved @n pages from @from to @to. Unlocked at the destination:
 * the pages the process had pinned at the source, and, when the move also
 * grew the mapping (the kernel populates and locks the new tail; the REMAP
 * reports the old length only), the tail: up to the end of the mapping
 * that holds the last moved page, read before a munlock splits it (a moved mapping
 * merges with no neighbour that has pages of its own). Pages pinned at the
 * destination (a fault there after the move, any context's) stay locked.
 * Each pinning context is told of the move: the first call unlocks, the
 * others find the same pages and unlock them again (harmless). No
 * allocation: the monitor thread's rules.
 */
void pin_moved(struct uodp_ctx *ctx, uint64_t from, uint64_t to, uint64_t n)
{
	struct unlock_run run = { .shift = ctx->page_shift };
	unsigned shift = ctx->page_shift;
	uint64_t src = from >> shift, dst = to >> shift, i, d, end = 0;
	struct moved_scan m;
	unsigned j;

	ulock_lock(&pin_g.lock);
	if (!n || !pgt_get(&pin_g.pins, src + n - 1) ||
	    unf_map_end((dst + n - 1) << shift, &end))
		end = 0; /* no tail of ours to look for */
	for (i = src; i < src + n; i = m.next) {
		m.k = 0;
		m.next = src + n;
		pgt_for_each(&pin_g.pins, i, src + n, moved_word, &m);
		for (j = 0; j < m.k; j++)
			for (d = dst + (m.first[j] - src);
			     d < dst + (m.first[j] - src) + m.n[j]; d++)
				if (!pgt_get(&pin_g.pins, d))
					run_add(&run, d);
	}
	for (i = dst + n; i < end >> shift; i++)
		if (!pgt_get(&pin_g.pins, i))
			run_add(&run, i);
	run_flush(&run);
	ulock_unlock(&pin_g.lock);
}

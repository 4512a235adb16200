/* SPDX-License-Identifier: MIT */
/*
 * suite_index.c - the region index suite (issue 11): rindex
 * (src/lib/rindex.c: a radix front of 8-KiB buckets for short intervals, a
 * B+-tree for the rest) against the red-black itree it is meant to replace
 * and against UCX's structure, at 10^3 .. 10^6 one-page regions inserted
 * in random order.
 *
 * Regions are one page each at BASE + 2 * i pages (the page after each is
 * a gap, so no-hit queries exist). Rows, per region count n:
 *   no-hit lookup    overlap query of a gap page (nothing found)
 *   one-hit lookup   overlap query of a region's page (one owner found)
 *   insert, remove   one region into / out of an index of ~n regions:
 *                    a random batch is removed, then inserted again
 *   bytes/region     index memory per region
 * each against the itree and against UCX. At the largest n only, the
 * library's own registration against ucs_rcache's, interleaved (ix_churn):
 *   register new region    uodp_umem_get vs ucs_rcache_get of a new region
 *   release region         uodp_umem_release vs invalidate + put
 *   register growing to n  both, while growing from 0 to n
 *   one-hit invalidation   uodp_invalidate_range of one region (callback
 *                          included) + release + get, vs UCX's unmap event
 *                          (ucm_vm_munmap) + the ucs_rcache_get that
 *                          completes it + put of the old region (ch_inval)
 *
 * The UCX baseline. ucs_rcache keeps its regions in a ucs_pgtable (a
 * 16-way radix tree over the address) and answers an invalidation with
 * ucs_pgtable_search_range() over the unmapped range: that call is the
 * overlap query, so the lookup rows time it on a pgtable of our own holding
 * the same regions (the rcache's own pgtable is not reachable through the
 * public API, and ucs_rcache_get on a hit adds a lock and a refcount, not a
 * search). Insert and remove are held against ucs_pgtable_insert/remove
 * (the structure alone; its directories come from a free list here, as
 * from the rcache's memory pool, which favours UCX), and shown against
 * the whole ucs_rcache_get / ucs_rcache_region_invalidate path with a
 * mem_reg that does nothing. rindex rows include everything the allocation
 * rule makes a writer do: reserve + insert + release, and remove + take +
 * free garbage.
 *
 * Variants are interleaved: each round measures every variant once, in a
 * rotating order, so drift hits all alike. Owns only its measurements.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"
#include "lib/itree.h"
#include "lib/rindex.h"
#include "uodp.h"

#ifdef UODP_HAVE_UCX
#include <dlfcn.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <ucs/datastruct/pgtable.h>
#include <ucs/memory/rcache.h>
#include <ucm/api/ucm.h>
#pragma GCC diagnostic pop

/*
 * libucs is loaded here, when this suite runs, not linked into the tool.
 * Its constructor installs UCM's mmap/munmap/mremap/madvise hooks in the
 * whole process (UCX 1.13: ucs_init -> ucm_library_init ->
 * ucm_mmap_install, seen in gdb), so a linked libucs put UCX's hooks under
 * `uodp demo` and under every other suite: UCM 1.13's mremap hook drops
 * MREMAP_FIXED's new address (the demo's mremap failed), and TSan builds
 * crashed in UCM's madvise hook at thread exit. This suite needs only
 * ucs_pgtable and an ucs_rcache with no memory events, so the hooks are
 * turned off in the environment first (unless the user set them).
 */
static struct {
	bool tried, ok;
	__typeof__(ucs_pgtable_init) *pgtable_init;
	__typeof__(ucs_pgtable_cleanup) *pgtable_cleanup;
	__typeof__(ucs_pgtable_insert) *pgtable_insert;
	__typeof__(ucs_pgtable_remove) *pgtable_remove;
	__typeof__(ucs_pgtable_search_range) *pgtable_search_range;
	__typeof__(ucs_rcache_create) *rcache_create;
	__typeof__(ucs_rcache_destroy) *rcache_destroy;
	__typeof__(ucs_rcache_get) *rcache_get;
	__typeof__(ucs_rcache_region_invalidate) *rcache_region_invalidate;
	__typeof__(ucs_rcache_region_put) *rcache_region_put;
	/* libucm's (a dependency of libucs): UCX's own unmap event without
	 * its hooks, for the one-hit invalidation rows (NULL: skipped) */
	__typeof__(ucm_set_external_event) *set_external_event;
	__typeof__(ucm_vm_munmap) *vm_munmap;
} ucx;

static bool ix_ucx_load(void)
{
	void *h;

	if (ucx.tried)
		return ucx.ok;
	ucx.tried = true;
	setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
	setenv("UCX_MEM_MALLOC_HOOKS", "no", 0);
	/* and UCX's SIGSEGV/SIGBUS/SIGILL/SIGFPE handlers, which it installs
	 * at load otherwise (over the device's fault handler) */
	setenv("UCX_HANDLE_ERRORS", "none", 0);
	h = dlopen("libucs.so.0", RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		bench_note("UCX baseline: %s", dlerror());
		return false;
	}
#define IX_SYM(f) (ucx.f = (__typeof__(ucx.f))dlsym(h, "ucs_" #f)) != NULL
	ucx.ok = IX_SYM(pgtable_init) && IX_SYM(pgtable_cleanup) &&
		 IX_SYM(pgtable_insert) && IX_SYM(pgtable_remove) &&
		 IX_SYM(pgtable_search_range) && IX_SYM(rcache_create) &&
		 IX_SYM(rcache_destroy) && IX_SYM(rcache_get) &&
		 IX_SYM(rcache_region_invalidate) && IX_SYM(rcache_region_put);
#undef IX_SYM
	if (!ucx.ok)
		bench_note("UCX baseline: %s", dlerror());
	ucx.set_external_event = (__typeof__(ucx.set_external_event))dlsym(
		h, "ucm_set_external_event");
	ucx.vm_munmap = (__typeof__(ucx.vm_munmap))dlsym(h, "ucm_vm_munmap");
	return ucx.ok; /* the library stays loaded: its regions may live on */
}
#endif

#define IX_BASE UINT64_C(0x200000000000)
/* Queries per lookup sample: 4096 random targets cycle through the tree,
 * so a sample is not one warm path repeated. */
#define IX_NQ 4096
/* Regions removed and re-inserted per insert/remove sample: enough to
 * average out one split or merge (~1 in 8 ops), few enough that the tree
 * stays at ~n. */
#define IX_BATCH 1024

static volatile uint64_t ix_sink;

static uint64_t ix_state = 0x9e3779b97f4a7c15ull;
static uint64_t ix_rnd(void)
{
	return bench_rand(&ix_state);
}

enum ix_var {
	IV_RINDEX,
	IV_ITREE,
	IV_PGT,	   /* ucs_pgtable */
	IV_RCACHE, /* ucs_rcache (insert/remove only) */
	IV_N
};

#ifdef UODP_HAVE_UCX
/* pgtable directories: a free list in front of aligned_alloc, as the
 * rcache's memory pool would give them. */
struct ix_dir {
	struct ix_dir *next;
};
static struct ix_dir *ix_dirs;
static uint64_t ix_ndirs; /* directories in use */
#define IX_DIR_BYTES ((sizeof(ucs_pgt_dir_t) + 63) & ~(size_t)63)

static ucs_pgt_dir_t *ix_dir_alloc(const ucs_pgtable_t *pgt)
{
	struct ix_dir *d = ix_dirs;

	(void)pgt;
	ix_ndirs++;
	if (d) {
		ix_dirs = d->next;
		return (ucs_pgt_dir_t *)d;
	}
	return aligned_alloc(64, IX_DIR_BYTES);
}

static void ix_dir_release(const ucs_pgtable_t *pgt, ucs_pgt_dir_t *dir)
{
	struct ix_dir *d = (struct ix_dir *)dir;

	(void)pgt;
	ix_ndirs--;
	d->next = ix_dirs;
	ix_dirs = d;
}

static void ix_dirs_free(void)
{
	struct ix_dir *d;

	while ((d = ix_dirs)) {
		ix_dirs = d->next;
		free(d);
	}
}

static void ix_count_cb(const ucs_pgtable_t *pgt, ucs_pgt_region_t *r,
			void *arg)
{
	(void)pgt;
	(void)r;
	++*(uint64_t *)arg;
}

static ucs_status_t ix_mem_reg(void *ctx, ucs_rcache_t *rc, void *arg,
			       ucs_rcache_region_t *r, uint16_t flags)
{
	(void)ctx;
	(void)rc;
	(void)arg;
	(void)r;
	(void)flags;
	return UCS_OK;
}

static void ix_mem_dereg(void *ctx, ucs_rcache_t *rc, ucs_rcache_region_t *r)
{
	(void)ctx;
	(void)rc;
	(void)r;
}

static void ix_dump(void *ctx, ucs_rcache_t *rc, ucs_rcache_region_t *r,
		    char *buf, size_t max)
{
	(void)ctx;
	(void)rc;
	(void)r;
	if (max)
		buf[0] = 0;
}

/* Invalidation completion: the rcache calls it when the region goes. */
static void ix_inval_done(void *arg)
{
	(void)arg;
}

static const ucs_rcache_ops_t ix_rc_ops = { ix_mem_reg, ix_mem_dereg, ix_dump };

/* @events: UCM events the cache subscribes to (0: none; the one-hit
 * invalidation rows ask for UCM_EVENT_VM_UNMAPPED, declared external so
 * that UCM installs no hook and only ucm_vm_munmap() reports it). */
static ucs_rcache_t *ix_rcache(int events)
{
	ucs_rcache_params_t p;
	ucs_rcache_t *rc;

	memset(&p, 0, sizeof(p));
	p.region_struct_size = sizeof(ucs_rcache_region_t);
	p.alignment = UCS_RCACHE_MIN_ALIGNMENT;
	p.max_alignment = (size_t)sysconf(_SC_PAGESIZE);
	p.ucm_events = events; /* no memory hooks: only the cache is timed */
	p.ops = &ix_rc_ops;
	p.flags = UCS_RCACHE_FLAG_NO_PFN_CHECK;
	p.max_regions = (unsigned long)-1;
	p.max_size = (size_t)-1;
	p.max_unreleased = (size_t)-1;
	if (ucx.rcache_create(&p, "uodp-bench", NULL, &rc) != UCS_OK)
		return NULL;
	return rc;
}
#endif

/* Everything one region count needs. */
struct ix {
	uint64_t n, pg;
	uint64_t *perm;		  /* random insertion order */
	struct itree_node *nodes; /* itree nodes, one per region */
	struct itree tree;
	struct rindex ridx;
	char *owners; /* rindex owners: one byte per region */
	bool have_ucx;
#ifdef UODP_HAVE_UCX
	ucs_pgt_region_t *pregs;
	ucs_pgtable_t pgt;
	bool pgt_init;
	ucs_rcache_t *rc;
	ucs_rcache_region_t **rregs;
#endif
};

static uint64_t ix_addr(const struct ix *x, uint64_t i)
{
	return IX_BASE + 2 * i * x->pg;
}

static int ix_insert(struct ix *x, enum ix_var v, uint64_t i)
{
	uint64_t a = ix_addr(x, i);

	switch (v) {
	case IV_RINDEX: {
		struct rindex_reserve r;
		int err = rindex_reserve(&r, &x->ridx);

		if (!err)
			err = rindex_insert(&x->ridx, &r, a, a + x->pg - 1,
					    &x->owners[i]);
		rindex_reserve_release(&r);
		return err;
	}
	case IV_ITREE:
		itree_insert(&x->tree, &x->nodes[i]);
		return 0;
#ifdef UODP_HAVE_UCX
	case IV_PGT:
		return ucx.pgtable_insert(&x->pgt, &x->pregs[i]) == UCS_OK ?
			       0 :
			       -EIO;
	case IV_RCACHE:
		return ucx.rcache_get(x->rc, (void *)a, x->pg,
				      PROT_READ | PROT_WRITE, NULL,
				      &x->rregs[i]) == UCS_OK ?
			       0 :
			       -EIO;
#endif
	default:
		return -ENOSYS;
	}
}

static int ix_remove(struct ix *x, enum ix_var v, uint64_t i)
{
	uint64_t a = ix_addr(x, i);

	switch (v) {
	case IV_RINDEX: {
		struct rindex_garbage g;
		int err = rindex_remove(&x->ridx, a, a + x->pg - 1,
					&x->owners[i]);

		rindex_take_garbage(&x->ridx, &g);
		rindex_free_garbage(&x->ridx, &g);
		return err;
	}
	case IV_ITREE:
		itree_remove(&x->tree, &x->nodes[i]);
		return 0;
#ifdef UODP_HAVE_UCX
	case IV_PGT:
		return ucx.pgtable_remove(&x->pgt, &x->pregs[i]) == UCS_OK ?
			       0 :
			       -EIO;
	case IV_RCACHE:
		/* Out of the page table, then drop our reference: the
		 * region is destroyed (mem_dereg) on the put. */
		ucx.rcache_region_invalidate(x->rc, x->rregs[i], ix_inval_done,
					     NULL);
		ucx.rcache_region_put(x->rc, x->rregs[i]);
		return 0;
#endif
	default:
		return -ENOSYS;
	}
}

/* Overlaps of [a, a + pg - 1] counted into the sink. */
static uint64_t ix_query(struct ix *x, enum ix_var v, uint64_t a)
{
	uint64_t last = a + x->pg - 1, k = 0;

	switch (v) {
	case IV_RINDEX: {
		struct rindex_iter it;
		void *o;

		for (o = rindex_iter_first(&x->ridx, a, last, &it); o;
		     o = rindex_iter_next(&it))
			k++;
		break;
	}
	case IV_ITREE: {
		struct itree_node *nd;

		for (nd = itree_iter_first(&x->tree, a, last); nd;
		     nd = itree_iter_next(nd, a, last))
			k++;
		break;
	}
#ifdef UODP_HAVE_UCX
	case IV_PGT:
		ucx.pgtable_search_range(&x->pgt, a, last, ix_count_cb, &k);
		break;
#endif
	default:
		break;
	}
	return k;
}

static bool ix_has(const struct ix *x, enum ix_var v)
{
	if (v == IV_PGT)
		return x->have_ucx;
	if (v == IV_RCACHE)
		return x->have_ucx && x->n <= 1000000;
	return true;
}

/* Build all variants with the same random order. Returns 0 or -1. */
static int ix_build(struct ix *x)
{
	uint64_t i, j, t;
	enum ix_var v;

	for (i = 0; i < x->n; i++)
		x->perm[i] = i;
	for (i = x->n; i > 1; i--) {
		j = ix_rnd() % i;
		t = x->perm[i - 1];
		x->perm[i - 1] = x->perm[j];
		x->perm[j] = t;
	}
	for (i = 0; i < x->n; i++) {
		uint64_t a = ix_addr(x, i);

		x->nodes[i].start = a;
		x->nodes[i].last = a + x->pg - 1;
#ifdef UODP_HAVE_UCX
		x->pregs[i].start = a;
		x->pregs[i].end = a + x->pg;
#endif
	}
	for (v = 0; v < IV_N; v++) {
		if (!ix_has(x, v))
			continue;
		for (i = 0; i < x->n; i++)
			if (ix_insert(x, v, x->perm[i])) {
				bench_note("index: insert failed (variant %d, "
					   "region %llu)",
					   (int)v, (unsigned long long)i);
				return -1;
			}
	}
	return 0;
}

enum ix_op {
	IO_MISS,
	IO_HIT,
	IO_INSERT,
	IO_REMOVE,
};

/*
 * One sample of @op on variant @v: mean ns per operation. Insert and
 * remove samples come in pairs: a remove sample takes a batch out, the
 * following insert sample puts the same batch back.
 */
static double ix_sample(struct ix *x, enum ix_var v, enum ix_op op,
			const uint64_t *q, unsigned nq, const uint64_t *batch,
			unsigned nb)
{
	uint64_t t0, acc = 0;
	unsigned j;

	t0 = bench_now_ns();
	switch (op) {
	case IO_MISS:
	case IO_HIT:
		for (j = 0; j < nq; j++)
			acc += ix_query(x, v, q[j]);
		break;
	case IO_INSERT:
		for (j = 0; j < nb; j++)
			acc += (uint64_t)ix_insert(x, v, batch[j]);
		break;
	case IO_REMOVE:
		for (j = 0; j < nb; j++)
			acc += (uint64_t)ix_remove(x, v, batch[j]);
		break;
	}
	t0 = bench_now_ns() - t0;
	ix_sink += acc;
	return (double)t0 / (op <= IO_HIT ? nq : nb);
}

static const char *const ix_var_name[IV_N] = {
	"rindex",
	"itree (red-black)",
	"ucs_pgtable (UCX)",
	"ucs_rcache (UCX)",
};

/* Emit the rows of one operation: rindex against each baseline. */
static void ix_emit(const struct ix *x, const char *name, double *s[IV_N],
		    unsigned ns, bool held, const char *note)
{
	struct bench_stats st[IV_N];
	enum ix_var v;
	bool lookup = strstr(name, "lookup") != NULL;

	for (v = 0; v < IV_N; v++)
		bench_stats(s[v], ns, &st[v]);
	for (v = IV_ITREE; v < IV_N; v++) {
		struct bench_row r =
			bench_row("index", name, (double)x->n, "ns");

		if (v == IV_RCACHE && lookup)
			continue;
		snprintf(r.param, sizeof(r.param), "%llu",
			 (unsigned long long)x->n);
		r.v = st[IV_RINDEX];
		r.base_name = ix_var_name[v];
		r.rk = BR_TIME;
		if (v >= IV_PGT && !x->have_ucx) {
			r.base_na = true;
			r.base_note = "skipped: built without libucx-dev";
		} else {
			r.b = st[v];
		}
		/* Issue 11: >= 1.0x UCX's structure at 10^6 regions (insert,
		 * no-hit, one-hit); no slower than the itree at 10^3. */
		if ((v == IV_PGT && held && x->n == 1000000 &&
		     strcmp(name, "remove")) ||
		    (v == IV_ITREE && x->n == 1000 && lookup)) {
			r.tk = BT_RATIO_MIN;
			r.target = 1.0;
		}
		r.note = v == IV_ITREE ? note : NULL;
		bench_emit(&r);
	}
}

static void ix_size(uint64_t n, unsigned rounds)
{
	struct ix x;
	uint64_t *qmiss = NULL, *qhit = NULL, *batch = NULL;
	double *s[4][IV_N];
	unsigned k, j, vv;
	enum ix_var v;
	uint64_t i;

	memset(&x, 0, sizeof(x));
	memset(s, 0, sizeof(s));
	x.n = n;
	x.pg = (uint64_t)sysconf(_SC_PAGESIZE);
	itree_init(&x.tree);
	if (rindex_init(&x.ridx))
		return;
#ifdef UODP_HAVE_UCX
	x.have_ucx = ix_ucx_load();
	x.pgt_init = x.have_ucx && ucx.pgtable_init(&x.pgt, ix_dir_alloc,
						    ix_dir_release) == UCS_OK;
	if (!x.pgt_init)
		x.have_ucx = false;
	x.rc = x.have_ucx ? ix_rcache(0) : NULL;
	if (!x.rc)
		x.have_ucx = false;
	x.pregs = aligned_alloc(64, n * sizeof(*x.pregs));
	x.rregs = calloc(n, sizeof(*x.rregs));
	if (!x.pregs || !x.rregs)
		goto out;
#endif
	x.perm = calloc(n, sizeof(*x.perm));
	x.nodes = calloc(n, sizeof(*x.nodes));
	x.owners = calloc(n, 1);
	qmiss = calloc(IX_NQ, sizeof(*qmiss));
	qhit = calloc(IX_NQ, sizeof(*qhit));
	batch = calloc(IX_BATCH, sizeof(*batch));
	for (j = 0; j < 4; j++)
		for (v = 0; v < IV_N; v++)
			if (!(s[j][v] = calloc(rounds, sizeof(double))))
				goto out;
	if (!x.perm || !x.nodes || !x.owners || !qmiss || !qhit || !batch)
		goto out;
	if (ix_build(&x))
		goto out;
	for (k = 0; k < IX_NQ; k++) {
		i = ix_rnd() % n;
		qhit[k] = ix_addr(&x, i);
		qmiss[k] = qhit[k] + x.pg;
	}
	/* One warm-up round, then @rounds measured ones. */
	for (k = 0; k <= rounds; k++) {
		unsigned nb = n < 4 * IX_BATCH ? (unsigned)(n / 4) : IX_BATCH;

		/* A batch of distinct regions: a random window of the
		 * insertion order (itself random). */
		i = ix_rnd() % (n - nb + 1);
		for (j = 0; j < nb; j++)
			batch[j] = x.perm[i + j];
		for (vv = 0; vv < IV_N; vv++) {
			double m, h, rm, in;

			v = (enum ix_var)((vv + k) % IV_N);
			if (!ix_has(&x, v))
				continue;
			m = v == IV_RCACHE ? 0 :
					     ix_sample(&x, v, IO_MISS, qmiss,
						       IX_NQ, NULL, 0);
			h = v == IV_RCACHE ? 0 :
					     ix_sample(&x, v, IO_HIT, qhit,
						       IX_NQ, NULL, 0);
			rm = ix_sample(&x, v, IO_REMOVE, NULL, 0, batch, nb);
			in = ix_sample(&x, v, IO_INSERT, NULL, 0, batch, nb);
			if (!k)
				continue;
			s[0][v][k - 1] = m;
			s[1][v][k - 1] = h;
			s[2][v][k - 1] = in;
			s[3][v][k - 1] = rm;
		}
	}
	if (ix_sink == UINT64_MAX)
		bench_note("(sink)");
	ix_emit(&x, "no-hit lookup", s[0], rounds, true,
		"overlap query of a gap page");
	ix_emit(&x, "one-hit lookup", s[1], rounds, true,
		"overlap query of a region's page");
	ix_emit(&x, "insert", s[2], rounds, true,
		"rindex: reserve + insert + release");
	ix_emit(&x, "remove", s[3], rounds, false,
		"rindex: remove + take + free garbage");
	{
		struct bench_row r =
			bench_row("index", "bytes/region", (double)n, "B");

		snprintf(r.param, sizeof(r.param), "%llu",
			 (unsigned long long)n);
		r.v.n = r.b.n = 1;
		r.v.min = r.v.median = r.v.p99 = r.v.max =
			(double)rindex_tree_bytes(&x.ridx) / (double)n;
		r.b.min = r.b.median = r.b.p99 = r.b.max =
			(double)sizeof(struct itree_node);
		r.base_name = "itree node in region";
		r.rk = BR_SIZE;
		r.note = "rindex blocks in use / n (spare pools, garbage "
			 "excluded)";
		bench_emit(&r);
#ifdef UODP_HAVE_UCX
		if (x.have_ucx) {
			r.b.min = r.b.median = r.b.p99 = r.b.max =
				(double)(ix_ndirs * IX_DIR_BYTES +
					 n * sizeof(ucs_pgt_region_t)) /
				(double)n;
			r.base_name = "ucs_pgtable dirs+region";
			r.note = "UCX: pgtable dirs (64-B aligned) + "
				 "ucs_pgt_region_t";
			bench_emit(&r);
		}
#endif
	}
out:
	rindex_destroy(&x.ridx);
#ifdef UODP_HAVE_UCX
	if (x.rc) {
		for (i = 0; i < n && x.rregs; i++)
			if (x.rregs[i])
				ix_remove(&x, IV_RCACHE, i);
		ucx.rcache_destroy(x.rc);
	}
	if (x.pgt_init) {
		for (i = 0; i < n && x.pregs; i++)
			ucx.pgtable_remove(&x.pgt, &x.pregs[i]);
		ucx.pgtable_cleanup(&x.pgt);
	}
	ix_dirs_free();
	free(x.pregs);
	free(x.rregs);
#endif
	free(x.perm);
	free(x.nodes);
	free(x.owners);
	free(qmiss);
	free(qhit);
	free(batch);
	for (j = 0; j < 4; j++)
		for (v = 0; v < IV_N; v++)
			free(s[j][v]);
}

/*
 * Registration of NEW regions at ~n, both libraries in one run (issue 11):
 * uodp_umem_get on a manual context against ucs_rcache_get of a region not
 * in the cache, and uodp_umem_release against ucs_rcache_region_invalidate
 * + put. Neither registers memory (the context is manual, the rcache's
 * mem_reg does nothing), so both time their own bookkeeping: allocation,
 * index, locks. The pair used to come from two suites (lookup's "umem_get
 * at n regions", the registrations that grew a context, against this
 * suite's rcache insert, a batch re-inserted just after its removal, so
 * in cache): not the same operation.
 *
 * Here both hold the same n one-page regions, placed on n of n + n/8 slots
 * (slot i at CH_BASE + 2 i pages) in the same random order. Each round
 * picks a batch of free slots at random and registers it on each side in
 * turn (rotating order), then picks a batch of held regions at random and
 * releases it on each side: every operation is on a region nobody touched
 * recently, at random addresses, and the count stays at ~n.
 */
#ifdef UODP_HAVE_UCX
#define CH_BASE UINT64_C(0x300000000000)

enum ch_var {
	CV_UODP,
	CV_RCACHE,
	CV_N
};

struct ch {
	uint64_t pg;
	struct uodp_ctx *ctx;
	struct uodp_umem **ums; /* per slot */
	ucs_rcache_t *rc;
	ucs_rcache_region_t **rregs; /* per slot */
	bool unmapped; /* rc hears ucm_vm_munmap(): invalidation rows */
};

static void ch_noop_inval(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv)
{
	(void)umem;
	(void)range;
	(void)priv;
}

static int ch_get(struct ch *c, enum ch_var v, uint64_t slot)
{
	uint64_t a = CH_BASE + 2 * slot * c->pg;

	if (v == CV_UODP)
		return uodp_umem_get(c->ctx, (void *)a, c->pg,
				     UODP_ACCESS_READ | UODP_ACCESS_WRITE,
				     &c->ums[slot]);
	return ucx.rcache_get(c->rc, (void *)a, c->pg, PROT_READ | PROT_WRITE,
			      NULL, &c->rregs[slot]) == UCS_OK ?
		       0 :
		       -EIO;
}

static void ch_put(struct ch *c, enum ch_var v, uint64_t slot)
{
	if (v == CV_UODP) {
		uodp_umem_release(c->ums[slot]);
		c->ums[slot] = NULL;
		return;
	}
	ucx.rcache_region_invalidate(c->rc, c->rregs[slot], ix_inval_done,
				     NULL);
	ucx.rcache_region_put(c->rc, c->rregs[slot]);
	c->rregs[slot] = NULL;
}

/*
 * One-hit invalidation of the region at @slot, and what puts the cache back
 * as it was (n regions, each registered once), on each side:
 *  - UCX: the unmap event as UCM reports it (ucm_vm_munmap(): the rcache's
 *    unmapped callback queues the range), the next ucs_rcache_get of the
 *    address (it processes the queue first: the old region leaves the
 *    pgtable; then a miss, a new region), and the put of the old region
 *    (its last reference: mem_dereg, free);
 *  - uodp: uodp_invalidate_range() of the region's page (UODP_EVENT_UNMAP:
 *    the driver's callback, counters, entries) - the region stays
 *    registered, as uodp keeps regions across invalidations - then, to
 *    mirror the UCX side step for step, the region is released and
 *    registered again (a new region object at the same address);
 *  - with @keep (CV_N: the row without a target): uodp_invalidate_range()
 *    alone, all a uodp user needs before the region is used again.
 * Returns 0, -EIO when a call failed, -ENOTSUP when the rcache handed back
 * the old region (the event did not reach it).
 */
static int ch_inval(struct ch *c, enum ch_var v, uint64_t slot, bool keep)
{
	uint64_t a = CH_BASE + 2 * slot * c->pg;
	ucs_rcache_region_t *old;
	int r;

	if (v == CV_UODP) {
		r = uodp_invalidate_range(c->ctx, (void *)a, c->pg,
					  UODP_EVENT_UNMAP);
		if (r || keep)
			return r;
		uodp_umem_release(c->ums[slot]);
		c->ums[slot] = NULL;
		return ch_get(c, v, slot);
	}
	old = c->rregs[slot];
	ucx.vm_munmap((void *)a, c->pg);
	r = ch_get(c, v, slot);
	if (r) {
		c->rregs[slot] = old; /* still ours: put at teardown */
		return r;
	}
	ucx.rcache_region_put(c->rc, old);
	return c->rregs[slot] == old ? -ENOTSUP : 0;
}

/* Move @nb random entries of a[0 .. *na) to its tail, drop them from it
 * and return where they start. */
static uint64_t *ch_pick(uint64_t *a, uint64_t *na, unsigned nb)
{
	for (unsigned j = 0; j < nb; j++) {
		uint64_t i = ix_rnd() % (*na - j), t = a[i];

		a[i] = a[*na - j - 1];
		a[*na - j - 1] = t;
	}
	*na -= nb;
	return a + *na;
}

static void ix_churn(uint64_t n, unsigned rounds)
{
	static const struct uodp_ctx_ops ops = { .invalidate = ch_noop_inval };
	uint64_t nslots = n + n / 8, nocc = 0, nfree = 0, i;
	unsigned nb = n < 4 * IX_BATCH ? (unsigned)(n / 4) : IX_BATCH, k, vv;
	uint64_t *occ = calloc(nslots, sizeof(*occ));
	uint64_t *fre = calloc(nslots, sizeof(*fre));
	/* samples: register new, release, register while growing, one-hit
	 * invalidation ([3][CV_N]: uodp's without re-registration) */
	double *s[4][CV_N + 1] = { { NULL } };
	unsigned ninv = 0;
	unsigned ngrow = 0;
	struct ch c;
	enum ch_var v;
	int err = 0;

	memset(&c, 0, sizeof(c));
	c.pg = (uint64_t)sysconf(_SC_PAGESIZE);
	c.ums = calloc(nslots, sizeof(*c.ums));
	c.rregs = calloc(nslots, sizeof(*c.rregs));
	if (ucx.set_external_event && ucx.vm_munmap) {
		ucx.set_external_event(UCM_EVENT_VM_UNMAPPED);
		c.rc = ix_rcache(UCM_EVENT_VM_UNMAPPED);
		c.unmapped = c.rc != NULL;
	}
	if (!c.rc)
		c.rc = ix_rcache(0);
	if (!c.unmapped)
		bench_note("index: one-hit invalidation rows skipped: no "
			   "rcache with UCM's external unmap event");
	if (!c.rregs || !c.rc)
		goto out;
	for (k = 0; k < 4; k++)
		for (vv = 0; vv <= CV_N; vv++)
			if (!(s[k][vv] = calloc(k != 2 ? rounds : n / nb + 1,
						sizeof(double))))
				goto out;
	if (!occ || !fre || !c.ums ||
	    uodp_ctx_create(&ops, UODP_CTX_MANUAL, &c.ctx))
		goto out;
	for (i = 0; i < nslots; i++)
		fre[i] = i;
	nfree = nslots;
	/* n random slots, registered in that (random) order on both, a
	 * batch at a time, each batch timed on each side in turn: the
	 * registrations that grow the index (and the heap) from 0 to n. */
	for (k = 0; nocc < n && !err; k++) {
		unsigned m = n - nocc < nb ? (unsigned)(n - nocc) : nb, j;
		uint64_t *b = ch_pick(fre, &nfree, m), t0;

		for (vv = 0; vv < CV_N; vv++) {
			v = (enum ch_var)((vv + k) % CV_N);
			t0 = bench_now_ns();
			for (j = 0; j < m && !err; j++)
				err = ch_get(&c, v, b[j]);
			s[2][v][k] = (double)(bench_now_ns() - t0) / m;
		}
		for (j = 0; j < m; j++)
			occ[nocc++] = b[j];
	}
	ngrow = k;
	/* One warm-up round, then @rounds measured ones. */
	for (k = 0; k <= rounds && !err; k++) {
		uint64_t *b, t0;
		unsigned j;

		b = ch_pick(fre, &nfree, nb);
		for (vv = 0; vv < CV_N; vv++) {
			v = (enum ch_var)((vv + k) % CV_N);
			t0 = bench_now_ns();
			for (j = 0; j < nb && !err; j++)
				err = ch_get(&c, v, b[j]);
			if (k)
				s[0][v][k - 1] =
					(double)(bench_now_ns() - t0) / nb;
		}
		for (j = 0; j < nb; j++)
			occ[nocc++] = b[j];
		if (err)
			break;
		b = ch_pick(occ, &nocc, nb);
		for (vv = 0; vv < CV_N; vv++) {
			v = (enum ch_var)((vv + k) % CV_N);
			t0 = bench_now_ns();
			for (j = 0; j < nb; j++)
				ch_put(&c, v, b[j]);
			if (k)
				s[1][v][k - 1] =
					(double)(bench_now_ns() - t0) / nb;
		}
		for (j = 0; j < nb; j++)
			fre[nfree++] = b[j];
	}
	if (err) {
		bench_note("index: registration churn failed: %s",
			   uodp_strerror(err));
		goto out;
	}
	/* One-hit invalidation at ~n (see ch_inval), the same way: a warm-up
	 * round, then @rounds measured ones, each a batch of random held
	 * regions on each side in turn (and uodp's without re-registration,
	 * variant CV_N); the regions stay held. */
	for (k = 0; c.unmapped && k <= rounds && !err; k++) {
		uint64_t *b = ch_pick(occ, &nocc, nb), t0;
		unsigned j, w;

		for (vv = 0; vv <= CV_N && !err; vv++) {
			w = (vv + k) % (CV_N + 1);
			v = w == CV_N ? CV_UODP : (enum ch_var)w;
			t0 = bench_now_ns();
			for (j = 0; j < nb && !err; j++)
				err = ch_inval(&c, v, b[j], w == CV_N);
			if (k)
				s[3][w][k - 1] =
					(double)(bench_now_ns() - t0) / nb;
		}
		nocc += nb; /* they were at its tail, and are held again */
		if (!err && k)
			ninv = k;
	}
	if (err) {
		bench_note("index: one-hit invalidation rows skipped: %s",
			   err == -ENOTSUP ?
				   "the rcache did not see UCM's unmap event" :
				   uodp_strerror(err));
		ninv = 0;
	}
	for (k = 0; k < 4; k++) {
		static const char *const name[4] = { "register new region",
						     "release region",
						     "register growing to n",
						     "one-hit invalidation" };
		static const char *const base[4] = {
			"ucs_rcache_get", "rcache invalidate+put",
			"ucs_rcache_get", "UCM unmap event+rcache get+put"
		};
		static const char *const note[4] = {
			"uodp_umem_get, manual ctx; random new slot",
			"uodp_umem_release; random held region",
			"the registrations that grew both from 0 to n",
			"uodp_invalidate_range (callback) + release + get; "
			"random held region"
		};
		unsigned ns = k == 2 ? ngrow : k == 3 ? ninv : rounds;
		struct bench_row r =
			bench_row("index", name[k], (double)n, "ns");

		if (!ns)
			continue;
		snprintf(r.param, sizeof(r.param), "%llu",
			 (unsigned long long)n);
		bench_stats(s[k][CV_UODP], ns, &r.v);
		bench_stats(s[k][CV_RCACHE], ns, &r.b);
		r.base_name = base[k];
		r.rk = BR_TIME;
		/* Issue 11: >= 1.0x UCX at 10^6 regions: registration of a
		 * new region, and one-hit invalidation (the like-for-like
		 * pair: each side's whole invalidation of one region and
		 * what restores its cache) */
		if ((k == 0 || k == 3) && n == 1000000) {
			r.tk = BT_RATIO_MIN;
			r.target = 1.0;
		}
		r.note = note[k];
		bench_emit(&r);
		if (k == 3) { /* the same, uodp without re-registration */
			r.name = "one-hit invalidation, region kept";
			bench_stats(s[k][CV_N], ns, &r.v);
			r.tk = BT_NONE;
			r.target = 0;
			r.note = "uodp_invalidate_range (callback) alone: "
				 "uodp keeps the region";
			bench_emit(&r);
		}
	}
out:
	for (i = 0; i < nslots && c.ums; i++)
		if (c.ums[i])
			ch_put(&c, CV_UODP, i);
	if (c.ctx)
		uodp_ctx_destroy(c.ctx);
	if (c.rc) {
		for (i = 0; i < nslots && c.rregs; i++)
			if (c.rregs[i])
				ch_put(&c, CV_RCACHE, i);
		ucx.rcache_destroy(c.rc);
	}
	free(c.rregs);
	free(c.ums);
	free(occ);
	free(fre);
	for (k = 0; k < 4; k++)
		for (vv = 0; vv <= CV_N; vv++)
			free(s[k][vv]);
}
#endif

static void suite_index(const struct bench_opts *o)
{
	uint64_t n, nmax = o->quick ? 100000 : 1000000;

#ifndef UODP_HAVE_UCX
	bench_note("UCX baseline skipped: libucx-dev (ucs) not found at "
		   "build time");
#else
	if (!ix_ucx_load())
		bench_note("UCX baseline skipped: libucs.so.0 could not be "
			   "loaded (above)");
#endif
	for (n = 1000; n <= nmax; n *= 10)
		ix_size(n, o->quick ? 5 : n >= 1000000 ? 15 : 31);
#ifdef UODP_HAVE_UCX
	if (ix_ucx_load())
		ix_churn(nmax, o->quick ? 10 : 60);
#endif
	bench_note("ratio = baseline ns / rindex ns (> 1: rindex faster). "
		   "Lookup: %d random queries per sample; insert/remove: "
		   "batches of <= %d regions",
		   IX_NQ, IX_BATCH);
}

const struct bench_suite bench_index_suites[] = {
	{ "index",
	  "region index: rindex vs itree vs UCX, 10^3 .. 10^6 regions; "
	  "umem_get vs ucs_rcache_get at the largest n",
	  suite_index },
	{ NULL, NULL, NULL },
};

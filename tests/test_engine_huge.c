/* SPDX-License-Identifier: MIT */
/*
 * test_engine_huge.c - huge entries (UODP_ENTRY_HUGE): a 2 MiB block the
 * kernel maps with one transparent huge page is one engine entry. Checked
 * through the public API: every page of the block reads as a HUGE entry of
 * its own address; an invalidation of a few pages tells the driver exactly
 * those pages and drops the whole entry; a writable one puts the whole
 * block in the dirty set, each page once; access upgrades apply to the
 * block; ragged region ends keep base-page entries; pinning keeps base
 * pages.
 *
 * Skips (77) where no huge entry appears: no THP for this mapping, or no
 * PAGEMAP_SCAN (Linux < 6.7).
 */
#include "helpers.h"

#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define HUGE ((size_t)2 << 20)

static size_t page, hp; /* base page size, base pages per huge page */

struct thp {
	char *raw, *p; /* p: 2 MiB aligned, NBLK blocks */
	size_t nblk;
};

/* @nblk huge-page-backed, written blocks, or NULL if THP will not. */
static bool thp_map(struct thp *t, size_t nblk)
{
	t->nblk = nblk;
	t->raw = mmap(NULL, (nblk + 1) * HUGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(t->raw != MAP_FAILED);
	t->p = (char *)(((uintptr_t)t->raw + HUGE - 1) &
			~(uintptr_t)(HUGE - 1));
	if (madvise(t->p, nblk * HUGE, MADV_HUGEPAGE))
		return false;
	memset(t->p, 0x5a, nblk * HUGE);
	/* Where THP is "madvise"/"always" but the fault got small pages
	 * (fragmentation), ask for a collapse (Linux 6.1+); failure is
	 * fine, the probe below decides. */
	madvise(t->p, nblk * HUGE, MADV_COLLAPSE);
	return true;
}

static void thp_unmap(struct thp *t)
{
	munmap(t->raw, (t->nblk + 1) * HUGE);
}

/* Fault the blocks writable on a fresh manual context; skip the test if
 * the engine made no huge entry of them. */
static struct uodp_umem *huge_region(struct uodp_ctx **ctx, struct thp *t,
				     size_t nblk, unsigned flags)
{
	struct uodp_umem *u;

	if (page != 4096)
		t_skip("written for 4 KiB base pages");
	if (!thp_map(t, nblk)) {
		thp_unmap(t);
		t_skip("madvise(MADV_HUGEPAGE) refused");
	}
	*ctx = t_ctx(UODP_CTX_MANUAL | flags);
	u = t_get(*ctx, t->p, nblk * HUGE, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(u, t->p, nblk * HUGE, UODP_ACCESS_WRITE),
			 (int64_t)(nblk * hp));
	if (t_stats(u).huge_now == 0 && !(flags & UODP_CTX_PIN)) {
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(*ctx), 0);
		thp_unmap(t);
		t_skip("no huge entry (no THP here, or no PAGEMAP_SCAN)");
	}
	return u;
}

static void test_huge_entries(void **state)
{
	struct uodp_ctx *ctx;
	struct thp t;
	struct uodp_umem *u = huge_region(&ctx, &t, 2, 0);
	struct uodp_umem_stats st = t_stats(u);
	uint64_t e[64];

	(void)state;
	t_rec_reset();
	assert_int_equal(st.huge_now, 2);
	assert_int_equal(st.mapped_now, 2 * hp);
	/* Every page reads as its own address, HUGE, with the access. */
	assert_int_equal(uodp_umem_lock(u), 0);
	for (size_t i = 0; i < 2 * hp; i += 64) {
		assert_int_equal(
			uodp_umem_entries_locked(u, t_pg(t.p, i), 64, e), 0);
		for (size_t j = 0; j < 64; j++)
			assert_int_equal(e[j], t_want(t_pg(t.p, i + j),
						      UODP_ACCESS_WRITE) |
						       UODP_ENTRY_HUGE);
	}
	assert_int_equal(uodp_umem_unlock(u), 0);

	/* Invalidate pages 1-2 of block 0: the driver hears of exactly
	 * them, the engine drops the whole block. */
	t_inval(ctx, t_pg(t.p, 1), 2);
	assert_int_equal(t_rec_count(), 1);
	assert_true(t_rec_find(0, u, t_pg(t.p, 1), t_pg(t.p, 3),
			       UODP_EVENT_MANUAL) >= 0);
	st = t_stats(u);
	assert_int_equal(st.huge_now, 1);
	assert_int_equal(st.mapped_now, hp);
	assert_int_equal(t_count(u, t.p, hp), 0);
	assert_int_equal(t_count(u, t_pg(t.p, hp), hp), hp);
	/* The data was never touched. */
	assert_int_equal(t.p[page], 0x5a);

	/* The whole block joined the dirty set: each page once, ascending,
	 * across calls of any size. */
	{
		void *d[100];
		size_t got = 0;
		int64_t n;

		while ((n = uodp_umem_dirty_take(u, d, 100)) > 0) {
			for (int64_t i = 0; i < n; i++, got++)
				assert_ptr_equal(d[i], t_pg(t.p, got));
			if (n < 100)
				break;
		}
		assert_int_equal(got, hp);
		assert_int_equal(uodp_umem_dirty_take(u, d, 100), 0);
	}

	/* A fault of one page of the dropped block maps it again. */
	assert_int_equal(t_fault(u, t_pg(t.p, 7), page, UODP_ACCESS_READ), 1);
	assert_true(t_entry(u, t_pg(t.p, 7)) != 0);
	/* unmap of one page of block 1 drops that whole entry too. */
	assert_true(uodp_umem_unmap(u, t_pg(t.p, hp + 3), page) >= 1);
	assert_int_equal(t_count(u, t_pg(t.p, hp), hp), 0);
	/* Left: block 0 again, as one huge entry or the one page. */
	assert_int_equal(t_stats(u).mapped_now, t_stats(u).huge_now ? hp : 1);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	thp_unmap(&t);
}

/* A dirty huge block taken part way, then one of its pages already taken
 * is mapped writable again (a base entry: the block has no live huge
 * entry) and dropped: it is dirty again and must be reported by the next
 * take, with the rest of the block, each page once, ascending. */
static void test_huge_dirty_retaken(void **state)
{
	struct uodp_ctx *ctx;
	struct thp t;
	struct uodp_umem *u = huge_region(&ctx, &t, 1, 0);
	void *d[600];
	int64_t n;

	(void)state;
	t_inval(ctx, t.p, 1); /* the block's entry goes: all dirty */
	assert_int_equal(uodp_umem_dirty_take(u, d, 10), 10);
	assert_ptr_equal(d[9], t_pg(t.p, 9));
	/* page 3, taken above, written again by the device */
	assert_int_equal(t_fault(u, t_pg(t.p, 3), page, UODP_ACCESS_WRITE), 1);
	t_inval(ctx, t_pg(t.p, 3), 1);
	n = uodp_umem_dirty_take(u, d, 600);
	assert_int_equal(n, (int64_t)(hp - 10 + 1));
	assert_ptr_equal(d[0], t_pg(t.p, 3));
	for (int64_t i = 1; i < n; i++)
		assert_ptr_equal(d[i], t_pg(t.p, 10 + i - 1));
	assert_int_equal(uodp_umem_dirty_take(u, d, 600), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	thp_unmap(&t);
}

/* The frame of the page at @p from /proc/self/pagemap, 0 if not shown. */
static uint64_t pagemap_pfn(const void *p)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return 0;
	if (pread(fd, &e, sizeof(e),
		  (off_t)((uintptr_t)p / page * sizeof(e))) != sizeof(e))
		e = 0;
	close(fd);
	return (e >> 63) ? e & ((UINT64_C(1) << 55) - 1) : 0;
}

/* A read-only huge entry over a THP shared with a forked child (COW),
 * then a write fault on one of its pages: the kernel gives that page a
 * frame of its own (it splits the block), so the huge entry's frame is
 * stale for it. As for base pages (test_map_upgrade), the engine must see
 * the change (EVENT_FRAME) and map the page again, not upgrade the huge
 * entry's access in place over the old frame. */
static void test_huge_cow_upgrade(void **state)
{
	struct uodp_ctx *ctx;
	struct uodp_umem *u;
	struct thp t;
	int pfd[2];
	pid_t pid;
	char c;

	(void)state;
	if (page != 4096)
		t_skip("written for 4 KiB base pages");
	if (!thp_map(&t, 1)) {
		thp_unmap(&t);
		t_skip("madvise(MADV_HUGEPAGE) refused");
	}
	if (!pagemap_pfn(t.p)) {
		thp_unmap(&t);
		t_skip("frames not visible (CAP_SYS_ADMIN)");
	}
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) { /* holds the THP shared until the parent is done */
		close(pfd[1]);
		(void)!read(pfd[0], &c, 1);
		_exit(0);
	}
	close(pfd[0]);
	ctx = t_ctx(UODP_CTX_MANUAL);
	u = t_get(ctx, t.p, HUGE, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(u, t.p, HUGE, UODP_ACCESS_READ), (int64_t)hp);
	if (t_stats(u).huge_now != 1) {
		close(pfd[1]);
		waitpid(pid, NULL, 0);
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
		thp_unmap(&t);
		t_skip("no huge entry (no THP here, or no PAGEMAP_SCAN)");
	}
	assert_int_equal(uodp_umem_pfn(u, t_pg(t.p, 3)),
			 pagemap_pfn(t_pg(t.p, 3)));
	t_rec_reset();
	assert_int_equal(t_fault(u, t_pg(t.p, 3), page, UODP_ACCESS_WRITE), 1);
	close(pfd[1]);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	assert_int_equal(uodp_umem_pfn(u, t_pg(t.p, 3)),
			 pagemap_pfn(t_pg(t.p, 3)));
	assert_true(t_rec_find(0, u, t_pg(t.p, 3), t_pg(t.p, 4),
			       UODP_EVENT_FRAME) >= 0 ||
		    t_rec_find(0, u, t.p, t_pg(t.p, hp), UODP_EVENT_FRAME) >=
			    0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	thp_unmap(&t);
}

static int count_huge(void *va, uint64_t e, void *arg)
{
	(void)va;
	if (e & UODP_ENTRY_HUGE)
		++*(size_t *)arg;
	return 0;
}

/* READ for the block, then WRITE for one page: the huge entry's access
 * is upgraded as a whole; for_each_entry visits every page. */
static void test_huge_upgrade_and_iterate(void **state)
{
	struct uodp_ctx *ctx;
	struct thp t;
	struct uodp_umem *u = huge_region(&ctx, &t, 1, 0);
	size_t nh = 0;

	(void)state;
	assert_int_equal(uodp_umem_unmap(u, t.p, HUGE), (int64_t)hp);
	/* Taken: a block with an untaken dirty huge word is refaulted with
	 * base-page entries (huge.c), which is not what this test is about. */
	{
		void *d[512];

		assert_int_equal(uodp_umem_dirty_take(u, d, 512), (int64_t)hp);
	}
	assert_int_equal(t_fault(u, t.p, HUGE, UODP_ACCESS_READ), (int64_t)hp);
	if (!(t_entry(u, t.p) & UODP_ENTRY_HUGE))
		t_skip("the block came back as small pages");
	assert_int_equal(t_fault(u, t_pg(t.p, 9), page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(t_entry(u, t_pg(t.p, 9)),
			 t_want(t_pg(t.p, 9), UODP_ACCESS_ALL) |
				 UODP_ENTRY_HUGE);
	assert_int_equal(t_entry(u, t_pg(t.p, 300)),
			 t_want(t_pg(t.p, 300), UODP_ACCESS_ALL) |
				 UODP_ENTRY_HUGE);
	assert_int_equal(t_stats(u).huge_now, 1);
	assert_int_equal(uodp_umem_lock(u), 0);
	assert_int_equal(uodp_umem_for_each_entry(u, t.p, HUGE, count_huge,
						  &nh),
			 (int64_t)hp);
	assert_int_equal(uodp_umem_unlock(u), 0);
	assert_int_equal(nh, hp);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	thp_unmap(&t);
}

/* A region that covers a block only partly keeps base-page entries; so
 * does a pinning context. */
static void test_huge_ragged_and_pinned(void **state)
{
	struct uodp_ctx *ctx;
	struct thp t;
	struct uodp_umem *u = huge_region(&ctx, &t, 2, 0), *r, *pu;
	struct uodp_ctx *pctx = t_ctx(UODP_CTX_MANUAL | UODP_CTX_PIN);

	(void)state;
	/* [block 0 + 1 page, block 1 + 1 page): no block whole inside. */
	r = t_get(ctx, t_pg(t.p, 1), HUGE, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(r, t_pg(t.p, 1), HUGE, UODP_ACCESS_READ),
			 (int64_t)hp);
	assert_int_equal(t_stats(r).huge_now, 0);
	assert_int_equal(t_entry(r, t_pg(t.p, 1)) & UODP_ENTRY_HUGE, 0);
	assert_int_equal(t_entry(r, t_pg(t.p, hp)) & UODP_ENTRY_HUGE, 0);
	/* An invalidation in block 1 drops u's huge entry and r's pages. */
	t_inval(ctx, t_pg(t.p, hp), 1);
	assert_int_equal(t_entry(r, t_pg(t.p, hp)), 0);
	assert_int_equal(t_entry(r, t_pg(t.p, hp - 1)),
			 t_want(t_pg(t.p, hp - 1), UODP_ACCESS_READ));
	assert_int_equal(t_count(u, t_pg(t.p, hp), hp), 0);
	assert_int_equal(uodp_umem_release(r), 0);

	pu = t_get(pctx, t.p, HUGE, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(pu, t.p, HUGE, UODP_ACCESS_READ), (int64_t)hp);
	assert_int_equal(t_stats(pu).huge_now, 0);
	assert_int_equal(t_entry(pu, t.p) & UODP_ENTRY_HUGE, 0);
	assert_int_equal(uodp_umem_release(pu), 0);
	assert_int_equal(uodp_ctx_destroy(pctx), 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	thp_unmap(&t);
}

/* Races on a huge block: a whole-block fault parked before install while
 * an invalidation of one page of the block (another stripe) starts must
 * not install; a one-page fault elsewhere in the block during it installs
 * that page only, never a translation of the invalidated page. */
struct hfault {
	struct uodp_umem *u;
	void *p;
	size_t n;
	unsigned timeout;
};

static int64_t hfault_thread(void *arg)
{
	struct hfault *h = arg;
	int64_t r = uodp_umem_map_and_lock(h->u, h->p, h->n * page,
					   UODP_ACCESS_READ, h->timeout);

	if (r > 0)
		uodp_umem_unlock(h->u);
	return r;
}

static void test_huge_races(void **state)
{
	struct uodp_ctx *ctx;
	struct thp t;
	struct uodp_umem *u = huge_region(&ctx, &t, 1, 0);
	struct hfault h = { u, t.p, hp, 0 };
	struct t_thread th;
	struct uodp_range r;
	void *d[512];

	(void)state;
	assert_int_equal(uodp_umem_unmap(u, t.p, HUGE), (int64_t)hp);
	assert_int_equal(uodp_umem_dirty_take(u, d, 512), (int64_t)hp);
	t_park_next_install(u);
	t_thread_start(&th, hfault_thread, &h);
	t_gate_wait_arrived(&t_install_gate);
	t_start(ctx, &r, t_pg(t.p, 300), 1);
	t_gate_open(&t_install_gate);
	assert_int_equal(t_thread_join(&th), -EBUSY);
	assert_int_equal(t_count(u, t.p, hp), 0);
	/* During it: one page elsewhere in the block maps, 300 does not. */
	assert_int_equal(t_fault(u, t_pg(t.p, 5), page, UODP_ACCESS_READ), 1);
	assert_int_equal(t_entry(u, t_pg(t.p, 300)), 0);
	assert_int_equal(uodp_umem_map_and_lock(u, t_pg(t.p, 300), page,
						UODP_ACCESS_READ, 0),
			 -EBUSY);
	t_end(&r);
	assert_int_equal(t_fault(u, t.p, HUGE, UODP_ACCESS_READ), (int64_t)hp);
	assert_true(t_entry(u, t_pg(t.p, 300)) != 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	thp_unmap(&t);
}

/*
 * for_each_entry skips unmapped stretches without touching them (uodp.h),
 * huge entries present or not: a region over 64 TiB of address space
 * holding one huge block and two base pages gets exactly their entries, in
 * address order, each page of the block a HUGE entry of its own address.
 * The walk runs on a thread with a bound: it takes microseconds; a walk
 * that reads every page's word (the page-by-page loop this replaced, 2^34
 * pages) is still walking after minutes. The bound detects that hang; it
 * is not a timing claim.
 *
 * Only the 2 GiB around the three mapped spots are reserved: a manual
 * context neither watches nor touches a region's memory, only the pages
 * it faults, so the region may span space that is not ours (under
 * ThreadSanitizer no 32 TiB reservation fits beside its shadow, and the
 * test used to skip there; the region's 64 TiB need no mapping).
 */
#define WALK_BOUND_S 60

struct walk {
	struct uodp_umem *u;
	const void *addr;
	size_t len;
	size_t n, stop_at, max;
	void **va;
	uint64_t *e;
};

static int walk_fn(void *va, uint64_t e, void *arg)
{
	struct walk *w = arg;

	if (w->n < w->max) {
		w->va[w->n] = va;
		w->e[w->n] = e;
	}
	return ++w->n == w->stop_at;
}

static int64_t walk_thread(void *arg)
{
	struct walk *w = arg;
	int64_t r;

	if (uodp_umem_lock(w->u))
		return INT64_MIN;
	r = uodp_umem_for_each_entry(w->u, w->addr, w->len, walk_fn, w);
	uodp_umem_unlock(w->u);
	return r;
}

/* Run @w on a thread; its return value. */
static int64_t walk_bounded(struct walk *w)
{
	struct t_thread th;
	double t0 = t_now_ms();

	w->n = 0;
	t_thread_start(&th, walk_thread, w);
	while (!atomic_load(&th.done)) {
		if (t_now_ms() - t0 > WALK_BOUND_S * 1e3)
			fail_msg("for_each_entry still walking after %d s: "
				 "it reads the unmapped space",
				 WALK_BOUND_S);
		usleep(1000);
	}
	return t_thread_join(&th);
}

static void test_huge_for_each_sparse(void **state)
{
	const size_t size = (size_t)64 << 40, gib = (size_t)1 << 30;
	const size_t rsv = 2 * gib + 2 * HUGE;
	/* User space: 47 bits, the region must lie in it. */
	const uintptr_t top = (uintptr_t)1 << 47;
	const size_t max = 600;
	void **va = calloc(max, sizeof(*va));
	uint64_t *e = calloc(max, sizeof(*e));
	size_t i;
	char *res, *base, *blk, *p1, *p2;
	struct uodp_ctx *ctx;
	struct uodp_umem *u;
	struct walk w;

	(void)state;
	assert_non_null(va);
	assert_non_null(e);
	if (page != 4096)
		t_skip("written for 4 KiB base pages");
	res = mmap(NULL, rsv, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(res != MAP_FAILED);
	blk = (char *)(((uintptr_t)res + gib + HUGE - 1) &
		       ~(uintptr_t)(HUGE - 1));
	p1 = blk - gib;
	p2 = blk + gib + 3 * page;
	assert_true(p1 >= res && p2 + page <= res + rsv);
	assert_true((uintptr_t)p2 < top);
	/* 64 TiB around the block, inside user space, stretches of tens of
	 * TiB before p1 or after p2. */
	base = (uintptr_t)blk > size / 2 ? blk - size / 2 : (char *)HUGE;
	if ((uintptr_t)base + size > top)
		base = (char *)(top - size);
	assert_true(base < p1 && p2 + page <= base + size);
	assert_int_equal(mprotect(blk, HUGE, PROT_READ | PROT_WRITE), 0);
	assert_int_equal(mprotect(p1, page, PROT_READ | PROT_WRITE), 0);
	assert_int_equal(mprotect(p2, page, PROT_READ | PROT_WRITE), 0);
	if (madvise(blk, HUGE, MADV_HUGEPAGE)) {
		munmap(res, rsv);
		t_skip("madvise(MADV_HUGEPAGE) refused");
	}
	memset(blk, 0x5a, HUGE);
	madvise(blk, HUGE, MADV_COLLAPSE); /* see thp_map() */
	ctx = t_ctx(UODP_CTX_MANUAL);
	u = t_get(ctx, base, size, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(u, p1, page, UODP_ACCESS_READ), 1);
	assert_int_equal(t_fault(u, blk, HUGE, UODP_ACCESS_WRITE), (int64_t)hp);
	assert_int_equal(t_fault(u, p2, page, UODP_ACCESS_READ), 1);
	if (t_stats(u).huge_now != 1) {
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
		munmap(res, rsv);
		t_skip("no huge entry (no THP here, or no PAGEMAP_SCAN)");
	}

	/* The whole region: p1, the block's pages, p2; nothing else. */
	w = (struct walk){ .u = u,
			   .addr = NULL,
			   .len = SIZE_MAX,
			   .max = max,
			   .va = va,
			   .e = e };
	assert_int_equal(walk_bounded(&w), (int64_t)hp + 2);
	assert_int_equal(w.n, hp + 2);
	assert_ptr_equal(va[0], p1);
	assert_int_equal(e[0], t_want(p1, UODP_ACCESS_READ));
	for (i = 0; i < hp; i++) {
		assert_ptr_equal(va[1 + i], t_pg(blk, i));
		assert_int_equal(e[1 + i],
				 t_want(t_pg(blk, i), UODP_ACCESS_WRITE) |
					 UODP_ENTRY_HUGE);
	}
	assert_ptr_equal(va[hp + 1], p2);
	assert_int_equal(e[hp + 1], t_want(p2, UODP_ACCESS_READ));

	/* From inside the block (unaligned) to the end: its last pages,
	 * then p2. */
	w.addr = t_pg(blk, 500) + 1;
	w.len = (size_t)(base + size - (t_pg(blk, 500) + 1));
	assert_int_equal(walk_bounded(&w), (int64_t)(hp - 500) + 1);
	assert_ptr_equal(va[0], t_pg(blk, 500));
	assert_ptr_equal(va[hp - 500], p2);
	/* Up to inside the block: p1 and its first pages. */
	w.addr = base;
	w.len = (size_t)(t_pg(blk, 3) - base);
	assert_int_equal(walk_bounded(&w), 4);
	assert_ptr_equal(va[0], p1);
	assert_ptr_equal(va[3], t_pg(blk, 2));
	/* Stopping inside the block: the stopping entry counts, no more. */
	w.addr = NULL;
	w.len = SIZE_MAX;
	w.stop_at = 3;
	assert_int_equal(walk_bounded(&w), 3);
	assert_int_equal(w.n, 3);
	assert_ptr_equal(va[2], t_pg(blk, 1));
	/* Stopping on p1: the block is not reached. */
	w.stop_at = 1;
	assert_int_equal(walk_bounded(&w), 1);
	assert_int_equal(w.n, 1);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(res, rsv);
	free(va);
	free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_huge_entries),
		cmocka_unit_test(test_huge_dirty_retaken),
		cmocka_unit_test(test_huge_cow_upgrade),
		cmocka_unit_test(test_huge_upgrade_and_iterate),
		cmocka_unit_test(test_huge_ragged_and_pinned),
		cmocka_unit_test(test_huge_races),
		cmocka_unit_test(test_huge_for_each_sparse),
	};

	page = t_page_size();
	hp = HUGE / page;
	return t_run(tests, NULL, NULL);
}

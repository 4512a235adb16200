/* SPDX-License-Identifier: MIT */
/*
 * test_engine_memory.c - the fault path on real memory, manual contexts.
 *
 * What uodp_umem_map_and_lock() does with every kind of mapping the process
 * can have (private and shared anonymous, file-backed shared and private,
 * read-only, PROT_NONE, holes, a file's end, transparent huge pages), the
 * entries it records, the dirty set, unmap clamping, iteration, exact
 * counters, translation memory (a 64 GiB reservation costs nothing), and
 * page frames. Pinning mode: test_engine_pin.c; teardown:
 * test_engine_teardown.c.
 *
 * Page frames are visible only with CAP_SYS_ADMIN; tests that depend on
 * them check what /proc/self/pagemap shows this process and assert the
 * matching behaviour either way. Single threaded and deterministic.
 */
#include "helpers.h"
#include "lib/pgtable.h" /* pgt_test_fail_alloc() */

#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif

/* Entry bits compared by these tests: address and access. The huge bit
 * (UODP_ENTRY_HUGE) is checked by test_map_hugepage against the region's
 * huge_now count, and in depth by test_engine_huge.c. */
#define ENTRY_MASK (~UODP_ENTRY_HUGE)

static size_t page;

static uint64_t entry(struct uodp_umem *u, const void *p)
{
	return t_entry(u, p) & ENTRY_MASK;
}

/* Whether /proc/self/pagemap shows this process page frames. */
static bool pagemap_shows_frames(void)
{
	static volatile char probe[1] = { 1 };
	uint64_t pm = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	bool r;

	if (fd < 0)
		return false;
	probe[0]++; /* present and written */
	r = pread(fd, &pm, sizeof(pm),
		  (off_t)((uintptr_t)probe / page * sizeof(pm))) ==
		    sizeof(pm) &&
	    (pm & ((UINT64_C(1) << 55) - 1));
	close(fd);
	return r;
}

/* ------------------------------------------------------------------------ */
/* Mapping                                                                   */

static void test_map_read_write(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(16);
	struct uodp_umem *u = t_get(ctx, buf, 16 * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;

	(void)state;
	t_rec_reset();
	assert_int_equal(t_fault(u, buf, 8 * page, UODP_ACCESS_READ), 8);
	assert_int_equal(t_fault(u, t_pg(buf, 8), 8 * page, UODP_ACCESS_WRITE),
			 8);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(entry(u, t_pg(buf, i)),
				 t_want(t_pg(buf, i), UODP_ACCESS_READ));
		assert_int_equal(entry(u, t_pg(buf, 8 + i)),
				 t_want(t_pg(buf, 8 + i), UODP_ACCESS_WRITE));
	}
	/* Write access made the pages writable-present: writing them does
	 * not change what the engine recorded. */
	memset(t_pg(buf, 8), 0x5a, 8 * page);
	st = t_stats(u);
	assert_int_equal(st.map_calls, 2);
	assert_int_equal(st.pages_mapped, 16);
	assert_int_equal(st.mapped_now, 16);
	assert_int_equal(st.retries, 0);
	assert_int_equal(st.invalidations, 0);
	assert_int_equal(t_rec_count(), 0);
	/* map_and_lock returns with the entries readable at once. */
	uint64_t e[16];

	assert_int_equal(uodp_umem_map_and_lock(u, buf, 16 * page,
						UODP_ACCESS_READ, 0),
			 16);
	assert_int_equal(uodp_umem_entries_locked(u, buf, 16, e), 0);
	assert_int_equal(uodp_umem_unlock(u), 0);
	for (int i = 0; i < 16; i++)
		assert_int_equal(e[i] & ENTRY_MASK,
				 t_want(t_pg(buf, i), i < 8 ? UODP_ACCESS_READ :
							      UODP_ACCESS_ALL));

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 16);
}

/*
 * Upgrading a page mapped for reading to write access. A page the process
 * already wrote keeps its frame: the entry gains WRITE in place. A page
 * that was never written was read through the shared zero page; write
 * access gives it a frame of its own. Where frames are visible the engine
 * sees the change, invalidates the entry (EVENT_FRAME) and map_and_lock
 * maps it again (one retry); the low-level map returns -EAGAIN instead.
 * Where frames are not visible, the entry is upgraded in place.
 */
static void test_map_upgrade(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(4);
	struct uodp_umem *u = t_get(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	bool frames = pagemap_shows_frames();
	struct uodp_umem_stats st;
	struct uodp_umem *fu;
	int fd = t_tmpfile(1);
	uint64_t pfn;
	void *dirty[1];
	char *fp;
	int64_t r;

	(void)state;
	t_rec_reset();
	buf[page] = 1; /* page 1 has its own frame */
	assert_int_equal(t_fault(u, t_pg(buf, 1), page, UODP_ACCESS_READ), 1);
	pfn = uodp_umem_pfn(u, t_pg(buf, 1));
	assert_int_equal(t_fault(u, t_pg(buf, 1), page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(entry(u, t_pg(buf, 1)),
			 t_want(t_pg(buf, 1), UODP_ACCESS_ALL));
	assert_int_equal(uodp_umem_pfn(u, t_pg(buf, 1)), pfn);
	st = t_stats(u);
	assert_int_equal(st.retries, 0);
	assert_int_equal(st.mapped_now, 1);
	assert_int_equal(st.pages_mapped, 2);
	assert_int_equal(t_rec_count(), 0);

	/* Page 0 never written: whether a read maps the shared zero page
	 * depends on the kernel; either way one of the two outcomes. */
	assert_int_equal(t_fault(u, buf, page, UODP_ACCESS_READ), 1);
	assert_int_equal(t_fault(u, buf, page, UODP_ACCESS_WRITE), 1);
	if (t_rec_count()) {
		assert_true(frames);
		assert_int_equal(t_rec_count(), 1);
		assert_true(t_rec_find(0, u, buf, t_pg(buf, 1),
				       UODP_EVENT_FRAME) >= 0);
		assert_int_equal(t_stats(u).retries, 1);
	}
	assert_int_equal(entry(u, buf) & UODP_ACCESS_WRITE, UODP_ACCESS_WRITE);
	/* Once written, a further upgrade is in place. */
	assert_int_equal(t_fault(u, buf, page, UODP_ACCESS_ALL), 1);
	assert_int_equal(entry(u, buf), t_want(buf, UODP_ACCESS_ALL));
	assert_int_equal(uodp_umem_release(u), 0);

	/* A private file page read from the page cache is copied by the
	 * first write: a new frame for sure. The low-level map shows the
	 * -EAGAIN that map_and_lock hides. */
	fp = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(fp != MAP_FAILED);
	fu = t_get(ctx, fp, page, UODP_ACCESS_ALL);
	t_rec_reset();
	assert_int_equal(t_fault(fu, fp, page, UODP_ACCESS_READ), 1);
	r = t_map_seq(fu, fp, page, UODP_ACCESS_WRITE);
	st = t_stats(fu);
	if (frames) {
		assert_int_equal(r, -EAGAIN);
		assert_int_equal(t_rec_count(), 1);
		assert_true(t_rec_find(0, fu, fp, fp + page,
				       UODP_EVENT_FRAME) >= 0);
		assert_int_equal(entry(fu, fp), 0);
		assert_int_equal(st.retries, 1);
		assert_int_equal(st.invalidations, 1);
		assert_int_equal(st.pages_invalidated, 1);
		assert_int_equal(st.mapped_now, 0);
		/* A read-only entry dropped is not dirty. */
		assert_int_equal(uodp_umem_dirty_take(fu, dirty, 1), 0);
		assert_int_equal(t_fault(fu, fp, page, UODP_ACCESS_WRITE), 1);
		assert_int_equal(entry(fu, fp), t_want(fp, UODP_ACCESS_WRITE));
	} else {
		/* No frames known: upgraded in place (the device address is
		 * the virtual address, which did not change). */
		assert_int_equal(r, 1);
		assert_int_equal(t_rec_count(), 0);
		assert_int_equal(st.retries, 0);
		assert_int_equal(entry(fu, fp), t_want(fp, UODP_ACCESS_ALL));
	}
	assert_int_equal(fp[0], 'a');
	assert_int_equal(uodp_umem_release(fu), 0);
	munmap(fp, page);
	close(fd);

	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 4);
}

/* Regions over nothing: never mapped, unmapped, page 0, above the 47-bit
 * user space and just below the engine's limit. Registration is fine (the
 * memory need not exist); faults fail -EFAULT and change nothing. */
static void test_map_unmapped(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *gone = t_buf(2);
	const uintptr_t addrs[] = {
		(uintptr_t)gone,    0,
		(uintptr_t)1 << 47, ((uintptr_t)1 << 47) - page,
		(uintptr_t)1 << 50, ((uintptr_t)1 << 56) - 2 * page
	};

	(void)state;
	t_unmap(gone, 2);
	for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
		char *p = (char *)addrs[i];
		struct uodp_umem *u = t_get(ctx, p, 2 * page, UODP_ACCESS_ALL);
		struct uodp_umem_stats st;

		assert_int_equal(t_fault(u, p, 2 * page, UODP_ACCESS_READ),
				 -EFAULT);
		assert_int_equal(t_fault(u, p + page, page, UODP_ACCESS_WRITE),
				 -EFAULT);
		st = t_stats(u);
		assert_int_equal(st.map_calls, 2);
		assert_int_equal(st.pages_mapped, 0);
		assert_int_equal(st.mapped_now, 0);
		assert_int_equal(st.table_bytes, 0);
		assert_int_equal(st.retries, 0);
		assert_int_equal(uodp_umem_release(u), 0);
	}
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
}

/* A hole in the middle of the range: pages before it are mapped and
 * counted; from the hole on, -EFAULT. Across FAULT_BATCH (512) pages. */
static void test_map_hole(void **state)
{
	const size_t n = 1100;
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(n);
	struct uodp_umem *u = t_get(ctx, buf, n * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;

	(void)state;
	assert_int_equal(munmap(t_pg(buf, 700), page), 0);
	assert_int_equal(munmap(t_pg(buf, 1000), page), 0);
	assert_int_equal(t_fault(u, buf, n * page, UODP_ACCESS_WRITE), 700);
	for (size_t i = 0; i < n; i += 50)
		assert_int_equal(
			entry(u, t_pg(buf, i)),
			i < 700 ? t_want(t_pg(buf, i), UODP_ACCESS_WRITE) : 0);
	assert_int_equal(entry(u, t_pg(buf, 699)),
			 t_want(t_pg(buf, 699), UODP_ACCESS_WRITE));
	assert_int_equal(entry(u, t_pg(buf, 701)), 0);
	st = t_stats(u);
	assert_int_equal(st.map_calls, 1);
	assert_int_equal(st.pages_mapped, 700);
	assert_int_equal(st.mapped_now, 700);

	/* First page in the hole: -EFAULT, nothing changes but map_calls. */
	assert_int_equal(t_fault(u, t_pg(buf, 700), page, UODP_ACCESS_READ),
			 -EFAULT);
	assert_int_equal(t_fault(u, t_pg(buf, 700) + 5, 10 * page,
				 UODP_ACCESS_WRITE),
			 -EFAULT);
	st = t_stats(u);
	assert_int_equal(st.map_calls, 3);
	assert_int_equal(st.pages_mapped, 700);
	assert_int_equal(st.mapped_now, 700);
	/* After the hole up to the next one. */
	assert_int_equal(t_fault(u, t_pg(buf, 701), (n - 701) * page,
				 UODP_ACCESS_READ),
			 299);
	/* A batch boundary right at a hole: 512 pages, then nothing. */
	assert_int_equal(munmap(t_pg(buf, 512), page), 0);
	assert_int_equal(uodp_umem_unmap(u, NULL, SIZE_MAX), 999);
	assert_int_equal(t_fault(u, buf, n * page, UODP_ACCESS_READ), 512);
	assert_int_equal(entry(u, t_pg(buf, 513)), 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap_pages(buf, 0, 512);
	t_unmap_pages(buf, 513, 700);
	t_unmap_pages(buf, 701, 1000);
	t_unmap_pages(buf, 1001, n);
}

/* mprotect() produces no kernel event: the caller invalidates; afterwards
 * write faults on read-only pages fail -EACCES (partial before them), reads
 * still work; PROT_NONE refuses both. */
static void test_map_mprotect(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(6);
	struct uodp_umem *u = t_get(ctx, buf, 6 * page, UODP_ACCESS_ALL);

	(void)state;
	assert_int_equal(t_fault(u, buf, 6 * page, UODP_ACCESS_WRITE), 6);
	assert_int_equal(mprotect(t_pg(buf, 2), 2 * page, PROT_READ), 0);
	assert_int_equal(mprotect(t_pg(buf, 5), page, PROT_NONE), 0);
	t_inval(ctx, buf, 6);
	assert_int_equal(t_stats(u).mapped_now, 0);

	assert_int_equal(t_fault(u, buf, 6 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(t_fault(u, t_pg(buf, 2), page, UODP_ACCESS_WRITE),
			 -EACCES);
	assert_int_equal(t_fault(u, t_pg(buf, 2), 4 * page, UODP_ACCESS_ALL),
			 -EACCES);
	assert_int_equal(entry(u, t_pg(buf, 2)), 0);
	assert_int_equal(t_fault(u, t_pg(buf, 2), 2 * page, UODP_ACCESS_READ),
			 2);
	assert_int_equal(entry(u, t_pg(buf, 3)),
			 t_want(t_pg(buf, 3), UODP_ACCESS_READ));
	/* Still read-only: upgrading the mapped entry fails too, and the
	 * entry keeps its read access. */
	assert_int_equal(t_fault(u, t_pg(buf, 3), page, UODP_ACCESS_WRITE),
			 -EACCES);
	assert_int_equal(entry(u, t_pg(buf, 3)),
			 t_want(t_pg(buf, 3), UODP_ACCESS_READ));
	assert_int_equal(t_fault(u, t_pg(buf, 4), page, UODP_ACCESS_WRITE), 1);
	/* PROT_NONE: any access. */
	assert_int_equal(t_fault(u, t_pg(buf, 5), page, UODP_ACCESS_READ),
			 -EACCES);
	assert_int_equal(t_fault(u, t_pg(buf, 5), page, UODP_ACCESS_WRITE),
			 -EACCES);
	assert_int_equal(t_fault(u, t_pg(buf, 4), 2 * page, UODP_ACCESS_READ),
			 1);
	assert_int_equal(entry(u, t_pg(buf, 5)), 0);
	assert_int_equal(t_stats(u).mapped_now, 5);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 6);
}

static void check_file_mapping(struct uodp_ctx *ctx, char *p, size_t n,
			       bool writable)
{
	struct uodp_umem *u = t_get(ctx, p, n * page, UODP_ACCESS_ALL);

	assert_int_equal(t_fault(u, p, n * page, UODP_ACCESS_READ), (int64_t)n);
	if (writable) {
		/* A private mapping copies each page on its first write;
		 * where frames are visible each copy is a changed frame,
		 * retried inside map_and_lock. */
		assert_int_equal(t_fault(u, p, n * page, UODP_ACCESS_WRITE),
				 (int64_t)n);
		assert_true(t_stats(u).retries <= n);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(entry(u, t_pg(p, i)) &
						 UODP_ACCESS_WRITE,
					 UODP_ACCESS_WRITE);
	} else {
		assert_int_equal(t_fault(u, p, n * page, UODP_ACCESS_WRITE),
				 -EACCES);
		assert_int_equal(entry(u, p), t_want(p, UODP_ACCESS_READ));
	}
	for (size_t i = 0; i < n; i++)
		assert_int_equal(p[i * page], (char)('a' + i));
	assert_int_equal(uodp_umem_release(u), 0);
}

static void test_map_file(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	int fd = t_tmpfile(4), rofd;
	char path[64], *p;
	struct uodp_umem *u;

	(void)state;
	p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	check_file_mapping(ctx, p, 4, true);
	munmap(p, 4 * page);

	p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(p != MAP_FAILED);
	check_file_mapping(ctx, p, 4, true);
	munmap(p, 4 * page);

	/* A read-only descriptor: shared mappings are read-only, private
	 * ones may be written (copy on write). */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	rofd = open(path, O_RDONLY);
	assert_true(rofd >= 0);
	p = mmap(NULL, 4 * page, PROT_READ, MAP_SHARED, rofd, 0);
	assert_true(p != MAP_FAILED);
	check_file_mapping(ctx, p, 4, false);
	munmap(p, 4 * page);
	p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE, rofd, 0);
	assert_true(p != MAP_FAILED);
	check_file_mapping(ctx, p, 4, true);
	munmap(p, 4 * page);

	/* Past the end of the file: SIGBUS territory, -EFAULT, and the pages
	 * before it count. */
	assert_int_equal(ftruncate(fd, (off_t)(2 * page)), 0);
	p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	u = t_get(ctx, p, 4 * page, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(u, p, 4 * page, UODP_ACCESS_READ), 2);
	assert_int_equal(t_fault(u, t_pg(p, 2), page, UODP_ACCESS_READ),
			 -EFAULT);
	assert_int_equal(t_fault(u, t_pg(p, 3), page, UODP_ACCESS_WRITE),
			 -EFAULT);
	assert_int_equal(t_fault(u, p, 4 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(t_stats(u).mapped_now, 2);
	assert_int_equal(uodp_umem_release(u), 0);
	munmap(p, 4 * page);

	close(rofd);
	close(fd);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
}

static void test_map_shared_anon(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_map(8, PROT_READ | PROT_WRITE, MAP_SHARED);
	struct uodp_umem *u = t_get(ctx, buf, 8 * page, UODP_ACCESS_ALL);

	(void)state;
	assert_int_equal(t_fault(u, buf, 4 * page, UODP_ACCESS_READ), 4);
	assert_int_equal(t_fault(u, t_pg(buf, 4), 4 * page, UODP_ACCESS_WRITE),
			 4);
	/* shmem pages have their frame from the first (read) fault on, so
	 * the upgrade is in place whether frames are visible or not. */
	assert_int_equal(t_fault(u, buf, 8 * page, UODP_ACCESS_ALL), 8);
	for (int i = 0; i < 8; i++)
		assert_int_equal(entry(u, t_pg(buf, i)),
				 t_want(t_pg(buf, i), UODP_ACCESS_ALL));
	assert_int_equal(t_stats(u).retries, 0);
	buf[0] = 7;
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 8);
}

/* Transparent huge pages: a 4 MiB aligned stretch asked to be huge. */
static void test_map_hugepage(void **state)
{
	const size_t huge = 2 << 20;
	struct uodp_ctx *ctx;
	char *raw, *p;
	struct uodp_umem *u;
	size_t np, hp = huge / page;
	uint64_t nhuge = 0;
	bool huge0 = false;
	int64_t r;

	(void)state;
	if (page != 4096)
		t_skip("huge page test written for 4 KiB pages");
	np = 2 * huge / page;
	raw = t_buf(3 * huge / page);
	p = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
	if (madvise(p, 2 * huge, MADV_HUGEPAGE)) {
		t_unmap(raw, 3 * huge / page);
		t_skip("madvise(MADV_HUGEPAGE) refused (no THP)");
	}
	ctx = t_ctx(UODP_CTX_MANUAL);
	u = t_get(ctx, p, 2 * huge, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(u, p, 2 * huge, UODP_ACCESS_WRITE),
			 (int64_t)np);
	for (size_t i = 0; i < np; i += 37)
		assert_int_equal(entry(u, t_pg(p, i)),
				 t_want(t_pg(p, i), UODP_ACCESS_WRITE));
	/* The huge bit: a block is a huge entry or none of its pages has the
	 * bit, and the blocks with it are the huge_now the region counts
	 * (whether THP gave huge pages here is the kernel's business). */
	for (size_t b = 0; b < 2; b++) {
		uint64_t h = t_entry(u, t_pg(p, b * hp)) & UODP_ENTRY_HUGE;

		nhuge += h != 0;
		huge0 = b ? huge0 : h != 0;
		for (size_t i = b * hp; i < (b + 1) * hp; i += 37)
			assert_int_equal(
				t_entry(u, t_pg(p, i)) & UODP_ENTRY_HUGE, h);
	}
	assert_int_equal(t_stats(u).huge_now, nhuge);
	if (pagemap_shows_frames())
		for (size_t i = 0; i < np; i += 7)
			assert_true(uodp_umem_pfn(u, t_pg(p, i)) != 0);
	t_inval(ctx, t_pg(p, 1), 2);
	assert_int_equal(entry(u, t_pg(p, 1)), 0);
	assert_int_equal(entry(u, t_pg(p, 2)), 0);
	/* Huge entries are dropped whole; small ones page by page. */
	if (huge0) {
		assert_int_equal(t_entry(u, t_pg(p, 100)), 0);
		assert_int_equal(t_stats(u).mapped_now, np - hp);
	} else {
		assert_int_equal(entry(u, t_pg(p, 100)),
				 t_want(t_pg(p, 100), UODP_ACCESS_WRITE));
		assert_int_equal(t_stats(u).mapped_now, np - 2);
	}
	/* khugepaged may collapse small pages meanwhile (new frames): the
	 * retries are map_and_lock's business. */
	r = t_fault(u, p, 2 * huge, UODP_ACCESS_ALL);
	assert_int_equal(r, (int64_t)np);
	assert_int_equal(t_stats(u).mapped_now, np);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(raw, 3 * huge / page);
}

/* ------------------------------------------------------------------------ */
/* Dirty set, unmap, iteration, counters                                     */

static void test_dirty_set(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(32);
	struct uodp_umem *u = t_get(ctx, buf, 32 * page, UODP_ACCESS_ALL);
	void *va[16], *all[16];
	int64_t n, got = 0;

	(void)state;
	/* 0-9 writable, 10-19 read-only, 20-31 never mapped. */
	assert_int_equal(t_fault(u, buf, 10 * page, UODP_ACCESS_WRITE), 10);
	assert_int_equal(t_fault(u, t_pg(buf, 10), 10 * page, UODP_ACCESS_READ),
			 10);
	/* Mapped pages are not dirty yet. */
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);
	assert_int_equal(uodp_umem_unmap(u, buf, 32 * page), 20);
	/* Chunks of 3, ascending, each continuing the last. */
	while ((n = uodp_umem_dirty_take(u, va, 3)) > 0) {
		assert_true(n <= 3);
		memcpy(all + got, va, (size_t)n * sizeof(va[0]));
		got += n;
		if (n < 3)
			break;
	}
	assert_int_equal(got, 10);
	for (int i = 0; i < 10; i++)
		assert_ptr_equal(all[i], t_pg(buf, i));
	/* Taken means cleared; dirty-only words are gone with it. */
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);
	assert_int_equal(t_stats(u).table_bytes, 0);

	/* A page stays dirty through a later read-only mapping, and is
	 * reported once. */
	assert_int_equal(t_fault(u, t_pg(buf, 5), page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 5), page), 1);
	assert_int_equal(t_fault(u, t_pg(buf, 5), page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 5), page), 1);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 1);
	assert_ptr_equal(va[0], t_pg(buf, 5));

	/* Unmapped (dirty) then mapped again: reported, the entry stays. */
	assert_int_equal(t_fault(u, t_pg(buf, 7), page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 7), page), 1);
	assert_int_equal(t_fault(u, t_pg(buf, 7), page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 1);
	assert_ptr_equal(va[0], t_pg(buf, 7));
	assert_int_equal(entry(u, t_pg(buf, 7)),
			 t_want(t_pg(buf, 7), UODP_ACCESS_READ));
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 7), page), 1);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);

	/* Invalidation feeds the dirty set too; release frees it. */
	assert_int_equal(t_fault(u, t_pg(buf, 30), 2 * page, UODP_ACCESS_WRITE),
			 2);
	assert_int_equal(t_fault(u, t_pg(buf, 20), 2 * page, UODP_ACCESS_WRITE),
			 2);
	t_inval(ctx, buf, 32);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 4);
	assert_ptr_equal(va[0], t_pg(buf, 20));
	assert_ptr_equal(va[1], t_pg(buf, 21));
	assert_ptr_equal(va[2], t_pg(buf, 30));
	assert_ptr_equal(va[3], t_pg(buf, 31));
	assert_int_equal(t_fault(u, buf, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_unmap(u, buf, page), 1);
	assert_int_equal(uodp_umem_release(u), 0); /* with one dirty page */
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 32);
}

/* The dirty set across leaves of the table (512 pages a leaf): chunks end
 * and resume at leaf boundaries, emptied leaves are freed on the way. */
static void test_dirty_set_leaves(void **state)
{
	const size_t n = 1100;
	static const size_t dirty[] = { 0, 511, 512, 1023, 1024, 1099 };
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(n);
	struct uodp_umem *u = t_get(ctx, buf, n * page, UODP_ACCESS_ALL);
	void *va[4];
	size_t k = 0;
	int64_t got;

	(void)state;
	for (size_t i = 0; i < 6; i++)
		assert_int_equal(t_fault(u, t_pg(buf, dirty[i]), page,
					 UODP_ACCESS_WRITE),
				 1);
	assert_int_equal(t_fault(u, t_pg(buf, 600), page, UODP_ACCESS_READ), 1);
	t_inval(ctx, buf, n);
	assert_int_equal(t_stats(u).pages_invalidated, 7);
	assert_true(t_stats(u).table_bytes > 0);
	while ((got = uodp_umem_dirty_take(u, va, 2)) > 0) {
		for (int64_t i = 0; i < got; i++, k++) {
			assert_true(k < 6);
			assert_ptr_equal(va[i], t_pg(buf, dirty[k]));
		}
		if (got < 2)
			break;
	}
	assert_int_equal(k, 6);
	assert_int_equal(uodp_umem_dirty_take(u, va, 4), 0);
	assert_int_equal(t_stats(u).table_bytes, 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, n);
}

static void test_unmap_clamp(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(8);
	/* The region covers pages 1-6 of the buffer. */
	struct uodp_umem *u =
		t_get(ctx, t_pg(buf, 1), 6 * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;
	int64_t seq;

	(void)state;
	t_rec_reset();
	seq = uodp_umem_read_begin(u);
	assert_int_equal(t_fault(u, t_pg(buf, 1), 6 * page, UODP_ACCESS_READ),
			 6);
	assert_int_equal(uodp_umem_unmap(u, NULL, SIZE_MAX), 6);
	assert_int_equal(uodp_umem_unmap(u, NULL, SIZE_MAX), 0);
	assert_int_equal(t_fault(u, t_pg(buf, 1), 6 * page, UODP_ACCESS_READ),
			 6);
	/* Outside: nothing. */
	assert_int_equal(uodp_umem_unmap(u, buf, page), 0);
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 7), page), 0);
	/* Rounded out to pages: [1.5, 2.5) drops pages 1 and 2. */
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 1) + page / 2, page), 2);
	assert_int_equal(entry(u, t_pg(buf, 1)), 0);
	assert_int_equal(entry(u, t_pg(buf, 2)), 0);
	assert_int_equal(entry(u, t_pg(buf, 3)),
			 t_want(t_pg(buf, 3), UODP_ACCESS_READ));
	/* An empty range drops nothing even unaligned. */
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 3) + 9, 0), 0);
	/* Starts before the region, ends inside: pages 1-3, one mapped. */
	assert_int_equal(uodp_umem_unmap(u, buf, 3 * page + 1), 1);
	/* Starts inside, runs past the end of memory: 4-6. */
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 4), SIZE_MAX), 3);
	st = t_stats(u);
	assert_int_equal(st.mapped_now, 0);
	/* unmap is no invalidation: no counter, no sequence, no callback. */
	assert_int_equal(st.pages_invalidated, 0);
	assert_int_equal(st.invalidations, 0);
	assert_false(t_retry(u, (uint64_t)seq));
	assert_int_equal(t_rec_count(), 0);
	assert_int_equal(st.table_bytes, 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 8);
}

struct visit {
	int n, stop_at;
	void *va[8];
	uint64_t entry[8];
};

static int visit_fn(void *va, uint64_t e, void *arg)
{
	struct visit *v = arg;

	if (v->n < 8) {
		v->va[v->n] = va;
		v->entry[v->n] = e;
	}
	return ++v->n == v->stop_at;
}

static void test_for_each(void **state)
{
	const size_t n = 1024;
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(n);
	struct uodp_umem *u = t_get(ctx, buf, n * page, UODP_ACCESS_ALL);
	static const size_t pages[] = { 3, 4, 600, 1023 };
	struct visit v = { 0 };
	uint64_t bytes;

	(void)state;
	for (int i = 0; i < 4; i++)
		assert_int_equal(t_fault(u, t_pg(buf, pages[i]), page,
					 i & 1 ? UODP_ACCESS_WRITE :
						 UODP_ACCESS_READ),
				 1);
	/* A dirty-only page is not an entry. */
	assert_int_equal(t_fault(u, t_pg(buf, 700), page, UODP_ACCESS_WRITE),
			 1);
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 700), page), 1);
	bytes = t_stats(u).table_bytes;

	assert_int_equal(uodp_umem_lock(u), 0);
	assert_int_equal(
		uodp_umem_for_each_entry(u, buf, n * page, visit_fn, &v), 4);
	assert_int_equal(v.n, 4);
	for (int i = 0; i < 4; i++) {
		uint64_t e;

		assert_ptr_equal(v.va[i], t_pg(buf, pages[i]));
		assert_int_equal(v.entry[i] & ENTRY_MASK,
				 t_want(t_pg(buf, pages[i]),
					i & 1 ? UODP_ACCESS_WRITE :
						UODP_ACCESS_READ));
		assert_int_equal(uodp_umem_entries_locked(u, v.va[i], 1, &e),
				 0);
		assert_int_equal(v.entry[i], e);
	}
	/* Stop on nonzero: the stopping entry counts. */
	memset(&v, 0, sizeof(v));
	v.stop_at = 2;
	assert_int_equal(
		uodp_umem_for_each_entry(u, NULL, SIZE_MAX, visit_fn, &v), 2);
	/* A sub-range, unaligned bounds cover their pages. */
	memset(&v, 0, sizeof(v));
	assert_int_equal(uodp_umem_for_each_entry(u, t_pg(buf, 4) + 1,
						  596 * page + 1, visit_fn, &v),
			 2);
	assert_ptr_equal(v.va[0], t_pg(buf, 4));
	assert_ptr_equal(v.va[1], t_pg(buf, 600));
	memset(&v, 0, sizeof(v));
	assert_int_equal(uodp_umem_for_each_entry(u, t_pg(buf, 5), 595 * page,
						  visit_fn, &v),
			 0);
	assert_int_equal(uodp_umem_unlock(u), 0);
	/* Iteration changes nothing. */
	assert_int_equal(t_stats(u).table_bytes, bytes);
	assert_int_equal(t_stats(u).mapped_now, 4);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, n);
}

static void test_stats_exact(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(8);
	struct uodp_umem *u =
		t_get(ctx, t_pg(buf, 1), 4 * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;
	int64_t seq;

	(void)state;
	memset(buf, 1, 8 * page); /* own frames: no upgrade surprises */
	st = t_stats(u);
	assert_int_equal(st.map_calls + st.pages_mapped + st.invalidations +
				 st.pages_invalidated + st.retries +
				 st.mapped_now + st.table_bytes,
			 0);
	assert_int_equal(t_fault(u, t_pg(buf, 1), 4 * page, UODP_ACCESS_READ),
			 4);
	assert_int_equal(t_fault(u, t_pg(buf, 1), 4 * page, UODP_ACCESS_READ),
			 4);
	st = t_stats(u);
	assert_int_equal(st.map_calls, 2);
	assert_int_equal(st.pages_mapped, 8); /* newly or re-mapped */
	assert_int_equal(st.mapped_now, 4);
	assert_true(st.table_bytes > 0);

	/* Invalidate 2 of them (and a page outside the region). */
	seq = uodp_umem_read_begin(u);
	t_inval(ctx, buf, 3);
	st = t_stats(u);
	assert_int_equal(st.invalidations, 1);
	assert_int_equal(st.pages_invalidated, 2);
	assert_int_equal(st.mapped_now, 2);
	/* Stale sequence: counted call, counted retry. */
	assert_int_equal(uodp_umem_map(u, t_pg(buf, 1), page, UODP_ACCESS_READ,
				       (uint64_t)seq),
			 -EAGAIN);
	st = t_stats(u);
	assert_int_equal(st.map_calls, 3);
	assert_int_equal(st.retries, 1);
	assert_int_equal(st.pages_mapped, 8);
	/* Invalidations elsewhere do not count; empty overlaps do. */
	t_inval(ctx, t_pg(buf, 6), 2);
	assert_int_equal(t_stats(u).invalidations, 1);
	t_inval(ctx, t_pg(buf, 1), 1);
	st = t_stats(u);
	assert_int_equal(st.invalidations, 2);
	assert_int_equal(st.pages_invalidated, 2);
	/* unmap is not an invalidation. */
	assert_int_equal(uodp_umem_unmap(u, t_pg(buf, 4), page), 1);
	st = t_stats(u);
	assert_int_equal(st.pages_invalidated, 2);
	assert_int_equal(st.mapped_now, 1);
	/* Bad input is not a call. */
	assert_int_equal(t_fault(u, buf, page, UODP_ACCESS_READ), -ERANGE);
	assert_int_equal(t_fault(u, t_pg(buf, 1), 0, UODP_ACCESS_READ),
			 -EINVAL);
	st = t_stats(u);
	assert_int_equal(st.map_calls, 3);
	assert_int_equal(st.retries, 1);
	assert_int_equal(st.pages_mapped, 8);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 8);
}

/*
 * Translation memory. A 64 GiB reservation registers with an empty table;
 * mapped pages cost their leaves (<= 16 bytes a page when dense); dropping
 * read-only entries gives it all back at once. Dirty pages keep a word (the
 * dirty bit) and so their leaves until uodp_umem_dirty_take() clears them.
 */
static void test_table_bytes(void **state)
{
	const size_t size = (size_t)64 << 30, mid = size / 2;
	const size_t dense = ((size_t)64 << 20) / 4096; /* 64 MiB of pages */
	struct uodp_ctx *ctx;
	char *res;
	struct uodp_umem *u;
	struct uodp_umem_stats st;
	void *va[16];
	uint64_t one;

	(void)state;
	res = mmap(NULL, size, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		t_skip("cannot reserve 64 GiB of address space");
	ctx = t_ctx(UODP_CTX_MANUAL);
	u = t_get(ctx, res, size, UODP_ACCESS_ALL);
	st = t_stats(u);
	assert_int_equal(st.table_bytes, 0);
	/* PROT_NONE: refused, and the table stays empty. */
	assert_int_equal(t_fault(u, res + mid, page, UODP_ACCESS_READ),
			 -EACCES);
	assert_int_equal(t_stats(u).table_bytes, 0);

	assert_int_equal(
		mprotect(res + mid, dense * page, PROT_READ | PROT_WRITE), 0);
	/* One page: a leaf and the path to it, a few pages' worth. */
	assert_int_equal(t_fault(u, res + mid, page, UODP_ACCESS_READ), 1);
	one = t_stats(u).table_bytes;
	assert_true(one > 0);
	assert_true(one <= 4 * 4200);
	assert_int_equal(uodp_umem_unmap(u, NULL, SIZE_MAX), 1);
	assert_int_equal(t_stats(u).table_bytes, 0);

	/* Dense: <= 16 bytes per mapped page. */
	assert_int_equal(t_fault(u, res + mid, dense * page, UODP_ACCESS_READ),
			 (int64_t)dense);
	st = t_stats(u);
	assert_int_equal(st.mapped_now, dense);
	assert_true(st.table_bytes <= 16 * dense);
	t_inval(ctx, res, size / page);
	assert_int_equal(t_stats(u).table_bytes, 0);
	/* Internal: invalidations park emptied nodes (they must not free()
	 * on the monitor thread); the next fault gives all but
	 * TABLE_SPARE_BYTES back. */
	assert_true(u->table.cached_bytes > 0);

	/* Writable pages: the dirty bit keeps the leaf until taken. */
	assert_int_equal(t_fault(u, res + mid, 4 * page, UODP_ACCESS_WRITE), 4);
	assert_true(u->table.cached_bytes <=
		    u->table.bytes + TABLE_SPARE_BYTES);
	assert_int_equal(uodp_umem_unmap(u, NULL, SIZE_MAX), 4);
	assert_int_equal(t_stats(u).table_bytes, one);
	assert_int_equal(uodp_umem_dirty_take(u, va, 2), 2);
	assert_int_equal(t_stats(u).table_bytes, one);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 2);
	assert_int_equal(t_stats(u).table_bytes, 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(res, size);
}

/* Out of memory for the table: -ENOMEM (or the pages before), state kept. */
static void test_table_enomem(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(1024);
	struct uodp_umem *u = t_get(ctx, buf, 1024 * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;

	(void)state;
	pgt_test_fail_alloc(1); /* the table's root */
	assert_int_equal(t_fault(u, buf, page, UODP_ACCESS_WRITE), -ENOMEM);
	pgt_test_fail_alloc(0);
	st = t_stats(u);
	assert_int_equal(st.map_calls, 1);
	assert_int_equal(st.pages_mapped, 0);
	assert_int_equal(st.mapped_now, 0);
	assert_int_equal(st.table_bytes, 0);
	assert_int_equal(entry(u, buf), 0);
	assert_int_equal(uodp_umem_unlock(u), -EPERM);

	/* 1024 slots: a root over two leaves; the second leaf fails. */
	pgt_test_fail_alloc(3);
	assert_int_equal(
		t_fault(u, t_pg(buf, 510), 4 * page, UODP_ACCESS_WRITE), 2);
	pgt_test_fail_alloc(0);
	assert_int_equal(entry(u, t_pg(buf, 511)),
			 t_want(t_pg(buf, 511), UODP_ACCESS_WRITE));
	assert_int_equal(entry(u, t_pg(buf, 512)), 0);
	st = t_stats(u);
	assert_int_equal(st.mapped_now, 2);
	assert_int_equal(st.pages_mapped, 2);
	assert_int_equal(
		t_fault(u, t_pg(buf, 510), 4 * page, UODP_ACCESS_WRITE), 4);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 1024);
}

static void test_pfn(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL);
	char *buf = t_buf(4);
	struct uodp_umem *u = t_get(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	bool frames = pagemap_shows_frames();
	uint64_t p0, p1;

	(void)state;
	assert_int_equal(t_fault(u, buf, 2 * page, UODP_ACCESS_WRITE), 2);
	p0 = uodp_umem_pfn(u, buf);
	p1 = uodp_umem_pfn(u, t_pg(buf, 1) + 9);
	assert_int_equal(uodp_umem_pfn(u, t_pg(buf, 2)), 0);
	if (frames) {
		assert_true(p0 != 0);
		assert_true(p1 != 0);
		assert_true(p0 != p1);
	} else {
		assert_int_equal(p0, 0);
		assert_int_equal(p1, 0);
	}
	/* Consistent under the lock too. */
	assert_int_equal(uodp_umem_lock(u), 0);
	assert_int_equal(uodp_umem_pfn(u, buf), p0);
	assert_int_equal(uodp_umem_unlock(u), 0);
	/* Dropped: no frame (a dirty-only word holds none either). */
	assert_int_equal(uodp_umem_unmap(u, buf, page), 1);
	assert_int_equal(uodp_umem_pfn(u, buf), 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 4);
}

/* UODP_CTX_NO_FRAMES: no frame recorded even where pagemap shows them. */
static void test_no_frames(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL | UODP_CTX_NO_FRAMES);
	char *buf = t_buf(4);
	struct uodp_umem *u = t_get(ctx, buf, 4 * page, UODP_ACCESS_ALL);

	(void)state;
	assert_int_equal(t_fault(u, buf, 2 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(entry(u, buf), t_want(buf, UODP_ACCESS_WRITE));
	assert_int_equal(uodp_umem_pfn(u, buf), 0);
	assert_int_equal(uodp_umem_pfn(u, t_pg(buf, 1)), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_map_read_write),
		cmocka_unit_test(test_map_upgrade),
		cmocka_unit_test(test_map_unmapped),
		cmocka_unit_test(test_map_hole),
		cmocka_unit_test(test_map_mprotect),
		cmocka_unit_test(test_map_file),
		cmocka_unit_test(test_map_shared_anon),
		cmocka_unit_test(test_map_hugepage),
		cmocka_unit_test(test_dirty_set),
		cmocka_unit_test(test_dirty_set_leaves),
		cmocka_unit_test(test_unmap_clamp),
		cmocka_unit_test(test_for_each),
		cmocka_unit_test(test_stats_exact),
		cmocka_unit_test(test_table_bytes),
		cmocka_unit_test(test_table_enomem),
		cmocka_unit_test(test_pfn),
		cmocka_unit_test(test_no_frames),
	};

	page = t_page_size();
	return t_run(tests, NULL, NULL);
}

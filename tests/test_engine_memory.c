/* SPDX-License-Identifier: MIT */
/*
 * test_engine_memory.c - the engine on real memory, manual contexts.
 *
 * What the fault path does with every kind of mapping the process can have
 * (private and shared anonymous, file-backed shared and private, read-only,
 * PROT_NONE, holes, a file's end, huge pages), the entries it records, the
 * dirty set, unmap clamping, iteration, exact counters, translation memory
 * (a 64 GiB reservation costs nothing), page frames, pinning mode as the
 * kernel sees it (VmLck in /proc/self/status, RLIMIT_MEMLOCK), the use from
 * a forked child and the teardown of a context with live regions.
 *
 * Page frames are visible only with CAP_SYS_ADMIN; tests that depend on
 * them check what /proc/self/pagemap shows this process and assert the
 * matching behaviour either way. Everything is single threaded and
 * deterministic; children report failures through a pipe.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/internal.h" /* the table's graveyard */
#include "lib/pgtable.h"     /* pgt_test_fail_alloc() */
#include "uodp.h"

#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif

static uint64_t page;

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

/* What the driver callback saw. */
static struct {
	int calls;
	uint64_t pages; /* sum of the ranges' pages */
	struct uodp_umem *umem[8];
	uint64_t start[8], end[8];
} seen;

static void record(struct uodp_umem *umem, uint64_t s, uint64_t e, void *p)
{
	(void)p;
	if (seen.calls < 8) {
		seen.umem[seen.calls] = umem;
		seen.start[seen.calls] = s;
		seen.end[seen.calls] = e;
	}
	seen.calls++;
	seen.pages += (e - s) / page;
}

static const struct uodp_ctx_ops record_ops = { .invalidate_range = record };

static struct uodp_ctx *new_ctx(const struct uodp_ctx_ops *ops)
{
	struct uodp_ctx *ctx = NULL;

	assert_int_equal(uodp_ctx_create(ops, UODP_CTX_MANUAL, &ctx), 0);
	memset(&seen, 0, sizeof(seen));
	return ctx;
}

static struct uodp_umem *new_umem(struct uodp_ctx *ctx, void *addr,
				  uint64_t len, unsigned access)
{
	struct uodp_umem *u = NULL;

	assert_int_equal(uodp_umem_get(ctx, (uint64_t)(uintptr_t)addr, len,
				       access, &u),
			 0);
	return u;
}

static char *map_anon(uint64_t npages, int prot, int flags)
{
	char *p = mmap(NULL, npages * page, prot, flags | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

static uint64_t va_of(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

/* One map call with a fresh sequence (no invalidation runs in these
 * single-threaded tests unless the test starts one). */
static int64_t map1(struct uodp_umem *u, const void *p, uint64_t len,
		    unsigned access)
{
	return uodp_umem_map(u, va_of(p), len, access, uodp_umem_read_seq(u));
}

static struct uodp_umem_stats stats(struct uodp_umem *u)
{
	struct uodp_umem_stats st;

	assert_int_equal(uodp_umem_stats(u, &st), 0);
	return st;
}

/* VmLck of this process, in kB. */
static long vmlck_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
			break;
	fclose(f);
	assert_true(kb >= 0);
	return kb;
}

/*
 * Whether mlock() reaches the kernel here. The sanitizers' runtimes
 * replace mlock() with a no-op, so under ASan/TSan VmLck never moves: the
 * pinning tests then check everything but VmLck.
 */
static bool mlock_works(void)
{
	static int works = -1;
	char *p;
	long before;

	if (works >= 0)
		return works;
	p = mmap(NULL, page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	before = vmlck_kb();
	works = mlock(p, page) == 0 && vmlck_kb() > before;
	munlock(p, page);
	munmap(p, page);
	return works;
}

/* VmLck is @kb, where it can be observed. */
#define assert_locked(kb)                                   \
	do {                                                \
		if (mlock_works())                          \
			assert_int_equal(vmlck_kb(), (kb)); \
	} while (0)

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
		  (off_t)(va_of((const void *)probe) / page * sizeof(pm))) ==
		    sizeof(pm) &&
	    (pm & ((UINT64_C(1) << 55) - 1));
	close(fd);
	return r;
}

static uint64_t entry_of(struct uodp_umem *u, const void *p, unsigned access)
{
	(void)u;
	return (va_of(p) & ~(page - 1)) | access;
}

static int setup_page(void **state)
{
	(void)state;
	page = (uint64_t)sysconf(_SC_PAGESIZE);
	return 0;
}

/* A temporary file of @npages pages filled with a pattern; unlinked. */
static int temp_file(uint64_t npages)
{
	char path[] = "/tmp/uodp-test-XXXXXX";
	int fd = mkstemp(path);
	char *chunk;

	assert_true(fd >= 0);
	unlink(path);
	chunk = malloc(page);
	assert_non_null(chunk);
	for (uint64_t i = 0; i < npages; i++) {
		memset(chunk, (int)('a' + i), page);
		assert_int_equal(pwrite(fd, chunk, page, (off_t)(i * page)),
				 (ssize_t)page);
	}
	free(chunk);
	return fd;
}

/* ------------------------------------------------------------------------ */
/* Mapping                                                                   */

static void test_map_read_write(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(16, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 16 * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;

	(void)state;
	assert_int_equal(map1(u, buf, 8 * page, UODP_ACCESS_READ), 8);
	assert_int_equal(map1(u, buf + 8 * page, 8 * page, UODP_ACCESS_WRITE),
			 8);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(uodp_umem_entry(u, va_of(buf + i * page)),
				 entry_of(u, buf + i * page, UODP_ACCESS_READ));
		assert_int_equal(
			uodp_umem_entry(u, va_of(buf + (8 + i) * page)),
			entry_of(u, buf + (8 + i) * page, UODP_ACCESS_WRITE));
	}
	/* Write access made the pages writable-present: writing them does
	 * not change what the engine recorded. */
	memset(buf + 8 * page, 0x5a, 8 * page);
	st = stats(u);
	assert_int_equal(st.map_calls, 2);
	assert_int_equal(st.pages_mapped, 16);
	assert_int_equal(st.mapped_now, 16);
	assert_int_equal(st.eagain, 0);
	assert_int_equal(st.invalidations, 0);
	assert_int_equal(seen.calls, 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 16 * page);
}

/*
 * Upgrading a page mapped for reading to write access. A page the process
 * already wrote keeps its frame: the entry gains WRITE in place. A page
 * that was never written was read through the shared zero page; write
 * access gives it a frame of its own. Where frames are visible the engine
 * sees the change and, like the seed on a "different page", invalidates
 * the entry and returns -EAGAIN; the retry maps it writable. Where they are
 * not, the entry is upgraded in place (its device address is the VA).
 */
static void test_map_upgrade(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(4, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	bool frames = pagemap_shows_frames();
	struct uodp_umem_stats st;
	struct uodp_umem *fu;
	int fd = temp_file(1);
	uint64_t pfn;
	char *fp;
	int64_t r;

	(void)state;
	buf[page] = 1; /* page 1 has its own frame */
	assert_int_equal(map1(u, buf + page, page, UODP_ACCESS_READ), 1);
	pfn = uodp_umem_pfn(u, va_of(buf + page));
	assert_int_equal(map1(u, buf + page, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_entry(u, va_of(buf + page)),
			 entry_of(u, buf + page, UODP_ACCESS_ALL));
	assert_int_equal(uodp_umem_pfn(u, va_of(buf + page)), pfn);
	st = stats(u);
	assert_int_equal(st.eagain, 0);
	assert_int_equal(st.mapped_now, 1);
	assert_int_equal(st.pages_mapped, 2);
	assert_int_equal(seen.calls, 0);

	/* Page 0 never written: whether a read maps the shared zero page
	 * depends on the kernel; either way the outcome must be one of the
	 * two documented ones. */
	assert_int_equal(map1(u, buf, page, UODP_ACCESS_READ), 1);
	r = map1(u, buf, page, UODP_ACCESS_WRITE);
	if (r == -EAGAIN) {
		assert_true(frames);
		assert_int_equal(seen.calls, 1);
		assert_int_equal(seen.start[0], va_of(buf));
		assert_int_equal(seen.end[0], va_of(buf) + page);
		assert_int_equal(uodp_umem_entry(u, va_of(buf)), 0);
		assert_int_equal(map1(u, buf, page, UODP_ACCESS_WRITE), 1);
	} else {
		assert_int_equal(r, 1);
		assert_int_equal(seen.calls, 0);
	}
	assert_int_equal(uodp_umem_entry(u, va_of(buf)) & UODP_ACCESS_WRITE,
			 UODP_ACCESS_WRITE);
	/* Once written, a further upgrade is in place. */
	assert_int_equal(map1(u, buf, page, UODP_ACCESS_ALL), 1);
	assert_int_equal(uodp_umem_entry(u, va_of(buf)),
			 entry_of(u, buf, UODP_ACCESS_ALL));
	assert_int_equal(uodp_umem_release(u), 0);

	/* A private file page read from the page cache is copied by the
	 * first write: a new frame for sure. */
	fp = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(fp != MAP_FAILED);
	fu = new_umem(ctx, fp, page, UODP_ACCESS_ALL);
	seen.calls = 0;
	assert_int_equal(map1(fu, fp, page, UODP_ACCESS_READ), 1);
	r = map1(fu, fp, page, UODP_ACCESS_WRITE);
	st = stats(fu);
	if (frames) {
		/* The seed's "different page": the entry is invalidated as
		 * a one-page invalidation, the fault retries. */
		assert_int_equal(r, -EAGAIN);
		assert_int_equal(seen.calls, 1);
		assert_ptr_equal(seen.umem[0], fu);
		assert_int_equal(seen.start[0], va_of(fp));
		assert_int_equal(seen.end[0], va_of(fp) + page);
		assert_int_equal(uodp_umem_entry(fu, va_of(fp)), 0);
		assert_int_equal(st.eagain, 1);
		assert_int_equal(st.invalidations, 1);
		assert_int_equal(st.pages_invalidated, 1);
		assert_int_equal(st.mapped_now, 0);
		assert_int_equal(uodp_umem_read_seq(fu), 1);
		/* A read-only entry dropped is not dirty. */
		assert_int_equal(uodp_umem_dirty_take(fu, &pfn, 1), 0);
		assert_int_equal(uodp_umem_wait(fu), 0);
		assert_int_equal(map1(fu, fp, page, UODP_ACCESS_WRITE), 1);
		assert_int_equal(uodp_umem_entry(fu, va_of(fp)),
				 entry_of(fu, fp, UODP_ACCESS_WRITE));
	} else {
		/* No frames known: upgraded in place (the device address is
		 * the virtual address, which did not change). */
		assert_int_equal(r, 1);
		assert_int_equal(seen.calls, 0);
		assert_int_equal(st.eagain, 0);
		assert_int_equal(uodp_umem_entry(fu, va_of(fp)),
				 entry_of(fu, fp, UODP_ACCESS_ALL));
	}
	assert_int_equal(fp[0], 'a');
	assert_int_equal(uodp_umem_release(fu), 0);
	munmap(fp, page);
	close(fd);

	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 4 * page);
}

/* Regions over nothing: never mapped, unmapped, page 0, above the 47-bit
 * user space and just below the engine's limit. Registration is fine (the
 * memory need not exist); faults fail -EFAULT and change nothing. */
static void test_map_unmapped(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *gone = map_anon(2, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	const uint64_t addrs[] = {
		va_of(gone),	   0,
		(uint64_t)1 << 47, ((uint64_t)1 << 47) - page,
		(uint64_t)1 << 50, ((uint64_t)1 << 56) - 2 * page
	};

	(void)state;
	munmap(gone, 2 * page);
	for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
		struct uodp_umem *u = NULL;
		struct uodp_umem_stats st;

		assert_int_equal(uodp_umem_get(ctx, addrs[i], 2 * page,
					       UODP_ACCESS_ALL, &u),
				 0);
		assert_int_equal(uodp_umem_map(u, addrs[i], 2 * page,
					       UODP_ACCESS_READ, 0),
				 -EFAULT);
		assert_int_equal(uodp_umem_map(u, addrs[i] + page, page,
					       UODP_ACCESS_WRITE, 0),
				 -EFAULT);
		st = stats(u);
		assert_int_equal(st.map_calls, 2);
		assert_int_equal(st.pages_mapped, 0);
		assert_int_equal(st.mapped_now, 0);
		assert_int_equal(st.table_bytes, 0);
		assert_int_equal(st.eagain, 0);
		assert_int_equal(uodp_umem_release(u), 0);
	}
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
}

/* A hole in the middle of the range: pages before it are mapped and
 * counted; from the hole on, -EFAULT. Across FAULT_BATCH (512) pages. */
static void test_map_hole(void **state)
{
	const uint64_t n = 1100;
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(n, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, n * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;

	(void)state;
	assert_int_equal(munmap(buf + 700 * page, page), 0);
	assert_int_equal(munmap(buf + 1000 * page, page), 0);
	assert_int_equal(map1(u, buf, n * page, UODP_ACCESS_WRITE), 700);
	for (uint64_t i = 0; i < n; i += 50)
		assert_int_equal(uodp_umem_entry(u, va_of(buf + i * page)),
				 i < 700 ? entry_of(u, buf + i * page,
						    UODP_ACCESS_WRITE) :
					   0);
	assert_int_equal(uodp_umem_entry(u, va_of(buf + 699 * page)),
			 entry_of(u, buf + 699 * page, UODP_ACCESS_WRITE));
	assert_int_equal(uodp_umem_entry(u, va_of(buf + 701 * page)), 0);
	st = stats(u);
	assert_int_equal(st.map_calls, 1);
	assert_int_equal(st.pages_mapped, 700);
	assert_int_equal(st.mapped_now, 700);

	/* First page in the hole: -EFAULT, nothing changes but map_calls. */
	assert_int_equal(map1(u, buf + 700 * page, page, UODP_ACCESS_READ),
			 -EFAULT);
	assert_int_equal(map1(u, buf + 700 * page + 5, 10 * page,
			      UODP_ACCESS_WRITE),
			 -EFAULT);
	st = stats(u);
	assert_int_equal(st.map_calls, 3);
	assert_int_equal(st.pages_mapped, 700);
	assert_int_equal(st.mapped_now, 700);
	/* After the hole up to the next one. */
	assert_int_equal(map1(u, buf + 701 * page, (n - 701) * page,
			      UODP_ACCESS_READ),
			 299);
	/* A batch boundary right at a hole: 512 pages, then nothing. */
	assert_int_equal(munmap(buf + 512 * page, page), 0);
	assert_int_equal(uodp_umem_unmap(u, 0, UINT64_MAX), 999);
	assert_int_equal(map1(u, buf, n * page, UODP_ACCESS_READ), 512);
	assert_int_equal(uodp_umem_entry(u, va_of(buf + 513 * page)), 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, n * page);
}

/* mprotect() produces no kernel event: the caller invalidates; afterwards
 * write faults on read-only pages fail -EACCES (partial before them), reads
 * still work; PROT_NONE refuses both. */
static void test_map_mprotect(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(6, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 6 * page, UODP_ACCESS_ALL);
	uint64_t b = va_of(buf);

	(void)state;
	assert_int_equal(map1(u, buf, 6 * page, UODP_ACCESS_WRITE), 6);
	assert_int_equal(mprotect(buf + 2 * page, 2 * page, PROT_READ), 0);
	assert_int_equal(mprotect(buf + 5 * page, page, PROT_NONE), 0);
	assert_int_equal(uodp_invalidate_range(ctx, b, b + 6 * page), 0);
	assert_int_equal(stats(u).mapped_now, 0);

	assert_int_equal(map1(u, buf, 6 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(map1(u, buf + 2 * page, page, UODP_ACCESS_WRITE),
			 -EACCES);
	assert_int_equal(map1(u, buf + 2 * page, 4 * page, UODP_ACCESS_ALL),
			 -EACCES);
	assert_int_equal(uodp_umem_entry(u, b + 2 * page), 0);
	assert_int_equal(map1(u, buf + 2 * page, 2 * page, UODP_ACCESS_READ),
			 2);
	assert_int_equal(uodp_umem_entry(u, b + 3 * page),
			 (b + 3 * page) | UODP_ACCESS_READ);
	/* Still read-only: upgrading the mapped entry fails too, and the
	 * entry keeps its read access. */
	assert_int_equal(map1(u, buf + 3 * page, page, UODP_ACCESS_WRITE),
			 -EACCES);
	assert_int_equal(uodp_umem_entry(u, b + 3 * page),
			 (b + 3 * page) | UODP_ACCESS_READ);
	assert_int_equal(map1(u, buf + 4 * page, page, UODP_ACCESS_WRITE), 1);
	/* PROT_NONE: any access. */
	assert_int_equal(map1(u, buf + 5 * page, page, UODP_ACCESS_READ),
			 -EACCES);
	assert_int_equal(map1(u, buf + 5 * page, page, UODP_ACCESS_WRITE),
			 -EACCES);
	assert_int_equal(map1(u, buf + 4 * page, 2 * page, UODP_ACCESS_READ),
			 1);
	assert_int_equal(uodp_umem_entry(u, b + 5 * page), 0);
	assert_int_equal(stats(u).mapped_now, 5);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 6 * page);
}

static void check_file_mapping(struct uodp_ctx *ctx, char *p, uint64_t n,
			       bool writable)
{
	struct uodp_umem *u = new_umem(ctx, p, n * page, UODP_ACCESS_ALL);
	uint64_t tries = 0;
	int64_t r;

	assert_int_equal(map1(u, p, n * page, UODP_ACCESS_READ), (int64_t)n);
	if (writable) {
		/* A private mapping copies each page on its first write; where
		 * frames are visible each copy is a "different page" found by
		 * one call (see test_map_upgrade): the driver's loop takes at
		 * most n + 1 calls. */
		do {
			assert_int_equal(uodp_umem_wait(u), 0);
			r = map1(u, p, n * page, UODP_ACCESS_WRITE);
		} while (r == -EAGAIN && ++tries <= n);
		assert_int_equal(r, (int64_t)n);
		assert_int_equal(stats(u).eagain, tries);
		for (uint64_t i = 0; i < n; i++)
			assert_int_equal(uodp_umem_entry(u,
							 va_of(p + i * page)) &
						 UODP_ACCESS_WRITE,
					 UODP_ACCESS_WRITE);
	} else {
		assert_int_equal(map1(u, p, n * page, UODP_ACCESS_WRITE),
				 -EACCES);
		assert_int_equal(uodp_umem_entry(u, va_of(p)),
				 entry_of(u, p, UODP_ACCESS_READ));
	}
	for (uint64_t i = 0; i < n; i++)
		assert_int_equal(p[i * page], (char)('a' + i));
	assert_int_equal(uodp_umem_release(u), 0);
}

/*
 * File-backed mappings. A write upgrade of a MAP_PRIVATE page read from the
 * page cache copies it (a new frame): where frames are visible the first
 * write map may return -EAGAIN, so writable cases allow one retry.
 */
static void test_map_file(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	int fd = temp_file(4), rofd;
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
	u = new_umem(ctx, p, 4 * page, UODP_ACCESS_ALL);
	assert_int_equal(map1(u, p, 4 * page, UODP_ACCESS_READ), 2);
	assert_int_equal(map1(u, p + 2 * page, page, UODP_ACCESS_READ),
			 -EFAULT);
	assert_int_equal(map1(u, p + 3 * page, page, UODP_ACCESS_WRITE),
			 -EFAULT);
	assert_int_equal(map1(u, p, 4 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(stats(u).mapped_now, 2);
	assert_int_equal(uodp_umem_release(u), 0);
	munmap(p, 4 * page);

	close(rofd);
	close(fd);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
}

static void test_map_shared_anon(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(8, PROT_READ | PROT_WRITE, MAP_SHARED);
	struct uodp_umem *u = new_umem(ctx, buf, 8 * page, UODP_ACCESS_ALL);

	(void)state;
	assert_int_equal(map1(u, buf, 4 * page, UODP_ACCESS_READ), 4);
	assert_int_equal(map1(u, buf + 4 * page, 4 * page, UODP_ACCESS_WRITE),
			 4);
	/* shmem pages have their frame from the first (read) fault on, so
	 * the upgrade is in place whether frames are visible or not. */
	assert_int_equal(map1(u, buf, 8 * page, UODP_ACCESS_ALL), 8);
	for (int i = 0; i < 8; i++)
		assert_int_equal(uodp_umem_entry(u, va_of(buf + i * page)),
				 entry_of(u, buf + i * page, UODP_ACCESS_ALL));
	assert_int_equal(stats(u).eagain, 0);
	buf[0] = 7;
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 8 * page);
}

/* Transparent huge pages: a 4 MiB aligned stretch asked to be huge. */
static void test_map_hugepage(void **state)
{
	const uint64_t huge = 2 << 20, n = (2 * huge) / 4096;
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *raw, *p;
	struct uodp_umem *u;
	uint64_t np;
	int64_t r = 0;

	(void)state;
	if (page != 4096)
		skip();
	raw = map_anon(3 * huge / page, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	p = (char *)((va_of(raw) + huge - 1) & ~(huge - 1));
	if (madvise(p, 2 * huge, MADV_HUGEPAGE)) {
		munmap(raw, 3 * huge);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
		skip();
	}
	np = n;
	u = new_umem(ctx, p, 2 * huge, UODP_ACCESS_ALL);
	assert_int_equal(map1(u, p, 2 * huge, UODP_ACCESS_WRITE), (int64_t)np);
	for (uint64_t i = 0; i < np; i += 37)
		assert_int_equal(uodp_umem_entry(u, va_of(p + i * page)),
				 entry_of(u, p + i * page, UODP_ACCESS_WRITE));
	if (pagemap_shows_frames())
		for (uint64_t i = 0; i < np; i++)
			assert_true(uodp_umem_pfn(u, va_of(p + i * page)) != 0);
	assert_int_equal(uodp_invalidate_range(ctx, va_of(p) + page,
					       va_of(p) + 3 * page),
			 0);
	assert_int_equal(stats(u).mapped_now, np - 2);
	/* khugepaged may collapse small pages meanwhile (new frames): allow
	 * the driver's retries for that. */
	for (int tries = 0; tries < 8; tries++) {
		assert_int_equal(uodp_umem_wait(u), 0);
		r = map1(u, p, 2 * huge, UODP_ACCESS_ALL);
		if (r != -EAGAIN)
			break;
	}
	assert_int_equal(r, (int64_t)np);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(raw, 3 * huge);
}

/* ------------------------------------------------------------------------ */
/* Dirty set, unmap, iteration, counters                                     */

static void test_dirty_set(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(32, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 32 * page, UODP_ACCESS_ALL);
	uint64_t b = va_of(buf), va[16], all[16];
	int64_t n, got = 0;

	(void)state;
	/* 0-9 writable, 10-19 read-only, 20-31 never mapped. */
	assert_int_equal(map1(u, buf, 10 * page, UODP_ACCESS_WRITE), 10);
	assert_int_equal(map1(u, buf + 10 * page, 10 * page, UODP_ACCESS_READ),
			 10);
	/* Mapped pages are not dirty yet. */
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);
	assert_int_equal(uodp_umem_unmap(u, b, b + 32 * page), 20);
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
		assert_int_equal(all[i], b + (uint64_t)i * page);
	/* Taken means cleared; dirty-only words are gone with it. */
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);
	assert_int_equal(stats(u).table_bytes, 0);

	/* A page stays dirty through a later read-only mapping, and is
	 * reported once. */
	assert_int_equal(map1(u, buf + 5 * page, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_unmap(u, b + 5 * page, b + 6 * page), 1);
	assert_int_equal(map1(u, buf + 5 * page, page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_unmap(u, b + 5 * page, b + 6 * page), 1);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 1);
	assert_int_equal(va[0], b + 5 * page);

	/* Unmapped (dirty) then mapped again: reported, the entry stays. */
	assert_int_equal(map1(u, buf + 7 * page, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_unmap(u, b + 7 * page, b + 8 * page), 1);
	assert_int_equal(map1(u, buf + 7 * page, page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 1);
	assert_int_equal(va[0], b + 7 * page);
	assert_int_equal(uodp_umem_entry(u, b + 7 * page),
			 (b + 7 * page) | UODP_ACCESS_READ);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);
	assert_int_equal(uodp_umem_unmap(u, b + 7 * page, b + 8 * page), 1);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 0);

	/* Invalidation feeds the dirty set too; release frees it. */
	assert_int_equal(map1(u, buf + 30 * page, 2 * page, UODP_ACCESS_WRITE),
			 2);
	assert_int_equal(map1(u, buf + 20 * page, 2 * page, UODP_ACCESS_WRITE),
			 2);
	assert_int_equal(uodp_invalidate_range(ctx, b, b + 32 * page), 0);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 4);
	assert_int_equal(va[0], b + 20 * page);
	assert_int_equal(va[1], b + 21 * page);
	assert_int_equal(va[2], b + 30 * page);
	assert_int_equal(va[3], b + 31 * page);
	assert_int_equal(map1(u, buf, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_unmap(u, b, b + page), 1);
	assert_int_equal(uodp_umem_release(u), 0); /* with one dirty page */
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 32 * page);
}

/* The dirty set across leaves of the table (512 pages a leaf): chunks end
 * and resume at leaf boundaries, emptied leaves are freed on the way. */
static void test_dirty_set_leaves(void **state)
{
	const uint64_t n = 1100;
	static const uint64_t dirty[] = { 0, 511, 512, 1023, 1024, 1099 };
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(n, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, n * page, UODP_ACCESS_ALL);
	uint64_t b = va_of(buf), va[4];
	size_t k = 0;
	int64_t got;

	(void)state;
	for (size_t i = 0; i < 6; i++)
		assert_int_equal(map1(u, buf + dirty[i] * page, page,
				      UODP_ACCESS_WRITE),
				 1);
	assert_int_equal(map1(u, buf + 600 * page, page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_invalidate_range(ctx, b, b + n * page), 0);
	assert_int_equal(stats(u).pages_invalidated, 7);
	assert_true(stats(u).table_bytes > 0);
	while ((got = uodp_umem_dirty_take(u, va, 2)) > 0) {
		for (int64_t i = 0; i < got; i++, k++) {
			assert_true(k < 6);
			assert_int_equal(va[i], b + dirty[k] * page);
		}
		if (got < 2)
			break;
	}
	assert_int_equal(k, 6);
	assert_int_equal(uodp_umem_dirty_take(u, va, 4), 0);
	assert_int_equal(stats(u).table_bytes, 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, n * page);
}

static void test_unmap_clamp(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(8, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	/* The region covers pages 1-6 of the buffer. */
	struct uodp_umem *u =
		new_umem(ctx, buf + page, 6 * page, UODP_ACCESS_ALL);
	uint64_t b = va_of(buf);
	struct uodp_umem_stats st;

	(void)state;
	assert_int_equal(map1(u, buf + page, 6 * page, UODP_ACCESS_READ), 6);
	assert_int_equal(uodp_umem_unmap(u, 0, UINT64_MAX), 6);
	assert_int_equal(uodp_umem_unmap(u, 0, UINT64_MAX), 0);
	assert_int_equal(map1(u, buf + page, 6 * page, UODP_ACCESS_READ), 6);
	/* Outside: nothing. */
	assert_int_equal(uodp_umem_unmap(u, b, b + page), 0);
	assert_int_equal(uodp_umem_unmap(u, b + 7 * page, b + 8 * page), 0);
	/* Rounded out to pages: [1.5, 2.5) drops pages 1 and 2. */
	assert_int_equal(uodp_umem_unmap(u, b + page + page / 2,
					 b + 2 * page + page / 2),
			 2);
	assert_int_equal(uodp_umem_entry(u, b + page), 0);
	assert_int_equal(uodp_umem_entry(u, b + 2 * page), 0);
	assert_int_equal(uodp_umem_entry(u, b + 3 * page),
			 (b + 3 * page) | UODP_ACCESS_READ);
	/* An empty range drops nothing even unaligned. */
	assert_int_equal(uodp_umem_unmap(u, b + 3 * page + 9, b + 3 * page + 9),
			 0);
	/* Starts before the region, ends inside: pages 1-3, one mapped. */
	assert_int_equal(uodp_umem_unmap(u, b, b + 3 * page + 1), 1);
	/* Starts inside, ends past: 4-6. */
	assert_int_equal(uodp_umem_unmap(u, b + 4 * page, UINT64_MAX), 3);
	st = stats(u);
	assert_int_equal(st.mapped_now, 0);
	assert_int_equal(st.pages_invalidated,
			 0); /* unmap is no invalidation */
	assert_int_equal(st.invalidations, 0);
	assert_int_equal(uodp_umem_read_seq(u), 0);
	assert_int_equal(seen.calls, 0);
	assert_int_equal(st.table_bytes, 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 8 * page);
}

struct visit {
	int n, stop_at;
	uint64_t va[8], entry[8];
};

static int visit_fn(uint64_t va, uint64_t entry, void *arg)
{
	struct visit *v = arg;

	if (v->n < 8) {
		v->va[v->n] = va;
		v->entry[v->n] = entry;
	}
	return ++v->n == v->stop_at;
}

static void test_for_each(void **state)
{
	const uint64_t n = 1024;
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(n, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, n * page, UODP_ACCESS_ALL);
	static const uint64_t pages[] = { 3, 4, 600, 1023 };
	uint64_t b = va_of(buf), bytes;
	struct visit v = { 0 };

	(void)state;
	for (int i = 0; i < 4; i++)
		assert_int_equal(map1(u, buf + pages[i] * page, page,
				      i & 1 ? UODP_ACCESS_WRITE :
					      UODP_ACCESS_READ),
				 1);
	/* A dirty-only page is not an entry. */
	assert_int_equal(map1(u, buf + 700 * page, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(uodp_umem_unmap(u, b + 700 * page, b + 701 * page), 1);
	bytes = stats(u).table_bytes;

	uodp_umem_lock(u);
	assert_int_equal(
		uodp_umem_for_each_entry(u, b, b + n * page, visit_fn, &v), 4);
	uodp_umem_unlock(u);
	assert_int_equal(v.n, 4);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(v.va[i], b + pages[i] * page);
		assert_int_equal(v.entry[i],
				 (b + pages[i] * page) |
					 (i & 1 ? UODP_ACCESS_WRITE :
						  UODP_ACCESS_READ));
		assert_int_equal(v.entry[i], uodp_umem_entry(u, v.va[i]));
	}
	/* Stop on nonzero: the stopping entry counts. */
	memset(&v, 0, sizeof(v));
	v.stop_at = 2;
	uodp_umem_lock(u);
	assert_int_equal(
		uodp_umem_for_each_entry(u, 0, UINT64_MAX, visit_fn, &v), 2);
	/* A sub-range, unaligned bounds cover their pages. */
	memset(&v, 0, sizeof(v));
	assert_int_equal(uodp_umem_for_each_entry(u, b + 4 * page + 1,
						  b + 600 * page + 1, visit_fn,
						  &v),
			 2);
	assert_int_equal(v.va[0], b + 4 * page);
	assert_int_equal(v.va[1], b + 600 * page);
	memset(&v, 0, sizeof(v));
	assert_int_equal(uodp_umem_for_each_entry(u, b + 5 * page,
						  b + 600 * page, visit_fn, &v),
			 0);
	uodp_umem_unlock(u);
	/* Iteration changes nothing. */
	assert_int_equal(stats(u).table_bytes, bytes);
	assert_int_equal(stats(u).mapped_now, 4);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, n * page);
}

static void test_stats_exact(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(8, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u =
		new_umem(ctx, buf + page, 4 * page, UODP_ACCESS_ALL);
	uint64_t b = va_of(buf), seq;
	struct uodp_umem_stats st;

	(void)state;
	memset(buf, 1, 8 * page); /* own frames: no upgrade surprises */
	st = stats(u);
	assert_int_equal(st.map_calls + st.pages_mapped + st.invalidations +
				 st.pages_invalidated + st.eagain +
				 st.mapped_now + st.table_bytes,
			 0);
	assert_int_equal(map1(u, buf + page, 4 * page, UODP_ACCESS_READ), 4);
	assert_int_equal(map1(u, buf + page, 4 * page, UODP_ACCESS_READ), 4);
	st = stats(u);
	assert_int_equal(st.map_calls, 2);
	assert_int_equal(st.pages_mapped, 8); /* newly or re-mapped */
	assert_int_equal(st.mapped_now, 4);
	assert_true(st.table_bytes > 0);

	/* Invalidate 2 of them (and a page outside the region). */
	seq = uodp_umem_read_seq(u);
	assert_int_equal(uodp_invalidate_range(ctx, b, b + 3 * page), 0);
	st = stats(u);
	assert_int_equal(st.invalidations, 1);
	assert_int_equal(st.pages_invalidated, 2);
	assert_int_equal(st.mapped_now, 2);
	/* Stale sequence: counted call, counted -EAGAIN. */
	assert_int_equal(uodp_umem_map(u, b + page, page, UODP_ACCESS_READ,
				       seq),
			 -EAGAIN);
	st = stats(u);
	assert_int_equal(st.map_calls, 3);
	assert_int_equal(st.eagain, 1);
	assert_int_equal(st.pages_mapped, 8);
	/* Invalidations elsewhere do not count; empty overlaps do. */
	assert_int_equal(uodp_invalidate_range(ctx, b + 6 * page, b + 8 * page),
			 0);
	assert_int_equal(stats(u).invalidations, 1);
	assert_int_equal(uodp_invalidate_range(ctx, b + page, b + 2 * page), 0);
	st = stats(u);
	assert_int_equal(st.invalidations, 2);
	assert_int_equal(st.pages_invalidated, 2);
	/* unmap is not an invalidation. */
	assert_int_equal(uodp_umem_unmap(u, b + 4 * page, b + 5 * page), 1);
	st = stats(u);
	assert_int_equal(st.pages_invalidated, 2);
	assert_int_equal(st.mapped_now, 1);
	/* Bad input is not a call. */
	assert_int_equal(map1(u, buf, page, UODP_ACCESS_READ), -EFAULT);
	assert_int_equal(map1(u, buf + page, 0, UODP_ACCESS_READ), -EINVAL);
	st = stats(u);
	assert_int_equal(st.map_calls, 3);
	assert_int_equal(st.eagain, 1);
	assert_int_equal(st.pages_mapped, 8);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 8 * page);
}

/*
 * Translation memory. A 64 GiB reservation registers with an empty table;
 * mapped pages cost their leaves (<= 16 bytes a page when dense); dropping
 * read-only entries gives it all back at once. Dirty pages keep a word (the
 * dirty bit) and so their leaves until uodp_umem_dirty_take() clears them.
 */
static void test_table_bytes(void **state)
{
	const uint64_t size = (uint64_t)64 << 30, mid = size / 2;
	const uint64_t dense = (64 << 20) / 4096; /* 64 MiB of pages */
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *res;
	struct uodp_umem *u;
	struct uodp_umem_stats st;
	uint64_t va[16], one;

	(void)state;
	res = mmap(NULL, size, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		skip();
	u = new_umem(ctx, res, size, UODP_ACCESS_ALL);
	st = stats(u);
	assert_int_equal(st.table_bytes, 0);
	/* PROT_NONE: refused, and the table stays empty. */
	assert_int_equal(map1(u, res + mid, page, UODP_ACCESS_READ), -EACCES);
	assert_int_equal(stats(u).table_bytes, 0);

	assert_int_equal(
		mprotect(res + mid, dense * page, PROT_READ | PROT_WRITE), 0);
	/* One page: a leaf and the path to it, a few pages' worth. */
	assert_int_equal(map1(u, res + mid, page, UODP_ACCESS_READ), 1);
	one = stats(u).table_bytes;
	assert_true(one > 0);
	assert_true(one <= 4 * 4200);
	assert_int_equal(uodp_umem_unmap(u, 0, UINT64_MAX), 1);
	assert_int_equal(stats(u).table_bytes, 0);

	/* Dense: <= 16 bytes per mapped page. */
	assert_int_equal(map1(u, res + mid, dense * page, UODP_ACCESS_READ),
			 (int64_t)dense);
	st = stats(u);
	assert_int_equal(st.mapped_now, dense);
	assert_true(st.table_bytes <= 16 * dense);
	assert_true(st.table_bytes >= 8 * dense);
	assert_int_equal(
		uodp_invalidate_range(ctx, va_of(res), va_of(res) + size), 0);
	assert_int_equal(stats(u).table_bytes, 0);
	/* Internal: invalidations park emptied nodes (they must not free()
	 * on the monitor thread); the next fault gives all but
	 * TABLE_SPARE_BYTES back. */
	assert_true(u->table.cached_bytes >= 8 * dense);

	/* Writable pages: the dirty bit keeps the leaf until taken. */
	assert_int_equal(map1(u, res + mid, 4 * page, UODP_ACCESS_WRITE), 4);
	assert_true(u->table.cached_bytes <=
		    u->table.bytes + TABLE_SPARE_BYTES);
	assert_int_equal(uodp_umem_unmap(u, 0, UINT64_MAX), 4);
	assert_int_equal(stats(u).table_bytes, one);
	assert_int_equal(uodp_umem_dirty_take(u, va, 2), 2);
	assert_int_equal(stats(u).table_bytes, one);
	assert_int_equal(uodp_umem_dirty_take(u, va, 16), 2);
	assert_int_equal(stats(u).table_bytes, 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(res, size);
}

/* Out of memory for the table: -ENOMEM (or the pages before), state kept. */
static void test_table_enomem(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(1024, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 1024 * page, UODP_ACCESS_ALL);
	struct uodp_umem_stats st;

	(void)state;
	pgt_test_fail_alloc(1); /* the table's root */
	assert_int_equal(map1(u, buf, page, UODP_ACCESS_WRITE), -ENOMEM);
	pgt_test_fail_alloc(0);
	st = stats(u);
	assert_int_equal(st.map_calls, 1);
	assert_int_equal(st.pages_mapped, 0);
	assert_int_equal(st.mapped_now, 0);
	assert_int_equal(st.table_bytes, 0);
	assert_int_equal(uodp_umem_entry(u, va_of(buf)), 0);

	/* 1024 slots: a root over two leaves; the second leaf fails. */
	pgt_test_fail_alloc(3);
	assert_int_equal(map1(u, buf + 510 * page, 4 * page, UODP_ACCESS_WRITE),
			 2);
	pgt_test_fail_alloc(0);
	assert_int_equal(uodp_umem_entry(u, va_of(buf + 511 * page)),
			 entry_of(u, buf + 511 * page, UODP_ACCESS_WRITE));
	assert_int_equal(uodp_umem_entry(u, va_of(buf + 512 * page)), 0);
	st = stats(u);
	assert_int_equal(st.mapped_now, 2);
	assert_int_equal(st.pages_mapped, 2);
	assert_int_equal(map1(u, buf + 510 * page, 4 * page, UODP_ACCESS_WRITE),
			 4);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 1024 * page);
}

static void test_pfn(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(4, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	bool frames = pagemap_shows_frames();
	uint64_t p0, p1;

	(void)state;
	assert_int_equal(map1(u, buf, 2 * page, UODP_ACCESS_WRITE), 2);
	p0 = uodp_umem_pfn(u, va_of(buf));
	p1 = uodp_umem_pfn(u, va_of(buf + page + 9));
	assert_int_equal(uodp_umem_pfn(u, va_of(buf + 2 * page)), 0);
	if (frames) {
		assert_true(p0 != 0);
		assert_true(p1 != 0);
		assert_true(p0 != p1);
	} else {
		assert_int_equal(p0, 0);
		assert_int_equal(p1, 0);
	}
	/* Dropped: no frame. */
	assert_int_equal(uodp_umem_unmap(u, va_of(buf), va_of(buf) + page), 1);
	/* (page 0 is now a dirty-only word: it holds no frame either) */
	assert_int_equal(uodp_umem_pfn(u, va_of(buf)), 0);

	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 4 * page);
}

/* UODP_CTX_NO_FRAMES: no frame recorded even where pagemap shows them. */
static void test_no_frames(void **state)
{
	struct uodp_ctx *ctx = NULL;
	char *buf = map_anon(4, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u;

	(void)state;
	assert_int_equal(uodp_ctx_create(&record_ops,
					 UODP_CTX_MANUAL | UODP_CTX_NO_FRAMES,
					 &ctx),
			 0);
	u = new_umem(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	assert_int_equal(map1(u, buf, 2 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(uodp_umem_entry(u, va_of(buf)),
			 entry_of(u, buf, UODP_ACCESS_WRITE));
	assert_int_equal(uodp_umem_pfn(u, va_of(buf)), 0);
	assert_int_equal(uodp_umem_pfn(u, va_of(buf + page)), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 4 * page);
}

/* ------------------------------------------------------------------------ */
/* Pinning mode                                                              */

static void test_pinning(void **state)
{
	/* invalidate_range NULL selects pinning, whatever else ops hold. */
	static const struct uodp_ctx_ops pin_ops = { .priv = (void *)1 };
	struct uodp_ctx *ctx = new_ctx(&pin_ops);
	char *buf = map_anon(16, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 16 * page, UODP_ACCESS_ALL);
	long kb = (long)(page / 1024), base = vmlck_kb();
	uint64_t b = va_of(buf);

	(void)state;
	assert_int_equal(map1(u, buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_locked(base + 8 * kb);
	/* Mapping again locks nothing more. */
	assert_int_equal(map1(u, buf, 8 * page, UODP_ACCESS_ALL), 8);
	assert_locked(base + 8 * kb);
	assert_int_equal(map1(u, buf + 8 * page, 4 * page, UODP_ACCESS_READ),
			 4);
	assert_locked(base + 12 * kb);
	/* Unmap unlocks. */
	assert_int_equal(uodp_umem_unmap(u, b, b + 4 * page), 4);
	assert_locked(base + 8 * kb);
	/* So does a (manual) invalidation. */
	assert_int_equal(uodp_invalidate_range(ctx, b + 4 * page, b + 6 * page),
			 0);
	assert_locked(base + 6 * kb);
	/* A read entry upgraded to write stays locked once (if its frame
	 * changes the engine drops and re-maps it). */
	assert_int_equal(
		map1(u, buf + 8 * page, page, UODP_ACCESS_WRITE) == 1 ||
			map1(u, buf + 8 * page, page, UODP_ACCESS_WRITE) == 1,
		1);
	assert_locked(base + 6 * kb);
	/* Release unlocks the rest. */
	assert_int_equal(uodp_umem_release(u), 0);
	assert_locked(base);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 16 * page);
}

/* Overlapping regions share the lock of a page: it goes with the last. */
static void test_pinning_overlap(void **state)
{
	struct uodp_ctx *ctx = new_ctx(NULL);
	char *buf = map_anon(12, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *a = new_umem(ctx, buf, 8 * page, UODP_ACCESS_ALL);
	struct uodp_umem *c =
		new_umem(ctx, buf + 4 * page, 8 * page, UODP_ACCESS_ALL);
	long kb = (long)(page / 1024), base = vmlck_kb();
	uint64_t b = va_of(buf);

	(void)state;
	assert_int_equal(map1(a, buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_int_equal(map1(c, buf + 4 * page, 8 * page, UODP_ACCESS_WRITE),
			 8);
	assert_locked(base + 12 * kb);
	assert_int_equal(uodp_umem_unmap(a, 0, UINT64_MAX), 8);
	assert_locked(base + 8 * kb);
	assert_int_equal(map1(a, buf + 6 * page, page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_unmap(c, b, b + 8 * page), 4);
	assert_locked(base + 5 * kb); /* 6 (a), 8-11 (c) */
	assert_int_equal(uodp_umem_release(c), 0);
	assert_locked(base + kb);
	assert_int_equal(uodp_umem_release(a), 0);
	assert_locked(base);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 12 * page);
}

/* Out of memory for the pin counts: the page is not left locked. */
static void test_pinning_enomem(void **state)
{
	struct uodp_ctx *ctx = new_ctx(NULL);
	char *buf = map_anon(4, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *u = new_umem(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	long base = vmlck_kb();

	(void)state;
	/* 1: the region's leaf; 2: the first node of the pin counts. */
	pgt_test_fail_alloc(2);
	assert_int_equal(map1(u, buf, 4 * page, UODP_ACCESS_WRITE), -ENOMEM);
	pgt_test_fail_alloc(0);
	assert_locked(base);
	assert_int_equal(uodp_umem_entry(u, va_of(buf)), 0);
	assert_int_equal(stats(u).mapped_now, 0);
	assert_int_equal(stats(u).table_bytes, 0);
	assert_int_equal(map1(u, buf, 4 * page, UODP_ACCESS_WRITE), 4);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_locked(base);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(buf, 4 * page);
}

/* ------------------------------------------------------------------------ */
/* Children                                                                  */

/* Checks in a child: the first failing line goes to the parent. */
static int child_fd = -1;
static int child_failed;

#define CHECK(cond)                                                      \
	do {                                                             \
		if (!(cond) && !child_failed++) {                        \
			char m_[160];                                    \
			int l_ = snprintf(m_, sizeof(m_), "line %d: %s", \
					  __LINE__, #cond);              \
			if (write(child_fd, m_, (size_t)l_) < 0)         \
				_exit(3);                                \
		}                                                        \
	} while (0)

/* Run @fn in a forked child; fail with its first failed check. */
static void in_child(void (*fn)(void *), void *arg)
{
	int pfd[2], status;
	char msg[200] = "";
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		child_fd = pfd[1];
		child_failed = 0;
		fn(arg);
		_exit(child_failed ? 1 : 0);
	}
	close(pfd[1]);
	n = read(pfd[0], msg, sizeof(msg) - 1);
	msg[n > 0 ? n : 0] = 0;
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child failed (status %#x): %s", status, msg);
}

struct fork_arg {
	struct uodp_ctx *ctx;
	struct uodp_umem *umem;
	char *buf;
	uint64_t seq;
};

static void fork_child(void *argp)
{
	struct fork_arg *a = argp;
	uint64_t b = va_of(a->buf), va[4];
	struct uodp_umem *u2 = NULL;
	struct uodp_ctx *c2 = NULL;

	/* Every call that changes or waits on the parent's context or region
	 * (those whose documentation lists -ECHILD). Accessors and the region
	 * lock must not be used in the child at all: not called here. */
	CHECK(uodp_umem_get(a->ctx, b, page, UODP_ACCESS_READ, &u2) == -ECHILD);
	CHECK(u2 == NULL);
	CHECK(uodp_umem_map(a->umem, b, page, UODP_ACCESS_READ, a->seq) ==
	      -ECHILD);
	CHECK(uodp_umem_unmap(a->umem, b, b + page) == -ECHILD);
	CHECK(uodp_invalidate_range_start(a->ctx, b, b + page) == -ECHILD);
	CHECK(uodp_invalidate_range_end(a->ctx, b, b + page) == -ECHILD);
	CHECK(uodp_invalidate_range(a->ctx, b, b + page) == -ECHILD);
	CHECK(uodp_umem_wait(a->umem) == -ECHILD);
	/* It changes the region: -ECHILD (uodp.h does not list it yet). */
	CHECK(uodp_umem_dirty_take(a->umem, va, 4) == -ECHILD);
	CHECK(uodp_umem_release(a->umem) == -ECHILD);
	CHECK(uodp_ctx_destroy(a->ctx) == -ECHILD);
	/* Bad input is still bad input. */
	CHECK(uodp_umem_map(NULL, b, page, UODP_ACCESS_READ, 0) == -EINVAL);
	CHECK(uodp_ctx_destroy(NULL) == -EINVAL);
	/* The child may have its own context. */
	CHECK(uodp_ctx_create(NULL, UODP_CTX_MANUAL, &c2) == 0);
	CHECK(uodp_umem_get(c2, b, page, UODP_ACCESS_ALL, &u2) == 0);
	CHECK(uodp_umem_map(u2, b, page, UODP_ACCESS_WRITE, 0) == 1);
	CHECK(uodp_umem_release(u2) == 0);
	CHECK(uodp_ctx_destroy(c2) == 0);
}

static void test_fork_echild(void **state)
{
	struct fork_arg a;
	struct uodp_umem_stats before, after;
	uint64_t b;

	(void)state;
	a.ctx = new_ctx(&record_ops);
	a.buf = map_anon(4, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	b = va_of(a.buf);
	a.umem = new_umem(a.ctx, a.buf, 4 * page, UODP_ACCESS_ALL);
	assert_int_equal(map1(a.umem, a.buf, 2 * page, UODP_ACCESS_WRITE), 2);
	before = stats(a.umem);
	a.seq = uodp_umem_read_seq(a.umem);
	in_child(fork_child, &a);
	after = stats(a.umem);
	assert_memory_equal(&before, &after, sizeof(before));
	assert_int_equal(seen.calls, 0);
	/* The parent goes on as before. */
	assert_int_equal(uodp_umem_entry(a.umem, b), b | UODP_ACCESS_WRITE);
	assert_int_equal(map1(a.umem, a.buf + 2 * page, page, UODP_ACCESS_READ),
			 1);
	assert_int_equal(uodp_umem_release(a.umem), 0);
	assert_int_equal(uodp_ctx_destroy(a.ctx), 0);
	munmap(a.buf, 4 * page);
}

/* Drop CAP_IPC_LOCK (root ignores RLIMIT_MEMLOCK otherwise). */
static bool drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = {
		.version = _LINUX_CAPABILITY_VERSION_3
	};
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return false;
	d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
	d[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
	return syscall(SYS_capset, &h, d) == 0;
}

static void memlock_child(void *arg)
{
	const uint64_t limit_pages = 16;
	struct rlimit rl;
	struct uodp_ctx *ctx = NULL;
	struct uodp_umem *u = NULL;
	char *buf;
	uint64_t b;
	long kb = (long)(page / 1024);

	(void)arg;
	CHECK(drop_ipc_lock());
	/* Locks are not inherited: the child starts with none. */
	CHECK(vmlck_kb() == 0);
	CHECK(getrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	rl.rlim_cur = limit_pages * page;
	CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	buf = mmap(NULL, 32 * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	b = va_of(buf);
	CHECK(uodp_ctx_create(NULL, UODP_CTX_MANUAL, &ctx) == 0);
	CHECK(uodp_umem_get(ctx, b, 32 * page, UODP_ACCESS_ALL, &u) == 0);
	/* The pages up to the limit, then -ENOMEM. */
	CHECK(uodp_umem_map(u, b, 32 * page, UODP_ACCESS_WRITE, 0) ==
	      (int64_t)limit_pages);
	CHECK(vmlck_kb() == (long)limit_pages * kb);
	CHECK(uodp_umem_map(u, b + limit_pages * page, page, UODP_ACCESS_WRITE,
			    0) == -ENOMEM);
	CHECK(uodp_umem_entry(u, b + limit_pages * page) == 0);
	CHECK(uodp_umem_entry(u, b + (limit_pages - 1) * page) ==
	      ((b + (limit_pages - 1) * page) | UODP_ACCESS_WRITE));
	/* Unmapping makes room again. */
	CHECK(uodp_umem_unmap(u, b, b + 4 * page) == 4);
	CHECK(vmlck_kb() == (long)(limit_pages - 4) * kb);
	CHECK(uodp_umem_map(u, b + limit_pages * page, 8 * page,
			    UODP_ACCESS_READ, 0) == 4);
	CHECK(uodp_umem_release(u) == 0);
	CHECK(vmlck_kb() == 0);
	CHECK(uodp_ctx_destroy(ctx) == 0);
}

static void test_pinning_memlock_limit(void **state)
{
	(void)state;
	if (!mlock_works())
		skip(); /* mlock() is a no-op under the sanitizers */
	in_child(memlock_child, NULL);
}

/* ------------------------------------------------------------------------ */
/* Teardown                                                                  */

static void test_destroy_live_regions(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(8, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *a = new_umem(ctx, buf, 8 * page, UODP_ACCESS_ALL);
	struct uodp_umem *c =
		new_umem(ctx, buf + 2 * page + 1, page, UODP_ACCESS_READ);
	uint64_t b = va_of(buf), va[8], seq;
	struct uodp_umem_stats st;
	bool seen_a = false, seen_c = false;

	(void)state;
	assert_int_equal(map1(a, buf, 2 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(map1(a, buf + 2 * page, 2 * page, UODP_ACCESS_READ),
			 2);
	assert_int_equal(map1(c, buf + 2 * page, page, UODP_ACCESS_READ), 1);
	seq = uodp_umem_read_seq(a);

	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	/* Each region was invalidated as a whole. */
	assert_int_equal(seen.calls, 2);
	for (int i = 0; i < 2; i++) {
		if (seen.umem[i] == a) {
			seen_a = true;
			assert_int_equal(seen.start[i], b);
			assert_int_equal(seen.end[i], b + 8 * page);
		} else if (seen.umem[i] == c) {
			seen_c = true;
			assert_int_equal(seen.start[i], b + 2 * page);
			assert_int_equal(seen.end[i], b + 4 * page);
		}
	}
	assert_true(seen_a && seen_c);
	/* Entries gone, the writable ones in the dirty set. */
	for (int i = 0; i < 8; i++)
		assert_int_equal(uodp_umem_entry(a, b + (uint64_t)i * page), 0);
	st = stats(a);
	assert_int_equal(st.mapped_now, 0);
	assert_int_equal(st.pages_invalidated, 4);
	assert_int_equal(st.invalidations, 1);
	assert_int_equal(stats(c).pages_invalidated, 1);
	/* Dying: faults fail, waits return at once, retry is always true. */
	assert_int_equal(map1(a, buf, page, UODP_ACCESS_READ), -ENODEV);
	assert_int_equal(uodp_umem_map(c, b + 2 * page, page, UODP_ACCESS_READ,
				       uodp_umem_read_seq(c)),
			 -ENODEV);
	assert_int_equal(uodp_umem_entry(a, b), 0);
	assert_int_equal(uodp_umem_wait(a), -ENODEV);
	assert_int_equal(uodp_umem_wait(c), -ENODEV);
	uodp_umem_lock(a);
	assert_true(uodp_umem_retry(a, seq));
	assert_true(uodp_umem_retry(a, uodp_umem_read_seq(a)));
	uodp_umem_unlock(a);
	/* Still regions: accessors, unmap and the dirty set work. */
	assert_int_equal(uodp_umem_start(c), b + 2 * page);
	assert_ptr_equal(uodp_umem_ctx(a), ctx);
	assert_int_equal(uodp_umem_unmap(a, 0, UINT64_MAX), 0);
	assert_int_equal(uodp_umem_dirty_take(a, va, 8), 2);
	assert_int_equal(va[0], b);
	assert_int_equal(va[1], b + page);
	/* Release works; the last one frees the context (ASan watches). */
	assert_int_equal(uodp_umem_release(a), 0);
	assert_int_equal(uodp_umem_release(c), 0);
	munmap(buf, 8 * page);
}

/* Pinning mode: destroy unlocks everything at once. */
static void test_destroy_pinned(void **state)
{
	struct uodp_ctx *ctx = new_ctx(NULL);
	char *buf = map_anon(8, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *a = new_umem(ctx, buf, 8 * page, UODP_ACCESS_ALL);
	struct uodp_umem *c = new_umem(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	long kb = (long)(page / 1024), base = vmlck_kb();

	(void)state;
	assert_int_equal(map1(a, buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_int_equal(map1(c, buf, 4 * page, UODP_ACCESS_WRITE), 4);
	assert_locked(base + 8 * kb);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_locked(base);
	assert_int_equal(map1(c, buf, page, UODP_ACCESS_WRITE), -ENODEV);
	assert_locked(base);
	assert_int_equal(uodp_umem_release(c), 0);
	assert_int_equal(uodp_umem_release(a), 0);
	munmap(buf, 8 * page);
}

/* Destroy while an invalidation is pending and a region registered during
 * it still waits for its counters: it dies all the same, waiters return,
 * and everything is freed by the releases. */
static void test_destroy_pending_invalidation(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(4, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *a = new_umem(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	struct uodp_umem *late;
	uint64_t b = va_of(buf);

	(void)state;
	assert_int_equal(map1(a, buf, 4 * page, UODP_ACCESS_WRITE), 4);
	assert_int_equal(uodp_invalidate_range_start(ctx, b, b + page), 0);
	assert_int_equal(map1(a, buf + 2 * page, page, UODP_ACCESS_READ),
			 -EAGAIN);
	late = new_umem(ctx, buf + 2 * page, page, UODP_ACCESS_ALL);
	/* No counters while the invalidation runs. */
	assert_int_equal(map1(late, buf + 2 * page, page, UODP_ACCESS_READ),
			 -EAGAIN);
	assert_true(uodp_umem_retry(late, uodp_umem_read_seq(late)));
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_int_equal(uodp_umem_wait(late), -ENODEV);
	assert_int_equal(uodp_umem_wait(a), -ENODEV);
	assert_int_equal(map1(late, buf + 2 * page, page, UODP_ACCESS_READ),
			 -ENODEV);
	assert_int_equal(stats(a).mapped_now, 0);
	assert_int_equal(uodp_umem_release(a), 0);
	assert_int_equal(uodp_umem_release(late), 0);
	munmap(buf, 4 * page);
}

/* A destroyed context with no regions goes at once; the regions released
 * before it are gone too (nothing to see but ASan's silence). */
static void test_destroy_after_release(void **state)
{
	struct uodp_ctx *ctx = new_ctx(&record_ops);
	char *buf = map_anon(2, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_umem *a = new_umem(ctx, buf, 2 * page, UODP_ACCESS_ALL);

	(void)state;
	assert_int_equal(map1(a, buf, 2 * page, UODP_ACCESS_WRITE), 2);
	assert_int_equal(uodp_umem_release(a), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_int_equal(seen.calls, 0); /* release is no invalidation */
	munmap(buf, 2 * page);
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
		cmocka_unit_test(test_pinning),
		cmocka_unit_test(test_pinning_overlap),
		cmocka_unit_test(test_pinning_enomem),
		cmocka_unit_test(test_fork_echild),
		cmocka_unit_test(test_pinning_memlock_limit),
		cmocka_unit_test(test_destroy_live_regions),
		cmocka_unit_test(test_destroy_pinned),
		cmocka_unit_test(test_destroy_pending_invalidation),
		cmocka_unit_test(test_destroy_after_release),
	};

	return cmocka_run_group_tests(tests, setup_page, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_dev.c - the software device (include/uodp_dev.h): argument checks,
 * the fault and invalidation paths and the data path on real memory,
 * modeled on the kernel's hmm selftests and rdma-core's ODP tests.
 *
 * Contexts are manual (UODP_DEV_MANUAL): every change of the address space
 * is followed by an explicit uodp_invalidate_range(), as a kernel monitor
 * would do. Races are made deterministic where possible: a page unmapped
 * without an invalidation leaves a stale device page-table entry, so the
 * next access runs its copy or atomic instruction on a hole, which is
 * exactly what a racing munmap produces.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h" /* t_skip, t_run */
#include "uodp_dev.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

static size_t PS;

struct fx {
	struct uodp_dev *dev;
	char *buf;
	size_t len;
	uint32_t key;
};

static struct uodp_dev *open_dev(unsigned flags)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL | flags };
	struct uodp_dev *dev = NULL;

	assert_int_equal(uodp_dev_open(&a, &dev), 0);
	assert_non_null(dev);
	return dev;
}

static char *map_anon(size_t len, int prot, int flags)
{
	void *p = mmap(NULL, len, prot, MAP_ANONYMOUS | flags, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

static void fill(char *p, size_t len, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (char)(i * 7 + seed);
}

static bool check_fill(const char *p, size_t len, unsigned seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] != (char)(i * 7 + seed))
			return false;
	return true;
}

static struct uodp_dev_stats stats(struct uodp_dev *dev)
{
	struct uodp_dev_stats s;

	assert_int_equal(uodp_dev_stats(dev, &s), 0);
	return s;
}

static void inval(struct uodp_dev *dev, void *p, size_t len)
{
	assert_int_equal(uodp_invalidate_range(uodp_dev_ctx(dev), p, len,
					       UODP_EVENT_MANUAL),
			 0);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->dev = open_dev(0);
	f->len = 16 * PS;
	f->buf = map_anon(f->len, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	fill(f->buf, f->len, 1);
	assert_int_equal(uodp_dev_reg_mr(f->dev, (uintptr_t)f->buf, f->len,
					 UODP_DEV_ACCESS_ALL, &f->key),
			 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	assert_int_equal(uodp_dev_close(f->dev), 0);
	munmap(f->buf, f->len);
	free(f);
	return 0;
}

#define VA(p) ((uint64_t)(uintptr_t)(p))

/* ------------------------------------------------------------------------ */

static void test_open_args(void **state)
{
	struct uodp_dev_attr a = { 0 };
	struct uodp_dev *dev;

	(void)state;
	assert_int_equal(uodp_dev_open(NULL, NULL), -EINVAL);
	a.flags = 1u << 30;
	assert_int_equal(uodp_dev_open(&a, &dev), -EINVAL);
	a.flags = UODP_DEV_MANUAL | UODP_DEV_STRICT;
	assert_int_equal(uodp_dev_open(&a, &dev), -EINVAL);
	a.flags = UODP_DEV_MANUAL;
	a.fault_around = UODP_DEV_FAULT_AROUND_MAX + 1;
	assert_int_equal(uodp_dev_open(&a, &dev), -EINVAL);
	a.fault_around = 0;
	a.exec_workers = 65;
	assert_int_equal(uodp_dev_open(&a, &dev), -EINVAL);
	assert_int_equal(uodp_dev_close(NULL), -EINVAL);
	assert_null(uodp_dev_ctx(NULL));
	assert_int_equal(uodp_dev_read(NULL, 1, 0, NULL, 0), -EINVAL);
	assert_string_equal(uodp_dev_opcode_name(UODP_DEV_OP_CMP_SWAP),
			    "cmp-swap");
	assert_string_equal(uodp_dev_opcode_name(0), "?");
}

/* A range that wraps around the address space: -EINVAL at registration
 * (the engine's -ERANGE of a range leaving the user address space is
 * translated too), -ERANGE for every operation and for a post (it is not
 * inside the key's region), as uodp_dev.h's conventions and the man pages
 * say; nothing runs (the counters stay). */
static void test_wrapping_ranges(void **state)
{
	struct fx *f = *state;
	uint64_t top = UINT64_MAX - 7; /* 8-byte aligned, +8 wraps to 0 */
	struct uodp_dev_queue *q;
	struct uodp_dev_wr wr = { 0 };
	struct uodp_dev_stats before, after;
	uint32_t k, ik;
	uint64_t old;
	uint8_t st[4];
	char b[16];

	/* registration: wraps, rounding up wraps, leaves user space */
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), UINT64_MAX,
					 UODP_DEV_ACCESS_READ, &k),
			 -EINVAL);
	assert_int_equal(uodp_dev_reg_mr(f->dev, UINT64_MAX - 1, 1,
					 UODP_DEV_ACCESS_READ, &k),
			 -EINVAL);
	assert_int_equal(uodp_dev_reg_mr(f->dev, (uint64_t)1 << 62, PS,
					 UODP_DEV_ACCESS_READ, &k),
			 -EINVAL);
	assert_int_equal(
		uodp_dev_reg_implicit_mr(f->dev, UODP_DEV_ACCESS_ALL, &ik), 0);
	assert_int_equal(uodp_dev_queue_create(f->dev, 4, &q), 0);
	before = stats(f->dev);

	/* operations: va inside the region, va + len wraps */
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf) + PS, b,
				       UINT64_MAX),
			 -ERANGE);
	assert_int_equal(uodp_dev_write(f->dev, f->key, VA(f->buf) + PS, b,
					UINT64_MAX),
			 -ERANGE);
	assert_int_equal(uodp_dev_copy(f->dev, f->key, VA(f->buf) + PS, f->key,
				       VA(f->buf), UINT64_MAX - PS),
			 -ERANGE);
	assert_int_equal(uodp_dev_copy(f->dev, f->key, VA(f->buf), f->key,
				       VA(f->buf) + PS, UINT64_MAX - PS),
			 -ERANGE);
	assert_int_equal(uodp_dev_prefetch(f->dev, f->key, VA(f->buf) + PS,
					   UINT64_MAX, 0),
			 -ERANGE);
	assert_int_equal(uodp_dev_snapshot(f->dev, f->key, VA(f->buf) + PS,
					   UINT64_MAX, st),
			 -ERANGE);
	assert_int_equal(uodp_dev_read(f->dev, ik, PS, b, UINT64_MAX), -ERANGE);
	/* atomics: the last aligned word of the address space */
	assert_int_equal(uodp_dev_fetch_add(f->dev, ik, top, 1, &old), -ERANGE);
	assert_int_equal(uodp_dev_cmp_swap(f->dev, ik, top, 0, 1, &old),
			 -ERANGE);
	/* a post is refused, not completed */
	wr.opcode = UODP_DEV_OP_READ;
	wr.key = f->key;
	wr.va = VA(f->buf) + PS;
	wr.len = UINT64_MAX;
	wr.buf = b;
	assert_int_equal(uodp_dev_post(q, &wr), -ERANGE);
	wr.opcode = UODP_DEV_OP_FETCH_ADD;
	wr.key = ik;
	wr.va = top;
	assert_int_equal(uodp_dev_post(q, &wr), -ERANGE);
	assert_int_equal(uodp_dev_poll(q, NULL, 0), 0);

	after = stats(f->dev);
	assert_int_equal(after.ops, before.ops);
	assert_int_equal(after.async_posted, before.async_posted);
	/* 10: the operations and posts (a snapshot counts no error) */
	assert_int_equal(after.err_range, before.err_range + 10);
	assert_int_equal(uodp_dev_mr_children(f->dev, ik), 0);
	/* the messages say so */
	assert_non_null(strstr(uodp_dev_strerror(-ERANGE), "wraps"));
	assert_non_null(strstr(uodp_dev_strerror(-EINVAL), "to register"));
	assert_int_equal(uodp_dev_queue_destroy(q), 0);
	assert_int_equal(uodp_dev_dereg_mr(f->dev, ik), 0);
}

static void test_key_errors(void **state)
{
	struct fx *f = *state;
	uint32_t k, ro;
	uint64_t old;
	uint8_t st[4];
	char b[16];

	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), 0,
					 UODP_DEV_ACCESS_READ, &k),
			 -EINVAL);
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), PS, 0, &k),
			 -EINVAL);
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), PS, 8, &k),
			 -EINVAL);
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), PS,
					 UODP_DEV_ACCESS_READ, NULL),
			 -EINVAL);
	assert_int_equal(uodp_dev_reg_mr(f->dev, UINT64_MAX - 10, 100,
					 UODP_DEV_ACCESS_READ, &k),
			 -EINVAL);

	/* unknown keys */
	assert_int_equal(uodp_dev_read(f->dev, 0, VA(f->buf), b, 8), -ENOENT);
	assert_int_equal(uodp_dev_read(f->dev, f->key + 1, VA(f->buf), b, 8),
			 -ENOENT);
	assert_int_equal(uodp_dev_dereg_mr(f->dev, 12345), -ENOENT);
	/* range */
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf) - 1, b, 8),
			 -ERANGE);
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf) + f->len - 4,
				       b, 8),
			 -ERANGE);
	assert_int_equal(uodp_dev_snapshot(f->dev, f->key, VA(f->buf),
					   f->len + 1, st),
			 -ERANGE);
	/* arguments */
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf), NULL, 8),
			 -EINVAL);
	assert_int_equal(uodp_dev_fetch_add(f->dev, f->key, VA(f->buf) + 4, 1,
					    &old),
			 -EINVAL);
	assert_int_equal(uodp_dev_prefetch(f->dev, f->key, VA(f->buf), PS,
					   0x80),
			 -EINVAL);
	/* zero length succeeds without touching anything */
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf), NULL, 0), 0);

	/* rights */
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), f->len,
					 UODP_DEV_ACCESS_READ, &ro),
			 0);
	assert_int_equal(uodp_dev_write(f->dev, ro, VA(f->buf), b, 8), -EPERM);
	assert_int_equal(uodp_dev_fetch_add(f->dev, ro, VA(f->buf), 1, &old),
			 -EPERM);
	assert_int_equal(uodp_dev_prefetch(f->dev, ro, VA(f->buf), PS,
					   UODP_DEV_PREFETCH_WRITE),
			 -EPERM);
	assert_int_equal(uodp_dev_copy(f->dev, ro, VA(f->buf), f->key,
				       VA(f->buf) + PS, 8),
			 -EPERM);
	assert_int_equal(uodp_dev_read(f->dev, ro, VA(f->buf), b, 8), 0);
	assert_true(stats(f->dev).err_perm >= 4);
	assert_true(stats(f->dev).err_range >= 2);

	/* a stale key stays dead even when its slot is reused */
	assert_int_equal(uodp_dev_dereg_mr(f->dev, ro), 0);
	assert_int_equal(uodp_dev_dereg_mr(f->dev, ro), -ENOENT);
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(f->buf), f->len,
					 UODP_DEV_ACCESS_READ, &k),
			 0);
	assert_int_not_equal(k, ro);
	assert_int_equal(uodp_dev_read(f->dev, ro, VA(f->buf), b, 8), -ENOENT);
	assert_int_equal(uodp_dev_mr_children(f->dev, k), 1);
	assert_int_equal(uodp_dev_mr_trim(f->dev, k), 0);
	assert_int_equal(uodp_dev_dereg_mr(f->dev, k), 0);
}

/* anon read and write, with the page table's states. */
static void test_anon_read_write(void **state)
{
	struct fx *f = *state;
	struct uodp_dev_stats s0, s1;
	char *out = malloc(f->len), *in = malloc(f->len);
	uint8_t st[16];
	size_t i;

	s0 = stats(f->dev);
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf), out, f->len),
			 0);
	assert_true(check_fill(out, f->len, 1));
	s1 = stats(f->dev);
	assert_true(s1.page_faults > s0.page_faults);
	assert_int_equal(s1.pages_faulted - s0.pages_faulted, 16);
	assert_int_equal(s1.bytes_read - s0.bytes_read, f->len);
	assert_int_equal(
		uodp_dev_snapshot(f->dev, f->key, VA(f->buf), f->len, st), 16);
	for (i = 0; i < 16; i++)
		assert_int_equal(st[i], UODP_DEV_PAGE_READ);

	fill(in, 3 * PS + 100, 9);
	assert_int_equal(uodp_dev_write(f->dev, f->key, VA(f->buf) + PS + 50,
					in, 3 * PS + 100),
			 0);
	assert_memory_equal(f->buf + PS + 50, in, 3 * PS + 100);
	assert_true(check_fill(f->buf, PS + 50, 1));
	assert_int_equal(
		uodp_dev_snapshot(f->dev, f->key, VA(f->buf), f->len, st), 16);
	assert_int_equal(st[0], UODP_DEV_PAGE_READ);
	for (i = 1; i <= 4; i++)
		assert_int_equal(st[i], UODP_DEV_PAGE_WRITE);
	assert_int_equal(stats(f->dev).writes, s0.writes + 1);
	free(out);
	free(in);
}

/* read of PROT_NONE memory: error, buffer untouched. */
static void test_prot_none(void **state)
{
	struct uodp_dev *dev = open_dev(0);
	char *p = map_anon(4 * PS, PROT_NONE, MAP_PRIVATE);
	char b[64];
	uint32_t k;
	uint64_t old;
	uint8_t st[4];

	(void)state;
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), 4 * PS,
					 UODP_DEV_ACCESS_ALL, &k),
			 0);
	memset(b, 0xAA, sizeof(b));
	assert_int_equal(uodp_dev_read(dev, k, VA(p) + 8, b, sizeof(b)),
			 -EACCES);
	for (size_t i = 0; i < sizeof(b); i++)
		assert_int_equal((unsigned char)b[i], 0xAA);
	assert_int_equal(uodp_dev_fetch_add(dev, k, VA(p), 1, &old), -EACCES);
	assert_int_equal(uodp_dev_snapshot(dev, k, VA(p), 4 * PS, st), 4);
	assert_int_equal(st[0] | st[1] | st[2] | st[3], UODP_DEV_PAGE_NONE);
	assert_true(stats(dev).err_access >= 2);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, 4 * PS);
}

/* write to PROT_READ memory: -EACCES, then success after mprotect RW and
 * an explicit invalidation. */
static void test_prot_read_write(void **state)
{
	struct uodp_dev *dev = open_dev(0);
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char b[32], r[32];
	uint32_t k;

	(void)state;
	fill(p, 4 * PS, 3);
	assert_int_equal(mprotect(p, 4 * PS, PROT_READ), 0);
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), 4 * PS,
					 UODP_DEV_ACCESS_ALL, &k),
			 0);
	memset(b, 0x5c, sizeof(b));
	assert_int_equal(uodp_dev_write(dev, k, VA(p) + PS, b, sizeof(b)),
			 -EACCES);
	assert_true(check_fill(p, 4 * PS, 3));
	/* reading is fine */
	assert_int_equal(uodp_dev_read(dev, k, VA(p) + PS, r, sizeof(r)), 0);
	assert_memory_equal(r, p + PS, sizeof(r));

	assert_int_equal(mprotect(p, 4 * PS, PROT_READ | PROT_WRITE), 0);
	inval(dev, p, 4 * PS);
	assert_int_equal(uodp_dev_write(dev, k, VA(p) + PS, b, sizeof(b)), 0);
	assert_memory_equal(p + PS, b, sizeof(b));
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, 4 * PS);
}

/* never-touched memory reads as zeros with one fault; repeated reads do
 * not fault again. */
static void test_never_touched_repeated(void **state)
{
	struct uodp_dev *dev = open_dev(0);
	char *p = map_anon(8 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *b = malloc(8 * PS);
	struct uodp_dev_stats s0, s1, s2;
	uint32_t k;
	int i;

	(void)state;
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), 8 * PS,
					 UODP_DEV_ACCESS_READ, &k),
			 0);
	memset(b, 1, 8 * PS);
	s0 = stats(dev);
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, 8 * PS), 0);
	for (i = 0; i < 8 * (int)PS; i++)
		assert_int_equal(b[i], 0);
	s1 = stats(dev);
	assert_int_equal(s1.page_faults - s0.page_faults, 1);
	for (i = 0; i < 5; i++)
		assert_int_equal(uodp_dev_read(dev, k, VA(p) + 100, b, 3 * PS),
				 0);
	s2 = stats(dev);
	assert_int_equal(s2.page_faults, s1.page_faults);
	assert_int_equal(s2.reads - s1.reads, 5);
	free(b);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, 8 * PS);
}

/* file-backed read and write, checked with pread. */
static void test_file_backed(void **state)
{
	char path[] = "/tmp/uodp_test_dev_XXXXXX";
	struct uodp_dev *dev = open_dev(0);
	size_t len = 6 * PS;
	char *p, *src = malloc(len), *b = malloc(len);
	uint32_t k;
	int fd;

	(void)state;
	fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	fill(src, len, 5);
	assert_int_equal(pwrite(fd, src, len, 0), (ssize_t)len);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	assert_int_equal(
		uodp_dev_reg_mr(dev, VA(p), len, UODP_DEV_ACCESS_ALL, &k), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, len), 0);
	assert_memory_equal(b, src, len);
	fill(src, 2 * PS, 77);
	assert_int_equal(uodp_dev_write(dev, k, VA(p) + PS, src, 2 * PS), 0);
	assert_int_equal(pread(fd, b, 2 * PS, (off_t)PS), (ssize_t)(2 * PS));
	assert_memory_equal(b, src, 2 * PS);

	/* Past the end of the file: SIGBUS for the CPU, -EFAULT here. */
	assert_int_equal(ftruncate(fd, (off_t)PS), 0);
	inval(dev, p + PS, len - PS);
	assert_int_equal(uodp_dev_read(dev, k, VA(p) + 2 * PS, b, 64), -EFAULT);
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, 64), 0);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, len);
	close(fd);
	free(src);
	free(b);
}

/* shared anonymous memory: the device and both sides of a fork agree. */
static void test_shared_anon(void **state)
{
	struct uodp_dev *dev = open_dev(0);
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE, MAP_SHARED);
	char b[128];
	uint32_t k;

	(void)state;
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), 4 * PS,
					 UODP_DEV_ACCESS_ALL, &k),
			 0);
	fill(b, sizeof(b), 11);
	assert_int_equal(uodp_dev_write(dev, k, VA(p) + 3 * PS, b, sizeof(b)),
			 0);
	assert_memory_equal(p + 3 * PS, b, sizeof(b));
	strcpy(p, "cpu wrote this");
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, 15), 0);
	assert_string_equal(b, "cpu wrote this");
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, 4 * PS);
}

/* a THP-backed region, collapsed under the device (no event: frames
 * change, virtual addresses do not). */
static void test_thp(void **state)
{
	size_t huge = 2u << 20, len = 2 * huge;
	struct uodp_dev *dev = open_dev(0);
	char *raw = map_anon(len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *p = (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
	char *b = malloc(len);
	uint32_t k;

	(void)state;
	madvise(p, len, MADV_HUGEPAGE); /* best effort */
	fill(p, len, 21);
	assert_int_equal(
		uodp_dev_reg_mr(dev, VA(p), len, UODP_DEV_ACCESS_ALL, &k), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, len), 0);
	assert_memory_equal(b, p, len);
	madvise(p, len, MADV_COLLAPSE); /* may fail: nothing depends on it */
	fill(b, huge, 22);
	assert_int_equal(uodp_dev_write(dev, k, VA(p) + huge / 2, b, huge), 0);
	assert_memory_equal(p + huge / 2, b, huge);
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, len), 0);
	assert_memory_equal(b, p, len);
	free(b);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(raw, len + huge);
}

/* fork: the parent's device refuses to work in the child; the child's own
 * device writes do not show in the parent's private memory, and do through
 * a shared mapping. */
static int child_body(struct uodp_dev *parent_dev, uint32_t pkey, char *priv,
		      char *shared)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
	struct uodp_dev *dev;
	uint32_t k1, k2;
	char b[8];

	if (uodp_dev_read(parent_dev, pkey, VA(priv), b, 8) != -ECHILD)
		return 10;
	if (uodp_dev_close(parent_dev) != -ECHILD)
		return 11;
	if (uodp_dev_open(&a, &dev))
		return 12;
	if (uodp_dev_reg_mr(dev, VA(priv), PS, UODP_DEV_ACCESS_ALL, &k1) ||
	    uodp_dev_reg_mr(dev, VA(shared), PS, UODP_DEV_ACCESS_ALL, &k2))
		return 13;
	if (uodp_dev_write(dev, k1, VA(priv), "child!", 7) ||
	    uodp_dev_write(dev, k2, VA(shared), "child!", 7))
		return 14;
	if (strcmp(priv, "child!") || strcmp(shared, "child!"))
		return 15;
	if (uodp_dev_close(dev))
		return 16;
	return 0;
}

static void test_fork(void **state)
{
	struct uodp_dev *dev = open_dev(0);
	char *priv = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *shared = map_anon(PS, PROT_READ | PROT_WRITE, MAP_SHARED);
	char b[8];
	uint32_t k;
	pid_t pid;
	int st;

	(void)state;
	strcpy(priv, "parent");
	strcpy(shared, "parent");
	assert_int_equal(
		uodp_dev_reg_mr(dev, VA(priv), PS, UODP_DEV_ACCESS_ALL, &k), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(priv), b, 7), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(child_body(dev, k, priv, shared));
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_string_equal(priv, "parent");
	assert_string_equal(shared, "child!");
	assert_int_equal(uodp_dev_read(dev, k, VA(priv), b, 7), 0);
	assert_string_equal(b, "parent");
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(priv, PS);
	munmap(shared, PS);
}

/* madvise(MADV_DONTNEED) between iterations forces re-faults; data is
 * checked each time. */
static void test_dontneed_iterations(void **state)
{
	struct fx *f = *state;
	char *b = malloc(f->len);
	struct uodp_dev_stats s0, s1;
	uint8_t st[16];
	unsigned it;
	size_t i;

	for (it = 0; it < 5; it++) {
		fill(f->buf, f->len, 40 + it);
		s0 = stats(f->dev);
		assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf), b,
					       f->len),
				 0);
		assert_true(check_fill(b, f->len, 40 + it));
		assert_int_equal(madvise(f->buf, f->len, MADV_DONTNEED), 0);
		inval(f->dev, f->buf, f->len);
		s1 = stats(f->dev);
		assert_true(s1.invalidations > s0.invalidations);
		assert_int_equal(uodp_dev_snapshot(f->dev, f->key, VA(f->buf),
						   f->len, st),
				 16);
		for (i = 0; i < 16; i++)
			assert_int_equal(st[i], UODP_DEV_PAGE_NONE);
		assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf), b,
					       f->len),
				 0);
		for (i = 0; i < f->len; i++)
			assert_int_equal(b[i], 0);
		assert_true(stats(f->dev).page_faults > s1.page_faults);
	}
	free(b);
}

/* teardown race: device reads while another thread unmaps half of the
 * buffer; no crash, errors only for the unmapped half. */
struct race {
	struct uodp_dev *dev;
	uint32_t key;
	char *p;
	size_t len;
	pthread_barrier_t bar;
	atomic_int stop;
	int bad, efault, ok;
};

static void *race_reader(void *arg)
{
	struct race *r = arg;
	char *b = malloc(PS);
	size_t half = r->len / 2, off;
	int e, rounds = 0;

	pthread_barrier_wait(&r->bar);
	while (!atomic_load(&r->stop) || rounds < 2) {
		for (off = 0; off < r->len; off += PS) {
			e = uodp_dev_read(r->dev, r->key, VA(r->p) + off, b,
					  PS);
			if (!e && check_fill(b, PS, (unsigned)(off / PS)))
				r->ok++;
			else if (e == -EFAULT && off >= half)
				r->efault++;
			else
				r->bad++;
		}
		if (atomic_load(&r->stop))
			rounds++;
	}
	free(b);
	return NULL;
}

static void test_teardown_race(void **state)
{
	struct race r = { 0 };
	pthread_t t;
	size_t off;
	int e;
	char b[8];

	(void)state;
	r.dev = open_dev(0);
	r.len = 64 * PS;
	/* Low: a hole in the second half must stay a hole (under TSan its
	 * runtime mapped memory into one and the reader saw 32 "bad" reads
	 * of pages that were not ours). */
	r.p = t_low_buf(r.len / PS);
	for (off = 0; off < r.len; off += PS)
		fill(r.p + off, PS, (unsigned)(off / PS));
	assert_int_equal(uodp_dev_reg_mr(r.dev, VA(r.p), r.len,
					 UODP_DEV_ACCESS_READ, &r.key),
			 0);
	pthread_barrier_init(&r.bar, NULL, 2);
	assert_int_equal(pthread_create(&t, NULL, race_reader, &r), 0);
	pthread_barrier_wait(&r.bar);
	/* unmap the second half a page at a time while the reader runs */
	for (off = r.len / 2; off < r.len; off += PS) {
		assert_int_equal(munmap(r.p + off, PS), 0);
		if (off & PS)
			inval(r.dev, r.p + off, PS); /* half stay stale */
	}
	atomic_store(&r.stop, 1);
	pthread_join(t, NULL);
	assert_int_equal(r.bad, 0);
	assert_true(r.ok >= 64);
	assert_true(r.efault >= 32);
	/* afterwards: the unmapped half fails, stale entries or not */
	for (off = r.len / 2; off < r.len; off += PS) {
		e = uodp_dev_read(r.dev, r.key, VA(r.p) + off, b, 8);
		assert_int_equal(e, -EFAULT);
	}
	assert_int_equal(uodp_dev_close(r.dev), 0);
	munmap(r.p, r.len / 2);
	pthread_barrier_destroy(&r.bar);
}

/* two devices mirroring the same memory */
static void test_two_devices(void **state)
{
	struct uodp_dev *d1 = open_dev(0), *d2 = open_dev(0);
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint32_t k1, k2;
	char b[64], c[64];
	uint64_t old;

	(void)state;
	assert_int_equal(uodp_dev_reg_mr(d1, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL,
					 &k1),
			 0);
	assert_int_equal(uodp_dev_reg_mr(d2, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL,
					 &k2),
			 0);
	fill(b, sizeof(b), 31);
	assert_int_equal(uodp_dev_write(d1, k1, VA(p) + 2 * PS, b, sizeof(b)),
			 0);
	assert_int_equal(uodp_dev_read(d2, k2, VA(p) + 2 * PS, c, sizeof(c)),
			 0);
	assert_memory_equal(b, c, sizeof(b));
	assert_int_equal(uodp_dev_fetch_add(d1, k1, VA(p), 5, &old), 0);
	assert_int_equal(uodp_dev_fetch_add(d2, k2, VA(p), 5, &old), 0);
	assert_int_equal(old, 5);
	/* each device follows its own context's invalidations */
	assert_int_equal(madvise(p, 4 * PS, MADV_DONTNEED), 0);
	inval(d1, p, 4 * PS);
	inval(d2, p, 4 * PS);
	assert_int_equal(uodp_dev_read(d1, k1, VA(p), &old, 8), 0);
	assert_int_equal(old, 0);
	assert_int_equal(munmap(p, 4 * PS), 0);
	inval(d1, p, 4 * PS);
	inval(d2, p, 4 * PS);
	assert_int_equal(uodp_dev_read(d1, k1, VA(p), b, 8), -EFAULT);
	assert_int_equal(uodp_dev_read(d2, k2, VA(p), b, 8), -EFAULT);
	assert_int_equal(uodp_dev_close(d1), 0);
	assert_int_equal(uodp_dev_close(d2), 0);
}

/* two devices sharing one context: one invalidation reaches both (the
 * kernel-monitor variants are in test_dev_monitor.c). */
static void shared_case(unsigned flags)
{
	struct uodp_dev_attr a = { .flags = flags };
	struct uodp_dev *d1, *d2;
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uodp_dev_stats s1, s2;
	uint32_t k1, k2;
	char b[8];
	int r;

	r = uodp_dev_open(&a, &d1);
	assert_int_equal(r, 0);
	a.share = d1;
	assert_int_equal(uodp_dev_open(&a, &d2), 0);
	assert_ptr_equal(uodp_dev_ctx(d1), uodp_dev_ctx(d2));
	r = uodp_dev_reg_mr(d1, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL, &k1);
	assert_int_equal(r, 0);
	assert_int_equal(uodp_dev_reg_mr(d2, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL,
					 &k2),
			 0);
	assert_int_equal(uodp_dev_write(d1, k1, VA(p), "both", 5), 0);
	assert_int_equal(uodp_dev_read(d2, k2, VA(p), b, 5), 0);
	assert_string_equal(b, "both");
	assert_int_equal(munmap(p + 2 * PS, 2 * PS), 0);
	inval(d1, p + 2 * PS, 2 * PS); /* once, for both */
	s1 = stats(d1);
	s2 = stats(d2);
	assert_int_equal(s1.pages_invalidated, 2);
	assert_int_equal(s2.pages_invalidated, 2);
	if (flags & UODP_DEV_STRICT) {
		assert_true(s1.fences >= 1);
		assert_true(s2.fences >= 1);
	}
	assert_int_equal(uodp_dev_read(d1, k1, VA(p) + 2 * PS, b, 8), -EFAULT);
	assert_int_equal(uodp_dev_read(d2, k2, VA(p) + 2 * PS, b, 8), -EFAULT);
	/* the first device goes; the context stays for the second */
	assert_int_equal(uodp_dev_close(d1), 0);
	assert_int_equal(uodp_dev_read(d2, k2, VA(p), b, 5), 0);
	assert_int_equal(uodp_dev_close(d2), 0);
	munmap(p, 2 * PS);
}

static void test_shared_context(void **state)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
	struct uodp_dev *d1, *d2;

	(void)state;
	shared_case(UODP_DEV_MANUAL);
	/* MANUAL/STRICT must match the shared device's */
	assert_int_equal(uodp_dev_open(&a, &d1), 0);
	a.flags = UODP_DEV_STRICT;
	a.share = d1;
	assert_int_equal(uodp_dev_open(&a, &d2), -EINVAL);
	assert_int_equal(uodp_dev_close(d1), 0);
}

/* stats.ops: every operation started counts once, whatever its kind;
 * a snapshot is not an operation, nor is a call refused by its checks. */
static void test_stats_ops(void **state)
{
	struct fx *f = *state;
	struct uodp_dev_stats s0, s1;
	uint64_t old;
	char b[16];

	s0 = stats(f->dev);
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf), b, 8), 0);
	assert_int_equal(uodp_dev_write(f->dev, f->key, VA(f->buf), b, 8), 0);
	assert_int_equal(uodp_dev_copy(f->dev, f->key, VA(f->buf) + 8, f->key,
				       VA(f->buf), 8),
			 0);
	assert_int_equal(
		uodp_dev_fetch_add(f->dev, f->key, VA(f->buf), 1, &old), 0);
	assert_int_equal(uodp_dev_prefetch(f->dev, f->key, VA(f->buf), PS, 0),
			 0);
	assert_int_equal(uodp_dev_snapshot(f->dev, f->key, VA(f->buf), PS,
					   (uint8_t *)b),
			 1);
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf) + f->len, b,
				       8),
			 -ERANGE);
	s1 = stats(f->dev);
	assert_int_equal(s1.ops - s0.ops, 5);
	assert_int_equal(s1.reads - s0.reads, 1);
	assert_int_equal(s1.writes - s0.writes, 1);
	assert_int_equal(s1.copies - s0.copies, 1);
	assert_int_equal(s1.atomics - s0.atomics, 1);
	assert_int_equal(s1.prefetches - s0.prefetches, 1);
	assert_int_equal(s1.snapshots - s0.snapshots, 1);
}

/* atomics: semantics, then contention from the CPU and the device. */
static void test_atomics_basic(void **state)
{
	struct fx *f = *state;
	uint64_t *w = (uint64_t *)(f->buf + 5 * PS), old = 1;

	*w = 100;
	assert_int_equal(uodp_dev_fetch_add(f->dev, f->key, VA(w), 7, &old), 0);
	assert_int_equal(old, 100);
	assert_int_equal(*w, 107);
	assert_int_equal(uodp_dev_cmp_swap(f->dev, f->key, VA(w), 1, 2, &old),
			 0);
	assert_int_equal(old, 107);
	assert_int_equal(*w, 107);
	assert_int_equal(uodp_dev_cmp_swap(f->dev, f->key, VA(w), 107, 9, NULL),
			 0);
	assert_int_equal(*w, 9);
	assert_int_equal(stats(f->dev).atomics, 3);
}

struct contend {
	struct uodp_dev *dev;
	uint32_t key;
	uint64_t *ctr, *cas;
	int iters;
	int err;
};

static void *cpu_adder(void *arg)
{
	struct contend *c = arg;
	uint64_t v;

	for (int i = 0; i < c->iters; i++) {
		__atomic_fetch_add(c->ctr, 1, __ATOMIC_SEQ_CST);
		v = __atomic_load_n(c->cas, __ATOMIC_RELAXED);
		while (!__atomic_compare_exchange_n(c->cas, &v, v + 1, false,
						    __ATOMIC_SEQ_CST,
						    __ATOMIC_RELAXED))
			;
	}
	return NULL;
}

static void *dev_adder(void *arg)
{
	struct contend *c = arg;
	uint64_t old, cur;

	for (int i = 0; i < c->iters; i++) {
		if (uodp_dev_fetch_add(c->dev, c->key, VA(c->ctr), 1, &old))
			c->err++;
		cur = __atomic_load_n(c->cas, __ATOMIC_RELAXED);
		for (;;) {
			if (uodp_dev_cmp_swap(c->dev, c->key, VA(c->cas), cur,
					      cur + 1, &old)) {
				c->err++;
				break;
			}
			if (old == cur)
				break;
			cur = old;
		}
	}
	return NULL;
}

static void test_atomics_contention(void **state)
{
	struct fx *f = *state;
	struct contend c[4];
	pthread_t t[4];
	int i, n = 20000;

	for (i = 0; i < 4; i++) {
		c[i].dev = f->dev;
		c[i].key = f->key;
		c[i].ctr = (uint64_t *)(f->buf + 6 * PS);
		c[i].cas = (uint64_t *)(f->buf + 7 * PS + 64);
		c[i].iters = n;
		c[i].err = 0;
	}
	*c[0].ctr = 0;
	*c[0].cas = 0;
	for (i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL,
						i < 2 ? cpu_adder : dev_adder,
						&c[i]),
				 0);
	for (i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(c[2].err + c[3].err, 0);
	assert_int_equal(*c[0].ctr, 4 * (uint64_t)n);
	assert_int_equal(*c[0].cas, 4 * (uint64_t)n);
}

/* The guarded paths: a stale device page-table entry (memory unmapped or
 * mprotected with no invalidation) makes the copy or the atomic run on a
 * hole, as a racing munmap would. */
static void stale_entry_case(unsigned flags)
{
	struct uodp_dev *dev = open_dev(flags);
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t old, races;
	uint32_t k;
	char b[64];

	fill(p, 4 * PS, 8);
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), 4 * PS,
					 UODP_DEV_ACCESS_ALL, &k),
			 0);
	assert_int_equal(uodp_dev_prefetch(dev, k, VA(p), 4 * PS,
					   UODP_DEV_PREFETCH_WRITE),
			 0);
	races = stats(dev).races;
	/* page 1 read-only: writes and atomics fail -EACCES, reads work */
	assert_int_equal(mprotect(p + PS, PS, PROT_READ), 0);
	assert_int_equal(uodp_dev_write(dev, k, VA(p) + PS, b, 64), -EACCES);
	assert_int_equal(uodp_dev_fetch_add(dev, k, VA(p) + PS, 1, &old),
			 -EACCES);
	assert_int_equal(uodp_dev_read(dev, k, VA(p) + PS, b, 64), 0);
	assert_memory_equal(b, p + PS, 64);
	/* page 2 PROT_NONE */
	assert_int_equal(mprotect(p + 2 * PS, PS, PROT_NONE), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(p) + 2 * PS, b, 64), -EACCES);
	assert_int_equal(uodp_dev_cmp_swap(dev, k, VA(p) + 2 * PS, 0, 1, &old),
			 -EACCES);
	/* page 3 unmapped */
	assert_int_equal(munmap(p + 3 * PS, PS), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(p) + 3 * PS, b, 64), -EFAULT);
	assert_int_equal(uodp_dev_write(dev, k, VA(p) + 3 * PS, b, 64),
			 -EFAULT);
	assert_int_equal(uodp_dev_fetch_add(dev, k, VA(p) + 3 * PS, 1, &old),
			 -EFAULT);
	/* page 0 still reads, across into read-only page 1 */
	assert_int_equal(uodp_dev_read(dev, k, VA(p) + PS - 32, b, 64), 0);
	assert_true(stats(dev).races > races);
	/* page 0 is intact and usable */
	assert_int_equal(uodp_dev_fetch_add(dev, k, VA(p), 1, &old), 0);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, 3 * PS);
}

static void test_stale_entries_syscall(void **state)
{
	(void)state;
	stale_entry_case(0);
}

static void test_stale_entries_fast_copy(void **state)
{
	(void)state;
	stale_entry_case(UODP_DEV_FAST_COPY);
}

/* The device's SIGSEGV handler passes faults that are not its own on: to
 * a handler installed before it, or to the default action. */
static sigjmp_buf app_jb;
static void app_handler(int sig)
{
	(void)sig;
	siglongjmp(app_jb, 1);
}

static void test_signal_chaining(void **state)
{
	pid_t pid;
	int st;

	(void)state;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct uodp_dev *dev;
		struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
		volatile char *bad =
			(char *)map_anon(PS, PROT_NONE, MAP_PRIVATE);

		signal(SIGSEGV, app_handler);
		if (uodp_dev_open(&a, &dev))
			_exit(20);
		if (sigsetjmp(app_jb, 1) == 0) {
			(void)*bad; /* the application's own fault */
			_exit(21);
		}
		/* default action again: this one must kill us */
		signal(SIGSEGV, SIG_DFL);
		(void)*bad;
		_exit(22);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGSEGV);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct uodp_dev *dev;
		struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
		volatile char *bad =
			(char *)map_anon(PS, PROT_NONE, MAP_PRIVATE);

		signal(SIGSEGV, SIG_DFL);
		if (uodp_dev_open(&a, &dev))
			_exit(20);
		(void)*bad; /* not the device's: default action */
		_exit(23);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGSEGV);
}

/* snapshot, prefetch and prefetch-for-write */
static void test_prefetch_snapshot(void **state)
{
	struct fx *f = *state;
	struct uodp_dev_stats s0, s1;
	uint8_t st[16];
	char b[64];
	int i;

	assert_int_equal(
		uodp_dev_snapshot(f->dev, f->key, VA(f->buf), f->len, st), 16);
	for (i = 0; i < 16; i++)
		assert_int_equal(st[i], UODP_DEV_PAGE_NONE);
	assert_int_equal(uodp_dev_prefetch(f->dev, f->key, VA(f->buf) + PS,
					   2 * PS, 0),
			 0);
	assert_int_equal(uodp_dev_prefetch(f->dev, f->key, VA(f->buf) + 8 * PS,
					   PS, UODP_DEV_PREFETCH_WRITE),
			 0);
	assert_int_equal(
		uodp_dev_snapshot(f->dev, f->key, VA(f->buf) + PS, PS, st), 1);
	assert_int_equal(st[0], UODP_DEV_PAGE_READ);
	assert_int_equal(uodp_dev_snapshot(f->dev, f->key, VA(f->buf) + 8 * PS,
					   1, st),
			 1);
	assert_int_equal(st[0], UODP_DEV_PAGE_WRITE);
	s0 = stats(f->dev);
	assert_int_equal(uodp_dev_read(f->dev, f->key, VA(f->buf) + PS, b, 64),
			 0);
	assert_int_equal(
		uodp_dev_write(f->dev, f->key, VA(f->buf) + 8 * PS, b, 64), 0);
	s1 = stats(f->dev);
	assert_int_equal(s1.page_faults, s0.page_faults);
	assert_int_equal(s1.prefetches, 2);
	/* the snapshot does not fault and does not touch memory */
	assert_int_equal(s1.snapshots, 3);
	/* prefetch of unmapped memory fails; pages before stay */
	assert_int_equal(munmap(f->buf + 12 * PS, PS), 0);
	inval(f->dev, f->buf + 12 * PS, PS);
	assert_int_equal(uodp_dev_prefetch(f->dev, f->key, VA(f->buf) + 10 * PS,
					   4 * PS, 0),
			 -EFAULT);
	assert_int_equal(uodp_dev_snapshot(f->dev, f->key, VA(f->buf) + 10 * PS,
					   4 * PS, st),
			 4);
	/* 10 and 11 came with the write prefetch's fault-around */
	assert_int_equal(st[0], UODP_DEV_PAGE_WRITE);
	assert_int_equal(st[1], UODP_DEV_PAGE_WRITE);
	assert_int_equal(st[2], UODP_DEV_PAGE_NONE);
}

/* copy from one region to another */
static void test_copy(void **state)
{
	struct fx *f = *state;
	size_t len = 200 * 1024;
	char *dst = map_anon(len, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *src = map_anon(len, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint32_t kd, ks;

	fill(src, len, 61);
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(dst), len,
					 UODP_DEV_ACCESS_WRITE, &kd),
			 0);
	assert_int_equal(uodp_dev_reg_mr(f->dev, VA(src), len,
					 UODP_DEV_ACCESS_READ, &ks),
			 0);
	assert_int_equal(uodp_dev_copy(f->dev, kd, VA(dst) + 1, ks, VA(src),
				       len - 1),
			 0);
	assert_memory_equal(dst + 1, src, len - 1);
	assert_int_equal(uodp_dev_copy(f->dev, ks, VA(src), kd, VA(dst), 8),
			 -EPERM);
	assert_int_equal(munmap(src + PS, PS), 0);
	inval(f->dev, src + PS, PS);
	assert_int_equal(uodp_dev_copy(f->dev, kd, VA(dst), ks, VA(src), len),
			 -EFAULT);
	assert_int_equal(uodp_dev_dereg_mr(f->dev, kd), 0);
	assert_int_equal(uodp_dev_dereg_mr(f->dev, ks), 0);
	munmap(dst, len);
	munmap(src, len);
}

/* the implicit region: children appear with faults, go when idle */
static void test_implicit(void **state)
{
	struct uodp_dev *dev = open_dev(0);
	uint64_t g = UINT64_C(1) << 30, old;
	char *a, *b, *c, *res;
	uint32_t k;
	char buf[32];
	uint8_t st[2];

	(void)state;
	/* two buffers in different aligned GiBs of one reservation */
	res = mmap(NULL, 5 * g, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		t_skip("cannot reserve the address space (ulimit -v?)");
	a = (char *)(((uintptr_t)res + g - 1) & ~(uintptr_t)(g - 1));
	b = a + 3 * g;
	assert_int_equal(mprotect(a, PS, PROT_READ | PROT_WRITE), 0);
	assert_int_equal(mprotect(b, 2 * PS, PROT_READ | PROT_WRITE), 0);
	strcpy(a, "in a");
	strcpy(b + PS, "in b");
	assert_int_equal(uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_ALL, &k),
			 0);
	assert_int_equal(uodp_dev_mr_children(dev, k), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(a), buf, 5), 0);
	assert_string_equal(buf, "in a");
	assert_int_equal(uodp_dev_mr_children(dev, k), 1);
	assert_int_equal(uodp_dev_write(dev, k, VA(b) + PS, "dev b", 6), 0);
	assert_string_equal(b + PS, "dev b");
	assert_int_equal(uodp_dev_fetch_add(dev, k, VA(b), 3, &old), 0);
	assert_int_equal(uodp_dev_mr_children(dev, k), 2);
	assert_int_equal(stats(dev).children_created, 2);
	/* a snapshot of an address with no child creates none */
	assert_int_equal(uodp_dev_snapshot(dev, k, VA(a) + g, PS, st), 1);
	assert_int_equal(st[0], UODP_DEV_PAGE_NONE);
	assert_int_equal(uodp_dev_mr_children(dev, k), 2);
	/* nothing is idle yet */
	assert_int_equal(uodp_dev_mr_trim(dev, k), 0);
	/* a goes away: its child becomes idle and is trimmed */
	assert_int_equal(munmap(a, PS), 0);
	inval(dev, a, PS);
	assert_int_equal(uodp_dev_mr_trim(dev, k), 1);
	assert_int_equal(uodp_dev_mr_children(dev, k), 1);
	assert_int_equal(uodp_dev_read(dev, k, VA(a), buf, 5), -EFAULT);
	assert_int_equal(uodp_dev_read(dev, k, VA(b) + PS, buf, 6), 0);
	assert_string_equal(buf, "dev b");
	/* the first page and the top are out of reach */
	assert_int_equal(uodp_dev_read(dev, k, 0, buf, 5), -EFAULT);
	assert_int_equal(uodp_dev_read(dev, k, UINT64_C(1) << 47, buf, 5),
			 -ERANGE);
	/* a malloc'd buffer works too */
	c = malloc(100);
	strcpy(c, "heap");
	assert_int_equal(uodp_dev_read(dev, k, VA(c), buf, 5), 0);
	assert_string_equal(buf, "heap");
	free(c);
	assert_int_equal(uodp_dev_dereg_mr(dev, k), 0);
	assert_int_equal(stats(dev).children_released,
			 stats(dev).children_created);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(res, 5 * g);
}

/* creating a child when many exist releases the idle ones */
static void test_implicit_auto_trim(void **state)
{
	struct uodp_dev *dev = open_dev(0);
	size_t g = (size_t)1 << 30, n = 20, i;
	char *res, *a;
	uint32_t k;
	char c;

	(void)state;
	res = mmap(NULL, (n + 1) * g, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		t_skip("cannot reserve the address space (ulimit -v?)");
	a = (char *)(((uintptr_t)res + g - 1) & ~(uintptr_t)(g - 1));
	assert_int_equal(
		uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_READ, &k), 0);
	for (i = 0; i < 17; i++) {
		assert_int_equal(mprotect(a + i * g, PS, PROT_READ), 0);
		assert_int_equal(uodp_dev_read(dev, k, VA(a + i * g), &c, 1),
				 0);
	}
	/* the 17th creation found 16 busy children: none released */
	assert_int_equal(uodp_dev_mr_children(dev, k), 17);
	inval(dev, a, 17 * g); /* all idle now */
	assert_int_equal(mprotect(a + 18 * g, PS, PROT_READ), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(a + 18 * g), &c, 1), 0);
	assert_int_equal(uodp_dev_mr_children(dev, k), 1);
	assert_int_equal(stats(dev).children_released, 17);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(res, (n + 1) * g);
}

/* A driver's own engine context whose invalidate callback drops device
 * keys (a registration cache over device regions): the engine refuses to
 * release regions from a callback, so the device must refuse too, with
 * -EDEADLK and nothing changed; before, dereg returned 0 having freed the
 * key's span while its engine region stayed registered, pointing at it
 * (a later invalidation of the device's context used freed memory), and
 * trim did the same to idle children. */
struct cb_dev {
	struct uodp_dev *dev;
	uint32_t key, ikey;
	int dereg, trim, close;
	int calls;
};

static void cb_drop_keys(struct uodp_umem *umem, const struct uodp_range *r,
			 void *priv)
{
	struct cb_dev *c = priv;

	(void)umem;
	(void)r;
	c->calls++;
	c->dereg = uodp_dev_dereg_mr(c->dev, c->key);
	c->trim = uodp_dev_mr_trim(c->dev, c->ikey);
	c->close = uodp_dev_close(c->dev);
}

static void test_keys_from_callback(void **state)
{
	struct cb_dev c = { 0 };
	struct uodp_ctx_ops ops = { .invalidate = cb_drop_keys, .priv = &c };
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE), b[8];
	struct uodp_umem *u;
	struct uodp_ctx *a;

	(void)state;
	c.dev = open_dev(0);
	assert_int_equal(uodp_dev_reg_mr(c.dev, VA(p), 2 * PS,
					 UODP_DEV_ACCESS_ALL, &c.key),
			 0);
	assert_int_equal(uodp_dev_reg_implicit_mr(c.dev, UODP_DEV_ACCESS_ALL,
						  &c.ikey),
			 0);
	assert_int_equal(uodp_dev_read(c.dev, c.key, VA(p), b, 8), 0);
	assert_int_equal(uodp_dev_read(c.dev, c.ikey, VA(p + 3 * PS), b, 8), 0);
	/* the child idle (its fault-around may have reached neighbours) */
	inval(c.dev, p + 3 * PS, 2 * UODP_DEV_FAULT_AROUND_DEFAULT * PS);
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &a), 0);
	assert_int_equal(uodp_umem_get(a, p, 4 * PS, UODP_ACCESS_ALL, &u), 0);
	assert_int_equal(uodp_invalidate_range(a, p, PS, UODP_EVENT_MANUAL), 0);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.dereg, -EDEADLK);
	assert_int_equal(c.trim, -EDEADLK);
	assert_int_equal(c.close, -EDEADLK);
	/* nothing changed: the key works, is invalidated, the child is
	 * there */
	assert_int_equal(uodp_dev_read(c.dev, c.key, VA(p + PS), b, 8), 0);
	inval(c.dev, p, 2 * PS);
	assert_int_equal(uodp_dev_read(c.dev, c.key, VA(p), b, 8), 0);
	assert_int_equal(uodp_dev_mr_children(c.dev, c.ikey), 1);
	/* and outside the callback they work */
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(a), 0);
	assert_int_equal(uodp_dev_mr_trim(c.dev, c.ikey), 1);
	assert_int_equal(uodp_dev_dereg_mr(c.dev, c.key), 0);
	assert_int_equal(uodp_dev_close(c.dev), 0);
	munmap(p, 4 * PS);
}

/* The same for an implicit key's access that must create a child: with
 * IMPLICIT_AUTO_TRIM (16) children the creation first releases the idle
 * ones, which a callback may not; before, the trim freed their spans with
 * their engine regions still registered. */
struct cb_read {
	struct uodp_dev *dev;
	uint32_t key;
	char *at;
	int r;
};

static void cb_read_implicit(struct uodp_umem *umem, const struct uodp_range *r,
			     void *priv)
{
	struct cb_read *c = priv;
	char b;

	(void)umem;
	(void)r;
	c->r = uodp_dev_read(c->dev, c->key, VA(c->at), &b, 1);
}

static void test_implicit_create_from_callback(void **state)
{
	struct cb_read c = { 0 };
	struct uodp_ctx_ops ops = { .invalidate = cb_read_implicit,
				    .priv = &c };
	size_t g = (size_t)1 << 30, n = 18, i;
	struct uodp_umem *u;
	struct uodp_ctx *a;
	char *res, *base;
	char b;

	(void)state;
	res = mmap(NULL, (n + 1) * g, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		t_skip("cannot reserve the address space (ulimit -v?)");
	base = (char *)(((uintptr_t)res + g - 1) & ~(uintptr_t)(g - 1));
	c.dev = open_dev(0);
	assert_int_equal(uodp_dev_reg_implicit_mr(c.dev, UODP_DEV_ACCESS_READ,
						  &c.key),
			 0);
	for (i = 0; i < 16; i++) {
		assert_int_equal(mprotect(base + i * g, PS, PROT_READ), 0);
		assert_int_equal(uodp_dev_read(c.dev, c.key, VA(base + i * g),
					       &b, 1),
				 0);
	}
	inval(c.dev, base, 16 * g); /* all idle: a creation trims them */
	assert_int_equal(mprotect(base + 17 * g, PS, PROT_READ), 0);
	c.at = base + 17 * g;
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &a), 0);
	assert_int_equal(uodp_umem_get(a, base, PS, UODP_ACCESS_READ, &u), 0);
	assert_int_equal(uodp_invalidate_range(a, base, PS, UODP_EVENT_MANUAL),
			 0);
	assert_int_equal(c.r, -EDEADLK);
	assert_int_equal(uodp_dev_mr_children(c.dev, c.key), 16);
	assert_int_equal(stats(c.dev).children_released, 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(a), 0);
	/* outside the callback: trimmed, then created */
	assert_int_equal(uodp_dev_read(c.dev, c.key, VA(c.at), &b, 1), 0);
	assert_int_equal(uodp_dev_mr_children(c.dev, c.key), 1);
	assert_int_equal(uodp_dev_close(c.dev), 0);
	munmap(res, (n + 1) * g);
}

/* A fault racing an invalidation installs nothing stale: the invalidation
 * runs between the engine's populate and its install (the engine's test
 * hook, inside uodp_umem_map_and_lock(), no lock held). */
extern void (*engine_test_hook_before_install)(struct uodp_umem *umem);
static struct uodp_dev *hook_dev;
static char *hook_p;
static int hook_calls;
static struct uodp_umem *hook_umem;

static void hook_unmap(struct uodp_umem *umem)
{
	hook_umem = umem;
	if (hook_calls++)
		return;
	/* the page the fault just populated goes away */
	assert_int_equal(munmap(hook_p, PS), 0);
	inval(hook_dev, hook_p, PS);
}

static void test_fault_invalidate_race(void **state)
{
	struct uodp_umem_stats us;
	struct uodp_dev_stats s;
	uint32_t k;
	uint8_t st;
	char b[8];

	(void)state;
	hook_dev = open_dev(0);
	hook_p = map_anon(PS, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	hook_calls = 0;
	assert_int_equal(uodp_dev_reg_mr(hook_dev, VA(hook_p), PS,
					 UODP_DEV_ACCESS_READ, &k),
			 0);
	engine_test_hook_before_install = hook_unmap;
	assert_int_equal(uodp_dev_read(hook_dev, k, VA(hook_p), b, 8), -EFAULT);
	engine_test_hook_before_install = NULL;
	/* The engine's fault loop collided once and started again (the
	 * region is still registered: its counters are readable). */
	assert_non_null(hook_umem);
	assert_int_equal(uodp_umem_stats(hook_umem, &us, sizeof(us)), 0);
	assert_true(us.retries >= 1);
	s = stats(hook_dev);
	assert_int_equal(s.pages_faulted, 0);
	assert_int_equal(uodp_dev_snapshot(hook_dev, k, VA(hook_p), 1, &st), 1);
	assert_int_equal(st, UODP_DEV_PAGE_NONE);
	assert_int_equal(uodp_dev_close(hook_dev), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_args),
		cmocka_unit_test_setup_teardown(test_wrapping_ranges, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_key_errors, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_anon_read_write, setup,
						teardown),
		cmocka_unit_test(test_prot_none),
		cmocka_unit_test(test_prot_read_write),
		cmocka_unit_test(test_never_touched_repeated),
		cmocka_unit_test(test_file_backed),
		cmocka_unit_test(test_shared_anon),
		cmocka_unit_test(test_thp),
		cmocka_unit_test(test_fork),
		cmocka_unit_test_setup_teardown(test_dontneed_iterations, setup,
						teardown),
		cmocka_unit_test(test_teardown_race),
		cmocka_unit_test(test_two_devices),
		cmocka_unit_test(test_shared_context),
		cmocka_unit_test_setup_teardown(test_stats_ops, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_atomics_basic, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_atomics_contention, setup,
						teardown),
		cmocka_unit_test(test_stale_entries_syscall),
		cmocka_unit_test(test_stale_entries_fast_copy),
		cmocka_unit_test(test_signal_chaining),
		cmocka_unit_test_setup_teardown(test_prefetch_snapshot, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_copy, setup, teardown),
		cmocka_unit_test(test_implicit),
		cmocka_unit_test(test_implicit_auto_trim),
		cmocka_unit_test(test_keys_from_callback),
		cmocka_unit_test(test_implicit_create_from_callback),
		cmocka_unit_test(test_fault_invalidate_race),
	};

	PS = (size_t)sysconf(_SC_PAGESIZE);
	return t_run(tests, NULL, NULL);
}

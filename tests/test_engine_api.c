/* SPDX-License-Identifier: MIT */
/*
 * test_engine_api.c - bad input for every public function of uodp.h.
 *
 * Each case makes one call the header says must fail, checks the exact
 * negative errno it documents, and then checks that nothing changed: a
 * snapshot of the fixture region (counters, sequence, every entry, the
 * accessors, the driver callback count, the context's bytes) is taken
 * before and compared after. Foreign pointers (a context passed as a region
 * and the other way round, a zeroed block) are used only where the header
 * promises a magic check; released objects are never touched (their memory
 * is freed). Also: the documented page rounding of every range argument,
 * the small accessors, uodp_strerror() and uodp_version().
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/internal.h" /* sizeof the objects, for byte snapshots */
#include "uodp.h"

#define NPAGES 8
#define VA_LIMIT ((uint64_t)1 << 56) /* the documented user space bound */

static uint64_t page;

/* Driver callback: counts calls and keeps the last range. */
static int cb_calls;
static uint64_t cb_start, cb_end;
static struct uodp_umem *cb_umem;

static void on_inval(struct uodp_umem *umem, uint64_t s, uint64_t e, void *p)
{
	(void)p;
	cb_calls++;
	cb_umem = umem;
	cb_start = s;
	cb_end = e;
}

static void on_inval_other(struct uodp_umem *umem, uint64_t s, uint64_t e,
			   void *p)
{
	(void)umem;
	(void)s;
	(void)e;
	*(int *)p += 1000;
}

static void fence(struct uodp_ctx *ctx, void *p)
{
	(void)ctx;
	(void)p;
}

struct fixture {
	struct uodp_ctx *ctx;
	struct uodp_umem *umem; /* the whole buffer, READ | WRITE */
	struct uodp_umem *ro;	/* the same buffer, READ only */
	char *buf;
	uint64_t base;
	/* A block as large as either object, all zero: no magic. */
	union {
		struct uodp_ctx c;
		struct uodp_umem u;
	} zero;
};

static int setup(void **state)
{
	static const struct uodp_ctx_ops ops = { .invalidate_range = on_inval };
	struct fixture *f = calloc(1, sizeof(*f));
	uint64_t seq;

	if (!f)
		return -1;
	page = (uint64_t)sysconf(_SC_PAGESIZE);
	f->buf = mmap(NULL, NPAGES * page, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (f->buf == MAP_FAILED)
		return -1;
	f->base = (uint64_t)(uintptr_t)f->buf;
	if (uodp_ctx_create(&ops, UODP_CTX_MANUAL, &f->ctx) ||
	    uodp_umem_get(f->ctx, f->base, NPAGES * page, UODP_ACCESS_ALL,
			  &f->umem) ||
	    uodp_umem_get(f->ctx, f->base, NPAGES * page, UODP_ACCESS_READ,
			  &f->ro))
		return -1;
	/* Pages 0-3 mapped writable, pages 0-1 unmapped again later by tests
	 * that need a dirty set; 4-7 unmapped. */
	seq = uodp_umem_read_seq(f->umem);
	if (uodp_umem_map(f->umem, f->base, 4 * page, UODP_ACCESS_ALL, seq) !=
	    4)
		return -1;
	seq = uodp_umem_read_seq(f->ro);
	if (uodp_umem_map(f->ro, f->base, 2 * page, UODP_ACCESS_READ, seq) != 2)
		return -1;
	cb_calls = 0;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(uodp_umem_release(f->umem), 0);
	assert_int_equal(uodp_umem_release(f->ro), 0);
	assert_int_equal(uodp_ctx_destroy(f->ctx), 0);
	munmap(f->buf, NPAGES * page);
	free(f);
	return 0;
}

/* Everything observable about one region, and the context's bytes. */
struct snap {
	struct uodp_umem_stats st;
	uint64_t seq, start, end;
	uint64_t entry[NPAGES];
	unsigned access;
	void *priv;
	struct uodp_ctx *ctx;
	int cb_calls;
	bool retry;
	unsigned char ctx_bytes[sizeof(struct uodp_ctx)];
	unsigned char zero_bytes[sizeof(((struct fixture *)0)->zero)];
};

static void take_snap(struct fixture *f, struct uodp_umem *u, struct snap *s)
{
	memset(s, 0, sizeof(*s));
	assert_int_equal(uodp_umem_stats(u, &s->st), 0);
	s->seq = uodp_umem_read_seq(u);
	s->start = uodp_umem_start(u);
	s->end = uodp_umem_end(u);
	for (int i = 0; i < NPAGES; i++)
		s->entry[i] = uodp_umem_entry(u, f->base + i * page);
	s->access = uodp_umem_access(u);
	s->priv = uodp_umem_priv(u);
	s->ctx = uodp_umem_ctx(u);
	s->cb_calls = cb_calls;
	s->retry = uodp_umem_retry(u, s->seq);
	memcpy(s->ctx_bytes, f->ctx, sizeof(s->ctx_bytes));
	memcpy(s->zero_bytes, &f->zero, sizeof(s->zero_bytes));
}

/* Snapshots of both regions before a bad call... */
struct snaps {
	struct snap a, b;
};

static void snap_both(struct fixture *f, struct snaps *s)
{
	take_snap(f, f->umem, &s->a);
	take_snap(f, f->ro, &s->b);
}

/* ... and the check that the call changed nothing. */
static void assert_unchanged(struct fixture *f, const struct snaps *before,
			     int line)
{
	struct snaps now;

	snap_both(f, &now);
	if (memcmp(&before->a, &now.a, sizeof(now.a)) ||
	    memcmp(&before->b, &now.b, sizeof(now.b)))
		fail_msg("state changed by a failing call (line %d)", line);
}

#define UNCHANGED(f, s) assert_unchanged((f), (s), __LINE__)

/* ------------------------------------------------------------------------ */

static void test_version(void **state)
{
	unsigned maj, min, pat;
	char tail;

	(void)state;
	assert_non_null(uodp_version());
	assert_int_equal(sscanf(uodp_version(), "%u.%u.%u%c", &maj, &min, &pat,
				&tail),
			 3);
	/* Stable: the same static string every time. */
	assert_ptr_equal(uodp_version(), uodp_version());
}

static void test_strerror(void **state)
{
	static const int codes[] = { EINVAL, EFAULT, EACCES, EAGAIN, ENODEV,
				     ECHILD, ENOMEM, ENOSYS, EPERM,  EBUSY };
	static const int odd[] = { 0,	     1,	      -1,	  4095,
				   -4095,    12345,   -12345,	  INT_MAX,
				   -INT_MAX, INT_MIN, INT_MIN + 1 };

	(void)state;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		const char *s = uodp_strerror(-codes[i]);

		assert_non_null(s);
		assert_true(strlen(s) > 0);
		/* Positive and negative spell the same error. */
		assert_string_equal(uodp_strerror(codes[i]), s);
		/* Each documented code has its own text. */
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(uodp_strerror(-codes[j]), s);
	}
	assert_string_not_equal(uodp_strerror(0), uodp_strerror(-EINVAL));
	for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
		const char *s = uodp_strerror(odd[i]);

		assert_non_null(s);
		assert_true(strlen(s) > 0);
	}
}

/* ------------------------------------------------------------------------ */
/* Contexts                                                                  */

static void test_ctx_create_bad(void **state)
{
	struct uodp_ctx_ops fenced = { .fence = fence, .unfence = fence };
	struct uodp_ctx_ops half = { .fence = fence };
	struct uodp_ctx_ops half2 = { .unfence = fence };
	struct uodp_ctx *const sentinel = (struct uodp_ctx *)(uintptr_t)0x1234;
	struct uodp_ctx *ctx;
	static const unsigned bad_flags[] = { 1u << 3, 1u << 31, ~0u,
					      UODP_CTX_MANUAL | 1u << 5 };

	(void)state;
	assert_int_equal(uodp_ctx_create(NULL, UODP_CTX_MANUAL, NULL), -EINVAL);
	assert_int_equal(uodp_ctx_create(&fenced, UODP_CTX_STRICT, NULL),
			 -EINVAL);
	for (size_t i = 0; i < sizeof(bad_flags) / sizeof(bad_flags[0]); i++) {
		ctx = sentinel;
		assert_int_equal(uodp_ctx_create(NULL, bad_flags[i], &ctx),
				 -EINVAL);
		assert_ptr_equal(ctx, sentinel);
		assert_int_equal(uodp_ctx_create(&fenced, bad_flags[i], &ctx),
				 -EINVAL);
		assert_ptr_equal(ctx, sentinel);
	}
	/* STRICT needs the monitor (not MANUAL) and both fence callbacks. */
	ctx = sentinel;
	assert_int_equal(uodp_ctx_create(&fenced,
					 UODP_CTX_STRICT | UODP_CTX_MANUAL,
					 &ctx),
			 -EINVAL);
	assert_int_equal(uodp_ctx_create(NULL, UODP_CTX_STRICT, &ctx), -EINVAL);
	assert_int_equal(uodp_ctx_create(&half, UODP_CTX_STRICT, &ctx),
			 -EINVAL);
	assert_int_equal(uodp_ctx_create(&half2, UODP_CTX_STRICT, &ctx),
			 -EINVAL);
	assert_ptr_equal(ctx, sentinel);

	/* The good combinations. */
	assert_int_equal(uodp_ctx_create(&fenced, UODP_CTX_STRICT, &ctx), 0);
	assert_ptr_not_equal(ctx, sentinel);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_int_equal(uodp_ctx_create(NULL, 0, &ctx), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_int_equal(uodp_ctx_create(NULL, UODP_CTX_MANUAL, &ctx), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
}

/* @ops is copied: changing the caller's struct afterwards changes nothing. */
static void test_ctx_ops_copied(void **state)
{
	struct uodp_ctx_ops ops = { .invalidate_range = on_inval };
	struct uodp_umem *umem;
	struct uodp_ctx *ctx;
	int other = 0;

	(void)state;
	page = (uint64_t)sysconf(_SC_PAGESIZE);
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx), 0);
	ops.invalidate_range = on_inval_other;
	ops.priv = &other;
	assert_int_equal(
		uodp_umem_get(ctx, 0x100000, page, UODP_ACCESS_READ, &umem), 0);
	cb_calls = 0;
	assert_int_equal(uodp_invalidate_range(ctx, 0, VA_LIMIT), 0);
	assert_int_equal(cb_calls, 1);
	assert_int_equal(other, 0);
	assert_int_equal(uodp_umem_release(umem), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
}

static void test_ctx_destroy_bad(void **state)
{
	struct fixture *f = *state;
	struct snaps s;

	snap_both(f, &s);
	assert_int_equal(uodp_ctx_destroy(NULL), -EINVAL);
	assert_int_equal(uodp_ctx_destroy((struct uodp_ctx *)f->umem), -EINVAL);
	assert_int_equal(uodp_ctx_destroy(&f->zero.c), -EINVAL);
	UNCHANGED(f, &s);
	/* The context still works. */
	assert_int_equal(uodp_umem_map(f->umem, f->base, page, UODP_ACCESS_READ,
				       uodp_umem_read_seq(f->umem)),
			 1);
}

/* ------------------------------------------------------------------------ */
/* Regions                                                                   */

/* Calls that must fail and leave *out alone; afterwards an invalidation of
 * the whole address space reaches the two fixture regions only. */
static void test_umem_get_bad(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *const sentinel = (struct uodp_umem *)(uintptr_t)8;
	struct uodp_umem *u = sentinel;
	uint64_t b = f->base;
	struct snaps s;
	struct {
		uint64_t addr, len;
		unsigned access;
	} bad[] = {
		{ b, 0, UODP_ACCESS_ALL },		/* len 0 */
		{ b, page, 0 },				/* no access */
		{ b, page, 1u << 2 },			/* unknown bit */
		{ b, page, UODP_ACCESS_ALL | 1u << 7 }, /* unknown bit */
		{ b, page, ~0u },			/* all bits */
		{ UINT64_MAX - page + 1, 2 * page,
		  UODP_ACCESS_ALL },				/* wraps */
		{ b, UINT64_MAX, UODP_ACCESS_ALL },		/* wraps */
		{ UINT64_MAX, 1, UODP_ACCESS_ALL },		/* wraps to 0 */
		{ VA_LIMIT, page, UODP_ACCESS_ALL },		/* beyond */
		{ VA_LIMIT - page, page + 1, UODP_ACCESS_ALL }, /* crosses */
		{ VA_LIMIT - 1, 2, UODP_ACCESS_ALL },		/* crosses */
		{ 0, VA_LIMIT + 1, UODP_ACCESS_ALL },		/* too long */
		{ (uint64_t)1 << 63, page, UODP_ACCESS_READ }, /* kernel half */
	};

	snap_both(f, &s);
	assert_int_equal(uodp_umem_get(NULL, b, page, UODP_ACCESS_ALL, &u),
			 -EINVAL);
	assert_int_equal(uodp_umem_get(f->ctx, b, page, UODP_ACCESS_ALL, NULL),
			 -EINVAL);
	assert_int_equal(uodp_umem_get((struct uodp_ctx *)f->umem, b, page,
				       UODP_ACCESS_ALL, &u),
			 -EINVAL);
	assert_int_equal(uodp_umem_get(&f->zero.c, b, page, UODP_ACCESS_ALL,
				       &u),
			 -EINVAL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = uodp_umem_get(f->ctx, bad[i].addr, bad[i].len,
				      bad[i].access, &u);

		if (r != -EINVAL)
			fail_msg("bad[%zu] {%#lx, %#lx, %#x}: %d, want -EINVAL",
				 i, (unsigned long)bad[i].addr,
				 (unsigned long)bad[i].len, bad[i].access, r);
		assert_ptr_equal(u, sentinel);
	}
	UNCHANGED(f, &s);

	/* No region was added behind our back. */
	assert_int_equal(uodp_invalidate_range(f->ctx, 0, VA_LIMIT), 0);
	assert_int_equal(cb_calls, 2);
}

/* The documented rounding and the accessors of good registrations. */
static void test_umem_get_rounding(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *u;
	uint64_t b = f->base;
	struct {
		uint64_t addr, len, start, end;
	} c[] = {
		{ b + 100, 1, b, b + page },
		{ b + page - 1, 2, b, b + 2 * page },
		{ b, page + 1, b, b + 2 * page },
		{ b + 1, page, b, b + 2 * page },
		{ b, page, b, b + page },
		{ VA_LIMIT - page, page, VA_LIMIT - page, VA_LIMIT },
		{ VA_LIMIT - 1, 1, VA_LIMIT - page, VA_LIMIT },
		{ 0, 1, 0, page },
		/* 64 TiB of nothing: O(1), nothing needs to be mapped. */
		{ (uint64_t)1 << 46, (uint64_t)1 << 46, (uint64_t)1 << 46,
		  (uint64_t)1 << 47 },
	};
	int marker;

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		struct uodp_umem_stats st;

		u = NULL;
		assert_int_equal(uodp_umem_get(f->ctx, c[i].addr, c[i].len,
					       UODP_ACCESS_WRITE, &u),
				 0);
		assert_non_null(u);
		assert_int_equal(uodp_umem_start(u), c[i].start);
		assert_int_equal(uodp_umem_end(u), c[i].end);
		assert_int_equal(uodp_umem_access(u), UODP_ACCESS_WRITE);
		assert_ptr_equal(uodp_umem_ctx(u), f->ctx);
		assert_null(uodp_umem_priv(u));
		uodp_umem_set_priv(u, &marker);
		assert_ptr_equal(uodp_umem_priv(u), &marker);
		uodp_umem_set_priv(u, NULL);
		assert_null(uodp_umem_priv(u));
		assert_int_equal(uodp_umem_stats(u, &st), 0);
		assert_int_equal(st.table_bytes, 0);
		assert_int_equal(st.mapped_now, 0);
		assert_int_equal(st.map_calls, 0);
		assert_int_equal(uodp_umem_entry(u, c[i].start), 0);
		assert_false(uodp_umem_retry(u, uodp_umem_read_seq(u)));
		assert_int_equal(uodp_umem_wait(u), 0);
		/* The whole rounded range belongs to the region. */
		if (i < 5) { /* inside the fixture's buffer */
			uint64_t npg = (c[i].end - c[i].start) / page;

			assert_int_equal(uodp_umem_map(u, c[i].start,
						       c[i].end - c[i].start,
						       UODP_ACCESS_WRITE, 0),
					 (int64_t)npg);
			assert_int_equal(uodp_umem_entry(u, c[i].end - 1),
					 (c[i].end - page) | UODP_ACCESS_WRITE);
			assert_int_equal(uodp_umem_map(u, c[i].start - 1, 1,
						       UODP_ACCESS_WRITE, 0),
					 -EFAULT);
			assert_int_equal(uodp_umem_map(u, c[i].end, 1,
						       UODP_ACCESS_WRITE, 0),
					 -EFAULT);
		}
		assert_int_equal(uodp_umem_release(u), 0);
	}
}

static void test_umem_release_bad(void **state)
{
	struct fixture *f = *state;
	struct snaps s;

	snap_both(f, &s);
	assert_int_equal(uodp_umem_release(NULL), -EINVAL);
	assert_int_equal(uodp_umem_release((struct uodp_umem *)f->ctx),
			 -EINVAL);
	assert_int_equal(uodp_umem_release(&f->zero.u), -EINVAL);
	UNCHANGED(f, &s);
}

/* Accessors and the small calls with NULL or a foreign pointer. */
static void test_accessors_bad(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *fu = (struct uodp_umem *)f->ctx;
	struct uodp_umem *zu = &f->zero.u;
	struct uodp_umem *bad[] = { NULL, fu, zu };
	struct uodp_umem_stats st;
	uint64_t va[4];
	struct snaps s;
	int marker;

	snap_both(f, &s);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct uodp_umem *u = bad[i];

		assert_int_equal(uodp_umem_start(u), 0);
		assert_int_equal(uodp_umem_end(u), 0);
		assert_int_equal(uodp_umem_access(u), 0);
		assert_null(uodp_umem_ctx(u));
		uodp_umem_set_priv(u, &marker);
		assert_null(uodp_umem_priv(u));
		assert_int_equal(uodp_umem_read_seq(u), 0);
		uodp_umem_lock(u);
		uodp_umem_unlock(u);
		assert_true(uodp_umem_retry(u, 0));
		assert_int_equal(uodp_umem_wait(u), -EINVAL);
		assert_int_equal(uodp_umem_entry(u, f->base), 0);
		assert_int_equal(uodp_umem_pfn(u, f->base), 0);
		assert_int_equal(uodp_umem_stats(u, &st), -EINVAL);
		assert_int_equal(uodp_umem_dirty_take(u, va, 4), -EINVAL);
		assert_int_equal(uodp_umem_unmap(u, f->base, f->base + page),
				 -EINVAL);
	}
	assert_int_equal(uodp_umem_stats(f->umem, NULL), -EINVAL);
	UNCHANGED(f, &s);
}

static void test_entry_outside(void **state)
{
	struct fixture *f = *state;
	uint64_t e = f->base + NPAGES * page;

	/* Inside: page VA | access bits, whatever offset in the page. */
	assert_int_equal(uodp_umem_entry(f->umem, f->base + 1),
			 f->base | UODP_ACCESS_ALL);
	assert_int_equal(uodp_umem_entry(f->umem,
					 f->base + 3 * page + page - 1),
			 (f->base + 3 * page) | UODP_ACCESS_ALL);
	assert_int_equal(uodp_umem_entry(f->ro, f->base + page + 17),
			 (f->base + page) | UODP_ACCESS_READ);
	/* Unmapped inside, and outside the region. */
	assert_int_equal(uodp_umem_entry(f->umem, f->base + 4 * page), 0);
	assert_int_equal(uodp_umem_entry(f->umem, f->base - 1), 0);
	assert_int_equal(uodp_umem_entry(f->umem, e), 0);
	assert_int_equal(uodp_umem_entry(f->umem, UINT64_MAX), 0);
	assert_int_equal(uodp_umem_entry(f->umem, 0), 0);
	assert_int_equal(uodp_umem_pfn(f->umem, f->base - 1), 0);
	assert_int_equal(uodp_umem_pfn(f->umem, e), 0);
	assert_int_equal(uodp_umem_pfn(f->umem, f->base + 4 * page), 0);
}

static int count_fn(uint64_t va, uint64_t entry, void *arg)
{
	(void)va;
	(void)entry;
	++*(int *)arg;
	return 0;
}

static void test_for_each_bad(void **state)
{
	struct fixture *f = *state;
	uint64_t e = f->base + NPAGES * page;
	struct snaps s;
	int n = 0;

	snap_both(f, &s);
	uodp_umem_lock(f->umem);
	assert_int_equal(uodp_umem_for_each_entry(NULL, f->base, e, count_fn,
						  &n),
			 -EINVAL);
	assert_int_equal(uodp_umem_for_each_entry((struct uodp_umem *)f->ctx,
						  f->base, e, count_fn, &n),
			 -EINVAL);
	assert_int_equal(uodp_umem_for_each_entry(f->umem, f->base, e, NULL,
						  &n),
			 -EINVAL);
	/* Empty or outside ranges visit nothing. */
	assert_int_equal(uodp_umem_for_each_entry(f->umem, e, UINT64_MAX,
						  count_fn, &n),
			 0);
	assert_int_equal(
		uodp_umem_for_each_entry(f->umem, 0, f->base, count_fn, &n), 0);
	assert_int_equal(uodp_umem_for_each_entry(f->umem, f->base, f->base,
						  count_fn, &n),
			 0);
	assert_int_equal(
		uodp_umem_for_each_entry(f->umem, e, f->base, count_fn, &n), 0);
	/* Clamped to the region. */
	assert_int_equal(uodp_umem_for_each_entry(f->umem, 0, UINT64_MAX,
						  count_fn, &n),
			 4);
	uodp_umem_unlock(f->umem);
	assert_int_equal(n, 4);
	UNCHANGED(f, &s);
}

static void test_map_bad(void **state)
{
	struct fixture *f = *state;
	uint64_t b = f->base, e = f->base + NPAGES * page;
	uint64_t seq = uodp_umem_read_seq(f->umem);
	struct snaps s;
	struct {
		struct uodp_umem *u;
		uint64_t va, bcnt;
		unsigned access;
		int err;
	} bad[] = {
		{ NULL, b, page, UODP_ACCESS_READ, -EINVAL },
		{ (struct uodp_umem *)f->ctx, b, page, UODP_ACCESS_READ,
		  -EINVAL },
		{ &f->zero.u, b, page, UODP_ACCESS_READ, -EINVAL },
		{ f->umem, b, 0, UODP_ACCESS_READ, -EINVAL },
		{ f->umem, b, page, 0, -EINVAL },
		{ f->umem, b, page, 1u << 2, -EINVAL },
		{ f->umem, b, page, UODP_ACCESS_READ | 1u << 3, -EINVAL },
		{ f->umem, b, page, ~0u, -EINVAL },
		/* More access than registered (ro is READ only). */
		{ f->ro, b, page, UODP_ACCESS_WRITE, -EINVAL },
		{ f->ro, b, page, UODP_ACCESS_ALL, -EINVAL },
		/* Outside the region. */
		{ f->umem, b - page, page, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, b - 1, 2, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, e - page, page + 1, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, e, 1, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, e + page, page, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, 0, page, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, b, UINT64_MAX, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, b + page, UINT64_MAX - page, UODP_ACCESS_READ,
		  -EFAULT },
		{ f->umem, UINT64_MAX, 1, UODP_ACCESS_READ, -EFAULT },
		{ f->umem, UINT64_MAX, UINT64_MAX, UODP_ACCESS_READ, -EFAULT },
	};

	snap_both(f, &s);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t r = uodp_umem_map(bad[i].u, bad[i].va, bad[i].bcnt,
					  bad[i].access, seq);

		if (r != bad[i].err)
			fail_msg("bad[%zu]: %ld, want %d", i, (long)r,
				 bad[i].err);
	}
	UNCHANGED(f, &s);

	/* The last byte of the region, and an unaligned range inside it. */
	assert_int_equal(
		uodp_umem_map(f->umem, e - 1, 1, UODP_ACCESS_READ, seq), 1);
	assert_int_equal(uodp_umem_entry(f->umem, e - 1),
			 (e - page) | UODP_ACCESS_READ);
	assert_int_equal(uodp_umem_map(f->umem, b + page - 1, 2,
				       UODP_ACCESS_READ, seq),
			 2);
	assert_int_equal(uodp_umem_map(f->umem, b + 4 * page + 1, page,
				       UODP_ACCESS_READ, seq),
			 2);
	assert_int_equal(uodp_umem_entry(f->umem, b + 5 * page),
			 (b + 5 * page) | UODP_ACCESS_READ);
	assert_int_equal(uodp_umem_entry(f->umem, b + 6 * page), 0);
}

/* A write-only region: READ is more access than registered. */
static void test_map_write_only_region(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *u;
	struct uodp_umem_stats st;

	assert_int_equal(
		uodp_umem_get(f->ctx, f->base, page, UODP_ACCESS_WRITE, &u), 0);
	assert_int_equal(uodp_umem_map(u, f->base, page, UODP_ACCESS_READ,
				       uodp_umem_read_seq(u)),
			 -EINVAL);
	assert_int_equal(uodp_umem_map(u, f->base, page, UODP_ACCESS_ALL,
				       uodp_umem_read_seq(u)),
			 -EINVAL);
	assert_int_equal(uodp_umem_stats(u, &st), 0);
	assert_int_equal(st.map_calls, 0);
	assert_int_equal(uodp_umem_map(u, f->base, page, UODP_ACCESS_WRITE,
				       uodp_umem_read_seq(u)),
			 1);
	assert_int_equal(uodp_umem_entry(u, f->base),
			 f->base | UODP_ACCESS_WRITE);
	assert_int_equal(uodp_umem_release(u), 0);
}

static void test_unmap_bad(void **state)
{
	struct fixture *f = *state;
	uint64_t b = f->base, e = b + NPAGES * page;
	uint64_t va[NPAGES];
	struct snaps s;

	snap_both(f, &s);
	assert_int_equal(uodp_umem_unmap(f->umem, b + 1, b), -EINVAL);
	assert_int_equal(uodp_umem_unmap(f->umem, UINT64_MAX, 0), -EINVAL);
	assert_int_equal(uodp_umem_unmap(f->umem, e, b), -EINVAL);
	/* Empty ranges and ranges outside the region drop nothing. */
	assert_int_equal(uodp_umem_unmap(f->umem, b, b), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, b + 5, b + 5), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, e, UINT64_MAX), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, 0, b), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, b + 4 * page, e), 0);
	UNCHANGED(f, &s);
	assert_int_equal(uodp_umem_dirty_take(f->umem, va, NPAGES), 0);
}

static void test_dirty_take_bad(void **state)
{
	struct fixture *f = *state;
	uint64_t va[NPAGES];
	struct snaps s;

	/* Make a dirty set of two pages. */
	assert_int_equal(uodp_umem_unmap(f->umem, f->base, f->base + 2 * page),
			 2);
	snap_both(f, &s);
	assert_int_equal(uodp_umem_dirty_take(f->umem, NULL, 1), -EINVAL);
	assert_int_equal(uodp_umem_dirty_take(f->umem, NULL, SIZE_MAX),
			 -EINVAL);
	/* max 0 takes nothing, with or without a buffer. */
	assert_int_equal(uodp_umem_dirty_take(f->umem, NULL, 0), 0);
	assert_int_equal(uodp_umem_dirty_take(f->umem, va, 0), 0);
	UNCHANGED(f, &s);
	assert_int_equal(uodp_umem_dirty_take(f->umem, va, NPAGES), 2);
	assert_int_equal(va[0], f->base);
	assert_int_equal(va[1], f->base + page);
}

static void test_invalidate_bad(void **state)
{
	struct fixture *f = *state;
	struct uodp_ctx *fc = (struct uodp_ctx *)f->umem;
	uint64_t b = f->base, e = b + NPAGES * page;
	int (*fns[])(struct uodp_ctx *, uint64_t,
		     uint64_t) = { uodp_invalidate_range_start,
				   uodp_invalidate_range_end,
				   uodp_invalidate_range };
	struct snaps s;

	snap_both(f, &s);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(fns[i](NULL, b, e), -EINVAL);
		assert_int_equal(fns[i](fc, b, e), -EINVAL);
		assert_int_equal(fns[i](&f->zero.c, b, e), -EINVAL);
		assert_int_equal(fns[i](f->ctx, b, b), -EINVAL);
		assert_int_equal(fns[i](f->ctx, e, b), -EINVAL);
		assert_int_equal(fns[i](f->ctx, b + 1, b + 1), -EINVAL);
		assert_int_equal(fns[i](f->ctx, UINT64_MAX, 0), -EINVAL);
		assert_int_equal(fns[i](f->ctx, UINT64_MAX, UINT64_MAX),
				 -EINVAL);
	}
	/* end() with no start() pending. */
	assert_int_equal(uodp_invalidate_range_end(f->ctx, b, e), -EINVAL);
	UNCHANGED(f, &s);

	/* A pair, then one end() too many. */
	assert_int_equal(uodp_invalidate_range_start(f->ctx, b, e), 0);
	assert_int_equal(uodp_invalidate_range_end(f->ctx, b, e), 0);
	assert_int_equal(cb_calls, 2);
	snap_both(f, &s);
	assert_int_equal(s.a.seq, 1);
	assert_int_equal(uodp_invalidate_range_end(f->ctx, b, e), -EINVAL);
	UNCHANGED(f, &s);
}

/* Invalidation ranges are rounded out to pages and clamped to each region:
 * the driver sees page-aligned bounds inside the region. */
static void test_invalidate_rounding(void **state)
{
	struct fixture *f = *state;
	uint64_t b = f->base;
	struct uodp_umem_stats st;

	assert_int_equal(
		uodp_invalidate_range(f->ctx, b + page + 1, b + page + 2), 0);
	assert_int_equal(cb_calls, 2);
	assert_int_equal(cb_start, b + page);
	assert_int_equal(cb_end, b + 2 * page);
	assert_int_equal(uodp_umem_entry(f->umem, b), b | UODP_ACCESS_ALL);
	assert_int_equal(uodp_umem_entry(f->umem, b + page), 0);
	assert_int_equal(uodp_umem_entry(f->umem, b + 2 * page),
			 (b + 2 * page) | UODP_ACCESS_ALL);
	assert_int_equal(uodp_umem_entry(f->ro, b + page), 0);
	assert_int_equal(uodp_umem_entry(f->ro, b), b | UODP_ACCESS_READ);
	assert_int_equal(uodp_umem_stats(f->umem, &st), 0);
	assert_int_equal(st.invalidations, 1);
	assert_int_equal(st.pages_invalidated, 1);
	assert_int_equal(uodp_umem_read_seq(f->umem), 1);
	assert_int_equal(uodp_umem_read_seq(f->ro), 1);

	/* A range over the whole address space (and beyond its end) is
	 * clamped to each region. */
	cb_calls = 0;
	assert_int_equal(uodp_invalidate_range(f->ctx, 0, UINT64_MAX), 0);
	assert_int_equal(cb_calls, 2);
	assert_int_equal(cb_start, b);
	assert_int_equal(cb_end, b + NPAGES * page);
	assert_int_equal(uodp_umem_entry(f->umem, b), 0);

	/* Outside every region: no callback, no sequence change. */
	cb_calls = 0;
	assert_int_equal(uodp_invalidate_range(f->ctx, b + NPAGES * page,
					       b + NPAGES * page + 1),
			 0);
	assert_int_equal(uodp_invalidate_range(f->ctx, b - page, b), 0);
	assert_int_equal(cb_calls, 0);
	assert_int_equal(uodp_umem_read_seq(f->umem), 2);
}

/* wait and retry on a healthy region. */
static void test_wait_retry(void **state)
{
	struct fixture *f = *state;
	uint64_t seq = uodp_umem_read_seq(f->umem);

	assert_int_equal(uodp_umem_wait(f->umem), 0);
	uodp_umem_lock(f->umem);
	assert_false(uodp_umem_retry(f->umem, seq));
	assert_true(uodp_umem_retry(f->umem, seq + 1));
	assert_true(uodp_umem_retry(f->umem, seq - 1));
	uodp_umem_unlock(f->umem);

	/* Map with a stale sequence: -EAGAIN, nothing installed. */
	assert_int_equal(uodp_invalidate_range(f->ctx, f->base, f->base + page),
			 0);
	assert_true(uodp_umem_retry(f->umem, seq));
	assert_int_equal(uodp_umem_map(f->umem, f->base, page, UODP_ACCESS_ALL,
				       seq),
			 -EAGAIN);
	assert_int_equal(uodp_umem_entry(f->umem, f->base), 0);
	seq = uodp_umem_read_seq(f->umem);
	assert_int_equal(
		uodp_umem_map(f->umem, f->base, page, UODP_ACCESS_ALL, seq), 1);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_version),
		cmocka_unit_test(test_strerror),
		cmocka_unit_test(test_ctx_create_bad),
		cmocka_unit_test(test_ctx_ops_copied),
		T(test_ctx_destroy_bad),
		T(test_umem_get_bad),
		T(test_umem_get_rounding),
		T(test_umem_release_bad),
		T(test_accessors_bad),
		T(test_entry_outside),
		T(test_for_each_bad),
		T(test_map_bad),
		T(test_map_write_only_region),
		T(test_unmap_bad),
		T(test_dirty_take_bad),
		T(test_invalidate_bad),
		T(test_invalidate_rounding),
		T(test_wait_retry),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

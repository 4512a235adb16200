/* SPDX-License-Identifier: MIT */
/*
 * test_engine_api.c - bad input for every function of uodp.h.
 *
 * Each case makes one call the header says must fail, checks the exact
 * negative errno it documents, and then checks that nothing changed: a
 * snapshot of the fixture (both regions' counters and entries, their
 * accessors, the callback count, the context's bytes) is taken before and
 * compared after. Foreign pointers (a context passed as a region and the
 * other way round, a zeroed block) are used where the header promises a
 * handle check; released handles are never passed (undefined, see
 * test_engine_misuse.c for the debug build's death tests). Also: page
 * rounding of every range argument, the accessors, the ABI helpers
 * (comp_mask, reserved words, stats size, uodp_check_version), the
 * strings, and -ECHILD in a forked child.
 */
#include <limits.h>

#include "helpers.h"

#define NPAGES 8
#define VA_LIMIT ((uintptr_t)1 << 56) /* the documented user space bound */

static size_t page;

static void fence(struct uodp_ctx *ctx, void *p)
{
	(void)ctx;
	(void)p;
}

static void other_cb(struct uodp_umem *umem, const struct uodp_range *r,
		     void *p)
{
	(void)umem;
	(void)r;
	*(int *)p += 1000;
}

struct fixture {
	struct uodp_ctx *ctx;
	struct uodp_umem *umem; /* the whole buffer, READ | WRITE */
	struct uodp_umem *ro;	/* the same buffer, READ only */
	char *buf;
	bool buf_gone; /* unmapped by the test itself */
	/* A block as large as either object, all zero: no magic. */
	union {
		struct uodp_ctx c;
		struct uodp_umem u;
		char pad[sizeof(struct uodp_umem) +
			 UMEM_MAX_STRIPES * sizeof(struct stripe)];
	} zero;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	page = t_page_size();
	t_rec_reset();
	f->buf = t_buf(NPAGES);
	f->ctx = t_ctx(UODP_CTX_MANUAL);
	f->umem = t_get(f->ctx, f->buf, NPAGES * page, UODP_ACCESS_ALL);
	f->ro = t_get(f->ctx, f->buf, NPAGES * page, UODP_ACCESS_READ);
	/* Pages 0-3 mapped writable in umem, 0-1 readable in ro. */
	if (t_fault(f->umem, f->buf, 4 * page, UODP_ACCESS_ALL) != 4 ||
	    t_fault(f->ro, f->buf, 2 * page, UODP_ACCESS_READ) != 2)
		return -1;
	t_rec_reset();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(uodp_umem_release(f->umem), 0);
	assert_int_equal(uodp_umem_release(f->ro), 0);
	assert_int_equal(uodp_ctx_destroy(f->ctx), 0);
	if (!f->buf_gone)
		t_unmap(f->buf, NPAGES);
	free(f);
	return 0;
}

/* Everything observable about one region, and the context's bytes. */
struct snap {
	struct uodp_umem_stats st;
	void *start, *end;
	uint64_t entry[NPAGES];
	unsigned access;
	void *priv;
	struct uodp_ctx *ctx;
	unsigned cb_calls;
	bool sync;
};

struct snaps {
	struct snap a, b;
	unsigned char ctx_bytes[sizeof(struct uodp_ctx)];
	unsigned char zero_bytes[sizeof(((struct fixture *)0)->zero)];
};

static void take_snap(struct fixture *f, struct uodp_umem *u, struct snap *s)
{
	memset(s, 0, sizeof(*s));
	s->st = t_stats(u);
	s->start = uodp_umem_start(u);
	s->end = uodp_umem_end(u);
	assert_int_equal(uodp_umem_lock(u), 0);
	assert_int_equal(uodp_umem_entries_locked(u, f->buf, NPAGES, s->entry),
			 0);
	assert_int_equal(uodp_umem_unlock(u), 0);
	s->access = uodp_umem_access(u);
	s->priv = uodp_umem_priv(u);
	s->ctx = uodp_umem_ctx(u);
	s->cb_calls = t_rec_count();
	s->sync = uodp_ctx_sync(f->ctx);
}

static void snap_all(struct fixture *f, struct snaps *s)
{
	memset(s, 0, sizeof(*s));
	take_snap(f, f->umem, &s->a);
	take_snap(f, f->ro, &s->b);
	memcpy(s->ctx_bytes, f->ctx, sizeof(s->ctx_bytes));
	memcpy(s->zero_bytes, &f->zero, sizeof(s->zero_bytes));
}

static void assert_unchanged(struct fixture *f, const struct snaps *before,
			     int line)
{
	struct snaps now;

	snap_all(f, &now);
	if (memcmp(&before->a, &now.a, sizeof(now.a)) ||
	    memcmp(&before->b, &now.b, sizeof(now.b)))
		fail_msg("region state changed by a failing call (line %d)",
			 line);
	if (memcmp(before->ctx_bytes, now.ctx_bytes, sizeof(now.ctx_bytes)))
		fail_msg("context bytes changed by a failing call (line %d)",
			 line);
	if (memcmp(before->zero_bytes, now.zero_bytes, sizeof(now.zero_bytes)))
		fail_msg("a foreign block was written (line %d)", line);
}

#define UNCHANGED(f, s) assert_unchanged((f), (s), __LINE__)

/* ------------------------------------------------------------------------ */
/* Version, strings                                                          */

static void test_version(void **state)
{
	char want[32];

	(void)state;
	snprintf(want, sizeof(want), "%d.%d.%d", UODP_VERSION_MAJOR,
		 UODP_VERSION_MINOR, UODP_VERSION_PATCH);
	assert_string_equal(uodp_version(), want);
	assert_ptr_equal(uodp_version(), uodp_version());
	assert_int_equal(
		uodp_check_version(UODP_VERSION_MAJOR, UODP_VERSION_MINOR), 0);
	assert_int_equal(uodp_check_version(UODP_VERSION_MAJOR, 0), 0);
	assert_int_equal(uodp_check_version(UODP_VERSION_MAJOR,
					    UODP_VERSION_MINOR + 1),
			 -EPROTO);
	assert_int_equal(uodp_check_version(UODP_VERSION_MAJOR + 1, 0),
			 -EPROTO);
	assert_int_equal(uodp_check_version(UINT_MAX, UINT_MAX), -EPROTO);
	if (UODP_VERSION_MAJOR > 0)
		assert_int_equal(uodp_check_version(UODP_VERSION_MAJOR - 1, 0),
				 -EPROTO);
}

static void test_strerror(void **state)
{
	/* Every errno the header uses, one meaning each. */
	static const int codes[] = { EINVAL, ERANGE, EFAULT,	 EACCES, EPERM,
				     EAGAIN, EBUSY,  EDEADLK,	 ENODEV, ECHILD,
				     ENOMEM, ENOSYS, EOPNOTSUPP, EPROTO, EBADF };
	static const int odd[] = { 0,	     1,	      -1,	  4095,
				   -4095,    12345,   -12345,	  INT_MAX,
				   -INT_MAX, INT_MIN, INT_MIN + 1 };

	(void)state;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		const char *s = uodp_strerror(-codes[i]);

		assert_non_null(s);
		assert_true(strlen(s) > 0);
		assert_string_equal(uodp_strerror(codes[i]), s);
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
	const struct uodp_ctx_ops good = { .invalidate = t_record };
	struct uodp_ctx_ops fenced = { .invalidate = t_record,
				       .fence = fence,
				       .unfence = fence };
	struct uodp_ctx_ops ops;
	struct uodp_ctx *const sentinel = (struct uodp_ctx *)(uintptr_t)0x1234;
	struct uodp_ctx *ctx = sentinel;
	static const unsigned bad_flags[] = { 1u << 5, 1u << 31, ~0u,
					      UODP_CTX_MANUAL | 1u << 6 };

	(void)state;
	/* NULL ops, NULL out. */
	assert_int_equal(uodp_ctx_create(NULL, UODP_CTX_MANUAL, &ctx), -EINVAL);
	assert_int_equal(uodp_ctx_create(NULL, UODP_CTX_PIN, &ctx), -EINVAL);
	assert_int_equal(uodp_ctx_create(&good, UODP_CTX_MANUAL, NULL),
			 -EINVAL);
	/* Unknown flags. */
	for (size_t i = 0; i < sizeof(bad_flags) / sizeof(bad_flags[0]); i++)
		assert_int_equal(uodp_ctx_create(&good, bad_flags[i], &ctx),
				 -EINVAL);
	/* comp_mask: no bit is defined in 0.2. */
	for (unsigned b = 0; b < 64; b += 7) {
		ops = good;
		ops.comp_mask = (uint64_t)1 << b;
		assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx),
				 -EINVAL);
	}
	/* Each reserved word. */
	for (unsigned i = 0; i < 4; i++) {
		ops = good;
		ops.reserved[i] = (void *)1;
		assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx),
				 -EINVAL);
	}
	/* No invalidate without PIN: pinning is never chosen silently. */
	ops = (struct uodp_ctx_ops){ .priv = (void *)1 };
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx), -EINVAL);
	assert_int_equal(uodp_ctx_create(&ops, 0, &ctx), -EINVAL);
	/* STRICT: not with MANUAL, and both fence callbacks. */
	assert_int_equal(uodp_ctx_create(&fenced,
					 UODP_CTX_STRICT | UODP_CTX_MANUAL,
					 &ctx),
			 -EINVAL);
	ops = fenced;
	ops.fence = NULL;
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_STRICT, &ctx), -EINVAL);
	ops = fenced;
	ops.unfence = NULL;
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_STRICT, &ctx), -EINVAL);
	assert_int_equal(uodp_ctx_create(&good, UODP_CTX_STRICT, &ctx),
			 -EINVAL);
	assert_ptr_equal(ctx, sentinel);

	/* The good combinations (a monitor context subscribes only at its
	 * first region, so these work without userfaultfd). */
	static const unsigned ok[] = {
		UODP_CTX_MANUAL,
		0,
		UODP_CTX_MANUAL | UODP_CTX_NO_FRAMES,
		UODP_CTX_MANUAL | UODP_CTX_PIN,
		UODP_CTX_DEFERRED,
		UODP_CTX_MANUAL | UODP_CTX_PIN | UODP_CTX_NO_FRAMES |
			UODP_CTX_DEFERRED,
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		ctx = sentinel;
		assert_int_equal(uodp_ctx_create(&good, ok[i], &ctx), 0);
		assert_ptr_not_equal(ctx, sentinel);
		assert_true(uodp_ctx_sync(ctx));
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
	}
	assert_int_equal(uodp_ctx_create(&fenced, UODP_CTX_STRICT, &ctx), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	/* PIN makes invalidate optional. */
	ops = (struct uodp_ctx_ops){ 0 };
	assert_int_equal(
		uodp_ctx_create(&ops, UODP_CTX_PIN | UODP_CTX_MANUAL, &ctx), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_false(uodp_ctx_sync(NULL));
}

/* @ops is copied: changing the caller's struct afterwards changes nothing. */
static void test_ctx_ops_copied(void **state)
{
	struct uodp_ctx_ops ops = { .invalidate = t_record };
	struct uodp_umem *umem;
	struct uodp_ctx *ctx;
	int other = 0;

	(void)state;
	t_rec_reset();
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx), 0);
	ops.invalidate = other_cb;
	ops.priv = &other;
	umem = t_get(ctx, (void *)0x100000, page, UODP_ACCESS_READ);
	assert_int_equal(uodp_invalidate_range(ctx, NULL, VA_LIMIT,
					       UODP_EVENT_MANUAL),
			 0);
	assert_int_equal(t_rec_count(), 1);
	assert_int_equal(other, 0);
	assert_int_equal(uodp_umem_release(umem), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
}

static void test_ctx_destroy_bad(void **state)
{
	struct fixture *f = *state;
	struct snaps s;

	snap_all(f, &s);
	assert_int_equal(uodp_ctx_destroy(NULL), -EINVAL);
	assert_int_equal(uodp_ctx_destroy((struct uodp_ctx *)f->umem), -EINVAL);
	assert_int_equal(uodp_ctx_destroy(&f->zero.c), -EINVAL);
	UNCHANGED(f, &s);
	assert_int_equal(t_fault(f->umem, f->buf, page, UODP_ACCESS_READ), 1);
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
	uintptr_t b = (uintptr_t)f->buf;
	struct snaps s;
	struct {
		uintptr_t addr;
		size_t len;
		unsigned access;
		int err;
	} bad[] = {
		{ b, 0, UODP_ACCESS_ALL, -EINVAL },	      /* len 0 */
		{ b, page, 0, -EINVAL },		      /* no access */
		{ b, page, 1u << 4, -EINVAL },		      /* unknown */
		{ b, page, UODP_ACCESS_LAZY_WATCH, -EINVAL }, /* no right */
		{ b, page, UODP_ACCESS_LAZY_WATCH | UODP_ACCESS_WATCH,
		  -EINVAL },
		{ b, page, UODP_ACCESS_ALL | 1u << 7, -EINVAL }, /* unknown */
		{ b, page, ~0u, -EINVAL },			 /* all bits */
		{ b, page, UODP_ACCESS_WATCH | UODP_ACCESS_READ, -EINVAL },
		{ b, page, UODP_ACCESS_WATCH | UODP_ACCESS_WRITE, -EINVAL },
		{ UINTPTR_MAX - page + 1, 2 * page, UODP_ACCESS_ALL,
		  -ERANGE },				      /* wraps */
		{ b, SIZE_MAX, UODP_ACCESS_ALL, -ERANGE },    /* wraps */
		{ UINTPTR_MAX, 1, UODP_ACCESS_ALL, -ERANGE }, /* wraps */
		{ VA_LIMIT, page, UODP_ACCESS_ALL, -ERANGE }, /* beyond */
		{ VA_LIMIT - page, page + 1, UODP_ACCESS_ALL,
		  -ERANGE },				       /* crosses */
		{ VA_LIMIT - 1, 2, UODP_ACCESS_ALL, -ERANGE }, /* crosses */
		{ 0, VA_LIMIT + 1, UODP_ACCESS_ALL, -ERANGE }, /* too long */
		{ (uintptr_t)1 << 63, page, UODP_ACCESS_READ,
		  -ERANGE }, /* kernel half */
	};

	snap_all(f, &s);
	assert_int_equal(uodp_umem_get(NULL, f->buf, page, UODP_ACCESS_ALL, &u),
			 -EINVAL);
	assert_int_equal(uodp_umem_get(f->ctx, f->buf, page, UODP_ACCESS_ALL,
				       NULL),
			 -EINVAL);
	assert_int_equal(uodp_umem_get((struct uodp_ctx *)f->umem, f->buf, page,
				       UODP_ACCESS_ALL, &u),
			 -EINVAL);
	assert_int_equal(uodp_umem_get(&f->zero.c, f->buf, page,
				       UODP_ACCESS_ALL, &u),
			 -EINVAL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = uodp_umem_get(f->ctx, (void *)bad[i].addr, bad[i].len,
				      bad[i].access, &u);

		if (r != bad[i].err)
			fail_msg("bad[%zu] {%#lx, %#lx, %#x}: %d, want %d", i,
				 (unsigned long)bad[i].addr,
				 (unsigned long)bad[i].len, bad[i].access, r,
				 bad[i].err);
		assert_ptr_equal(u, sentinel);
	}
	UNCHANGED(f, &s);

	/* No region was added behind our back. */
	assert_int_equal(uodp_invalidate_range(f->ctx, NULL, VA_LIMIT,
					       UODP_EVENT_MANUAL),
			 0);
	assert_int_equal(t_rec_count(), 2);
}

/* The documented rounding and the accessors of good registrations. */
static void test_umem_get_rounding(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *u;
	uintptr_t b = (uintptr_t)f->buf;
	struct {
		uintptr_t addr, len, start, end;
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
		{ (uintptr_t)1 << 46, (uintptr_t)1 << 46, (uintptr_t)1 << 46,
		  (uintptr_t)1 << 47 },
	};
	int marker;

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		struct uodp_umem_stats st;
		int64_t seq;

		u = t_get(f->ctx, (void *)c[i].addr, c[i].len,
			  UODP_ACCESS_WRITE);
		assert_ptr_equal(uodp_umem_start(u), (void *)c[i].start);
		assert_ptr_equal(uodp_umem_end(u), (void *)c[i].end);
		assert_int_equal(uodp_umem_access(u), UODP_ACCESS_WRITE);
		assert_ptr_equal(uodp_umem_ctx(u), f->ctx);
		assert_null(uodp_umem_priv(u));
		uodp_umem_set_priv(u, &marker);
		assert_ptr_equal(uodp_umem_priv(u), &marker);
		uodp_umem_set_priv(u, NULL);
		assert_null(uodp_umem_priv(u));
		st = t_stats(u);
		assert_int_equal(st.table_bytes, 0);
		assert_int_equal(st.mapped_now, 0);
		assert_int_equal(st.map_calls, 0);
		assert_int_equal(t_entry(u, (void *)c[i].start), 0);
		seq = uodp_umem_read_begin(u);
		assert_true(seq >= 0);
		assert_false(t_retry(u, (uint64_t)seq));
		/* The whole rounded range belongs to the region. */
		if (i < 5) { /* inside the fixture's buffer */
			size_t npg = (c[i].end - c[i].start) / page;

			assert_int_equal(t_fault(u, (void *)c[i].start,
						 c[i].end - c[i].start,
						 UODP_ACCESS_WRITE),
					 (int64_t)npg);
			assert_int_equal(t_entry(u, (void *)(c[i].end - 1)),
					 (c[i].end - page) | UODP_ACCESS_WRITE);
			assert_int_equal(t_fault(u, (void *)(c[i].start - 1), 1,
						 UODP_ACCESS_WRITE),
					 -ERANGE);
			assert_int_equal(t_fault(u, (void *)c[i].end, 1,
						 UODP_ACCESS_WRITE),
					 -ERANGE);
		}
		assert_int_equal(uodp_umem_release(u), 0);
	}
}

static void test_umem_release_bad(void **state)
{
	struct fixture *f = *state;
	struct snaps s;

	snap_all(f, &s);
	assert_int_equal(uodp_umem_release(NULL), -EINVAL);
	assert_int_equal(uodp_umem_release((struct uodp_umem *)f->ctx),
			 -EINVAL);
	assert_int_equal(uodp_umem_release(&f->zero.u), -EINVAL);
	/* With its lock held by this thread. */
	assert_int_equal(uodp_umem_lock(f->umem), 0);
	assert_int_equal(uodp_umem_release(f->umem), -EDEADLK);
	assert_int_equal(uodp_umem_unlock(f->umem), 0);
	UNCHANGED(f, &s);
}

static int count_fn(void *va, uint64_t entry, void *arg)
{
	(void)va;
	(void)entry;
	++*(int *)arg;
	return 0;
}

/* Every region function with NULL or a foreign pointer. */
static void test_handles_bad(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *bad[] = { NULL, (struct uodp_umem *)f->ctx,
				    &f->zero.u };
	struct uodp_umem_stats st;
	void *va[4];
	uint64_t e[2];
	struct snaps s;
	int marker, n = 0;

	snap_all(f, &s);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct uodp_umem *u = bad[i];

		assert_null(uodp_umem_start(u));
		assert_null(uodp_umem_end(u));
		assert_int_equal(uodp_umem_access(u), 0);
		assert_null(uodp_umem_ctx(u));
		uodp_umem_set_priv(u, &marker);
		assert_null(uodp_umem_priv(u));
		assert_int_equal(uodp_umem_lock(u), -EINVAL);
		assert_int_equal(uodp_umem_unlock(u), -EINVAL);
		assert_int_equal(uodp_umem_read_begin(u), -EINVAL);
		assert_true(uodp_umem_read_retry(u, 0));
		assert_int_equal(uodp_umem_map(u, f->buf, page,
					       UODP_ACCESS_READ, 0),
				 -EINVAL);
		assert_int_equal(uodp_umem_map_and_lock(u, f->buf, page,
							UODP_ACCESS_READ, 0),
				 -EINVAL);
		assert_int_equal(uodp_umem_entries_locked(u, f->buf, 1, e),
				 -EINVAL);
		assert_int_equal(uodp_umem_pfn(u, f->buf), 0);
		assert_int_equal(uodp_umem_for_each_entry(u, f->buf, page,
							  count_fn, &n),
				 -EINVAL);
		assert_int_equal(uodp_umem_stats(u, &st, sizeof(st)), -EINVAL);
		assert_int_equal(uodp_umem_dirty_take(u, va, 4), -EINVAL);
		assert_int_equal(uodp_umem_unmap(u, f->buf, page), -EINVAL);
	}
	assert_int_equal(uodp_umem_stats(f->umem, NULL, sizeof(st)), -EINVAL);
	assert_int_equal(uodp_umem_stats(f->umem, &st, 0), -EINVAL);
	assert_int_equal(uodp_umem_entries_locked(f->umem, f->buf, 1, NULL),
			 -EINVAL);
	assert_int_equal(n, 0);
	UNCHANGED(f, &s);
}

/* stats copies the first @size bytes, as an older caller's struct. */
static void test_stats_size(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem_stats full = t_stats(f->umem);
	unsigned char buf[sizeof(struct uodp_umem_stats) + 16];

	for (size_t size = 1; size <= sizeof(buf); size++) {
		size_t want = size < sizeof(full) ? size : sizeof(full);

		memset(buf, 0xee, sizeof(buf));
		assert_int_equal(uodp_umem_stats(f->umem,
						 (struct uodp_umem_stats *)buf,
						 size),
				 0);
		assert_memory_equal(buf, &full, want);
		for (size_t i = want; i < sizeof(buf); i++)
			if (buf[i] != 0xee)
				fail_msg("size %zu: byte %zu written", size, i);
	}
}

/* Entries: page address | access; unmapped 0; outside -ERANGE. */
static void test_entries_locked(void **state)
{
	struct fixture *f = *state;
	uint64_t e[NPAGES + 1];
	char *end = t_pg(f->buf, NPAGES);
	int n = 0;

	assert_int_equal(uodp_umem_lock(f->umem), 0);
	assert_int_equal(
		uodp_umem_entries_locked(f->umem, f->buf + 1, NPAGES, e), 0);
	for (int i = 0; i < NPAGES; i++)
		assert_int_equal(e[i], i < 4 ? t_want(t_pg(f->buf, i),
						      UODP_ACCESS_ALL) :
					       0);
	assert_int_equal(uodp_umem_entries_locked(f->umem, end - 1, 1, e), 0);
	assert_int_equal(e[0], 0);
	assert_int_equal(uodp_umem_entries_locked(f->umem, f->buf, 0, e), 0);
	/* Outside, or running past the end. */
	assert_int_equal(uodp_umem_entries_locked(f->umem, f->buf - 1, 1, e),
			 -ERANGE);
	assert_int_equal(uodp_umem_entries_locked(f->umem, end, 1, e), -ERANGE);
	assert_int_equal(uodp_umem_entries_locked(f->umem, f->buf, NPAGES + 1,
						  e),
			 -ERANGE);
	assert_int_equal(uodp_umem_entries_locked(f->umem, t_pg(f->buf, 1),
						  SIZE_MAX, e),
			 -ERANGE);
	assert_int_equal(uodp_umem_entries_locked(f->umem, NULL, 1, e),
			 -ERANGE);
	/* for_each with the lock: clamped to the region. */
	assert_int_equal(uodp_umem_for_each_entry(f->umem, NULL, SIZE_MAX,
						  count_fn, &n),
			 4);
	assert_int_equal(uodp_umem_for_each_entry(f->umem, end, SIZE_MAX,
						  count_fn, &n),
			 0);
	assert_int_equal(
		uodp_umem_for_each_entry(f->umem, f->buf, 0, count_fn, &n), 0);
	assert_int_equal(uodp_umem_for_each_entry(f->umem, f->buf, page, NULL,
						  &n),
			 -EINVAL);
	assert_int_equal(uodp_umem_unlock(f->umem), 0);
	assert_int_equal(n, 4);
	/* Without the lock: -EPERM. */
	assert_int_equal(uodp_umem_entries_locked(f->umem, f->buf, 1, e),
			 -EPERM);
	assert_int_equal(uodp_umem_for_each_entry(f->umem, f->buf, page,
						  count_fn, &n),
			 -EPERM);
	/* pfn: 0 outside and for unmapped pages. */
	assert_int_equal(uodp_umem_pfn(f->umem, f->buf - 1), 0);
	assert_int_equal(uodp_umem_pfn(f->umem, end), 0);
	assert_int_equal(uodp_umem_pfn(f->umem, t_pg(f->buf, 5)), 0);
}

/* map_and_lock and map: each documented errno, state unchanged. */
static void test_map_bad(void **state)
{
	struct fixture *f = *state;
	char *b = f->buf, *e = t_pg(f->buf, NPAGES);
	int64_t seq = uodp_umem_read_begin(f->umem);
	struct uodp_umem *ro = f->ro;
	struct snaps s;
	struct {
		struct uodp_umem *u;
		const void *va;
		size_t len;
		unsigned access;
		int err;
	} bad[] = {
		{ f->umem, b, 0, UODP_ACCESS_READ, -EINVAL },
		{ f->umem, b, page, 0, -EINVAL },
		{ f->umem, b, page, 1u << 2, -EINVAL }, /* WATCH: not here */
		{ f->umem, b, page, UODP_ACCESS_READ | 1u << 3, -EINVAL },
		{ f->umem, b, page, ~0u, -EINVAL },
		/* More access than registered (ro is READ only). */
		{ ro, b, page, UODP_ACCESS_WRITE, -EPERM },
		{ ro, b, page, UODP_ACCESS_ALL, -EPERM },
		/* Outside the region. */
		{ f->umem, b - page, page, UODP_ACCESS_READ, -ERANGE },
		{ f->umem, b - 1, 2, UODP_ACCESS_READ, -ERANGE },
		{ f->umem, e - page, page + 1, UODP_ACCESS_READ, -ERANGE },
		{ f->umem, e, 1, UODP_ACCESS_READ, -ERANGE },
		{ f->umem, e + page, page, UODP_ACCESS_READ, -ERANGE },
		{ f->umem, NULL, page, UODP_ACCESS_READ, -ERANGE },
		{ f->umem, b, SIZE_MAX, UODP_ACCESS_READ, -ERANGE },
		{ f->umem, b + page, SIZE_MAX - page, UODP_ACCESS_READ,
		  -ERANGE },
		{ f->umem, (void *)UINTPTR_MAX, 1, UODP_ACCESS_READ, -ERANGE },
	};

	assert_true(seq >= 0);
	snap_all(f, &s);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t r = uodp_umem_map_and_lock(
			bad[i].u, bad[i].va, bad[i].len, bad[i].access, 0);

		if (r != bad[i].err)
			fail_msg("map_and_lock bad[%zu]: %ld, want %d", i,
				 (long)r, bad[i].err);
		r = uodp_umem_map(bad[i].u, bad[i].va, bad[i].len,
				  bad[i].access, (uint64_t)seq);
		if (r != bad[i].err)
			fail_msg("map bad[%zu]: %ld, want %d", i, (long)r,
				 bad[i].err);
	}
	/* The lock is not held after an error. */
	assert_int_equal(uodp_umem_unlock(f->umem), -EPERM);
	/* With the lock held: -EDEADLK, for every waiting call. */
	assert_int_equal(uodp_umem_lock(f->umem), 0);
	assert_int_equal(uodp_umem_map_and_lock(f->umem, b, page,
						UODP_ACCESS_READ, 0),
			 -EDEADLK);
	assert_int_equal(uodp_umem_map(f->umem, b, page, UODP_ACCESS_READ,
				       (uint64_t)seq),
			 -EDEADLK);
	assert_int_equal(uodp_umem_read_begin(f->umem), -EDEADLK);
	assert_int_equal(uodp_umem_unmap(f->umem, b, page), -EDEADLK);
	assert_int_equal(uodp_umem_dirty_take(f->umem, NULL, 0), -EDEADLK);
	assert_int_equal(uodp_umem_stats(f->umem, &s.a.st, sizeof(s.a.st)),
			 -EDEADLK);
	assert_int_equal(uodp_umem_lock(f->umem), -EDEADLK);
	assert_int_equal(uodp_umem_unlock(f->umem), 0);
	UNCHANGED(f, &s);

	/* The last byte of the region, and unaligned ranges inside it. */
	assert_int_equal(t_fault(f->umem, e - 1, 1, UODP_ACCESS_READ), 1);
	assert_int_equal(t_entry(f->umem, e - 1),
			 t_want(e - page, UODP_ACCESS_READ));
	assert_int_equal(t_fault(f->umem, b + page - 1, 2, UODP_ACCESS_READ),
			 2);
	assert_int_equal(
		t_fault(f->umem, t_pg(b, 4) + 1, page, UODP_ACCESS_READ), 2);
	assert_int_equal(t_entry(f->umem, t_pg(b, 5)),
			 t_want(t_pg(b, 5), UODP_ACCESS_READ));
	assert_int_equal(t_entry(f->umem, t_pg(b, 6)), 0);
}

/* -EFAULT (not mapped) and -EACCES (protection) from the fault path. */
static void test_map_efault_eacces(void **state)
{
	struct fixture *f = *state;
	struct snaps s;

	assert_int_equal(mprotect(t_pg(f->buf, 6), page, PROT_READ), 0);
	assert_int_equal(mprotect(t_pg(f->buf, 7), page, PROT_NONE), 0);
	assert_int_equal(munmap(t_pg(f->buf, 5), page), 0);
	snap_all(f, &s);
	assert_int_equal(t_fault(f->umem, t_pg(f->buf, 5), page,
				 UODP_ACCESS_READ),
			 -EFAULT);
	assert_int_equal(t_fault(f->umem, t_pg(f->buf, 6), page,
				 UODP_ACCESS_WRITE),
			 -EACCES);
	assert_int_equal(t_fault(f->umem, t_pg(f->buf, 7), page,
				 UODP_ACCESS_READ),
			 -EACCES);
	assert_int_equal(t_map_seq(f->umem, t_pg(f->buf, 5), page,
				   UODP_ACCESS_READ),
			 -EFAULT);
	/* Failed attempts count as calls; nothing else moved. */
	s.a.st.map_calls += 4;
	UNCHANGED(f, &s);
	/* Pages before the hole are mapped, the count says how many. */
	assert_int_equal(t_fault(f->umem, t_pg(f->buf, 4), 3 * page,
				 UODP_ACCESS_READ),
			 1);
	assert_int_equal(
		t_fault(f->umem, t_pg(f->buf, 6), page, UODP_ACCESS_READ), 1);
	/* Give the buffer back its shape for the teardown's munmap, unless
	 * another mapping took the hole: then unmap around it here. */
	if (mmap(t_pg(f->buf, 5), page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		 0) != t_pg(f->buf, 5)) {
		t_unmap_pages(f->buf, 0, 5);
		t_unmap_pages(f->buf, 6, NPAGES);
		f->buf_gone = true;
	}
}

/* A write-only region: READ is more access than registered. */
static void test_map_write_only_region(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *u = t_get(f->ctx, f->buf, page, UODP_ACCESS_WRITE);

	assert_int_equal(t_fault(u, f->buf, page, UODP_ACCESS_READ), -EPERM);
	assert_int_equal(t_fault(u, f->buf, page, UODP_ACCESS_ALL), -EPERM);
	assert_int_equal(t_stats(u).map_calls, 0);
	assert_int_equal(t_fault(u, f->buf, page, UODP_ACCESS_WRITE), 1);
	assert_int_equal(t_entry(u, f->buf), t_want(f->buf, UODP_ACCESS_WRITE));
	assert_int_equal(uodp_umem_release(u), 0);
}

/* A watch-only region: invalidations, no table, faults -EPERM. */
static void test_watch_region(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem *w =
		t_get(f->ctx, f->buf, 2 * page, UODP_ACCESS_WATCH);
	uint64_t e[2] = { 1, 1 };
	void *va[2];
	int n = 0;

	assert_int_equal(uodp_umem_access(w), UODP_ACCESS_WATCH);
	assert_int_equal(t_fault(w, f->buf, page, UODP_ACCESS_READ), -EPERM);
	assert_int_equal(t_map_seq(w, f->buf, page, UODP_ACCESS_READ), -EPERM);
	assert_int_equal(uodp_umem_lock(w), 0);
	assert_int_equal(uodp_umem_entries_locked(w, f->buf, 2, e), 0);
	assert_int_equal(e[0] | e[1], 0);
	assert_int_equal(
		uodp_umem_for_each_entry(w, f->buf, 2 * page, count_fn, &n), 0);
	assert_int_equal(uodp_umem_unlock(w), 0);
	assert_int_equal(uodp_umem_pfn(w, f->buf), 0);
	assert_int_equal(uodp_umem_dirty_take(w, va, 2), 0);
	assert_int_equal(uodp_umem_unmap(w, f->buf, page), 0);
	uodp_umem_set_priv(w, &n);
	t_rec_reset();
	t_inval(f->ctx, t_pg(f->buf, 1), 1);
	assert_true(t_rec_find(0, w, t_pg(f->buf, 1), t_pg(f->buf, 2),
			       UODP_EVENT_MANUAL) >= 0);
	assert_ptr_equal(
		t_rec.c[t_rec_find(0, w, t_pg(f->buf, 1), t_pg(f->buf, 2), -1)]
			.umem_priv,
		&n);
	assert_int_equal(t_stats(w).invalidations, 1);
	assert_int_equal(t_stats(w).table_bytes, 0);
	assert_int_equal(uodp_umem_release(w), 0);
}

static void test_unmap_dirty_bad(void **state)
{
	struct fixture *f = *state;
	char *b = f->buf, *e = t_pg(f->buf, NPAGES);
	void *va[NPAGES];
	struct snaps s;

	snap_all(f, &s);
	/* Empty ranges and ranges outside the region drop nothing. */
	assert_int_equal(uodp_umem_unmap(f->umem, b, 0), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, b + 5, 0), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, e, SIZE_MAX), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, NULL, (uintptr_t)b), 0);
	assert_int_equal(uodp_umem_unmap(f->umem, t_pg(b, 4), 4 * page), 0);
	assert_int_equal(uodp_umem_dirty_take(f->umem, NULL, 1), -EINVAL);
	assert_int_equal(uodp_umem_dirty_take(f->umem, NULL, SIZE_MAX),
			 -EINVAL);
	assert_int_equal(uodp_umem_dirty_take(f->umem, NULL, 0), 0);
	assert_int_equal(uodp_umem_dirty_take(f->umem, va, 0), 0);
	UNCHANGED(f, &s);
	/* Two writable pages dropped: the dirty set has them. */
	assert_int_equal(uodp_umem_unmap(f->umem, b, 2 * page), 2);
	assert_int_equal(uodp_umem_dirty_take(f->umem, va, NPAGES), 2);
	assert_ptr_equal(va[0], b);
	assert_ptr_equal(va[1], t_pg(b, 1));
}

static void test_invalidate_bad(void **state)
{
	struct fixture *f = *state;
	struct uodp_ctx *fc = (struct uodp_ctx *)f->umem;
	struct uodp_ctx *ctxs[] = { NULL, fc, &f->zero.c };
	char *b = f->buf;
	struct uodp_range r;
	struct snaps s;

	snap_all(f, &s);
	for (size_t i = 0; i < 3; i++) {
		uodp_range_init(&r, b, page, UODP_EVENT_MANUAL);
		assert_int_equal(uodp_invalidate_range_start(ctxs[i], &r),
				 -EINVAL);
		assert_int_equal(uodp_invalidate_range(ctxs[i], b, page,
						       UODP_EVENT_MANUAL),
				 -EINVAL);
	}
	assert_int_equal(uodp_invalidate_range_start(f->ctx, NULL), -EINVAL);
	assert_int_equal(uodp_invalidate_range_end(NULL), -EINVAL);
	/* Empty and reversed ranges. */
	uodp_range_init(&r, b, 0, UODP_EVENT_MANUAL);
	assert_int_equal(uodp_invalidate_range_start(f->ctx, &r), -EINVAL);
	uodp_range_init(&r, b, page, UODP_EVENT_MANUAL);
	r.end = b - 1;
	assert_int_equal(uodp_invalidate_range_start(f->ctx, &r), -EINVAL);
	/* Fields that must be zero, and events out of range. */
	for (unsigned i = 0; i < 6; i++) {
		uodp_range_init(&r, b, page, UODP_EVENT_MANUAL);
		r.reserved[i] = 1;
		assert_int_equal(uodp_invalidate_range_start(f->ctx, &r),
				 -EINVAL);
	}
	uodp_range_init(&r, b, page, UODP_EVENT_MANUAL);
	r.flags = 1;
	assert_int_equal(uodp_invalidate_range_start(f->ctx, &r), -EINVAL);
	uodp_range_init(&r, b, page, (enum uodp_event)(UODP_EVENT_MAX + 1));
	assert_int_equal(uodp_invalidate_range_start(f->ctx, &r), -EINVAL);
	assert_int_equal(
		uodp_invalidate_range(f->ctx, b, page,
				      (enum uodp_event)(UODP_EVENT_MAX + 1)),
		-EINVAL);
	assert_int_equal(uodp_invalidate_range(f->ctx, b, page,
					       (enum uodp_event) - 1),
			 -EINVAL);
	assert_int_equal(uodp_invalidate_range(f->ctx, b, 0, UODP_EVENT_MANUAL),
			 -EINVAL);
	/* Outside the address space. */
	assert_int_equal(uodp_invalidate_range(f->ctx, (void *)(VA_LIMIT - 1),
					       2, UODP_EVENT_MANUAL),
			 -ERANGE);
	assert_int_equal(uodp_invalidate_range(f->ctx, b, SIZE_MAX,
					       UODP_EVENT_MANUAL),
			 -ERANGE);
	uodp_range_init(&r, (void *)(VA_LIMIT - page), 2 * page,
			UODP_EVENT_MANUAL);
	assert_int_equal(uodp_invalidate_range_start(f->ctx, &r), -ERANGE);
	/* end() of a token never started, and of a zeroed one. */
	uodp_range_init(&r, b, page, UODP_EVENT_MANUAL);
	assert_int_equal(uodp_invalidate_range_end(&r), -EINVAL);
	memset(&r, 0, sizeof(r));
	assert_int_equal(uodp_invalidate_range_end(&r), -EINVAL);
	UNCHANGED(f, &s);

	/* A pair; then the token again (second end), a restart. Copied
	 * tokens: test_engine_misuse.c. */
	t_start(f->ctx, &r, b, NPAGES);
	assert_false(uodp_ctx_sync(f->ctx));
	/* Starting a token in use. */
	assert_int_equal(uodp_invalidate_range_start(f->ctx, &r), -EINVAL);
	t_end(&r);
	assert_true(uodp_ctx_sync(f->ctx));
	assert_int_equal(t_rec_count(), 2);
	snap_all(f, &s);
	assert_int_equal(uodp_invalidate_range_end(&r), -EINVAL);
	UNCHANGED(f, &s);
	/* The same token may be started again after end(). */
	t_start(f->ctx, &r, b, 1);
	t_end(&r);
}

/* Invalidation ranges are rounded out to pages and clamped to each region:
 * the driver sees page-aligned bounds inside the region, the event, and
 * the region's priv. */
static void test_invalidate_rounding(void **state)
{
	struct fixture *f = *state;
	char *b = f->buf;
	struct uodp_umem_stats st;
	int64_t seq = uodp_umem_read_begin(f->umem);
	int i, marker;

	uodp_umem_set_priv(f->umem, &marker);
	assert_int_equal(uodp_invalidate_range(f->ctx, b + page + 1, 1,
					       UODP_EVENT_REMOVE),
			 0);
	assert_int_equal(t_rec_count(), 2);
	i = t_rec_find(0, f->umem, t_pg(b, 1), t_pg(b, 2), UODP_EVENT_REMOVE);
	assert_true(i >= 0);
	assert_ptr_equal(t_rec.c[i].umem_priv, &marker);
	i = t_rec_find(0, f->ro, t_pg(b, 1), t_pg(b, 2), UODP_EVENT_REMOVE);
	assert_true(i >= 0);
	assert_null(t_rec.c[i].umem_priv);
	assert_int_equal(t_entry(f->umem, b), t_want(b, UODP_ACCESS_ALL));
	assert_int_equal(t_entry(f->umem, t_pg(b, 1)), 0);
	assert_int_equal(t_entry(f->umem, t_pg(b, 2)),
			 t_want(t_pg(b, 2), UODP_ACCESS_ALL));
	assert_int_equal(t_entry(f->ro, t_pg(b, 1)), 0);
	assert_int_equal(t_entry(f->ro, b), t_want(b, UODP_ACCESS_READ));
	st = t_stats(f->umem);
	assert_int_equal(st.invalidations, 1);
	assert_int_equal(st.pages_invalidated, 1);
	assert_true(t_retry(f->umem, (uint64_t)seq));

	/* The whole address space: clamped to each region. */
	t_rec_reset();
	assert_int_equal(uodp_invalidate_range(f->ctx, NULL, VA_LIMIT,
					       UODP_EVENT_UNMAP),
			 0);
	assert_int_equal(t_rec_count(), 2);
	assert_true(t_rec_find(0, f->umem, b, t_pg(b, NPAGES),
			       UODP_EVENT_UNMAP) >= 0);
	assert_int_equal(t_entry(f->umem, b), 0);

	/* Outside every region: no callback, no sequence change. */
	t_rec_reset();
	seq = uodp_umem_read_begin(f->umem);
	assert_int_equal(uodp_invalidate_range(f->ctx, t_pg(b, NPAGES), 1,
					       UODP_EVENT_MANUAL),
			 0);
	assert_int_equal(uodp_invalidate_range(f->ctx, b - page, page,
					       UODP_EVENT_MANUAL),
			 0);
	assert_int_equal(t_rec_count(), 0);
	assert_false(t_retry(f->umem, (uint64_t)seq));
}

/* The low-level steps on a healthy region. */
static void test_read_begin_retry(void **state)
{
	struct fixture *f = *state;
	int64_t seq = uodp_umem_read_begin(f->umem);

	assert_true(seq >= 0);
	assert_int_equal(uodp_umem_read_begin(f->umem), seq);
	assert_int_equal(uodp_umem_lock(f->umem), 0);
	assert_false(uodp_umem_read_retry(f->umem, (uint64_t)seq));
	assert_true(uodp_umem_read_retry(f->umem, (uint64_t)seq + 1));
	assert_int_equal(uodp_umem_unlock(f->umem), 0);

	/* Map with a stale sequence: -EAGAIN, nothing installed. */
	t_inval(f->ctx, f->buf, 1);
	assert_true(t_retry(f->umem, (uint64_t)seq));
	assert_int_equal(uodp_umem_map(f->umem, f->buf, page, UODP_ACCESS_ALL,
				       (uint64_t)seq),
			 -EAGAIN);
	assert_int_equal(t_entry(f->umem, f->buf), 0);
	assert_int_equal(t_stats(f->umem).retries, 1);
	assert_int_equal(t_map_seq(f->umem, f->buf, page, UODP_ACCESS_ALL), 1);
	assert_int_equal(t_entry(f->umem, f->buf),
			 t_want(f->buf, UODP_ACCESS_ALL));
}

/* ------------------------------------------------------------------------ */
/* -ECHILD                                                                   */

struct fork_arg {
	struct uodp_ctx *ctx;
	struct uodp_umem *umem;
	char *buf;
};

static struct fork_arg fork_a;

static void fork_child(void *argp)
{
	struct fork_arg *a = argp;
	char *b = a->buf;
	void *va[4];
	struct uodp_umem_stats st;
	struct uodp_umem *u2 = NULL;
	struct uodp_ctx *c2 = NULL;
	struct uodp_range r;
	int n = 0;

	/* Every call that changes or waits on the parent's context or region
	 * (those listing -ECHILD). The region lock must not be used in the
	 * child: for_each_entry is checked before its lock test. */
	T_CHILD_CHECK(uodp_umem_get(a->ctx, b, page, UODP_ACCESS_READ, &u2) ==
		      -ECHILD);
	T_CHILD_CHECK(u2 == NULL);
	T_CHILD_CHECK(uodp_umem_map_and_lock(a->umem, b, page, UODP_ACCESS_READ,
					     0) == -ECHILD);
	T_CHILD_CHECK(uodp_umem_map(a->umem, b, page, UODP_ACCESS_READ, 0) ==
		      -ECHILD);
	T_CHILD_CHECK(uodp_umem_read_begin(a->umem) == -ECHILD);
	T_CHILD_CHECK(uodp_umem_unmap(a->umem, b, page) == -ECHILD);
	T_CHILD_CHECK(uodp_umem_for_each_entry(a->umem, b, page, count_fn,
					       &n) == -ECHILD);
	uodp_range_init(&r, b, page, UODP_EVENT_MANUAL);
	T_CHILD_CHECK(uodp_invalidate_range_start(a->ctx, &r) == -ECHILD);
	T_CHILD_CHECK(uodp_invalidate_range(a->ctx, b, page,
					    UODP_EVENT_MANUAL) == -ECHILD);
	T_CHILD_CHECK(uodp_umem_dirty_take(a->umem, va, 4) == -ECHILD);
	T_CHILD_CHECK(uodp_umem_stats(a->umem, &st, sizeof(st)) == -ECHILD);
	T_CHILD_CHECK(uodp_umem_release(a->umem) == -ECHILD);
	T_CHILD_CHECK(uodp_ctx_destroy(a->ctx) == -ECHILD);
	/* Bad input is still bad input. */
	T_CHILD_CHECK(uodp_umem_map(NULL, b, page, UODP_ACCESS_READ, 0) ==
		      -EINVAL);
	T_CHILD_CHECK(uodp_ctx_destroy(NULL) == -EINVAL);
	/* The child may have its own context. */
	T_CHILD_CHECK(uodp_ctx_create(&t_record_ops, UODP_CTX_MANUAL, &c2) ==
		      0);
	T_CHILD_CHECK(uodp_umem_get(c2, b, page, UODP_ACCESS_ALL, &u2) == 0);
	T_CHILD_CHECK(
		uodp_umem_map_and_lock(u2, b, page, UODP_ACCESS_WRITE, 0) == 1);
	T_CHILD_CHECK(uodp_umem_unlock(u2) == 0);
	T_CHILD_CHECK(uodp_umem_release(u2) == 0);
	T_CHILD_CHECK(uodp_ctx_destroy(c2) == 0);
}

/* A token started in the parent ends with -ECHILD in the child. */
static struct uodp_range fork_tok;

static void fork_child_end(void *arg)
{
	(void)arg;
	T_CHILD_CHECK(uodp_invalidate_range_end(&fork_tok) == -ECHILD);
}

static void test_fork_echild(void **state)
{
	struct fixture *f = *state;
	struct uodp_umem_stats before, after;

	fork_a = (struct fork_arg){ f->ctx, f->umem, f->buf };
	before = t_stats(f->umem);
	t_child_ok(fork_child, &fork_a);
	t_start(f->ctx, &fork_tok, f->buf, 1);
	t_child_ok(fork_child_end, NULL);
	t_end(&fork_tok);
	after = t_stats(f->umem);
	/* The parent's token ended; its region counted that one. */
	before.invalidations++;
	before.pages_invalidated++;
	before.mapped_now--;
	assert_memory_equal(&before, &after, sizeof(before));
	assert_int_equal(
		t_fault(f->umem, t_pg(f->buf, 2), page, UODP_ACCESS_READ), 1);
}

/* uodp_in_callback(): 0 outside, UODP_CALLBACK_LOCKED inside the
 * invalidate callback of a non-deferred context, 0 again after it. */
static int seen_in_cb = -1;

static void cb_in_callback(struct uodp_umem *umem, const struct uodp_range *r,
			   void *priv)
{
	(void)umem;
	(void)r;
	(void)priv;
	seen_in_cb = uodp_in_callback();
}

static void test_in_callback(void **state)
{
	struct uodp_ctx_ops ops = { .invalidate = cb_in_callback };
	struct uodp_ctx *ctx;
	struct uodp_umem *u;
	char *buf = t_map(2, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	(void)state;
	assert_int_equal(uodp_in_callback(), 0);
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx), 0);
	assert_int_equal(uodp_umem_get(ctx, buf, 2 * page, UODP_ACCESS_ALL, &u),
			 0);
	assert_int_equal(
		uodp_invalidate_range(ctx, buf, page, UODP_EVENT_MANUAL), 0);
	assert_int_equal(seen_in_cb, UODP_CALLBACK_LOCKED);
	assert_int_equal(uodp_in_callback(), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 2);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_version),
		cmocka_unit_test(test_strerror),
		cmocka_unit_test(test_ctx_create_bad),
		cmocka_unit_test(test_ctx_ops_copied),
		cmocka_unit_test(test_in_callback),
		T(test_ctx_destroy_bad),
		T(test_umem_get_bad),
		T(test_umem_get_rounding),
		T(test_umem_release_bad),
		T(test_handles_bad),
		T(test_stats_size),
		T(test_entries_locked),
		T(test_map_bad),
		T(test_map_efault_eacces),
		T(test_map_write_only_region),
		T(test_watch_region),
		T(test_unmap_dirty_bad),
		T(test_invalidate_bad),
		T(test_invalidate_rounding),
		T(test_read_begin_retry),
		T(test_fork_echild),
	};

	page = t_page_size();
	return t_run(tests, NULL, NULL);
}

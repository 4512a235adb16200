/* SPDX-License-Identifier: MIT */
/*
 * test_engine_pin.c - pinning mode (UODP_CTX_PIN) as the kernel sees it:
 * VmLck in /proc/self/status moves with mapped pages, overlapping regions
 * share a page's lock, unmap / invalidation / release / destroy unlock,
 * RLIMIT_MEMLOCK stops a fault with -ENOMEM after the pages it could pin,
 * and an allocation failure leaves nothing locked.
 *
 * The sanitizers' runtimes turn mlock() into a no-op: there VmLck is not
 * checked (everything else is), and the RLIMIT_MEMLOCK test skips.
 */
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "helpers.h"
#include "lib/pgtable.h"       /* pgt_test_fail_alloc() */
#include "notifier/notifier.h" /* unf_test_hook_after_read */

static size_t page;

/* VmLck of this process, in kB (-1 if not found). */
static long vmlck_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* Whether mlock() reaches the kernel here (not under the sanitizers). */
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

/* A pinning context with no callback (optional with PIN). */
static struct uodp_ctx *pin_ctx(void)
{
	static const struct uodp_ctx_ops ops = { .priv = (void *)1 };
	struct uodp_ctx *ctx = NULL;

	assert_int_equal(
		uodp_ctx_create(&ops, UODP_CTX_MANUAL | UODP_CTX_PIN, &ctx), 0);
	return ctx;
}

static void test_pinning(void **state)
{
	struct uodp_ctx *ctx = pin_ctx();
	char *buf = t_buf(16);
	struct uodp_umem *u = t_get(ctx, buf, 16 * page, UODP_ACCESS_ALL);
	long kb = (long)(page / 1024), base = vmlck_kb();

	(void)state;
	assert_int_equal(t_fault(u, buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_locked(base + 8 * kb);
	/* Mapping again locks nothing more. */
	assert_int_equal(t_fault(u, buf, 8 * page, UODP_ACCESS_ALL), 8);
	assert_locked(base + 8 * kb);
	assert_int_equal(t_fault(u, t_pg(buf, 8), 4 * page, UODP_ACCESS_READ),
			 4);
	assert_locked(base + 12 * kb);
	/* Unmap unlocks. */
	assert_int_equal(uodp_umem_unmap(u, buf, 4 * page), 4);
	assert_locked(base + 8 * kb);
	/* So does a (manual) invalidation, with no callback to call. */
	t_inval(ctx, t_pg(buf, 4), 2);
	assert_locked(base + 6 * kb);
	assert_int_equal(t_stats(u).pages_invalidated, 2);
	/* A read entry upgraded to write stays locked once (if its frame
	 * changes the engine drops and re-maps it). */
	assert_int_equal(t_fault(u, t_pg(buf, 8), page, UODP_ACCESS_WRITE), 1);
	assert_locked(base + 6 * kb);
	/* Release unlocks the rest. */
	assert_int_equal(uodp_umem_release(u), 0);
	assert_locked(base);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 16);
}

/* A pinning context, a region over 8 pages of a fresh buffer with its
 * first 4 faulted (so locked), and @dst_pages of PROT_NONE room to move
 * them to: the start of every move test. */
struct pinned4 {
	struct uodp_ctx *ctx;
	char *buf, *dst;
	struct uodp_umem *u;
	long base; /* VmLck before the fault */
};

static struct pinned4 pinned_four(unsigned flags, size_t dst_pages)
{
	struct pinned4 f;

	f.ctx = t_ctx(flags | UODP_CTX_PIN);
	f.buf = t_buf(8);
	f.dst = t_map(dst_pages, PROT_NONE, MAP_PRIVATE);
	f.u = t_get(f.ctx, f.buf, 8 * page, UODP_ACCESS_ALL);
	f.base = vmlck_kb();
	assert_int_equal(t_fault(f.u, f.buf, 4 * page, UODP_ACCESS_WRITE), 4);
	assert_locked(f.base + 4 * (long)(page / 1024));
	return f;
}

/* pinned_four() on the kernel monitor, the start of the move tests: skip
 * without the monitor, and, when @need_lock, without an observable mlock()
 * (VmLck is their oracle: without it they could not fail). */
static struct pinned4 pinned_four_monitor(size_t dst_pages, bool need_lock)
{
	if (!t_monitor_available())
		skip();
	if (need_lock && !mlock_works())
		t_skip("mlock() is a no-op here (sanitizer runtime)");
	return pinned_four(0, dst_pages);
}

/*
 * mremap() moves the kernel's mlock with the pages. With the kernel
 * monitor the destination must come out unlocked: the application's own
 * MADV_DONTNEED works there and VmLck is back where it was (before the fix
 * the REMAP unpinned only the source, a hole by then, and the destination
 * stayed locked after release and destroy: found by the fuzzer's
 * finding-15 oracle). A manual context invalidates first, then moves.
 */
static void mremap_pinned(unsigned flags)
{
	struct pinned4 f = pinned_four(flags, 4);
	struct uodp_ctx *ctx = f.ctx;
	char *buf = f.buf, *dst = f.dst, *p;
	struct uodp_umem *u = f.u;
	long base = f.base;

	if (flags & UODP_CTX_MANUAL)
		assert_int_equal(uodp_invalidate_range(ctx, buf, 4 * page,
						       UODP_EVENT_REMAP),
				 0);
	/* The four locked pages: one mapping of the kernel's (mlock split
	 * the buffer, and mremap moves one mapping at a time). */
	p = mremap(buf, 4 * page, 4 * page, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	assert_ptr_equal(p, dst);
	if (!(flags & UODP_CTX_MANUAL)) {
		t_rec_wait(0, u, buf, t_pg(buf, 4), UODP_EVENT_REMAP, 10);
		t_wait_sync(ctx);
	}
	assert_locked(base);
	memset(dst, 7, 4 * page);
	assert_int_equal(madvise(dst, 4 * page, MADV_DONTNEED), 0);
	assert_int_equal(dst[0], 0); /* zero-filled again */
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_locked(base);
	t_unmap(dst, 4);
	t_unmap_pages(buf, 4, 8);
}

/* A move that grows the mapping (what realloc() of a large block does):
 * the kernel locks the new tail too, which the REMAP does not report. */
static void test_pinned_mremap_grow(void **state)
{
	struct pinned4 f;
	char *p;

	(void)state;
	f = pinned_four_monitor(8, false);
	struct uodp_ctx *ctx = f.ctx;
	char *buf = f.buf, *dst = f.dst;
	struct uodp_umem *u = f.u;
	long base = f.base;

	p = mremap(buf, 4 * page, 8 * page, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	assert_ptr_equal(p, dst);
	t_rec_wait(0, u, buf, t_pg(buf, 4), UODP_EVENT_REMAP, 10);
	t_wait_sync(ctx);
	assert_locked(base);
	assert_int_equal(madvise(dst, 8 * page, MADV_DONTNEED), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_locked(base);
	t_unmap(dst, 8);
	t_unmap_pages(buf, 4, 8);
}

/*
 * A move that shrinks the mapping (mremap(old, 4 pages, 2 pages,
 * MREMAP_FIXED)): two pages move, two are unmapped. The report of the move
 * must cover the two that moved, not the old length: the application's
 * own locked mapping right after the destination is not uodp's to unlock
 * (under the hooks, whose in-thread move reported the old length, it was
 * munlock()ed; the kernel reports the moved length).
 */
static void test_pinned_mremap_shrink(void **state)
{
	long kb = (long)(page / 1024);
	struct pinned4 f;
	char *p, *q;

	(void)state;
	f = pinned_four_monitor(8, true);
	/* The application's locked pages, right after the destination. */
	q = mmap(t_pg(f.dst, 2), 2 * page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	assert_ptr_equal(q, t_pg(f.dst, 2));
	assert_int_equal(mlock(q, 2 * page), 0);
	assert_locked(f.base + 6 * kb);
	p = mremap(f.buf, 4 * page, 2 * page, MREMAP_MAYMOVE | MREMAP_FIXED,
		   f.dst);
	assert_ptr_equal(p, f.dst);
	/* The release waits for the move's report (ctx_settle_moves()). */
	assert_int_equal(uodp_umem_release(f.u), 0);
	t_wait_sync(f.ctx);
	assert_locked(f.base + 2 * kb);
	assert_int_equal(uodp_ctx_destroy(f.ctx), 0);
	assert_int_equal(munlock(q, 2 * page), 0);
	assert_locked(f.base);
	t_unmap(f.dst, 8);
	t_unmap_pages(f.buf, 4, 8);
}

/*
 * A move that fails (its target overlaps its source: EINVAL) moves
 * nothing: the pages the application locked itself in the target stay
 * locked. (The hooks deliver an invalidation whatever the call returned,
 * which is harmless; they reported a move too, and its destination was
 * munlock()ed.)
 */
static void test_pinned_mremap_failed(void **state)
{
	long kb = (long)(page / 1024);
	struct pinned4 f;
	char *p;

	(void)state;
	f = pinned_four_monitor(4, true);
	/* pages 4 and 5 of the region: not faulted, locked by the
	 * application */
	assert_int_equal(mlock(t_pg(f.buf, 4), 2 * page), 0);
	assert_locked(f.base + 6 * kb);
	p = mremap(f.buf, 4 * page, 4 * page, MREMAP_MAYMOVE | MREMAP_FIXED,
		   t_pg(f.buf, 2));
	assert_ptr_equal(p, MAP_FAILED);
	assert_int_equal(errno, EINVAL);
	t_wait_sync(f.ctx);
	assert_int_equal(uodp_umem_release(f.u), 0);
	t_wait_sync(f.ctx);
	assert_locked(f.base + 2 * kb);
	assert_int_equal(uodp_ctx_destroy(f.ctx), 0);
	assert_int_equal(munlock(t_pg(f.buf, 4), 2 * page), 0);
	assert_locked(f.base);
	t_unmap(f.dst, 4);
	t_unmap(f.buf, 8);
}

/*
 * The kernel refuses MADV_DONTNEED on locked memory (EINVAL) and sends no
 * event: pinned pages stay mapped and pinned (the device may hold their
 * frames). A refused madvise must not unpin them either under the hooks,
 * whose delivery runs whatever the call returned.
 */
static void test_pinned_madvise_refused(void **state)
{
	long kb = (long)(page / 1024);
	struct pinned4 f;

	(void)state;
	f = pinned_four_monitor(4, true);
	assert_int_equal(madvise(f.buf, 4 * page, MADV_DONTNEED), -1);
	assert_int_equal(errno, EINVAL);
	t_wait_sync(f.ctx);
	assert_locked(f.base + 4 * kb);
	assert_int_equal(t_stats(f.u).pages_invalidated, 0);
	assert_int_equal(uodp_umem_release(f.u), 0);
	assert_locked(f.base);
	assert_int_equal(uodp_ctx_destroy(f.ctx), 0);
	t_unmap(f.dst, 4);
	t_unmap(f.buf, 8);
}

/*
 * A release racing a move on another thread. The kernel lets mremap()
 * return only once the monitor has read the UNMAP of the old range, which
 * it reads after it delivered the REMAP; but between the REMAP's read and
 * its delivery another thread may release the region. The release dropped
 * the source's pin counts first, so the report found nothing of ours there
 * and the destination stayed locked for good (before the fix: VmLck 4
 * pages over, MADV_DONTNEED refused with EINVAL). The monitor is parked
 * right after its read of the REMAP (unf_test_hook_after_read); it goes
 * on once the release has returned, or is waiting for it
 * (unf_test_hook_barrier_wait): no sleep decides the order.
 */
static atomic_bool mon_read, mon_go;

static void park_after_read(void)
{
	double t0 = t_now_ms();

	atomic_store(&mon_read, true);
	/* Bounded, so that a regression fails rather than hangs. */
	while (!atomic_load(&mon_go) && t_now_ms() - t0 < 10000.0)
		sched_yield();
}

static void let_monitor_go(void)
{
	atomic_store(&mon_go, true);
}

static void let_monitor_go_ctx(struct uodp_ctx *ctx)
{
	(void)ctx;
	atomic_store(&mon_go, true);
}

struct move_arg {
	char *from, *to;
	size_t len;
	void *got;
};

static void *move_thread(void *argp)
{
	struct move_arg *a = argp;

	/* The system call itself: under libuodp-hooks (the _hooks run of
	 * this program) too, the move goes to the kernel and its monitor. */
	a->got = (void *)syscall(SYS_mremap, a->from, a->len, a->len,
				 MREMAP_MAYMOVE | MREMAP_FIXED, a->to);
	return NULL;
}

/* Move 4 pinned pages of @ctx's region @u while @teardown runs on this
 * thread in the window above; returns what it returned. */
static int move_racing(char *buf, char *dst, int (*teardown)(void *), void *arg)
{
	struct move_arg m = { .from = buf, .to = dst, .len = 4 * page };
	double t0 = t_now_ms();
	pthread_t th;
	int r;

	atomic_store(&mon_read, false);
	atomic_store(&mon_go, false);
	unf_test_hook_barrier_wait = let_monitor_go;
	engine_test_hook_before_detach = let_monitor_go_ctx;
	unf_test_hook_after_read = park_after_read;
	assert_int_equal(pthread_create(&th, NULL, move_thread, &m), 0);
	while (!atomic_load(&mon_read)) {
		if (t_now_ms() - t0 > 10000.0)
			fail_msg("the monitor read no event in 10 s");
		sched_yield();
	}
	/* The REMAP is read, not delivered; the mover waits in mremap(). */
	r = teardown(arg);
	atomic_store(&mon_go, true);
	assert_int_equal(pthread_join(th, NULL), 0);
	unf_test_hook_after_read = NULL;
	unf_test_hook_barrier_wait = NULL;
	engine_test_hook_before_detach = NULL;
	assert_ptr_equal(m.got, dst);
	return r;
}

static int release_it(void *u)
{
	return uodp_umem_release(u);
}

static int destroy_it(void *ctx)
{
	return uodp_ctx_destroy(ctx);
}

static char *unmap_at;

/* The REMAP's invalidation may have dropped the entries first: any
 * count is right, an error is not. */
static int unmap_it(void *u)
{
	return uodp_umem_unmap(u, unmap_at, 4 * page) < 0 ? -1 : 0;
}

/* A manual invalidation of the moved pages (a driver bracketing an
 * mprotect() of its own on a monitored context): it drops the source's
 * pins as a release does. */
static int inval_it(void *ctx)
{
	return uodp_invalidate_range(ctx, unmap_at, 4 * page,
				     UODP_EVENT_MANUAL);
}

static int start_end_it(void *ctx)
{
	struct uodp_range tok;
	int r;

	uodp_range_init(&tok, unmap_at, 4 * page, UODP_EVENT_MANUAL);
	r = uodp_invalidate_range_start(ctx, &tok);
	if (r)
		return r;
	return uodp_invalidate_range_end(&tok);
}

/* how: 0 release, 1 destroy, 2 uodp_umem_unmap(),
 * 3 uodp_invalidate_range(), 4 uodp_invalidate_range_start()/_end() */
static void pinned_move_racing(int how)
{
	struct pinned4 f;

	/* The oracle is the lock (VmLck, MADV_DONTNEED refused): without
	 * it the test could not fail. (Under ThreadSanitizer it also hung
	 * once, the monitor thread in userfaultfd_event_wait_completion
	 * before its read: not understood yet.) */
	f = pinned_four_monitor(4, true);
	struct uodp_ctx *ctx = f.ctx;
	char *buf = f.buf, *dst = f.dst;
	struct uodp_umem *u = f.u;
	long base = f.base;

	if (how == 3 || how == 4) {
		/* So do manual invalidations (before the fix they dropped
		 * the source's counts first: VmLck 4 pages over). */
		unmap_at = buf;
		assert_int_equal(move_racing(buf, dst,
					     how == 3 ? inval_it : start_end_it,
					     ctx),
				 0);
		t_wait_sync(ctx);
		assert_locked(base);
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
	} else if (how == 2) {
		/* uodp_umem_unmap() waits for the move as release does. */
		unmap_at = buf;
		assert_int_equal(move_racing(buf, dst, unmap_it, u), 0);
		t_wait_sync(ctx);
		assert_locked(base);
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
	} else if (how == 1) {
		/* Destroy detaches first, which waits for the drain (the
		 * monitor holds the subscriber list across it). */
		assert_int_equal(move_racing(buf, dst, destroy_it, ctx), 0);
		assert_locked(base);
		assert_int_equal(uodp_umem_release(u), 0);
	} else {
		assert_int_equal(move_racing(buf, dst, release_it, u), 0);
		t_wait_sync(ctx);
		assert_locked(base);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
	}
	assert_locked(base);
	assert_int_equal(madvise(dst, 4 * page, MADV_DONTNEED), 0);
	t_unmap(dst, 4);
	t_unmap_pages(buf, 4, 8);
}

/*
 * A release of a pinning context under a driver lock that the strict
 * fence takes, while the monitor drains another event: UODP_CTX_DEFERRED
 * allows release under such locks. The release waits for the moves the
 * monitor read (pin.c), and must not wait for the drain itself: the
 * monitor is in the fence, waiting for that lock (it deadlocked when the
 * wait took the monitor's subscriber lock). In a child, SIGALRM as the
 * verdict of a hang.
 */
static pthread_mutex_t fence_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool in_fence;
static char *other_buf;

static void lock_fence(struct uodp_ctx *ctx, void *priv)
{
	(void)ctx;
	(void)priv;
	atomic_store(&in_fence, true);
	pthread_mutex_lock(&fence_lock);
	pthread_mutex_unlock(&fence_lock);
}

static void no_unfence(struct uodp_ctx *ctx, void *priv)
{
	(void)ctx;
	(void)priv;
}

static void no_inval(struct uodp_umem *u, const struct uodp_range *r,
		     void *priv)
{
	(void)u;
	(void)r;
	(void)priv;
}

static void *raw_unmapper(void *arg)
{
	(void)arg;
	syscall(SYS_munmap, other_buf, page); /* the monitor drains it */
	return NULL;
}

static void release_under_fence_child(void *arg)
{
	static const struct uodp_ctx_ops ops = {
		.invalidate = no_inval,
		.fence = lock_fence,
		.unfence = no_unfence,
	};
	struct uodp_ctx *ctx;
	struct uodp_umem *u, *w;
	char *buf = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pthread_t th;

	(void)arg;
	other_buf = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	T_CHILD_CHECK(buf != MAP_FAILED && other_buf != MAP_FAILED);
	T_CHILD_CHECK(uodp_ctx_create(&ops,
				      UODP_CTX_STRICT | UODP_CTX_DEFERRED |
					      UODP_CTX_PIN,
				      &ctx) == 0);
	T_CHILD_CHECK(uodp_umem_get(ctx, buf, 4 * page, UODP_ACCESS_ALL, &u) ==
		      0);
	T_CHILD_CHECK(uodp_umem_get(ctx, other_buf, 4 * page, UODP_ACCESS_ALL,
				    &w) == 0);
	T_CHILD_CHECK(uodp_umem_map_and_lock(u, buf, 4 * page,
					     UODP_ACCESS_WRITE,
					     UODP_TIMEOUT_INFINITE) == 4);
	T_CHILD_CHECK(uodp_umem_unlock(u) == 0);
	pthread_mutex_lock(&fence_lock); /* a registration cache's lock */
	T_CHILD_CHECK(pthread_create(&th, NULL, raw_unmapper, NULL) == 0);
	while (!atomic_load(&in_fence)) /* the monitor's drain began */
		sched_yield();
	alarm(10); /* default action: the child dies, the parent sees it */
	T_CHILD_CHECK(uodp_umem_release(u) == 0);
	alarm(0);
	pthread_mutex_unlock(&fence_lock);
	pthread_join(th, NULL);
	T_CHILD_CHECK(uodp_umem_release(w) == 0);
	T_CHILD_CHECK(uodp_ctx_destroy(ctx) == 0);
	_exit(0);
}

static void test_release_under_fence_lock(void **state)
{
	char err[512];
	int st;

	(void)state;
	if (!t_monitor_available())
		skip();
	st = t_in_child(release_under_fence_child, NULL, err, sizeof(err));
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail_msg("child failed (status %#x: %s): %s", st,
			 WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM ?
				 "release hung" :
				 "check failed",
			 err);
}

static void test_pinned_mremap_release_race(void **state)
{
	(void)state;
	pinned_move_racing(0);
}

static void test_pinned_mremap_unmap_race(void **state)
{
	(void)state;
	pinned_move_racing(2);
}

static void test_pinned_mremap_inval_race(void **state)
{
	(void)state;
	pinned_move_racing(3);
}

static void test_pinned_mremap_start_race(void **state)
{
	(void)state;
	pinned_move_racing(4);
}

static void test_pinned_mremap_destroy_race(void **state)
{
	(void)state;
	pinned_move_racing(1);
}

/*
 * pin_moved() walks the source's counts a batch of runs at a time
 * (skipping empty stretches); more runs than a batch holds (64), in a
 * move that also holds long unpinned stretches, must all be unlocked at
 * the destination. Called directly, as the monitor calls it, after the
 * move: a kernel that moves one mapping per mremap() (before Linux 6.17)
 * cannot move them in one call, and the test skips there.
 */
static void test_pinned_moved_many_runs(void **state)
{
	const size_t runs = 150, n = 4 * runs + 512;
	struct uodp_ctx *ctx = pin_ctx();
	char *buf = t_buf(n), *dst = t_map(n, PROT_NONE, MAP_PRIVATE), *p;
	struct uodp_umem *u = t_get(ctx, buf, n * page, UODP_ACCESS_ALL);
	long kb = (long)(page / 1024), base = vmlck_kb();
	size_t i;

	(void)state;
	/* Runs of one and two pages, one page apart, then 512 pages
	 * unpinned. */
	for (i = 0; i < runs; i++)
		assert_int_equal(t_fault(u, t_pg(buf, 4 * i),
					 (1 + i % 2) * page, UODP_ACCESS_WRITE),
				 (int64_t)(1 + i % 2));
	assert_locked(base + (long)(runs + runs / 2) * kb);
	p = mremap(buf, n * page, n * page, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (p == MAP_FAILED) {
		assert_int_equal(errno, EFAULT);
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
		t_unmap(buf, n);
		t_unmap(dst, n);
		t_skip("the kernel moves one mapping per mremap() (< 6.17)");
	}
	assert_ptr_equal(p, dst);
	pin_moved(ctx, (uintptr_t)buf, (uintptr_t)dst, n);
	assert_locked(base);
	assert_int_equal(madvise(dst, n * page, MADV_DONTNEED), 0);
	assert_int_equal(
		uodp_invalidate_range(ctx, buf, n * page, UODP_EVENT_REMAP), 0);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_locked(base);
	t_unmap(dst, n);
	t_unmap(buf, n);
}

static void test_pinned_mremap_monitor(void **state)
{
	(void)state;
	if (!t_monitor_available())
		skip();
	mremap_pinned(0);
}

static void test_pinned_mremap_manual(void **state)
{
	(void)state;
	mremap_pinned(UODP_CTX_MANUAL);
}

/* With a callback: it is called as in any mode. */
static void test_pinning_with_callback(void **state)
{
	struct uodp_ctx *ctx = t_ctx(UODP_CTX_MANUAL | UODP_CTX_PIN);
	char *buf = t_buf(4);
	struct uodp_umem *u = t_get(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	long base = vmlck_kb();

	(void)state;
	t_rec_reset();
	assert_int_equal(t_fault(u, buf, 4 * page, UODP_ACCESS_WRITE), 4);
	t_inval(ctx, buf, 4);
	assert_int_equal(t_rec_count(), 1);
	assert_locked(base);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 4);
}

/* A UODP_CTX_DEFERRED | UODP_CTX_PIN context: its relay is held in the
 * first callback while two more unmaps of one region come (pages 2 and
 * 5); the region's pending hull, pages 2 to 5, is then dropped by one
 * finish. Pages 3 and 4 are still mapped and were pinned: their pins must
 * go with munlock(). Before, the finish dropped the whole hull as gone
 * (an UNMAP), without munlock(): VmLck stayed 2 pages over after the
 * release and destroy, the pages locked for good. */
static atomic_int hold_calls;
static atomic_bool hold_go;

static void hold_first(struct uodp_umem *u, const struct uodp_range *r,
		       void *priv)
{
	(void)u;
	(void)r;
	(void)priv;
	if (atomic_fetch_add(&hold_calls, 1) == 0)
		while (!atomic_load(&hold_go))
			usleep(1000);
}

static void wait_for(bool (*cond)(void *), void *arg)
{
	int i;

	for (i = 0; i < 10000 && !cond(arg); i++)
		usleep(1000);
	assert_true(cond(arg));
}

static bool one_call(void *arg)
{
	(void)arg;
	return atomic_load(&hold_calls) >= 1;
}

static bool three_begun(void *u)
{
	return t_stats(u).invalidations >= 3;
}

static bool five_dropped(void *u)
{
	return t_stats(u).pages_invalidated >= 5;
}

/* The start of the deferred-hull tests: a UODP_CTX_PIN | DEFERRED context
 * whose callback holds the relay (hold_first), a region over 8 pages, all
 * faulted and locked (VmLck *@base before); then page 0 unmapped, and the
 * relay held in its callback, so that the next events pile up pending. */
static void deferred_hull_start(struct uodp_ctx **ctx, struct uodp_umem **u,
				char **buf, long *base)
{
	static const struct uodp_ctx_ops ops = { .invalidate = hold_first };
	long kb = (long)(page / 1024);

	if (!t_monitor_available())
		skip();
	if (!mlock_works())
		t_skip("mlock() is a no-op here (sanitizer runtime)");
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_PIN | UODP_CTX_DEFERRED,
					 ctx),
			 0);
	*buf = t_buf(8);
	*u = t_get(*ctx, *buf, 8 * page, UODP_ACCESS_ALL);
	*base = vmlck_kb();
	assert_int_equal(t_fault(*u, *buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_locked(*base + 8 * kb);
	atomic_store(&hold_calls, 0);
	atomic_store(&hold_go, false);
	assert_int_equal(syscall(SYS_munmap, *buf, page), 0);
	wait_for(one_call, NULL); /* the relay is in the callback */
}

static void test_pinned_deferred_hull(void **state)
{
	struct uodp_ctx *ctx = NULL;
	struct uodp_umem *u;
	long kb = (long)(page / 1024), base;
	char *buf;

	(void)state;
	deferred_hull_start(&ctx, &u, &buf, &base);
	assert_int_equal(syscall(SYS_munmap, t_pg(buf, 2), page), 0);
	assert_int_equal(syscall(SYS_munmap, t_pg(buf, 5), page), 0);
	wait_for(three_begun, u); /* both pending: hull pages 2-5 */
	atomic_store(&hold_go, true);
	wait_for(five_dropped, u);
	/* pages 1, 6 and 7 stay pinned; 3 and 4 were unpinned, unlocked */
	assert_locked(base + 3 * kb);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_locked(base);
	t_unmap_pages(buf, 1, 2);
	t_unmap_pages(buf, 3, 5);
	t_unmap_pages(buf, 6, 8);
}

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif

/* As test_pinned_deferred_hull, but the held relay's next finish is a
 * REMOVE (page 2, MADV_DONTNEED_LOCKED: still mapped, so its pins go with
 * munlock()) whose pending hull reaches a later UNMAP: the application's
 * mmap(MAP_FIXED | MAP_LOCKED) of page 5. Before, the REMOVE's finish
 * unlocked the whole hull, the new mapping with it (VmLck a page short);
 * the memory of an UNMAP is gone, its pins drop without munlock(). */
static void test_pinned_deferred_remove_hull(void **state)
{
	struct uodp_ctx *ctx = NULL;
	struct uodp_umem *u;
	long kb = (long)(page / 1024), base;
	char *buf;
	void *q;

	(void)state;
	deferred_hull_start(&ctx, &u, &buf, &base);
	if (syscall(SYS_madvise, t_pg(buf, 2), page, MADV_DONTNEED_LOCKED)) {
		atomic_store(&hold_go, true);
		assert_int_equal(errno, EINVAL); /* before Linux 5.18 */
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
		t_unmap_pages(buf, 1, 8);
		t_skip("no MADV_DONTNEED_LOCKED");
	}
	q = (void *)syscall(
		SYS_mmap, t_pg(buf, 5), page, PROT_READ | PROT_WRITE,
		MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_LOCKED, -1, 0);
	assert_true(q == (void *)t_pg(buf, 5));
	wait_for(three_begun, u); /* both pending: hull pages 2-5 */
	atomic_store(&hold_go, true);
	wait_for(five_dropped, u);
	/* pages 1, 6 and 7 stay pinned, page 5 is the application's, locked;
	 * 2 to 4 were unpinned, unlocked */
	assert_locked(base + 4 * kb);
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_locked(base + kb);
	t_unmap_pages(buf, 1, 8);
}

/* Overlapping regions share the lock of a page: it goes with the last. */
static void test_pinning_overlap(void **state)
{
	struct uodp_ctx *ctx = pin_ctx();
	char *buf = t_buf(12);
	struct uodp_umem *a = t_get(ctx, buf, 8 * page, UODP_ACCESS_ALL);
	struct uodp_umem *c =
		t_get(ctx, t_pg(buf, 4), 8 * page, UODP_ACCESS_ALL);
	long kb = (long)(page / 1024), base = vmlck_kb();

	(void)state;
	assert_int_equal(t_fault(a, buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_int_equal(t_fault(c, t_pg(buf, 4), 8 * page, UODP_ACCESS_WRITE),
			 8);
	assert_locked(base + 12 * kb);
	assert_int_equal(uodp_umem_unmap(a, NULL, SIZE_MAX), 8);
	assert_locked(base + 8 * kb);
	assert_int_equal(t_fault(a, t_pg(buf, 6), page, UODP_ACCESS_READ), 1);
	assert_int_equal(uodp_umem_unmap(c, buf, 8 * page), 4);
	assert_locked(base + 5 * kb); /* 6 (a), 8-11 (c) */
	assert_int_equal(uodp_umem_release(c), 0);
	assert_locked(base + kb);
	assert_int_equal(uodp_umem_release(a), 0);
	assert_locked(base);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	t_unmap(buf, 12);
}

/* Two pinning contexts over one buffer (two drivers in one process):
 * mlock() is not counted by the kernel, so one context's unlock must not
 * unlock the pages the other still pins (before the fix the counts were
 * per context: releasing c's region or destroying its context unlocked
 * pages 4-7 under a, VmLck 4 pages short). */
static void test_pinning_cross_context(void **state)
{
	struct uodp_ctx *ctx1, *ctx2;
	struct uodp_umem *a, *c;
	char *buf;
	long kb = (long)(page / 1024), base;

	(void)state;
	/* Its only oracle is the lock (VmLck): it could not fail there. */
	if (!mlock_works())
		t_skip("mlock() is a no-op here (sanitizer runtime)");
	ctx1 = pin_ctx();
	ctx2 = pin_ctx();
	buf = t_buf(12);
	a = t_get(ctx1, buf, 8 * page, UODP_ACCESS_ALL);
	c = t_get(ctx2, t_pg(buf, 4), 8 * page, UODP_ACCESS_ALL);
	base = vmlck_kb();
	assert_int_equal(t_fault(a, buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_int_equal(t_fault(c, t_pg(buf, 4), 8 * page, UODP_ACCESS_WRITE),
			 8);
	assert_locked(base + 12 * kb);
	/* c's unmap of the shared pages, then its release: a's stay. */
	assert_int_equal(uodp_umem_unmap(c, buf, 6 * page), 2);
	assert_locked(base + 12 * kb);
	assert_int_equal(uodp_umem_release(c), 0);
	assert_locked(base + 8 * kb);
	/* Again, through the other context's teardown. */
	c = t_get(ctx2, t_pg(buf, 4), 8 * page, UODP_ACCESS_ALL);
	assert_int_equal(t_fault(c, t_pg(buf, 4), 8 * page, UODP_ACCESS_READ),
			 8);
	assert_locked(base + 12 * kb);
	assert_int_equal(uodp_ctx_destroy(ctx2), 0);
	assert_locked(base + 8 * kb);
	assert_int_equal(uodp_umem_release(c), 0);
	assert_locked(base + 8 * kb);
	/* And the last reference unlocks. */
	assert_int_equal(uodp_umem_release(a), 0);
	assert_locked(base);
	assert_int_equal(uodp_ctx_destroy(ctx1), 0);
	t_unmap(buf, 12);
}

/* Destroy unlocks everything at once. */
static void test_destroy_pinned(void **state)
{
	struct uodp_ctx *ctx = pin_ctx();
	char *buf = t_buf(8);
	struct uodp_umem *a = t_get(ctx, buf, 8 * page, UODP_ACCESS_ALL);
	struct uodp_umem *c = t_get(ctx, buf, 4 * page, UODP_ACCESS_ALL);
	long kb = (long)(page / 1024), base = vmlck_kb();

	(void)state;
	assert_int_equal(t_fault(a, buf, 8 * page, UODP_ACCESS_WRITE), 8);
	assert_int_equal(t_fault(c, buf, 4 * page, UODP_ACCESS_WRITE), 4);
	assert_locked(base + 8 * kb);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	assert_locked(base);
	assert_int_equal(t_fault(c, buf, page, UODP_ACCESS_WRITE), -ENODEV);
	assert_locked(base);
	assert_int_equal(uodp_umem_release(c), 0);
	assert_int_equal(uodp_umem_release(a), 0);
	t_unmap(buf, 8);
}

/* ---- RLIMIT_MEMLOCK, in a child (it drops a capability) ---- */

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

static int64_t fault_child(struct uodp_umem *u, void *p, size_t len,
			   unsigned access)
{
	int64_t r = uodp_umem_map_and_lock(u, p, len, access, 1000);

	if (r > 0 && uodp_umem_unlock(u))
		_exit(4);
	return r;
}

/* Out of memory for the pin counts: the page is not left locked. In a
 * child: the counts are the process's, and a child starts with none (no
 * node of an earlier test's pins to reuse), so the first node it needs is
 * the allocation that fails. */
static void enomem_child(void *arg)
{
	static const struct uodp_ctx_ops ops = { .priv = (void *)1 };
	struct uodp_umem_stats st;
	struct uodp_ctx *ctx = NULL;
	struct uodp_umem *u = NULL;
	long base = vmlck_kb();
	uint64_t e = 1;
	char *buf;

	(void)arg;
	buf = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	T_CHILD_CHECK(buf != MAP_FAILED);
	T_CHILD_CHECK(uodp_ctx_create(&ops, UODP_CTX_MANUAL | UODP_CTX_PIN,
				      &ctx) == 0);
	T_CHILD_CHECK(uodp_umem_get(ctx, buf, 4 * page, UODP_ACCESS_ALL, &u) ==
		      0);
	/* The first node of the pin counts (pins are taken before the
	 * region's table is touched). */
	pgt_test_fail_alloc(1);
	T_CHILD_CHECK(fault_child(u, buf, 4 * page, UODP_ACCESS_WRITE) ==
		      -ENOMEM);
	pgt_test_fail_alloc(0);
	T_CHILD_CHECK(!mlock_works() || vmlck_kb() == base);
	T_CHILD_CHECK(uodp_umem_lock(u) == 0);
	T_CHILD_CHECK(uodp_umem_entries_locked(u, buf, 1, &e) == 0 && e == 0);
	T_CHILD_CHECK(uodp_umem_unlock(u) == 0);
	T_CHILD_CHECK(uodp_umem_stats(u, &st, sizeof(st)) == 0);
	T_CHILD_CHECK(st.mapped_now == 0 && st.table_bytes == 0);
	/* The region's table fails after the pins were taken: given back. */
	pgt_test_fail_alloc(2);
	T_CHILD_CHECK(fault_child(u, buf, 4 * page, UODP_ACCESS_WRITE) ==
		      -ENOMEM);
	pgt_test_fail_alloc(0);
	T_CHILD_CHECK(!mlock_works() || vmlck_kb() == base);
	T_CHILD_CHECK(fault_child(u, buf, 4 * page, UODP_ACCESS_WRITE) == 4);
	T_CHILD_CHECK(uodp_umem_release(u) == 0);
	T_CHILD_CHECK(!mlock_works() || vmlck_kb() == base);
	T_CHILD_CHECK(uodp_ctx_destroy(ctx) == 0);
	munmap(buf, 4 * page);
}

static void test_pinning_enomem(void **state)
{
	(void)state;
	(void)mlock_works(); /* probed in the parent */
	t_child_ok(enomem_child, NULL);
}

static void memlock_child(void *arg)
{
	const size_t limit_pages = 16;
	static const struct uodp_ctx_ops ops = { 0 };
	struct rlimit rl;
	struct uodp_ctx *ctx = NULL;
	struct uodp_umem *u = NULL;
	long kb = (long)(page / 1024);
	uint64_t e = 0;
	char *buf;

	(void)arg;
	T_CHILD_CHECK(drop_ipc_lock());
	/* Locks are not inherited: the child starts with none. */
	T_CHILD_CHECK(vmlck_kb() == 0);
	T_CHILD_CHECK(getrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	rl.rlim_cur = limit_pages * page;
	T_CHILD_CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	buf = mmap(NULL, 32 * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	T_CHILD_CHECK(buf != MAP_FAILED);
	T_CHILD_CHECK(uodp_ctx_create(&ops, UODP_CTX_MANUAL | UODP_CTX_PIN,
				      &ctx) == 0);
	T_CHILD_CHECK(uodp_umem_get(ctx, buf, 32 * page, UODP_ACCESS_ALL, &u) ==
		      0);
	/* The pages up to the limit, then -ENOMEM. */
	T_CHILD_CHECK(fault_child(u, buf, 32 * page, UODP_ACCESS_WRITE) ==
		      (int64_t)limit_pages);
	T_CHILD_CHECK(vmlck_kb() == (long)limit_pages * kb);
	T_CHILD_CHECK(fault_child(u, t_pg(buf, limit_pages), page,
				  UODP_ACCESS_WRITE) == -ENOMEM);
	T_CHILD_CHECK(uodp_umem_lock(u) == 0);
	T_CHILD_CHECK(uodp_umem_entries_locked(u, t_pg(buf, limit_pages), 1,
					       &e) == 0 &&
		      e == 0);
	T_CHILD_CHECK(
		uodp_umem_entries_locked(u, t_pg(buf, limit_pages - 1), 1,
					 &e) == 0 &&
		e == t_want(t_pg(buf, limit_pages - 1), UODP_ACCESS_WRITE));
	T_CHILD_CHECK(uodp_umem_unlock(u) == 0);
	/* Unmapping makes room again. */
	T_CHILD_CHECK(uodp_umem_unmap(u, buf, 4 * page) == 4);
	T_CHILD_CHECK(vmlck_kb() == (long)(limit_pages - 4) * kb);
	T_CHILD_CHECK(fault_child(u, t_pg(buf, limit_pages), 8 * page,
				  UODP_ACCESS_READ) == 4);
	T_CHILD_CHECK(uodp_umem_release(u) == 0);
	T_CHILD_CHECK(vmlck_kb() == 0);
	T_CHILD_CHECK(uodp_ctx_destroy(ctx) == 0);
}

static void test_pinning_memlock_limit(void **state)
{
	(void)state;
	if (!mlock_works())
		t_skip("mlock() is a no-op here (sanitizer runtime)");
	t_child_ok(memlock_child, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pinning),
		cmocka_unit_test(test_pinning_with_callback),
		cmocka_unit_test(test_pinning_overlap),
		cmocka_unit_test(test_pinning_cross_context),
		cmocka_unit_test(test_pinning_enomem),
		cmocka_unit_test(test_destroy_pinned),
		cmocka_unit_test(test_pinned_mremap_monitor),
		cmocka_unit_test(test_pinned_mremap_manual),
		cmocka_unit_test(test_pinned_mremap_grow),
		cmocka_unit_test(test_pinned_mremap_shrink),
		cmocka_unit_test(test_pinned_mremap_failed),
		cmocka_unit_test(test_pinned_madvise_refused),
		cmocka_unit_test(test_pinned_moved_many_runs),
		cmocka_unit_test(test_pinned_mremap_release_race),
		cmocka_unit_test(test_pinned_mremap_destroy_race),
		cmocka_unit_test(test_pinned_mremap_unmap_race),
		cmocka_unit_test(test_pinned_mremap_inval_race),
		cmocka_unit_test(test_pinned_mremap_start_race),
		cmocka_unit_test(test_release_under_fence_lock),
		cmocka_unit_test(test_pinning_memlock_limit),
		cmocka_unit_test(test_pinned_deferred_hull),
		cmocka_unit_test(test_pinned_deferred_remove_hull),
	};

	page = t_page_size();
	return t_run(tests, NULL, NULL);
}

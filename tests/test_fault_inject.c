/* SPDX-License-Identifier: MIT */
/*
 * test_fault_inject.c - make the N-th allocation, thread creation,
 * userfaultfd call, ioctl, mmap or open inside the library fail, for every
 * N until the flow no longer reaches the N-th call, and check that:
 *   - every failure surfaces as an errno the header documents for the call
 *     that returned it (include/uodp.h, include/uodp_dev.h);
 *   - the failed call changed nothing: the same call made again (the
 *     injection is one-shot) succeeds and the flow goes on to the end,
 *     with the data and translations it expects;
 *   - nothing leaks: library allocations balance (counted by the wrappers),
 *     descriptors and threads are back to their count before the flow,
 *     and LeakSanitizer is silent in the ASan build;
 *   - nothing hangs: each run has an alarm.
 * Each run is a forked child, so a crash, a leak report or a hang names
 * its class and N. Flows: the demo's (engine on a manual context, then the
 * device), and one per layer: lib (page table), engine, notifier (kernel
 * monitor), device sync (manual and on the monitor), device queue. The
 * wrappers come from src/lib/finject.c, linked with --wrap
 * (fuzz/CMakeLists.txt); without UODP_FAULT_INJECT the program skips (77).
 *
 * A sweep in which no injected failure ever fired proves nothing (the
 * wrappers not linked in, or a flow that no longer reaches the calls):
 * each plan names the classes its flow must reach, and every sweep of
 * those classes must have failed at least one call.
 *
 * The plans on the kernel monitor skip (tests/helpers.h, t_skip) where it
 * is unavailable: no userfaultfd, or forbidden (vm.unprivileged_userfaultfd
 * without UFFD_USER_MODE_ONLY, seccomp). That is probed once, in a child
 * (the parent must not start the process-wide notifier its forked runs
 * would inherit without its threads); only -ENOSYS and -EPERM mean
 * "unavailable", anything else fails the probe.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h" /* skipping, the monitor probe, t_in_child */
#include "uodp_dev.h"

#ifdef UODP_DEBUG
#define UODP_DEBUG_BUILD 1
#else
#define UODP_DEBUG_BUILD 0
#endif

#ifdef UODP_FAULT_INJECT

#include "lib/finject.h"
#include "lib/pgtable.h"

/* Why 10 s: the longest flow takes well under a second (map_and_lock
 * waits at most 2 s) and runs twice (warm-up); a run that takes ten is
 * stuck on a lock or a lost wakeup. */
#define RUN_ALARM_S 10
/* A bound on N in case a flow's call count does not converge (a worker
 * thread allocating forever would otherwise make the sweep endless). */
#define MAX_N 400

static long page;

/* ---- child-side checks (no cmocka in the child) ---- */

static const char *cur_step = "?";
static int run_errors;

static void ffail(const char *fmt, ...)
{
	va_list ap;

	finject_pause();
	va_start(ap, fmt);
	fprintf(stderr, "  [%s] ", cur_step);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	run_errors++;
	finject_resume();
}

/* Errno lists, as the headers give them for each call. */
#define E(...) ((const int[]){ __VA_ARGS__, 0 })
/* Engine conventions: common to functions listing -ECHILD etc. */
static const int *const ERR_CTX_CREATE = E(EINVAL, ENOSYS, ENOMEM, EDEADLK);
static const int *const ERR_UMEM_GET = E(EINVAL, ERANGE, ENODEV, EDEADLK,
					 ECHILD, ENOMEM, ENOSYS, EPERM, EBUSY,
					 EOPNOTSUPP, EMFILE, ENFILE, EAGAIN);
static const int *const ERR_UMEM_GET_MANUAL =
	E(EINVAL, ERANGE, ENODEV, EDEADLK, ECHILD, ENOMEM);
static const int *const ERR_MAP_AND_LOCK = E(EINVAL, EPERM, ERANGE, EFAULT,
					     EACCES, EBUSY, ENODEV, ENOMEM,
					     EOPNOTSUPP, EDEADLK, ECHILD);
static const int *const ERR_MAP_AND_LOCK_MANUAL =
	E(EINVAL, EPERM, ERANGE, EFAULT, EACCES, EBUSY, ENODEV, ENOMEM, EDEADLK,
	  ECHILD);
static const int *const ERR_INVAL = E(EINVAL, ERANGE, EDEADLK, ECHILD);
static const int *const ERR_RELEASE = E(EINVAL, EDEADLK, ECHILD);
static const int *const ERR_STATS = E(EINVAL, EDEADLK, ECHILD);
static const int *const ERR_DEV_OPEN =
	E(EINVAL, ENOMEM, ECHILD, ENOSYS, EPERM, EDEADLK);
/* uodp_umem_get()'s errors as the device translates them: -EPERM means
 * only "the key's rights" in uodp_dev.h (a forbidden userfaultfd is
 * -ENOSYS there), -ERANGE only "outside the key's region". */
static const int *const ERR_DEV_REG = E(EINVAL, ENOMEM, ENOSPC, ECHILD, ENODEV,
					EDEADLK, ENOSYS, EBUSY, EOPNOTSUPP,
					EMFILE, ENFILE, EAGAIN);
/* Device operations: the conventions' common list. */
static const int *const ERR_DEV_OP = E(EINVAL, ENOENT, ERANGE, EPERM, EFAULT,
				       EACCES, ENOMEM, ENODEV, ECHILD, EBUSY,
				       EOPNOTSUPP);
static const int *const ERR_DEV_OP_MANUAL = E(
	EINVAL, ENOENT, ERANGE, EPERM, EFAULT, EACCES, ENOMEM, ENODEV, ECHILD);
static const int *const ERR_QUEUE_CREATE = E(EINVAL, ENOMEM, EAGAIN, ECHILD);
static const int *const ERR_POST =
	E(EINVAL, ENOENT, ERANGE, EPERM, ENOSPC, ECHILD);
static const int *const ERR_DEREG = E(EINVAL, ENOENT, ECHILD);
static const int *const ERR_TRIM = E(EINVAL, ENOENT, ECHILD);

/* The errno injected in this run (0: none), and its class (-1: none). */
static int inj_err;
static int inj_cls = -1;

/*
 * Does @r name a cause the injected failure can have? -ENOSYS says "a
 * kernel facility is missing or forbidden": right for a refused or
 * forbidden call (EINVAL, EPERM, ENOSYS), wrong for a shortage (issue 12,
 * finding 18: ENOMEM in UFFDIO_API became -ENOSYS). A failed thread
 * creation is -EAGAIN, "no thread could be created", and nothing else
 * (finding 18: its errno must say what happened); -EAGAIN for a failed
 * allocation names a cause that did not happen either.
 */
static bool right_cause(long r)
{
	if (inj_cls == FI_THREAD)
		return r == -EAGAIN;
	if (r == -EAGAIN && inj_cls == FI_ALLOC)
		return false;
	if (r == -ENOSYS)
		return !inj_err || inj_err == EINVAL || inj_err == EPERM ||
		       inj_err == ENOSYS;
	return true;
}

static bool documented(const int *list, long r)
{
	for (; *list; list++)
		if (r == -*list)
			return true;
	return false;
}

/*
 * Run a library call; on error, check the errno is documented and call it
 * again: a failed call must have changed nothing, and the injection is
 * one-shot, so the second call must succeed. @again is the number of
 * further attempts allowed (a failure injected on another thread may hit a
 * retry too).
 */
#define CALL(step, list, expr)                                                \
	({                                                                    \
		long r_ = (long)(expr);                                       \
		int t_ = 0;                                                   \
		cur_step = step;                                              \
		while (r_ < 0) {                                              \
			if (!documented(list, r_))                            \
				ffail("undocumented error %ld (%s)", r_,      \
				      strerror((int)-r_));                    \
			else if (!right_cause(r_))                            \
				ffail("%ld (%s) for an injected %s", r_,      \
				      strerror((int)-r_), strerror(inj_err)); \
			if (++t_ > 3) {                                       \
				ffail("still failing after %d retries: %ld",  \
				      t_, r_);                                \
				break;                                        \
			}                                                     \
			injected_seen++;                                      \
			r_ = (long)(expr);                                    \
		}                                                             \
		r_;                                                           \
	})

static int injected_seen;

/* ---- leak accounting ---- */

static int count_dir(const char *path)
{
	DIR *d;
	struct dirent *e;
	int n = 0;

	finject_pause();
	d = opendir(path);
	if (d) {
		while ((e = readdir(d)))
			n += e->d_name[0] != '.';
		closedir(d);
	}
	finject_resume();
	return n;
}

/* ---- flows ---- */

static void *pool; /* 16 pages, mapped by the parent before forking */
#define POOL_PAGES 16

static atomic_int ninval;

static void on_invalidate(struct uodp_umem *umem, const struct uodp_range *r,
			  void *priv)
{
	(void)umem;
	(void)r;
	(void)priv;
	atomic_fetch_add(&ninval, 1);
}

static char *pg(int i)
{
	return (char *)pool + (size_t)i * (size_t)page;
}

static void check_entries(struct uodp_umem *umem, int first, int n, bool mapped)
{
	uint64_t e[POOL_PAGES];
	int i, r;

	if (uodp_umem_lock(umem)) {
		ffail("lock");
		return;
	}
	r = uodp_umem_entries_locked(umem, pg(first), (size_t)n, e);
	if (r)
		ffail("entries_locked %d", r);
	for (i = 0; !r && i < n; i++) {
		bool m = e[i] & UODP_ENTRY_ACCESS_MASK;

		if (m != mapped)
			ffail("page %d %s after the flow said %s", first + i,
			      m ? "mapped" : "unmapped",
			      mapped ? "mapped" : "unmapped");
		if (m && (e[i] & UODP_ENTRY_ADDR_MASK) !=
				 (uint64_t)(uintptr_t)pg(first + i))
			ffail("page %d entry %#llx names another page",
			      first + i, (unsigned long long)e[i]);
	}
	uodp_umem_unlock(umem);
}

/* The engine on a context: the demo's first half. */
static void flow_engine(unsigned flags)
{
	const bool manual = flags & UODP_CTX_MANUAL;
	struct uodp_ctx_ops ops = { .invalidate = on_invalidate };
	const int *get_err = manual ? ERR_UMEM_GET_MANUAL : ERR_UMEM_GET;
	const int *map_err = manual ? ERR_MAP_AND_LOCK_MANUAL :
				      ERR_MAP_AND_LOCK;
	struct uodp_ctx *ctx = NULL;
	struct uodp_umem *umem = NULL;
	struct uodp_umem_stats st;
	struct uodp_range tok;
	void *dirty[POOL_PAGES];
	int64_t n;
	long r;

	r = CALL("ctx_create", ERR_CTX_CREATE,
		 uodp_ctx_create(&ops, flags, &ctx));
	if (r < 0)
		return;
	r = CALL("umem_get", get_err,
		 uodp_umem_get(ctx, pool, POOL_PAGES * page, UODP_ACCESS_ALL,
			       &umem));
	if (r < 0)
		goto destroy;
	n = CALL("map_and_lock", map_err,
		 uodp_umem_map_and_lock(umem, pool, POOL_PAGES * page,
					UODP_ACCESS_WRITE, 2000));
	if (n > 0) {
		uint64_t e[POOL_PAGES];

		if (n != POOL_PAGES)
			ffail("mapped %lld pages, not %d", (long long)n,
			      POOL_PAGES);
		if (uodp_umem_entries_locked(umem, pool, (size_t)n, e))
			ffail("entries_locked");
		uodp_umem_unlock(umem);
		check_entries(umem, 0, POOL_PAGES, true);
	}
	/* Invalidations have no -ENOMEM: they must work whatever fails. */
	atomic_store(&ninval, 0);
	CALL("invalidate_range", ERR_INVAL,
	     uodp_invalidate_range(ctx, pg(4), 4 * page, UODP_EVENT_MANUAL));
	if (!atomic_load(&ninval))
		ffail("no callback for an invalidation of mapped pages");
	check_entries(umem, 4, 4, false);
	uodp_range_init(&tok, pg(8), 4 * page, UODP_EVENT_MANUAL);
	r = CALL("invalidate_start", ERR_INVAL,
		 uodp_invalidate_range_start(ctx, &tok));
	if (r == 0) {
		if (uodp_ctx_sync(ctx))
			ffail("ctx_sync true between start and end");
		CALL("invalidate_end", ERR_INVAL,
		     uodp_invalidate_range_end(&tok));
	}
	check_entries(umem, 8, 4, false);
	/* Faults after the invalidations map the pages again. */
	n = CALL("map_and_lock again", map_err,
		 uodp_umem_map_and_lock(umem, pg(4), 8 * page, UODP_ACCESS_READ,
					2000));
	if (n > 0)
		uodp_umem_unlock(umem);
	CALL("stats", ERR_STATS, uodp_umem_stats(umem, &st, sizeof(st)));
	CALL("dirty_take", ERR_RELEASE,
	     uodp_umem_dirty_take(umem, dirty, POOL_PAGES));
	CALL("unmap", ERR_RELEASE, uodp_umem_unmap(umem, pool, page));
	CALL("release", ERR_RELEASE, uodp_umem_release(umem));
destroy:
	CALL("ctx_destroy", ERR_RELEASE, uodp_ctx_destroy(ctx));
}

static void fill(char *p, size_t n, unsigned seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (char)(seed * 131 + i * 7);
}

/* The device, synchronous calls (the demo's second half). */
static void flow_device(unsigned flags)
{
	const bool manual = flags & UODP_DEV_MANUAL;
	const int *op_err = manual ? ERR_DEV_OP_MANUAL : ERR_DEV_OP;
	struct uodp_dev_attr attr = { .flags = flags, .fault_around = 4 };
	struct uodp_dev *dev = NULL;
	uint32_t key = 0, ikey = 0;
	uint8_t states[POOL_PAGES];
	char in[3 * 4096], out[3 * 4096];
	uint64_t old = 0, va = (uint64_t)(uintptr_t)pool;
	size_t len = (size_t)(page < 4096 ? 3 * page : 3 * 4096);
	long r;
	int i;

	r = CALL("dev_open", ERR_DEV_OPEN, uodp_dev_open(&attr, &dev));
	if (r < 0)
		return;
	r = CALL("reg_mr", ERR_DEV_REG,
		 uodp_dev_reg_mr(dev, va, POOL_PAGES * page,
				 UODP_DEV_ACCESS_ALL, &key));
	if (r < 0)
		goto close;
	fill(in, len, 7);
	if (CALL("dev_write", op_err,
		 uodp_dev_write(dev, key, va + 100, in, len)) == 0) {
		if (memcmp(pg(0) + 100, in, len))
			ffail("device write did not reach memory");
	}
	memset(out, 0, sizeof(out));
	if (CALL("dev_read", op_err,
		 uodp_dev_read(dev, key, va + 100, out, len)) == 0) {
		if (memcmp(out, in, len))
			ffail("device read returned other bytes");
	}
	*(uint64_t *)pg(5) = 40;
	CALL("fetch_add", op_err,
	     uodp_dev_fetch_add(dev, key, va + 5 * page, 2, &old));
	CALL("cmp_swap", op_err,
	     uodp_dev_cmp_swap(dev, key, va + 5 * page, 42, 7, &old));
	if (*(uint64_t *)pg(5) != 7)
		ffail("atomics: %llu, not 7",
		      (unsigned long long)*(uint64_t *)pg(5));
	CALL("copy", op_err,
	     uodp_dev_copy(dev, key, va + 8 * page, key, va + 100, len));
	if (memcmp(pg(8), in, len))
		ffail("device copy wrong");
	CALL("prefetch", op_err,
	     uodp_dev_prefetch(dev, key, va, POOL_PAGES * page,
			       UODP_DEV_PREFETCH_WRITE));
	/* An invalidation must clear the device page table, whatever
	 * failed before it. */
	CALL("invalidate_range", ERR_INVAL,
	     uodp_invalidate_range(uodp_dev_ctx(dev), pg(2), 6 * page,
				   UODP_EVENT_MANUAL));
	if (CALL("snapshot", op_err,
		 uodp_dev_snapshot(dev, key, va, POOL_PAGES * page, states)) ==
	    POOL_PAGES) {
		for (i = 2; i < 8; i++)
			if (states[i] != UODP_DEV_PAGE_NONE)
				ffail("page %d still in the device page table "
				      "after its invalidation",
				      i);
	}
	/* The implicit region: children are allocated by faults. */
	r = CALL("reg_implicit", ERR_DEV_REG,
		 uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_ALL, &ikey));
	if (r == 0) {
		if (CALL("implicit read", op_err,
			 uodp_dev_read(dev, ikey, va + 100, out, len)) == 0 &&
		    memcmp(out, in, len))
			ffail("implicit read returned other bytes");
		CALL("invalidate_range 2", ERR_INVAL,
		     uodp_invalidate_range(uodp_dev_ctx(dev), pool,
					   POOL_PAGES * page,
					   UODP_EVENT_MANUAL));
		CALL("trim", ERR_TRIM, uodp_dev_mr_trim(dev, ikey));
		CALL("dereg implicit", ERR_DEREG, uodp_dev_dereg_mr(dev, ikey));
	}
	CALL("dereg", ERR_DEREG, uodp_dev_dereg_mr(dev, key));
close:
	CALL("dev_close", ERR_RELEASE, uodp_dev_close(dev));
}

/* The device queue: requests complete with documented statuses. */
static void flow_queue(unsigned flags)
{
	const bool manual = flags & UODP_DEV_MANUAL;
	const int *op_err = manual ? ERR_DEV_OP_MANUAL : ERR_DEV_OP;
	struct uodp_dev_attr attr = { .flags = flags, .fault_around = 2 };
	struct uodp_dev *dev = NULL;
	struct uodp_dev_queue *q = NULL;
	struct uodp_dev_wr wr;
	struct uodp_dev_wc wc[4];
	uint64_t va = (uint64_t)(uintptr_t)pool;
	char in[256], out[256];
	uint32_t key = 0;
	int i, k, got;
	long r;

	r = CALL("dev_open", ERR_DEV_OPEN, uodp_dev_open(&attr, &dev));
	if (r < 0)
		return;
	r = CALL("reg_mr", ERR_DEV_REG,
		 uodp_dev_reg_mr(dev, va, POOL_PAGES * page,
				 UODP_DEV_ACCESS_ALL, &key));
	if (r < 0)
		goto close;
	r = CALL("queue_create", ERR_QUEUE_CREATE,
		 uodp_dev_queue_create(dev, 8, &q));
	if (r < 0)
		goto dereg;
	fill(in, sizeof(in), 3);
	for (i = 0; i < 3; i++) {
		memset(&wr, 0, sizeof(wr));
		wr.wr_id = (uint64_t)i;
		wr.key = key;
		wr.len = sizeof(in);
		if (i == 0) {
			wr.opcode = UODP_DEV_OP_WRITE;
			wr.va = va + 9 * page + 10;
			wr.buf = in;
		} else if (i == 1) {
			wr.opcode = UODP_DEV_OP_PREFETCH_WRITE;
			wr.va = va + 12 * page;
			wr.len = 2 * page;
		} else {
			wr.opcode = UODP_DEV_OP_FETCH_ADD;
			wr.va = va + 14 * page;
			wr.compare_add = 1;
		}
		/* A completion with an error is posted again: the
		 * failure must not have changed what the request sees. */
		for (k = 0; k < 4; k++) {
			if (CALL("post", ERR_POST, uodp_dev_post(q, &wr)) < 0)
				break;
			got = (int)CALL("poll_wait", ERR_POST,
					uodp_dev_poll_wait(q, wc, 4, 10000));
			if (got != 1) {
				ffail("poll_wait gave %d completions", got);
				break;
			}
			cur_step = "completion";
			if (wc[0].status == 0)
				break;
			if (!documented(op_err, wc[0].status))
				ffail("completion status %d undocumented",
				      wc[0].status);
		}
	}
	if (memcmp(pg(9) + 10, in, sizeof(in)))
		ffail("queued write did not reach memory");
	memset(&wr, 0, sizeof(wr));
	wr.opcode = UODP_DEV_OP_READ;
	wr.key = key;
	wr.va = va + 9 * page + 10;
	wr.len = sizeof(out);
	wr.buf = out;
	for (k = 0; k < 4; k++) {
		if (CALL("post read", ERR_POST, uodp_dev_post(q, &wr)) < 0)
			break;
		got = (int)CALL("poll_wait", ERR_POST,
				uodp_dev_poll_wait(q, wc, 4, 10000));
		if (got != 1 || wc[0].status == 0)
			break;
		if (!documented(op_err, wc[0].status))
			ffail("read completion status %d undocumented",
			      wc[0].status);
	}
	if (memcmp(out, in, sizeof(out)))
		ffail("queued read returned other bytes");
	CALL("queue_destroy", ERR_RELEASE, uodp_dev_queue_destroy(q));
dereg:
	CALL("dereg", ERR_DEREG, uodp_dev_dereg_mr(dev, key));
close:
	CALL("dev_close", ERR_RELEASE, uodp_dev_close(dev));
}

/* The lib layer: the page table reports -ENOMEM and stays unchanged. */
static void flow_lib(unsigned unused)
{
	struct pgt t;
	uint64_t i, room;
	long r;

	(void)unused;
	pgt_init(&t, 1u << 20);
	for (i = 0; i < 2048; i += 97) {
		r = CALL("pgt_set", E(ENOMEM), pgt_set(&t, i * 37, i + 1));
		if (r)
			break;
	}
	for (i = 0; i < 2048; i += 97)
		if (pgt_get(&t, i * 37) != i + 1)
			ffail("pgt word %llu lost", (unsigned long long)i);
	cur_step = "pgt_leaf_slot";
	if (!pgt_leaf_slot(&t, 900000, &room) &&
	    !pgt_leaf_slot(&t, 900000, &room))
		ffail("pgt_leaf_slot failed twice");
	pgt_leaf_account(&t, 900000, 0);
	for (i = 0; i < 2048; i += 97)
		pgt_set(&t, i * 37, 0);
	pgt_destroy(&t);
}

static void flow_demo(unsigned unused)
{
	(void)unused;
	flow_engine(UODP_CTX_MANUAL);
	flow_device(UODP_DEV_MANUAL);
}

/* ---- the sweep ---- */

struct sweep_stats {
	int runs, fired;
};

/*
 * One run in a child: arm @cls at @n (0: not armed), run @flow, check
 * the balance. Exit status: 0 ok; 2 the injection never fired (the sweep
 * is over); 1 a check failed. With ASan, LeakSanitizer exits non-zero.
 */
static int run_child(void (*flow)(unsigned), unsigned flags,
		     enum finject_class cls, unsigned long n, int err,
		     bool warm)
{
	int fds0, thr0, fds1, thr1;
	long live0, live1;
	bool fired;

	alarm(RUN_ALARM_S);
	/* Warm pass: a run without injection first, so that process-wide
	 * state the library creates on first use and keeps (the notifier's
	 * threads, descriptors and tables) is not counted as a leak of the
	 * flow. Cold pass: the first use itself fails; the balance is then
	 * not checked (LeakSanitizer still is). */
	if (warm) {
		flow(flags);
		if (run_errors)
			return 1;
	}
	fds0 = count_dir("/proc/self/fd");
	thr0 = count_dir("/proc/self/task");
	live0 = finject_live_allocs();
	if (n)
		finject_arm(cls, n, err);
	inj_err = n ? err : 0;
	inj_cls = n ? (int)cls : -1;
	flow(flags);
	fired = n && finject_failures(cls) > 0;
	finject_disarm_all();
	cur_step = "after the flow";
	/* Worker threads exit after close returns: give them a moment. */
	for (int i = 0; i < 100; i++) {
		thr1 = count_dir("/proc/self/task");
		if (thr1 <= thr0)
			break;
		usleep(10000);
	}
	fds1 = count_dir("/proc/self/fd");
	live1 = finject_live_allocs();
	if (!warm)
		fds1 = fds0, thr1 = thr0, live1 = live0;
	if (fds1 != fds0)
		ffail("descriptors: %d before, %d after", fds0, fds1);
	if (thr1 > thr0)
		ffail("threads: %d before, %d after", thr0, thr1);
	/* A -DUODP_DEBUG=ON build keeps released regions and contexts
	 * poisoned, never freed, to catch a handle used again (uodp.h):
	 * there the balance cannot hold. The other builds check it, and
	 * the ASan stage's LeakSanitizer checks every build's flows too. */
	if (live1 > live0 && !UODP_DEBUG_BUILD)
		ffail("library allocations: %ld live before, %ld after", live0,
		      live1);
	if (run_errors)
		return 1;
	return n && !fired ? 2 : 0;
}

/* Wait for a run; on a hang, with FI_GDB set in the environment, print
 * every thread's stack (gdb) before the alarm kills it. */
static int wait_child(pid_t pid, int *status)
{
	char cmd[512];
	int i;

	for (i = 0; i < (RUN_ALARM_S - 1) * 100; i++) {
		pid_t r = waitpid(pid, status, WNOHANG);

		if (r == pid)
			return 0;
		if (r < 0)
			return -1;
		usleep(10000);
	}
	/* Each thread's name, state and kernel wait channel (a thread in
	 * D state waiting for a userfaultfd event cannot be attached). */
	snprintf(cmd, sizeof(cmd),
		 "for t in /proc/%d/task/*; do echo \"  $(cat $t/comm) "
		 "$(awk '/^State/ {print $2}' $t/status) $(cat $t/wchan)\"; "
		 "done >&2",
		 (int)pid);
	if (system(cmd) < 0)
		perror("proc");
	if (getenv("FI_GDB")) {
		snprintf(cmd, sizeof(cmd),
			 "timeout -s KILL 20 gdb -p %d -batch "
			 "-ex 'thread apply all bt' "
			 "2>/dev/null | grep -E '^(#|Thread)' >&2",
			 (int)pid);
		if (system(cmd) < 0)
			perror("gdb");
	}
	return waitpid(pid, status, 0) == pid ? 0 : -1;
}

static int sweep(const char *name, void (*flow)(unsigned), unsigned flags,
		 enum finject_class cls, int err, bool warm,
		 struct sweep_stats *s)
{
	unsigned long n;
	int status, bad = 0;
	pid_t pid;

	/* FI_ONLY=<class>:<n> runs that one case (with its errnos). */
	const char *only = getenv("FI_ONLY");
	unsigned long only_n = 0;

	if (only) {
		size_t l = strlen(finject_class_name(cls));

		if (strncmp(only, finject_class_name(cls), l) || only[l] != ':')
			return 0;
		only_n = strtoul(only + l + 1, NULL, 0);
	}
	for (n = only_n; n <= MAX_N; n++) {
		if (only && n != only_n)
			break;
		fflush(NULL);
		pid = fork();
		if (pid < 0)
			return -1;
		if (pid == 0)
			exit(run_child(flow, flags, cls, n, err, warm));
		if (wait_child(pid, &status))
			return -1;
		s->runs++;
		if (WIFEXITED(status) && WEXITSTATUS(status) == 2)
			break; /* N beyond the calls the flow makes */
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			s->fired += n > 0;
			continue;
		}
		bad++;
		if (WIFSIGNALED(status))
			fprintf(stderr,
				"%s%s: %s #%lu (errno %d): killed by signal "
				"%d%s\n",
				name, warm ? " (warm)" : "",
				finject_class_name(cls), n, err,
				WTERMSIG(status),
				WTERMSIG(status) == SIGALRM ? " (hang)" : "");
		else
			fprintf(stderr,
				"%s%s: %s #%lu (errno %d): exit status %d\n",
				name, warm ? " (warm)" : "",
				finject_class_name(cls), n, err,
				WEXITSTATUS(status));
		if (n == 0)
			break; /* the flow fails without injection */
	}
	if (n > MAX_N)
		fprintf(stderr, "%s: %s: more than %d calls, sweep cut\n", name,
			finject_class_name(cls), MAX_N);
	return bad;
}

struct plan {
	const char *name;
	void (*flow)(unsigned);
	unsigned flags;
	/* Classes (1 << class) the flow must reach: each of their sweeps,
	 * cold and warm, every errno, must inject at least one failure. */
	unsigned must_fire;
	bool monitor; /* needs the kernel monitor (else skipped) */
};

#define FIRE(c) (1u << (c))
/* What every plan on the kernel monitor reaches: the notifier's threads
 * (their stacks mmap()ed), its userfaultfd and its ioctls, and the reads
 * of /proc/self/maps. */
#define FIRE_MONITOR                                                         \
	(FIRE(FI_ALLOC) | FIRE(FI_THREAD) | FIRE(FI_UFFD) | FIRE(FI_IOCTL) | \
	 FIRE(FI_MMAP) | FIRE(FI_OPEN))

/* Is the kernel monitor usable here? Probed once, in a child. */
static void monitor_probe_child(void *arg)
{
	(void)arg;
	finject_pause();
	_exit(t_monitor_available() ? 0 : T_EXIT_SKIP);
}

static bool monitor_here(void)
{
	static int avail = -1;
	char err[512];
	int st;

	if (avail >= 0)
		return avail;
	st = t_in_child(monitor_probe_child, NULL, err, sizeof(err));
	if (err[0])
		fprintf(stderr, "%s", err);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != T_EXIT_SKIP)
		fail_msg("monitor probe: exit status %d", WEXITSTATUS(st));
	avail = WEXITSTATUS(st) == 0;
	return avail;
}

/* Which errnos each class is swept with: the default, and the ones a
 * real system gives that the library must keep apart (ENOMEM in an
 * ioctl is not "kernel feature missing"; EPERM from a seccomp filter). */
static const int class_errs[FI_NCLASS][3] = {
	[FI_ALLOC] = { ENOMEM },
	[FI_THREAD] = { EAGAIN, EPERM },
	[FI_UFFD] = { EMFILE, ENOMEM, EPERM },
	[FI_IOCTL] = { ENOMEM, EINVAL, EPERM },
	[FI_MMAP] = { ENOMEM },
	[FI_OPEN] = { EMFILE, ENFILE },
};

static void run_plan(const struct plan *p)
{
	struct sweep_stats s = { 0, 0 };
	int cls, e, warm, bad = 0, unfired = 0;

	/* FI_PLAN=<name> runs one plan only (debugging). */
	if (getenv("FI_PLAN") && strcmp(getenv("FI_PLAN"), p->name))
		return;
	if (p->monitor && !monitor_here())
		t_skip("the kernel monitor is unavailable here (userfaultfd "
		       "missing or forbidden)");

	for (warm = 0; warm < 2; warm++)
		for (cls = 0; cls < FI_NCLASS; cls++)
			for (e = 0; e < 3 && class_errs[cls][e]; e++) {
				int fired = s.fired;

				bad += sweep(p->name, p->flow, p->flags,
					     (enum finject_class)cls,
					     class_errs[cls][e], warm, &s);
				fired = s.fired - fired;
				if (fired || !(p->must_fire & FIRE(cls)) ||
				    getenv("FI_ONLY"))
					continue;
				fprintf(stderr,
					"%s%s: %s (errno %d): no injected "
					"failure fired in the sweep\n",
					p->name, warm ? " (warm)" : "",
					finject_class_name(
						(enum finject_class)cls),
					class_errs[cls][e]);
				unfired++;
			}
	printf("%s: %d runs, %d with an injected failure, %d bad, %d sweeps "
	       "that should have and did not inject\n",
	       p->name, s.runs, s.fired, bad, unfired);
	assert_int_equal(bad, 0);
	assert_int_equal(unfired, 0);
}

static void test_fi_demo(void **state)
{
	static const struct plan p = { "demo", flow_demo, 0, FIRE(FI_ALLOC),
				       false };

	(void)state;
	run_plan(&p);
}

static void test_fi_lib(void **state)
{
	static const struct plan p = { "lib", flow_lib, 0, FIRE(FI_ALLOC),
				       false };

	(void)state;
	run_plan(&p);
}

static void test_fi_engine(void **state)
{
	static const struct plan p = { "engine", flow_engine, UODP_CTX_MANUAL,
				       FIRE(FI_ALLOC), false };

	(void)state;
	run_plan(&p);
}

static void test_fi_notifier(void **state)
{
	static const struct plan p = { "notifier", flow_engine, 0, FIRE_MONITOR,
				       true };

	(void)state;
	run_plan(&p);
}

static void test_fi_device(void **state)
{
	static const struct plan p = { "device", flow_device, UODP_DEV_MANUAL,
				       FIRE(FI_ALLOC), false };

	(void)state;
	run_plan(&p);
}

static void test_fi_device_monitor(void **state)
{
	static const struct plan p = { "device-monitor", flow_device, 0,
				       FIRE_MONITOR, true };

	(void)state;
	run_plan(&p);
}

static void test_fi_queue(void **state)
{
	static const struct plan p = { "queue", flow_queue, UODP_DEV_MANUAL,
				       FIRE(FI_ALLOC) | FIRE(FI_THREAD),
				       false };

	(void)state;
	run_plan(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fi_lib),
		cmocka_unit_test(test_fi_engine),
		cmocka_unit_test(test_fi_notifier),
		cmocka_unit_test(test_fi_device),
		cmocka_unit_test(test_fi_device_monitor),
		cmocka_unit_test(test_fi_queue),
		cmocka_unit_test(test_fi_demo),
	};

	page = sysconf(_SC_PAGESIZE);
	pool = mmap(NULL, POOL_PAGES * page, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pool == MAP_FAILED)
		return 1;
	memset(pool, 0x5a, POOL_PAGES * page);
	return t_run(tests, NULL, NULL);
}

#else /* !UODP_FAULT_INJECT */

int main(void)
{
	printf("fault injection not built (UODP_FAULT_INJECT=OFF): skip\n");
	return 77;
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * helpers.h - what every engine test program shares (in the manner of
 * liburing's test/helpers.h): memory, a context whose driver records every
 * callback, fault and entry shortcuts, skipping, and the gates that stop a
 * thread inside the engine (src/engine/internal.h test hooks).
 *
 * One test program = one translation unit, so everything here is static.
 *
 * Skipping. CTest is told (tests/CMakeLists.txt, SKIP_RETURN_CODE) that
 * exit status 77 means "skipped". A program that cannot run at all (no
 * kernel monitor) calls t_skip_program() before its group; a test that
 * cannot run here calls t_skip(why), and t_run() exits 77 when every test
 * of the group skipped and none failed. A group where only some tests skip
 * exits 0 and lists them: the tests that ran did pass.
 */
#ifndef UODP_TEST_HELPERS_H
#define UODP_TEST_HELPERS_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/internal.h" /* test hooks */
#include "smaps.h"
#include "uodp.h"

#define T_EXIT_SKIP 77
/* Not every program uses every helper. */
#define T_UNUSED __attribute__((unused))

/* ------------------------------------------------------------------------ */
/* Skipping                                                                  */

static int t_nskipped T_UNUSED;
static const char *t_skip_why[64] T_UNUSED;

/* Skip the whole program (before its group runs). */
#define t_skip_program(...)                            \
	do {                                           \
		fprintf(stderr, "SKIP: " __VA_ARGS__); \
		fputc('\n', stderr);                   \
		exit(T_EXIT_SKIP);                     \
	} while (0)

/* Skip the current test; counted for t_run(). */
#define t_skip(why)                                                         \
	do {                                                                \
		if (t_nskipped < 64)                                        \
			t_skip_why[t_nskipped] = (why);                     \
		t_nskipped++;                                               \
		print_message("[  SKIP    ] %s (%s:%d)\n", (why), __FILE__, \
			      __LINE__);                                    \
		skip();                                                     \
	} while (0)

/* Run a group: 1 if any test failed, 77 if all skipped, else 0. */
static inline int t_run_group_n(const char *name,
				const struct CMUnitTest *tests, size_t n,
				CMFixtureFunction setup,
				CMFixtureFunction teardown)
{
	/* T_FILTER=pattern runs only the matching tests (debugging). */
	const char *filter = getenv("T_FILTER");
	int failed;

	if (filter)
		cmocka_set_test_filter(filter);
	failed = _cmocka_run_group_tests(name, tests, n, setup, teardown);

	if (failed)
		return 1;
	if (t_nskipped && (size_t)t_nskipped >= n)
		return T_EXIT_SKIP;
	if (t_nskipped) {
		fprintf(stderr, "note: %d of %zu tests skipped:\n", t_nskipped,
			n);
		for (int i = 0; i < t_nskipped && i < 64; i++)
			fprintf(stderr, "  %s\n", t_skip_why[i]);
	}
	return 0;
}
#define t_run(tests, setup, teardown)                                    \
	t_run_group_n(#tests, tests, sizeof(tests) / sizeof((tests)[0]), \
		      setup, teardown)

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */

static size_t t_page T_UNUSED;

static inline size_t t_page_size(void)
{
	if (!t_page)
		t_page = (size_t)sysconf(_SC_PAGESIZE);
	return t_page;
}

static inline char *t_map(size_t npages, int prot, int flags)
{
	char *p = mmap(NULL, npages * t_page_size(), prot,
		       flags | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

/* Private anonymous read-write pages: the common buffer. */
static inline char *t_buf(size_t npages)
{
	return t_map(npages, PROT_READ | PROT_WRITE, MAP_PRIVATE);
}

static inline void t_unmap(void *p, size_t npages)
{
	assert_int_equal(munmap(p, npages * t_page_size()), 0);
}

/* A check in a forked child, where cmocka cannot report: the line and the
 * condition on stderr, exit status 1 for the parent to assert on. */
#define T_CHILD_CHECK(cond)                                                \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "line %d: %s\n", __LINE__, #cond); \
			_exit(1);                                          \
		}                                                          \
	} while (0)

/* Map into a hole we made, never over anything else: between our munmap
 * and this, any mmap of the process (a thread stack, a sanitizer
 * runtime's own memory) may have taken the hole. MAP_FAILED then. */
static inline char *t_map_hole(void *addr, size_t len, int prot, int flags,
			       int fd)
{
	char *p = mmap(addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, 0);

	if (p != MAP_FAILED && p != addr) { /* pre-4.17: a hint only */
		munmap(p, len);
		return MAP_FAILED;
	}
	return p;
}

/* Why 1 GiB: application memory in the plain, ASan and TSan layouts of
 * x86-64 alike (ASan's shadow starts at 2 GiB, TSan's low application
 * range ends at 512 GiB), and far below where mappings go. */
#define T_LOW_ADDR ((uintptr_t)1 << 30)

/* Read-write pages far below where the kernel places mappings (it fills
 * the address space top down), for tests that unmap pages and then check
 * that the hole reads as gone: nobody else's mmap() (a sanitizer
 * runtime's, a thread stack) takes such a hole. Anywhere if that address
 * is not free. */
static inline char *t_low_buf(size_t npages)
{
	char *p = t_map_hole((void *)T_LOW_ADDR, npages * t_page_size(),
			     PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1);

	return p != MAP_FAILED ? p : t_buf(npages);
}

/* Unmap pages [from, to) of @p. Tests that made holes in a buffer unmap
 * the pieces around them: another thread's (or a sanitizer runtime's)
 * mapping may sit in a hole by now and is not ours to unmap. */
static inline void t_unmap_pages(void *p, size_t from, size_t to)
{
	if (to > from)
		assert_int_equal(munmap((char *)p + from * t_page_size(),
					(to - from) * t_page_size()),
				 0);
}

/* A temporary file of @npages pages, page i filled with 'a' + i; unlinked. */
static inline int t_tmpfile(size_t npages)
{
	char path[] = "/tmp/uodp-test-XXXXXX";
	size_t page = t_page_size();
	int fd = mkstemp(path);
	char *chunk = malloc(page);

	assert_true(fd >= 0);
	assert_non_null(chunk);
	unlink(path);
	for (size_t i = 0; i < npages; i++) {
		memset(chunk, (int)('a' + i), page);
		assert_int_equal(pwrite(fd, chunk, page, (off_t)(i * page)),
				 (ssize_t)page);
	}
	free(chunk);
	return fd;
}

/* Page @i of @p. */
static inline char *t_pg(const void *p, size_t i)
{
	return (char *)p + i * t_page_size();
}

/* ------------------------------------------------------------------------ */
/* The recording driver                                                      */

#define T_REC_MAX 4096

struct t_call {
	struct uodp_umem *umem;
	void *start, *end;
	enum uodp_event event;
	void *umem_priv;
	pid_t tid;
};

/*
 * Every invalidate callback, in order, under a mutex (callbacks may run on
 * the monitor or relay thread). @hook, when set, runs inside the callback
 * after it is recorded (tests that act from a callback). Recording does
 * not allocate: callbacks must not.
 */
static T_UNUSED struct t_rec {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned n;
	uint64_t pages;
	struct t_call c[T_REC_MAX];
	/* Atomic: set by the test, read on the monitor thread with no other
	 * happens-before edge (the kernel's event is one, but not one the
	 * thread sanitizer can see). */
	void (*_Atomic hook)(struct uodp_umem *umem,
			     const struct uodp_range *r);
} t_rec = { .lock = PTHREAD_MUTEX_INITIALIZER,
	    .cond = PTHREAD_COND_INITIALIZER };

static inline void t_record(struct uodp_umem *umem, const struct uodp_range *r,
			    void *priv)
{
	void (*hook)(struct uodp_umem *, const struct uodp_range *);

	(void)priv;
	pthread_mutex_lock(&t_rec.lock);
	if (t_rec.n < T_REC_MAX)
		t_rec.c[t_rec.n] = (struct t_call){
			umem,	  r->start,	r->end,
			r->event, r->umem_priv, (pid_t)syscall(SYS_gettid)
		};
	t_rec.n++;
	t_rec.pages +=
		(uint64_t)((char *)r->end - (char *)r->start) / t_page_size();
	pthread_cond_broadcast(&t_rec.cond);
	pthread_mutex_unlock(&t_rec.lock);
	hook = atomic_load(&t_rec.hook);
	if (hook)
		hook(umem, r);
}

static const struct uodp_ctx_ops t_record_ops T_UNUSED = { .invalidate =
								   t_record };

static inline void t_rec_reset(void)
{
	pthread_mutex_lock(&t_rec.lock);
	t_rec.n = 0;
	t_rec.pages = 0;
	t_rec.hook = NULL;
	pthread_mutex_unlock(&t_rec.lock);
}

static inline unsigned t_rec_count(void)
{
	unsigned n;

	pthread_mutex_lock(&t_rec.lock);
	n = t_rec.n;
	pthread_mutex_unlock(&t_rec.lock);
	return n;
}

/* Index >= @from of a recorded call for @umem covering [s, e) exactly
 * (any event if @ev < 0), or -1. */
static inline int t_rec_find(unsigned from, struct uodp_umem *umem,
			     const void *s, const void *e, int ev)
{
	int r = -1;

	pthread_mutex_lock(&t_rec.lock);
	for (unsigned i = from; i < t_rec.n && i < T_REC_MAX; i++) {
		const struct t_call *c = &t_rec.c[i];

		if (c->umem == umem && c->start == s && c->end == e &&
		    (ev < 0 || (int)c->event == ev)) {
			r = (int)i;
			break;
		}
	}
	pthread_mutex_unlock(&t_rec.lock);
	return r;
}

/* Wait (at most @sec seconds: a hang is a failure, not a timing claim)
 * for such a call; its index. */
static inline int t_rec_wait(unsigned from, struct uodp_umem *umem,
			     const void *s, const void *e, int ev, int sec)
{
	struct timespec dl;
	int i;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += sec;
	for (;;) {
		i = t_rec_find(from, umem, s, e, ev);
		if (i >= 0)
			return i;
		pthread_mutex_lock(&t_rec.lock);
		int w = pthread_cond_timedwait(&t_rec.cond, &t_rec.lock, &dl);
		pthread_mutex_unlock(&t_rec.lock);
		if (w == ETIMEDOUT) {
			i = t_rec_find(from, umem, s, e, ev);
			if (i < 0)
				fail_msg("no callback for [%p, %p) within %d s",
					 s, e, sec);
			return i;
		}
	}
}

/* A manual context with the recording driver (@flags added). */
static inline struct uodp_ctx *t_ctx(unsigned flags)
{
	struct uodp_ctx *ctx = NULL;

	assert_int_equal(uodp_ctx_create(&t_record_ops, flags, &ctx), 0);
	assert_non_null(ctx);
	return ctx;
}

static inline struct uodp_umem *t_get(struct uodp_ctx *ctx, const void *p,
				      size_t len, unsigned access)
{
	struct uodp_umem *u = NULL;

	assert_int_equal(uodp_umem_get(ctx, (void *)p, len, access, &u), 0);
	assert_non_null(u);
	return u;
}

/* A context, one buffer and one read-write region over it. */
struct t_fx {
	struct uodp_ctx *ctx;
	struct uodp_umem *umem;
	char *buf;
	size_t npages;
};

static inline void t_fx_init(struct t_fx *f, size_t npages, unsigned flags)
{
	t_rec_reset();
	f->npages = npages;
	f->buf = t_buf(npages);
	f->ctx = t_ctx(flags);
	f->umem =
		t_get(f->ctx, f->buf, npages * t_page_size(), UODP_ACCESS_ALL);
}

static inline void t_fx_fini(struct t_fx *f)
{
	engine_test_hook_before_install = NULL;
	engine_test_hook_after_start_walk = NULL;
	engine_test_hook_before_detach = NULL;
	engine_test_hook_before_wait = NULL;
	t_rec.hook = NULL;
	if (f->umem)
		assert_int_equal(uodp_umem_release(f->umem), 0);
	if (f->ctx)
		assert_int_equal(uodp_ctx_destroy(f->ctx), 0);
	if (f->buf)
		t_unmap(f->buf, f->npages);
	memset(f, 0, sizeof(*f));
}

/* cmocka fixtures around a manual t_fx of 64 pages. */
static inline int t_fx_setup(void **state)
{
	struct t_fx *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	t_fx_init(f, 64, UODP_CTX_MANUAL);
	*state = f;
	return 0;
}

static inline int t_fx_teardown(void **state)
{
	struct t_fx *f = *state;

	t_fx_fini(f);
	free(f);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Faults and entries                                                        */

/* Why 5000 ms: single-threaded tests never wait; a bound turns a hang
 * into an -EBUSY failure instead of a CTest timeout. */
#define T_FAULT_MS 5000

/* A whole fault (map_and_lock, then unlock): pages mapped or error. */
static inline int64_t t_fault(struct uodp_umem *u, const void *p, size_t len,
			      unsigned access)
{
	int64_t n = uodp_umem_map_and_lock(u, p, len, access, T_FAULT_MS);

	if (n > 0)
		assert_int_equal(uodp_umem_unlock(u), 0);
	return n;
}

/* The entry of @p's page (the region lock taken for it). */
static inline uint64_t t_entry(struct uodp_umem *u, const void *p)
{
	uint64_t e = ~(uint64_t)0;

	assert_int_equal(uodp_umem_lock(u), 0);
	assert_int_equal(uodp_umem_entries_locked(u, p, 1, &e), 0);
	assert_int_equal(uodp_umem_unlock(u), 0);
	return e;
}

/* The entry a page mapped with @access has. */
static inline uint64_t t_want(const void *p, unsigned access)
{
	return ((uint64_t)(uintptr_t)p & ~(uint64_t)(t_page_size() - 1)) |
	       access;
}

/* Mapped entries among @n pages from @p. */
static inline size_t t_count(struct uodp_umem *u, const void *p, size_t n)
{
	uint64_t e[64];
	size_t i, k, got = 0;

	assert_int_equal(uodp_umem_lock(u), 0);
	for (i = 0; i < n; i += k) {
		k = n - i < 64 ? n - i : 64;
		assert_int_equal(uodp_umem_entries_locked(u, t_pg(p, i), k, e),
				 0);
		for (size_t j = 0; j < k; j++)
			got += e[j] != 0;
	}
	assert_int_equal(uodp_umem_unlock(u), 0);
	return got;
}

static inline struct uodp_umem_stats t_stats(struct uodp_umem *u)
{
	struct uodp_umem_stats st;

	memset(&st, 0xa5, sizeof(st));
	assert_int_equal(uodp_umem_stats(u, &st, sizeof(st)), 0);
	return st;
}

/* read_begin + read_retry under the lock, as a driver checks a sequence. */
static inline bool t_retry(struct uodp_umem *u, uint64_t seq)
{
	bool r;

	assert_int_equal(uodp_umem_lock(u), 0);
	r = uodp_umem_read_retry(u, seq);
	assert_int_equal(uodp_umem_unlock(u), 0);
	return r;
}

/* The low-level fault: begin, map (no lock on return). */
static inline int64_t t_map_seq(struct uodp_umem *u, const void *p, size_t len,
				unsigned access)
{
	int64_t seq = uodp_umem_read_begin(u);

	if (seq < 0)
		return seq;
	return uodp_umem_map(u, p, len, access, (uint64_t)seq);
}

/* A manual invalidation of @n pages from @p. */
static inline void t_inval(struct uodp_ctx *ctx, const void *p, size_t n)
{
	assert_int_equal(uodp_invalidate_range(ctx, (void *)p,
					       n * t_page_size(),
					       UODP_EVENT_MANUAL),
			 0);
}

/* start() of @n pages from @p with token @r. */
static inline void t_start(struct uodp_ctx *ctx, struct uodp_range *r,
			   const void *p, size_t n)
{
	uodp_range_init(r, (void *)p, n * t_page_size(), UODP_EVENT_MANUAL);
	assert_int_equal(uodp_invalidate_range_start(ctx, r), 0);
}

static inline void t_end(struct uodp_range *r)
{
	assert_int_equal(uodp_invalidate_range_end(r), 0);
}

/* ------------------------------------------------------------------------ */
/* The kernel monitor                                                        */

/*
 * Whether contexts with the kernel monitor work here: a region registered
 * on one. -ENOSYS (no userfaultfd, or the notifier not built yet) and
 * -EPERM / -EACCES (forbidden: unprivileged_userfaultfd=0, seccomp, a
 * security module) mean "skip";
 * anything else than success is a failure of the probe itself.
 */
static inline bool t_monitor_available(void)
{
	static int avail = -1;
	struct uodp_ctx *ctx = NULL;
	struct uodp_umem *u = NULL;
	char *p;
	int r;

	if (avail >= 0)
		return avail;
	p = mmap(NULL, t_page_size(), PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED || uodp_ctx_create(&t_record_ops, 0, &ctx) != 0) {
		fprintf(stderr, "monitor probe: setup failed\n");
		exit(1);
	}
	r = uodp_umem_get(ctx, p, t_page_size(), UODP_ACCESS_ALL, &u);
	if (r == 0) {
		uodp_umem_release(u);
		avail = 1;
	} else if (r == -ENOSYS || r == -EPERM || r == -EACCES) {
		fprintf(stderr, "monitor probe: uodp_umem_get: %s\n",
			uodp_strerror(r));
		avail = 0;
	} else {
		fprintf(stderr, "monitor probe: unexpected %d (%s)\n", r,
			uodp_strerror(r));
		exit(1);
	}
	uodp_ctx_destroy(ctx);
	munmap(p, t_page_size());
	return avail;
}

#define T_REQUIRE_MONITOR()                                                 \
	do {                                                                \
		if (!t_monitor_available())                                 \
			t_skip_program("the kernel monitor is unavailable " \
				       "here (userfaultfd)");               \
	} while (0)

/* ------------------------------------------------------------------------ */
/* Threads: gates and hooks                                                  */

/*
 * A gate stops one thread at a point (t_gate_pass) until the test opens
 * it; the test waits for the thread to arrive first. Bounded waits: a
 * thread that never arrives is a failure after 10 s, not a hang.
 */
struct t_gate {
	pthread_mutex_t m;
	pthread_cond_t c;
	int arrived, open;
};

#define T_GATE_INIT                                                       \
	{                                                                 \
		PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 \
	}

static inline void t_gate_reset(struct t_gate *g)
{
	pthread_mutex_lock(&g->m);
	g->arrived = 0;
	g->open = 0;
	pthread_mutex_unlock(&g->m);
}

static inline void t_gate_pass(struct t_gate *g)
{
	pthread_mutex_lock(&g->m);
	g->arrived++;
	pthread_cond_broadcast(&g->c);
	while (!g->open)
		pthread_cond_wait(&g->c, &g->m);
	pthread_mutex_unlock(&g->m);
}

static inline bool t_gate_wait_arrived_for(struct t_gate *g, int n, int sec)
{
	struct timespec dl;
	bool ok = true;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += sec;
	pthread_mutex_lock(&g->m);
	while (g->arrived < n && ok)
		ok = pthread_cond_timedwait(&g->c, &g->m, &dl) != ETIMEDOUT ||
		     g->arrived >= n;
	pthread_mutex_unlock(&g->m);
	return ok;
}

static inline void t_gate_wait_arrived(struct t_gate *g)
{
	if (!t_gate_wait_arrived_for(g, 1, 10))
		fail_msg("thread did not reach the gate within 10 s");
}

/* Count an arrival without stopping (hooks that run under engine locks). */
static inline void t_gate_arrive(struct t_gate *g)
{
	pthread_mutex_lock(&g->m);
	g->arrived++;
	pthread_cond_broadcast(&g->c);
	pthread_mutex_unlock(&g->m);
}

static inline void t_gate_open(struct t_gate *g)
{
	pthread_mutex_lock(&g->m);
	g->open = 1;
	pthread_cond_broadcast(&g->c);
	pthread_mutex_unlock(&g->m);
}

/* Park the next fault of @umem (any region if NULL) between populate and
 * install, at t_install_gate; the hook disarms itself. */
static struct t_gate t_install_gate T_UNUSED = T_GATE_INIT;
static struct uodp_umem *_Atomic t_install_umem T_UNUSED;

static inline void t_hook_park_install(struct uodp_umem *umem)
{
	struct uodp_umem *want = atomic_load(&t_install_umem);

	if (want && want != umem)
		return;
	engine_test_hook_before_install = NULL;
	t_gate_pass(&t_install_gate);
}

static inline void t_park_next_install(struct uodp_umem *umem)
{
	t_gate_reset(&t_install_gate);
	atomic_store(&t_install_umem, umem);
	engine_test_hook_before_install = t_hook_park_install;
}

/* Park the next start() walk (or one-shot walk) after it walked the tree,
 * with the tree read lock held, at t_walk_gate. */
static struct t_gate t_walk_gate T_UNUSED = T_GATE_INIT;

static inline void t_hook_park_walk(struct uodp_ctx *ctx)
{
	(void)ctx;
	engine_test_hook_after_start_walk = NULL;
	t_gate_pass(&t_walk_gate);
}

static inline void t_park_next_walk(void)
{
	t_gate_reset(&t_walk_gate);
	engine_test_hook_after_start_walk = t_hook_park_walk;
}

/* Count the threads that block in the engine until invalidations end
 * (engine_test_hook_before_wait): t_count_waits() before starting them,
 * t_wait_blocked(n) until n have blocked. The hook runs with the lock the
 * invalidation's end takes, so a thread counted is in its wait before
 * that end can wake it: no sleep, no chance. */
static struct t_gate t_wait_gate T_UNUSED = T_GATE_INIT;

static inline void t_hook_count_wait(struct uodp_umem *umem)
{
	(void)umem;
	t_gate_arrive(&t_wait_gate);
}

static inline void t_count_waits(void)
{
	t_gate_reset(&t_wait_gate);
	engine_test_hook_before_wait = t_hook_count_wait;
}

static inline void t_wait_blocked(int n)
{
	if (!t_gate_wait_arrived_for(&t_wait_gate, n, 10))
		fail_msg("%d threads did not block within 10 s", n);
}

/* A thread that runs one function and keeps its result. */
struct t_thread {
	pthread_t t;
	int64_t (*fn)(void *arg);
	void *arg;
	atomic_int done;
	int64_t ret;
};

static inline void *t_thread_main(void *p)
{
	struct t_thread *t = p;

	t->ret = t->fn(t->arg);
	atomic_store(&t->done, 1);
	return NULL;
}

static inline void t_thread_start(struct t_thread *t, int64_t (*fn)(void *),
				  void *arg)
{
	t->fn = fn;
	t->arg = arg;
	atomic_init(&t->done, 0);
	assert_int_equal(pthread_create(&t->t, NULL, t_thread_main, t), 0);
}

static inline int64_t t_thread_join(struct t_thread *t)
{
	assert_int_equal(pthread_join(t->t, NULL), 0);
	return t->ret;
}

/* Give a thread the chance to block where no hook can tell that it did
 * (a pthread lock, the kernel) or to do something it must not (be
 * cancelled); what follows asserts state, never timing (a thread that did
 * not block yet must not have finished either). Where the engine blocks
 * on invalidations, use t_count_waits()/t_wait_blocked() instead. */
static inline void t_let_block(void)
{
	usleep(20000);
}

/* Milliseconds on the monotonic clock. */
static inline double t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Wait until no invalidation of @ctx is in flight. Why 10 s: an event is
 * handled in microseconds; one that never is fails here, it does not hang
 * the suite. Not a timing claim. */
static inline void t_wait_sync(struct uodp_ctx *ctx)
{
	double t0 = t_now_ms();

	while (!uodp_ctx_sync(ctx)) {
		if (t_now_ms() - t0 > 10000.0)
			fail_msg("uodp_ctx_sync() still false after 10 s");
		sched_yield();
	}
}

/* ------------------------------------------------------------------------ */
/* Children                                                                  */

/*
 * Run @fn in a forked child and return its wait status; the child's stderr
 * is captured into @err (NUL-terminated, may be NULL). The child must not
 * use cmocka's asserts (they would longjmp into the parent's copy of the
 * runner): it reports through its exit status.
 */
static inline int t_in_child(void (*fn)(void *), void *arg, char *err,
			     size_t errlen)
{
	int pfd[2], status = 0;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		dup2(pfd[1], 2);
		fn(arg);
		_exit(0);
	}
	close(pfd[1]);
	char sink[256];

	if (!err) { /* drain it anyway: the child must not block on it */
		err = sink;
		errlen = sizeof(sink);
	}
	for (;;) {
		n = read(pfd[0], got + 1 < errlen ? err + got : sink,
			 got + 1 < errlen ? errlen - 1 - got : sizeof(sink));
		if (n <= 0)
			break;
		if (got + 1 < errlen)
			got += (size_t)n;
	}
	err[got] = 0;
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return status;
}

/* t_in_child(), and fail (with what the child wrote to stderr) unless it
 * exited 0. */
static inline void t_child_ok(void (*fn)(void *), void *arg)
{
	char err[512];
	int st = t_in_child(fn, arg, err, sizeof(err));

	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail_msg("child failed (status %#x): %s", st, err);
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * test_hooks.c - the in-thread fast path of libuodp-hooks.so
 * (src/notifier/intercept.h): for each event kind, the event reaches every
 * subscriber from the calling thread, the kernel sent none (the fast path
 * really ran), and nothing is lost afterwards (what stays mapped is still
 * registered: a raw system call on it is reported by the kernel).
 *
 * Runs with the hooks preloaded: when they are not, the program re-executes
 * itself with LD_PRELOAD set to the library (UODP_HOOKS_LIB, or
 * ../hooks/libuodp-hooks.so next to this program); skipped (77) when the
 * library is not built or userfaultfd is unavailable.
 */
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "smaps.h"

#include "notifier/intercept.h"
#include "notifier/notifier.h"
#include "uodp.h"

void unf_intercept_stats(struct uodp_icpt_stats *out);
bool unf_intercept_attached(void);

#define SKIP 77
#define MAXREC 4096

static uint64_t pg;

/* ---- a recording subscriber ---- */

struct rec {
	uint64_t s, e;
	enum unf_event ev;
	pid_t tid;
};

struct sink {
	pthread_mutex_t m;
	struct rec r[MAXREC];
	unsigned n;
	int fence_depth, fences, bad_fence;
	struct unf_sub *sub;
};

static void s_begin(void *o, uint64_t s, uint64_t e, enum unf_event ev)
{
	(void)o;
	(void)s;
	(void)e;
	(void)ev;
}

static void s_finish(void *o, uint64_t s, uint64_t e, enum unf_event ev,
		     unsigned merged)
{
	struct sink *k = o;

	(void)merged;
	pthread_mutex_lock(&k->m);
	if (k->n < MAXREC)
		k->r[k->n++] =
			(struct rec){ s, e, ev, (pid_t)syscall(SYS_gettid) };
	pthread_mutex_unlock(&k->m);
}

static void s_fence(void *o)
{
	struct sink *k = o;

	pthread_mutex_lock(&k->m);
	if (k->fence_depth++ != 0)
		k->bad_fence = 1;
	k->fences++;
	pthread_mutex_unlock(&k->m);
}

static void s_unfence(void *o)
{
	struct sink *k = o;

	pthread_mutex_lock(&k->m);
	if (--k->fence_depth != 0)
		k->bad_fence = 1;
	pthread_mutex_unlock(&k->m);
}

static const struct unf_ops sink_ops = {
	.begin = s_begin,
	.finish = s_finish,
	.fence = s_fence,
	.unfence = s_unfence,
};

static struct sink *sink_new(unsigned flags)
{
	struct sink *k = calloc(1, sizeof(*k));

	assert_non_null(k);
	pthread_mutex_init(&k->m, NULL);
	assert_int_equal(unf_subscribe(&sink_ops, k, flags, &k->sub), 0);
	return k;
}

static void sink_free(struct sink *k)
{
	unf_unsubscribe(k->sub);
	pthread_mutex_destroy(&k->m);
	free(k);
}

static void sink_clear(struct sink *k)
{
	pthread_mutex_lock(&k->m);
	k->n = 0;
	pthread_mutex_unlock(&k->m);
}

/* Do the finishes recorded so far cover [s, e) with kind @ev? Waits up to
 * 2 s (deferred subscribers get theirs on the relay thread). */
static bool covered(struct sink *k, uint64_t s, uint64_t e, enum unf_event ev)
{
	int tries;

	for (tries = 0; tries < 2000; tries++) {
		uint64_t at = s;
		bool progress = true;
		unsigned i;

		pthread_mutex_lock(&k->m);
		while (at < e && progress) {
			progress = false;
			for (i = 0; i < k->n; i++) {
				if (k->r[i].ev == ev && k->r[i].s <= at &&
				    k->r[i].e > at) {
					at = k->r[i].e;
					progress = true;
				}
			}
		}
		pthread_mutex_unlock(&k->m);
		if (at >= e)
			return true;
		usleep(1000);
	}
	return false;
}

static unsigned nrec(struct sink *k)
{
	unsigned n;

	pthread_mutex_lock(&k->m);
	n = k->n;
	pthread_mutex_unlock(&k->m);
	return n;
}

static int nfences(struct sink *k)
{
	int n;

	pthread_mutex_lock(&k->m);
	n = k->fences;
	pthread_mutex_unlock(&k->m);
	return n;
}

/* ---- helpers ---- */

static char *map_pages(size_t n)
{
	char *p = mmap(NULL, n * pg, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	memset(p, 1, n * pg);
	return p;
}

static uint64_t A(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

struct snap {
	struct unf_stats k;
	struct uodp_icpt_stats h;
};

static void snap(struct snap *s)
{
	unf_get_stats(&s->k);
	unf_intercept_stats(&s->h);
}

/* The kernel sent no UNMAP/REMOVE/REMAP since @a, and the fast path ran
 * @fast times. */
static void expect_fast(const struct snap *a, uint64_t fast)
{
	struct snap b;

	snap(&b);
	assert_int_equal(b.k.unmap, a->k.unmap);
	assert_int_equal(b.k.remove, a->k.remove);
	assert_int_equal(b.k.remap, a->k.remap);
	assert_int_equal(b.h.fast - a->h.fast, fast);
}

/* The kernel reported an event since @a (the safety net). */
static void expect_kernel(const struct snap *a)
{
	struct snap b;
	int i;

	for (i = 0; i < 2000; i++) {
		snap(&b);
		if (b.k.unmap + b.k.remove + b.k.remap >
		    a->k.unmap + a->k.remove + a->k.remap)
			return;
		usleep(1000);
	}
	fail_msg("no kernel event");
}

/* [s, e) mapped again (not by MAP_FIXED: that is intercepted) and watched
 * again through prepare: then a raw munmap must be reported. */
static void raw_munmap_reported(struct sink *k, uint64_t s, uint64_t e)
{
	struct snap a;

	assert_int_equal(unf_prepare(k->sub, s, e, NULL), 0);
	sink_clear(k);
	snap(&a);
	assert_int_equal(syscall(SYS_munmap, (void *)(uintptr_t)s, e - s), 0);
	expect_kernel(&a);
	assert_true(covered(k, s, e, UNF_UNMAP));
}

static void refill(uint64_t s, uint64_t e)
{
	void *p = mmap((void *)(uintptr_t)s, e - s, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		       0);

	assert_true(p == (void *)(uintptr_t)s);
	memset(p, 2, e - s);
}

/* ---- tests, each with a plain and a deferred strict subscriber ---- */

static struct sink *plain, *deferred;

static int setup(void **st)
{
	(void)st;
	plain = sink_new(UNF_STRICT);
	deferred = sink_new(UNF_STRICT | UNF_DEFERRED);
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	assert_false(plain->bad_fence);
	assert_false(deferred->bad_fence);
	sink_free(deferred);
	sink_free(plain);
	return 0;
}

static void watch_both(uint64_t s, uint64_t e)
{
	assert_int_equal(unf_watch(plain->sub, s, e), 0);
	assert_int_equal(unf_watch(deferred->sub, s, e), 0);
	sink_clear(plain);
	sink_clear(deferred);
}

static void unwatch_both(uint64_t s, uint64_t e)
{
	unf_unwatch(plain->sub, s, e);
	unf_unwatch(deferred->sub, s, e);
}

static void both_covered(uint64_t s, uint64_t e, enum unf_event ev)
{
	assert_true(covered(plain, s, e, ev));
	assert_true(covered(deferred, s, e, ev));
}

static void test_attached(void **st)
{
	(void)st;
	assert_true(unf_intercept_attached());
}

static void test_munmap(void **st)
{
	char *p = map_pages(16);
	uint64_t s = A(p), e = s + 16 * pg;
	struct snap a;
	pid_t me = (pid_t)syscall(SYS_gettid);

	(void)st;
	watch_both(s, e);
	snap(&a);
	assert_int_equal(munmap(p + 4 * pg, 3 * pg), 0);
	expect_fast(&a, 1);
	both_covered(s + 4 * pg, s + 7 * pg, UNF_UNMAP);
	/* the plain subscriber's finish ran in this thread, before return */
	assert_int_equal(plain->r[0].tid, me);
	/* the rest stays registered: a raw munmap is reported */
	sink_clear(plain);
	snap(&a);
	assert_int_equal(syscall(SYS_munmap, p + 8 * pg, pg), 0);
	expect_kernel(&a);
	assert_true(covered(plain, s + 8 * pg, s + 9 * pg, UNF_UNMAP));
	/* memory mapped again in the hole is registered again on prepare */
	refill(s + 4 * pg, s + 7 * pg);
	raw_munmap_reported(plain, s + 4 * pg, s + 7 * pg);
	unwatch_both(s, e);
	munmap(p, 16 * pg);
}

static void test_munmap_whole_2m(void **st)
{
	size_t n = (2u << 20) / pg;
	char *p = map_pages(n);
	uint64_t s = A(p), e = s + n * pg;
	struct snap a;

	(void)st;
	watch_both(s, e);
	snap(&a);
	assert_int_equal(munmap(p, n * pg), 0);
	expect_fast(&a, 1);
	both_covered(s, e, UNF_UNMAP);
	refill(s, e);
	raw_munmap_reported(plain, s, e);
	unwatch_both(s, e);
}

static void test_mremap_shrink(void **st)
{
	char *p = map_pages(16), *q;
	uint64_t s = A(p), e = s + 16 * pg;
	struct snap a;

	(void)st;
	watch_both(s, e);
	snap(&a);
	q = mremap(p, 16 * pg, 10 * pg, 0);
	assert_true(q == p);
	expect_fast(&a, 1);
	both_covered(s + 10 * pg, e, UNF_UNMAP);
	/* what stays is still reported */
	raw_munmap_reported(plain, s + 2 * pg, s + 3 * pg);
	unwatch_both(s, e);
	munmap(p, 10 * pg);
}

static void test_mremap_move(void **st)
{
	char *p = map_pages(8), *dst = map_pages(8), *q;
	uint64_t s = A(p), e = s + 8 * pg, ds = A(dst), de = ds + 8 * pg;
	struct snap a;

	(void)st;
	watch_both(s, e);
	assert_int_equal(unf_watch(plain->sub, ds, de), 0);
	sink_clear(plain);
	snap(&a);
	q = mremap(p, 8 * pg, 8 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	assert_true(q == dst);
	expect_fast(&a, 1);
	both_covered(s, e, UNF_REMAP);
	assert_true(covered(plain, ds, de, UNF_UNMAP)); /* target replaced */
	assert_int_equal(q[0], 1);
	/* the moved mapping at the target is registered again on prepare */
	raw_munmap_reported(plain, ds, de);
	unf_unwatch(plain->sub, ds, de);
	unwatch_both(s, e);
}

/* A growth that may move is left to the kernel: still reported. */
static void test_mremap_grow(void **st)
{
	char *p = map_pages(4), *q, *block;
	uint64_t s = A(p), e = s + 4 * pg;
	struct snap a;

	(void)st;
	/* something right after it, so the growth must move */
	block = mmap(p + 4 * pg, pg, PROT_NONE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	watch_both(s, e);
	snap(&a);
	q = mremap(p, 4 * pg, 64 * pg, MREMAP_MAYMOVE);
	assert_true(q != MAP_FAILED);
	if (q != p) {
		expect_kernel(&a);
		both_covered(s, e, UNF_REMAP);
	}
	unwatch_both(s, e);
	munmap(q, 64 * pg);
	if (block != MAP_FAILED)
		munmap(block, pg);
}

static void madvise_case(int advice)
{
	char *p = map_pages(16);
	uint64_t s = A(p), e = s + 16 * pg;
	struct snap a, b;

	watch_both(s, e);
	snap(&a);
	assert_int_equal(madvise(p + 2 * pg, 4 * pg, advice), 0);
	expect_fast(&a, 1);
	both_covered(s + 2 * pg, s + 6 * pg, UNF_REMOVE);
	snap(&b);
	assert_true(b.h.rereg > a.h.rereg);
	/* registered again: the kernel reports a raw madvise there */
	sink_clear(plain);
	snap(&a);
	memset(p + 2 * pg, 3, 4 * pg);
	assert_int_equal(syscall(SYS_madvise, p + 2 * pg, 4 * pg, advice), 0);
	expect_kernel(&a);
	assert_true(covered(plain, s + 2 * pg, s + 6 * pg, UNF_REMOVE));
	/* the pieces were kept: prepare needs no re-registration */
	snap(&a);
	assert_int_equal(unf_prepare(plain->sub, s, e, NULL), 0);
	snap(&b);
	assert_int_equal(b.k.registrations, a.k.registrations);
	unwatch_both(s, e);
	munmap(p, 16 * pg);
}

static void test_madvise_dontneed(void **st)
{
	(void)st;
	madvise_case(MADV_DONTNEED);
}

static void test_madvise_free(void **st)
{
	(void)st;
	madvise_case(MADV_FREE);
}

/*
 * A madvise the kernel refuses in part (MADV_DONTNEED reaching a locked
 * mapping: EINVAL, after discarding the mappings before it) is reported
 * as the kernel reports it: a REMOVE of what was discarded, none of the
 * locked part (whose pages the kernel kept: a pinning context's device
 * may hold their frames). The hooks register again what they took out
 * and make the call once more on the kernel path (UODP_ICPT_RETRY).
 */
static void test_madvise_refused(void **st)
{
	char *p = map_pages(8);
	uint64_t s = A(p), e = s + 8 * pg, m = s + 4 * pg;
	unsigned i, n;
	int r;

	(void)st;
	if (mlock(p + 4 * pg, 4 * pg)) {
		munmap(p, 8 * pg);
		skip();
		return;
	}
	watch_both(s, e);
	r = madvise(p, 8 * pg, MADV_DONTNEED);
	if (r == 0) { /* mlock() a no-op here (a sanitizer's runtime) */
		unwatch_both(s, e);
		munmap(p, 8 * pg);
		skip();
		return;
	}
	assert_int_equal(errno, EINVAL);
	both_covered(s, m, UNF_REMOVE);
	assert_int_equal(p[0], 0);	/* discarded */
	assert_int_equal(p[4 * pg], 1); /* kept */
	n = nrec(plain);
	for (i = 0; i < n; i++)
		assert_true(plain->r[i].e <= m || plain->r[i].s >= e);
	unwatch_both(s, e);
	munlock(p + 4 * pg, 4 * pg);
	munmap(p, 8 * pg);
}

static void test_mmap_fixed(void **st)
{
	char *p = map_pages(8), *q;
	uint64_t s = A(p), e = s + 8 * pg;
	struct snap a;

	(void)st;
	watch_both(s, e);
	snap(&a);
	q = mmap(p + 2 * pg, 2 * pg, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	assert_true(q == p + 2 * pg);
	expect_fast(&a, 1);
	both_covered(s + 2 * pg, s + 4 * pg, UNF_UNMAP);
	assert_int_equal(q[0], 0);
	/* the new mapping is registered on prepare and reported */
	raw_munmap_reported(plain, s + 2 * pg, s + 4 * pg);
	unwatch_both(s, e);
	munmap(p, 8 * pg);
}

static void test_shmdt(void **st)
{
	int id = shmget(IPC_PRIVATE, 4 * pg, IPC_CREAT | 0600);
	struct uodp_icpt_stats a, b;
	char *p;

	(void)st;
	if (id < 0) {
		skip();
		return;
	}
	p = shmat(id, NULL, 0);
	shmctl(id, IPC_RMID, NULL);
	assert_true(p != (void *)-1);
	/* watch refuses SysV memory: shmdt alone sends no kernel event */
	assert_int_equal(unf_watch(plain->sub, A(p), A(p) + 4 * pg),
			 -EOPNOTSUPP);
	sink_clear(plain);
	sink_clear(deferred);
	unf_intercept_stats(&a);
	assert_int_equal(shmdt(p), 0);
	unf_intercept_stats(&b);
	assert_int_equal(b.shm - a.shm, 1);
	both_covered(A(p), A(p) + 4 * pg, UNF_UNMAP);
}

/* shmat(SHM_REMAP) over watched memory: the kernel sends no event (shown
 * with the fast path off first), the hooks deliver the UNMAP. */
static void test_shmat_remap(void **st)
{
	int (*en)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "uodp_hooks_enable");
	int id = shmget(IPC_PRIVATE, 2 * pg, IPC_CREAT | 0600);
	char *p = map_pages(8), *q;
	uint64_t s = A(p), e = s + 8 * pg;
	struct snap a, b;

	(void)st;
	assert_non_null(en);
	if (id < 0) {
		munmap(p, 8 * pg);
		skip();
		return;
	}
	watch_both(s, e);
	/* Without the fast path: no kernel event, no delivery (the kernel
	 * would have been read before shmat returned). */
	en(0);
	snap(&a);
	q = shmat(id, p + 2 * pg, SHM_REMAP);
	snap(&b);
	en(1);
	assert_true(q == p + 2 * pg);
	assert_int_equal(b.k.unmap, a.k.unmap);
	assert_int_equal(b.h.fast, a.h.fast);
	assert_int_equal(nrec(plain), 0);
	assert_int_equal(shmdt(q), 0); /* delivers an UNMAP of the hole */
	unwatch_both(s, e);
	refill(s + 2 * pg, s + 4 * pg);
	/* With it: the hooks deliver the UNMAP of what the segment covers. */
	watch_both(s, e);
	snap(&a);
	q = shmat(id, p + 4 * pg, SHM_REMAP);
	assert_true(q == p + 4 * pg);
	expect_fast(&a, 1);
	both_covered(s + 4 * pg, s + 6 * pg, UNF_UNMAP);
	q[0] = 7; /* the segment is there */
	shmctl(id, IPC_RMID, NULL);
	assert_int_equal(shmdt(q), 0);
	unwatch_both(s, e);
	munmap(p, 8 * pg);
}

/* The same where the fast path of the other calls backs out (the kernel
 * then reports their leftovers; for shmat it reports nothing): the watch
 * lock held by a thread registering meanwhile, and more pieces than one
 * call may take out (UODP_ICPT_MAXP). Delivered all the same. */
static atomic_bool reg_parked, reg_go;
static char *busy_other;

static void park_in_register(void)
{
	unf_test_hook_before_register = NULL; /* once */
	atomic_store(&reg_parked, true);
	while (!atomic_load(&reg_go))
		sched_yield();
}

static void *registering(void *arg)
{
	(void)arg;
	/* holds watch_lock while parked in the hook */
	(void)unf_watch(plain->sub, A(busy_other + pg), A(busy_other) + 2 * pg);
	return NULL;
}

static void test_shmat_remap_backouts(void **st)
{
	int id = shmget(IPC_PRIVATE, 40 * pg, IPC_CREAT | 0600);
	char *p = map_pages(40), *q;
	uint64_t s = A(p), e = s + 40 * pg;
	pthread_t th;
	int i;

	(void)st;
	if (id < 0) {
		munmap(p, 40 * pg);
		skip();
		return;
	}
	/* 1: watch_lock busy */
	/* The page to watch is a mapping of its own (its protection differs
	 * from its neighbours'), so watching it must register it and the
	 * hook runs: merged into memory already watched, nothing would be
	 * registered (seen under ThreadSanitizer's layout: a hang). */
	busy_other = map_pages(3);
	assert_int_equal(mprotect(busy_other + pg, pg, PROT_READ), 0);
	watch_both(s, e);
	atomic_store(&reg_parked, false);
	atomic_store(&reg_go, false);
	unf_test_hook_before_register = park_in_register;
	assert_int_equal(pthread_create(&th, NULL, registering, NULL), 0);
	for (i = 0; !atomic_load(&reg_parked); i++) {
		if (i > 100000) { /* 10 s: fail, do not hang */
			atomic_store(&reg_go, true);
			pthread_join(th, NULL);
			unf_test_hook_before_register = NULL;
			fail_msg("the registering thread never reached the "
				 "registration");
		}
		usleep(100);
	}
	q = shmat(id, p, SHM_REMAP);
	atomic_store(&reg_go, true);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(q == p);
	both_covered(s, e, UNF_UNMAP);
	assert_int_equal(shmdt(q), 0);
	unwatch_both(s, e);
	unf_unwatch(plain->sub, A(busy_other + pg), A(busy_other) + 2 * pg);
	munmap(busy_other, 3 * pg);
	/* 2: 20 pieces, every other page a hole */
	refill(s, e);
	watch_both(s, e);
	for (i = 1; i < 40; i += 2)
		assert_int_equal(munmap(p + i * pg, pg), 0);
	sink_clear(plain);
	sink_clear(deferred);
	q = shmat(id, p, SHM_REMAP);
	assert_true(q == p);
	both_covered(s, e, UNF_UNMAP);
	shmctl(id, IPC_RMID, NULL);
	assert_int_equal(shmdt(q), 0);
	unwatch_both(s, e);
}

/*
 * shmat(SHM_REMAP) takes the fast path on the records' filter alone (the
 * kernel reports nothing: the filter's "no" is final, not a fallback to
 * the kernel path as for the other calls). A record elsewhere going away
 * rebuilds the filter; a record still watched must never read "no" in the
 * meantime. Here the shmat runs while a thread unwatching another record
 * is parked inside the rebuild.
 */
static atomic_bool rb_parked, rb_go;
static uint64_t rb_range[2];

static void park_in_rebuild(void)
{
	unf_test_hook_filter_rebuild = NULL; /* once */
	atomic_store(&rb_parked, true);
	while (!atomic_load(&rb_go))
		sched_yield();
}

static void *unwatching(void *arg)
{
	(void)arg;
	unf_unwatch(plain->sub, rb_range[0], rb_range[1]);
	return NULL;
}

static void test_shmat_remap_filter_rebuild(void **st)
{
	int id = shmget(IPC_PRIVATE, 2 * pg, IPC_CREAT | 0600);
	char *p = map_pages(8), *other, *q;
	uint64_t s = A(p), e = s + 8 * pg;
	pthread_t th;
	int i;

	(void)st;
	if (id < 0) {
		munmap(p, 8 * pg);
		skip();
		return;
	}
	/* Another record: a page that is a mapping of its own (its
	 * protection differs from its neighbours'), never merged into p's. */
	other = map_pages(3);
	assert_int_equal(mprotect(other + pg, pg, PROT_READ), 0);
	rb_range[0] = A(other + pg);
	rb_range[1] = A(other) + 2 * pg;
	assert_int_equal(unf_watch(plain->sub, rb_range[0], rb_range[1]), 0);
	watch_both(s, e);
	atomic_store(&rb_parked, false);
	atomic_store(&rb_go, false);
	unf_test_hook_filter_rebuild = park_in_rebuild;
	assert_int_equal(pthread_create(&th, NULL, unwatching, NULL), 0);
	for (i = 0; !atomic_load(&rb_parked); i++) {
		if (i > 100000) { /* 10 s: fail, do not hang */
			unf_test_hook_filter_rebuild = NULL;
			atomic_store(&rb_go, true);
			pthread_join(th, NULL);
			fail_msg("the unwatching thread never rebuilt the "
				 "filter");
		}
		usleep(100);
	}
	q = shmat(id, p + 2 * pg, SHM_REMAP);
	shmctl(id, IPC_RMID, NULL); /* gone with its last detach */
	atomic_store(&rb_go, true);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(q == p + 2 * pg);
	both_covered(s + 2 * pg, s + 4 * pg, UNF_UNMAP);
	assert_int_equal(shmdt(q), 0);
	unwatch_both(s, e);
	munmap(p, 8 * pg);
	munmap(other, 3 * pg);
}

/*
 * munmap, shmat and shmdt are no cancellation points (POSIX), and no uodp
 * call is one (src/lib/lock.h): the hooks' in-thread work runs with
 * cancellation disabled, as the monitor thread's does. A thread with a
 * cancellation pending would otherwise be cancelled inside it: in a
 * subscriber's op (a fence waiting on a condition variable) holding the
 * notifier's locks, or, for shmat(SHM_REMAP), whose attachment is looked
 * up in /proc/self/maps after the call, before the event was delivered.
 */
static atomic_int cancellable_ops;

static void probe_cancel(void)
{
	int old;

	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
	pthread_setcancelstate(old, NULL);
	if (old == PTHREAD_CANCEL_ENABLE)
		atomic_fetch_add(&cancellable_ops, 1);
}

static void c_begin(void *o, uint64_t s, uint64_t e, enum unf_event ev)
{
	probe_cancel();
	s_begin(o, s, e, ev);
}

static void c_finish(void *o, uint64_t s, uint64_t e, enum unf_event ev,
		     unsigned merged)
{
	probe_cancel();
	s_finish(o, s, e, ev, merged);
}

static void c_fence(void *o)
{
	probe_cancel();
	s_fence(o);
}

static void c_unfence(void *o)
{
	probe_cancel();
	s_unfence(o);
}

static const struct unf_ops cancel_ops = {
	.begin = c_begin,
	.finish = c_finish,
	.fence = c_fence,
	.unfence = c_unfence,
};

struct cancel_job {
	int shm_id; /* -1: munmap(p, 4 pages); else shmat(id, p, SHM_REMAP) */
	char *p;
	bool returned;
};

static void *cancelled_call(void *arg)
{
	struct cancel_job *j = arg;

	/* Deferred (the default): acted upon at the next cancellation
	 * point, of which the calls below have none. */
	pthread_cancel(pthread_self());
	if (j->shm_id < 0)
		(void)munmap(j->p, 4 * pg);
	else
		(void)shmat(j->shm_id, j->p, SHM_REMAP);
	j->returned = true;
	return NULL;
}

static void run_cancelled(struct cancel_job *j)
{
	pthread_t th;

	j->returned = false;
	assert_int_equal(pthread_create(&th, NULL, cancelled_call, j), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(j->returned);
}

static void test_cancel_pending(void **st)
{
	int id = shmget(IPC_PRIVATE, 2 * pg, IPC_CREAT | 0600);
	char *p = map_pages(8);
	uint64_t s = A(p), e = s + 8 * pg;
	struct cancel_job j = { -1, p, false };
	struct sink *k = calloc(1, sizeof(*k));
	struct snap a;

	(void)st;
	assert_non_null(k);
	pthread_mutex_init(&k->m, NULL);
	assert_int_equal(unf_subscribe(&cancel_ops, k, UNF_STRICT, &k->sub), 0);
	assert_int_equal(unf_watch(k->sub, s, e), 0);
	atomic_store(&cancellable_ops, 0);
	snap(&a);
	run_cancelled(&j); /* munmap of 4 watched pages */
	expect_fast(&a, 1);
	assert_true(covered(k, s, s + 4 * pg, UNF_UNMAP));
	assert_int_equal(atomic_load(&cancellable_ops), 0);
	if (id >= 0) {
		j.shm_id = id;
		j.p = p + 4 * pg;
		sink_clear(k);
		run_cancelled(&j); /* shmat over 2 watched pages */
		shmctl(id, IPC_RMID, NULL);
		assert_true(covered(k, s + 4 * pg, s + 6 * pg, UNF_UNMAP));
		assert_int_equal(atomic_load(&cancellable_ops), 0);
		assert_int_equal(shmdt(p + 4 * pg), 0);
	}
	unf_unwatch(k->sub, s, e);
	sink_free(k);
	munmap(p, 8 * pg);
}

static void test_unwatched(void **st)
{
	char *p = map_pages(4);
	struct snap a, b;

	(void)st;
	sink_clear(plain);
	snap(&a);
	assert_int_equal(munmap(p, 4 * pg), 0);
	snap(&b);
	assert_int_equal(b.h.fast, a.h.fast);
	assert_int_equal(nrec(plain), 0);
}

static void test_raw_syscall(void **st)
{
	char *p = map_pages(4);
	uint64_t s = A(p), e = s + 4 * pg;
	struct snap a;

	(void)st;
	watch_both(s, e);
	snap(&a);
	assert_int_equal(syscall(SYS_munmap, p, 4 * pg), 0);
	expect_kernel(&a);
	both_covered(s, e, UNF_UNMAP);
	unwatch_both(s, e);
}

/* With the fast path off the wrappers only forward: the kernel reports. */
static void test_disabled(void **st)
{
	int (*en)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "uodp_hooks_enable");
	char *p = map_pages(4);
	uint64_t s = A(p), e = s + 4 * pg;
	struct snap a;

	(void)st;
	assert_non_null(en);
	watch_both(s, e);
	en(0);
	snap(&a);
	assert_int_equal(munmap(p, 4 * pg), 0);
	en(1);
	expect_kernel(&a);
	both_covered(s, e, UNF_UNMAP);
	unwatch_both(s, e);
}

/* Threads unmapping and mapping their own pieces of one watched mapping
 * while another faults (prepare) over all of it: every munmap is
 * delivered, whichever path it took. */
#define NT 2
#define ITERS 1500
static char *race_base;
static _Atomic int race_stop;

static void *race_unmapper(void *arg)
{
	uintptr_t t = (uintptr_t)arg;
	char *at = race_base + (1 + 2 * t) * pg;
	int i;

	for (i = 0; i < ITERS; i++) {
		void *q;

		sink_clear(plain); /* only this thread checks its own */
		assert_int_equal(munmap(at, pg), 0);
		if (!covered(plain, A(at), A(at) + pg, UNF_UNMAP))
			fail_msg("munmap %d of thread %lu not delivered", i,
				 (unsigned long)t);
		q = mmap(at, pg, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
			 0);
		assert_true(q == at);
		assert_int_equal(
			unf_prepare(plain->sub, A(at), A(at) + pg, NULL), 0);
	}
	return NULL;
}

static void *race_preparer(void *arg)
{
	(void)arg;
	while (!atomic_load(&race_stop))
		unf_prepare(plain->sub, A(race_base), A(race_base) + 8 * pg,
			    NULL);
	return NULL;
}

static void test_race(void **st)
{
	pthread_t u, f;
	uint64_t s, e;

	(void)st;
	race_base = map_pages(8);
	s = A(race_base);
	e = s + 8 * pg;
	watch_both(s, e);
	atomic_store(&race_stop, 0);
	assert_int_equal(pthread_create(&f, NULL, race_preparer, NULL), 0);
	/* one unmapper: sink_clear() is shared */
	assert_int_equal(pthread_create(&u, NULL, race_unmapper, (void *)0), 0);
	pthread_join(u, NULL);
	atomic_store(&race_stop, 1);
	pthread_join(f, NULL);
	/* and the mapping is still fully reported */
	raw_munmap_reported(plain, s, e);
	unwatch_both(s, e);
}

/* More unmaps between two syncs than the pending cuts hold (64): the rest
 * are cut at once, without allocating (the smaller side of a piece may be
 * dropped). Every one is delivered in-thread, and afterwards every hole,
 * mapped again, is registered again on prepare and reported. */
static void test_many_holes(void **st)
{
	enum {
		N = 400
	};
	char *p = map_pages(N);
	uint64_t s = A(p), e = s + N * pg;
	struct snap a;
	int i;

	(void)st;
	watch_both(s, e);
	snap(&a);
	for (i = 1; i < N; i += 2)
		assert_int_equal(munmap(p + i * pg, pg), 0);
	expect_fast(&a, N / 2);
	for (i = 1; i < N; i += 2)
		assert_true(covered(plain, s + i * pg, s + (i + 1) * pg,
				    UNF_UNMAP));
	for (i = 1; i < N; i += 2)
		refill(s + i * pg, s + (i + 1) * pg);
	/* the pages never unmapped are still registered */
	for (i = 0; i < N; i += 50) {
		sink_clear(plain);
		snap(&a);
		assert_int_equal(
			syscall(SYS_madvise, p + i * pg, pg, MADV_DONTNEED), 0);
		expect_kernel(&a);
	}
	/* and each hole, mapped again, after a prepare */
	for (i = 1; i < N; i += 2)
		raw_munmap_reported(plain, s + i * pg, s + (i + 1) * pg);
	unwatch_both(s, e);
	munmap(p, N * pg);
}

/* ---- the engine on top: the driver's entries are gone on return ---- */

static _Atomic int inv_calls;

static void eng_inval(struct uodp_umem *u, const struct uodp_range *r,
		      void *priv)
{
	(void)u;
	(void)r;
	(void)priv;
	atomic_fetch_add(&inv_calls, 1);
}

static void test_engine(void **st)
{
	struct uodp_ctx_ops ops = { .invalidate = eng_inval };
	struct uodp_ctx *ctx;
	struct uodp_umem *um;
	char *p = map_pages(8);
	struct snap a;
	int64_t r;

	(void)st;
	assert_int_equal(uodp_ctx_create(&ops, 0, &ctx), 0);
	assert_int_equal(uodp_umem_get(ctx, p, 8 * pg, UODP_ACCESS_ALL, &um),
			 0);
	r = uodp_umem_read_begin(um);
	assert_true(r >= 0);
	r = uodp_umem_map(um, p, 8 * pg, UODP_ACCESS_READ, (uint64_t)r);
	assert_true(r >= 0);
	atomic_store(&inv_calls, 0);
	snap(&a);
	assert_int_equal(munmap(p + 2 * pg, 2 * pg), 0);
	/* delivered in this thread: the driver has dropped them already */
	assert_true(atomic_load(&inv_calls) >= 1);
	expect_fast(&a, 1);
	/* and nothing is in flight any more (UNF_FENCE_READS: no fence) */
	assert_true(uodp_ctx_sync(ctx));
	uodp_umem_release(um);
	uodp_ctx_destroy(ctx);
	munmap(p, 8 * pg);
}

/* ---- a call the kernel refuses keeps the pins (UODP_CTX_PIN) ---- */

/* Does mlock() lock here? (A sanitizer's runtime makes it a no-op.) A
 * locked page refuses MADV_DONTNEED (raw: no hook, no discard). */
static bool mlock_locks(void)
{
	char *p = map_pages(1);
	bool yes;

	if (mlock(p, pg)) {
		munmap(p, pg);
		return false;
	}
	yes = syscall(SYS_madvise, p, pg, MADV_DONTNEED) != 0;
	munlock(p, pg);
	munmap(p, pg);
	return yes;
}

/* [p, p + len) still mlock()ed: MADV_DONTNEED refused on all of it. */
static bool still_locked(char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i += pg)
		if (!syscall(SYS_madvise, p + i, pg, MADV_DONTNEED) ||
		    errno != EINVAL)
			return false;
	return true;
}

struct pinned {
	struct uodp_ctx *ctx;
	struct uodp_umem *um;
	char *p;
	size_t n;
};

static void pinned_new(struct pinned *x, size_t n)
{
	static const struct uodp_ctx_ops ops = { .invalidate = eng_inval };
	int64_t r;

	x->n = n;
	x->p = map_pages(n);
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_PIN, &x->ctx), 0);
	assert_int_equal(uodp_umem_get(x->ctx, x->p, n * pg, UODP_ACCESS_ALL,
				       &x->um),
			 0);
	r = uodp_umem_read_begin(x->um);
	assert_true(r >= 0);
	r = uodp_umem_map(x->um, x->p, n * pg, UODP_ACCESS_READ, (uint64_t)r);
	assert_true(r >= 0);
	atomic_store(&inv_calls, 0);
}

/* Release, destroy and unmap what pinned_new() made. */
static void pinned_free(struct pinned *x)
{
	uodp_umem_release(x->um);
	uodp_ctx_destroy(x->ctx);
	munmap(x->p, x->n * pg);
}

/* After a refused call: nothing invalidated, the pages still locked, and
 * the range still registered (a raw munmap of a page is reported: the
 * kernel path is intact). */
static void pinned_check_free(struct pinned *x, const struct snap *a,
			      bool locks)
{
	struct snap b;
	int i;

	snap(&b);
	/* the fast path was taken (not the kernel path) */
	assert_int_equal(b.h.fast - a->h.fast, 1);
	assert_int_equal(b.h.toomany, a->h.toomany);
	assert_int_equal(b.h.busy, a->h.busy);
	assert_int_equal(atomic_load(&inv_calls), 0);
	if (locks)
		assert_true(still_locked(x->p, x->n * pg));
	snap(&b);
	assert_int_equal(syscall(SYS_munmap, x->p + pg, pg), 0);
	for (i = 0; i < 2000 && !atomic_load(&inv_calls); i++)
		usleep(1000);
	assert_true(atomic_load(&inv_calls) > 0);
	expect_kernel(&b);
	pinned_free(x);
}

/* munmap() refused (EINVAL: the range runs past the top of the address
 * space) after the hook took the watched pages out of the userfaultfd:
 * before, the in-thread delivery invalidated (and unpinned) them, and
 * everything else watched above them, though nothing was unmapped. */
static void test_failed_munmap_keeps_pins(void **st)
{
	bool locks = mlock_locks();
	struct pinned x;
	struct snap a;

	(void)st;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
	/* A sanitizer's munmap() clears the shadow of the range first: all
	 * of the address space above x.p here. */
	fprintf(stderr, "SKIP: a sanitizer's munmap() cannot take this\n");
	(void)locks;
	(void)x;
	(void)a;
	skip();
#else
	pinned_new(&x, 8);
	snap(&a);
	errno = 0;
	assert_int_equal(munmap(x.p, (size_t)((1ull << 63) - A(x.p))), -1);
	assert_int_equal(errno, EINVAL);
	pinned_check_free(&x, &a, locks);
#endif
}

/* Bring the process to exactly vm.max_map_count mappings: a PROT_NONE
 * reservation whose tail from page i on gets the other protection, for
 * i = 1, 2...: each call splits one mapping in two (one more) until the
 * kernel refuses. Returns the reservation (*@len bytes), NULL when the
 * limit cannot be read or is too large to reach (a skip). */
static char *fill_to_limit(size_t *len)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	long max = 0, i;
	char *fill;
	int err;

	if (!f || fscanf(f, "%ld", &max) != 1 || max <= 0 || max > 300000) {
		if (f)
			fclose(f);
		fprintf(stderr, "SKIP: vm.max_map_count unknown or too "
				"large to reach\n");
		return NULL;
	}
	fclose(f);
	*len = (size_t)max * pg;
	fill = mmap(NULL, *len, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(fill != MAP_FAILED);
	for (i = 1; i < max; i++)
		if (mprotect(fill + i * (long)pg, (size_t)(max - i) * pg,
			     (i & 1) ? PROT_READ : PROT_NONE))
			break;
	err = errno;
	if (i == max)
		syscall(SYS_munmap, fill, *len);
	assert_true(i < max); /* the limit was reached */
	assert_int_equal(err, ENOMEM);
	return fill;
}

/* A pinned region of 8 pages (pinned_new()), then the process filled up
 * to vm.max_map_count (fill_to_limit()): the filler, or NULL (nothing
 * made, the region freed again: the caller skips). */
static char *pinned_at_limit(struct pinned *x, size_t *len)
{
	char *fill;

	pinned_new(x, 8);
	fill = fill_to_limit(len);
	if (!fill)
		pinned_free(x);
	return fill;
}

/* munmap() refused with ENOMEM: unmapping a page in the middle of a
 * mapping splits it in two, one mapping more than vm.max_map_count
 * allows. */
static void test_failed_munmap_map_count(void **st)
{
	bool locks = mlock_locks();
	struct pinned x;
	struct snap a;
	size_t len;
	char *fill;
	int r, err;

	(void)st;
	fill = pinned_at_limit(&x, &len);
	if (!fill) {
		skip();
		return;
	}
	snap(&a);
	errno = 0;
	r = munmap(x.p + 3 * pg, pg); /* splits x.p's mapping: refused */
	err = errno;
	/* free the filler before any assertion (cmocka allocates) */
	syscall(SYS_munmap, fill, len);
	assert_int_equal(r, -1);
	assert_int_equal(err, ENOMEM);
	pinned_check_free(&x, &a, locks);
}

/* A call over @x's pages that the kernel refuses: true when it failed. */
typedef bool refused_call(const struct pinned *x);

/* @call refused with @want, before it changed anything: every pin and
 * translation of a watched, pinned region stays (pinned_check_free()). */
static void check_refused_keeps_pins(refused_call *call, int want)
{
	bool locks = mlock_locks();
	struct pinned x;
	struct snap a;
	bool failed;
	int err;

	pinned_new(&x, 8);
	snap(&a);
	errno = 0;
	failed = call(&x);
	err = errno;
	assert_true(failed);
	assert_int_equal(err, want);
	pinned_check_free(&x, &a, locks);
}

static bool mremap_onto_source(const struct pinned *x)
{
	return mremap(x->p, 4 * pg, 4 * pg, MREMAP_MAYMOVE | MREMAP_FIXED,
		      x->p + 2 * pg) == MAP_FAILED;
}

/* mremap(MREMAP_FIXED) onto a range overlapping its source: EINVAL. */
static void test_failed_mremap_keeps_pins(void **st)
{
	(void)st;
	check_refused_keeps_pins(mremap_onto_source, EINVAL);
}

static bool mmap_fixed_bad_fd(const struct pinned *x)
{
	return mmap(x->p + 2 * pg, 2 * pg, PROT_READ, MAP_PRIVATE | MAP_FIXED,
		    -1, 0) == MAP_FAILED;
}

/* mmap(MAP_FIXED) of a file with a bad descriptor: EBADF, nothing
 * replaced. */
static void test_failed_mmap_fixed_keeps_pins(void **st)
{
	(void)st;
	check_refused_keeps_pins(mmap_fixed_bad_fd, EBADF);
}

static uint64_t unwatch_s, unwatch_e;

static void unwatch_in_failed(void)
{
	unf_test_hook_icpt_failed = NULL; /* once */
	unwatch_both(unwatch_s, unwatch_e);
}

/* A refused mmap(MAP_FIXED) (EBADF: nothing replaced) whose record is
 * unwatched between the call's two halves: what is still mapped is not
 * registered again, since no record holds it any more. Before, the hook
 * registered it anyway: a registration nobody knew of, whose later
 * munmaps the kernel made wait for the monitor, and reported. */
static void test_failed_unwatched_not_registered(void **st)
{
	struct unf_stats a, b;
	char *p = map_pages(8);
	void *r;
	int err;

	(void)st;
	watch_both(A(p), A(p) + 8 * pg);
	assert_true(t_uffd_watched(p + 2 * pg));
	unwatch_s = A(p);
	unwatch_e = A(p) + 8 * pg;
	unf_test_hook_icpt_failed = unwatch_in_failed;
	unf_get_stats(&a);
	errno = 0;
	r = mmap(p + 2 * pg, 2 * pg, PROT_READ, MAP_PRIVATE | MAP_FIXED, -1, 0);
	err = errno;
	unf_test_hook_icpt_failed = NULL;
	unf_get_stats(&b);
	assert_true(r == MAP_FAILED);
	assert_int_equal(err, EBADF);
	assert_false(t_uffd_watched(p));
	assert_false(t_uffd_watched(p + 2 * pg));
	assert_false(t_uffd_watched(p + 3 * pg));
	/* no UFFDIO_REGISTER made, none counted */
	assert_int_equal(b.registrations, a.registrations);
	syscall(SYS_munmap, p, 8 * pg);
}

/* mremap(MREMAP_FIXED) of another mapping onto all of a watched, pinned
 * one, refused with ENOMEM at vm.max_map_count. Depending on the kernel's
 * version the destination was unmapped first (a hole, whose UNMAP must be
 * delivered: the kernel sends none for what the hook took out) or is
 * still there (Linux 6.18 checks first, or puts it back: then it keeps its
 * translations and pins). */
static void test_failed_mremap_hole(void **st)
{
	bool locks = mlock_locks();
	struct pinned x;
	char *src = map_pages(8), *fill;
	unsigned char v;
	size_t len;
	void *r;
	int err, i;

	(void)st;
	fill = pinned_at_limit(&x, &len);
	if (!fill) {
		munmap(src, 8 * pg);
		skip();
		return;
	}
	/* one below the limit: the destination's munmap (a whole mapping:
	 * x.p's is locked, it merges with no neighbour) is allowed, the
	 * move after it is not (it wants 3 to spare) */
	syscall(SYS_munmap, fill + 2 * pg, pg);
	r = mremap(src, 8 * pg, 8 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, x.p);
	err = errno;
	syscall(SYS_munmap, fill, len);
	assert_true(r == MAP_FAILED);
	assert_int_equal(err, ENOMEM);
	if (mincore(x.p, pg, &v) && errno == ENOMEM) {
		/* unmapped: reported, in this thread, before return */
		assert_true(atomic_load(&inv_calls) > 0);
		for (i = 1; i < 8; i++)
			assert_int_equal(mincore(x.p + i * pg, pg, &v), -1);
		uodp_umem_release(x.um);
		uodp_ctx_destroy(x.ctx);
	} else {
		struct snap a;

		/* left mapped: nothing invalidated, still pinned, still
		 * registered (fast count: the failed call above) */
		snap(&a);
		a.h.fast--;
		pinned_check_free(&x, &a, locks);
	}
	munmap(src, 8 * pg);
}

/* A refused mremap(MREMAP_FIXED) whose source has more holes than the
 * hook's list of ranges holds (34 pages unmapped through the hooks, their
 * cuts still pending, so the source's piece still claims them): the list
 * overflowed into its last range, which then grew to the end of the
 * destination's piece, far above the source, over memory the call never
 * touched (another region, between the two, lost its translations and
 * pins). The overflow must stay inside the piece being walked. */
static struct uodp_umem *between;
static _Atomic int between_calls;

static void between_inval(struct uodp_umem *u, const struct uodp_range *r,
			  void *priv)
{
	(void)r;
	(void)priv;
	if (u == between)
		atomic_fetch_add(&between_calls, 1);
}

static void test_failed_mremap_overflow(void **st)
{
	static const struct uodp_ctx_ops ops = { .invalidate = between_inval };
	enum {
		SRC = 0,
		MID = 71,
		DST = 80,
		N = 70,
		TOTAL = 152
	};
	struct uodp_umem *us, *um, *ud;
	struct uodp_ctx *ctx;
	char *base, *src, *mid, *dst;
	int64_t r;
	void *m;
	int i, err;

	(void)st;
	base = mmap(NULL, TOTAL * pg, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(base != MAP_FAILED);
	src = base + SRC * pg;
	mid = base + MID * pg;
	dst = base + DST * pg;
	/* three mappings apart (PROT_NONE pages between) */
	assert_true(mmap(src, N * pg, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			 0) == src);
	assert_true(mmap(mid, 8 * pg, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			 0) == mid);
	assert_true(mmap(dst, (N + 1) * pg, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			 0) == dst);
	assert_int_equal(uodp_ctx_create(&ops, 0, &ctx), 0);
	assert_int_equal(uodp_umem_get(ctx, src, N * pg, UODP_ACCESS_ALL, &us),
			 0);
	assert_int_equal(uodp_umem_get(ctx, mid, 8 * pg, UODP_ACCESS_ALL, &um),
			 0);
	assert_int_equal(
		uodp_umem_get(ctx, dst, (N + 1) * pg, UODP_ACCESS_ALL, &ud), 0);
	r = uodp_umem_read_begin(um);
	assert_true(r >= 0);
	assert_true(uodp_umem_map(um, mid, 8 * pg, UODP_ACCESS_READ,
				  (uint64_t)r) >= 0);
	between = um;
	atomic_store(&between_calls, 0);
	/* 34 holes in the source, one at the destination's start: hooked,
	 * so their cuts wait (no watch or fault runs in between) */
	for (i = 1; i < 2 * 34; i += 2)
		assert_int_equal(munmap(src + i * pg, pg), 0);
	assert_int_equal(munmap(dst, pg), 0);
	errno = 0;
	/* one page longer: a move of several mappings (Linux 6.17 on) keeps
	 * its length */
	m = mremap(src, N * pg, (N + 1) * pg, MREMAP_MAYMOVE | MREMAP_FIXED,
		   dst);
	err = errno;
	assert_true(m == MAP_FAILED);
	assert_int_equal(err, EFAULT); /* the source is not one mapping */
	assert_int_equal(atomic_load(&between_calls), 0);
	between = NULL;
	uodp_umem_release(us);
	uodp_umem_release(um);
	uodp_umem_release(ud);
	uodp_ctx_destroy(ctx);
	munmap(base, TOTAL * pg);
}

/* The lowest descriptor number free now: with RLIMIT_NOFILE at it, any
 * open() fails (EMFILE). */
static int lowest_free_fd(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	close(fd);
	return fd;
}

/* A refused mmap(MAP_FIXED) (EBADF: nothing replaced) while
 * /proc/self/maps cannot be opened (EMFILE): the hook cannot tell what is
 * still mapped, and delivers all of what it took out. That memory is
 * still mapped and still locked, so its pins must go with munlock():
 * delivered as UNMAP (gone: no munlock), two pages stayed mlock()ed for
 * good after the context released them (VmLck 8 kB over, MADV_DONTNEED
 * refused). */
static void test_failed_unreadable_unlocks(void **st)
{
	struct pinned x;
	struct rlimit old, low;
	unsigned char v;
	void *r;
	int err, i;

	(void)st;
	if (!mlock_locks()) {
		fprintf(stderr, "SKIP: mlock() locks nothing here\n");
		skip();
		return;
	}
	pinned_new(&x, 8);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = (rlim_t)lowest_free_fd();
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	errno = 0;
	r = mmap(x.p + 2 * pg, 2 * pg, PROT_READ, MAP_PRIVATE | MAP_FIXED, -1,
		 0);
	err = errno;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_true(r == MAP_FAILED);
	assert_int_equal(err, EBADF);
	/* the fallback: invalidated, though still mapped */
	assert_true(atomic_load(&inv_calls) > 0);
	for (i = 0; i < 8; i++)
		assert_int_equal(mincore(x.p + i * pg, pg, &v), 0);
	uodp_umem_release(x.um);
	uodp_ctx_destroy(x.ctx);
	/* nothing of the context's stays locked */
	for (i = 0; i < 8; i++)
		assert_int_equal(syscall(SYS_madvise, x.p + i * pg, pg,
					 MADV_DONTNEED),
				 0);
	munmap(x.p, x.n * pg);
}

/* mmap(MAP_FIXED | MAP_LOCKED) over pinned memory: the new mapping is the
 * application's, locked by it. The UNMAP of the old one (in-thread under
 * the hooks, then with a raw system call on the kernel path) dropped the
 * pins with munlock(), which unlocked the new mapping: the memory it
 * unpins is gone, and the kernel unlocked it with its mapping. */
static void test_pinned_unmap_leaves_new_lock(void **st)
{
	struct pinned x;
	char *q;
	int i;

	(void)st;
	if (!mlock_locks()) {
		fprintf(stderr, "SKIP: mlock() locks nothing here\n");
		skip();
		return;
	}
	pinned_new(&x, 8);
	q = mmap(x.p + 2 * pg, 2 * pg, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_LOCKED, -1, 0);
	assert_true(q == x.p + 2 * pg);
	assert_true(atomic_load(&inv_calls) > 0); /* delivered in-thread */
	assert_true(still_locked(q, 2 * pg));
	atomic_store(&inv_calls, 0);
	q = (char *)syscall(
		SYS_mmap, x.p + 5 * pg, 2 * pg, PROT_READ | PROT_WRITE,
		MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_LOCKED, -1, 0);
	assert_true(q == x.p + 5 * pg);
	for (i = 0; i < 2000 && !atomic_load(&inv_calls); i++)
		usleep(1000);
	assert_true(atomic_load(&inv_calls) > 0); /* the monitor's */
	assert_true(still_locked(q, 2 * pg));
	uodp_umem_release(x.um);
	uodp_ctx_destroy(x.ctx);
	munlock(x.p, x.n * pg);
	munmap(x.p, x.n * pg);
}

/* A UODP_CTX_STRICT context is still fenced by the in-thread delivery
 * (its subscription has no UNF_FENCE_READS): fence, invalidate, unfence,
 * all before munmap returns. */
static _Atomic int eng_fences, eng_unfences;

static void eng_fence(struct uodp_ctx *c, void *priv)
{
	(void)c;
	(void)priv;
	atomic_fetch_add(&eng_fences, 1);
}

static void eng_unfence(struct uodp_ctx *c, void *priv)
{
	(void)c;
	(void)priv;
	atomic_fetch_add(&eng_unfences, 1);
}

static void test_engine_strict(void **st)
{
	struct uodp_ctx_ops ops = { .invalidate = eng_inval,
				    .fence = eng_fence,
				    .unfence = eng_unfence };
	struct uodp_ctx *ctx;
	struct uodp_umem *um;
	char *p = map_pages(8);
	struct snap a;
	int64_t r;

	(void)st;
	assert_int_equal(uodp_ctx_create(&ops, UODP_CTX_STRICT, &ctx), 0);
	assert_int_equal(uodp_umem_get(ctx, p, 8 * pg, UODP_ACCESS_ALL, &um),
			 0);
	r = uodp_umem_read_begin(um);
	assert_true(r >= 0);
	r = uodp_umem_map(um, p, 8 * pg, UODP_ACCESS_READ, (uint64_t)r);
	assert_true(r >= 0);
	atomic_store(&inv_calls, 0);
	atomic_store(&eng_fences, 0);
	atomic_store(&eng_unfences, 0);
	snap(&a);
	assert_int_equal(munmap(p + 2 * pg, 2 * pg), 0);
	expect_fast(&a, 1);
	assert_true(atomic_load(&inv_calls) >= 1);
	assert_true(atomic_load(&eng_fences) >= 1);
	assert_int_equal(atomic_load(&eng_unfences), atomic_load(&eng_fences));
	assert_true(uodp_ctx_sync(ctx));
	uodp_umem_release(um);
	uodp_ctx_destroy(ctx);
	munmap(p, 8 * pg);
}

/* UNF_FENCE_READS: the in-thread delivery calls no fence / unfence (the
 * finish still runs in this thread, before munmap returns); the kernel
 * path still fences around its read; a plain strict subscriber over the
 * same memory is still fenced by the in-thread delivery. */
static void test_fence_reads(void **st)
{
	struct sink *fr = sink_new(UNF_STRICT | UNF_FENCE_READS);
	char *p = map_pages(8);
	uint64_t s = A(p), e = s + 8 * pg;
	pid_t me = (pid_t)syscall(SYS_gettid);
	int fr0, pl0;
	struct snap a;

	(void)st;
	assert_int_equal(unf_watch(fr->sub, s, e), 0);
	assert_int_equal(unf_watch(plain->sub, s, e), 0);
	sink_clear(fr);
	sink_clear(plain);
	fr0 = nfences(fr);
	pl0 = nfences(plain);
	snap(&a);
	assert_int_equal(munmap(p + 2 * pg, 2 * pg), 0);
	expect_fast(&a, 1);
	assert_int_equal(nrec(fr), 1); /* already, before any wait */
	assert_int_equal(fr->r[0].tid, me);
	assert_true(covered(fr, s + 2 * pg, s + 4 * pg, UNF_UNMAP));
	assert_int_equal(nfences(fr), fr0);
	assert_true(nfences(plain) > pl0);
	/* the kernel path: fenced around the monitor's read */
	snap(&a);
	assert_int_equal(syscall(SYS_munmap, p + 5 * pg, pg), 0);
	expect_kernel(&a);
	assert_true(covered(fr, s + 5 * pg, s + 6 * pg, UNF_UNMAP));
	assert_true(nfences(fr) > fr0);
	unf_unwatch(fr->sub, s, e);
	unf_unwatch(plain->sub, s, e);
	assert_false(fr->bad_fence);
	sink_free(fr);
	munmap(p, 8 * pg);
}

/* ---- main: make sure the hooks are preloaded ---- */

/* The path of a sanitizer runtime this program loaded, if any. */
static int find_sanitizer(struct dl_phdr_info *info, size_t size, void *arg)
{
	char *out = arg;

	(void)size;
	if (info->dlpi_name && (strstr(info->dlpi_name, "/libtsan.so") ||
				strstr(info->dlpi_name, "/libasan.so"))) {
		snprintf(out, PATH_MAX, "%s", info->dlpi_name);
		return 1;
	}
	return 0;
}

static void reexec(char **argv)
{
	char san[PATH_MAX];
	char lib[PATH_MAX + 64], exe[PATH_MAX], *slash, *pre;
	const char *env = getenv("UODP_HOOKS_LIB");
	ssize_t n;
	size_t len;

	if (getenv("UODP_TEST_HOOKS_REEXEC")) {
		fprintf(stderr, "SKIP: libuodp-hooks.so preloaded but not "
				"active\n");
		exit(SKIP);
	}
	if (env) {
		snprintf(lib, sizeof(lib), "%s", env);
	} else {
		n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		if (n < 0)
			exit(SKIP);
		exe[n] = 0;
		slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
		snprintf(lib, sizeof(lib), "%s/../hooks/libuodp-hooks.so", exe);
	}
	if (access(lib, R_OK)) {
		fprintf(stderr, "SKIP: %s not built (set UODP_HOOKS_LIB)\n",
			lib);
		exit(SKIP);
	}
	env = getenv("LD_PRELOAD");
	san[0] = 0;
	dl_iterate_phdr(find_sanitizer, san);
	len = strlen(san) + strlen(lib) + (env ? strlen(env) : 0) + 3;
	pre = malloc(len);
	if (!pre)
		exit(1);
	/* a sanitizer runtime must stay first (TSan crashes otherwise) */
	snprintf(pre, len, "%s%s%s%s%s", san, san[0] ? ":" : "", lib,
		 env ? ":" : "", env ? env : "");
	setenv("LD_PRELOAD", pre, 1);
	setenv("UODP_TEST_HOOKS_REEXEC", "1", 1);
	/* a sanitizer runtime must otherwise come first */
	setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 0);
	execv("/proc/self/exe", argv);
	perror("execv");
	exit(1);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attached),
		cmocka_unit_test(test_munmap),
		cmocka_unit_test(test_munmap_whole_2m),
		cmocka_unit_test(test_mremap_shrink),
		cmocka_unit_test(test_mremap_move),
		cmocka_unit_test(test_mremap_grow),
		cmocka_unit_test(test_madvise_dontneed),
		cmocka_unit_test(test_madvise_free),
		cmocka_unit_test(test_madvise_refused),
		cmocka_unit_test(test_mmap_fixed),
		cmocka_unit_test(test_shmdt),
		cmocka_unit_test(test_shmat_remap),
		cmocka_unit_test(test_shmat_remap_backouts),
		cmocka_unit_test(test_shmat_remap_filter_rebuild),
		cmocka_unit_test(test_cancel_pending),
		cmocka_unit_test(test_unwatched),
		cmocka_unit_test(test_raw_syscall),
		cmocka_unit_test(test_disabled),
		cmocka_unit_test(test_race),
		cmocka_unit_test(test_many_holes),
		cmocka_unit_test(test_engine),
		cmocka_unit_test(test_engine_strict),
		cmocka_unit_test(test_fence_reads),
		cmocka_unit_test(test_failed_munmap_keeps_pins),
		cmocka_unit_test(test_failed_munmap_map_count),
		cmocka_unit_test(test_failed_mremap_keeps_pins),
		cmocka_unit_test(test_failed_mmap_fixed_keeps_pins),
		cmocka_unit_test(test_failed_unwatched_not_registered),
		cmocka_unit_test(test_failed_mremap_hole),
		cmocka_unit_test(test_failed_unreadable_unlocks),
		cmocka_unit_test(test_failed_mremap_overflow),
		cmocka_unit_test(test_pinned_unmap_leaves_new_lock),
	};
	struct unf_sub *probe;
	static const struct unf_ops none = { 0 };
	int r;

	(void)argc;
	pg = (uint64_t)sysconf(_SC_PAGESIZE);
	if (!dlsym(RTLD_DEFAULT, UODP_HOOKS_ATTACH))
		reexec(argv);
	r = unf_subscribe(&none, NULL, 0, &probe);
	/* Only "missing or forbidden" is a reason to skip (as in
	 * test_notifier.c); any other error is a failure. */
	if (r == -ENOSYS || r == -EPERM || r == -EACCES) {
		fprintf(stderr, "SKIP: no kernel monitor here (%s)\n",
			strerror(-r));
		return SKIP;
	}
	if (r) {
		fprintf(stderr, "unf_subscribe: %s\n", strerror(-r));
		return 1;
	}
	unf_unsubscribe(probe);
	return cmocka_run_group_tests(tests, setup, teardown);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_notifier.c - the process-wide notifier (src/notifier/notifier.h)
 * with recording subscribers and no engine: life cycle, events to every
 * subscriber, whole-mapping watches counted without system calls, SysV
 * refusal, hugetlb, the relay thread (order, coalescing, a finish that
 * waits for a thread in unf_watch), descriptors closed behind our back,
 * fork. Userfaultfd being unavailable makes the program exit with 77.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "notifier/notifier.h"
#include "notifier/uffd.h"
#include "sandbox.h" /* t_sandbox_deny */

static uint64_t page;

/* ThreadSanitizer cannot follow threads started in a forked child of a
 * threaded process ("starting new threads after multi-threaded fork is not
 * supported"; with die_after_fork=0: "dup thread with used id"). */
#if defined(__SANITIZE_THREAD__)
#define CHILD_THREADS 0
#else
#define CHILD_THREADS 1
#endif

/* ------------------------------------------------------------------------ */
/* A recording subscriber (fixed arrays: no allocation in its ops)           */
/* ------------------------------------------------------------------------ */

#define MAXREC 8192

struct rec {
	uint64_t s, e;
	int ev;
	char what; /* b(egin) f(inish) F(ence) U(nfence) */
	pid_t tid;
};

struct recsub {
	struct unf_sub *sub;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned n;
	struct rec r[MAXREC];
	bool gate;	       /* finish waits while set */
	pthread_mutex_t *take; /* finish takes this mutex (deadlock test) */
	unsigned slow_us;      /* finish sleeps this long */
};

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static void rec_add(struct recsub *rs, char what, uint64_t s, uint64_t e,
		    int ev)
{
	pthread_mutex_lock(&rs->lock);
	if (rs->n < MAXREC)
		rs->r[rs->n] = (struct rec){ s, e, ev, what, gettid_() };
	rs->n++;
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
}

static void op_begin(void *o, uint64_t s, uint64_t e, enum unf_event ev)
{
	rec_add(o, 'b', s, e, (int)ev);
}

static void op_finish(void *o, uint64_t s, uint64_t e, enum unf_event ev,
		      unsigned merged)
{
	struct recsub *rs = o;

	(void)merged;
	pthread_mutex_t *take;
	unsigned slow;

	pthread_mutex_lock(&rs->lock);
	take = rs->take;
	slow = rs->slow_us;
	pthread_mutex_unlock(&rs->lock);
	if (take) {
		pthread_mutex_lock(take);
		pthread_mutex_unlock(take);
	}
	if (slow)
		usleep(slow);
	pthread_mutex_lock(&rs->lock);
	while (rs->gate)
		pthread_cond_wait(&rs->cond, &rs->lock);
	pthread_mutex_unlock(&rs->lock);
	rec_add(rs, 'f', s, e, (int)ev);
}

static void op_fence(void *o)
{
	rec_add(o, 'F', 0, 0, 0);
}

static void op_unfence(void *o)
{
	rec_add(o, 'U', 0, 0, 0);
}

static const struct unf_ops rec_ops = { op_begin, op_finish, op_fence,
					op_unfence };

static struct recsub *rs_new(unsigned flags)
{
	struct recsub *rs = calloc(1, sizeof(*rs));
	int r;

	assert_non_null(rs);
	pthread_mutex_init(&rs->lock, NULL);
	pthread_cond_init(&rs->cond, NULL);
	r = unf_subscribe(&rec_ops, rs, flags, &rs->sub);
	assert_int_equal(r, 0);
	return rs;
}

static void rs_free(struct recsub *rs)
{
	unf_unsubscribe(rs->sub);
	pthread_mutex_destroy(&rs->lock);
	pthread_cond_destroy(&rs->cond);
	free(rs);
}

static unsigned rs_mark(struct recsub *rs)
{
	unsigned n;

	pthread_mutex_lock(&rs->lock);
	n = rs->n;
	pthread_mutex_unlock(&rs->lock);
	return n;
}

/* Wait (20 s at most: a hang is a failure) for a record since @mark;
 * returns its index. */
static int rs_wait(struct recsub *rs, unsigned mark, char what, uint64_t s,
		   uint64_t e, int ev)
{
	struct timespec ts;
	unsigned i;
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	pthread_mutex_lock(&rs->lock);
	for (;;) {
		for (i = mark; i < rs->n && i < MAXREC; i++) {
			struct rec *x = &rs->r[i];

			if (x->what == what && x->s == s && x->e == e &&
			    x->ev == ev) {
				pthread_mutex_unlock(&rs->lock);
				return (int)i;
			}
		}
		if (r == ETIMEDOUT)
			break;
		r = pthread_cond_timedwait(&rs->cond, &rs->lock, &ts);
	}
	pthread_mutex_unlock(&rs->lock);
	fail_msg("no %c [%#lx, %#lx) ev %d", what, (unsigned long)s,
		 (unsigned long)e, ev);
	return -1;
}

/* Both begin and finish of one event. */
static void rs_expect(struct recsub *rs, unsigned mark, uint64_t s, uint64_t e,
		      int ev)
{
	rs_wait(rs, mark, 'b', s, e, ev);
	rs_wait(rs, mark, 'f', s, e, ev);
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static char *map(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

static uint64_t A(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static int count_one(const struct uffd_map *m, void *arg)
{
	(void)m;
	++*(int *)arg;
	return 0;
}

/* Mappings in [p, p + len) (the rest of the process, e.g. a sanitizer's
 * allocator, maps and unmaps as it likes). */
static int count_maps(const void *p, size_t len)
{
	int n = 0;

	assert_int_equal(uffd_for_each_map((uint64_t)(uintptr_t)p,
					   (uint64_t)(uintptr_t)p + len,
					   count_one, &n),
			 0);
	return n;
}

static uint64_t regs(void)
{
	struct unf_stats st;

	unf_get_stats(&st);
	return st.registrations;
}

static bool thread_exists(pid_t tid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/task/%d", (int)tid);
	return access(path, F_OK) == 0;
}

static int cmp_u64(const void *x, const void *y)
{
	uint64_t u = *(const uint64_t *)x, v = *(const uint64_t *)y;

	return u < v ? -1 : u > v;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void test_life(void **state)
{
	int fds = count_fds();
	struct recsub *a, *b;
	pid_t tid;

	(void)state;
	assert_int_equal(unf_monitor_tid(), 0);
	a = rs_new(0);
	for (int i = 0; i < 1000 && !unf_monitor_tid(); i++)
		usleep(1000);
	tid = unf_monitor_tid();
	assert_true(tid > 0);
	assert_true(thread_exists(tid));
	b = rs_new(UNF_DEFERRED);
	assert_int_equal(unf_monitor_tid(), tid); /* one per process */
	rs_free(a);
	assert_int_equal(unf_monitor_tid(), tid);
	rs_free(b);
	assert_int_equal(unf_monitor_tid(), 0);
	assert_false(thread_exists(tid));
	assert_int_equal(count_fds(), fds);
	/* and again */
	a = rs_new(0);
	rs_free(a);
	assert_int_equal(count_fds(), fds);
}

/* Refused subscriptions start nothing: STRICT needs fence and unfence,
 * DEFERRED needs finish (the relay calls it), FENCE_READS needs STRICT and
 * no DEFERRED (ops complete here: only the flags are wrong). */
static void test_subscribe_einval(void **state)
{
	static const struct unf_ops no_finish = { .begin = NULL };
	struct unf_sub *s = NULL;

	(void)state;
	assert_int_equal(unf_subscribe(&no_finish, NULL, UNF_DEFERRED, &s),
			 -EINVAL);
	assert_int_equal(unf_subscribe(&no_finish, NULL, UNF_STRICT, &s),
			 -EINVAL);
	assert_int_equal(unf_subscribe(&no_finish, NULL, 1u << 30, &s),
			 -EINVAL);
	assert_int_equal(unf_subscribe(&rec_ops, NULL, UNF_FENCE_READS, &s),
			 -EINVAL);
	assert_int_equal(unf_subscribe(&rec_ops, NULL,
				       UNF_FENCE_READS | UNF_DEFERRED, &s),
			 -EINVAL);
	assert_int_equal(
		unf_subscribe(&rec_ops, NULL,
			      UNF_STRICT | UNF_FENCE_READS | UNF_DEFERRED, &s),
		-EINVAL);
	assert_null(s);
	assert_int_equal(unf_monitor_tid(), 0);
}

/* Two subscribers over the same range see every kind of change. */
static void test_events_two_subs(void **state)
{
	struct recsub *a, *b;
	size_t len = 64 * page;
	char *p = map(len), *q;
	unsigned ma, mb;
	uint64_t s;

	(void)state;
	memset(p, 1, len);
	a = rs_new(0);
	b = rs_new(UNF_DEFERRED);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + len)), 0);
	assert_int_equal(unf_watch(b->sub, A(p + page), A(p + 8 * page)), 0);

	/* munmap */
	ma = rs_mark(a), mb = rs_mark(b);
	assert_int_equal(munmap(p + 2 * page, page), 0);
	s = A(p + 2 * page);
	rs_expect(a, ma, s, s + page, UNF_UNMAP);
	rs_expect(b, mb, s, s + page, UNF_UNMAP);

	/* madvise(DONTNEED) */
	ma = rs_mark(a), mb = rs_mark(b);
	assert_int_equal(madvise(p + 4 * page, 2 * page, MADV_DONTNEED), 0);
	s = A(p + 4 * page);
	rs_expect(a, ma, s, s + 2 * page, UNF_REMOVE);
	rs_expect(b, mb, s, s + 2 * page, UNF_REMOVE);

	/* mremap move: REMAP of the source, then UNMAP of it */
	ma = rs_mark(a), mb = rs_mark(b);
	q = mremap(p + 10 * page, 2 * page, 2 * page,
		   MREMAP_MAYMOVE | MREMAP_FIXED, p + 40 * page);
	assert_true(q == p + 40 * page);
	s = A(p + 10 * page);
	rs_expect(a, ma, s, s + 2 * page, UNF_REMAP);
	rs_expect(b, mb, s, s + 2 * page, UNF_REMAP);

	/* MAP_FIXED over */
	ma = rs_mark(a), mb = rs_mark(b);
	q = mmap(p + 20 * page, page, PROT_READ,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	assert_true(q == p + 20 * page);
	s = A(p + 20 * page);
	rs_expect(a, ma, s, s + page, UNF_UNMAP);
	rs_expect(b, mb, s, s + page, UNF_UNMAP);

	/* raw system call (no libc hook can see it) */
	ma = rs_mark(a), mb = rs_mark(b);
	assert_int_equal(syscall(SYS_munmap, p + 30 * page, page), 0);
	s = A(p + 30 * page);
	rs_expect(a, ma, s, s + page, UNF_UNMAP);
	rs_expect(b, mb, s, s + page, UNF_UNMAP);

	/* the new mapping put over is watched after prepare */
	assert_int_equal(unf_prepare(a->sub, A(p + 20 * page), A(p + 21 * page),
				     NULL),
			 0);
	ma = rs_mark(a);
	assert_int_equal(munmap(p + 20 * page, page), 0);
	s = A(p + 20 * page);
	rs_expect(a, ma, s, s + page, UNF_UNMAP);

	unf_unwatch(b->sub, A(p + page), A(p + 8 * page));
	unf_unwatch(a->sub, A(p), A(p + len));
	rs_free(a);
	rs_free(b);
	munmap(p, len);
}

/* A range inside an already watched mapping: no system call, and the
 * median cost printed. */
static void test_watch_no_syscall(void **state)
{
	size_t len = 1024 * page, i, n = 20000;
	char *p = map(len);
	struct recsub *a, *b;
	uint64_t r0, *t;

	(void)state;
	a = rs_new(0);
	b = rs_new(0);
	r0 = regs();
	assert_int_equal(unf_watch(a->sub, A(p + page), A(p + 2 * page)), 0);
	assert_true(regs() > r0);
	r0 = regs();
	assert_int_equal(
		unf_watch(b->sub, A(p + 100 * page), A(p + 200 * page)), 0);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + len)), 0);
	assert_int_equal(unf_prepare(b->sub, A(p), A(p + len), NULL), 0);
	assert_int_equal(regs(), r0);

	t = malloc(n * sizeof(*t));
	assert_non_null(t);
	for (i = 0; i < n; i++) {
		uint64_t s = A(p + (i % 1000) * page), t0 = now_ns();

		unf_watch(b->sub, s, s + page);
		t[i] = now_ns() - t0;
	}
	assert_int_equal(regs(), r0);
	for (i = 0; i < n; i++) {
		uint64_t s = A(p + (i % 1000) * page);

		unf_unwatch(b->sub, s, s + page);
	}
	qsort(t, n, sizeof(*t), cmp_u64);
	print_message("watch() when watched: median %lu ns, p99 %lu ns\n",
		      (unsigned long)t[n / 2], (unsigned long)t[n * 99 / 100]);
	free(t);
	unf_unwatch(b->sub, A(p + 100 * page), A(p + 200 * page));
	unf_unwatch(a->sub, A(p), A(p + len));
	unf_unwatch(a->sub, A(p + page), A(p + 2 * page));
	rs_free(a);
	rs_free(b);
	munmap(p, len);
}

/* 10^5 disjoint watches in one mapping: no split, no leak. */
static void test_many_watches(void **state)
{
	size_t n = 100000, len = n * 2 * page, i;
	int fds = count_fds(), maps;
	char *p = map(len);
	struct recsub *a;
	uint64_t r0;
	unsigned m;

	(void)state;
	maps = count_maps(p, len);
	assert_int_equal(maps, 1);
	a = rs_new(0);
	r0 = regs();
	for (i = 0; i < n; i++)
		assert_int_equal(unf_watch(a->sub, A(p + 2 * i * page),
					   A(p + (2 * i + 1) * page)),
				 0);
	assert_true(regs() - r0 <= 2);
	assert_int_equal(count_maps(p, len), 1); /* nothing split */
	/* still watched: an unmap in the middle is seen */
	m = rs_mark(a);
	assert_int_equal(munmap(p + 1000 * page, page), 0);
	rs_expect(a, m, A(p + 1000 * page), A(p + 1001 * page), UNF_UNMAP);
	for (i = 0; i < n; i++)
		unf_unwatch(a->sub, A(p + 2 * i * page),
			    A(p + (2 * i + 1) * page));
	assert_int_equal(count_maps(p, len), 2); /* the munmap split it */
	rs_free(a);
	munmap(p, len);
	assert_int_equal(count_fds(), fds);
}

static void test_sysv_refused(void **state)
{
	struct recsub *a;
	char *p = map(16 * page);
	void *shm;
	int id;

	(void)state;
	id = shmget(IPC_PRIVATE, 4 * page, IPC_CREAT | 0600);
	if (id < 0)
		skip();
	a = rs_new(0);
	/* directly */
	shm = shmat(id, NULL, 0);
	assert_true(shm != (void *)-1);
	assert_int_equal(unf_watch(a->sub, A(shm), A(shm) + page), -EOPNOTSUPP);
	shmdt(shm);
	/* put later into a watched range: prepare refuses it */
	assert_int_equal(unf_watch(a->sub, A(p), A(p + 16 * page)), 0);
	assert_int_equal(munmap(p + 4 * page, 4 * page), 0);
	shm = shmat(id, p + 4 * page, 0);
	assert_true(shm == p + 4 * page);
	assert_int_equal(unf_prepare(a->sub, A(p + 4 * page), A(p + 5 * page),
				     NULL),
			 -EOPNOTSUPP);
	/* elsewhere in the range still fine */
	assert_int_equal(unf_prepare(a->sub, A(p), A(p + page), NULL), 0);
	shmdt(shm);
	shmctl(id, IPC_RMID, NULL);
	unf_unwatch(a->sub, A(p), A(p + 16 * page));
	rs_free(a);
	munmap(p, 16 * page);
}

/* unf_watch_lazy(): nothing registered at the watch; a prepare registers
 * what it is given and fails only over the memory it refuses. SysV memory
 * at pages 8-11 of 16. */
static void test_watch_lazy(void **state)
{
	struct recsub *a;
	char *p = map(16 * page);
	uint64_t r0;
	unsigned m;
	bool settled;
	int id;

	(void)state;
	id = shmget(IPC_PRIVATE, 4 * page, IPC_CREAT | 0600);
	if (id < 0)
		skip();
	a = rs_new(0);
	assert_true(shmat(id, p + 8 * page, SHM_REMAP) == p + 8 * page);
	shmctl(id, IPC_RMID, NULL);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + 16 * page)),
			 -EOPNOTSUPP);
	assert_int_equal(unf_watch_lazy(a->sub, A(p), A(p)), -EINVAL);
	r0 = regs();
	assert_int_equal(unf_watch_lazy(a->sub, A(p), A(p + 16 * page)), 0);
	assert_int_equal(regs(), r0); /* nothing registered */
	assert_int_equal(unf_prepare(a->sub, A(p + 8 * page), A(p + 9 * page),
				     NULL),
			 -EOPNOTSUPP);
	assert_int_equal(unf_prepare(a->sub, A(p), A(p + page), &settled), 0);
	assert_true(settled);
	assert_true(regs() > r0);
	assert_int_equal(unf_prepare(a->sub, A(p), A(p + 2 * page), &settled),
			 0);
	assert_false(settled); /* registered whole: known now */
	/* what was registered reports its unmap */
	m = rs_mark(a);
	assert_int_equal(munmap(p, page), 0);
	rs_expect(a, m, A(p), A(p + page), UNF_UNMAP);
	unf_unwatch(a->sub, A(p), A(p + 16 * page));
	rs_free(a);
	shmdt(p + 8 * page);
	munmap(p + page, 7 * page);
	munmap(p + 12 * page, 4 * page);
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static bool write_long(const char *path, long v)
{
	FILE *f = fopen(path, "w");
	bool ok;

	if (!f)
		return false;
	ok = fprintf(f, "%ld\n", v) > 0;
	return fclose(f) == 0 && ok;
}

/* HugePages_Free of /proc/meminfo, or -1. */
static long free_huge_pages(void)
{
	char line[128];
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "HugePages_Free: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* A range smaller than a huge page in a hugetlb mapping. */
static void test_hugetlb(void **state)
{
	const char *nr = "/proc/sys/vm/nr_hugepages";
	size_t huge = 2 << 20;
	long old = read_long(nr);
	struct recsub *a;
	char *p;
	unsigned m;
	int r;

	bool raised = false;

	(void)state;
	/* Free huge pages (build.sh's unpriv stage frees some for nobody),
	 * else root reserves two and gives them back at the end. */
	if (free_huge_pages() < 2) {
		if (old < 0 || geteuid() != 0 || !write_long(nr, old + 2))
			skip();
		raised = true;
	}
	p = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED) {
		if (raised)
			write_long(nr, old);
		skip();
	}
	memset(p, 1, 2 * huge);
	a = rs_new(0);
	r = unf_watch(a->sub, A(p + page), A(p + 2 * page));
	assert_int_equal(r, 0);
	assert_int_equal(
		unf_prepare(a->sub, A(p + page), A(p + 2 * page), NULL), 0);
	m = rs_mark(a);
	assert_int_equal(munmap(p + huge, huge), 0);
	rs_expect(a, m, A(p + huge), A(p + 2 * huge), UNF_UNMAP);
	unf_unwatch(a->sub, A(p + page), A(p + 2 * page));
	rs_free(a);
	munmap(p, huge);
	if (raised) {
		assert_true(write_long(nr, old));
		assert_int_equal(read_long(nr), old);
	}
}

/* Deferred: finish on the relay thread, in event order. */
static void test_deferred_order(void **state)
{
	size_t n = 64, i;
	char *p = map(n * page);
	struct recsub *a;
	pid_t mon, relay = 0;
	unsigned m, j, k = 0;

	(void)state;
	a = rs_new(UNF_DEFERRED);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + n * page)), 0);
	m = rs_mark(a);
	for (i = 0; i < n; i += 2)
		assert_int_equal(munmap(p + i * page, page), 0);
	rs_wait(a, m, 'f', A(p + (n - 2) * page), A(p + (n - 1) * page),
		UNF_UNMAP);
	mon = unf_monitor_tid();
	pthread_mutex_lock(&a->lock);
	for (j = m; j < a->n; j++) {
		struct rec *x = &a->r[j];

		if (x->what == 'b') {
			assert_int_equal(x->tid, mon);
			continue;
		}
		assert_true(x->what == 'f');
		assert_true(x->tid != mon && x->tid != gettid_());
		if (!relay)
			relay = x->tid;
		assert_int_equal(x->tid, relay);
		assert_int_equal(x->s, A(p + k * page)); /* in order */
		k += 2;
	}
	pthread_mutex_unlock(&a->lock);
	assert_int_equal(k, n);
	unf_unwatch(a->sub, A(p), A(p + n * page));
	rs_free(a);
	munmap(p, n * page);
}

/* A full ring coalesces instead of waiting; nothing is lost. */
static void test_coalesce(void **state)
{
	size_t n = 40, i;
	char *p = map(n * page);
	struct recsub *a, *b;
	struct unf_stats st0, st;
	unsigned m, j;
	uint64_t lo = UINT64_MAX, hi = 0, covered = 0;

	(void)state;
	unf_test_ring_cap = 4;
	a = rs_new(UNF_DEFERRED);
	b = rs_new(UNF_DEFERRED);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + n * page)), 0);
	unf_get_stats(&st0);
	m = rs_mark(a);
	pthread_mutex_lock(&a->lock);
	a->gate = true; /* its finishes wait: the ring fills */
	pthread_mutex_unlock(&a->lock);
	for (i = 0; i < n; i += 2)
		assert_int_equal(munmap(p + i * page, page), 0);
	unf_get_stats(&st);
	assert_true(st.coalesced > st0.coalesced);
	pthread_mutex_lock(&a->lock);
	a->gate = false;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	unf_unsubscribe(a->sub); /* drains */
	a->sub = NULL;
	for (j = m; j < a->n; j++) {
		struct rec *x = &a->r[j];

		if (x->what != 'f')
			continue;
		assert_true(x->s >= hi); /* still in order */
		if (x->s < lo)
			lo = x->s;
		hi = x->e;
		covered++;
	}
	assert_true(covered < n / 2); /* coalesced */
	assert_int_equal(lo, A(p));
	assert_int_equal(hi, A(p + (n - 1) * page));
	pthread_mutex_destroy(&a->lock);
	free(a);
	rs_free(b);
	unf_test_ring_cap = 0;
	munmap(p, n * page);
}

/* A deferred finish takes M while the holder of M calls unf_watch /
 * unf_unwatch: no deadlock (watch never waits for the relay). */
static pthread_mutex_t M = PTHREAD_MUTEX_INITIALIZER;
static char *dl_p;
static struct recsub *dl_sub;
static atomic_bool dl_done;

static void *dl_unmapper(void *arg)
{
	size_t i;

	(void)arg;
	for (i = 0; i < 200 && !dl_done; i++) {
		char *q = mmap(dl_p + 512 * page, page, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);

		if (q == MAP_FAILED)
			break;
		madvise(dl_p + (i % 256) * page, page, MADV_DONTNEED);
	}
	return NULL;
}

static void test_deadlock_relay(void **state)
{
	struct recsub *a, *w;
	uint64_t r0;
	pthread_t t;
	char *own;
	size_t i;

	(void)state;
	dl_p = map(1024 * page);
	own = map(page);
	a = rs_new(UNF_DEFERRED);
	w = rs_new(0);
	dl_sub = a;
	pthread_mutex_lock(&a->lock);
	a->take = &M;
	pthread_mutex_unlock(&a->lock);
	assert_int_equal(unf_watch(a->sub, A(dl_p), A(dl_p + 1024 * page)), 0);
	dl_done = false;
	r0 = regs();
	pthread_mutex_lock(&M);
	assert_int_equal(pthread_create(&t, NULL, dl_unmapper, NULL), 0);
	for (i = 0; i < 10000; i++) {
		/* a mapping of its own: registered and unregistered each time
		 * (maps read, ioctls, malloc under watch_lock) */
		assert_int_equal(unf_watch(w->sub, A(own), A(own + page)), 0);
		unf_unwatch(w->sub, A(own), A(own + page));
	}
	pthread_mutex_unlock(&M);
	dl_done = true;
	pthread_join(t, NULL);
	assert_true(regs() - r0 >= 10000);
	munmap(own, page);
	unf_unwatch(a->sub, A(dl_p), A(dl_p + 1024 * page));
	rs_free(w);
	rs_free(a);
	munmap(dl_p, 1024 * page);
}

/* Our descriptors closed and their numbers reused behind our back. */
static void test_fd_closed(void **state)
{
	int ufd, rd, wr, dn, tp[2], fds = count_fds();
	struct recsub *a;
	struct unf_sub *x;
	char *p = map(16 * page), c;

	(void)state;
	a = rs_new(0);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + 16 * page)), 0);
	unf_test_fds(&ufd, &rd, &wr);
	assert_true(ufd >= 0 && rd >= 0 && wr >= 0);
	/* replace the userfaultfd by /dev/null, the pipe's write end by a
	 * pipe of ours */
	dn = open("/dev/null", O_RDWR | O_CLOEXEC);
	assert_true(dn >= 0);
	assert_int_equal(dup2(dn, ufd), ufd);
	close(dn);
	assert_int_equal(pipe2(tp, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(dup2(tp[1], wr), wr);
	close(tp[1]);
	/* nobody hangs: the kernel context went with the last reference */
	assert_int_equal(munmap(p, page), 0);
	for (int i = 0; i < 3000; i++) {
		if (unf_watch(a->sub, A(p + 2 * page), A(p + 3 * page)) ==
		    -EBADF)
			break;
		usleep(1000);
	}
	assert_int_equal(unf_watch(a->sub, A(p + 4 * page), A(p + 9 * page)),
			 -EBADF);
	assert_int_equal(unf_prepare(a->sub, A(p), A(p + page), NULL), -EBADF);
	assert_int_equal(unf_subscribe(&rec_ops, a, 0, &x), -EBADF);
	unf_unwatch(a->sub, A(p), A(p + 16 * page));
	rs_free(a);
	/* the numbers that are not ours were neither written nor closed */
	assert_true(fcntl(ufd, F_GETFD) >= 0);
	assert_true(fcntl(wr, F_GETFD) >= 0);
	assert_int_equal(read(tp[0], &c, 1), -1);
	assert_int_equal(errno, EAGAIN);
	close(ufd);
	close(wr);
	close(tp[0]);
	assert_int_equal(count_fds(), fds);
	/* a fresh notifier works */
	a = rs_new(0);
	rs_free(a);
	munmap(p, 16 * page);
}

/*
 * The same inside one drain: a read that returns a full batch (32
 * messages, MON_BATCH in notifier.c) is followed by another read at once.
 * The application replaces the userfaultfd's number by a pipe of its own,
 * holding data, right after that full read (unf_test_hook_after_read): the
 * next read must not be made on it (its data would be consumed as
 * events, or, the pipe empty and blocking, the monitor would hang holding
 * the subscriber list). 32 threads are made to wait in munmap() (their
 * wchan is in userfaultfd) while the monitor is parked after an earlier
 * read, so that its next read takes exactly 32.
 */
#define MID_N 32
static atomic_int mid_reads;
static atomic_bool mid_parked, mid_go;
static _Atomic int mid_fd = -1, mid_to = -1;
static char *mid_p;

static void mid_drain_hook(void)
{
	uint64_t t0 = now_ns();
	int k;

	if (atomic_load(&mid_fd) < 0)
		return; /* not armed yet */
	k = atomic_fetch_add(&mid_reads, 1);
	if (k == 0) {
		atomic_store(&mid_parked, true);
		/* bounded: a regression fails, it does not hang */
		while (!atomic_load(&mid_go) && now_ns() - t0 < 20000000000ull)
			sched_yield();
	} else if (k == 1) {
		(void)dup2(atomic_load(&mid_to), atomic_load(&mid_fd));
	}
}

struct mid_thread {
	pthread_t th;
	_Atomic pid_t tid;
	char *at;
};

static void *mid_unmap(void *arg)
{
	struct mid_thread *m = arg;

	atomic_store(&m->tid, gettid_());
	munmap(m->at, page);
	return NULL;
}

/* Is thread @tid waiting in the kernel's userfaultfd code (its event
 * queued, not yet read)? */
static bool waits_in_uffd(pid_t tid)
{
	char path[64], buf[64] = { 0 };
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (read(fd, buf, sizeof(buf) - 1) < 0)
		buf[0] = 0;
	close(fd);
	return strncmp(buf, "userfaultfd", 11) == 0;
}

static void test_fd_replaced_mid_drain(void **state)
{
	struct mid_thread first, m[MID_N];
	struct recsub *a;
	int ufd, rd, wr, tp[2], avail = -1, i, all;
	uint64_t t0;

	(void)state;
	mid_p = map((2 * MID_N + 2) * page);
	memset(mid_p, 1, (2 * MID_N + 2) * page);
	atomic_store(&mid_reads, 0);
	atomic_store(&mid_parked, false);
	atomic_store(&mid_go, false);
	mid_fd = mid_to = -1; /* the hook does nothing until they are set */
	/* Set before the monitor thread starts (it reads it unlocked). */
	unf_test_hook_after_read = mid_drain_hook;
	a = rs_new(0);
	assert_int_equal(unf_watch(a->sub, A(mid_p),
				   A(mid_p + (2 * MID_N + 2) * page)),
			 0);
	unf_test_fds(&ufd, &rd, &wr);
	assert_true(ufd >= 0);
	assert_int_equal(pipe2(tp, O_CLOEXEC | O_NONBLOCK), 0);
	assert_int_equal(write(tp[1], "appdata!", 8), 8);
	atomic_store(&mid_fd, ufd);
	atomic_store(&mid_to, tp[0]);

	first.at = mid_p;
	assert_int_equal(pthread_create(&first.th, NULL, mid_unmap, &first), 0);
	for (t0 = now_ns(); !atomic_load(&mid_parked);) {
		if (now_ns() - t0 > 10000000000ull)
			fail_msg("the monitor read nothing in 10 s");
		usleep(100);
	}
	for (i = 0; i < MID_N; i++) {
		m[i].at = mid_p + (2 * i + 2) * page;
		atomic_store(&m[i].tid, 0);
		assert_int_equal(
			pthread_create(&m[i].th, NULL, mid_unmap, &m[i]), 0);
	}
	for (t0 = now_ns(), all = 0; !all;) {
		if (now_ns() - t0 > 10000000000ull) {
			atomic_store(&mid_go, true);
			fail_msg("the unmapping threads did not all wait");
		}
		usleep(1000);
		for (all = 1, i = 0; i < MID_N && all; i++)
			all = atomic_load(&m[i].tid) &&
			      waits_in_uffd(atomic_load(&m[i].tid));
	}
	atomic_store(&mid_go, true);
	assert_int_equal(pthread_join(first.th, NULL), 0);
	for (i = 0; i < MID_N; i++)
		assert_int_equal(pthread_join(m[i].th, NULL), 0);
	/* The threads return once their events are read, before the
	 * monitor's hook: wait for the notifier to call itself broken (at
	 * the check before its next read, or at its idle check a second
	 * after a read of the pipe), after which it reads nothing. */
	for (i = 0; i < 3000; i++) {
		if (unf_prepare(a->sub, A(mid_p + page), A(mid_p + 2 * page),
				NULL) == -EBADF)
			break;
		usleep(1000);
	}
	assert_int_equal(unf_prepare(a->sub, A(mid_p + page),
				     A(mid_p + 2 * page), NULL),
			 -EBADF);
	assert_int_equal(atomic_load(&mid_reads), 2);
	/* The application's data is still there. */
	assert_int_equal(ioctl(tp[0], FIONREAD, &avail), 0);
	assert_int_equal(avail, 8);
	rs_free(a); /* joins the monitor: the hook is ours again */
	unf_test_hook_after_read = NULL;
	atomic_store(&mid_fd, -1);
	/* the number is the application's: not closed */
	assert_true(fcntl(ufd, F_GETFD) >= 0);
	close(ufd);
	close(tp[0]);
	close(tp[1]);
	munmap(mid_p, (2 * MID_N + 2) * page);
}

/* fork: the child starts its own notifier; the parent's sub is inert. */
static void test_fork(void **state)
{
	struct recsub *a = rs_new(0);
	char *p = map(8 * page);
	pid_t pid;
	int st;

	(void)state;
	assert_int_equal(unf_watch(a->sub, A(p), A(p + 8 * page)), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct recsub c = { 0 };
		struct unf_sub *s2;
		bool ok = true;
		int i;

		pthread_mutex_init(&c.lock, NULL);
		pthread_cond_init(&c.cond, NULL);
		ok &= unf_watch(a->sub, A(p), A(p + page)) == -ECHILD;
		ok &= unf_monitor_tid() == 0;
		if (!CHILD_THREADS)
			_exit(ok ? 0 : 1);
		ok &= unf_subscribe(&rec_ops, &c, 0, &s2) == 0;
		ok &= unf_watch(s2, A(p), A(p + 8 * page)) == 0;
		ok &= munmap(p + page, page) == 0;
		for (i = 0; i < 2000; i++) {
			bool seen;

			pthread_mutex_lock(&c.lock);
			seen = c.n >= 2;
			pthread_mutex_unlock(&c.lock);
			if (seen)
				break;
			usleep(1000);
		}
		pthread_mutex_lock(&c.lock);
		ok &= c.n >= 2 && c.r[0].s == A(p + page);
		pthread_mutex_unlock(&c.lock);
		unf_unwatch(s2, A(p), A(p + 8 * page));
		unf_unsubscribe(s2);
		ok &= unf_monitor_tid() == 0;
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* the parent is untouched */
	{
		unsigned m = rs_mark(a);

		assert_int_equal(munmap(p + 2 * page, page), 0);
		rs_expect(a, m, A(p + 2 * page), A(p + 3 * page), UNF_UNMAP);
	}
	unf_unwatch(a->sub, A(p), A(p + 8 * page));
	rs_free(a);
	munmap(p, 8 * page);
}

/* A hole filled later, a mapping replaced: prepare registers it. */
static void test_prepare(void **state)
{
	struct recsub *a = rs_new(0);
	char *p = map(32 * page), *q;
	struct unf_stats s0, s1;
	unsigned m;

	(void)state;
	assert_int_equal(munmap(p + 8 * page, 8 * page), 0);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + 32 * page)), 0);
	q = mmap(p + 8 * page, 8 * page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	assert_true(q == p + 8 * page);
	assert_int_equal(
		unf_prepare(a->sub, A(p + 8 * page), A(p + 9 * page), NULL), 0);
	m = rs_mark(a);
	assert_int_equal(munmap(p + 8 * page, page), 0);
	rs_expect(a, m, A(p + 8 * page), A(p + 9 * page), UNF_UNMAP);
	/* nothing changed: the fast path, no slow prepare */
	assert_int_equal(unf_prepare(a->sub, A(p + 20 * page), A(p + 21 * page),
				     NULL),
			 0);
	unf_get_stats(&s0);
	assert_int_equal(unf_prepare(a->sub, A(p + 20 * page), A(p + 21 * page),
				     NULL),
			 0);
	unf_get_stats(&s1);
	assert_int_equal(s1.slow_prepares, s0.slow_prepares);
	assert_int_equal(s1.registrations, s0.registrations);
	unf_unwatch(a->sub, A(p), A(p + 32 * page));
	rs_free(a);
	munmap(p, 32 * page);
}

/* Strict: fence before the event is read, unfence after finish, also for
 * a deferred subscriber. */
static void test_strict(void **state)
{
	struct recsub *a = rs_new(UNF_STRICT), *b;
	char *p = map(8 * page);
	unsigned m, i;
	char seq[8];
	int k;

	(void)state;
	b = rs_new(UNF_STRICT | UNF_DEFERRED);
	assert_int_equal(unf_watch(a->sub, A(p), A(p + 8 * page)), 0);
	m = rs_mark(a);
	unsigned mb = rs_mark(b);
	assert_int_equal(munmap(p, page), 0);
	rs_wait(a, m, 'U', 0, 0, 0);
	rs_wait(b, mb, 'U', 0, 0, 0);
	pthread_mutex_lock(&a->lock);
	for (k = 0, i = m; i < a->n && k < 4; i++)
		seq[k++] = a->r[i].what;
	pthread_mutex_unlock(&a->lock);
	assert_memory_equal(seq, "FbfU", 4);
	pthread_mutex_lock(&b->lock);
	for (k = 0, i = mb; i < b->n && k < 4; i++)
		seq[k++] = b->r[i].what;
	pthread_mutex_unlock(&b->lock);
	assert_memory_equal(seq, "FbfU", 4);
	unf_unwatch(a->sub, A(p), A(p + 8 * page));
	rs_free(a);
	rs_free(b);
	munmap(p, 8 * page);
}

/* Registration denied by a seccomp filter after subscribing: -EPERM at
 * watch time. */
static void test_register_denied(void **state)
{
	pid_t pid;
	int st;

	(void)state;
	if (!CHILD_THREADS)
		skip();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct recsub c = { 0 };
		struct unf_sub *s;
		char *p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int r;

		if (unf_subscribe(&rec_ops, &c, 0, &s))
			_exit(2);
		if (t_sandbox_deny(NULL, 0, UFFDIO_REGISTER))
			_exit(77);
		r = unf_watch(s, A(p), A(p + 4 * page));
		unf_unsubscribe(s);
		_exit(r == -EPERM ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77)
		skip();
	assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_life),
		cmocka_unit_test(test_subscribe_einval),
		cmocka_unit_test(test_events_two_subs),
		cmocka_unit_test(test_watch_no_syscall),
		cmocka_unit_test(test_many_watches),
		cmocka_unit_test(test_sysv_refused),
		cmocka_unit_test(test_watch_lazy),
		cmocka_unit_test(test_hugetlb),
		cmocka_unit_test(test_deferred_order),
		cmocka_unit_test(test_coalesce),
		cmocka_unit_test(test_deadlock_relay),
		cmocka_unit_test(test_fd_closed),
		cmocka_unit_test(test_fd_replaced_mid_drain),
		cmocka_unit_test(test_fork),
		cmocka_unit_test(test_prepare),
		cmocka_unit_test(test_strict),
		cmocka_unit_test(test_register_denied),
	};
	struct unf_sub *s;
	int r;

	page = (uint64_t)sysconf(_SC_PAGESIZE);
	r = unf_subscribe(&rec_ops, NULL, 0, &s);
	if (r == -ENOSYS || r == -EPERM || r == -EACCES) {
		fprintf(stderr, "userfaultfd unavailable (%s): skipped\n",
			strerror(-r));
		return 77;
	}
	if (r) {
		fprintf(stderr, "unf_subscribe: %s\n", strerror(-r));
		return 1;
	}
	unf_unsubscribe(s);
	if (getenv("UODP_TEST_FILTER"))
		cmocka_set_test_filter(getenv("UODP_TEST_FILTER"));
	if (getenv("UODP_TEST_SKIP"))
		cmocka_set_skip_filter(getenv("UODP_TEST_SKIP"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}

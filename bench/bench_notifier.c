/* SPDX-License-Identifier: MIT */
/*
 * bench_notifier.c - what the kernel notifier costs, as ratios against
 * baselines measured in the same run:
 *  - first touch of 1 GiB registered with the monitor vs not registered
 *    (target >= 0.95: registration must not slow ordinary page faults);
 *  - latency of munmap() of one page of a registered, mapped region vs the
 *    same under a bare userfaultfd monitor (a thread that only polls and
 *    reads), with both threads on one CPU and on two CPUs, and with strict
 *    ordering (target <= 1.5 x the bare floor);
 *  - invalidation of 1 GiB of mapped entries, explicit and through munmap.
 * No assertions: figures only.
 * Usage: bench_notifier [pages-for-latency [touch|latency|invalidate]]
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine/internal.h"
#include "notifier/monitor.h"
#include "notifier/uffd.h"
#include "uodp.h"

#define GIB (1ull << 30)

static size_t page;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return v[n / 2];
}

static void pin(pid_t tid, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(tid, sizeof(set), &set))
		perror("sched_setaffinity");
}

static void unpin(pid_t tid)
{
	cpu_set_t set;
	long i, n = sysconf(_SC_NPROCESSORS_ONLN);

	CPU_ZERO(&set);
	for (i = 0; i < n; i++)
		CPU_SET(i, &set);
	sched_setaffinity(tid, sizeof(set), &set);
}

static char *map_anon(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

static void touch(char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i += page)
		p[i] = 1;
}

static void fault_all(struct uodp_umem *u, uint64_t va, uint64_t len)
{
	for (;;) {
		uint64_t seq;
		int64_t n;
		bool retry;

		uodp_umem_wait(u);
		seq = uodp_umem_read_seq(u);
		n = uodp_umem_map(u, va, len, UODP_ACCESS_ALL, seq);
		if (n == -EAGAIN)
			continue;
		if (n < 0) {
			fprintf(stderr, "uodp_umem_map: %s\n",
				uodp_strerror((int)n));
			exit(1);
		}
		uodp_umem_lock(u);
		retry = uodp_umem_retry(u, seq);
		uodp_umem_unlock(u);
		if (!retry)
			return;
	}
}

static struct uodp_umem *get(struct uodp_ctx *ctx, void *p, size_t len)
{
	struct uodp_umem *u;
	int r = uodp_umem_get(ctx, (uint64_t)(uintptr_t)p, len, UODP_ACCESS_ALL,
			      &u);

	if (r) {
		fprintf(stderr, "uodp_umem_get: %s\n", uodp_strerror(r));
		exit(1);
	}
	return u;
}

/* ------------------------------------------------------------------------ */
/* The bare monitor: poll + read, nothing else                               */
/* ------------------------------------------------------------------------ */

struct bare {
	int fd;
	pthread_t t;
	_Atomic pid_t tid;
	atomic_ulong events;
	atomic_bool stop;
};

static void *bare_main(void *arg)
{
	struct bare *b = arg;
	struct uffd_msg msgs[32];
	struct pollfd p = { .fd = b->fd, .events = POLLIN };

	atomic_store(&b->tid, (pid_t)syscall(SYS_gettid));
	while (!atomic_load(&b->stop)) {
		ssize_t n;

		if (poll(&p, 1, 100) <= 0)
			continue;
		n = read(b->fd, msgs, sizeof(msgs));
		if (n > 0)
			atomic_fetch_add(&b->events,
					 (unsigned long)n / sizeof(msgs[0]));
	}
	return NULL;
}

static void bare_start(struct bare *b)
{
	uint64_t f;

	memset(b, 0, sizeof(*b));
	b->fd = uffd_open(&f);
	if (b->fd < 0) {
		fprintf(stderr, "userfaultfd: %s\n", strerror(-b->fd));
		exit(1);
	}
	pthread_create(&b->t, NULL, bare_main, b);
	while (!atomic_load(&b->tid))
		sched_yield();
}

static void bare_stop(struct bare *b)
{
	atomic_store(&b->stop, true);
	pthread_join(b->t, NULL);
	close(b->fd);
}

/* ------------------------------------------------------------------------ */
/* First touch                                                               */
/* ------------------------------------------------------------------------ */

static double first_touch(struct uodp_ctx *ctx)
{
	char *p = map_anon(GIB);
	struct uodp_umem *u = ctx ? get(ctx, p, GIB) : NULL;
	double t0, t;

	t0 = now();
	touch(p, GIB);
	t = now() - t0;
	if (u)
		uodp_umem_release(u);
	munmap(p, GIB);
	return t;
}

static void bench_first_touch(void)
{
	double plain[3], reg[3], mp, mr;
	struct uodp_ctx *ctx;
	int i;

	uodp_ctx_create(NULL, 0, &ctx);
	first_touch(NULL); /* warm-up (the VM's first large write is slow) */
	for (i = 0; i < 3; i++) { /* alternate, so drifts hit both */
		if (i & 1) {
			reg[i] = first_touch(ctx);
			plain[i] = first_touch(NULL);
		} else {
			plain[i] = first_touch(NULL);
			reg[i] = first_touch(ctx);
		}
	}
	uodp_ctx_destroy(ctx);
	mp = median(plain, 3);
	mr = median(reg, 3);
	printf("first touch 1 GiB (write 1 byte/page), median of 3:\n"
	       "  unregistered %.1f ms (%.0f ns/page), registered %.1f ms "
	       "(%.0f ns/page)\n"
	       "  ratio unregistered/registered = %.3f (target >= 0.95)\n",
	       mp * 1e3, mp * 1e9 / (double)(GIB / page), mr * 1e3,
	       mr * 1e9 / (double)(GIB / page), mp / mr);
}

/* ------------------------------------------------------------------------ */
/* One-page munmap latency                                                   */
/* ------------------------------------------------------------------------ */

static atomic_ulong fences;

static void fence(struct uodp_ctx *c, void *p)
{
	(void)c;
	(void)p;
	atomic_fetch_add(&fences, 1);
}

static void unfence(struct uodp_ctx *c, void *p)
{
	(void)c;
	(void)p;
}

static void noop_inval(struct uodp_umem *u, uint64_t s, uint64_t e, void *p)
{
	(void)u;
	(void)s;
	(void)e;
	(void)p;
}

static const struct uodp_ctx_ops plain_ops = { .invalidate_range = noop_inval };
static const struct uodp_ctx_ops strict_ops = { .invalidate_range = noop_inval,
						.fence = fence,
						.unfence = unfence };

static unsigned long mon_unmaps(struct uodp_ctx *ctx)
{
	struct umon_stats st;

	umon_get_stats(ctx->mon, &st);
	return (unsigned long)st.unmap;
}

static unsigned long bare_events(void *arg)
{
	return atomic_load(&((struct bare *)arg)->events);
}

static unsigned long ctx_events(void *arg)
{
	return mon_unmaps(arg);
}

/* One way of unmapping a page: a range, and who must see its events. */
struct lane {
	const char *name;
	char *p;
	unsigned long (*events)(void *); /* NULL: nobody (unregistered) */
	void *arg;
	unsigned long e0;
	double *lat;
};

/*
 * munmap() page i of every lane in turn (the order rotates), i = 0..n-1.
 * Before each call the lane's monitor has handled all earlier events and
 * the thread has just yielded, so every call meets an idle monitor and a
 * fresh time slice: the latency of a lone unmapping. Interleaving the
 * lanes spreads the machine's load drifts over all of them alike.
 */
static void run_lanes(struct lane *l, int nl, size_t n)
{
	size_t i;
	int k, j;

	for (k = 0; k < nl; k++)
		l[k].e0 = l[k].events ? l[k].events(l[k].arg) : 0;
	for (i = 0; i < n; i++) {
		for (j = 0; j < nl; j++) {
			struct lane *x = &l[(i + (size_t)j) % (size_t)nl];
			double t0;

			while (x->events && x->events(x->arg) < x->e0 + i)
				sched_yield();
			sched_yield();
			t0 = now();
			munmap(x->p + i * page, page);
			x->lat[i] = now() - t0;
		}
	}
	for (k = 0; k < nl; k++)
		while (l[k].events && l[k].events(l[k].arg) < l[k].e0 + n)
			sched_yield();
}

static struct uodp_ctx *lane_ctx(struct lane *l, size_t n, unsigned flags,
				 int cpu, struct uodp_umem **u)
{
	struct uodp_ctx *ctx;

	uodp_ctx_create(flags ? &strict_ops : &plain_ops, flags, &ctx);
	*u = get(ctx, l->p, n * page);
	fault_all(*u, (uint64_t)(uintptr_t)l->p, n * page);
	while (!umon_tid(ctx->mon))
		sched_yield();
	pin(umon_tid(ctx->mon), cpu);
	l->events = ctx_events;
	l->arg = ctx;
	return ctx;
}

static void bench_latency_on(size_t n, int cpu)
{
	struct lane l[4] = { { "unregistered" },
			     { "bare uffd monitor" },
			     { "uodp" },
			     { "uodp strict" } };
	struct uodp_ctx *c2, *c3;
	struct uodp_umem *u2, *u3;
	struct bare b;
	double med[4];
	int k;

	for (k = 0; k < 4; k++) {
		l[k].p = map_anon(n * page);
		l[k].lat = malloc(n * sizeof(double));
		touch(l[k].p, n * page);
	}
	bare_start(&b);
	pin(atomic_load(&b.tid), cpu);
	uffd_register(b.fd, (uint64_t)(uintptr_t)l[1].p,
		      (uint64_t)(uintptr_t)l[1].p + n * page);
	l[1].events = bare_events;
	l[1].arg = &b;
	c2 = lane_ctx(&l[2], n, 0, cpu, &u2);
	c3 = lane_ctx(&l[3], n, UODP_CTX_STRICT, cpu, &u3);

	run_lanes(l, 4, n);

	for (k = 0; k < 4; k++) {
		med[k] = median(l[k].lat, n);
		free(l[k].lat);
	}
	bare_stop(&b);
	uodp_umem_release(u2);
	uodp_umem_release(u3);
	uodp_ctx_destroy(c2);
	uodp_ctx_destroy(c3);
	printf("  %s: unregistered %.2f us, bare uffd monitor %.2f us, "
	       "uodp %.2f us, uodp strict %.2f us\n"
	       "    ratio uodp/bare = %.2f (target <= 1.5), strict/bare = %.2f, "
	       "strict/uodp = %.2f, bare/unregistered = %.2f\n",
	       cpu == 0 ? "same CPU " : "cross CPU", med[0] * 1e6, med[1] * 1e6,
	       med[2] * 1e6, med[3] * 1e6, med[2] / med[1], med[3] / med[1],
	       med[3] / med[2], med[1] / med[0]);
}

static void bench_latency(size_t n)
{
	pid_t self = (pid_t)syscall(SYS_gettid);

	printf("munmap of 1 page, median of %zu per lane, lanes interleaved, "
	       "each call on an idle monitor:\n",
	       n);
	pin(self, 0);
	bench_latency_on(n, 0);
	if (sysconf(_SC_NPROCESSORS_ONLN) >= 2)
		bench_latency_on(n, 1);
	else
		printf("  (one CPU only: no cross-CPU figures)\n");
	unpin(self);
}

/* ------------------------------------------------------------------------ */
/* Invalidation of 1 GiB mapped                                              */
/* ------------------------------------------------------------------------ */

static atomic_int inval_calls;

static void on_inval(struct uodp_umem *u, uint64_t s, uint64_t e, void *p)
{
	(void)u;
	(void)s;
	(void)e;
	(void)p;
	atomic_fetch_add(&inval_calls, 1);
}

static const struct uodp_ctx_ops inval_ops = { .invalidate_range = on_inval };

static void bench_invalidate(void)
{
	struct uodp_ctx *ctx;
	struct uodp_umem *u;
	char *p;
	double t0, t_explicit, t_munmap_ret, t_done, t_plain;
	uint64_t pages = GIB / page;
	struct uodp_umem_stats st;

	/* baseline: munmap of 1 GiB populated, no registration */
	p = map_anon(GIB);
	touch(p, GIB);
	t0 = now();
	munmap(p, GIB);
	t_plain = now() - t0;

	/* explicit uodp_invalidate_range() over 1 GiB of entries */
	uodp_ctx_create(&inval_ops, 0, &ctx);
	p = map_anon(GIB);
	u = get(ctx, p, GIB);
	fault_all(u, (uint64_t)(uintptr_t)p, GIB);
	t0 = now();
	uodp_invalidate_range(ctx, (uint64_t)(uintptr_t)p,
			      (uint64_t)(uintptr_t)p + GIB);
	t_explicit = now() - t0;

	/* the same through the kernel: munmap of the whole region */
	fault_all(u, (uint64_t)(uintptr_t)p, GIB);
	uodp_umem_stats(u, &st);
	t0 = now();
	munmap(p, GIB);
	t_munmap_ret = now() - t0;
	for (;;) {
		struct uodp_umem_stats s2;

		uodp_umem_stats(u, &s2);
		if (s2.mapped_now == 0 && s2.invalidations > st.invalidations)
			break;
		sched_yield();
	}
	uodp_umem_wait(u);
	t_done = now() - t0;
	uodp_umem_release(u);
	uodp_ctx_destroy(ctx);

	printf("invalidation of 1 GiB mapped (%llu entries):\n"
	       "  uodp_invalidate_range: %.2f ms (%.1f ns/page)\n"
	       "  munmap, registered: returns after %.2f ms, entries gone "
	       "after %.2f ms\n"
	       "  munmap, unregistered (baseline): %.2f ms; ratio "
	       "registered/unregistered (until entries gone) = %.2f\n",
	       (unsigned long long)pages, t_explicit * 1e3,
	       t_explicit * 1e9 / (double)pages, t_munmap_ret * 1e3,
	       t_done * 1e3, t_plain * 1e3, t_done / t_plain);
}

static void print_load(const char *when)
{
	double l[3];

	if (getloadavg(l, 3) == 3)
		printf("load average at %s: %.2f %.2f %.2f\n", when, l[0], l[1],
		       l[2]);
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 0) : 2000;
	const char *only = argc > 2 ? argv[2] : NULL;
	uint64_t f;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);
	page = (size_t)sysconf(_SC_PAGESIZE);
	fd = uffd_open(&f);
	if (fd < 0) {
		printf("userfaultfd unavailable (%s): nothing to measure\n",
		       strerror(-fd));
		return 0;
	}
	close(fd);
	printf("bench_notifier: page %zu, %ld CPUs, uffd features %#llx\n",
	       page, sysconf(_SC_NPROCESSORS_ONLN), (unsigned long long)f);
	print_load("start");
	if (!only || !strcmp(only, "touch"))
		bench_first_touch();
	if (!only || !strcmp(only, "latency"))
		bench_latency(n);
	if (!only || !strcmp(only, "invalidate"))
		bench_invalidate();
	print_load("end");
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * bench_munmap - what a munmap of watched memory costs the application,
 * in one run, interleaved sample by sample:
 *
 *   unwatched        syscall(SYS_munmap) of memory nobody watches (the
 *                    baseline: what libc's munmap does)
 *   unwatched+hook   the same through libuodp-hooks.so's munmap (what the
 *                    hooks add to every munmap of the process)
 *   watched/kernel   syscall(SYS_munmap) of memory in a uodp region with
 *                    entries: the kernel's UNMAP event, the thread waits for
 *                    the monitor thread
 *   watched/hook     the same memory, libuodp-hooks.so's munmap: the
 *                    in-thread fast path
 *   UCM              munmap() with UCX's memory hooks installed and a
 *                    UCM_EVENT_VM_UNMAPPED handler (phase 2, see below)
 *   floor            no uodp: UFFDIO_UNREGISTER of the chunk, then
 *                    syscall(SYS_munmap), on memory registered (WP mode, the
 *                    notifier's features) with a userfaultfd of the
 *                    benchmark's own: the least any fast path that takes
 *                    the range out of the userfaultfd before unmapping can
 *                    cost (no delivery, no lookup, no lock)
 *
 * for 4 KiB and 2 MiB, with every thread on CPU 0 ("same CPU") and with
 * the notifier's threads on CPU 1 ("other CPU"). Prints median and p99 in
 * microseconds and the ratio unwatched median / row median (1.0 = free).
 *
 * The hooks library is dlopen()ed (not preloaded) so that its munmap is
 * called only by the hook rows. UCM cannot be removed once installed (in
 * its default mode it patches libc's munmap code, which the hook rows call
 * too), so the run has two phases: the four rows without UCM, then all
 * five with UCM installed (the baseline row is a raw system call, which
 * UCM does not see, so both phases share the same baseline).
 *
 * Usage: bench_munmap [samples-4k [samples-2m]]   (default 2000 300)
 * Environment: UODP_HOOKS_LIB (the library; default: the build's),
 * BENCH_ROWS (a bit mask of the rows, in the order above), BENCH_WHOLE=1
 * (every chunk a mapping of its own, so a munmap splits nothing),
 * BENCH_SETTLE_US (yielding between samples, default 100),
 * BENCH_DEFERRED=1 (the context delivers on the relay thread).
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h" /* bench_rand() only: this program has its own harness */
#include "notifier/intercept.h"
#include "notifier/uffd.h"
#include "uodp.h"

#ifdef HAVE_UCM
#include <ucm/api/ucm.h>
#endif

#ifndef UODP_HOOKS_SO
#define UODP_HOOKS_SO "libuodp-hooks.so"
#endif

enum {
	R_RAW,
	R_HOOK_UNW,
	R_KERNEL,
	R_HOOK,
	R_UCM,
	R_FLOOR,
	NROWS
};
static const char *const row_name[NROWS] = {
	"unwatched",	"unwatched+hook", "watched/kernel",
	"watched/hook", "UCM hooks",	  "floor",
};

static int (*hook_munmap)(void *, size_t);
static int (*hooks_enable)(int);
static int (*hooks_stats)(struct uodp_icpt_stats *);
static bool have_ucm;
/* The floor row's userfaultfd (not the notifier's: one userfaultfd per
 * mapping, and its arenas are mappings of their own); -1: row skipped. */
static int floor_uffd = -1;
static _Atomic uint64_t invals, ucm_events;
static struct uodp_ctx *ctx;
static unsigned rows = ~0u; /* BENCH_ROWS: a mask of the rows to run */
/* Why 100 us between samples: the monitor's work after reading an event
 * (delivery, invalidation) takes tens of microseconds; it must not land
 * in the next row's sample. BENCH_SETTLE_US overrides. */
static unsigned settle_us = 100;
/* BENCH_WHOLE=1: every chunk is a mapping of its own (its last page a
 * PROT_NONE separator), so each munmap removes whole mappings */
static bool whole;

static void on_inval(struct uodp_umem *u, const struct uodp_range *r,
		     void *priv)
{
	(void)u;
	(void)r;
	(void)priv;
	atomic_fetch_add_explicit(&invals, 1, memory_order_relaxed);
}

#ifdef HAVE_UCM
static void on_ucm(ucm_event_type_t type, ucm_event_t *ev, void *arg)
{
	(void)type;
	(void)ev;
	(void)arg;
	atomic_fetch_add_explicit(&ucm_events, 1, memory_order_relaxed);
}
#endif

static double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Busy for settle_us, yielding: a runnable monitor gets the CPU, and the
 * CPU stays awake (a sleep would make every next sample a cold one). */
static void settle(void)
{
	double end = now_us() + settle_us;

	while (now_us() < end)
		sched_yield();
}

/* ---- arenas: one mapping of K chunks per row, used one chunk a sample */

#define GUARD 4096

struct arena {
	char *base;
	size_t chunk, k, next, stride;
	struct uodp_umem *um;
	bool floor; /* registered with floor_uffd */
};

static int floor_unregister(void *p, size_t len)
{
	uint64_t s = (uint64_t)(uintptr_t)p;

	return uffd_unregister(floor_uffd, s, s + len);
}

static void arena_free(struct arena *a)
{
	if (!a->base)
		return;
	if (a->um)
		uodp_umem_release(a->um);
	if (a->floor) /* else the munmap below would wait for a reader */
		floor_unregister(a->base, a->k * a->stride);
	/* what is left, guards included (raw: nothing worth timing) */
	syscall(SYS_munmap, a->base - GUARD, a->k * a->stride + 2 * GUARD);
	a->base = NULL;
	a->um = NULL;
}

static void arena_new(struct arena *a, int row, size_t chunk, size_t k)
{
	size_t i, span;
	char *g;
	int64_t r;

	arena_free(a);
	a->floor = false;
	a->chunk = chunk;
	a->k = k;
	a->next = 0;
	/* whole: each chunk its own mapping, a guard page after it */
	a->stride = whole ? chunk + GUARD : chunk;
	span = k * a->stride;
	/* Between two PROT_NONE guard pages: an arena never merges with
	 * its neighbours into one mapping. (The notifier watches whole
	 * mappings: an "unwatched" arena merged with a watched one would be
	 * watched too, and its munmap would wait for the monitor.) */
	g = mmap(NULL, span + 2 * GUARD, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	if (g == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	a->base = g + GUARD;
	for (i = 0; i < (whole ? k : 1); i++) {
		char *c = a->base + i * a->stride;
		size_t len = whole ? chunk : chunk * k;

		if (mmap(c, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != c) {
			perror("mmap");
			exit(1);
		}
		memset(c, 1, len);
		if (row == R_FLOOR) {
			uint64_t s = (uint64_t)(uintptr_t)c;

			r = uffd_register(floor_uffd, s, s + len);
			if (r) {
				fprintf(stderr,
					"UFFDIO_REGISTER (floor row): "
					"%s\n",
					strerror((int)-r));
				exit(1);
			}
			a->floor = true;
		}
	}
	if (row == R_KERNEL || row == R_HOOK) {
		r = uodp_umem_get(ctx, a->base, span, UODP_ACCESS_ALL, &a->um);
		if (r) {
			fprintf(stderr, "uodp_umem_get: %s\n",
				uodp_strerror((int)r));
			exit(1);
		}
		for (i = 0; i < (whole ? k : 1); i++) {
			r = uodp_umem_read_begin(a->um);
			if (r >= 0)
				r = uodp_umem_map(a->um,
						  a->base + i * a->stride,
						  whole ? chunk : chunk * k,
						  UODP_ACCESS_WRITE,
						  (uint64_t)r);
			if (r < 0) {
				fprintf(stderr, "uodp_umem_map: %s\n",
					uodp_strerror((int)r));
				exit(1);
			}
		}
	}
}

static double sample(struct arena *a, int row)
{
	char *p = a->base + a->next++ * a->stride;
	double t0, t1;
	int r;

	t0 = now_us();
	switch (row) {
	case R_RAW:
	case R_KERNEL:
		r = (int)syscall(SYS_munmap, p, a->chunk);
		break;
	case R_HOOK_UNW:
	case R_HOOK:
		r = hook_munmap(p, a->chunk);
		break;
	case R_FLOOR:
		/* no reader: an unregister that failed would make the munmap
		 * wait for ever */
		r = floor_unregister(p, a->chunk);
		if (r) {
			fprintf(stderr, "UFFDIO_UNREGISTER (floor row): %s\n",
				strerror(-r));
			exit(1);
		}
		r = (int)syscall(SYS_munmap, p, a->chunk);
		break;
	default:
		r = munmap(p, a->chunk); /* through UCM's patched GOT */
		break;
	}
	t1 = now_us();
	if (r) {
		perror("munmap");
		exit(1);
	}
	return t1 - t0;
}

/* ---- CPU placement ---- */

static void pin_tid(pid_t tid, int cpu)
{
	cpu_set_t s;

	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	if (sched_setaffinity(tid, sizeof(s), &s))
		perror("sched_setaffinity");
}

/* This thread on CPU 0; the notifier's threads (uodp-monitor, uodp-relay)
 * on @other. */
static void place(int other)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	pin_tid(0, 0);
	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[300], comm[32] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
			 e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "uodp-", 5))
			pin_tid((pid_t)atoi(e->d_name), other);
		fclose(f);
	}
	closedir(d);
}

/* ---- statistics ---- */

static uint64_t rnd(void)
{
	static uint64_t x = 88172645463325252ull;

	return bench_rand(&x);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);

	return v[i];
}

static bool skipped(int r)
{
	return (r == R_UCM && !have_ucm) || (r == R_FLOOR && floor_uffd < 0) ||
	       !(rows & (1u << r));
}

static void run(const char *mode, size_t chunk, size_t k, size_t n)
{
	static struct arena ar[NROWS];
	struct arena *a;
	double *t[NROWS], med[NROWS], p99[NROWS];
	struct uodp_icpt_stats h0 = { 0 }, h1 = { 0 };
	uint64_t inv0 = atomic_load(&invals), ue0 = atomic_load(&ucm_events);
	size_t i;
	int r, j;

	for (r = 0; r < NROWS; r++) {
		t[r] = calloc(n, sizeof(double));
		if (!t[r])
			exit(1);
	}
	if (hooks_stats)
		hooks_stats(&h0);
	for (i = 0; i < n; i++) {
		int order[NROWS];

		/* a fresh random order each round: no row always follows
		 * the same one (what a row leaves behind, such as a cold
		 * cache, lands on another row each time) */
		for (j = 0; j < NROWS; j++)
			order[j] = j;
		for (j = NROWS - 1; j > 0; j--) {
			int x = (int)(rnd() % (uint64_t)(j + 1)), y = order[j];

			order[j] = order[x];
			order[x] = y;
		}
		for (j = 0; j < NROWS; j++) {
			/* (% NROWS: GCC 12's -Warray-bounds cannot tell that
			 * the shuffled order stays below NROWS) */
			r = order[j] % NROWS;
			if (skipped(r))
				continue;
			a = &ar[r];
			if (!a->base || a->next == a->k)
				arena_new(a, r, chunk, k);
			t[r][i] = sample(a, r);
			/* Let the monitor finish what a kernel event left it
			 * (on one CPU it would run inside the next sample). */
			settle();
		}
	}
	for (r = 0; r < NROWS; r++)
		arena_free(&ar[r]);
	if (hooks_stats)
		hooks_stats(&h1);
	for (r = 0; r < NROWS; r++) {
		qsort(t[r], n, sizeof(double), cmp);
		med[r] = pct(t[r], n, 0.5);
		p99[r] = pct(t[r], n, 0.99);
	}
	printf("\n%s, %zu KiB munmap, %zu samples per row (us)\n", mode,
	       chunk >> 10, n);
	printf("  %-16s %10s %10s %8s\n", "row", "median", "p99", "ratio");
	for (r = 0; r < NROWS; r++) {
		if (skipped(r))
			continue;
		printf("  %-16s %10.2f %10.2f %8.2f\n", row_name[r], med[r],
		       p99[r], med[R_RAW] / med[r]);
	}
	printf("  hook fast path: %lu of %zu watched munmaps (busy %lu, "
	       "too many %lu); driver invalidations %lu; UCM events %lu\n",
	       (unsigned long)(h1.fast - h0.fast), n,
	       (unsigned long)(h1.busy - h0.busy),
	       (unsigned long)(h1.toomany - h0.toomany),
	       (unsigned long)(atomic_load(&invals) - inv0),
	       (unsigned long)(atomic_load(&ucm_events) - ue0));
	for (r = 0; r < NROWS; r++)
		free(t[r]);
}

#ifdef HAVE_UCM
/* libucm is loaded only now: linked, it patches libc's munmap as the
 * program starts (its bistro mode), and every row would pay for it. */
static bool ucm_install(void)
{
	typedef ucs_status_t seh_fn(int, int, ucm_event_callback_t, void *);
	seh_fn *seh;
	void *h, *p;

	/* libucm needs libucs's symbols (it does not link it) */
	dlopen("libucs.so.0", RTLD_NOW | RTLD_GLOBAL);
	h = dlopen("libucm.so.0", RTLD_NOW | RTLD_GLOBAL);
	if (!h) {
		printf("\nUCM: %s: UCM rows skipped\n", dlerror());
		return false;
	}
	p = dlsym(h, "ucm_set_event_handler");
	memcpy(&seh, &p, sizeof(p));
	if (!seh || seh(UCM_EVENT_VM_UNMAPPED, 0, on_ucm, NULL) != UCS_OK) {
		printf("\nUCM: ucm_set_event_handler failed: UCM rows "
		       "skipped\n");
		return false;
	}
	return true;
}
#endif

/* The floor row's userfaultfd, opened as the notifier opens its own
 * (uffd_open: the same features, WP_ASYNC where the kernel has it). */
static void floor_open(void)
{
	uint64_t features;

	floor_uffd = uffd_open(&features);
	if (floor_uffd < 0)
		printf("floor row skipped: userfaultfd: %s\n",
		       strerror(-floor_uffd));
}

/* Both placements, both sizes. */
static void modes(size_t n4, size_t n2)
{
	place(0);
	run("same CPU", 4096, 256, n4);
	run("same CPU", 2u << 20, 8, n2);
	if (sysconf(_SC_NPROCESSORS_ONLN) > 1) {
		place(1);
		run("other CPU", 4096, 256, n4);
		run("other CPU", 2u << 20, 8, n2);
	} else {
		printf("\nother CPU: skipped (one CPU online)\n");
	}
}

int main(int argc, char **argv)
{
	struct uodp_ctx_ops ops = { .invalidate = on_inval };
	size_t n4 = argc > 1 ? strtoul(argv[1], NULL, 0) : 2000;
	size_t n2 = argc > 2 ? strtoul(argv[2], NULL, 0) : 300;
	const char *so = getenv("UODP_HOOKS_LIB");
	struct uodp_umem *anchor;
	char *anchor_mem;
	void *h, *p;
	int r;

	if (!so)
		so = UODP_HOOKS_SO;
	whole = getenv("BENCH_WHOLE") != NULL;
	if (getenv("BENCH_SETTLE_US"))
		settle_us = (unsigned)atoi(getenv("BENCH_SETTLE_US"));
	if (getenv("BENCH_ROWS"))
		rows = (unsigned)strtoul(getenv("BENCH_ROWS"), NULL, 0);
	/* Global, so that the notifier finds it; not preloaded, so that
	 * only the hook rows call its munmap. */
	h = dlopen(so, RTLD_NOW | RTLD_GLOBAL);
	if (!h) {
		fprintf(stderr, "cannot load %s: %s\n", so, dlerror());
		return 1;
	}
	p = dlsym(h, "munmap");
	memcpy(&hook_munmap, &p, sizeof(p));
	p = dlsym(h, "uodp_hooks_enable");
	memcpy(&hooks_enable, &p, sizeof(p));
	p = dlsym(h, "uodp_hooks_stats");
	memcpy(&hooks_stats, &p, sizeof(p));
	if (!hook_munmap || !hooks_stats) {
		fprintf(stderr, "%s: symbols missing\n", so);
		return 1;
	}

	r = uodp_ctx_create(
		&ops, getenv("BENCH_DEFERRED") ? UODP_CTX_DEFERRED : 0, &ctx);
	if (r) {
		fprintf(stderr, "uodp_ctx_create: %s\n", uodp_strerror(r));
		return 1;
	}
	/* A region kept for the whole run: the notifier (and the placement
	 * of its threads) stays while the arenas come and go. */
	anchor_mem = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	r = uodp_umem_get(ctx, anchor_mem, 1 << 16, UODP_ACCESS_ALL, &anchor);
	if (r) {
		printf("SKIP: no kernel monitor here: %s\n", uodp_strerror(r));
		return 77;
	}

	floor_open();
	printf("bench_munmap: %ld CPUs, hooks %s, samples %zu (4 KiB) %zu "
	       "(2 MiB)\n",
	       sysconf(_SC_NPROCESSORS_ONLN), so, n4, n2);
	printf("\n== phase 1: without UCX's hooks\n");
	modes(n4, n2);
#ifdef HAVE_UCM
	/* Default (bistro) mode, as a UCX user gets it: libc's munmap is
	 * patched, so the hook rows of this phase run on top of UCM too. */
	have_ucm = ucm_install();
	if (have_ucm) {
		printf("\n== phase 2: UCX's hooks installed (UCM default "
		       "mode; the hook rows now run on top of UCM)\n");
		modes(n4, n2);
	}
#else
	printf("\nUCM: built without UCX (libucx-dev): UCM rows skipped\n");
#endif
	uodp_umem_release(anchor);
	uodp_ctx_destroy(ctx);
	if (floor_uffd >= 0)
		close(floor_uffd);
	return 0;
}

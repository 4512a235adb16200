/* SPDX-License-Identifier: MIT */
/*
 * bench_adapters - the cost of one watched munmap() to the unmapping
 * thread, with each adapter against the middleware's own monitor and
 * against no monitor, in one run:
 *
 *   none         nothing watches the memory
 *   ucm-hooks    UCX's own monitor: UCM's mmap hooks and a VM_UNMAPPED
 *                handler (what ucs_rcache installs); synchronous
 *   uodp-ucm     libuodp-ucm: hooks off, the range watched, UCX's handler
 *                fed from uodp's relay thread
 *   uodp-ofi     libuodp-ofi: the range subscribed through the imported
 *                monitor, libfabric's notify reached from the relay thread
 *   ofi-memhooks libfabric's own memhooks monitor: not measurable here -
 *                it starts with a registration cache, and no provider of
 *                Debian's libfabric caches host memory without RDMA
 *                hardware (the row says so)
 *
 * Each row runs in a child process of its own (monitors are process-wide:
 * UCM's hooks, libfabric's one imported monitor). Columns: median and p99
 * of munmap() as the application sees it, and for the asynchronous rows
 * the delivery latency (munmap() called -> the middleware's handler ran).
 *
 *   bench_adapters [iterations]     (default 2000 per size)
 */
#include <errno.h>
#include <sched.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uodp.h"
#ifdef HAVE_UODP_OFI
#include <rdma/fabric.h>
#include <rdma/fi_ext.h>

#include "uodp_ofi.h"
#endif
#ifdef HAVE_UODP_UCM
#include <ucm/api/ucm.h>

#include "uodp_ucm.h"
#endif

extern char **environ;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void stats(uint64_t *v, int n, double *med, double *p99)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_u64);
	*med = (double)v[n / 2] / 1e3;
	*p99 = (double)v[(n * 99) / 100] / 1e3;
}

/* The delivery side: the handler stamps the time it ran. */
static atomic_ulong delivered;
static atomic_uint_fast64_t delivered_at;

static void stamp(void)
{
	atomic_store(&delivered_at, now_ns());
	atomic_fetch_add(&delivered, 1);
}

/* How a row watches and unwatches one mapping. */
struct row {
	const char *name;
	bool hooks_off; /* child runs with UCM's hooks off in its env */
	bool async;
	int (*setup)(void);
	int (*watch)(void *p, size_t len);
	void (*unwatch)(void *p, size_t len);
	struct uodp_ctx *(*ctx)(void); /* waited in sync between rounds */
};

static int run_row(const struct row *row, int iters)
{
	static const size_t sizes[] = { 4096, 2u << 20 };
	uint64_t *t = calloc((size_t)iters, sizeof(*t));
	uint64_t *d = calloc((size_t)iters, sizeof(*d));
	unsigned si;
	int r, i;

	if (!t || !d)
		return 1;
	r = row->setup ? row->setup() : 0;
	if (r) {
		printf("%-12s unavailable: %s\n", row->name, strerror(-r));
		return 0;
	}
	for (si = 0; si < 2; si++) {
		size_t len = sizes[si];
		int n = si ? iters / 8 : iters; /* 2 MiB: fewer */
		double m, p, dm = 0, dp = 0;
		int lost = 0, nd = 0;

		for (i = 0; i < n; i++) {
			char *p0 = mmap(NULL, len, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			unsigned long before;
			uint64_t t0, t1;

			if (p0 == MAP_FAILED)
				return 1;
			memset(p0, 1, len);
			if (row->watch && row->watch(p0, len))
				return 1;
			before = atomic_load(&delivered);
			t0 = now_ns();
			munmap(p0, len);
			t1 = now_ns();
			t[i] = t1 - t0;
			if (row->async) {
				uint64_t dl = t1 + 5000000000ull;

				/* yield: on few CPUs a spin would take
				 * the monitor's and relay's CPU */
				while (atomic_load(&delivered) == before &&
				       now_ns() < dl)
					sched_yield();
				/* Counted, not hidden in the percentiles: a
				 * notification that never comes is a bug. */
				if (atomic_load(&delivered) == before)
					lost++; /* no delivery time to take */
				else
					d[nd++] =
						atomic_load(&delivered_at) - t0;
				/* not timed: the relay finishes this event
				 * before the next round, so rounds do not
				 * overlap */
				while (row->ctx && !uodp_ctx_sync(row->ctx()))
					sched_yield();
			}
			if (row->unwatch)
				row->unwatch(p0, len);
		}
		stats(t, n, &m, &p);
		if (row->async && nd)
			stats(d, nd, &dm, &dp);
		printf("%-12s %5zu KiB  munmap median %7.2f us  p99 %8.2f us",
		       row->name, len >> 10, m, p);
		if (row->async)
			printf("  delivery median %7.2f us  p99 %8.2f us  "
			       "lost %d",
			       dm, dp, lost);
		printf("\n");
	}
	free(t);
	free(d);
	return 0;
}

/* ---- rows ---- */

#ifdef HAVE_UODP_UCM
static void ucm_handler(ucm_event_type_t type, ucm_event_t *ev, void *arg)
{
	(void)type;
	(void)ev;
	(void)arg;
	stamp();
}

static int ucm_hooks_setup(void)
{
	/* as ucs_rcache_create() does, with UCM's hooks installed */
	return ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, ucm_handler,
				     NULL) == UCS_OK ?
		       0 :
		       -ENOTSUP;
}

static int uodp_ucm_setup(void)
{
	int r = uodp_ucm_start(0);

	if (r)
		return r;
	return ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, ucm_handler,
				     NULL) == UCS_OK ?
		       0 :
		       -ENOTSUP;
}

static int ucm_watch(void *p, size_t len)
{
	return uodp_ucm_watch(p, len);
}

static void ucm_unwatch(void *p, size_t len)
{
	uodp_ucm_unwatch(p, len);
}
#endif

#ifdef HAVE_UODP_OFI
static struct fid_mem_monitor *mon;
static struct fi_ops_mem_notify *lf_notify;

/* As libfabric's cache: notify drops the entry (unsubscribe), then
 * libfabric's own notify runs. */
static void ofi_notify(struct fid_mem_monitor *m, const void *addr, size_t len)
{
	stamp();
	m->export_ops->unsubscribe(m, addr, len);
	lf_notify->notify(m, addr, len);
}

static struct fi_ops_mem_notify wrapped = {
	.size = sizeof(struct fi_ops_mem_notify),
	.notify = ofi_notify,
};

static int uodp_ofi_setup(void)
{
	int r = uodp_ofi_import(0);

	if (r)
		return r;
	mon = uodp_ofi_monitor();
	lf_notify = mon->import_ops;
	mon->import_ops = &wrapped;
	return mon->export_ops->start(mon);
}

static int ofi_watch(void *p, size_t len)
{
	return mon->export_ops->subscribe(mon, p, len);
}
#endif

/* UCM's hooks are off in every row but their own: this program links
 * libucs, whose constructor would otherwise hook munmap in the baseline and
 * the libfabric rows too. */
static const struct row rows[] = {
	{ "none", true, false, NULL, NULL, NULL },
#ifdef HAVE_UODP_UCM
	{ "ucm-hooks", false, true, ucm_hooks_setup, NULL, NULL },
	{ "uodp-ucm", true, true, uodp_ucm_setup, ucm_watch, ucm_unwatch },
#endif
#ifdef HAVE_UODP_OFI
	{ "uodp-ofi", true, true, uodp_ofi_setup, ofi_watch, NULL },
#endif
};

int main(int argc, char **argv)
{
	int iters = argc > 1 ? atoi(argv[1]) : 2000;
	unsigned i;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc > 2) { /* a child: one row */
		for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
			if (!strcmp(rows[i].name, argv[2]))
				return run_row(&rows[i], iters);
		return 2;
	}
	if (iters < 16)
		iters = 16;
	printf("bench_adapters: cost of munmap() to the unmapping thread, "
	       "%d iterations (4 KiB), %d (2 MiB); %ld CPUs\n",
	       iters, iters / 8, sysconf(_SC_NPROCESSORS_ONLN));
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		char n[16],
			*args[4] = { argv[0], n, (char *)rows[i].name, NULL };
		pid_t pid;
		int st;

		snprintf(n, sizeof(n), "%d", iters);
		unsetenv("UCX_MEM_MMAP_HOOK_MODE");
		unsetenv("UCX_MEM_MALLOC_HOOKS");
		if (rows[i].hooks_off) {
			setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 1);
			setenv("UCX_MEM_MALLOC_HOOKS", "no", 1);
		}
		if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args,
				environ) ||
		    waitpid(pid, &st, 0) != pid)
			return 1;
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			printf("%-12s failed (status %d)\n", rows[i].name, st);
	}
	printf("%-12s not measured: libfabric starts it with a registration "
	       "cache, and no provider here caches host memory\n",
	       "ofi-memhooks");
	return 0;
}

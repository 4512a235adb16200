/* SPDX-License-Identifier: MIT */
/*
 * suite_engine.c - the engine's benchmark suites (issue 2 section 6 and the
 * engine parts of issue 5): registration, the fault path, translation
 * memory, invalidation, lookup scaling and first touch. Each figure comes
 * with a baseline measured in the same run, on the same sizes:
 *
 *   reg     uodp_umem_get over 4 KiB .. 64 GiB (full: 1 TiB) of reserved
 *           address space vs pinned registration (mlock +
 *           MADV_POPULATE_WRITE of fresh memory of that size);
 *   map     uodp_umem_map of 1 GiB of fresh memory in whole / 2 MiB / ...
 *           calls vs raw MADV_POPULATE_* with the same calls; one-page
 *           fault latency vs one raw populate;
 *   mem     translation-table bytes per mapped and per unmapped page, and
 *           the fixed heap cost of a region;
 *   inval   uodp_invalidate_range of 1 page .. 1 GiB of mapped memory on a
 *           manual context (munmap of the same memory as a yardstick);
 *   lookup  invalidation and interval-tree queries with 1 .. 10^6 regions
 *           vs a linear scan of the same intervals;
 *   touch   first touch of registered memory vs unregistered memory.
 *
 * Owns only its measurements: every region, context and mapping a suite
 * creates is released before the suite returns. Suites use manual contexts
 * (no userfaultfd) except where the kernel monitor is what is measured.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <uodp.h>

#include "bench.h"
#include "lib/itree.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define RW (UODP_ACCESS_READ | UODP_ACCESS_WRITE)

static volatile uint64_t sink; /* keeps measured loops from being elided */

static uint64_t page_size(void)
{
	return (uint64_t)sysconf(_SC_PAGESIZE);
}

static double ns_to(uint64_t ns, const char *unit)
{
	if (!strcmp(unit, "ns"))
		return (double)ns;
	if (!strcmp(unit, "us"))
		return (double)ns / 1e3;
	if (!strcmp(unit, "ms"))
		return (double)ns / 1e6;
	return (double)ns / 1e9;
}

/* Fresh private anonymous memory (no page present yet). */
static void *fresh(uint64_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* The driver of these benchmarks: it keeps no page table of its own, so an
 * invalidation has nothing to drop; it only counts. */
static void noop_invalidate(struct uodp_umem *umem,
			    const struct uodp_range *range, void *priv)
{
	(void)umem;
	(void)range;
	(*(volatile uint64_t *)priv)++;
}

static uint64_t ninval;
static const struct uodp_ctx_ops noop_ops = {
	.invalidate = noop_invalidate,
	.priv = &ninval,
};

static struct uodp_ctx *manual_ctx(void)
{
	struct uodp_ctx *ctx;
	int r = uodp_ctx_create(&noop_ops, UODP_CTX_MANUAL, &ctx);

	if (r) {
		bench_note("uodp_ctx_create: %s", uodp_strerror(r));
		return NULL;
	}
	return ctx;
}

/* A pinning-mode context (UODP_CTX_PIN: no callback needed), manual. */
static struct uodp_ctx *pin_ctx(void)
{
	const struct uodp_ctx_ops ops = { .invalidate = NULL };
	struct uodp_ctx *ctx;
	int r = uodp_ctx_create(&ops, UODP_CTX_MANUAL | UODP_CTX_PIN, &ctx);

	if (r) {
		bench_note("pinning context: %s", uodp_strerror(r));
		return NULL;
	}
	return ctx;
}

/* A context with the kernel monitor, or NULL (with a note saying why)
 * where it is unavailable. */
static struct uodp_ctx *monitor_ctx(const char *what)
{
	struct uodp_ctx *ctx;
	int r = bench_monitor_probe();

	if (!r)
		r = uodp_ctx_create(&noop_ops, 0, &ctx);
	if (r) {
		bench_note("%s: %s", what,
			   r == -ENOSYS || r == -EPERM ? bench_monitor_why(r) :
							 uodp_strerror(r));
		return NULL;
	}
	return ctx;
}

/* Bound of the benchmarks' map_and_lock calls: long enough that only a
 * storm can hit it, short enough that a wedged region cannot hang a run. */
#define FAULT_TIMEOUT_MS 1000

/* The driver's fault of uodp.h: map_and_lock, read the entries of the
 * faulting page, unlock (no device page table to write). */
static int64_t driver_fault(struct uodp_umem *umem, void *va, size_t len,
			    unsigned access)
{
	uint64_t entry;
	int64_t n;

	n = uodp_umem_map_and_lock(umem, va, len, access, FAULT_TIMEOUT_MS);
	if (n < 0)
		return n;
	(void)uodp_umem_entries_locked(umem, va, 1, &entry);
	sink = entry;
	uodp_umem_unlock(umem);
	return n;
}

/* The same fault written with the low-level steps, as every 0.1 driver
 * did: read_begin, map, lock, read_retry, entries, unlock. The yardstick
 * map_and_lock is held to (it must not cost more than the loop it owns). */
static int64_t driver_fault_steps(struct uodp_umem *umem, void *va, size_t len,
				  unsigned access)
{
	uint64_t entry;
	int64_t seq, n;

	for (;;) {
		seq = uodp_umem_read_begin(umem);
		if (seq < 0)
			return seq;
		n = uodp_umem_map(umem, va, len, access, (uint64_t)seq);
		if (n == -EAGAIN)
			continue;
		if (n < 0)
			return n;
		uodp_umem_lock(umem);
		if (uodp_umem_read_retry(umem, (uint64_t)seq)) {
			uodp_umem_unlock(umem);
			continue;
		}
		(void)uodp_umem_entries_locked(umem, va, 1, &entry);
		sink = entry;
		uodp_umem_unlock(umem);
		return n;
	}
}

/* Map [va, va + len) with map_and_lock in calls of @batch bytes; false on
 * any failure. */
static bool map_batched(struct uodp_umem *umem, void *va, uint64_t len,
			uint64_t batch, unsigned access)
{
	uint64_t off, step, want, pg = page_size();
	int64_t n;

	for (off = 0; off < len; off += step) {
		step = len - off < batch ? len - off : batch;
		want = step / pg;
		n = uodp_umem_map_and_lock(umem, (char *)va + off, step, access,
					   FAULT_TIMEOUT_MS);
		if (n > 0)
			uodp_umem_unlock(umem);
		if (n != (int64_t)want) {
			bench_note("uodp_umem_map_and_lock(+%llu, %llu) = %lld",
				   (unsigned long long)off,
				   (unsigned long long)step, (long long)n);
			return false;
		}
	}
	return true;
}

/* Empty the region's dirty set (its leaves are freed with it). */
static void drain_dirty(struct uodp_umem *um)
{
	void *pages[512];

	while (uodp_umem_dirty_take(um, pages, 512) == 512)
		;
}

static bool populate_batched(void *p, uint64_t len, uint64_t batch, int advice)
{
	uint64_t off, step;

	for (off = 0; off < len; off += step) {
		step = len - off < batch ? len - off : batch;
		if (madvise((char *)p + off, step, advice)) {
			bench_note("madvise populate: %s", strerror(errno));
			return false;
		}
	}
	return true;
}

/* ---------------------------------------------------------------------- */
/* floor: what the machine charges for the primitives the engine uses      */
/* ---------------------------------------------------------------------- */

enum fl {
	FL_CLOCK,
	FL_GETPID,
	FL_POPULATE,
	FL_PAGEMAP,
	FL_FAULT
};

static void floor_row(enum fl kind, const char *name, const char *note,
		      unsigned samples, unsigned batch)
{
	double *s = calloc(samples, sizeof(double));
	uint64_t pg = page_size(), len = (uint64_t)samples * batch * pg;
	char *p = NULL;
	uint64_t pm = 0, acc = 0;
	unsigned k, j;
	int fd = -1;
	struct bench_row r = bench_row("floor", name, 0, "ns");

	if (!s)
		return;
	if (kind == FL_POPULATE || kind == FL_PAGEMAP || kind == FL_FAULT) {
		if (kind != FL_FAULT)
			len = pg;
		p = fresh(len);
		if (!p)
			goto out;
		if (kind != FL_FAULT)
			madvise(p, pg, MADV_POPULATE_WRITE);
	}
	if (kind == FL_PAGEMAP) {
		fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			goto out;
	}
	for (k = 0; k < samples; k++) {
		uint64_t t0 = bench_now_ns();

		for (j = 0; j < batch; j++) {
			switch (kind) {
			case FL_CLOCK:
				acc += bench_now_ns();
				break;
			case FL_GETPID:
				acc += (uint64_t)syscall(SYS_getpid);
				break;
			case FL_POPULATE:
				madvise(p, pg, MADV_POPULATE_WRITE);
				break;
			case FL_PAGEMAP:
				acc += (uint64_t)pread(
					fd, &pm, sizeof(pm),
					(off_t)((uintptr_t)p / pg * 8));
				break;
			case FL_FAULT:
				((volatile char *)
					 p)[((uint64_t)k * batch + j) * pg] = 1;
				break;
			}
		}
		s[k] = (double)(bench_now_ns() - t0) / batch;
	}
	sink = acc;
	bench_stats(s, samples, &r.v);
	snprintf(r.param, sizeof(r.param), "%u/sample", batch);
	r.note = note;
	bench_emit(&r);
out:
	if (fd >= 0)
		close(fd);
	if (p)
		munmap(p, len);
	free(s);
}

static void suite_floor(const struct bench_opts *o)
{
	unsigned n = o->quick ? 200 : 1000;

	floor_row(FL_CLOCK, "clock_gettime", "the harness's clock", n, 1000);
	floor_row(FL_GETPID, "getpid syscall", "cost of one system call", n,
		  100);
	floor_row(FL_POPULATE, "madvise POPULATE_WRITE", "1 page, present", n,
		  100);
	floor_row(FL_PAGEMAP, "pread pagemap 8 B", "one frame lookup", n, 100);
	floor_row(FL_FAULT, "write fault fresh page", "first touch of a page",
		  n, 16);
}

/* ---------------------------------------------------------------------- */
/* reg: registration latency vs pinned registration                       */
/* ---------------------------------------------------------------------- */

/* Pinned registration of @size fresh bytes: mlock + MADV_POPULATE_WRITE,
 * timed; unlock and unmap untimed. Returns ns, or 0 on failure. */
static uint64_t pinned_once(uint64_t size, bool lock, int *err)
{
	void *p = fresh(size);
	uint64_t t0, t1;

	*err = 0;
	if (!p) {
		*err = errno;
		return 0;
	}
	t0 = bench_now_ns();
	if ((lock && mlock(p, size)) || madvise(p, size, MADV_POPULATE_WRITE)) {
		*err = errno;
		munmap(p, size);
		return 0;
	}
	t1 = bench_now_ns();
	if (lock)
		munlock(p, size);
	munmap(p, size);
	return t1 - t0;
}

/* Lines of /proc/self/maps: the process's mappings. */
static long count_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	long n = 0;
	int c;

	if (!f)
		return -1;
	while ((c = getc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

/*
 * Registration on a monitored context (issue 9). A region inside a
 * mapping that the context already watches (an anchor region keeps the
 * watch) registers with no system call: held to <= 0.5 us median, against
 * the same call on a manual context, interleaved. The first region of a
 * fresh mapping (the watch itself: system calls) is shown beside it.
 */
static void reg_monitored(const struct bench_opts *o)
{
	static const uint64_t sizes[] = { 4 * KiB, 64 * MiB };
	uint64_t pg = page_size(), len = 64 * MiB;
	unsigned reps = o->quick ? 150 : 2000, nfresh = o->quick ? 50 : 300, k;
	struct uodp_ctx *mctx = monitor_ctx("reg rows on a monitored context");
	struct uodp_ctx *ctx = manual_ctx();
	double *sm = calloc(reps, sizeof(double)),
	       *sx = calloc(reps, sizeof(double)),
	       *rm = calloc(reps, sizeof(double)),
	       *rx = calloc(reps, sizeof(double));
	struct uodp_umem *anchor = NULL, *manchor = NULL, *um;
	char *area = fresh(len);
	size_t i;

	if (!mctx || !ctx || !sm || !sx || !rm || !rx || !area)
		goto out;
	/* The same anchor on both: each index then holds one region besides
	 * the timed one (a release from an otherwise empty index is another
	 * code path, which made the manual baseline slower). */
	if (uodp_umem_get(mctx, area, pg, RW, &anchor) ||
	    uodp_umem_get(ctx, area, pg, RW, &manchor)) {
		bench_note("reg monitored: anchor region refused");
		goto out;
	}
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		uint64_t sz = sizes[i];
		char *va = sz < len ? area + 16 * pg : area;
		struct bench_row r = bench_row("reg", "umem_get monitored",
					       (double)sz, "us");
		struct bench_row rr = bench_row("reg", "umem_release monitored",
						(double)sz, "us");

		for (k = 0; k < reps + 20; k++) {
			unsigned v;

			/* Alternate which context goes first. */
			for (v = 0; v < 2; v++) {
				bool mon = (v + k) & 1;
				uint64_t t0, t1, t2;
				int e;

				t0 = bench_now_ns();
				e = uodp_umem_get(mon ? mctx : ctx, va, sz, RW,
						  &um);
				t1 = bench_now_ns();
				if (e) {
					bench_note("reg monitored: %s",
						   uodp_strerror(e));
					goto out;
				}
				uodp_umem_release(um);
				t2 = bench_now_ns();
				if (k < 20)
					continue;
				(mon ? sm : sx)[k - 20] = ns_to(t1 - t0, "us");
				(mon ? rm : rx)[k - 20] = ns_to(t2 - t1, "us");
			}
		}
		bench_fmt_bytes(sz, r.param, sizeof(r.param));
		memcpy(rr.param, r.param, sizeof(r.param));
		bench_stats(sm, reps, &r.v);
		bench_stats(sx, reps, &r.b);
		r.base_name = "manual context";
		r.rk = BR_TIME;
		r.tk = BT_MAX;
		r.target = 0.5;
		r.note = "mapping already watched (anchor region)";
		bench_emit(&r);
		bench_stats(rm, reps, &rr.v);
		bench_stats(rx, reps, &rr.b);
		rr.base_name = "manual context";
		rr.rk = BR_TIME;
		bench_emit(&rr);
	}
	/* The first region of a fresh mapping: the notifier watches the
	 * mapping (system calls). Mapping made and unmapped untimed. */
	{
		struct bench_row r = bench_row(
			"reg", "umem_get monitored new map", (double)pg, "us");
		unsigned n = 0;

		for (k = 0; k < nfresh + 5; k++) {
			char *p = fresh(len);
			uint64_t t0, t1;
			int e;

			if (!p)
				break;
			t0 = bench_now_ns();
			e = uodp_umem_get(mctx, p, pg, RW, &um);
			t1 = bench_now_ns();
			if (!e)
				uodp_umem_release(um);
			munmap(p, len);
			if (e) {
				bench_note("reg monitored new map: %s",
					   uodp_strerror(e));
				break;
			}
			if (k >= 5)
				sm[n++] = ns_to(t1 - t0, "us");
		}
		if (n) {
			bench_fmt_bytes(pg, r.param, sizeof(r.param));
			bench_stats(sm, n, &r.v);
			r.note = "first region of a fresh 64 MiB mapping: "
				 "the watch's system calls";
			bench_emit(&r);
		}
	}
out:
	if (anchor)
		uodp_umem_release(anchor);
	if (manchor)
		uodp_umem_release(manchor);
	if (area)
		munmap(area, len);
	if (ctx)
		uodp_ctx_destroy(ctx);
	if (mctx)
		uodp_ctx_destroy(mctx);
	free(sm);
	free(sx);
	free(rm);
	free(rx);
}

/*
 * Regions per process (issue 9): 10^6 disjoint one-page regions on a
 * monitored context, in one mapping (every other page), registered in
 * random order; 0.1 split a mapping per region and failed at the 32,731st
 * (vm.max_map_count 65,530). Rows: the count registered (>= 10^6), the
 * time of each registration, and the mappings the process has.
 */
static void reg_many_monitored(const struct bench_opts *o)
{
	uint64_t nmax = o->quick ? 100000 : 1000000, pg = page_size(), n = 0, i;
	uint64_t len = 2 * nmax * pg, x = 0x9e3779b97f4a7c15ull, t0, tall;
	struct uodp_ctx *mctx = monitor_ctx("regions per process");
	struct uodp_umem **ums = calloc(nmax, sizeof(*ums));
	uint64_t *ord = calloc(nmax, sizeof(*ord));
	double *s = calloc(nmax, sizeof(double));
	char *area = fresh(len);
	long maps0, maps1;
	struct bench_row r;
	char note[160];
	int e = 0;

	if (!mctx || !ums || !ord || !s || !area)
		goto out;
	for (i = 0; i < nmax; i++)
		ord[i] = i;
	for (i = nmax - 1; i > 0; i--) {
		uint64_t j, t;

		j = bench_rand(&x) % (i + 1);
		t = ord[i];
		ord[i] = ord[j];
		ord[j] = t;
	}
	maps0 = count_maps();
	tall = bench_now_ns();
	for (n = 0; n < nmax; n++) {
		t0 = bench_now_ns();
		e = uodp_umem_get(mctx, area + 2 * ord[n] * pg, pg, RW,
				  &ums[n]);
		s[n] = ns_to(bench_now_ns() - t0, "us");
		if (e)
			break;
	}
	tall = bench_now_ns() - tall;
	maps1 = count_maps();

	r = bench_row("reg", "monitored regions", (double)nmax, "regions");
	snprintf(r.param, sizeof(r.param), "%llu wanted",
		 (unsigned long long)nmax);
	r.v.n = 1;
	r.v.min = r.v.median = r.v.p99 = r.v.max = (double)n;
	r.tk = BT_MIN;
	r.target = (double)nmax;
	snprintf(note, sizeof(note),
		 "one-page, disjoint, one mapping; %s; mappings %ld -> %ld; "
		 "%.2f s in all",
		 e ? uodp_strerror(e) : "all registered", maps0, maps1,
		 (double)tall / 1e9);
	r.note = note;
	bench_emit(&r);
	if (n) {
		r = bench_row("reg", "umem_get monitored to n", (double)n,
			      "us");
		snprintf(r.param, sizeof(r.param), "%llu",
			 (unsigned long long)n);
		bench_stats(s, n, &r.v);
		r.note = "each registration that grew the context to n";
		bench_emit(&r);
	}
out:
	t0 = bench_now_ns();
	while (n-- > 0 && ums)
		uodp_umem_release(ums[n]);
	if (ums && ums[0])
		bench_note("monitored regions released in %.2f s",
			   (double)(bench_now_ns() - t0) / 1e9);
	if (mctx)
		uodp_ctx_destroy(mctx);
	if (area)
		munmap(area, len);
	free(ums);
	free(ord);
	free(s);
}

static void suite_reg(const struct bench_opts *o)
{
	static const uint64_t sizes[] = { 4 * KiB,  64 * KiB,  2 * MiB,
					  64 * MiB, 1 * GiB,   16 * GiB,
					  64 * GiB, 256 * GiB, 1 * TiB };
	size_t nsizes = o->quick ? 7 : 9, i, k;
	uint64_t maxsz = sizes[nsizes - 1];
	unsigned reps = o->quick ? 150 : 2000;
	/* Biggest pinned baseline: it really allocates and zeroes memory. */
	uint64_t pin_cap = o->quick ? 1 * GiB : 8 * GiB;
	uint64_t memlock = bench_raise_memlock();
	uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * page_size();
	/* s / rel: [size][rep] of get / release; b: a baseline's samples. */
	double *s = calloc((size_t)reps * nsizes, sizeof(double));
	double *rel = calloc((size_t)reps * nsizes, sizeof(double));
	double *b = calloc(reps, sizeof(double));
	double med_min = INFINITY, med_max = 0;
	struct uodp_ctx *ctx = manual_ctx();
	void *area;

	if (!s || !rel || !b || !ctx)
		goto out;
	if (pin_cap > phys / 2)
		pin_cap = phys / 2;
	area = mmap(NULL, maxsz, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (area == MAP_FAILED) {
		bench_note("cannot reserve %llu bytes: %s",
			   (unsigned long long)maxsz, strerror(errno));
		goto out;
	}
	bench_warmup(256 * MiB);

	/* The sizes interleaved, one get + release of each per round: the
	 * flatness target compares their medians, and measured one size
	 * after another they followed the machine's load of the moment
	 * (2.07 in one run, 1.14 in the next). The first 20 rounds warm
	 * caches up. */
	for (k = 0; k < reps + 20; k++) {
		for (i = 0; i < nsizes; i++) {
			struct uodp_umem *um;
			uint64_t t0, t1, t2;
			int e;

			t0 = bench_now_ns();
			e = uodp_umem_get(ctx, area, sizes[i], RW, &um);
			t1 = bench_now_ns();
			if (e) {
				bench_note("uodp_umem_get: %s",
					   uodp_strerror(e));
				goto out_unmap;
			}
			uodp_umem_release(um);
			t2 = bench_now_ns();
			if (k >= 20) {
				s[i * reps + k - 20] = ns_to(t1 - t0, "us");
				rel[i * reps + k - 20] = ns_to(t2 - t1, "us");
			}
		}
	}

	for (i = 0; i < nsizes; i++) {
		struct bench_row r =
			bench_row("reg", "umem_get", (double)sizes[i], "us");
		struct bench_row rr = bench_row("reg", "umem_release",
						(double)sizes[i], "us");
		unsigned breps;
		int err = 0;

		bench_fmt_bytes(sizes[i], r.param, sizeof(r.param));
		memcpy(rr.param, r.param, sizeof(r.param));
		bench_stats(&s[i * reps], reps, &r.v);
		bench_stats(&rel[i * reps], reps, &rr.v);

		r.base_name = "pinned mlock+populate";
		r.rk = BR_TIME;
		r.tk = BT_MAX;
		r.target = 10;
		if (sizes[i] > pin_cap) {
			r.base_na = true;
			r.base_note =
				"baseline n/a: larger than the pinned-size "
				"cap of this run";
		} else {
			/* Fewer repetitions for big sizes: they zero memory. */
			uint64_t budget = o->quick ? 1 * GiB : 16 * GiB;

			breps = budget / sizes[i];
			if (breps < 3)
				breps = 3;
			if (breps > reps)
				breps = reps;
			/* Over RLIMIT_MEMLOCK without CAP_IPC_LOCK (and a
			 * limit that cannot be raised without
			 * CAP_SYS_RESOURCE) mlock fails: populate alone is
			 * then the baseline, a lower bound of the pinned
			 * cost (mlock only adds to it). */
			bool lock = sizes[i] <= memlock;

			if (!lock) {
				r.base_name = "populate only (no mlock)";
				r.note = "mlock over RLIMIT_MEMLOCK: baseline "
					 "is a lower bound";
			}
			(void)pinned_once(sizes[i], lock, &err); /* warm-up */
			for (k = 0; k < breps && !err; k++)
				b[k] = ns_to(pinned_once(sizes[i], lock, &err),
					     "us");
			if (err) {
				r.base_na = true;
				r.base_note =
					"baseline failed (mlock/populate)";
			} else {
				bench_stats(b, breps, &r.b);
			}
		}
		bench_emit(&r);
		bench_emit(&rr);
		if (r.v.median < med_min)
			med_min = r.v.median;
		if (r.v.median > med_max)
			med_max = r.v.median;
	}
	bench_summary("reg", "flatness max/min median", "x", med_max / med_min,
		      BT_MAX, 2.0,
		      "ratio of the largest to the smallest umem_get median");
	reg_monitored(o);
	reg_many_monitored(o);
out_unmap:
	munmap(area, maxsz);
out:
	if (ctx)
		uodp_ctx_destroy(ctx);
	free(s);
	free(rel);
	free(b);
}

/* ---------------------------------------------------------------------- */
/* map: the fault path vs raw populate                                    */
/* ---------------------------------------------------------------------- */

struct map_case {
	const char *name;
	uint64_t batch;
	uint64_t len; /* 0: 1 GiB */
	unsigned access;
	bool pin; /* pinning-mode context (no invalidate callback) */
	bool quick;
	bool mon; /* a context with the kernel monitor */
	bool nf;  /* manual, UODP_CTX_NO_FRAMES: no pagemap read */
};

/* One timed uodp run over fresh memory; returns ns or 0. */
static uint64_t map_once(struct uodp_ctx *ctx, uint64_t len,
			 const struct map_case *c)
{
	void *p = fresh(len);
	struct uodp_umem *um;
	uint64_t t0, t1 = 0;

	if (!p)
		return 0;
	if (uodp_umem_get(ctx, p, len, RW, &um))
		goto out;
	t0 = bench_now_ns();
	if (map_batched(um, p, len, c->batch, c->access))
		t1 = bench_now_ns() - t0;
	uodp_umem_release(um);
out:
	munmap(p, len);
	return t1;
}

static uint64_t raw_once(uint64_t len, const struct map_case *c)
{
	void *p = fresh(len);
	uint64_t t0, t1 = 0;
	int adv = (c->access & UODP_ACCESS_WRITE) ? MADV_POPULATE_WRITE :
						    MADV_POPULATE_READ;

	if (!p)
		return 0;
	t0 = bench_now_ns();
	if (c->pin) {
		/* Pinning mode's baseline is real pinning: mlock (which
		 * faults the pages in) + populate, in the same calls. */
		uint64_t off, step;

		for (off = 0; off < len; off += step) {
			step = len - off < c->batch ? len - off : c->batch;
			if (mlock((char *)p + off, step) ||
			    madvise((char *)p + off, step, adv)) {
				bench_note("mlock + populate: %s",
					   strerror(errno));
				munmap(p, len);
				return 0;
			}
		}
		t1 = bench_now_ns() - t0;
		munlock(p, len);
	} else if (populate_batched(p, len, c->batch, adv)) {
		t1 = bench_now_ns() - t0;
	}
	munmap(p, len);
	return t1;
}

static void map_throughput(const struct bench_opts *o)
{
	/* len 0: 1 GiB (quick run: 512 MiB). Per-page calls run over 64 MiB:
	 * at one syscall or more per page, 1 GiB of them would take seconds
	 * per repetition. */
	static const struct map_case cases[] = {
		{ "map write 1 call", 1 * GiB, 0, RW, false, true },
		{ "map write 2 MiB calls", 2 * MiB, 0, RW, false, true },
		{ "map write 64 KiB calls", 64 * KiB, 0, RW, false, false },
		{ "map write 4 KiB calls", 4 * KiB, 64 * MiB, RW, false, true },
		/* The same without frames (as any user but root runs it:
		 * pagemap shows frames to CAP_SYS_ADMIN only): the engine's
		 * own cost per call, without the pagemap pread. */
		{ "map write 4 KiB calls no frames", 4 * KiB, 64 * MiB, RW,
		  false, true, false, true },
		{ "map read 1 call", 1 * GiB, 0, UODP_ACCESS_READ, false,
		  true },
		{ "map read 2 MiB calls", 2 * MiB, 0, UODP_ACCESS_READ, false,
		  false },
		{ "map write pinning 2 MiB", 2 * MiB, 0, RW, true, true },
		/* The default context kind: no headline figure comes only
		 * from a manual context. */
		{ "map write 2 MiB monitor", 2 * MiB, 0, RW, false, true,
		  true },
		{ "map read 1 call monitor", 1 * GiB, 0, UODP_ACCESS_READ,
		  false, false, true },
	};
	uint64_t memlock = bench_raise_memlock();
	unsigned reps = o->quick ? 5 : 11, k;
	double u[16], b[16];
	struct uodp_ctx *ctx = manual_ctx(), *pctx = NULL, *mctx, *nctx = NULL;
	size_t i;

	if (!ctx)
		return;
	if (uodp_ctx_create(&noop_ops, UODP_CTX_MANUAL | UODP_CTX_NO_FRAMES,
			    &nctx))
		nctx = NULL;
	pctx = pin_ctx();
	mctx = monitor_ctx("map rows on a monitored context");
	bench_warmup(o->quick ? 256 * MiB : 1 * GiB);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct map_case *c = &cases[i];
		struct bench_row r =
			bench_row("map", c->name, (double)c->batch, "ms");
		struct uodp_ctx *use = c->pin ? pctx :
				       c->mon ? mctx :
				       c->nf  ? nctx :
						ctx;
		uint64_t len = c->len ? c->len : o->quick ? 256 * MiB : 1 * GiB;
		bool ok = true;

		if (o->quick && !c->quick)
			continue;
		if (c->mon && !mctx)
			continue; /* said once, by monitor_ctx() */
		if (c->nf && !nctx) {
			bench_note("%s: skipped (no context)", c->name);
			continue;
		}
		if (c->pin) {
			/* Pinning mode mlocks every page: stay within
			 * RLIMIT_MEMLOCK (8 MiB unless raised). */
			while (len > memlock / 2 && len > 2 * MiB)
				len /= 2;
			if (!pctx || len > memlock) {
				bench_note("%s: skipped (%s)", c->name,
					   pctx ? "RLIMIT_MEMLOCK" :
						  "no pinning context");
				continue;
			}
		}
		bench_fmt_bytes(len, r.param, sizeof(r.param));
		/* Warm-up pair, then interleave uodp and raw repetitions so
		 * that drifts of the VM hit both alike. */
		map_once(use, len, c);
		raw_once(len, c);
		for (k = 0; k < reps && ok; k++) {
			uint64_t tu = map_once(use, len, c);
			uint64_t tb = raw_once(len, c);

			ok = tu && tb;
			u[k] = ns_to(tu, "ms");
			b[k] = ns_to(tb, "ms");
		}
		if (!ok) {
			bench_note("%s: failed", c->name);
			continue;
		}
		bench_stats(u, reps, &r.v);
		bench_stats(b, reps, &r.b);
		r.base_name = c->pin ? "mlock + POPULATE_WRITE" :
			      (c->access & UODP_ACCESS_WRITE) ?
				       "raw POPULATE_WRITE" :
				       "raw POPULATE_READ";
		r.rk = BR_TIME;
		r.tk = c->pin ? BT_NONE : BT_RATIO_MIN;
		r.target = 0.80;
		r.note = c->pin ? "mlock per page (pinning mode)" :
			 c->mon ? "kernel monitor: the default context" :
			 c->nf	? "manual context, UODP_CTX_NO_FRAMES" :
				  "manual context";
		bench_emit(&r);
	}
	if (pctx)
		uodp_ctx_destroy(pctx);
	if (mctx)
		uodp_ctx_destroy(mctx);
	if (nctx)
		uodp_ctx_destroy(nctx);
	uodp_ctx_destroy(ctx);
}

/*
 * One-page fault latency on fresh pages, and on pages already mapped, of
 * the driver's fault on map_and_lock, of the same fault written with the
 * low-level steps (the 0.1 loop), and of a raw populate. The three run
 * interleaved page by page, in an order that rotates, so that a drift of
 * the VM hits all alike.
 */
enum {
	LAT_MAL,
	LAT_RAW,
	LAT_STEPS,
	LAT_N
};

static bool lat_pass(struct uodp_umem *um, struct uodp_umem *umd, char *pu,
		     char *pb, char *pd, unsigned n, double *v[LAT_N])
{
	uint64_t pg = page_size();
	unsigned k, j;

	for (k = 0; k < n; k++) {
		for (j = 0; j < LAT_N; j++) {
			unsigned which = (j + k) % LAT_N;
			uint64_t t0 = bench_now_ns();
			int64_t m = 1;

			if (which == LAT_MAL)
				m = driver_fault(um, pu + k * pg, pg, RW);
			else if (which == LAT_RAW)
				madvise(pb + k * pg, pg, MADV_POPULATE_WRITE);
			else
				m = driver_fault_steps(umd, pd + k * pg, pg,
						       RW);
			v[which][k] = ns_to(bench_now_ns() - t0, "us");
			if (m != 1) {
				bench_note("one-page fault failed: %lld",
					   (long long)m);
				return false;
			}
		}
	}
	return true;
}

static void lat_rows(const char *what, unsigned n, double *v[LAT_N],
		     uint64_t pg)
{
	char name[3][64];
	struct bench_row r;

	snprintf(name[0], sizeof(name[0]), "fault 1 page %s", what);
	snprintf(name[1], sizeof(name[1]), "map_and_lock vs steps %s", what);
	snprintf(name[2], sizeof(name[2]), "fault steps 1 page %s", what);

	r = bench_row("map", name[0], (double)pg, "us");
	bench_fmt_bytes(pg, r.param, sizeof(r.param));
	bench_stats(v[LAT_MAL], n, &r.v);
	bench_stats(v[LAT_RAW], n, &r.b);
	r.base_name = "raw POPULATE_WRITE 1 pg";
	r.rk = BR_TIME;
	r.note = "map_and_lock + entries_locked + unlock";
	bench_emit(&r);

	r = bench_row("map", name[2], (double)pg, "us");
	bench_fmt_bytes(pg, r.param, sizeof(r.param));
	bench_stats(v[LAT_STEPS], n, &r.v);
	bench_stats(v[LAT_RAW], n, &r.b);
	r.base_name = "raw POPULATE_WRITE 1 pg";
	r.rk = BR_TIME;
	r.note = "read_begin+map+lock+read_retry+entries+unlock";
	bench_emit(&r);

	r = bench_row("map", name[1], (double)pg, "us");
	bench_fmt_bytes(pg, r.param, sizeof(r.param));
	bench_stats(v[LAT_MAL], n, &r.v);
	bench_stats(v[LAT_STEPS], n, &r.b);
	r.base_name = "low-level steps (0.1 loop)";
	r.rk = BR_TIME;
	/* "No slower than the 0.1 loop": 0.95, not 1.0, because medians of
	 * one-microsecond calls measured in the same run still move by a
	 * few per cent from one run to the next. */
	r.tk = BT_RATIO_MIN;
	r.target = 0.95;
	r.note = "same run, interleaved";
	bench_emit(&r);
}

static void map_latency(const struct bench_opts *o)
{
	unsigned n = o->quick ? 4096 : 32768, j;
	uint64_t pg = page_size(), len = (uint64_t)n * pg;
	double *v[LAT_N] = { NULL };
	char *pu = fresh(len), *pb = fresh(len), *pd = fresh(len);
	struct uodp_ctx *ctx = manual_ctx();
	struct uodp_umem *um = NULL, *umd = NULL;
	bool ok = true;

	for (j = 0; j < LAT_N; j++)
		ok = (v[j] = calloc(n, sizeof(double))) && ok;
	if (!ok || !pu || !pb || !pd || !ctx)
		goto out;
	if (uodp_umem_get(ctx, pu, len, RW, &um) ||
	    uodp_umem_get(ctx, pd, len, RW, &umd))
		goto out;
	/* Fresh pages: page k of each area. */
	if (!lat_pass(um, umd, pu, pb, pd, n, v))
		goto out;
	lat_rows("fresh", n, v, pg);
	/* Pages already present and mapped: the engine's own overhead. */
	if (!lat_pass(um, umd, pu, pb, pd, n, v))
		goto out;
	lat_rows("present", n, v, pg);
out:
	if (um)
		uodp_umem_release(um);
	if (umd)
		uodp_umem_release(umd);
	if (ctx)
		uodp_ctx_destroy(ctx);
	if (pu)
		munmap(pu, len);
	if (pb)
		munmap(pb, len);
	if (pd)
		munmap(pd, len);
	for (j = 0; j < LAT_N; j++)
		free(v[j]);
}

/*
 * Huge pages (issue 11): 1 GiB of fresh memory that asks for transparent
 * huge pages (MADV_HUGEPAGE, 2 MiB aligned), mapped writable by
 * map_and_lock in 2 MiB calls and in one call, against raw
 * MADV_POPULATE_WRITE of the same memory in the same calls, interleaved.
 * The engine holds a 2 MiB huge page as one entry (stats.huge_now); the
 * entries row holds the count against 0.1's one entry per 4 KiB page.
 */
static bool thp_enabled(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");

	if (!f)
		return false;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return !strstr(buf, "[never]") && buf[0];
}

/* @len bytes of fresh memory, 2 MiB aligned, MADV_HUGEPAGE; the mapping
 * to unmap is [*raw, *raw + len + 2 MiB). */
static char *thp_fresh(uint64_t len, char **raw)
{
	char *p = fresh(len + 2 * MiB), *a;

	*raw = p;
	if (!p)
		return NULL;
	a = (char *)(((uintptr_t)p + 2 * MiB - 1) & ~(uintptr_t)(2 * MiB - 1));
	if (madvise(a, len, MADV_HUGEPAGE)) {
		munmap(p, len + 2 * MiB);
		*raw = NULL;
		return NULL;
	}
	return a;
}

/* One timed run; *entries: the region's entries after it (huge entries
 * count once). Returns ns, or 0 on failure. */
static uint64_t thp_once(struct uodp_ctx *ctx, uint64_t len, uint64_t batch,
			 uint64_t *entries, uint64_t *huge)
{
	char *raw, *p = thp_fresh(len, &raw);
	struct uodp_umem_stats st;
	struct uodp_umem *um;
	uint64_t t0, t = 0, hp = 2 * MiB / page_size();

	if (!p)
		return 0;
	if (ctx) {
		if (uodp_umem_get(ctx, p, len, RW, &um))
			goto out;
		t0 = bench_now_ns();
		if (map_batched(um, p, len, batch, RW))
			t = bench_now_ns() - t0;
		if (t && !uodp_umem_stats(um, &st, sizeof(st))) {
			*huge = st.huge_now;
			*entries = st.huge_now +
				   (st.mapped_now - st.huge_now * hp);
		}
		uodp_umem_release(um);
	} else {
		t0 = bench_now_ns();
		if (populate_batched(p, len, batch, MADV_POPULATE_WRITE))
			t = bench_now_ns() - t0;
	}
out:
	munmap(raw, len + 2 * MiB);
	return t;
}

static void map_thp(const struct bench_opts *o)
{
	static const uint64_t batches[] = { 2 * MiB, 0 }; /* 0: one call */
	uint64_t len = o->quick ? 256 * MiB : 1 * GiB, pg = page_size();
	unsigned reps = o->quick ? 3 : 11, k;
	struct uodp_ctx *ctx;
	double u[16], b[16];
	size_t i;

	if (!thp_enabled()) {
		bench_note("map THP rows: transparent huge pages are off "
			   "(/sys/kernel/mm/transparent_hugepage/enabled): "
			   "skipped");
		return;
	}
	ctx = manual_ctx();
	if (!ctx)
		return;
	for (i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
		uint64_t batch = batches[i] ? batches[i] : len;
		uint64_t entries = 0, huge = 0;
		struct bench_row r =
			bench_row("map",
				  batches[i] ? "map write THP 2 MiB calls" :
					       "map write THP 1 call",
				  (double)batch, "ms");
		struct bench_row e;
		char note[128];
		bool ok = true;

		bench_fmt_bytes(len, r.param, sizeof(r.param));
		/* Warm-up pair, then interleaved with the order alternating:
		 * the run that goes second finds the huge pages the first
		 * freed (compaction already done), so a fixed order would
		 * favour one side. */
		thp_once(ctx, len, batch, &entries, &huge);
		thp_once(NULL, len, batch, &entries, &huge);
		for (k = 0; k < reps && ok; k++) {
			uint64_t tu = 0, tb = 0;

			if (k & 1)
				tb = thp_once(NULL, len, batch, &entries,
					      &huge);
			tu = thp_once(ctx, len, batch, &entries, &huge);
			if (!(k & 1))
				tb = thp_once(NULL, len, batch, &entries,
					      &huge);

			ok = tu && tb;
			u[k] = ns_to(tu, "ms");
			b[k] = ns_to(tb, "ms");
		}
		if (!ok) {
			bench_note("%s: failed", r.name);
			continue;
		}
		bench_stats(u, reps, &r.v);
		bench_stats(b, reps, &r.b);
		r.base_name = "raw POPULATE_WRITE THP";
		r.rk = BR_TIME;
		r.tk = BT_RATIO_MIN;
		r.target = 0.90;
		r.note = "MADV_HUGEPAGE memory, manual context";
		bench_emit(&r);

		/* Entries of the last repetition, against one per 4 KiB page
		 * (0.1's table). Issue 11: <= 1/400 of those. */
		e = bench_row("map",
			      batches[i] ? "THP entries 2 MiB calls" :
					   "THP entries 1 call",
			      (double)len, "entries");
		bench_fmt_bytes(len, e.param, sizeof(e.param));
		e.v.n = e.b.n = 1;
		e.v.min = e.v.median = e.v.p99 = e.v.max = (double)entries;
		e.b.min = e.b.median = e.b.p99 = e.b.max = (double)(len / pg);
		e.base_name = "4 KiB entries (0.1)";
		e.rk = BR_SIZE;
		e.tk = BT_RATIO_MAX;
		e.target = 1.0 / 400;
		snprintf(note, sizeof(note),
			 "%llu huge entries (huge_now) of %llu 2 MiB blocks",
			 (unsigned long long)huge,
			 (unsigned long long)(len / (2 * MiB)));
		e.note = note;
		bench_emit(&e);
	}
	uodp_ctx_destroy(ctx);
}

static void suite_map(const struct bench_opts *o)
{
	map_throughput(o);
	map_thp(o);
	map_latency(o);
}

/* ---------------------------------------------------------------------- */
/* mem: translation memory                                                */
/* ---------------------------------------------------------------------- */

/* Map one page every @stride bytes of [p, p + len) with read access (the
 * zero page: cheap) and report table bytes per mapped page. */
static void mem_pattern(struct uodp_ctx *ctx, char *p, uint64_t len,
			uint64_t stride, const char *name, bool target)
{
	uint64_t pg = page_size(), off;
	struct uodp_umem_stats st;
	struct uodp_umem *um;
	struct bench_row r = bench_row("mem", name, (double)stride, "B/page");

	if (uodp_umem_get(ctx, p, len, RW, &um))
		return;
	if (stride == pg) {
		if (!map_batched(um, p, len, len, UODP_ACCESS_READ))
			goto out;
	} else {
		for (off = 0; off < len; off += stride)
			if (!map_batched(um, p + off, pg, pg, UODP_ACCESS_READ))
				goto out;
	}
	uodp_umem_stats(um, &st, sizeof(st));
	bench_fmt_bytes(stride, r.param, sizeof(r.param));
	r.v.n = 1;
	r.v.min = r.v.median = r.v.p99 = r.v.max =
		(double)st.table_bytes / (double)st.mapped_now;
	/* The reference's design: two arrays of 8-byte words (struct page *
	 * and dma_addr_t) per page of the region, mapped or not. */
	r.base_name = "seed vzalloc (computed)";
	r.b = (struct bench_stats){ 1, 16, 16, 16, 16 };
	r.rk = BR_SIZE;
	r.tk = target ? BT_MAX : BT_NONE;
	r.target = 16;
	r.note = target ? NULL : "worst-case layout: one page per leaf";
	bench_emit(&r);

	/* Unmapping everything must give the memory back. */
	uodp_umem_unmap(um, uodp_umem_start(um),
			(size_t)((char *)uodp_umem_end(um) -
				 (char *)uodp_umem_start(um)));
	drain_dirty(um);
	uodp_umem_stats(um, &st, sizeof(st));
	if (target) {
		struct bench_row z = bench_row("mem", "table after unmap",
					       (double)len, "bytes");

		bench_fmt_bytes(len, z.param, sizeof(z.param));
		z.v.n = 1;
		z.v.median = z.v.p99 = z.v.max = z.v.min =
			(double)st.table_bytes;
		z.tk = BT_MAX;
		z.target = 0;
		z.note = "read-mapped pages leave no dirty words";
		bench_emit(&z);
	}
out:
	uodp_umem_release(um);
}

static void suite_mem(const struct bench_opts *o)
{
	uint64_t len = 1 * GiB, pg = page_size();
	uint64_t big = o->quick ? 64 * GiB : 1 * TiB;
	struct uodp_ctx *ctx = manual_ctx();
	struct uodp_umem_stats st;
	struct uodp_umem *um;
	struct mallinfo2 m0, m1;
	struct uodp_umem **ums = NULL;
	struct bench_row r;
	unsigned nreg = 1000, k;
	char *p = fresh(len);
	void *area = MAP_FAILED;

	if (!ctx || !p)
		goto out;
	mem_pattern(ctx, p, len, pg, "mapped page dense", true);
	mem_pattern(ctx, p, len, 64 * KiB, "mapped page 1 per 64 KiB", false);
	mem_pattern(ctx, p, len, 2 * MiB, "mapped page 1 per 2 MiB", false);

	/* Unmapped pages: a huge region with nothing mapped. */
	area = mmap(NULL, big, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (area == MAP_FAILED || uodp_umem_get(ctx, area, big, RW, &um))
		goto out;
	uodp_umem_stats(um, &st, sizeof(st));
	r = bench_row("mem", "unmapped page", (double)big, "B/page");
	bench_fmt_bytes(big, r.param, sizeof(r.param));
	r.v.n = 1;
	r.v.median = r.v.p99 = r.v.max = r.v.min =
		(double)st.table_bytes / (double)(big / pg);
	r.base_name = "seed vzalloc (computed)";
	r.b = (struct bench_stats){ 1, 16, 16, 16, 16 };
	r.rk = BR_SIZE;
	r.tk = BT_MAX;
	r.target = 0.001;
	bench_emit(&r);
	uodp_umem_release(um);

	/* Fixed cost of a region, whatever its size: heap growth over
	 * nreg registrations (mallinfo2: bytes in use by malloc). */
	ums = calloc(nreg, sizeof(*ums));
	if (!ums)
		goto out;
	m0 = mallinfo2();
	for (k = 0; k < nreg; k++)
		if (uodp_umem_get(ctx, area, big, RW, &ums[k]))
			break;
	m1 = mallinfo2();
	r = bench_row("mem", "heap per region", (double)big, "bytes");
	bench_fmt_bytes(big, r.param, sizeof(r.param));
	r.v.n = 1;
	r.v.median = r.v.p99 = r.v.max = r.v.min =
		(double)(m1.uordblks - m0.uordblks) / (double)(k ? k : 1);
	r.note = "mallinfo2 uordblks growth / regions (incl. malloc headers)";
	bench_emit(&r);
	while (k--)
		uodp_umem_release(ums[k]);

	/* The same for one-page regions (one stripe each: a large region
	 * pays for 64), disjoint: what a cache of small buffers costs. */
	m0 = mallinfo2();
	for (k = 0; k < nreg; k++)
		if (uodp_umem_get(ctx, (char *)area + 2 * (uint64_t)k * pg, pg,
				  RW, &ums[k]))
			break;
	m1 = mallinfo2();
	r = bench_row("mem", "heap per region", (double)pg, "bytes");
	bench_fmt_bytes(pg, r.param, sizeof(r.param));
	r.v.n = 1;
	r.v.median = r.v.p99 = r.v.max = r.v.min =
		(double)(m1.uordblks - m0.uordblks) / (double)(k ? k : 1);
	r.note = "one-page disjoint regions; mallinfo2 growth / regions";
	bench_emit(&r);
	while (k--)
		uodp_umem_release(ums[k]);
out:
	free(ums);
	if (area != MAP_FAILED)
		munmap(area, big);
	if (p)
		munmap(p, len);
	if (ctx)
		uodp_ctx_destroy(ctx);
}

/* ---------------------------------------------------------------------- */
/* inval: invalidation of mapped memory                                   */
/* ---------------------------------------------------------------------- */

static void inval_size(const struct bench_opts *o, struct uodp_ctx *ctx,
		       char *p, struct uodp_umem *um, uint64_t len,
		       unsigned access, const char *name, bool target)
{
	unsigned reps = len >= 256 * MiB ? (o->quick ? 5 : 15) :
			len > 64 * KiB	 ? (o->quick ? 50 : 300) :
					   (o->quick ? 1000 : 10000);
	char *va = p;
	uint64_t t0;
	double *s = calloc(reps, sizeof(double));
	struct uodp_umem_stats st;
	struct bench_row r =
		bench_row("inval", name, (double)len, len >= MiB ? "ms" : "us");
	unsigned k;

	if (!s)
		return;
	for (k = 0; k < reps + 1; k++) {
		/* Untimed: (re)map the range; the pages stay present. */
		if (!map_batched(um, va, len, len, access))
			goto out;
		t0 = bench_now_ns();
		uodp_invalidate_range(ctx, va, len, UODP_EVENT_MANUAL);
		if (k)
			s[k - 1] = ns_to(bench_now_ns() - t0, r.unit);
		uodp_umem_stats(um, &st, sizeof(st));
		if (st.mapped_now) {
			bench_note("%s: %llu entries left", name,
				   (unsigned long long)st.mapped_now);
			goto out;
		}
	}
	bench_fmt_bytes(len, r.param, sizeof(r.param));
	bench_stats(s, reps, &r.v);
	if (target) {
		r.tk = BT_MAX;
		r.target = 5;
	}
	bench_emit(&r);
out:
	free(s);
}

/* Yardstick: the kernel's munmap of 1 GiB of populated memory. */
static void inval_munmap(const struct bench_opts *o, uint64_t len,
			 struct bench_stats *out)
{
	unsigned reps = o->quick ? 3 : 7, k, n = 0;
	double s[16];

	for (k = 0; k < reps; k++) {
		void *p = fresh(len);
		uint64_t t0;

		if (!p || madvise(p, len, MADV_POPULATE_WRITE))
			break;
		t0 = bench_now_ns();
		munmap(p, len);
		s[n++] = ns_to(bench_now_ns() - t0, "ms");
	}
	bench_stats(s, n, out);
}

static void suite_inval(const struct bench_opts *o)
{
	uint64_t len = o->quick ? 256 * MiB : 1 * GiB, pg = page_size(), plen;
	struct uodp_ctx *ctx = manual_ctx(), *pctx = NULL;
	struct uodp_umem *um = NULL;
	char *p = fresh(len);
	struct bench_row r;

	if (!ctx || !p)
		goto out;
	bench_warmup(len);
	if (madvise(p, len, MADV_POPULATE_WRITE) ||
	    uodp_umem_get(ctx, p, len, RW, &um))
		goto out;
	inval_size(o, ctx, p, um, pg, RW, "invalidate write-mapped", false);
	inval_size(o, ctx, p, um, 2 * MiB, RW, "invalidate write-mapped",
		   false);
	inval_size(o, ctx, p, um, len, RW, "invalidate write-mapped", true);
	drain_dirty(um);
	inval_size(o, ctx, p, um, len, UODP_ACCESS_READ,
		   "invalidate read-mapped", true);
	uodp_umem_release(um);
	um = NULL;

	/* Pinning mode: every dropped page is munlock()ed. Within
	 * RLIMIT_MEMLOCK (8 MiB unless raised). */
	plen = len;
	while (plen > bench_raise_memlock() / 2 && plen > 2 * MiB)
		plen /= 2;
	if (bench_raise_memlock() >= plen && (pctx = pin_ctx()) &&
	    !uodp_umem_get(pctx, p, plen, RW, &um)) {
		inval_size(o, pctx, p, um, plen, RW, "invalidate pinning",
			   false);
		uodp_umem_release(um);
		um = NULL;
	} else {
		bench_note("invalidate pinning: skipped (RLIMIT_MEMLOCK)");
	}

	r = bench_row("inval", "kernel munmap (yardstick)", (double)len, "ms");
	bench_fmt_bytes(len, r.param, sizeof(r.param));
	inval_munmap(o, len, &r.v);
	r.note = "munmap of populated memory: the event behind an "
		 "invalidation";
	bench_emit(&r);
out:
	if (um)
		uodp_umem_release(um);
	if (pctx)
		uodp_ctx_destroy(pctx);
	if (ctx)
		uodp_ctx_destroy(ctx);
	if (p)
		munmap(p, len);
}

/* ---------------------------------------------------------------------- */
/* lookup: overlap queries with many regions                              */
/* ---------------------------------------------------------------------- */

/* Regions are one page each at BASE + 2 * i pages: the page after each is
 * a gap. Nothing is mapped there: a manual context never touches it. */
#define LOOKUP_BASE UINT64_C(0x200000000000)
#define NQ 4096 /* random query addresses per measurement */

struct lin_iv {
	uint64_t start, last;
};

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(void)
{
	return bench_rand(&rnd_state);
}

enum lq {
	LQ_INVAL,
	LQ_ITREE,
	LQ_LINEAR
};

/* Mean ns per query over @batch queries, @samples times. */
static void lookup_measure(enum lq kind, struct uodp_ctx *ctx, struct itree *t,
			   const struct lin_iv *iv, uint64_t n,
			   const uint64_t *q, unsigned samples, unsigned batch,
			   struct bench_stats *out)
{
	double *s = calloc(samples, sizeof(double));
	uint64_t pg = page_size(), qi = 0, acc = 0;
	unsigned k, j;

	if (!s)
		return;
	for (k = 0; k < samples + 1; k++) {
		uint64_t t0 = bench_now_ns();

		for (j = 0; j < batch; j++, qi++) {
			uint64_t a = q[qi % NQ], last = a + pg - 1, i;
			struct itree_node *nd;

			switch (kind) {
			case LQ_INVAL:
				uodp_invalidate_range(ctx, (void *)a, pg,
						      UODP_EVENT_MANUAL);
				break;
			case LQ_ITREE:
				for (nd = itree_iter_first(t, a, last); nd;
				     nd = itree_iter_next(nd, a, last))
					acc++;
				break;
			case LQ_LINEAR:
				for (i = 0; i < n; i++)
					acc += iv[i].start <= last &&
					       a <= iv[i].last;
				break;
			}
		}
		if (k) /* the first sample warms up */
			s[k - 1] = (double)(bench_now_ns() - t0) / batch;
	}
	sink = acc;
	bench_stats(s, samples, out);
	free(s);
}

/* Nodes for the bench's own trees: a plain array (4 KiB pages) or one on
 * transparent huge pages, to show what TLB misses cost the tree walk. */
static struct itree_node *node_array(uint64_t n, bool huge, uint64_t *bytes)
{
	uint64_t len = (n * sizeof(struct itree_node) + 2 * MiB - 1) &
		       ~(2 * MiB - 1);
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, len, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	*bytes = len;
	return p;
}

static void lookup_row(const char *name, enum lq kind, struct uodp_ctx *ctx,
		       struct itree *t, const struct lin_iv *iv, uint64_t n,
		       uint64_t nmax, const uint64_t *q, unsigned samples,
		       const char *note)
{
	struct bench_row r = bench_row("lookup", name, (double)n, "ns");
	unsigned lbatch = n >= 100000 ? 1 : n >= 1000 ? 8 : 64;

	snprintf(r.param, sizeof(r.param), "%llu", (unsigned long long)n);
	lookup_measure(kind, ctx, t, NULL, n, q, samples,
		       kind == LQ_INVAL ? 64 : 256, &r.v);
	/* Baseline: the same question answered by a linear scan. */
	lookup_measure(LQ_LINEAR, NULL, NULL, iv, n, q,
		       n >= 100000 ? 30 : samples, lbatch, &r.b);
	r.base_name = "linear scan";
	r.rk = BR_TIME;
	/* The target (<= 1 us) is stated at 10^6 regions: held against
	 * the largest n of the run only. */
	r.tk = n == nmax ? BT_MAX : BT_NONE;
	r.target = 1000;
	r.note = note;
	bench_emit(&r);
}

static void suite_lookup(const struct bench_opts *o)
{
	uint64_t nmax = o->quick ? 100000 : 1000000, n = 0, target_n, pg;
	uint64_t nbytes = 0, hbytes = 0;
	struct uodp_umem **ums = calloc(nmax, sizeof(*ums));
	struct itree_node *nodes = node_array(nmax, false, &nbytes);
	struct itree_node *hnodes = node_array(nmax, true, &hbytes);
	struct lin_iv *iv = calloc(nmax, sizeof(*iv));
	double *gs = calloc(nmax, sizeof(double));
	uint64_t *qmiss = calloc(NQ, sizeof(uint64_t));
	uint64_t *qhit = calloc(NQ, sizeof(uint64_t));
	struct uodp_ctx *ctx = manual_ctx();
	/* Random insertion order (issue 11: ascending order is the index's
	 * best case): region i is at slot ord[i] of the nmax slots, so the
	 * first n regions are a random subset, scattered over the range. */
	uint64_t *ord = calloc(nmax, sizeof(uint64_t));
	struct itree tree, htree;
	unsigned samples = o->quick ? 200 : 1000, j;

	pg = page_size();
	itree_init(&tree);
	itree_init(&htree);
	if (!ums || !nodes || !hnodes || !iv || !gs || !qmiss || !qhit ||
	    !ctx || !ord)
		goto out;
	for (n = 0; n < nmax; n++)
		ord[n] = n;
	for (n = nmax - 1; n > 0; n--) {
		uint64_t x = rnd() % (n + 1), t = ord[n];

		ord[n] = ord[x];
		ord[x] = t;
	}
	n = 0;
	for (target_n = 1; target_n <= nmax; target_n *= 10) {
		struct bench_row r;
		uint64_t first = n;

		for (; n < target_n; n++) {
			uint64_t a = LOOKUP_BASE + 2 * ord[n] * pg,
				 t0 = bench_now_ns();

			if (uodp_umem_get(ctx, (void *)a, pg, RW, &ums[n])) {
				bench_note("uodp_umem_get failed at %llu",
					   (unsigned long long)n);
				goto out;
			}
			gs[n - first] = ns_to(bench_now_ns() - t0, "us");
			nodes[n].start = hnodes[n].start = iv[n].start = a;
			nodes[n].last = hnodes[n].last = iv[n].last =
				a + pg - 1;
			itree_insert(&tree, &nodes[n]);
			itree_insert(&htree, &hnodes[n]);
		}
		for (j = 0; j < NQ; j++) {
			uint64_t i = rnd() % n;

			qhit[j] = LOOKUP_BASE + 2 * ord[i] * pg;
			qmiss[j] = qhit[j] + pg;
		}

		lookup_row("invalidate no region hit", LQ_INVAL, ctx, NULL, iv,
			   n, nmax, qmiss, samples,
			   "uodp_invalidate_range; mean of 64 per sample");
		lookup_row("invalidate 1 region hit", LQ_INVAL, ctx, NULL, iv,
			   n, nmax, qhit, samples,
			   "+ callback and region counters; nothing mapped");
		lookup_row("itree query miss", LQ_ITREE, NULL, &tree, iv, n,
			   nmax, qmiss, samples,
			   "the tree alone: own node array, 4 KiB pages");
		lookup_row("itree query miss THP", LQ_ITREE, NULL, &htree, iv,
			   n, nmax, qmiss, samples,
			   "same, node array on transparent huge pages");

		r = bench_row("lookup", "umem_get at n regions", (double)n,
			      "us");
		snprintf(r.param, sizeof(r.param), "%llu",
			 (unsigned long long)n);
		bench_stats(gs, n - first, &r.v);
		r.note = "the registrations that grew the tree to n";
		bench_emit(&r);
	}
out:
	while (n--)
		uodp_umem_release(ums[n]);
	if (ctx)
		uodp_ctx_destroy(ctx);
	free(ums);
	if (nodes)
		munmap(nodes, nbytes);
	if (hnodes)
		munmap(hnodes, hbytes);
	free(iv);
	free(gs);
	free(qmiss);
	free(qhit);
	free(ord);
}

/* ---------------------------------------------------------------------- */
/* touch: first touch of registered memory                                */
/* ---------------------------------------------------------------------- */

/* Write one byte per page of fresh memory; @mode 0: unregistered,
 * 1: registered on @ctx. Returns ns or 0. */
static uint64_t touch_once(struct uodp_ctx *ctx, uint64_t len, int *err)
{
	char *p = fresh(len);
	struct uodp_umem *um = NULL;
	uint64_t pg = page_size(), off, t0, t = 0;

	*err = 0;
	if (!p)
		return 0;
	if (ctx) {
		*err = uodp_umem_get(ctx, p, len, RW, &um);
		if (*err)
			goto out;
	}
	t0 = bench_now_ns();
	for (off = 0; off < len; off += pg)
		((volatile char *)p)[off] = 1;
	t = bench_now_ns() - t0;
	if (um)
		uodp_umem_release(um);
out:
	munmap(p, len);
	return t;
}

static void suite_touch(const struct bench_opts *o)
{
	/* Page faults cost ~10 us each on some VMs: keep sizes modest. */
	uint64_t len = o->quick ? 32 * MiB : 128 * MiB;
	unsigned reps = o->quick ? 9 : 21, k;
	struct uodp_ctx *mctx = manual_ctx(), *kctx = NULL;
	double u[32], m[32], b[32];
	int err = 0, kerr;

	if (!mctx)
		return;
	kerr = bench_monitor_probe();
	if (!kerr)
		kerr = uodp_ctx_create(&noop_ops, 0, &kctx);
	if (kerr)
		kctx = NULL;
	bench_warmup(len);
	touch_once(NULL, len, &err);
	/* Alternate the order of the three variants from one repetition
	 * to the next, so that a drift of the VM favours none of them. */
	for (k = 0; k < reps; k++) {
		if (k & 1) {
			if (kctx && !kerr)
				m[k] = ns_to(touch_once(kctx, len, &kerr),
					     "ms");
			u[k] = ns_to(touch_once(mctx, len, &err), "ms");
			b[k] = ns_to(touch_once(NULL, len, &err), "ms");
		} else {
			b[k] = ns_to(touch_once(NULL, len, &err), "ms");
			u[k] = ns_to(touch_once(mctx, len, &err), "ms");
			if (kctx && !kerr)
				m[k] = ns_to(touch_once(kctx, len, &kerr),
					     "ms");
		}
	}
	{
		struct bench_row r = bench_row("touch", "write manual ctx",
					       (double)len, "ms");

		bench_fmt_bytes(len, r.param, sizeof(r.param));
		bench_stats(u, reps, &r.v);
		bench_stats(b, reps, &r.b);
		r.base_name = "unregistered";
		r.rk = BR_TIME;
		r.tk = BT_RATIO_MIN;
		r.target = 0.95;
		r.note = "manual: nothing registered in the kernel";
		bench_emit(&r);
		if (kctx && !kerr) {
			r.name = "write kernel monitor";
			bench_stats(m, reps, &r.v);
			r.note = "userfaultfd-registered region";
			bench_emit(&r);
		} else {
			bench_note("write kernel monitor: %s",
				   kerr == -ENOSYS || kerr == -EPERM ?
					   bench_monitor_why(kerr) :
					   uodp_strerror(kerr));
		}
	}
	if (kctx)
		uodp_ctx_destroy(kctx);
	uodp_ctx_destroy(mctx);
}

/* ---------------------------------------------------------------------- */
/* contend: faults while another thread invalidates                       */
/* ---------------------------------------------------------------------- */

struct contend {
	struct uodp_ctx *ctx;
	char *inv_va;	    /* the part of the region invalidated */
	uint64_t inv_len;   /* its length (a multiple of chunk) */
	uint64_t chunk;	    /* bytes per invalidation */
	uint64_t period_ns; /* between invalidations; 0: back to back */
	atomic_bool stop;
	atomic_bool active;		/* invalidate now (else spin idle) */
	_Atomic uint64_t invalidations; /* done by the invalidating thread */
};

/* Invalidate random chunks of the invalidated part, one every period_ns
 * (paced by spinning: sleeps are far coarser than 10 us on a VM). */
static void *contend_invalidator(void *argp)
{
	struct contend *c = argp;
	uint64_t chunks = c->inv_len / c->chunk, x = 0x9e3779b97f4a7c15ull;
	uint64_t next = bench_now_ns();

	while (!atomic_load_explicit(&c->stop, memory_order_relaxed)) {
		char *s;

		if (!atomic_load_explicit(&c->active, memory_order_relaxed)) {
			next = bench_now_ns();
			continue;
		}
		if (c->period_ns) {
			if (bench_now_ns() < next)
				continue;
			next += c->period_ns;
		}
		s = c->inv_va + (bench_rand(&x) % chunks) * c->chunk;
		uodp_invalidate_range(c->ctx, s, c->chunk, UODP_EVENT_MANUAL);
		atomic_fetch_add_explicit(&c->invalidations, 1,
					  memory_order_relaxed);
	}
	return NULL;
}

/* Fault [va, va + len) in 2 MiB chunks for 2 * @slices slices of
 * @slice_ns, the invalidator active in every other slice: samples are
 * pages mapped per second, with (@with) and without (@alone)
 * invalidations, taken alternately so that both see the same machine.
 * A fault that gives up (-EBUSY) maps nothing and is counted in *busy. */
static bool contend_faults(struct uodp_umem *um, struct contend *c, char *va,
			   uint64_t len, unsigned slices, uint64_t slice_ns,
			   double *with, double *alone, uint64_t *busy)
{
	uint64_t off = 0, pages, t0, t;
	unsigned k;
	int64_t n;

	for (k = 0; k < 2 * slices; k++) {
		atomic_store(&c->active, !(k & 1));
		pages = 0;
		t0 = bench_now_ns();
		do {
			n = driver_fault(um, va + off, 2 * MiB, RW);
			if (n == -EBUSY)
				(*busy)++;
			else if (n < 0)
				return false;
			else
				pages += (uint64_t)n;
			off = (off + 2 * MiB) % len;
			t = bench_now_ns();
		} while (t - t0 < slice_ns);
		(k & 1 ? alone : with)[k / 2] =
			(double)pages / ((double)(t - t0) / 1e9);
	}
	atomic_store(&c->active, false);
	return true;
}

/*
 * One contention row: the invalidator at @rate per second (0: flat out)
 * on [inv_va, inv_va + inv_len) in @chunk pieces, faults on
 * [fva, fva + flen).
 */
static bool contend_row(const struct bench_opts *o, struct uodp_ctx *ctx,
			struct uodp_umem *um, const char *name, uint64_t rate,
			char *inv_va, uint64_t inv_len, uint64_t chunk,
			char *fva, uint64_t flen, enum bench_target_kind tk,
			double target, const char *what)
{
	unsigned slices = o->quick ? 3 : 15;
	uint64_t slice_ns = 100 * 1000 * 1000, inv0, busy = 0;
	double alone[32], with[32];
	struct uodp_umem_stats st0, st1;
	struct contend c;
	struct bench_row r;
	char note[160];
	pthread_t th;
	bool ok;

	memset(&c, 0, sizeof(c));
	c.ctx = ctx;
	c.inv_va = inv_va;
	c.inv_len = inv_len;
	c.chunk = chunk;
	c.period_ns = rate ? 1000000000 / rate : 0;
	atomic_init(&c.stop, false);
	atomic_init(&c.active, false);
	if (pthread_create(&th, NULL, contend_invalidator, &c))
		return false;
	/* Warm-up: one pair of slices. */
	ok = contend_faults(um, &c, fva, flen, 1, slice_ns, with, alone, &busy);
	inv0 = atomic_load(&c.invalidations);
	busy = 0;
	uodp_umem_stats(um, &st0, sizeof(st0));
	ok = ok && contend_faults(um, &c, fva, flen, slices, slice_ns, with,
				  alone, &busy);
	atomic_store(&c.stop, true);
	pthread_join(th, NULL);
	uodp_umem_stats(um, &st1, sizeof(st1));
	if (!ok) {
		bench_note("%s: a fault failed", name);
		return false;
	}
	r = bench_row("contend", name, (double)rate, "pages/s");
	if (rate)
		snprintf(r.param, sizeof(r.param), "%llu/s",
			 (unsigned long long)rate);
	else
		snprintf(r.param, sizeof(r.param), "max");
	bench_stats(with, slices, &r.v);
	bench_stats(alone, slices, &r.b);
	r.base_name = "no invalidator (alternate)";
	r.rk = BR_RATE;
	r.tk = tk;
	r.target = target;
	snprintf(note, sizeof(note),
		 "%s; %.0f inval/s done; %llu retries, %llu -EBUSY", what,
		 (double)(atomic_load(&c.invalidations) - inv0) /
			 (slices * slice_ns / 1e9),
		 (unsigned long long)(st1.retries - st0.retries),
		 (unsigned long long)busy);
	r.note = note;
	bench_emit(&r);
	return true;
}

/* ---- the time to get -EBUSY under a storm ---- */

struct storm {
	struct uodp_ctx *ctx;
	char *va;
	uint64_t len;
	atomic_bool stop;
	_Atomic uint64_t rounds; /* invalidations done */
	int err;		 /* why the storm stopped early */
};

/*
 * Overlapping manual invalidations of the faulted pages, back to back:
 * two tokens, each started before the other ends, so that some
 * invalidation of the pages runs at every moment (as when several threads
 * invalidate the same buffer) and the storm does not depend on this thread
 * being scheduled. A fault there can only wait, and must give up with
 * -EBUSY when its timeout passes.
 */
static void *storm_thread(void *argp)
{
	struct storm *st = argp;
	struct uodp_range r[2];
	unsigned cur = 0;

	uodp_range_init(&r[0], st->va, st->len, UODP_EVENT_MANUAL);
	st->err = uodp_invalidate_range_start(st->ctx, &r[0]);
	while (!st->err &&
	       !atomic_load_explicit(&st->stop, memory_order_relaxed)) {
		unsigned next = cur ^ 1;

		uodp_range_init(&r[next], st->va, st->len, UODP_EVENT_MANUAL);
		st->err = uodp_invalidate_range_start(st->ctx, &r[next]);
		uodp_invalidate_range_end(&r[cur]);
		cur = next;
		atomic_fetch_add_explicit(&st->rounds, 1, memory_order_relaxed);
	}
	if (!st->err)
		uodp_invalidate_range_end(&r[cur]);
	return NULL;
}

static void contend_ebusy(const struct bench_opts *o, struct uodp_ctx *ctx,
			  struct uodp_umem *um, char *p)
{
	static const unsigned timeouts[] = { 0, 1, 10 };
	uint64_t pg = page_size();
	struct storm st = { .ctx = ctx, .va = p, .len = pg };
	uint64_t t_up;
	double s[200];
	unsigned i, k;
	pthread_t th;

	atomic_init(&st.stop, false);
	if (pthread_create(&th, NULL, storm_thread, &st))
		return;
	/* Measure only once the storm runs (thread start-up is slower than
	 * a whole series of uncontended faults). */
	t_up = bench_now_ns();
	while (!atomic_load(&st.rounds) && !st.err &&
	       bench_now_ns() - t_up < 1000000000ull)
		sched_yield();
	for (i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++) {
		unsigned reps = timeouts[i] >= 10 ? (o->quick ? 20 : 100) :
						    (o->quick ? 100 : 200);
		unsigned nbusy = 0, nok = 0;
		struct bench_row r;
		char note[96];

		for (k = 0; k < reps; k++) {
			uint64_t t0 = bench_now_ns();
			int64_t n = uodp_umem_map_and_lock(um, p, pg, RW,
							   timeouts[i]);
			uint64_t dt = bench_now_ns() - t0;

			if (n > 0) {
				uodp_umem_unlock(um);
				nok++;
			} else if (n == -EBUSY) {
				s[nbusy++] = ns_to(dt, "ms");
			} else {
				bench_note("map_and_lock under a storm: %s",
					   uodp_strerror((int)n));
				goto out;
			}
		}
		r = bench_row("contend", "-EBUSY under a storm",
			      (double)timeouts[i], "ms");
		snprintf(r.param, sizeof(r.param), "timeout %u ms",
			 timeouts[i]);
		if (nbusy)
			bench_stats(s, nbusy, &r.v);
		/* The bound is the timeout plus scheduling: a waiter sleeps
		 * until the deadline and needs the CPU back to return;
		 * 2 ms covers a loaded 2-core VM's wake-up latency. */
		r.tk = BT_MAX;
		r.target = timeouts[i] + 2.0;
		snprintf(note, sizeof(note),
			 "time to -EBUSY; %u of %u calls -EBUSY, %u mapped; "
			 "storm %llu inval (err %d)",
			 nbusy, reps, nok,
			 (unsigned long long)atomic_load(&st.rounds), st.err);
		r.note = note;
		bench_emit(&r);
	}
out:
	atomic_store(&st.stop, true);
	pthread_join(th, NULL);
}

static void suite_contend(const struct bench_opts *o)
{
	/* Invalidations per second of the invalidating thread; 0: as fast
	 * as it can. */
	static const uint64_t rates[] = { 1000, 10000, 100000, 0 };
	uint64_t len = 64 * MiB, half = len / 2;
	struct uodp_ctx *ctx = manual_ctx();
	struct uodp_umem *um = NULL;
	char *p = fresh(len);
	unsigned i;

	/* Base pages: each 2 MiB fault installs 512 entries, as issue 11
	 * measured 0.1 (on THP memory it would install one huge entry, and
	 * the rows would measure something cheaper). */
	if (p)
		madvise(p, len, MADV_NOHUGEPAGE);
	if (!ctx || !p || madvise(p, len, MADV_POPULATE_WRITE) ||
	    uodp_umem_get(ctx, p, len, RW, &um))
		goto out;
	/* The whole region: faults collide with whatever they overlap. */
	for (i = 0; i < sizeof(rates) / sizeof(rates[0]); i++)
		if (!contend_row(o, ctx, um, "fault under invalidation",
				 rates[i], p, len, 2 * MiB, p, len, BT_NONE, 0,
				 "2 MiB faults and invalidations, 64 MiB "
				 "region"))
			goto out;
	/*
	 * Faults on the lower half while the upper half is invalidated:
	 * what per-stripe sequences buy (0.1's one sequence per region made
	 * these faults retry on every invalidation: ratio 0.003 at 10^5/s).
	 * 64 KiB invalidations: the pieces a driver's evictions and
	 * madvise(DONTNEED) of freed buffers typically come in. Faults on
	 * the invalidated half never install a stale entry: that is
	 * tested (tests/test_engine_races.c), not measured, here.
	 */
	if (!contend_row(o, ctx, um, "fault other half", 100000, p + half, half,
			 64 * KiB, p, half, BT_RATIO_MIN, 0.5,
			 "faults lower half, 64 KiB invalidations upper"))
		goto out;
	if (!contend_row(o, ctx, um, "fault other half", 0, p + half, half,
			 64 * KiB, p, half, BT_NONE, 0,
			 "faults lower half, 64 KiB invalidations upper"))
		goto out;
	contend_ebusy(o, ctx, um, p);
out:
	if (um)
		uodp_umem_release(um);
	if (ctx)
		uodp_ctx_destroy(ctx);
	if (p)
		munmap(p, len);
}

const struct bench_suite bench_engine_suites[] = {
	{ "floor", "cost of the machine's primitives (context for the rest)",
	  suite_floor },
	{ "reg", "registration latency vs pinned registration", suite_reg },
	{ "map", "fault path (uodp_umem_map_and_lock) vs raw MADV_POPULATE",
	  suite_map },
	{ "mem", "translation memory per page", suite_mem },
	{ "inval", "invalidation of mapped memory (manual context)",
	  suite_inval },
	{ "lookup", "overlap queries with 1 .. 10^6 regions", suite_lookup },
	{ "contend", "faults while another thread invalidates", suite_contend },
	{ "touch", "first touch of registered memory", suite_touch },
	{ NULL, NULL, NULL },
};

/* SPDX-License-Identifier: MIT */
/*
 * suite_device.c - benchmark suites of the software DMA device
 * (include/uodp_dev.h), issue 5 items 2 and 6:
 *
 *   dev       data path: device read / write / copy of 64 B .. 16 MiB
 *             against memcpy of the same bytes, warm (pages already in the
 *             device page table) and cold (fresh memory: every page
 *             faults, against memcpy from / to fresh memory, which faults
 *             in the CPU); both data paths (process_vm_* and FAST_COPY);
 *             8-byte atomics against CPU atomics; queued warm
 *             operations against the same synchronous ones;
 *   devfault  the device touching every page of fresh memory with
 *             fault-around 4 KiB .. 2 MiB against raw MADV_POPULATE_* of
 *             the same memory (the limit of a user-space fault path); at
 *             4 KiB also that limit's floor for a one-page window (one
 *             populate call per page, no engine, no device).
 *
 * Devices are opened with UODP_DEV_MANUAL (no kernel monitor: nothing here
 * is about invalidation). Owns only its measurements: every device,
 * region and mapping is released before a suite returns.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uodp_dev.h>

#include "bench.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static volatile uint64_t dsink;

static void *dfresh(uint64_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static struct uodp_dev *dev_open(unsigned flags, unsigned fault_around)
{
	struct uodp_dev_attr a;
	struct uodp_dev *d;
	int r;

	memset(&a, 0, sizeof(a));
	a.flags = UODP_DEV_MANUAL | flags;
	a.fault_around = fault_around;
	r = uodp_dev_open(&a, &d);
	if (r) {
		bench_note("uodp_dev_open: %s", uodp_strerror(r));
		return NULL;
	}
	return d;
}

enum dop {
	D_READ,
	D_WRITE,
	D_COPY,
	D_MEMCPY_IN,
	D_MEMCPY_OUT
};

struct dpath {
	struct uodp_dev *dev;
	uint32_t key;
	char *host;  /* registered memory (key) */
	char *host2; /* second half: copy target */
	char *buf;   /* local buffer */
};

/* One operation of @len bytes; false on error. */
static bool dop_run(enum dop op, const struct dpath *p, uint64_t len)
{
	uint64_t h = (uint64_t)(uintptr_t)p->host;
	int r = 0;

	switch (op) {
	case D_READ:
		r = uodp_dev_read(p->dev, p->key, h, p->buf, len);
		break;
	case D_WRITE:
		r = uodp_dev_write(p->dev, p->key, h, p->buf, len);
		break;
	case D_COPY:
		r = uodp_dev_copy(p->dev, p->key, (uint64_t)(uintptr_t)p->host2,
				  p->key, h, len);
		break;
	case D_MEMCPY_IN:
		memcpy(p->buf, p->host, len);
		break;
	case D_MEMCPY_OUT:
		memcpy(p->host, p->buf, len);
		break;
	}
	if (r) {
		bench_note("device op %d of %llu bytes: %s", (int)op,
			   (unsigned long long)len, uodp_strerror(r));
		return false;
	}
	dsink += (uint8_t)p->buf[0];
	return true;
}

/* Mean us per op over batches; batches big enough to time (>= ~64 KiB of
 * data or 256 ops). */
static bool dop_measure(enum dop op, const struct dpath *p, uint64_t len,
			unsigned samples, struct bench_stats *out)
{
	unsigned batch = len >= 64 * KiB ? 1 : (unsigned)(64 * KiB / len);
	double *s = calloc(samples, sizeof(double));
	unsigned k, j;

	if (!s)
		return false;
	if (batch > 256)
		batch = 256;
	for (k = 0; k < samples + 2; k++) {
		uint64_t t0 = bench_now_ns();

		for (j = 0; j < batch; j++)
			if (!dop_run(op, p, len)) {
				free(s);
				return false;
			}
		if (k >= 2) /* two warm-up samples */
			s[k - 2] = (double)(bench_now_ns() - t0) / 1e3 / batch;
	}
	bench_stats(s, samples, out);
	free(s);
	return true;
}

static void dev_warm(const struct bench_opts *o)
{
	static const uint64_t sizes[] = { 64, 4 * KiB, 64 * KiB, 1 * MiB,
					  16 * MiB };
	static const struct {
		const char *name;
		enum dop op, base;
		bool fast;
	} cases[] = {
		{ "warm read", D_READ, D_MEMCPY_IN, false },
		{ "warm read FAST_COPY", D_READ, D_MEMCPY_IN, true },
		{ "warm write", D_WRITE, D_MEMCPY_OUT, false },
		{ "warm write FAST_COPY", D_WRITE, D_MEMCPY_OUT, true },
		{ "warm copy FAST_COPY", D_COPY, D_MEMCPY_IN, true },
	};
	uint64_t hlen = 32 * MiB;
	unsigned samples = o->quick ? 30 : 100;
	struct dpath ps, pf;
	size_t i, c;

	memset(&ps, 0, sizeof(ps));
	memset(&pf, 0, sizeof(pf));
	ps.host = dfresh(hlen);
	ps.buf = dfresh(16 * MiB);
	ps.dev = dev_open(0, 0);
	pf.dev = dev_open(UODP_DEV_FAST_COPY, 0);
	if (!ps.host || !ps.buf || !ps.dev || !pf.dev)
		goto out;
	memset(ps.host, 1, hlen);
	memset(ps.buf, 2, 16 * MiB);
	ps.host2 = ps.host + 16 * MiB;
	pf.host = ps.host;
	pf.host2 = ps.host2;
	pf.buf = ps.buf;
	if (uodp_dev_reg_mr(ps.dev, (uint64_t)(uintptr_t)ps.host, hlen,
			    UODP_DEV_ACCESS_ALL, &ps.key) ||
	    uodp_dev_reg_mr(pf.dev, (uint64_t)(uintptr_t)pf.host, hlen,
			    UODP_DEV_ACCESS_ALL, &pf.key) ||
	    uodp_dev_prefetch(ps.dev, ps.key, (uint64_t)(uintptr_t)ps.host,
			      hlen, UODP_DEV_PREFETCH_WRITE) ||
	    uodp_dev_prefetch(pf.dev, pf.key, (uint64_t)(uintptr_t)pf.host,
			      hlen, UODP_DEV_PREFETCH_WRITE)) {
		bench_note("device registration/prefetch failed");
		goto out;
	}
	for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			struct bench_row r = bench_row("dev", cases[c].name,
						       (double)sizes[i], "us");
			const struct dpath *p = cases[c].fast ? &pf : &ps;

			if (o->quick && sizes[i] == 64 * KiB)
				continue;
			bench_fmt_bytes(sizes[i], r.param, sizeof(r.param));
			if (!dop_measure(cases[c].op, p, sizes[i], samples,
					 &r.v) ||
			    !dop_measure(cases[c].base, p, sizes[i], samples,
					 &r.b))
				goto out;
			r.base_name = "memcpy";
			r.rk = BR_TIME;
			if (sizes[i] == 1 * MiB && cases[c].op != D_COPY) {
				r.tk = BT_RATIO_MIN;
				r.target = cases[c].fast ? 0.90 : 0.70;
			}
			bench_emit(&r);
		}
	}
out:
	if (ps.dev)
		uodp_dev_close(ps.dev);
	if (pf.dev)
		uodp_dev_close(pf.dev);
	if (ps.host)
		munmap(ps.host, hlen);
	if (ps.buf)
		munmap(ps.buf, 16 * MiB);
}

/* One cold operation: fresh memory, registered (untimed), one device op
 * or (dev NULL) one memcpy touching it. Returns ns or 0. */
static uint64_t cold_once(struct uodp_dev *dev, bool write, uint64_t len,
			  char *buf)
{
	char *h = dfresh(len);
	uint32_t key;
	uint64_t t0, t = 0;
	int r = 0;

	if (!h)
		return 0;
	if (dev && uodp_dev_reg_mr(dev, (uint64_t)(uintptr_t)h, len,
				   UODP_DEV_ACCESS_ALL, &key))
		goto out;
	t0 = bench_now_ns();
	if (!dev && write)
		memcpy(h, buf, len);
	else if (!dev)
		memcpy(buf, h, len);
	else if (write)
		r = uodp_dev_write(dev, key, (uint64_t)(uintptr_t)h, buf, len);
	else
		r = uodp_dev_read(dev, key, (uint64_t)(uintptr_t)h, buf, len);
	t = bench_now_ns() - t0;
	dsink += (uint8_t)buf[0];
	if (dev)
		uodp_dev_dereg_mr(dev, key);
	if (r) {
		bench_note("cold device op: %s", uodp_strerror(r));
		t = 0;
	}
out:
	munmap(h, len);
	return t;
}

static void dev_cold(const struct bench_opts *o)
{
	static const uint64_t sizes[] = { 4 * KiB, 64 * KiB, 1 * MiB,
					  16 * MiB };
	struct uodp_dev *ds = dev_open(0, 0),
			*df = dev_open(UODP_DEV_FAST_COPY, 0);
	char *buf = dfresh(16 * MiB);
	double u[512], b[512];
	size_t i;
	int c;

	if (!ds || !df || !buf)
		goto out;
	memset(buf, 3, 16 * MiB);
	for (c = 0; c < 4; c++) {
		bool write = c & 1, fast = c & 2;
		static const char *const names[] = { "cold read", "cold write",
						     "cold read FAST_COPY",
						     "cold write FAST_COPY" };

		for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			unsigned reps =
				sizes[i] <= 64 * KiB ? (o->quick ? 100 : 400) :
				sizes[i] <= 1 * MiB  ? (o->quick ? 10 : 40) :
						       (o->quick ? 3 : 9);
			struct bench_row r = bench_row("dev", names[c],
						       (double)sizes[i], "us");
			unsigned k;

			bench_fmt_bytes(sizes[i], r.param, sizeof(r.param));
			cold_once(fast ? df : ds, write, sizes[i], buf);
			for (k = 0; k < reps; k++) {
				uint64_t tu = cold_once(fast ? df : ds, write,
							sizes[i], buf);
				uint64_t tb =
					cold_once(NULL, write, sizes[i], buf);

				if (!tu || !tb)
					goto out;
				u[k] = (double)tu / 1e3;
				b[k] = (double)tb / 1e3;
			}
			bench_stats(u, reps, &r.v);
			bench_stats(b, reps, &r.b);
			r.base_name = write ? "memcpy to fresh mem" :
					      "memcpy from fresh mem";
			r.rk = BR_TIME;
			r.note = "every page faults (fault-around 16 pages)";
			bench_emit(&r);
		}
	}
out:
	if (ds)
		uodp_dev_close(ds);
	if (df)
		uodp_dev_close(df);
	if (buf)
		munmap(buf, 16 * MiB);
}

static void dev_atomics(const struct bench_opts *o)
{
	unsigned samples = o->quick ? 50 : 200, batch = 1000, k, j;
	struct uodp_dev *d = dev_open(0, 0);
	uint64_t *word = dfresh(4096), old = 0;
	double u[256], b[256];
	uint32_t key;
	struct bench_row r = bench_row("dev", "fetch_add", 8, "ns");

	if (!d || !word)
		goto out;
	*word = 0;
	if (uodp_dev_reg_mr(d, (uint64_t)(uintptr_t)word, 4096,
			    UODP_DEV_ACCESS_ALL, &key))
		goto out;
	for (k = 0; k < samples + 1; k++) {
		uint64_t t0 = bench_now_ns(), t1, t2;

		for (j = 0; j < batch; j++)
			if (uodp_dev_fetch_add(
				    d, key, (uint64_t)(uintptr_t)word, 1, &old))
				goto out;
		t1 = bench_now_ns();
		for (j = 0; j < batch; j++)
			old += __atomic_fetch_add(word, 1, __ATOMIC_SEQ_CST);
		t2 = bench_now_ns();
		if (k) {
			u[k - 1] = (double)(t1 - t0) / batch;
			b[k - 1] = (double)(t2 - t1) / batch;
		}
	}
	dsink += old;
	snprintf(r.param, sizeof(r.param), "8 B");
	bench_stats(u, samples, &r.v);
	bench_stats(b, samples, &r.b);
	r.base_name = "CPU __atomic_fetch_add";
	r.rk = BR_TIME;
	r.note = "per operation; 1e9/median = atomics per second";
	bench_emit(&r);
out:
	if (d)
		uodp_dev_close(d);
	if (word)
		munmap(word, 4096);
}

/* Post @n warm requests (each into its own slot of @buf), then poll them
 * all; false on error. */
static bool queue_batch(struct uodp_dev_queue *q, const struct uodp_dev_wr *t,
			char *buf, unsigned n, uint64_t len)
{
	struct uodp_dev_wc wc[64];
	struct uodp_dev_wr wr = *t;
	unsigned i, got = 0;
	int r;

	for (i = 0; i < n; i++) {
		wr.wr_id = i;
		wr.buf = buf + i * len;
		r = uodp_dev_post(q, &wr);
		if (r) {
			bench_note("uodp_dev_post: %s", uodp_strerror(r));
			return false;
		}
	}
	while (got < n) {
		r = uodp_dev_poll_wait(q, wc, 64, 10000);
		if (r <= 0) {
			bench_note("uodp_dev_poll_wait: %d", r);
			return false;
		}
		for (i = 0; i < (unsigned)r; i++)
			if (wc[i].status) {
				bench_note("queued op: %s",
					   uodp_strerror(wc[i].status));
				return false;
			}
		got += (unsigned)r;
	}
	return true;
}

/* Queued warm operations (FAST_COPY, one guarded window each, run on the
 * device's exec workers) against the same synchronous operations on the
 * caller's thread, batches interleaved. The queued time per operation
 * includes the handoff (post, a worker's pickup, the completion, the
 * poll); a worker's window makes no rt_sigprocmask (recover.c), the
 * caller's does. */
static void dev_queued(const struct bench_opts *o)
{
	static const struct {
		const char *name;
		enum uodp_dev_opcode opc;
	} cases[] = { { "queued read FAST_COPY", UODP_DEV_OP_READ },
		      { "queued write FAST_COPY", UODP_DEV_OP_WRITE } };
	/* 64 requests per batch: the queue's depth, enough to keep the
	 * workers busy without sleeping between requests. */
	const unsigned batch = 64, samples = o->quick ? 30 : 100;
	const uint64_t len = 64;
	struct uodp_dev *d = dev_open(UODP_DEV_FAST_COPY, 0);
	struct uodp_dev_queue *q = NULL;
	char *host = dfresh(64 * KiB), *buf = dfresh(64 * KiB);
	double u[128], b[128];
	unsigned c, k, j;
	uint32_t key;

	if (!d || !host || !buf)
		goto out;
	memset(host, 1, 64 * KiB);
	memset(buf, 2, 64 * KiB);
	if (uodp_dev_reg_mr(d, (uint64_t)(uintptr_t)host, 64 * KiB,
			    UODP_DEV_ACCESS_ALL, &key) ||
	    uodp_dev_prefetch(d, key, (uint64_t)(uintptr_t)host, 64 * KiB,
			      UODP_DEV_PREFETCH_WRITE) ||
	    uodp_dev_queue_create(d, batch, &q)) {
		bench_note("queued: device setup failed");
		goto out;
	}
	for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct bench_row r = bench_row("dev", cases[c].name, len, "us");
		struct uodp_dev_wr t = { .opcode = cases[c].opc,
					 .key = key,
					 .va = (uint64_t)(uintptr_t)host,
					 .len = len };

		for (k = 0; k < samples + 2; k++) {
			uint64_t t0 = bench_now_ns(), t1, t2;
			int e = 0;

			if (!queue_batch(q, &t, buf, batch, len))
				goto out;
			t1 = bench_now_ns();
			for (j = 0; j < batch && !e; j++)
				e = cases[c].opc == UODP_DEV_OP_READ ?
					    uodp_dev_read(d, key, t.va,
							  buf + j * len, len) :
					    uodp_dev_write(d, key, t.va,
							   buf + j * len, len);
			t2 = bench_now_ns();
			if (e) {
				bench_note("sync op: %s", uodp_strerror(e));
				goto out;
			}
			if (k >= 2) { /* two warm-up samples */
				u[k - 2] = (double)(t1 - t0) / 1e3 / batch;
				b[k - 2] = (double)(t2 - t1) / 1e3 / batch;
			}
		}
		snprintf(r.param, sizeof(r.param), "64 B");
		bench_stats(u, samples, &r.v);
		bench_stats(b, samples, &r.b);
		r.base_name = "synchronous op, same bytes";
		r.rk = BR_TIME;
		r.note = "per op, batches of 64 posted then polled; "
			 "includes the handoff to the workers";
		bench_emit(&r);
	}
out:
	if (q)
		uodp_dev_queue_destroy(q);
	if (d)
		uodp_dev_close(d);
	if (host)
		munmap(host, 64 * KiB);
	if (buf)
		munmap(buf, 64 * KiB);
}

static void suite_dev(const struct bench_opts *o)
{
	bench_warmup(256 * MiB);
	dev_warm(o);
	dev_queued(o);
	dev_cold(o);
	dev_atomics(o);
}

/* ---------------------------------------------------------------------- */
/* devfault: fault throughput through the device                          */
/* ---------------------------------------------------------------------- */

/* The device touches 8 bytes of every page of fresh memory, page after
 * page: each miss faults fault_around pages. Returns ns or 0. */
static uint64_t devfault_once(struct uodp_dev *d, uint64_t len, bool write)
{
	char *h = dfresh(len);
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), off, t0, t = 0, v = 7;
	uint32_t key;
	int r = 0;

	if (!h)
		return 0;
	if (uodp_dev_reg_mr(d, (uint64_t)(uintptr_t)h, len, UODP_DEV_ACCESS_ALL,
			    &key))
		goto out;
	t0 = bench_now_ns();
	for (off = 0; off < len && !r; off += pg)
		r = write ? uodp_dev_write(d, key, (uint64_t)(uintptr_t)h + off,
					   &v, 8) :
			    uodp_dev_read(d, key, (uint64_t)(uintptr_t)h + off,
					  &v, 8);
	t = bench_now_ns() - t0;
	uodp_dev_dereg_mr(d, key);
	if (r) {
		bench_note("devfault: %s", uodp_strerror(r));
		t = 0;
	}
out:
	munmap(h, len);
	dsink += v;
	return t;
}

/* The limit for a device that touches every page of fresh memory from
 * user space: populate it (the kernel allocates and zeroes the pages),
 * then the CPU's first access to each page. On some VMs that first access
 * is far from free even though the page is present (the hypervisor fills
 * its own page tables): both parts are timed, *pop_ns gets the first. */
static uint64_t populate_once(uint64_t len, bool write, uint64_t *pop_ns)
{
	char *h = dfresh(len);
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), off, t0, t1, t = 0;
	uint64_t acc = 0;

	if (!h)
		return 0;
	t0 = bench_now_ns();
	if (!madvise(h, len,
		     write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ)) {
		t1 = bench_now_ns();
		for (off = 0; off < len; off += pg) {
			if (write)
				((volatile char *)h)[off] = 1;
			else
				acc += (uint64_t)((volatile char *)h)[off];
		}
		t = bench_now_ns() - t0;
		*pop_ns = t1 - t0;
	}
	dsink += acc;
	munmap(h, len);
	return t;
}

/* What fault-around 4 KiB cannot go below: one MADV_POPULATE_* per page,
 * then the CPU's first access to it (no engine, no device). Returns ns
 * or 0. */
static uint64_t populate_per_page_once(uint64_t len, bool write)
{
	char *h = dfresh(len);
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), off, t0, t = 0;
	uint64_t acc = 0;
	int adv = write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;

	if (!h)
		return 0;
	t0 = bench_now_ns();
	for (off = 0; off < len; off += pg) {
		if (madvise(h + off, pg, adv))
			goto out;
		if (write)
			((volatile char *)h)[off] = 1;
		else
			acc += (uint64_t)((volatile char *)h)[off];
	}
	t = bench_now_ns() - t0;
out:
	dsink += acc;
	munmap(h, len);
	return t;
}

static void suite_devfault(const struct bench_opts *o)
{
	static const unsigned fa[] = { 1, 16, 64, 512 };
	uint64_t len = o->quick ? 64 * MiB : 1 * GiB;
	unsigned reps = o->quick ? 3 : 5, k;
	double u[16], b[16], pop[16], fl[16];
	size_t i;
	int w;

	bench_warmup(len);
	for (w = 1; w >= 0; w--) {
		for (i = 0; i < sizeof(fa) / sizeof(fa[0]); i++) {
			struct uodp_dev *d =
				dev_open(UODP_DEV_FAST_COPY, fa[i]);
			struct bench_row r = bench_row(
				"devfault",
				w ? "device write-touch" : "device read-touch",
				(double)fa[i] * 4096, "ms");
			uint64_t flen = len;
			char note[128];

			if (!d)
				return;
			/* One fault per page: keep it to 1/4 of the size. */
			if (fa[i] == 1)
				flen = len / 4;
			{
				char fb[16];

				snprintf(r.param, sizeof(r.param), "fa %s",
					 bench_fmt_bytes((uint64_t)fa[i] * 4096,
							 fb, sizeof(fb)));
			}
			devfault_once(d, flen, w);
			for (k = 0; k < reps; k++) {
				uint64_t tp = 0, tu = devfault_once(d, flen, w);
				uint64_t tb = populate_once(flen, w, &tp);
				/* fa 4 KiB: its floor, interleaved too */
				uint64_t tf = fa[i] == 1 ?
						      populate_per_page_once(
							      flen, w) :
						      1;

				if (!tu || !tb || !tf) {
					uodp_dev_close(d);
					return;
				}
				u[k] = (double)tu / 1e6;
				b[k] = (double)tb / 1e6;
				pop[k] = (double)tp / 1e6;
				fl[k] = (double)tf / 1e6;
			}
			{
				struct uodp_dev_stats st;
				struct bench_stats ps;

				uodp_dev_stats(d, &st);
				bench_stats(pop, reps, &ps);
				snprintf(
					note, sizeof(note),
					"%llu MiB; %.0f pages per device fault; "
					"populate alone %.4g ms",
					(unsigned long long)(flen / MiB),
					st.page_faults ?
						(double)st.pages_faulted /
							(double)st.page_faults :
						0.0,
					ps.median);
			}
			uodp_dev_close(d);
			bench_stats(u, reps, &r.v);
			bench_stats(b, reps, &r.b);
			r.base_name = w ? "POPULATE_WRITE + CPU touch" :
					  "POPULATE_READ + CPU touch";
			r.rk = BR_TIME;
			r.tk = BT_RATIO_MIN;
			r.target = 0.80;
			r.note = note;
			bench_emit(&r);
			if (fa[i] == 1) {
				/* The bound of the row above: a device that
				 * cost nothing would still make one populate
				 * call per page. */
				struct bench_row f = bench_row(
					"devfault",
					w ? "floor: populate per page + touch" :
					    "floor: populate-read per page + touch",
					(double)fa[i] * 4096, "ms");

				snprintf(f.param, sizeof(f.param), "%s",
					 r.param);
				bench_stats(fl, reps, &f.v);
				f.b = r.b;
				f.base_name = r.base_name;
				f.rk = BR_TIME;
				f.tk = BT_NONE;
				f.note = "floor of fa 4 KiB: no engine, no "
					 "device";
				bench_emit(&f);
			}
		}
	}
}

const struct bench_suite bench_device_suites[] = {
	{ "dev", "device data path vs memcpy (warm, cold) and atomics",
	  suite_dev },
	{ "devfault", "device fault throughput by fault-around size",
	  suite_devfault },
	{ NULL, NULL, NULL },
};

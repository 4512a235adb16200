/* SPDX-License-Identifier: MIT */
/*
 * suite_notify.c - invalidation latency through the kernel monitor
 * (issue 5 item 4): munmap() / madvise(MADV_DONTNEED) of 1 page, 2 MiB and
 * 1 GiB of memory mapped by a region, against a bare userfaultfd monitor
 * (a thread that only reads the events) on the same memory sizes, with the
 * monitor on the same CPU as the unmapping thread and on the other one,
 * with relaxed and strict ordering.
 *
 * Three figures per case: the time until munmap()/madvise() returns (the
 * kernel waits for the monitor to READ the event), the time until the
 * invalidation is done (uodp: the driver's invalidate_range callback has
 * returned; bare: the event has been read), and for uodp the time until
 * the region's entries are gone (uodp_umem_read_begin() returned: the engine
 * dropped them after the callback and ended the invalidation).
 *
 * Also (issue 3): first touch of 1 GiB registered on a kernel-monitor
 * context vs the same memory unregistered (full run only; the touch suite
 * measures smaller sizes).
 *
 * Owns a bare monitor (one thread, one userfaultfd) while a case runs and
 * every mapping it makes. The library's monitor lives as long as a region
 * of its context does: an anchor region keeps it (and its CPU affinity,
 * inherited from the thread that registered the anchor) for a whole case.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include <uodp.h>

#include "bench.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define RW (UODP_ACCESS_READ | UODP_ACCESS_WRITE)

/* Set by whoever finishes an invalidation (callback or bare monitor). */
static _Atomic uint64_t done_ns, done_seq;

static void *nfresh(uint64_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static int pin_cpu(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) ? -errno : 0;
}

static void unpin(void)
{
	cpu_set_t set;
	long n = sysconf(_SC_NPROCESSORS_ONLN), i;

	CPU_ZERO(&set);
	for (i = 0; i < n && i < CPU_SETSIZE; i++)
		CPU_SET(i, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

/* ---------------------------------------------------------------------- */
/* The bare monitor                                                       */
/* ---------------------------------------------------------------------- */

struct bare {
	int uffd, stopfd;
	pthread_t thread;
};

static void *bare_main(void *arg)
{
	struct bare *b = arg;
	struct pollfd pfd[2] = { { .fd = b->uffd, .events = POLLIN },
				 { .fd = b->stopfd, .events = POLLIN } };
	struct uffd_msg msg[16];

	for (;;) {
		ssize_t n;

		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		if (pfd[1].revents)
			break;
		n = read(b->uffd, msg, sizeof(msg));
		if (n > 0) {
			atomic_store(&done_ns, bench_now_ns());
			atomic_fetch_add(&done_seq, 1);
		}
	}
	return NULL;
}

static int bare_start(struct bare *b)
{
	struct uffdio_api api = { .api = UFFD_API };

	b->uffd = (int)syscall(SYS_userfaultfd,
			       O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (b->uffd < 0)
		return -errno;
	api.features = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE |
		       UFFD_FEATURE_EVENT_REMAP;
	if (ioctl(b->uffd, UFFDIO_API, &api)) {
		close(b->uffd);
		return -errno;
	}
	b->stopfd = eventfd(0, EFD_CLOEXEC);
	if (b->stopfd < 0 || pthread_create(&b->thread, NULL, bare_main, b)) {
		if (b->stopfd >= 0)
			close(b->stopfd);
		close(b->uffd);
		return -EAGAIN;
	}
	return 0;
}

static void bare_stop(struct bare *b)
{
	uint64_t one = 1;

	if (write(b->stopfd, &one, sizeof(one)) != sizeof(one))
		return;
	pthread_join(b->thread, NULL);
	close(b->stopfd);
	close(b->uffd);
}

static int bare_register(struct bare *b, void *p, uint64_t len)
{
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)p, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};

	return ioctl(b->uffd, UFFDIO_REGISTER, &reg) ? -errno : 0;
}

static void bare_unregister(struct bare *b, void *p, uint64_t len)
{
	struct uffdio_range range = { .start = (uint64_t)(uintptr_t)p,
				      .len = len };

	ioctl(b->uffd, UFFDIO_UNREGISTER, &range);
}

/* ---------------------------------------------------------------------- */
/* uodp                                                                   */
/* ---------------------------------------------------------------------- */

static void n_invalidate(struct uodp_umem *umem, const struct uodp_range *range,
			 void *priv)
{
	(void)umem;
	(void)range;
	(void)priv;
	atomic_store(&done_ns, bench_now_ns());
	atomic_fetch_add(&done_seq, 1);
}

static void n_fence(struct uodp_ctx *ctx, void *priv)
{
	(void)ctx;
	(void)priv;
}

static const struct uodp_ctx_ops n_ops = {
	.invalidate = n_invalidate,
	.fence = n_fence,
	.unfence = n_fence,
};

/* Wait for done_seq to pass @seq (1 s at most); the completion time. */
static uint64_t wait_done(uint64_t seq)
{
	uint64_t t0 = bench_now_ns();

	while (atomic_load(&done_seq) == seq)
		if (bench_now_ns() - t0 > 1000000000ull)
			return 0;
	return atomic_load(&done_ns);
}

enum nvar {
	NV_PLAIN,
	NV_BARE,
	NV_UODP
};

struct ncase {
	uint64_t len;
	bool dontneed; /* madvise(MADV_DONTNEED) instead of munmap */
};

/*
 * One repetition: fresh mapped memory (registered and mapped for uodp,
 * registered for bare), then the timed munmap/madvise. *ret_ns: until the
 * call returned; *done_out: until the invalidation was done (0: none);
 * *gone_out (uodp): until the region's entries were gone.
 */
static int n_once(enum nvar v, const struct ncase *c, struct bare *b,
		  struct uodp_ctx *ctx, uint64_t *ret_ns, uint64_t *done_out,
		  uint64_t *gone_out)
{
	char *p = nfresh(c->len);
	struct uodp_umem *um = NULL;
	uint64_t seq, t0, t1, td;
	int r = 0;

	if (!p)
		return -ENOMEM;
	if (madvise(p, c->len, MADV_POPULATE_WRITE)) {
		r = -errno;
		goto out;
	}
	if (v == NV_BARE)
		r = bare_register(b, p, c->len);
	if (v == NV_UODP) {
		int64_t n = 0;

		r = uodp_umem_get(ctx, p, c->len, RW, &um);
		/* The driver's fault: a region registered while the previous
		 * repetition's invalidation was still ending waits for it
		 * inside map_and_lock. */
		if (!r) {
			n = uodp_umem_map_and_lock(um, p, c->len, RW, 1000);
			if (n > 0)
				uodp_umem_unlock(um);
		}
		if (!r &&
		    n != (int64_t)(c->len / (uint64_t)sysconf(_SC_PAGESIZE)))
			r = n < 0 ? (int)n : -EFAULT;
	}
	if (r)
		goto out;
	seq = atomic_load(&done_seq);
	t0 = bench_now_ns();
	if (c->dontneed)
		madvise(p, c->len, MADV_DONTNEED);
	else
		munmap(p, c->len);
	t1 = bench_now_ns();
	td = v == NV_PLAIN ? t1 : wait_done(seq);
	*ret_ns = t1 - t0;
	*done_out = td > t0 ? td - t0 : 0;
	*gone_out = 0;
	if (um && td) {
		struct uodp_umem_stats st;

		/* The callback has run, so the invalidation has started:
		 * read_begin returns once it has ended, its entries
		 * dropped. */
		int64_t sq = uodp_umem_read_begin(um);

		*gone_out = bench_now_ns() - t0;
		r = sq < 0 ? (int)sq : uodp_umem_stats(um, &st, sizeof(st));
		if (!r && st.mapped_now)
			r = -EBUSY; /* entries left: not an invalidation */
	}
	if (!c->dontneed)
		p = NULL;
	if (v != NV_PLAIN && !td)
		r = -ETIMEDOUT;
out:
	if (um)
		uodp_umem_release(um);
	/* As uodp_umem_release() does for its monitor: unregister before the
	 * untimed munmap, so that neither monitor sees an event outside the
	 * timed call (one event per repetition for both). */
	if (p && v == NV_BARE)
		bare_unregister(b, p, c->len);
	if (p)
		munmap(p, c->len);
	return r;
}

/* Repeat a variant; fills @ret, @done and (if not NULL) @gone (us). */
static int n_series(enum nvar v, const struct ncase *c, struct bare *b,
		    struct uodp_ctx *ctx, unsigned reps, double *ret,
		    double *done, double *gone)
{
	unsigned k;
	int r;

	for (k = 0; k < reps + 2; k++) {
		uint64_t tr = 0, td = 0, tg = 0;

		r = n_once(v, c, b, ctx, &tr, &td, &tg);
		if (r)
			return r;
		if (k >= 2) {
			ret[k - 2] = (double)tr / 1e3;
			done[k - 2] = (double)td / 1e3;
			if (gone)
				gone[k - 2] = (double)tg / 1e3;
		}
	}
	return 0;
}

struct nsetup {
	const char *cpu; /* "same CPU" / "cross CPU" */
	bool cross;
};

/* Measure one case on one CPU placement, emitting rows for relaxed and
 * strict. */
static void n_case(const struct bench_opts *o, const struct ncase *c,
		   const struct nsetup *s)
{
	unsigned reps = c->len >= GiB	  ? (o->quick ? 3 : 7) :
			c->len >= 2 * MiB ? (o->quick ? 50 : 200) :
					    (o->quick ? 200 : 1000);
	double *br = calloc(reps, sizeof(double)),
	       *bd = calloc(reps, sizeof(double));
	double *ur = calloc(reps, sizeof(double)),
	       *ud = calloc(reps, sizeof(double));
	double *pr = calloc(reps, sizeof(double));
	double *ug = calloc(reps, sizeof(double));
	struct bare bare;
	bool bare_on = false;
	char param[32], sz[16];
	int mode, r;

	if (!br || !bd || !ur || !ud || !pr || !ug)
		goto out;
	snprintf(param, sizeof(param), "%s %s",
		 bench_fmt_bytes(c->len, sz, sizeof(sz)),
		 s->cross ? "xCPU" : "1CPU");

	/* Monitors are born on CPU 1 (cross) or 0 (same); the measuring
	 * thread then runs on CPU 0. */
	if (pin_cpu(s->cross ? 1 : 0) || (r = bare_start(&bare))) {
		bench_note("%s %s: bare userfaultfd monitor unavailable",
			   c->dontneed ? "madvise" : "munmap", param);
		unpin();
		goto out;
	}
	bare_on = true;
	pin_cpu(0);
	if (n_series(NV_PLAIN, c, NULL, NULL, reps, pr, bd, NULL) ||
	    n_series(NV_BARE, c, &bare, NULL, reps, br, bd, NULL)) {
		bench_note("bare series failed");
		goto out;
	}
	for (mode = 0; mode < 2; mode++) {
		struct uodp_ctx *ctx = NULL;
		struct uodp_umem *anchor = NULL;
		char *ap = nfresh(4096);
		struct bench_row rr, rd;
		const char *name =
			c->dontneed ?
				(mode ? "madvise strict" : "madvise relaxed") :
				(mode ? "munmap strict" : "munmap relaxed");

		pin_cpu(s->cross ? 1 : 0);
		r = ap ? uodp_ctx_create(&n_ops, mode ? UODP_CTX_STRICT : 0,
					 &ctx) :
			 -ENOMEM;
		if (!r)
			r = uodp_umem_get(ctx, ap, 4096, RW, &anchor);
		pin_cpu(0);
		if (!r)
			r = n_series(NV_UODP, c, NULL, ctx, reps, ur, ud, ug);
		if (r) {
			bench_note("%s %s: n/a (%s)", name, param,
				   uodp_strerror(r));
		} else {
			rr = bench_row("notify", name, (double)c->len, "us");
			snprintf(rr.param, sizeof(rr.param), "%s", param);
			bench_stats(ur, reps, &rr.v);
			bench_stats(br, reps, &rr.b);
			rr.base_name = "bare uffd: call returns";
			rr.rk = BR_TIME;
			rr.tk = BT_RATIO_MIN;
			rr.target = 1 / 1.5;
			rr.note = "until the call returns";
			bench_emit(&rr);
			rd = rr;
			rd.name = mode ? (c->dontneed ? "madvise strict done" :
							"munmap strict done") :
					 (c->dontneed ? "madvise relaxed done" :
							"munmap relaxed done");
			bench_stats(ud, reps, &rd.v);
			bench_stats(bd, reps, &rd.b);
			rd.base_name = "bare uffd: event read";
			rd.note = "until invalidate_range returned";
			bench_emit(&rd);
			rd.name = mode ? (c->dontneed ? "madvise strict gone" :
							"munmap strict gone") :
					 (c->dontneed ? "madvise relaxed gone" :
							"munmap relaxed gone");
			bench_stats(ug, reps, &rd.v);
			bench_stats(pr, reps, &rd.b);
			rd.base_name = "unregistered: call returns";
			rd.tk = BT_NONE;
			rd.note = "until entries gone (read_begin)";
			bench_emit(&rd);
		}
		if (anchor)
			uodp_umem_release(anchor);
		if (ctx)
			uodp_ctx_destroy(ctx);
		if (ap)
			munmap(ap, 4096);
	}
	{
		struct bench_row p = bench_row("notify",
					       c->dontneed ?
						       "madvise unregistered" :
						       "munmap unregistered",
					       (double)c->len, "us");

		snprintf(p.param, sizeof(p.param), "%s", param);
		bench_stats(pr, reps, &p.v);
		p.note = "no userfaultfd: the kernel's own cost";
		bench_emit(&p);
	}
out:
	if (bare_on)
		bare_stop(&bare);
	unpin();
	free(br);
	free(bd);
	free(ur);
	free(ud);
	free(pr);
	free(ug);
}

/* ---------------------------------------------------------------------- */
/* First touch of 1 GiB                                                   */
/* ---------------------------------------------------------------------- */

/* Write one byte per page of @len fresh bytes, registered on @ctx (NULL:
 * unregistered). Returns ms, or -1 on error (*err set). */
static double t_once(struct uodp_ctx *ctx, uint64_t len, int *err)
{
	char *p = nfresh(len);
	struct uodp_umem *um = NULL;
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), off, t0, t;

	*err = p ? 0 : -ENOMEM;
	if (*err)
		return -1;
	if (ctx)
		*err = uodp_umem_get(ctx, p, len, RW, &um);
	if (*err) {
		munmap(p, len);
		return -1;
	}
	t0 = bench_now_ns();
	for (off = 0; off < len; off += pg)
		((volatile char *)p)[off] = 1;
	t = bench_now_ns() - t0;
	if (um)
		uodp_umem_release(um);
	munmap(p, len);
	return (double)t / 1e6;
}

/* Issue 3's figure: 1 GiB, registered with the kernel monitor (write-
 * protect mode, never write-protected) vs unregistered, alternating. */
static void touch_gib(const struct bench_opts *o)
{
	enum {
		REPS = 5
	};
	struct uodp_ctx *ctx = NULL;
	double u[REPS], b[REPS];
	struct bench_row r;
	unsigned k;
	int err;

	(void)o;
	err = uodp_ctx_create(&n_ops, 0, &ctx);
	if (err) {
		bench_note("touch 1 GiB: n/a (%s)", uodp_strerror(err));
		return;
	}
	bench_warmup(GiB);
	t_once(NULL, GiB, &err); /* the VM's first large write is slow */
	for (k = 0; k < REPS && !err; k++) {
		if (k & 1) {
			u[k] = t_once(ctx, GiB, &err);
			b[k] = t_once(NULL, GiB, &err);
		} else {
			b[k] = t_once(NULL, GiB, &err);
			u[k] = t_once(ctx, GiB, &err);
		}
	}
	uodp_ctx_destroy(ctx);
	if (err) {
		bench_note("touch 1 GiB: n/a (%s)", uodp_strerror(err));
		return;
	}
	r = bench_row("notify", "first touch kernel monitor", (double)GiB,
		      "ms");
	bench_fmt_bytes(GiB, r.param, sizeof(r.param));
	bench_stats(u, REPS, &r.v);
	bench_stats(b, REPS, &r.b);
	r.base_name = "unregistered";
	r.rk = BR_TIME;
	r.tk = BT_RATIO_MIN;
	r.target = 0.95;
	r.note = "1 byte per page; order alternates";
	bench_emit(&r);
}

/* ---------------------------------------------------------------------- */
/* The notifier's event rate                                              */
/* ---------------------------------------------------------------------- */

/*
 * Issue 9: how many unmap events per second the process-wide notifier
 * delivers. @npages populated pages in one mapping, unmapped one page at
 * a time as fast as the thread can: watched (a region of a default,
 * relaxed context over all of them, every page mapped: one event and one
 * callback per munmap) against the same loop on unwatched memory. No CPU
 * pinning (the scheduler places the monitor). Samples alternate.
 */
static double rate_once(struct uodp_ctx *ctx, uint64_t npages, int *err)
{
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), len = npages * pg, i;
	uint64_t seq = atomic_load(&done_seq), t0, t;
	char *p = nfresh(len);
	struct uodp_umem *um = NULL;

	*err = 0;
	if (!p || madvise(p, len, MADV_POPULATE_WRITE)) {
		*err = -ENOMEM;
		goto out;
	}
	if (ctx) {
		int64_t n;

		*err = uodp_umem_get(ctx, p, len, RW, &um);
		if (*err)
			goto out;
		n = uodp_umem_map_and_lock(um, p, len, RW, 1000);
		if (n < 0) {
			*err = (int)n;
			goto out;
		}
		uodp_umem_unlock(um);
	}
	t0 = bench_now_ns();
	for (i = 0; i < npages; i++)
		munmap(p + i * pg, pg);
	t = bench_now_ns() - t0;
	p = NULL;
	/* every munmap returned after its event was read; the callbacks of
	 * the last ones may still run */
	if (ctx)
		while (atomic_load(&done_seq) - seq < npages &&
		       bench_now_ns() - t0 < 2000000000ull)
			sched_yield();
	if (ctx && atomic_load(&done_seq) - seq < npages)
		*err = -ETIMEDOUT;
	if (um)
		uodp_umem_release(um);
	return (double)npages / ((double)t / 1e9);
out:
	if (um)
		uodp_umem_release(um);
	if (p)
		munmap(p, len);
	return 0;
}

static void event_rate(const struct bench_opts *o)
{
	uint64_t npages = o->quick ? 2048 : 16384;
	unsigned reps = o->quick ? 3 : 9, k;
	double w[16], u[16];
	struct uodp_ctx *ctx = NULL;
	struct bench_row r;
	int err;

	err = uodp_ctx_create(&n_ops, 0, &ctx);
	if (err) {
		bench_note("event rate: n/a (%s)", uodp_strerror(err));
		return;
	}
	rate_once(ctx, 256, &err); /* warm-up (starts the notifier) */
	for (k = 0; k < reps && !err; k++) {
		if (k & 1) {
			w[k] = rate_once(ctx, npages, &err);
			u[k] = rate_once(NULL, npages, &err);
		} else {
			u[k] = rate_once(NULL, npages, &err);
			w[k] = rate_once(ctx, npages, &err);
		}
	}
	uodp_ctx_destroy(ctx);
	if (err) {
		bench_note("event rate: n/a (%s)", uodp_strerror(err));
		return;
	}
	r = bench_row("notify", "event rate munmap 4 KiB", (double)npages,
		      "events/s");
	snprintf(r.param, sizeof(r.param), "%llu pages",
		 (unsigned long long)npages);
	bench_stats(w, reps, &r.v);
	bench_stats(u, reps, &r.b);
	r.base_name = "unwatched munmap/s";
	r.rk = BR_RATE;
	r.note = "one event + callback per munmap; threads not pinned";
	bench_emit(&r);
}

static void suite_notify(const struct bench_opts *o)
{
	static const struct ncase cases[] = {
		{ 4096, false }, { 2 * MiB, false }, { 1 * GiB, false },
		{ 4096, true },	 { 2 * MiB, true },
	};
	static const struct nsetup setups[] = { { "same CPU", false },
						{ "cross CPU", true } };
	size_t i, j;
	int r = bench_monitor_probe();

	if (r) {
		bench_note("notify: %s", bench_monitor_why(r));
		return;
	}
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		bench_note("one CPU: cross-CPU rows are same-CPU");
	bench_warmup(256 * MiB);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		for (j = 0; j < sizeof(setups) / sizeof(setups[0]); j++) {
			if (o->quick && cases[i].len >= GiB)
				continue;
			n_case(o, &cases[i], &setups[j]);
		}
	event_rate(o);
	if (!o->quick)
		touch_gib(o);
}

const struct bench_suite bench_notify_suites[] = {
	{ "notify",
	  "invalidation latency through the kernel monitor vs bare userfaultfd",
	  suite_notify },
	{ NULL, NULL, NULL },
};

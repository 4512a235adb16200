/* SPDX-License-Identifier: MIT */
/*
 * demo.c - `uodp demo`: a short narrated scenario of the software device
 * on real memory. It registers a region, lets the device fault pages in by
 * reading and writing, changes the address space underneath (madvise,
 * munmap, mprotect, mremap), shows the device page table and the error
 * completions as they happen, runs an atomic and a few queued requests,
 * and prints the counters. Every step states what must happen and checks
 * it; the exit status is 0 only if all of them behaved as stated.
 *
 * Address-space changes reach the device through notify(): by default the
 * kernel monitor (userfaultfd) delivers munmap/madvise/mremap and notify()
 * only waits for the invalidation to land; with --manual (or where
 * userfaultfd is unavailable) the demo uses a manual context and calls
 * uodp_invalidate_range() itself, as the monitor would. mprotect() sends no
 * kernel event, so it is always reported explicitly.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "uodp.h"
#include "uodp_dev.h"

/* Kernel monitor by default; --manual switches it off. */
#define DEMO_USE_MONITOR true

#define NPAGES 16

struct demo {
	struct uodp_dev *dev;
	bool quiet, monitor;
	size_t ps;
	char *base;
	uint32_t key;
	int steps, failed;
	struct uodp_dev_stats last;
};

static uint64_t va(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static void say(struct demo *d, const char *fmt, ...)
{
	va_list ap;

	if (d->quiet)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

/* A claim of the scenario: printed, counted, remembered if false. */
static void check(struct demo *d, bool ok, const char *fmt, ...)
{
	va_list ap;

	d->steps++;
	if (!ok)
		d->failed++;
	if (d->quiet && ok)
		return;
	printf("    %s ", ok ? "[ok]  " : "[FAIL]");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static struct uodp_dev_stats stats(struct demo *d)
{
	struct uodp_dev_stats s;

	uodp_dev_stats(d->dev, &s);
	return s;
}

/* The device page table of the region, one character a page. */
static void show_table(struct demo *d, const char *when)
{
	static const char sym[] = { '.', 'r', 'w' };
	uint8_t st[NPAGES];
	char line[NPAGES + 1];
	int64_t n, i;

	n = uodp_dev_snapshot(d->dev, d->key, va(d->base), NPAGES * d->ps, st);
	for (i = 0; i < NPAGES; i++)
		line[i] = i < n ? sym[st[i] % 3] : '?';
	line[NPAGES] = 0;
	say(d,
	    "      device page table %-22s [%s]  (. none, r read, w write)\n",
	    when, line);
}

/* Changes since the last call, as a short line. */
static void show_delta(struct demo *d)
{
	struct uodp_dev_stats s = stats(d);

	say(d,
	    "      counters: +%llu fault(s), +%llu page(s) faulted, "
	    "+%llu invalidation(s), +%llu entr%s cleared\n",
	    (unsigned long long)(s.page_faults - d->last.page_faults),
	    (unsigned long long)(s.pages_faulted - d->last.pages_faulted),
	    (unsigned long long)(s.invalidations - d->last.invalidations),
	    (unsigned long long)(s.pages_invalidated -
				 d->last.pages_invalidated),
	    s.pages_invalidated - d->last.pages_invalidated == 1 ? "y" : "ies");
	d->last = s;
}

static bool pattern_ok(const char *p, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != (char)(i * 13 + seed))
			return false;
	return true;
}

static void pattern(char *p, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (char)(i * 13 + seed);
}

/*
 * The application changed [p, p + len): make sure the device hears of it.
 * Manual: tell it ourselves. Monitor: the kernel told the monitor; wait
 * (up to 2 s) until the invalidation has been applied. @kernel_event is
 * false for changes the kernel does not report (mprotect).
 */
static void notify(struct demo *d, void *p, size_t len, bool kernel_event,
		   enum uodp_event ev)
{
	uint64_t before = d->last.invalidations;
	struct timespec ts = { 0, 1000000 };
	int i, r;

	if (!d->monitor || !kernel_event) {
		r = uodp_invalidate_range(uodp_dev_ctx(d->dev), p, len, ev);
		say(d, "      (uodp_invalidate_range(%p, +%zu KiB) -> %d)\n", p,
		    len / 1024, r);
		return;
	}
	for (i = 0; i < 2000 && stats(d).invalidations == before; i++)
		nanosleep(&ts, NULL);
	say(d, "      (the kernel monitor delivered the invalidation)\n");
}

static void step(struct demo *d, const char *fmt, ...)
{
	va_list ap;

	if (d->quiet)
		return;
	printf("\n");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static void scene_fault_in(struct demo *d)
{
	char buf[4 * 4096 * 4];
	size_t n = 4 * d->ps;
	struct uodp_dev_stats s;
	int r;

	if (n > sizeof(buf))
		n = sizeof(buf);
	step(d, "2. The device reads pages 0-3: a page-table miss is a page "
		"fault, resolved through the engine with a fault-around "
		"window.");
	r = uodp_dev_read(d->dev, d->key, va(d->base), buf, n);
	s = stats(d);
	check(d, r == 0 && pattern_ok(buf, n, 1),
	      "read completed (status %d) with the bytes the CPU wrote", r);
	check(d, s.page_faults - d->last.page_faults == 1,
	      "exactly one device page fault (%llu)",
	      (unsigned long long)(s.page_faults - d->last.page_faults));
	show_delta(d);
	show_table(d, "after the read");

	step(d, "3. The device reads them again: the translations are there, "
		"no new fault.");
	r = uodp_dev_read(d->dev, d->key, va(d->base) + 100, buf, n - 200);
	s = stats(d);
	check(d, r == 0 && s.page_faults == d->last.page_faults,
	      "read completed (status %d) without a fault", r);
	show_delta(d);

	step(d, "4. The device writes a message into page 5; the CPU sees it.");
	r = uodp_dev_write(d->dev, d->key, va(d->base) + 5 * d->ps,
			   "hello from the device", 22);
	check(d,
	      r == 0 && !strcmp(d->base + 5 * d->ps, "hello from the device"),
	      "write completed (status %d); the CPU reads \"%s\"", r,
	      d->base + 5 * d->ps);
	show_delta(d);
	show_table(d, "after the write");
}

static void scene_dontneed(struct demo *d)
{
	uint8_t st[2];
	char buf[64];
	int r;

	step(d, "5. The application drops pages 0-1 with "
		"madvise(MADV_DONTNEED).");
	r = madvise(d->base, 2 * d->ps, MADV_DONTNEED);
	notify(d, d->base, 2 * d->ps, true, UODP_EVENT_REMOVE);
	uodp_dev_snapshot(d->dev, d->key, va(d->base), 2 * d->ps, st);
	check(d,
	      r == 0 && st[0] == UODP_DEV_PAGE_NONE &&
		      st[1] == UODP_DEV_PAGE_NONE,
	      "the invalidation cleared the device's entries of pages 0-1");
	show_delta(d);
	memset(buf, 0x55, sizeof(buf));
	r = uodp_dev_read(d->dev, d->key, va(d->base), buf, sizeof(buf));
	check(d, r == 0 && buf[0] == 0 && buf[63] == 0,
	      "the device reads zeros there now (status %d), after a new "
	      "fault (+%llu)",
	      r,
	      (unsigned long long)(stats(d).page_faults - d->last.page_faults));
	show_delta(d);
	show_table(d, "after the re-fault");
}

static void scene_munmap(struct demo *d)
{
	char buf[64];
	int r;
	bool untouched = true;

	step(d, "6. The application unmaps pages 8-11 with munmap().");
	r = munmap(d->base + 8 * d->ps, 4 * d->ps);
	notify(d, d->base + 8 * d->ps, 4 * d->ps, true, UODP_EVENT_UNMAP);
	show_delta(d);
	show_table(d, "after the munmap");
	memset(buf, 0x55, sizeof(buf));
	r = r ? r :
		uodp_dev_read(d->dev, d->key, va(d->base) + 9 * d->ps, buf,
			      sizeof(buf));
	for (size_t i = 0; i < sizeof(buf); i++)
		untouched &= buf[i] == 0x55;
	check(d, r == -EFAULT && untouched,
	      "a device read of page 9 completes with -EFAULT (%d: %s), "
	      "buffer untouched, process alive",
	      r, strerror(-r));
}

static void scene_mprotect(struct demo *d)
{
	char buf[64];
	int r, w;

	step(d, "7. The application makes page 12 read-only with mprotect() "
		"(no kernel event: reported explicitly).");
	r = mprotect(d->base + 12 * d->ps, d->ps, PROT_READ);
	notify(d, d->base + 12 * d->ps, d->ps, false, UODP_EVENT_MANUAL);
	w = r ? r :
		uodp_dev_write(d->dev, d->key, va(d->base) + 12 * d->ps, "x",
			       1);
	check(d, w == -EACCES,
	      "a device write to page 12 completes with -EACCES (%d: %s)", w,
	      strerror(-w));
	r = uodp_dev_read(d->dev, d->key, va(d->base) + 12 * d->ps, buf,
			  sizeof(buf));
	check(d,
	      r == 0 && pattern_ok(buf, sizeof(buf),
				   (unsigned)(1 + 12 * 13 * d->ps)),
	      "a device read of page 12 still works (status %d)", r);
	show_delta(d);
	show_table(d, "after the mprotect");
}

static void scene_mremap(struct demo *d)
{
	char buf[64], *moved;
	uint32_t key2;
	int r;

	step(d, "8. The application moves pages 13-15 elsewhere with "
		"mremap().");
	/* a destination of our own, so the move cannot clobber anything */
	moved = mmap(NULL, 3 * d->ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
		     -1, 0);
	if (moved != MAP_FAILED) {
		void *dst = moved;

		moved = mremap(d->base + 13 * d->ps, 3 * d->ps, 3 * d->ps,
			       MREMAP_MAYMOVE | MREMAP_FIXED, dst);
		if (moved == MAP_FAILED) {
			/* A hooked mremap() may drop MREMAP_FIXED's new
			 * address (UCM 1.13's hook does: it ran here while
			 * the tool linked libucs, see bench/suite_index.c):
			 * let the kernel choose the destination instead. */
			munmap(dst, 3 * d->ps);
			moved = mremap(d->base + 13 * d->ps, 3 * d->ps,
				       4 * d->ps, MREMAP_MAYMOVE);
		}
	}
	check(d, moved != MAP_FAILED, "mremap moved them to %p", moved);
	if (moved == MAP_FAILED)
		return;
	notify(d, d->base + 13 * d->ps, 3 * d->ps, true, UODP_EVENT_REMAP);
	show_delta(d);
	show_table(d, "after the mremap");
	r = uodp_dev_read(d->dev, d->key, va(d->base) + 14 * d->ps, buf,
			  sizeof(buf));
	check(d, r == -EFAULT,
	      "a device read of old page 14 completes with -EFAULT (%d)", r);
	r = uodp_dev_reg_mr(d->dev, va(moved), 3 * d->ps, UODP_DEV_ACCESS_READ,
			    &key2);
	if (!r)
		r = uodp_dev_read(d->dev, key2, va(moved) + d->ps, buf,
				  sizeof(buf));
	check(d,
	      r == 0 && pattern_ok(buf, sizeof(buf),
				   (unsigned)(1 + 14 * 13 * d->ps)),
	      "registered at the new address (key 0x%x), the device reads "
	      "page 14's bytes there",
	      key2);
	uodp_dev_dereg_mr(d->dev, key2);
	munmap(moved, 3 * d->ps);
}

static void scene_atomic(struct demo *d)
{
	uint64_t *ctr = (uint64_t *)(d->base + 4 * d->ps), old = 0;
	int r;

	step(d, "9. The CPU and the device add to the same 8-byte counter.");
	*ctr = 40;
	__atomic_fetch_add(ctr, 1, __ATOMIC_SEQ_CST);
	r = uodp_dev_fetch_add(d->dev, d->key, va(ctr), 1, &old);
	check(d, r == 0 && old == 41 && *ctr == 42,
	      "device fetch-add saw %llu, the CPU now reads %llu",
	      (unsigned long long)old, (unsigned long long)*ctr);
	r = uodp_dev_cmp_swap(d->dev, d->key, va(ctr), 42, 7, &old);
	check(d, r == 0 && old == 42 && *ctr == 7,
	      "device compare-swap 42 -> 7 succeeded (CPU reads %llu)",
	      (unsigned long long)*ctr);
}

static void scene_queue(struct demo *d)
{
	struct uodp_dev_queue *q = NULL;
	struct uodp_dev_wc wc[3];
	char b1[32], b2[32];
	int r, n = 0, i, st[4] = { 1, 1, 1, 1 };
	unsigned char vec;
	bool hole;
	struct uodp_dev_wr wr[3] = {
		{ .wr_id = 1,
		  .opcode = UODP_DEV_OP_READ,
		  .key = d->key,
		  .va = va(d->base) + 2 * d->ps,
		  .len = sizeof(b1),
		  .buf = b1 },
		{ .wr_id = 2,
		  .opcode = UODP_DEV_OP_READ,
		  .key = d->key,
		  .va = va(d->base) + 10 * d->ps,
		  .len = sizeof(b2),
		  .buf = b2 },
		{ .wr_id = 3,
		  .opcode = UODP_DEV_OP_WRITE,
		  .key = d->key,
		  .va = va(d->base) + 6 * d->ps,
		  .len = 6,
		  .buf = (char *)"queued" },
	};

	step(d, "10. Three requests go through the asynchronous queue; one "
		"targets unmapped page 10.");
	r = uodp_dev_queue_create(d->dev, 8, &q);
	for (i = 0; !r && i < 3; i++)
		r = uodp_dev_post(q, &wr[i]);
	while (!r && n < 3) {
		int got = uodp_dev_poll_wait(q, wc + n, 3 - n, 2000);

		if (got <= 0)
			break;
		n += got;
	}
	for (i = 0; i < n; i++) {
		st[wc[i].wr_id] = wc[i].status;
		say(d, "      completion wr_id %llu (%s): status %d%s%s\n",
		    (unsigned long long)wc[i].wr_id,
		    uodp_dev_opcode_name(wc[i].opcode), wc[i].status,
		    wc[i].status ? " " : "",
		    wc[i].status ? strerror(-wc[i].status) : "");
	}
	/* Page 10 is a hole since step 6, unless something else in the
	 * process mapped it since (a sanitizer's allocator does: the
	 * device then rightly reports what it found there). */
	hole = mincore(d->base + 10 * d->ps, d->ps, &vec) && errno == ENOMEM;
	if (!hole)
		say(d, "      (page 10 was mapped again by another part of "
		       "the process: its result is that mapping's)\n");
	check(d,
	      !r && n == 3 && st[1] == 0 && st[3] == 0 &&
		      (hole ? st[2] == -EFAULT :
			      (st[2] == 0 || st[2] == -EFAULT ||
			       st[2] == -EACCES)),
	      "two succeeded, the one on unmapped memory completed -EFAULT");
	check(d, !memcmp(d->base + 6 * d->ps, "queued", 6),
	      "the queued write is visible to the CPU");
	if (q)
		uodp_dev_queue_destroy(q);
}

static void show_counters(struct demo *d)
{
	struct uodp_dev_stats s = stats(d);

	if (d->quiet)
		return;
	printf("\n11. Device counters at the end:\n");
	printf("      operations %llu (reads %llu, writes %llu, atomics %llu, "
	       "async %llu)\n",
	       (unsigned long long)s.ops, (unsigned long long)s.reads,
	       (unsigned long long)s.writes, (unsigned long long)s.atomics,
	       (unsigned long long)s.async_completed);
	printf("      bytes read %llu, written %llu\n",
	       (unsigned long long)s.bytes_read,
	       (unsigned long long)s.bytes_written);
	printf("      page faults %llu (%llu pages), retries %llu\n",
	       (unsigned long long)s.page_faults,
	       (unsigned long long)s.pages_faulted,
	       (unsigned long long)s.fault_retries);
	printf("      invalidations %llu (%llu entries cleared)\n",
	       (unsigned long long)s.invalidations,
	       (unsigned long long)s.pages_invalidated);
	printf("      errors: -EFAULT %llu, -EACCES %llu, -EPERM %llu, "
	       "-ERANGE %llu, other %llu\n",
	       (unsigned long long)s.err_fault,
	       (unsigned long long)s.err_access, (unsigned long long)s.err_perm,
	       (unsigned long long)s.err_range,
	       (unsigned long long)s.err_other);
}

void cmd_demo_usage(FILE *out)
{
	fprintf(out,
		"usage: uodp demo [--quiet] [--manual | --monitor] [--fast-copy]\n"
		"\n"
		"Run a short narrated scenario of the software device on real\n"
		"memory: faults, invalidations after munmap / madvise /\n"
		"mprotect / mremap, error completions, atomics, the queue,\n"
		"counters. Exits 0 only if every step behaved as stated.\n"
		"\n"
		"  -q, --quiet      print only failed steps and the verdict\n"
		"  -m, --monitor    the kernel monitor (userfaultfd) delivers\n"
		"                   invalidations (the default; falls back to\n"
		"                   --manual where userfaultfd is unavailable)\n"
		"  -M, --manual     explicit uodp_invalidate_range() calls\n"
		"                   instead of the kernel monitor\n"
		"  -f, --fast-copy  guarded memcpy data path instead of\n"
		"                   process_vm_readv/writev\n"
		"  -h, --help       this text\n");
}

static int parse(struct demo *d, unsigned *flags, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "quiet", no_argument, NULL, 'q' },
		{ "monitor", no_argument, NULL, 'm' },
		{ "manual", no_argument, NULL, 'M' },
		{ "fast-copy", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "qmMfh", opts, NULL)) != -1) {
		switch (c) {
		case 'q':
			d->quiet = true;
			break;
		case 'm':
			d->monitor = true;
			break;
		case 'M':
			d->monitor = false;
			break;
		case 'f':
			*flags |= UODP_DEV_FAST_COPY;
			break;
		case 'h':
			cmd_demo_usage(stdout);
			return 0;
		default:
			cmd_demo_usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "uodp demo: unexpected argument '%s'\n",
			argv[optind]);
		return 2;
	}
	return -1;
}

int cmd_demo(int argc, char **argv)
{
	struct demo d = { .monitor = DEMO_USE_MONITOR };
	struct uodp_dev_attr attr = { 0 };
	int r;

	r = parse(&d, &attr.flags, argc, argv);
	if (r >= 0)
		return r;
	d.ps = (size_t)sysconf(_SC_PAGESIZE);
	if (d.monitor) {
		r = uodp_monitor_probe();
		if (r) {
			/* Said even with --quiet: the run is not the one
			 * asked for, and the reason must be visible. */
			fprintf(stderr,
				"uodp demo: the kernel monitor is unavailable "
				"here (%d: %s);\n"
				"uodp demo: falling back to a manual context "
				"with explicit uodp_invalidate_range() calls\n",
				r,
				r == -ENOSYS ?
					"no userfaultfd notifier in this "
					"build or kernel" :
					uodp_strerror(r));
			d.monitor = false;
		}
	}
	attr.flags |= d.monitor ? UODP_DEV_STRICT : UODP_DEV_MANUAL;

	say(&d,
	    "uodp demo: a software DMA device using memory only through "
	    "the on-demand paging engine (%s, %s).\n",
	    d.monitor ? "kernel monitor" : "explicit invalidations",
	    (attr.flags & UODP_DEV_FAST_COPY) ? "guarded memcpy" :
						"process_vm_readv/writev");
	r = uodp_dev_open(&attr, &d.dev);
	if (r) {
		fprintf(stderr, "uodp demo: cannot open the device: %s\n",
			uodp_strerror(r));
		return 1;
	}
	step(&d,
	     "1. The application maps %d pages and fills them; the device "
	     "registers them (O(1): nothing is mapped yet).",
	     NPAGES);
	d.base = mmap(NULL, NPAGES * d.ps, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (d.base == MAP_FAILED) {
		perror("uodp demo: mmap");
		uodp_dev_close(d.dev);
		return 1;
	}
	pattern(d.base, NPAGES * d.ps, 1);
	r = uodp_dev_reg_mr(d.dev, va(d.base), NPAGES * d.ps,
			    UODP_DEV_ACCESS_ALL, &d.key);
	check(&d, r == 0,
	      "registered %p (+%zu KiB) as key 0x%x (status %d%s%s)", d.base,
	      NPAGES * d.ps / 1024, d.key, r, r ? ": " : "",
	      r ? uodp_strerror(r) : "");
	if (r) {
		uodp_dev_close(d.dev);
		munmap(d.base, NPAGES * d.ps);
		return 1;
	}
	show_table(&d, "at registration");

	scene_fault_in(&d);
	scene_dontneed(&d);
	scene_munmap(&d);
	scene_mprotect(&d);
	scene_mremap(&d);
	scene_atomic(&d);
	scene_queue(&d);
	show_counters(&d);

	uodp_dev_close(d.dev);
	munmap(d.base, 8 * d.ps);
	munmap(d.base + 12 * d.ps, d.ps);
	if (d.failed) {
		printf("\nuodp demo: %d of %d steps did NOT behave as stated\n",
		       d.failed, d.steps);
		return 1;
	}
	printf("%suodp demo: all %d steps behaved as stated\n",
	       d.quiet ? "" : "\n", d.steps);
	return 0;
}

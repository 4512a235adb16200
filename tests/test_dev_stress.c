/* SPDX-License-Identifier: MIT */
/*
 * test_dev_stress.c - a bounded stress test of the device: threads issue
 * device reads, writes, atomics and queued requests on a region while
 * other threads munmap / mmap / madvise / mremap / mprotect its pages, and
 * an oracle checks:
 *  - no crash (the process survives);
 *  - no operation returns data that was never at that address: every
 *    8-byte word of the region only ever holds 0 or a tag naming its own
 *    address and a generation (tag = va << 16 | gen); a read must return
 *    such words, with gen no newer than the last one published for the
 *    slot; device writes store generation 0 tags, atomics add 0;
 *  - errors are only -EFAULT or -EACCES;
 *  - once an invalidation of an unmapped slot finishes, the device page
 *    table holds no entry in it (manual phase: checked right after the
 *    explicit invalidation; strict monitor phase: right after the
 *    mapping call returned; while the slot is still unmapped, so that no
 *    fault can legitimately refill it).
 * Content only changes by whole-page replacement (mremap of a prefilled
 * staging area over the slot) or zeroing (MADV_DONTNEED), never by CPU
 * stores into pages the device may be reading, so words cannot tear.
 * A slot is "unmapped" by replacing its pages at once with an
 * inaccessible reservation (mmap MAP_FIXED, PROT_NONE), never by munmap():
 * a real hole could be filled by another thread's mmap(NULL) (the
 * library's device page-table directory, a sanitizer's or allocator's
 * memory), which the mremap that brings the slot back would then destroy
 * and device writes would scribble on (seen: a clobbered directory under
 * ASan, a crash inside TSan's symbolizer). For the device and the kernel
 * monitor it is the same event as an munmap (the old pages go away, an
 * UNMAP is delivered); accesses fail with -EACCES instead of -EFAULT
 * (test_dev.c covers true holes deterministically). Readers still skip the
 * check when the slot's state changed during their read (seqlock-style
 * counter).
 *
 * Duration: UODP_STRESS_SECONDS (default 30), split between phases: a
 * manual context with explicit invalidations (process_vm data path), the
 * same with the guarded-memcpy data path (UODP_DEV_FAST_COPY), and the
 * kernel monitor with strict ordering, a test of its own that skips where
 * the monitor is unavailable. Operations go through an explicit key and
 * the implicit key at random, in every phase.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h" /* t_skip, t_run */
#include "uodp_dev.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4 /* Linux 5.7 */
#endif

#define NSLOTS 16
#define SLOT_PAGES 4
#define NMUT 2
#define NREAD 2

static size_t PS;

struct slot {
	atomic_ulong gen;   /* newest generation published */
	atomic_ulong state; /* odd while unmapped */
};

struct run {
	struct uodp_dev *dev;
	bool manual;
	char *r; /* the region: NSLOTS * SLOT_PAGES pages */
	size_t slot_len;
	uint32_t key, ikey; /* explicit and implicit keys */
	struct slot slots[NSLOTS];
	atomic_bool stop;
	pthread_barrier_t bar;

	atomic_ulong reads, writes, atomics, queued, mutations, errors;
	atomic_ulong violations, bad_errors, stale_entries, skipped, torn;
};

static uint64_t tag(uint64_t va, uint64_t gen)
{
	return va << 16 | (gen & 0xffff);
}

static unsigned rnd(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return (*s >> 8) & 0xffffff;
}

static void note_violation(struct run *rn, const char *what, uint64_t va,
			   uint64_t w)
{
	if (atomic_fetch_add(&rn->violations, 1) < 5)
		fprintf(stderr, "VIOLATION %s at %#llx: word %#llx\n", what,
			(unsigned long long)va, (unsigned long long)w);
}

/*
 * A word read at @va is valid if it is 0, a tag of @va with a published
 * generation, or a mix of such words' bytes (a device write racing a read
 * can tear words: concurrent kernel copies give no 8-byte atomicity). The
 * address bytes of any tag for another address fail the check.
 */
static bool word_ok(struct run *rn, uint64_t va, uint64_t w, uint64_t gmax)
{
	uint64_t t = tag(va, 0);

	if (!w || ((w >> 16) == va && (w & 0xffff) <= gmax))
		return true;
	for (int b = 2; b < 8; b++) {
		uint8_t x = (uint8_t)(w >> (8 * b));

		if (x && x != (uint8_t)(t >> (8 * b)))
			return false;
	}
	atomic_fetch_add(&rn->torn, 1);
	return true;
}

static int slot_of(struct run *rn, uint64_t va)
{
	return (int)((va - (uint64_t)(uintptr_t)rn->r) / rn->slot_len);
}

/* Check @len bytes read from @va; @st0 the slot state before the read. */
static void check_data(struct run *rn, uint64_t va, const uint64_t *d,
		       size_t len, unsigned long st0)
{
	int s = slot_of(rn, va);
	unsigned long st1 = atomic_load(&rn->slots[s].state);
	uint64_t gmax = atomic_load(&rn->slots[s].gen);
	size_t i;

	if ((st0 & 1) || st0 != st1) {
		atomic_fetch_add(&rn->skipped, 1);
		return; /* a hole may have held a foreign mapping */
	}
	for (i = 0; i < len / 8; i++)
		if (!word_ok(rn, va + 8 * i, d[i], gmax))
			note_violation(rn, "read", va + 8 * i, d[i]);
}

static void count_error(struct run *rn, int e)
{
	if (!e)
		return;
	atomic_fetch_add(&rn->errors, 1);
	if (e != -EFAULT && e != -EACCES) {
		if (atomic_fetch_add(&rn->bad_errors, 1) < 5)
			fprintf(stderr, "unexpected error %d\n", e);
	}
}

static uint64_t pick_va(struct run *rn, unsigned *seed, size_t align)
{
	size_t off = rnd(seed) % (NSLOTS * rn->slot_len);

	return (uint64_t)(uintptr_t)rn->r + (off & ~(align - 1));
}

static void *reader(void *arg)
{
	struct run *rn = arg;
	unsigned seed = (unsigned)(uintptr_t)&seed;
	uint64_t *buf = malloc(2 * PS);
	uint64_t va;
	size_t len;
	unsigned long st0;
	uint32_t key;
	int e;

	pthread_barrier_wait(&rn->bar);
	while (!atomic_load(&rn->stop)) {
		va = pick_va(rn, &seed, 8);
		len = 8 + 8 * (rnd(&seed) % (PS / 8));
		if (va + len >
		    (uint64_t)(uintptr_t)rn->r + NSLOTS * rn->slot_len)
			len = (uint64_t)(uintptr_t)rn->r +
			      NSLOTS * rn->slot_len - va;
		/* stay in one slot so one state covers the read */
		if (slot_of(rn, va) != slot_of(rn, va + len - 1))
			len = ((uint64_t)slot_of(rn, va) + 1) * rn->slot_len +
			      (uint64_t)(uintptr_t)rn->r - va;
		key = rnd(&seed) & 1 ? rn->key : rn->ikey;
		st0 = atomic_load(&rn->slots[slot_of(rn, va)].state);
		e = uodp_dev_read(rn->dev, key, va, buf, len);
		atomic_fetch_add(&rn->reads, 1);
		count_error(rn, e);
		if (!e)
			check_data(rn, va, buf, len, st0);
	}
	free(buf);
	return NULL;
}

static void *writer_atomics(void *arg)
{
	struct run *rn = arg;
	unsigned seed = (unsigned)(uintptr_t)&seed ^ 0x9e3779b9u;
	uint64_t words[16], va, old;
	unsigned long st0;
	int e, i;

	pthread_barrier_wait(&rn->bar);
	while (!atomic_load(&rn->stop)) {
		va = pick_va(rn, &seed, 128);
		for (i = 0; i < 16; i++)
			words[i] = tag(va + 8 * i, 0);
		e = uodp_dev_write(rn->dev, rn->key, va, words, sizeof(words));
		atomic_fetch_add(&rn->writes, 1);
		count_error(rn, e);

		va = pick_va(rn, &seed, 8);
		st0 = atomic_load(&rn->slots[slot_of(rn, va)].state);
		if (rnd(&seed) & 1)
			e = uodp_dev_fetch_add(rn->dev, rn->ikey, va, 0, &old);
		else
			e = uodp_dev_cmp_swap(rn->dev, rn->key, va, 0, 0, &old);
		atomic_fetch_add(&rn->atomics, 1);
		count_error(rn, e);
		if (!e)
			check_data(rn, va, &old, 8, st0);
	}
	return NULL;
}

static void *queued(void *arg)
{
	struct run *rn = arg;
	unsigned seed = (unsigned)(uintptr_t)&seed ^ 0x1234567u;
	struct uodp_dev_queue *q;
	struct uodp_dev_wc wc[8];
	uint64_t bufs[8][64];
	unsigned long st[8];
	struct uodp_dev_wr wr = { .opcode = UODP_DEV_OP_READ, .len = 512 };
	uint64_t vas[8];
	int i, n;

	if (uodp_dev_queue_create(rn->dev, 8, &q)) {
		atomic_fetch_add(&rn->bad_errors, 1);
		pthread_barrier_wait(&rn->bar);
		return NULL;
	}
	pthread_barrier_wait(&rn->bar);
	while (!atomic_load(&rn->stop)) {
		for (i = 0; i < 8; i++) {
			wr.wr_id = (uint64_t)i;
			wr.key = rnd(&seed) & 1 ? rn->key : rn->ikey;
			wr.va = pick_va(rn, &seed, 512);
			wr.buf = bufs[i];
			st[i] = atomic_load(
				&rn->slots[slot_of(rn, wr.va)].state);
			vas[i] = wr.va;
			if (uodp_dev_post(q, &wr))
				atomic_fetch_add(&rn->bad_errors, 1);
		}
		for (n = 0; n < 8;) {
			int got = uodp_dev_poll_wait(q, wc + n, 8 - n, 10000);

			if (got <= 0) {
				atomic_fetch_add(&rn->bad_errors, 1);
				break;
			}
			n += got;
		}
		for (i = 0; i < n; i++) {
			uint64_t id = wc[i].wr_id;

			atomic_fetch_add(&rn->queued, 1);
			count_error(rn, wc[i].status);
			if (!wc[i].status)
				check_data(rn, vas[id], bufs[id], 512, st[id]);
		}
		if (n < 8)
			break;
	}
	uodp_dev_queue_destroy(q);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Mutators                                                                  */
/* ------------------------------------------------------------------------ */

struct mut {
	struct run *rn;
	int id;
	char *staging;
};

static void tell(struct run *rn, void *p, size_t len)
{
	if (rn->manual)
		uodp_invalidate_range(uodp_dev_ctx(rn->dev), p, len,
				      UODP_EVENT_MANUAL);
}

/*
 * The staging area, prefilled with generation @g tags for @target. It is
 * mapped once per mutator, outside the region, and moved with
 * MREMAP_DONTUNMAP, which leaves it mapped (empty) behind: the test never
 * maps anything with mmap(NULL) while it runs, so nothing of ours can land
 * in a slot's hole, and a refill never writes into memory readers see.
 */
static void stage(struct mut *m, char *target, uint64_t g)
{
	size_t len = m->rn->slot_len, i;

	for (i = 0; i < len; i += 8)
		*(uint64_t *)(m->staging + i) =
			tag((uint64_t)(uintptr_t)target + i, g);
}

/* Replace the slot's pages with a new generation (mremap over them). */
static void replace(struct mut *m, int s)
{
	struct run *rn = m->rn;
	char *target = rn->r + (size_t)s * rn->slot_len;
	uint64_t g = atomic_load(&rn->slots[s].gen) + 1;

	if (g > 0xffff)
		g = 0xffff; /* tags keep 16 bits; stays valid */
	stage(m, target, g);
	atomic_store(&rn->slots[s].gen, g); /* before it can be seen */
	if (mremap(m->staging, rn->slot_len, rn->slot_len,
		   MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
		   target) == MAP_FAILED) {
		if (atomic_fetch_add(&rn->bad_errors, 1) < 5)
			perror("mremap");
		return;
	}
	tell(rn, target, rn->slot_len);
}

static void unmap_and_back(struct mut *m, int s)
{
	struct run *rn = m->rn;
	char *target = rn->r + (size_t)s * rn->slot_len;
	uint8_t st[SLOT_PAGES];
	int64_t n;
	int i;

	atomic_fetch_add(&rn->slots[s].state, 1); /* odd: a hole */
	/* The old pages go away in one step (see the top: no real hole). */
	if (mmap(target, rn->slot_len, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
		 0) == MAP_FAILED)
		atomic_fetch_add(&rn->bad_errors, 1);
	/* No translation of the old pages is left through either key: on a
	 * manual context once the invalidation is told, on the strict
	 * monitor phase once mmap() returned (uodp_dev_snapshot() takes the
	 * strict fence). The slot is PROT_NONE until replace(): no fault
	 * can refill it. */
	tell(rn, target, rn->slot_len);
	n = uodp_dev_snapshot(rn->dev, rn->key, (uint64_t)(uintptr_t)target,
			      rn->slot_len, st);
	for (i = 0; i < n; i++)
		if (st[i] != UODP_DEV_PAGE_NONE)
			atomic_fetch_add(&rn->stale_entries, 1);
	n = uodp_dev_snapshot(rn->dev, rn->ikey, (uint64_t)(uintptr_t)target,
			      rn->slot_len, st);
	for (i = 0; i < n; i++)
		if (st[i] != UODP_DEV_PAGE_NONE)
			atomic_fetch_add(&rn->stale_entries, 1);
	replace(m, s);
	atomic_fetch_add(&rn->slots[s].state, 1);
}

static void protect(struct mut *m, int s, unsigned *seed)
{
	struct run *rn = m->rn;
	char *target = rn->r + (size_t)s * rn->slot_len;
	int prot = rnd(seed) & 1 ? PROT_READ : PROT_NONE;

	if (mprotect(target, rn->slot_len, prot))
		atomic_fetch_add(&rn->bad_errors, 1);
	uodp_invalidate_range(uodp_dev_ctx(rn->dev), target, rn->slot_len,
			      UODP_EVENT_MANUAL);
	sched_yield();
	if (mprotect(target, rn->slot_len, PROT_READ | PROT_WRITE))
		atomic_fetch_add(&rn->bad_errors, 1);
	uodp_invalidate_range(uodp_dev_ctx(rn->dev), target, rn->slot_len,
			      UODP_EVENT_MANUAL);
}

static void *mutator(void *arg)
{
	struct mut *m = arg;
	struct run *rn = m->rn;
	unsigned seed = 77u + (unsigned)m->id;
	int s;

	pthread_barrier_wait(&rn->bar);
	while (!atomic_load(&rn->stop)) {
		s = (int)(rnd(&seed) % (NSLOTS / NMUT)) * NMUT + m->id;
		switch (rnd(&seed) % 4) {
		case 0:
			replace(m, s);
			break;
		case 1:
			madvise(rn->r + (size_t)s * rn->slot_len, rn->slot_len,
				MADV_DONTNEED);
			tell(rn, rn->r + (size_t)s * rn->slot_len,
			     rn->slot_len);
			break;
		case 2:
			unmap_and_back(m, s);
			break;
		default:
			protect(m, s, &seed);
			break;
		}
		atomic_fetch_add(&rn->mutations, 1);
	}
	return NULL;
}

/* ------------------------------------------------------------------------ */

static int run_phase(unsigned flags, double seconds)
{
	struct uodp_dev_attr a = { .flags = flags };
	struct run *rn = calloc(1, sizeof(*rn));
	struct mut muts[NMUT];
	pthread_t t[NMUT + NREAD + 2];
	struct timespec ts;
	int i, nt = 0, r;
	size_t total;

	assert_non_null(rn);
	r = uodp_dev_open(&a, &rn->dev);
	if (r) {
		free(rn);
		return r;
	}
	rn->manual = flags & UODP_DEV_MANUAL;
	rn->slot_len = SLOT_PAGES * PS;
	total = NSLOTS * rn->slot_len;
	rn->r = mmap(NULL, total, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(rn->r != MAP_FAILED);
	for (size_t i2 = 0; i2 < total; i2 += 8)
		*(uint64_t *)(rn->r + i2) =
			tag((uint64_t)(uintptr_t)rn->r + i2, 1);
	for (i = 0; i < NSLOTS; i++)
		atomic_init(&rn->slots[i].gen, 1);
	r = uodp_dev_reg_mr(rn->dev, (uintptr_t)rn->r, total,
			    UODP_DEV_ACCESS_ALL, &rn->key);
	/* The implicit key with the kernel monitor too: its 1 GiB children
	 * watch lazily, only the mappings their faults reach (the region's),
	 * not ThreadSanitizer's buffers or malloc arenas around it, which
	 * their runtimes may unmap on the monitor thread (a deadlock while
	 * children registered their whole GiB: docs/DEVICE.md, "Implicit
	 * region"). */
	if (!r)
		r = uodp_dev_reg_implicit_mr(rn->dev, UODP_DEV_ACCESS_ALL,
					     &rn->ikey);
	if (r) {
		uodp_dev_close(rn->dev);
		munmap(rn->r, total);
		free(rn);
		return r;
	}
	pthread_barrier_init(&rn->bar, NULL, NMUT + NREAD + 2 + 1);
	for (i = 0; i < NMUT; i++) {
		muts[i].rn = rn;
		muts[i].id = i;
		muts[i].staging = mmap(NULL, rn->slot_len,
				       PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		assert_true(muts[i].staging != MAP_FAILED);
		assert_int_equal(
			pthread_create(&t[nt++], NULL, mutator, &muts[i]), 0);
	}
	for (i = 0; i < NREAD; i++)
		assert_int_equal(pthread_create(&t[nt++], NULL, reader, rn), 0);
	assert_int_equal(pthread_create(&t[nt++], NULL, writer_atomics, rn), 0);
	assert_int_equal(pthread_create(&t[nt++], NULL, queued, rn), 0);
	pthread_barrier_wait(&rn->bar);
	ts.tv_sec = (time_t)seconds;
	ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL); /* the bound of the run, not an assertion */
	atomic_store(&rn->stop, true);
	for (i = 0; i < nt; i++)
		pthread_join(t[i], NULL);

	printf("  phase %s%s: %lu reads, %lu writes, %lu atomics, %lu queued, "
	       "%lu mutations, %lu errors (-EFAULT/-EACCES), %lu unchecked, "
	       "%lu torn words\n",
	       rn->manual ? "manual" : "kernel monitor",
	       (flags & UODP_DEV_FAST_COPY) ? " fast-copy" : "",
	       atomic_load(&rn->reads), atomic_load(&rn->writes),
	       atomic_load(&rn->atomics), atomic_load(&rn->queued),
	       atomic_load(&rn->mutations), atomic_load(&rn->errors),
	       atomic_load(&rn->skipped), atomic_load(&rn->torn));
	assert_int_equal(atomic_load(&rn->violations), 0);
	assert_int_equal(atomic_load(&rn->bad_errors), 0);
	assert_int_equal(atomic_load(&rn->stale_entries), 0);
	assert_true(atomic_load(&rn->reads) > 0);
	assert_true(atomic_load(&rn->mutations) > 0);
	assert_true(atomic_load(&rn->atomics) > 0);

	assert_int_equal(uodp_dev_close(rn->dev), 0);
	munmap(rn->r, total);
	for (i = 0; i < NMUT; i++)
		munmap(muts[i].staging, rn->slot_len);
	pthread_barrier_destroy(&rn->bar);
	free(rn);
	return 0;
}

static double seconds_total(void)
{
	const char *e = getenv("UODP_STRESS_SECONDS");
	double s = e ? atof(e) : 30.0;

	return s > 0 ? s : 30.0;
}

static bool dontunmap_works(void)
{
	char *a = mmap(NULL, PS, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *b = mmap(NULL, PS, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bool ok;

	ok = mremap(a, PS, PS, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
		    b) != MAP_FAILED;
	munmap(a, PS);
	munmap(b, PS);
	return ok;
}

/* The staging scheme needs MREMAP_DONTUNMAP (Linux 5.7). */
#define REQUIRE_DONTUNMAP()                                                 \
	do {                                                                \
		if (!dontunmap_works())                                     \
			t_skip("mremap(MREMAP_DONTUNMAP) refused (Linux < " \
			       "5.7)");                                     \
	} while (0)

/* Manual contexts, copying with process_vm_* and with the fast copy:
 * 60 % of the time (UODP_STRESS_SECONDS). */
static void test_stress_manual(void **state)
{
	double t = seconds_total();

	(void)state;
	REQUIRE_DONTUNMAP();
	printf("  stress: %.1f s in three phases (UODP_STRESS_SECONDS)\n", t);
	assert_int_equal(run_phase(UODP_DEV_MANUAL, t * 0.4), 0);
	assert_int_equal(
		run_phase(UODP_DEV_MANUAL | UODP_DEV_FAST_COPY, t * 0.2), 0);
}

/* A strict device on the kernel monitor: the other 40 %. Skipped where
 * the monitor is unavailable: -ENOSYS from the first registration
 * (uodp_dev.h: userfaultfd missing or forbidden); any other error fails. */
static void test_stress_strict(void **state)
{
	int r;

	(void)state;
	REQUIRE_DONTUNMAP();
	r = run_phase(UODP_DEV_STRICT, seconds_total() * 0.4);
	if (r == -ENOSYS)
		t_skip("the kernel monitor is unavailable here (userfaultfd "
		       "missing or forbidden)");
	assert_int_equal(r, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stress_manual),
		cmocka_unit_test(test_stress_strict),
	};

	PS = (size_t)sysconf(_SC_PAGESIZE);
	return t_run(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * test_ucm_rcache - a UCX ucs_rcache with UCM's hooks off, fed by
 * libuodp-ucm. The cache's mem_reg / mem_dereg watch and unwatch their
 * region, as a user who owns the cache would.
 *
 *   test_ucm_rcache [events|stale|all]   uodp feeds the cache (needs
 *       UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_MALLOC_HOOKS=no)
 *   test_ucm_rcache watchall             UODP_UCM_WATCH_ALL measured:
 *       which unmaps reach UCX (printed)
 *   test_ucm_rcache hooks                no uodp: UCM's own hooks, to show
 *       what they miss (printed, not asserted)
 *
 * events: every kind of unmap reaches the cache, including raw
 *   syscall(SYS_munmap) and an inline system call instruction - what a
 *   statically linked program (static libc, Go) does: no symbol to hook.
 * stale: the munmap-and-reuse loop, 3000 iterations: the stale window of
 *   plain lookups is measured and printed (UCX has no validate hook);
 *   lookups inside uodp_ucm_lookup_begin/_end must see 0 stale regions.
 * Exit 77 when uodp's kernel monitor is unavailable.
 */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <ucm/api/ucm.h>
#include <ucs/memory/rcache.h>

#include "../../tests/adp_test.h"
#include "uodp.h"
#include "uodp_ucm.h"

struct reg {
	ucs_rcache_region_t super;
	uint64_t gen; /* the mapping it was registered for */
};

static bool use_uodp = true;
static uint64_t cur_gen = 1;
static atomic_ulong regs, deregs, seen_events;
static atomic_uintptr_t seen_lo, seen_hi; /* last event range */

static ucs_status_t mem_reg(void *context, ucs_rcache_t *rc, void *arg,
			    ucs_rcache_region_t *region, uint16_t flags)
{
	struct reg *r = (struct reg *)region;

	(void)context;
	(void)rc;
	(void)arg;
	(void)flags;
	r->gen = cur_gen;
	if (use_uodp &&
	    uodp_ucm_watch((void *)region->super.start,
			   region->super.end - region->super.start) != 0)
		return UCS_ERR_IO_ERROR;
	atomic_fetch_add(&regs, 1);
	return UCS_OK;
}

static void mem_dereg(void *context, ucs_rcache_t *rc,
		      ucs_rcache_region_t *region)
{
	(void)context;
	(void)rc;
	if (use_uodp)
		uodp_ucm_unwatch((void *)region->super.start,
				 region->super.end - region->super.start);
	atomic_fetch_add(&deregs, 1);
}

static void dump_region(void *context, ucs_rcache_t *rc,
			ucs_rcache_region_t *region, char *buf, size_t max)
{
	(void)context;
	(void)rc;
	snprintf(buf, max, "gen %llu",
		 (unsigned long long)((struct reg *)region)->gen);
}

static const ucs_rcache_ops_t ops = { mem_reg, mem_dereg, dump_region };

static ucs_rcache_t *make_rcache(void)
{
	ucs_rcache_params_t p;
	ucs_rcache_t *rc;
	ucs_status_t s;

	memset(&p, 0, sizeof(p));
	p.region_struct_size = sizeof(struct reg);
	p.alignment = UCS_PGT_ADDR_ALIGN;
	p.max_alignment = adp_page();
	p.ucm_events = UCM_EVENT_VM_UNMAPPED;
	p.ucm_event_priority = 1000;
	p.ops = &ops;
	p.flags = 0;
	p.max_regions = ULONG_MAX;
	p.max_size = SIZE_MAX;
	p.max_unreleased = SIZE_MAX;
	s = ucs_rcache_create(&p, "uodp-test", NULL, &rc);
	if (s != UCS_OK) {
		fprintf(stderr, "ucs_rcache_create: %s\n",
			ucs_status_string(s));
		exit(1);
	}
	return rc;
}

/* Our own handler next to the cache's: what UCM dispatched. */
static void count_event(ucm_event_type_t type, ucm_event_t *ev, void *arg)
{
	(void)arg;
	if (type != UCM_EVENT_VM_UNMAPPED)
		return;
	atomic_store(&seen_lo, (uintptr_t)ev->vm_unmapped.address);
	atomic_store(&seen_hi,
		     (uintptr_t)ev->vm_unmapped.address + ev->vm_unmapped.size);
	atomic_fetch_add(&seen_events, 1);
}

/* Look @a up: the region's generation (the caller puts nothing back: the
 * region is released here). */
static uint64_t lookup(ucs_rcache_t *rc, void *a, size_t len)
{
	ucs_rcache_region_t *r;
	ucs_status_t s;
	uint64_t gen;

	s = ucs_rcache_get(rc, a, len, PROT_READ | PROT_WRITE, NULL, &r);
	if (s != UCS_OK) {
		fprintf(stderr, "ucs_rcache_get(%p): %s\n", a,
			ucs_status_string(s));
		exit(1);
	}
	gen = ((struct reg *)r)->gen;
	ucs_rcache_region_put(rc, r);
	return gen;
}

static void *map_at(void *hint, size_t len)
{
	void *p;

	if (hint)
		return adp_remap_at(hint, len);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	CHECK(p != MAP_FAILED);
	memset(p, 0x33, len);
	return p;
}

/* The system call instruction itself: no libc symbol, nothing to hook -
 * what a statically linked libc or the Go runtime executes. */
static long inline_munmap(void *addr, size_t len)
{
#if defined(__x86_64__)
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"((long)SYS_munmap), "D"(addr), "S"(len)
			 : "rcx", "r11", "memory");
	return ret;
#else
	return syscall(SYS_munmap, addr, len);
#endif
}

enum kind {
	K_MUNMAP,
	K_RAW,
	K_INLINE,
	K_DONTNEED,
	K_MREMAP,
	K_FIXED,
	K_FILE,
	K_MEMFD,
	K_NKINDS
};
static const char *kind_name[] = {
	"munmap",
	"syscall(SYS_munmap)",
	"inline syscall insn",
	"madvise(MADV_DONTNEED)",
	"mremap",
	"mmap(MAP_FIXED) over",
	"file MAP_SHARED munmap",
	"memfd MAP_SHARED munmap",
};

/* One event of kind @k on a cached region; true when the cache dropped
 * the region within @wait_ms (its next lookup registers anew). */
static bool one_event(ucs_rcache_t *rc, enum kind k, unsigned wait_ms,
		      double *us)
{
	size_t pg = adp_page(), len = 4 * pg;
	unsigned long before = atomic_load(&seen_events);
	void *a, *d = NULL;
	uint64_t g0, t0;
	bool gone, unmapped = true;
	int fd = -1;

	if (k == K_FILE || k == K_MEMFD) {
		if (k == K_FILE) {
			char path[] = "/tmp/uodp-ucm-XXXXXX";

			fd = mkstemp(path);
			CHECK(fd >= 0);
			unlink(path);
		} else {
			fd = memfd_create("uodp-ucm", 0);
			CHECK(fd >= 0);
		}
		CHECK(ftruncate(fd, (off_t)len) == 0);
		a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		CHECK(a != MAP_FAILED);
		memset(a, 1, len);
	} else {
		a = map_at(NULL, len);
	}
	cur_gen++;
	g0 = lookup(rc, a, len);
	/* A fresh mapping may get an address an earlier case used: until
	 * UCX has processed that case's invalidation (it does so lazily, on
	 * a later get) the lookup can return the old entry - UCX's stale
	 * window, which has no per-lookup validate hook. Printed, then
	 * waited out (bounded), never asserted to be zero. */
	for (int tries = 0; g0 != cur_gen && tries < 200; tries++) {
		if (!tries)
			printf("  (stale hit on a reused address: gen %lu, "
			       "waiting for UCX to drop it)\n",
			       (unsigned long)g0);
		usleep(1000);
		g0 = lookup(rc, a, len);
	}
	CHECK_EQ(g0, cur_gen);

	t0 = adp_now_ns();
	switch (k) {
	case K_MUNMAP:
	case K_FILE:
	case K_MEMFD:
		CHECK(munmap(a, len) == 0);
		break;
	case K_RAW:
		CHECK(syscall(SYS_munmap, a, len) == 0);
		break;
	case K_INLINE:
		CHECK(inline_munmap(a, len) == 0);
		break;
	case K_DONTNEED:
		CHECK(madvise(a, len, MADV_DONTNEED) == 0);
		unmapped = false;
		break;
	case K_MREMAP:
		d = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			 0);
		CHECK(d != MAP_FAILED);
		if (mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, d) !=
		    d) {
			/* UCM 1.13 declares ucm_mremap() with four arguments and
			 * drops MREMAP_FIXED's new address (measured) */
			CHECK(!use_uodp);
			munmap(a, len);
			munmap(d, len);
			*us = -1;
			return true;
		}
		break;
	case K_FIXED:
		CHECK(mmap(a, len, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			   0) == a);
		unmapped = false;
		break;
	default:
		break;
	}
	gone = WAIT_FOR(atomic_load(&seen_events) > before &&
				atomic_load(&seen_lo) <= (uintptr_t)a &&
				atomic_load(&seen_hi) >= (uintptr_t)a + len,
			wait_ms);
	*us = (double)(adp_now_ns() - t0) / 1e3;
	/* Our handler (priority 0) may run before the cache's in the same
	 * dispatch: the event is seen, the cache not yet told. The dispatch
	 * is over when no invalidation is in flight (seen once under TSan:
	 * a lookup in that window found the old region). */
	if (use_uodp && gone)
		gone = WAIT_FOR(uodp_ctx_sync(uodp_ucm_ctx()), wait_ms);
	if (unmapped && !map_at(a, len)) {
		/* the address was taken: the event alone must tell */
		printf("  (address reused by another thread; checked by the "
		       "event only)\n");
		a = NULL;
	}
	if (a) {
		cur_gen++;
		gone = gone && lookup(rc, a, len) == cur_gen;
		munmap(a, len);
	}
	if (d)
		munmap(d, len);
	if (fd >= 0)
		close(fd);
	if (use_uodp)
		WAIT_FOR(uodp_ctx_sync(uodp_ucm_ctx()), 5000);
	return gone;
}

static void test_events(ucs_rcache_t *rc)
{
	double us;
	int k, missed = 0;

	printf("events (%s):\n", use_uodp ? "uodp" : "UCM hooks");
	for (k = 0; k < K_NKINDS; k++) {
		bool ok =
			one_event(rc, (enum kind)k, use_uodp ? 5000 : 200, &us);

		if (us < 0) {
			printf("  %-26s n/a: mremap(MREMAP_FIXED) fails under "
			       "UCM's hook\n",
			       kind_name[k]);
			continue;
		}
		printf("  %-26s %s", kind_name[k],
		       ok ? "cache invalidated" : "MISSED: stale region");
		if (ok)
			printf(" (event after %.1f us)", us);
		printf("\n");
		missed += !ok;
	}
	if (use_uodp)
		CHECK_EQ(missed, 0);
	else
		printf("UCM hooks missed %d of %d kinds\n", missed, K_NKINDS);
}

/* One mode of the munmap-and-reuse loop on a cache of its own; returns
 * the stale lookups. A stale hit is not only momentary: the old region
 * watched the old mapping, so the unmapping of the new one at the same
 * address is not reported while the old region stays cached - "stuck"
 * counts the iterations after the first stale hit that were stale too. */
static int stale_loop(bool guarded, int iters, int *stuck)
{
	ucs_rcache_t *rc = make_rcache();
	size_t len = 2 * adp_page();
	void *a = map_at(NULL, len);
	uint64_t t0 = adp_now_ns(), g, tw = 0, tl = 0, t1;
	int it, stale = 0, first = -1, moved = 0;

	*stuck = 0;
	for (it = 0; it < iters; it++) {
		if (it && !map_at(a, len)) {
			a = map_at(NULL, len); /* address taken: move on */
			moved++;
		}
		cur_gen++;
		t1 = adp_now_ns();
		if (guarded) {
			CHECK_EQ(uodp_ucm_lookup_begin(5000), 0);
			tw += adp_now_ns() - t1;
			t1 = adp_now_ns();
			g = lookup(rc, a, len);
			uodp_ucm_lookup_end();
		} else {
			g = lookup(rc, a, len);
		}
		tl += adp_now_ns() - t1;
		if (g != cur_gen) {
			stale++;
			if (first < 0)
				first = it;
			else if (it == first + stale - 1)
				(*stuck)++;
		}
		CHECK(munmap(a, len) == 0);
	}
	printf("stale: %-46s %4d of %d lookups returned the old region "
	       "(%d in an unbroken run after the first; %.1f us/iter: "
	       "%.1f waiting in lookup_begin, %.1f in ucs_rcache_get)\n",
	       guarded ? "with uodp_ucm_lookup_begin/end:" :
			 "plain ucs_rcache_get (no validate hook):",
	       stale, iters, *stuck, (double)(adp_now_ns() - t0) / 1e3 / iters,
	       (double)tw / 1e3 / iters, (double)tl / 1e3 / iters);
	if (moved)
		printf("       (%d iterations moved to another address: taken "
		       "by another thread)\n",
		       moved);
	CHECK(WAIT_FOR(uodp_ctx_sync(uodp_ucm_ctx()), 5000));
	ucs_rcache_destroy(rc);
	return stale;
}

static void test_stale(void)
{
	/* Why 3000: issue 10's count; the window opens every iteration. */
	const int iters = 3000;
	int stuck;

	CHECK_EQ(stale_loop(true, iters, &stuck), 0);
	stale_loop(false, iters, &stuck); /* measured, not asserted */
}

/* UODP_UCM_WATCH_ALL, measured: which unmaps reach UCX when the whole
 * address space is watched instead of the cache's ranges. Printed. */
static bool reached(void *a, size_t len, unsigned ms)
{
	return WAIT_FOR(atomic_load(&seen_lo) <= (uintptr_t)a &&
				atomic_load(&seen_hi) >= (uintptr_t)a + len,
			ms);
}

static int test_watch_all(void *early)
{
	size_t len = 16 * adp_page();
	uint64_t t0;
	void *late, *later;
	volatile uintptr_t mu; /* not a pointer to the freed block for gcc */
	char *m;
	int r;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	/* Measured: the sanitizer's allocator maps MAP_FIXED into its own
	 * reserved ranges from every thread, uodp's monitor thread too; with
	 * the whole address space watched, the monitor then waits for its
	 * own event (all threads in userfaultfd_event_wait_completion). */
	(void)early;
	(void)len;
	(void)t0;
	(void)late;
	(void)later;
	(void)mu;
	(void)m;
	(void)r;
	printf("SKIP: UODP_UCM_WATCH_ALL under a sanitizer deadlocks the "
	       "monitor thread on its allocator's own mappings\n");
	return ADP_SKIP;
#endif
	t0 = adp_now_ns();
	r = uodp_ucm_start(UODP_UCM_WATCH_ALL);
	adp_skip_if_no_monitor(r, "uodp_ucm_start");
	if (r) {
		printf("watch-all: uodp_ucm_start(UODP_UCM_WATCH_ALL): %s\n",
		       strerror(-r));
		return 0;
	}
	printf("watch-all: start %.1f us\n", (double)(adp_now_ns() - t0) / 1e3);
	CHECK_EQ(ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, count_event,
				       NULL),
		 UCS_OK);
	late = map_at(NULL, len);
	m = malloc(1 << 20); /* glibc: a mapping of its own */
	CHECK(m);
	memset(m, 1, 1 << 20);
	CHECK(munmap(early, len) == 0);
	printf("  mapping made before start, munmap:  %s\n",
	       reached(early, len, 2000) ? "reached UCX" : "MISSED");
	CHECK(munmap(late, len) == 0);
	printf("  mapping made after start, munmap:   %s\n",
	       reached(late, len, 2000) ? "reached UCX" : "MISSED");
	mu = (uintptr_t)m;
	free(m);
	printf("  malloc(1 MiB) after start, free:    %s\n",
	       reached((void *)mu, 1 << 20, 2000) ? "reached UCX" : "MISSED");
	later = map_at(NULL, len);
	t0 = adp_now_ns();
	CHECK_EQ(uodp_ucm_refresh(), 0);
	printf("  uodp_ucm_refresh(): %.1f us\n",
	       (double)(adp_now_ns() - t0) / 1e3);
	CHECK(munmap(later, len) == 0);
	printf("  mapping made before refresh, munmap: %s\n",
	       reached(later, len, 2000) ? "reached UCX" : "MISSED");
	ucm_unset_event_handler(UCM_EVENT_VM_UNMAPPED, count_event, NULL);
	CHECK_EQ(uodp_ucm_stop(), 0);
	return 0;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "all";
	struct uodp_ucm_stats st;
	ucs_rcache_t *rc;
	int r;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (!strcmp(what, "hooks")) {
		use_uodp = false;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
		/* UCM's hooks and the sanitizer's interceptors patch the same
		 * functions (measured: segfaults under TSan) */
		printf("SKIP: UCM hooks comparison under a sanitizer\n");
		return ADP_SKIP;
#endif
		ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, count_event,
				      NULL);
		rc = make_rcache();
		test_events(rc);
		ucs_rcache_destroy(rc);
		return 0;
	}
	if (!strcmp(what, "watchall"))
		return test_watch_all(map_at(NULL, 16 * adp_page()));
	r = uodp_ucm_start(0);
	adp_skip_if_no_monitor(r, "uodp_ucm_start");
	if (r == -EBUSY) {
		fprintf(stderr, "UCM hooks are on: set UCX_MEM_MMAP_HOOK_MODE="
				"none UCX_MEM_MALLOC_HOOKS=no\n");
		return 1;
	}
	CHECK_EQ(r, 0);
	CHECK_EQ(uodp_ucm_start(0), -EALREADY);
	CHECK_EQ(ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, count_event,
				       NULL),
		 UCS_OK);
	rc = make_rcache(); /* refused by UCX with hooks off, unless external */
	printf("ucs_rcache created with UCM hooks off (mmap hook mode %d, "
	       "malloc hooks %d)\n",
	       (int)ucm_global_opts.mmap_hook_mode,
	       ucm_global_opts.enable_malloc_hooks);

	if (!strcmp(what, "events") || !strcmp(what, "all"))
		test_events(rc);
	if (!strcmp(what, "stale") || !strcmp(what, "all"))
		test_stale();

	ucs_rcache_destroy(rc);
	uodp_ucm_stats(&st);
	printf("stats: %llu events dispatched, %llu watches, %llu held\n",
	       (unsigned long long)st.events, (unsigned long long)st.watches,
	       (unsigned long long)st.watched);
	CHECK_EQ(st.watched, 0);
	ucm_unset_event_handler(UCM_EVENT_VM_UNMAPPED, count_event, NULL);
	CHECK_EQ(uodp_ucm_stop(), 0);
	return 0;
}

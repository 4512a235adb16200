/* SPDX-License-Identifier: MIT */
/*
 * test_ucp_rcache - a UCP context with its own registration cache
 * (UCX_RCACHE_ENABLE=yes) and UCM's hooks off, fed by libuodp-ucm.
 *
 * With hooks off and nothing external, UCX refuses to create the cache
 * (ucp_init fails: "could not create UCP registration cache"); after
 * uodp_ucm_start() it works. A cache hit is seen as ucp_mem_map()
 * returning the memory handle it returned before. To tell a stale hit
 * from a new handle at a recycled address, the previous handle is kept
 * mapped (alive) until the next one is compared with it.
 *
 *   test_ucp_rcache        uodp: each unmap kind invalidates the cache;
 *                          the munmap-and-reuse loop (1000 iterations) is
 *                          measured plain and with the lookup lock (0)
 *   test_ucp_rcache hooks  UCM's hooks instead (printed, not asserted)
 * Exit 77 when uodp's kernel monitor is unavailable.
 */
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <ucp/api/ucp.h>

#include "../../tests/adp_test.h"
#include "uodp.h"
#include "uodp_ucm.h"

static ucp_context_h ucp;
static bool use_uodp = true;

static ucp_mem_h mem_map(void *a, size_t len)
{
	ucp_mem_map_params_t mp;
	ucp_mem_h m;
	ucs_status_t s;

	memset(&mp, 0, sizeof(mp));
	mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
			UCP_MEM_MAP_PARAM_FIELD_LENGTH;
	mp.address = a;
	mp.length = len;
	s = ucp_mem_map(ucp, &mp, &m);
	if (s != UCS_OK) {
		fprintf(stderr, "ucp_mem_map: %s\n", ucs_status_string(s));
		exit(1);
	}
	return m;
}

static void *map_new(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK(p != MAP_FAILED);
	memset(p, 1, len);
	return p;
}

static void settle(void)
{
	if (use_uodp)
		CHECK(WAIT_FOR(uodp_ctx_sync(uodp_ucm_ctx()), 5000));
}

enum kind {
	K_MUNMAP,
	K_RAW,
	K_FIXED,
	K_NKINDS
};
static const char *kind_name[] = { "munmap", "syscall(SYS_munmap)",
				   "mmap(MAP_FIXED) over" };

/* adp_remap_at() by a raw system call: UCM's mmap hook must not see the
 * new mapping either (it reports VM_MAPPED, and UCP may act on it). */
static void *remap_raw(void *a, size_t len)
{
	long p = syscall(SYS_mmap, a, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
			 0);

	if (p == -1) {
		CHECK(errno == EEXIST);
		return NULL;
	}
	CHECK((void *)p == a);
	memset(a, 2, len);
	return a;
}

/* True when the cache dropped the handle after the event. */
static bool one_event(enum kind k)
{
	size_t len = 1 << 20;
	void *a = map_new(len);
	ucp_mem_h old, again;
	bool fresh;

	if (use_uodp)
		CHECK_EQ(uodp_ucm_watch(a, len), 0);
	old = mem_map(a, len);
	again = mem_map(a, len);
	CHECK(again == old); /* the cache works */
	ucp_mem_unmap(ucp, again);
	switch (k) {
	case K_MUNMAP:
		CHECK(munmap(a, len) == 0);
		break;
	case K_RAW:
		CHECK(syscall(SYS_munmap, a, len) == 0);
		break;
	default:
		break;
	}
	if (k != K_FIXED && !remap_raw(a, len)) {
		printf("  %-22s address reused by another thread: not "
		       "checked\n",
		       kind_name[k]);
		ucp_mem_unmap(ucp, old);
		if (use_uodp)
			uodp_ucm_unwatch(a, len);
		return true;
	}
	if (k == K_FIXED)
		CHECK(mmap(a, len, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			   0) == a);
	settle();
	again = mem_map(a, len); /* @old is alive: a new handle differs */
	fresh = again != old;
	printf("  %-22s %s\n", kind_name[k],
	       fresh ? "cache invalidated" : "MISSED: stale handle");
	ucp_mem_unmap(ucp, again);
	ucp_mem_unmap(ucp, old);
	munmap(a, len);
	if (use_uodp) {
		uodp_ucm_unwatch(a, len);
		settle();
	}
	return fresh;
}

/* One watch per mapping, all kept until the loop ends: an unwatch before
 * the event is delivered would cancel it (see uodp_ucm_start(3)), and UCP
 * does not say when it drops a handle. */
static int stale_loop(bool guarded, int iters)
{
	size_t len = 64 * 1024;
	void *a = map_new(len), **maps;
	ucp_mem_h prev = NULL, m;
	int it, stale = 0;

	maps = calloc((size_t)iters, sizeof(*maps));
	CHECK(maps);
	for (it = 0; it < iters; it++) {
		CHECK_EQ(uodp_ucm_watch(a, len), 0);
		maps[it] = a;
		if (guarded) {
			CHECK_EQ(uodp_ucm_lookup_begin(5000), 0);
			m = mem_map(a, len);
			uodp_ucm_lookup_end();
		} else {
			m = mem_map(a, len);
		}
		stale += prev && m == prev;
		if (prev)
			ucp_mem_unmap(ucp, prev);
		prev = m;
		CHECK(munmap(a, len) == 0);
		if (!adp_remap_at(a, len))
			a = map_new(len);
	}
	ucp_mem_unmap(ucp, prev);
	munmap(a, len);
	settle();
	for (it = 0; it < iters; it++)
		CHECK_EQ(uodp_ucm_unwatch(maps[it], len), 0);
	free(maps);
	printf("stale: %-40s %d of %d ucp_mem_map() calls after munmap + "
	       "mmap returned the old handle\n",
	       guarded ? "with uodp_ucm_lookup_begin/end:" :
			 "plain (UCX has no validate hook):",
	       stale, iters);
	return stale;
}

int main(int argc, char **argv)
{
	ucp_params_t p;
	ucp_config_t *cfg;
	ucs_status_t s;
	int k, missed = 0, r;

	setvbuf(stdout, NULL, _IONBF, 0);
	use_uodp = !(argc > 1 && !strcmp(argv[1], "hooks"));
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	if (!use_uodp) {
		/* UCM's hooks and the sanitizer's interceptors patch the same
		 * functions (measured: segfaults under TSan) */
		printf("SKIP: UCM hooks comparison under a sanitizer\n");
		return ADP_SKIP;
	}
#endif
	if (use_uodp) {
		r = uodp_ucm_start(0);
		adp_skip_if_no_monitor(r, "uodp_ucm_start");
		CHECK_EQ(r, 0);
	}
	memset(&p, 0, sizeof(p));
	p.field_mask = UCP_PARAM_FIELD_FEATURES;
	p.features = UCP_FEATURE_RMA;
	CHECK(ucp_config_read(NULL, NULL, &cfg) == UCS_OK);
	s = ucp_init(&p, cfg, &ucp);
	ucp_config_release(cfg);
	if (s != UCS_OK) {
		fprintf(stderr, "ucp_init: %s\n", ucs_status_string(s));
		return 1;
	}
	printf("UCP context with its registration cache (%s)\n",
	       use_uodp ? "UCM hooks off, events from uodp" : "UCM hooks");
	for (k = 0; k < K_NKINDS; k++)
		missed += !one_event((enum kind)k);
	if (use_uodp) {
		CHECK_EQ(missed, 0);
		CHECK_EQ(stale_loop(true, 1000), 0);
		stale_loop(false, 1000); /* measured */
	} else {
		printf("UCM hooks missed %d of %d kinds\n", missed, K_NKINDS);
	}
	ucp_cleanup(ucp);
	if (use_uodp)
		CHECK_EQ(uodp_ucm_stop(), 0);
	return 0;
}

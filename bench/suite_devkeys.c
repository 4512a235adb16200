/* SPDX-License-Identifier: MIT */
/*
 * suite_devkeys.c - device keys: uodp_dev_reg_mr / uodp_dev_dereg_mr cost
 * against the number of live keys (issue 11: "O(1) device keys", target
 * <= 2 us median at 10^6 keys, p99 stated).
 *
 * Written by the device helper; registered by adding bench_devkeys_suites
 * to suite_lists[] in harness.c (and its extern to bench.h).
 *
 * A manual device; 10^3 .. 10^6 one-page regions registered in random
 * address order over one reserved mapping (MAP_NORESERVE: nothing is
 * touched), then at each level SAMPLES pairs of (register one more page,
 * deregister it), each call timed. Two placements of the sampled page:
 * "above" (a page above all the others: the engine's region index at its
 * best) and "among" (a random page among them, a second region over it:
 * the index's general case). The device's part is O(1) (a free list of
 * key slots, the page-table directory from the heap); what grows with the
 * number of keys is the engine's region index.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"
#include "uodp_dev.h"

#define SAMPLES 20000

extern const struct bench_suite bench_devkeys_suites[];

/* @base: the same call at the first level (10^3 keys) of this run, the
 * baseline of every level ("independent of the number of keys"); it is
 * set from the first level's samples. */
static void emit(const char *name, const char *where, uint64_t nkeys, double *t,
		 size_t n, struct bench_stats *base)
{
	struct bench_row r = bench_row("devkeys", name, (double)nkeys, "us");

	snprintf(r.param, sizeof(r.param), "%llu keys, %s",
		 (unsigned long long)nkeys, where);
	bench_stats(t, n, &r.v);
	if (!base->n)
		*base = r.v;
	r.b = *base;
	r.base_name = "same call at 1000 keys";
	r.rk = BR_TIME;
	r.tk = nkeys >= 1000000 ? BT_MAX : BT_NONE;
	r.target = 2.0;
	r.note = "manual device, one-page regions";
	bench_emit(&r);
}

static void suite_devkeys(const struct bench_opts *o)
{
	static const uint64_t levels[] = { 1000, 10000, 100000, 1000000 };
	uint64_t maxk = o->quick ? 100000 : 1000000, have = 0, i, j, seed = 1;
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), L, s, nl;
	double *rt = NULL, *dt = NULL;
	struct uodp_dev *d = NULL;
	uint64_t *ord = NULL, t0, t1, t2;
	uint32_t *keys = NULL, k;
	char *m = MAP_FAILED, *p;
	struct bench_stats base[2][2]; /* [where][reg, dereg] */
	int where;

	memset(base, 0, sizeof(base));

	if (uodp_dev_open(&a, &d)) {
		bench_note("devkeys: no device");
		return;
	}
	m = mmap(NULL, (maxk + SAMPLES) * ps, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	keys = malloc(maxk * sizeof(*keys));
	ord = malloc(maxk * sizeof(*ord));
	rt = malloc(SAMPLES * sizeof(*rt));
	dt = malloc(SAMPLES * sizeof(*dt));
	if (m == MAP_FAILED || !keys || !ord || !rt || !dt) {
		bench_note("devkeys: out of memory");
		goto out;
	}
	/* random registration order (Fisher-Yates) */
	for (i = 0; i < maxk; i++)
		ord[i] = i;
	for (i = maxk - 1; i > 0; i--) {
		j = bench_rand(&seed) % (i + 1);
		t0 = ord[i];
		ord[i] = ord[j];
		ord[j] = t0;
	}
	nl = sizeof(levels) / sizeof(levels[0]);
	for (L = 0; L < nl && levels[L] <= maxk; L++) {
		for (; have < levels[L]; have++)
			if (uodp_dev_reg_mr(d, (uintptr_t)(m + ord[have] * ps),
					    ps, UODP_DEV_ACCESS_ALL,
					    &keys[have])) {
				bench_note("devkeys: registration failed");
				goto out;
			}
		for (where = 0; where < 2; where++) {
			for (s = 0; s < SAMPLES; s++) {
				p = where ? m + ord[bench_rand(&seed) % have] *
							    ps :
					    m + (maxk + s) * ps;
				t0 = bench_now_ns();
				if (uodp_dev_reg_mr(d, (uintptr_t)p, ps,
						    UODP_DEV_ACCESS_ALL, &k))
					goto out;
				t1 = bench_now_ns();
				uodp_dev_dereg_mr(d, k);
				t2 = bench_now_ns();
				rt[s] = (double)(t1 - t0) / 1e3;
				dt[s] = (double)(t2 - t1) / 1e3;
			}
			emit("reg_mr", where ? "among" : "above", levels[L], rt,
			     SAMPLES, &base[where][0]);
			emit("dereg_mr", where ? "among" : "above", levels[L],
			     dt, SAMPLES, &base[where][1]);
		}
	}
out:
	if (d)
		uodp_dev_close(d);
	if (m != MAP_FAILED)
		munmap(m, (maxk + SAMPLES) * ps);
	free(keys);
	free(ord);
	free(rt);
	free(dt);
}

const struct bench_suite bench_devkeys_suites[] = {
	{ "devkeys", "device key registration vs number of keys",
	  suite_devkeys },
	{ NULL, NULL, NULL },
};

/* SPDX-License-Identifier: MIT */
/*
 * harness.c - the benchmark harness (see bench.h): clock, statistics, the
 * table printer, CSV files and the command line of `uodp bench`.
 *
 * Owns the output: the current suite's CSV file and the list of targeted
 * rows that the closing summary repeats. Single threaded by design (suites
 * may start threads, but only the main thread emits rows).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "uodp.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static struct bench_opts opts;
static FILE *csv;

/* Targeted rows, for the summary at the end of the run. */
#define MAX_TARGETS 128
static struct {
	char text[160];
	int met;
} targets[MAX_TARGETS];
static int ntargets;

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

void bench_stats(double *s, size_t n, struct bench_stats *out)
{
	size_t rank;

	memset(out, 0, sizeof(*out));
	out->n = n;
	if (!n)
		return;
	qsort(s, n, sizeof(*s), cmp_double);
	out->min = s[0];
	out->max = s[n - 1];
	out->median = (n & 1) ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
	/* Nearest rank: the smallest value with >= 99% of samples at or
	 * below it. With fewer than 100 samples this is the maximum. */
	rank = (size_t)ceil(0.99 * (double)n);
	out->p99 = s[rank ? rank - 1 : 0];
}

struct bench_row bench_row(const char *suite, const char *name, double x,
			   const char *unit)
{
	struct bench_row r;

	memset(&r, 0, sizeof(r));
	r.suite = suite;
	r.name = name;
	r.x = x;
	r.unit = unit;
	return r;
}

const char *bench_fmt_bytes(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	unsigned u = 0;

	while (u < 4 && bytes >= 1024 && !(bytes % 1024)) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, len, "%llu %s", (unsigned long long)bytes, units[u]);
	return buf;
}

const struct bench_opts *bench_options(void)
{
	return &opts;
}

double bench_ratio(const struct bench_row *r, bool *valid)
{
	*valid = false;
	if (!r->base_name || r->base_na || !r->b.n || !r->v.n)
		return 0;
	if (r->rk == BR_TIME) {
		if (r->v.median <= 0)
			return 0;
		*valid = true;
		return r->b.median / r->v.median;
	}
	if (r->b.median <= 0)
		return 0;
	*valid = true;
	return r->v.median / r->b.median;
}

int bench_met(const struct bench_row *r)
{
	bool valid;
	double ratio = bench_ratio(r, &valid);

	switch (r->tk) {
	case BT_MAX:
		return r->v.n ? r->v.median <= r->target : -1;
	case BT_MIN:
		return r->v.n ? r->v.median >= r->target : -1;
	case BT_RATIO_MIN:
		return valid ? ratio >= r->target : -1;
	case BT_RATIO_MAX:
		return valid ? ratio <= r->target : -1;
	default:
		return -1;
	}
}

static const char *target_text(enum bench_target_kind tk, double target,
			       const char *unit, char *buf, size_t len)
{
	switch (tk) {
	case BT_MAX:
		snprintf(buf, len, "<= %g %s", target, unit);
		break;
	case BT_MIN:
		snprintf(buf, len, ">= %g %s", target, unit);
		break;
	case BT_RATIO_MIN:
		snprintf(buf, len, "ratio >= %g", target);
		break;
	case BT_RATIO_MAX:
		snprintf(buf, len, "ratio <= %g", target);
		break;
	default:
		buf[0] = 0;
	}
	return buf;
}

static const char *met_text(int met)
{
	return met < 0 ? "" : met ? "met" : "MISSED";
}

/* A figure in 9 columns with 4 significant digits. */
static const char *fig(double v, char *buf, size_t len)
{
	if (v != 0 && (fabs(v) >= 1e7 || fabs(v) < 1e-3))
		snprintf(buf, len, "%.3e", v);
	else
		snprintf(buf, len, "%.4g", v);
	return buf;
}

static void add_target(const struct bench_row *r, double value, int met)
{
	char t[48], f[24];

	if (met < 0 || ntargets == MAX_TARGETS)
		return;
	snprintf(targets[ntargets].text, sizeof(targets[0].text),
		 "%-8s %-26s %-12s %10s %-8s target %s", r->suite, r->name,
		 r->param, fig(value, f, sizeof(f)),
		 (r->tk == BT_RATIO_MIN || r->tk == BT_RATIO_MAX) ? "(ratio)" :
								    r->unit,
		 target_text(r->tk, r->target, r->unit, t, sizeof(t)));
	targets[ntargets++].met = met;
}

/* @s with commas (the CSV separator) turned into semicolons. */
static const char *csv_str(const char *s, char *buf, size_t len)
{
	size_t i;

	for (i = 0; s[i] && i + 1 < len; i++)
		buf[i] = s[i] == ',' ? ';' : s[i];
	buf[i] = 0;
	return buf;
}

static void csv_open(const char *suite)
{
	char path[4096];

	if (csv) {
		fclose(csv);
		csv = NULL;
	}
	if (!opts.csv_dir)
		return;
	snprintf(path, sizeof(path), "%s/%s.csv", opts.csv_dir, suite);
	csv = fopen(path, "w");
	if (!csv) {
		fprintf(stderr, "bench: cannot write %s: %s\n", path,
			strerror(errno));
		return;
	}
	fprintf(csv, "suite,case,param,x,unit,n,median,p99,min,max,"
		     "baseline,base_median,base_p99,base_min,base_max,ratio,"
		     "target,met\n");
}

void bench_suite_begin(const char *suite, const char *title)
{
	printf("\n== %s: %s\n", suite, title);
	printf("%-26s %-11s %6s %10s %10s %10s %-7s| %-26s %10s %10s | %9s | "
	       "%-15s %s\n",
	       "case", "param", "n", "median", "p99", "max", "unit", "baseline",
	       "median", "p99", "ratio", "target", "result");
	csv_open(suite);
}

void bench_emit(const struct bench_row *r)
{
	char a[64], b[64], c[24], d[24], e[24], t[48], rs[24], pb[32];
	bool valid;
	double ratio = bench_ratio(r, &valid);
	int met = bench_met(r);
	const char *bn = r->base_name ? r->base_name : "-";

	if (r->base_name && r->base_na) {
		snprintf(d, sizeof(d), "n/a");
		snprintf(e, sizeof(e), "-");
	} else if (r->base_name) {
		fig(r->b.median, d, sizeof(d));
		fig(r->b.p99, e, sizeof(e));
	} else {
		snprintf(d, sizeof(d), "-");
		snprintf(e, sizeof(e), "-");
	}
	if (valid)
		fig(ratio, rs, sizeof(rs));
	else
		snprintf(rs, sizeof(rs), "-");
	target_text(r->tk, r->target, r->unit, t, sizeof(t));
	printf("%-26s %-11s %6zu %10s %10s %10s %-7s| %-26s %10s %10s | %9s | "
	       "%-15s %s%s%s\n",
	       r->name, r->param, r->v.n, fig(r->v.median, a, sizeof(a)),
	       fig(r->v.p99, b, sizeof(b)), fig(r->v.max, c, sizeof(c)),
	       r->unit, bn, d, e, rs, t, met_text(met),
	       (r->note || (r->base_na && r->base_note)) ? "  " : "",
	       r->note			    ? r->note :
	       (r->base_na && r->base_note) ? r->base_note :
					      "");
	fflush(stdout);
	add_target(r,
		   (r->tk == BT_RATIO_MIN || r->tk == BT_RATIO_MAX) ?
			   ratio :
			   r->v.median,
		   met);
	if (!csv)
		return;
	fprintf(csv, "%s,%s,%s,%.17g,%s,%zu,%.9g,%.9g,%.9g,%.9g,", r->suite,
		csv_str(r->name, a, sizeof(a)),
		csv_str(r->param, pb, sizeof(pb)), r->x, r->unit, r->v.n,
		r->v.median, r->v.p99, r->v.min, r->v.max);
	if (r->base_name && !r->base_na)
		fprintf(csv, "%s,%.9g,%.9g,%.9g,%.9g,",
			csv_str(r->base_name, b, sizeof(b)), r->b.median,
			r->b.p99, r->b.min, r->b.max);
	else
		fprintf(csv, "%s,,,,,",
			r->base_name ? csv_str(r->base_name, b, sizeof(b)) :
				       "");
	if (valid)
		fprintf(csv, "%.9g,", ratio);
	else
		fprintf(csv, ",");
	fprintf(csv, "%s,%s\n", t, met < 0 ? "" : met ? "met" : "missed");
	fflush(csv);
}

void bench_summary(const char *suite, const char *name, const char *unit,
		   double value, enum bench_target_kind tk, double target,
		   const char *note)
{
	struct bench_row r = bench_row(suite, name, 0, unit);
	char t[48], f[24];
	int met;

	r.v.n = 1;
	r.v.min = r.v.median = r.v.p99 = r.v.max = value;
	r.tk = tk;
	r.target = target;
	met = bench_met(&r);
	printf("  %s: %s %s  %s %s%s%s\n", name, fig(value, f, sizeof(f)), unit,
	       target_text(tk, target, unit, t, sizeof(t)), met_text(met),
	       note ? "  " : "", note ? note : "");
	snprintf(r.param, sizeof(r.param), "summary");
	add_target(&r, value, met);
	if (csv)
		fprintf(csv,
			"%s,%s,summary,0,%s,1,%.9g,%.9g,%.9g,%.9g,,,,,,,%s,%s\n",
			suite, name, unit, value, value, value, value, t,
			met < 0 ? "" :
			met	? "met" :
				  "missed");
}

void bench_note(const char *fmt, ...)
{
	va_list ap;

	printf("  ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

void bench_warmup(uint64_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return;
	if (madvise(p, bytes, MADV_POPULATE_WRITE))
		memset(p, 1, bytes);
	munmap(p, bytes);
}

/* Whether the process has CAP_IPC_LOCK (bit 14 of CapEff): mlock() then
 * ignores RLIMIT_MEMLOCK (root usually has it even where the limit itself
 * cannot be raised, i.e. without CAP_SYS_RESOURCE). */
static bool has_ipc_lock(void)
{
	char line[256];
	unsigned long long eff = 0;
	bool found = false;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &eff) == 1) {
			found = true;
			break;
		}
	fclose(f);
	return found && (eff >> 14 & 1);
}

uint64_t bench_raise_memlock(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_MEMLOCK, &rl))
		return 0;
	if (rl.rlim_cur != rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_MEMLOCK, &rl);
	}
	if (rl.rlim_max != RLIM_INFINITY) {
		struct rlimit inf = { RLIM_INFINITY, RLIM_INFINITY };

		/* Works as root (CAP_SYS_RESOURCE) only. */
		if (!setrlimit(RLIMIT_MEMLOCK, &inf))
			rl = inf;
	}
	getrlimit(RLIMIT_MEMLOCK, &rl);
	if (has_ipc_lock())
		return UINT64_MAX;
	return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX :
					      (uint64_t)rl.rlim_cur;
}

/* Once per run: the answer does not change, and each probe starts and
 * stops the notifier. */
int bench_monitor_probe(void)
{
	static int cached = 1; /* 1: not probed yet */

	if (cached <= 0)
		return cached;
	cached = uodp_monitor_probe();
	return cached;
}

const char *bench_monitor_why(int err)
{
	if (err == -ENOSYS)
		return "kernel monitor unavailable in this build or kernel "
		       "(-ENOSYS): skipped";
	if (err == -EPERM)
		return "userfaultfd forbidden here (-EPERM): skipped";
	return "kernel monitor unavailable: skipped";
}

/* ---------------------------------------------------------------------- */
/* Command line                                                           */
/* ---------------------------------------------------------------------- */

/* The load average: other work on the machine skews every figure. */
static void print_load(const char *when)
{
	char buf[128] = "";
	FILE *f = fopen("/proc/loadavg", "r");

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	buf[strcspn(buf, "\n")] = 0;
	printf("load average %s: %s\n", when, buf[0] ? buf : "unknown");
}

static const struct bench_suite *const suite_lists[] = {
	bench_engine_suites,  bench_notify_suites, bench_device_suites,
	bench_devkeys_suites, bench_index_suites,
};

static void usage(FILE *f, const char *cmd)
{
	size_t l;
	const struct bench_suite *s;

	fprintf(f,
		"usage: %s [--quick] [--only SUITE[,SUITE...]] [--csv DIR] "
		"[--list] [--help]\n"
		"Measure uodp against its baselines (same run) and print a "
		"table.\n"
		"  --quick       smaller sizes and fewer repetitions (< 1 min)\n"
		"  --only LIST   run only these suites\n"
		"  --csv DIR     also write DIR/<suite>.csv (DIR is created)\n"
		"  --list        list the suites and exit\n"
		"suites:\n",
		cmd);
	for (l = 0; l < sizeof(suite_lists) / sizeof(suite_lists[0]); l++)
		for (s = suite_lists[l]; s->name; s++)
			fprintf(f, "  %-10s %s\n", s->name, s->title);
}

static bool selected(const char *name)
{
	const char *p = opts.only;
	size_t n = strlen(name);

	if (!p)
		return true;
	while (*p) {
		const char *c = strchr(p, ',');
		size_t len = c ? (size_t)(c - p) : strlen(p);

		if (len == n && !strncmp(p, name, n))
			return true;
		if (!c)
			break;
		p = c + 1;
	}
	return false;
}

/* Every name in --only must be a suite. */
static bool only_valid(void)
{
	const char *p = opts.only;

	while (p && *p) {
		const char *c = strchr(p, ',');
		size_t len = c ? (size_t)(c - p) : strlen(p), l;
		const struct bench_suite *s;
		bool found = false;

		for (l = 0; l < sizeof(suite_lists) / sizeof(suite_lists[0]);
		     l++)
			for (s = suite_lists[l]; s->name; s++)
				if (strlen(s->name) == len &&
				    !strncmp(s->name, p, len))
					found = true;
		if (!found) {
			fprintf(stderr, "bench: unknown suite '%.*s'\n",
				(int)len, p);
			return false;
		}
		if (!c)
			break;
		p = c + 1;
	}
	return true;
}

static int mkdir_p(const char *dir)
{
	char buf[4096], *p;

	if (snprintf(buf, sizeof(buf), "%s", dir) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0777) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0777) && errno != EEXIST)
		return -errno;
	return 0;
}

int bench_main(int argc, char **argv)
{
	const char *cmd = argc > 0 ? argv[0] : "bench";
	const struct bench_suite *s;
	uint64_t t0, ts;
	size_t l;
	int i, nmet = 0, nmissed = 0;

	memset(&opts, 0, sizeof(opts));
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--quick")) {
			opts.quick = true;
		} else if (!strcmp(a, "--only") && i + 1 < argc) {
			opts.only = argv[++i];
		} else if (!strncmp(a, "--only=", 7)) {
			opts.only = a + 7;
		} else if (!strcmp(a, "--csv") && i + 1 < argc) {
			opts.csv_dir = argv[++i];
		} else if (!strncmp(a, "--csv=", 6)) {
			opts.csv_dir = a + 6;
		} else if (!strcmp(a, "--list")) {
			for (l = 0;
			     l < sizeof(suite_lists) / sizeof(suite_lists[0]);
			     l++)
				for (s = suite_lists[l]; s->name; s++)
					printf("%s\n", s->name);
			return 0;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout, cmd);
			return 0;
		} else {
			fprintf(stderr, "%s: bad argument '%s'\n", cmd, a);
			usage(stderr, cmd);
			return 2;
		}
	}
	if (!only_valid())
		return 2;
	if (opts.csv_dir && mkdir_p(opts.csv_dir)) {
		fprintf(stderr, "%s: cannot create %s: %s\n", cmd, opts.csv_dir,
			strerror(errno));
		return 2;
	}

	printf("uodp bench (%s run). Times are per operation; ratio = "
	       "baseline time / uodp time\n(> 1: uodp faster) for times, uodp "
	       "/ baseline for rates and sizes.\np99 is the nearest-rank 99th "
	       "percentile (the maximum when n < 100).\n",
	       opts.quick ? "quick" : "full");
	print_load("at start");
	t0 = bench_now_ns();
	ntargets = 0;
	for (l = 0; l < sizeof(suite_lists) / sizeof(suite_lists[0]); l++) {
		for (s = suite_lists[l]; s->name; s++) {
			if (!selected(s->name))
				continue;
			ts = bench_now_ns();
			bench_suite_begin(s->name, s->title);
			s->run(&opts);
			printf("  (%s: %.1f s)\n", s->name,
			       (double)(bench_now_ns() - ts) / 1e9);
		}
	}
	if (csv) {
		fclose(csv);
		csv = NULL;
	}
	printf("\n== targets\n");
	for (i = 0; i < ntargets; i++) {
		printf("%-7s %s\n", targets[i].met ? "met" : "MISSED",
		       targets[i].text);
		if (targets[i].met)
			nmet++;
		else
			nmissed++;
	}
	printf("%d met, %d missed; total %.1f s\n", nmet, nmissed,
	       (double)(bench_now_ns() - t0) / 1e9);
	print_load("at end");
	return 0;
}

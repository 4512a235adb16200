/* SPDX-License-Identifier: MIT */
/*
 * bench.h - the benchmark harness shared by `uodp bench` and the bench_*
 * programs: a clock, repeated samples reduced to min/median/p99/max, rows
 * that carry their baseline (measured in the same run), the ratio between
 * the two and the target they are held to, printed as a table and written
 * as CSV (one file per suite) for the gnuplot scripts in bench/plots/.
 *
 * A suite is a function that measures and emits rows; suites are listed in
 * harness.c. Nothing here is a pass/fail test: a missed target is reported,
 * never an error exit.
 */
#ifndef UODP_BENCH_H
#define UODP_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)

/* xorshift64 (Marsaglia 2003): the suites' one generator of shuffles and
 * random slots. Statistical quality is not the point; a fixed seed makes a
 * run's order repeatable and the cost is a few instructions. *s != 0. */
static inline uint64_t bench_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Options of one run. */
struct bench_opts {
	bool quick;	     /* smaller sizes, fewer repetitions: < 1 minute */
	const char *only;    /* comma-separated suite names, NULL for all */
	const char *csv_dir; /* directory for <suite>.csv, NULL for none */
};

/* Summary of a set of samples (all in the row's unit). */
struct bench_stats {
	size_t n;
	double min, median, p99, max;
};

/* What a row's figure is held to. */
enum bench_target_kind {
	BT_NONE,      /* informational */
	BT_MAX,	      /* uodp median <= value */
	BT_MIN,	      /* uodp median >= value */
	BT_RATIO_MIN, /* ratio >= value */
	BT_RATIO_MAX, /* ratio <= value */
};

/*
 * How the ratio is formed. For times, uodp speed relative to the baseline:
 * baseline median / uodp median (> 1: uodp faster). For rates (larger is
 * better) uodp / baseline. For sizes (bytes), uodp / baseline.
 */
enum bench_ratio_kind {
	BR_TIME, /* base / uodp */
	BR_RATE, /* uodp / base */
	BR_SIZE, /* uodp / base */
};

struct bench_row {
	const char *suite;
	const char *name; /* the case, e.g. "umem_get" */
	char param[32];	  /* human readable parameter, e.g. "64 GiB" */
	double x;	  /* numeric parameter for plots (bytes, regions) */
	const char *unit; /* "us", "ms", "ns", "GiB/s", "B/page", ... */
	struct bench_stats v;
	const char *base_name; /* NULL: no baseline */
	struct bench_stats b;
	bool base_na;	       /* baseline not measurable here (n/a) */
	const char *base_note; /* why n/a, or how the baseline was obtained */
	enum bench_ratio_kind rk;
	enum bench_target_kind tk;
	double target;
	const char *note; /* short remark printed after the row */
};

/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC). */
uint64_t bench_now_ns(void);

/* Sort @s (n values) and summarise it; p99 is the nearest-rank value. */
void bench_stats(double *s, size_t n, struct bench_stats *out);

/* A row with its suite, case and parameter filled in, everything else 0. */
struct bench_row bench_row(const char *suite, const char *name, double x,
			   const char *unit);

/* Format a byte count as "4 KiB", "1 GiB", ... into @buf. */
const char *bench_fmt_bytes(uint64_t bytes, char *buf, size_t len);

/* Ratio and target outcome of a row: returns 1 met, 0 missed, -1 none. */
double bench_ratio(const struct bench_row *r, bool *valid);
int bench_met(const struct bench_row *r);

/* Print a suite's heading and the table header. */
void bench_suite_begin(const char *suite, const char *title);
/* Print @r as a table row and append it to the suite's CSV. */
void bench_emit(const struct bench_row *r);
/* A free-form line under the table (e.g. flatness, profile hints). */
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Record a derived summary figure (a row without samples), e.g. flatness. */
void bench_summary(const char *suite, const char *name, const char *unit,
		   double value, enum bench_target_kind tk, double target,
		   const char *note);

/* The options of the current run (set by bench_main()). */
const struct bench_opts *bench_options(void);

/* Touch and free @bytes of fresh anonymous memory, so that the first timed
 * large write of the process is not the VM's slow first touch. */
void bench_warmup(uint64_t bytes);

/* Raise RLIMIT_MEMLOCK as far as allowed; returns how much may be locked:
 * the resulting soft limit, UINT64_MAX for RLIM_INFINITY or when the
 * process has CAP_IPC_LOCK (mlock then ignores the limit). */
uint64_t bench_raise_memlock(void);

/* 0 when a context with the kernel monitor can watch memory here, else
 * the negative errno of uodp_umem_get() (probed once per run), and a
 * message for rows skipped because of it. */
int bench_monitor_probe(void);
const char *bench_monitor_why(int err);

/* One suite. */
struct bench_suite {
	const char *name;
	const char *title;
	void (*run)(const struct bench_opts *o);
};

/* Suites of suite_engine.c, suite_notify.c, suite_device.c and
 * suite_devkeys.c and suite_index.c (NULL-terminated by name). */
extern const struct bench_suite bench_engine_suites[];
extern const struct bench_suite bench_notify_suites[];
extern const struct bench_suite bench_device_suites[];
extern const struct bench_suite bench_devkeys_suites[]; /* suite_devkeys.c */
extern const struct bench_suite bench_index_suites[];	/* suite_index.c */

/* Parse argv (after the subcommand name: argv[0] is the command name), run
 * the selected suites, print the table, write CSVs. Returns an exit code:
 * 0, or 2 on bad usage. */
int bench_main(int argc, char **argv);

#endif

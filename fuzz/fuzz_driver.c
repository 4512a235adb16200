/* SPDX-License-Identifier: MIT */
/*
 * fuzz_driver.c - runs the API fuzzer's interpreter without libFuzzer:
 * from a seed (random inputs, deterministic), or over input files (the
 * corpus, or a crash file libFuzzer saved). Built with any C compiler.
 *
 *   fuzz_driver [--seed S] [--first I] [--runs N] [--seconds T] [--len L]
 *               [--mutate skip-inval|double-end] [--expect-finding KIND]
 *               [--dump FILE: write each generated input there first]
 *               [--verbose] [FILE|DIR ...]
 *
 * --expect-finding KIND (stale, other): exit 0 only if the oracle reported
 * a finding and every finding was of that kind (to show that a mutation
 * is caught as what it breaks: a crash, or an unrelated finding, is not
 * "caught"); findings do not abort then.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fuzz_api.h"

static uint64_t rng;

/* Input @i of seed @seed starts xorshift from a well-mixed state (the
 * splitmix64 finalizer): started from seed * k + i + 1 directly, nearby
 * inputs began with nearly the same bytes (byte 0's bit 0, the engine
 * context's kind, stayed the same for runs of ~4096 inputs, so seed 1's
 * first 1000 inputs, CI's fuzz_seeded, never used the kernel monitor). */
static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x ? x : 1; /* xorshift's state must not be 0 */
}

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static int run_file(const char *path)
{
	static uint8_t buf[1 << 16];
	FILE *f = fopen(path, "rb");
	uint64_t before;
	size_t n;

	if (!f) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	before = fuzz_get_stats()->findings;
	fuzz_set_label(path);
	fuzz_one(buf, n);
	if (fuzz_get_stats()->findings != before)
		fprintf(stderr, "  (input: %s)\n", path);
	return 0;
}

static int run_path(const char *path)
{
	struct stat st;
	struct dirent **ents;
	char full[4096];
	int i, n, r = 0;

	if (stat(path, &st)) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode))
		return run_file(path);
	n = scandir(path, &ents, NULL, alphasort);
	for (i = 0; i < n; i++) {
		if (ents[i]->d_name[0] != '.') {
			snprintf(full, sizeof(full), "%s/%s", path,
				 ents[i]->d_name);
			r |= run_file(full);
		}
		free(ents[i]);
	}
	free(ents);
	return n < 0 ? -1 : r;
}

int main(int argc, char **argv)
{
	unsigned long long seed = 1, runs = 200, len = 400, first = 0;
	double seconds = 0;
	bool files = false;
	int expect = -1; /* the kind --expect-finding names */
	const char *dump = NULL;
	enum fuzz_mutation m = MUT_NONE;
	const struct fuzz_stats *s = fuzz_get_stats();
	static uint8_t buf[1 << 16];
	struct timespec t0, t1;
	unsigned long long i;
	int a;

	if (getenv("FUZZ_MUTATE"))
		m = fuzz_mutation_by_name(getenv("FUZZ_MUTATE"));
	for (a = 1; a < argc; a++) {
		if (!strcmp(argv[a], "--seed") && a + 1 < argc)
			seed = strtoull(argv[++a], NULL, 0);
		else if (!strcmp(argv[a], "--runs") && a + 1 < argc)
			runs = strtoull(argv[++a], NULL, 0);
		else if (!strcmp(argv[a], "--seconds") && a + 1 < argc)
			seconds = strtod(argv[++a], NULL);
		else if (!strcmp(argv[a], "--first") && a + 1 < argc)
			first = strtoull(argv[++a], NULL, 0);
		else if (!strcmp(argv[a], "--dump") && a + 1 < argc)
			dump = argv[++a];
		else if (!strcmp(argv[a], "--len") && a + 1 < argc)
			len = strtoull(argv[++a], NULL, 0);
		else if (!strcmp(argv[a], "--mutate") && a + 1 < argc)
			m = fuzz_mutation_by_name(argv[++a]);
		else if (!strcmp(argv[a], "--expect-finding") && a + 1 < argc) {
			expect = fuzz_finding_kind_by_name(argv[++a]);
			if (expect < 0) {
				fprintf(stderr, "unknown finding kind %s\n",
					argv[a]);
				return 2;
			}
		} else if (!strcmp(argv[a], "--verbose"))
			fuzz_set_verbose(1);
		else if (argv[a][0] == '-') {
			fprintf(stderr, "usage: see fuzz/fuzz_driver.c\n");
			return 2;
		} else
			break;
	}
	if ((int)m < 0) {
		fprintf(stderr, "unknown mutation\n");
		return 2;
	}
	if (len > sizeof(buf))
		len = sizeof(buf);
	fuzz_set_mutation(m);
	/* Findings stop the input, not the process: the driver names the
	 * input, then stops (unless a finding is what it expects). */
	fuzz_set_abort(0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (; a < argc; a++) {
		files = true;
		if (run_path(argv[a]))
			return 2;
	}
	if (!files) {
		for (i = first; seconds > 0 || i < first + runs; i++) {
			uint64_t before = s->findings;
			char label[96];
			size_t k, n;

			rng = mix(seed * 0x9e3779b97f4a7c15ull + i + 1);
			n = 2 + next() % len;
			for (k = 0; k < n; k++)
				buf[k] = (uint8_t)(next() >> 24);
			if (dump) {
				/* Keep the input as a file (a reproducer for
				 * fuzz/repro/ or the corpus). */
				FILE *f = fopen(dump, "wb");

				if (!f || fwrite(buf, 1, n, f) != n) {
					perror(dump);
					return 2;
				}
				fclose(f);
			}
			snprintf(label, sizeof(label),
				 "--seed %llu --first %llu --runs 1", seed, i);
			fuzz_set_label(label);
			fuzz_one(buf, n);
			if (s->findings != before)
				fprintf(stderr,
					"  (input: --seed %llu --first %llu "
					"--runs 1)\n",
					seed, i);
			if (s->findings)
				break;
			if (seconds > 0) {
				clock_gettime(CLOCK_MONOTONIC, &t1);
				if ((double)(t1.tv_sec - t0.tv_sec) +
					    (t1.tv_nsec - t0.tv_nsec) / 1e9 >
				    seconds)
					break;
			}
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("fuzz_driver: %llu inputs, %llu ops (%llu device sync, %llu "
	       "async), %llu bytes and %llu words checked (%llu not), %llu "
	       "errors "
	       "returned, %llu allocation failures injected, %llu monitor "
	       "skips, %llu sandbox skips, %llu findings (%llu stale), %llu known open bugs "
	       "tolerated, %.1f s\n",
	       (unsigned long long)s->inputs, (unsigned long long)s->ops,
	       (unsigned long long)s->dev_ops, (unsigned long long)s->async_ops,
	       (unsigned long long)s->bytes_checked,
	       (unsigned long long)s->words_checked,
	       (unsigned long long)s->words_unchecked,
	       (unsigned long long)s->errors_seen,
	       (unsigned long long)s->injected,
	       (unsigned long long)s->skipped_monitor,
	       (unsigned long long)s->skipped_sandbox,
	       (unsigned long long)s->findings,
	       (unsigned long long)s->findings_of[FIND_STALE],
	       (unsigned long long)s->known,
	       (double)(t1.tv_sec - t0.tv_sec) +
		       (t1.tv_nsec - t0.tv_nsec) / 1e9);
	if (expect >= 0) {
		if (s->findings && s->findings_of[expect] == s->findings)
			return 0;
		fprintf(stderr,
			"fuzz_driver: expected %s findings only: %llu of "
			"%llu\n",
			expect == FIND_STALE ? "stale" : "other",
			(unsigned long long)s->findings_of[expect],
			(unsigned long long)s->findings);
		return 1;
	}
	return s->findings ? 1 : 0;
}

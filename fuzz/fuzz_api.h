/* SPDX-License-Identifier: MIT */
/*
 * fuzz_api.h - the API fuzzer's interpreter (fuzz_api.c), shared by the
 * libFuzzer target (fuzz_libfuzzer.c) and the seeded driver
 * (fuzz_driver.c). See fuzz/README.md.
 */
#ifndef UODP_FUZZ_API_H
#define UODP_FUZZ_API_H

#include <stddef.h>
#include <stdint.h>

/* User errors the interpreter commits on purpose, to show that the oracle
 * catches what they break (FUZZ_MUTATE=<name> or the driver's --mutate). */
enum fuzz_mutation {
	MUT_NONE = 0,
	/* After munmap/mmap/madvise on a manual context, do not call
	 * uodp_invalidate_range(): the device and engine keep translations
	 * of a mapping that is gone. The oracle must report it. */
	MUT_SKIP_INVAL,
	/* Call uodp_invalidate_range_end() twice on a token: the library
	 * must refuse the second (-EINVAL) and no region may stay wedged. */
	MUT_DOUBLE_END,
};

/* What a finding is about. FIND_STALE: the device or the engine keeps a
 * translation of a pool page the process no longer maps that way (what
 * MUT_SKIP_INVAL must produce); FIND_OTHER: anything else (undocumented
 * error, wrong data, a call that failed). */
enum fuzz_finding_kind {
	FIND_OTHER = 0,
	FIND_STALE,
	FIND_NKINDS
};

struct fuzz_stats {
	uint64_t inputs, ops, dev_ops, async_ops, bytes_checked, words_checked,
		words_unchecked, errors_seen, injected, findings,
		skipped_monitor, skipped_sandbox, known;
	uint64_t findings_of[FIND_NKINDS]; /* findings by kind */
};

/* Run one input. Returns 0; a finding aborts (libFuzzer saves the input)
 * unless fuzz_set_abort(0), in which case it is counted and the input
 * stops. */
int fuzz_one(const uint8_t *data, size_t size);
void fuzz_set_mutation(enum fuzz_mutation m);
enum fuzz_mutation fuzz_mutation_by_name(const char *name);
void fuzz_set_abort(int on);
void fuzz_set_verbose(int on);
/* How to replay the next input (a file name, or the driver's --seed
 * arguments), printed by a finding that has to abort the process (a hang
 * the watchdog caught: nothing can return from it). */
void fuzz_set_label(const char *label);
const struct fuzz_stats *fuzz_get_stats(void);
/* "stale", "other"; -1 for an unknown name. */
int fuzz_finding_kind_by_name(const char *name);

#endif

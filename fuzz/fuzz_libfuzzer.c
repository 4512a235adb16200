/* SPDX-License-Identifier: MIT */
/* fuzz_libfuzzer.c - the libFuzzer entry point of the API fuzzer. */
#include <stdlib.h>

#include "fuzz_api.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (getenv("FUZZ_MUTATE"))
		fuzz_set_mutation(fuzz_mutation_by_name(getenv("FUZZ_MUTATE")));
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_one(data, size);
}

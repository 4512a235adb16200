/* SPDX-License-Identifier: MIT */
/*
 * bench.c - `uodp bench`: the benchmark suites of bench/ behind the tool.
 * Owns nothing but the hand-over to the harness (bench/harness.c, compiled
 * into the tool by tools/CMakeLists.txt), which parses
 * [--quick] [--only SUITE[,SUITE...]] [--csv DIR] [--list] [--help].
 */
#include "bench.h"
#include "cmd.h"

/* argv[0] is the subcommand's name ("bench"), argv[1..] its options. */
int cmd_bench(int argc, char **argv)
{
	char name[] = "uodp bench";

	if (argc > 0)
		argv[0] = name; /* for the usage line */
	return bench_main(argc, argv);
}

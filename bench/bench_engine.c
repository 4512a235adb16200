/* SPDX-License-Identifier: MIT */
/*
 * bench_engine.c - standalone runner of the benchmark suites, the same
 * ones `uodp bench` runs (see bench.h): figures can be had without the
 * command-line tool. Usage: bench_engine [--quick] [--only SUITE] [--csv DIR]
 */
#include "bench.h"

int main(int argc, char **argv)
{
	return bench_main(argc, argv);
}

/* SPDX-License-Identifier: MIT */
/*
 * cmd.h - the subcommands of the `uodp` tool and how they plug in.
 *
 * Each subcommand is a function `int cmd_NAME(int argc, char **argv)` in
 * its own file (argv[0] is the subcommand's name, argv[1..] its options;
 * it returns the process exit status: 0 success, 1 failure, 2 usage
 * error). main.c lists them in its dispatch table; a subcommand may be
 * declared weak there, so the tool still links when its file is absent.
 */
#ifndef UODP_TOOL_CMD_H
#define UODP_TOOL_CMD_H

#include <stdio.h>

struct tool_cmd {
	const char *name;
	const char *summary; /* one line for `uodp --help` */
	int (*run)(int argc, char **argv);
	/* Prints the subcommand's help; NULL: `--help` is passed to run(),
	 * which prints its own. */
	void (*usage)(FILE *out);
};

int cmd_demo(int argc, char **argv);
void cmd_demo_usage(FILE *out);
int cmd_bench(int argc, char **argv); /* tools/uodp/bench.c */

#endif

/* SPDX-License-Identifier: MIT */
/*
 * main.c - the `uodp` command-line tool: global options and the dispatch
 * table of subcommands (cmd.h). Owns nothing else: each subcommand lives in
 * its own file. To add one, write tools/uodp/NAME.c with
 * `int cmd_NAME(int, char **)`, declare it in cmd.h and add a row below.
 */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "uodp.h"

/* Weak: the tool links (and says so) when bench.c is not built in. */
extern int cmd_bench(int argc, char **argv) __attribute__((weak));

static const struct tool_cmd cmds[] = {
	{ "demo", "narrated scenario: a software device on real memory",
	  cmd_demo, cmd_demo_usage },
	{ "bench", "run the benchmark suites (uodp bench --help)", cmd_bench,
	  NULL },
};

#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

static void usage(FILE *out)
{
	size_t i;

	fprintf(out,
		"usage: uodp [--help] [--version] COMMAND [ARGS...]\n"
		"\n"
		"On-demand paging in user space (libuodp %s).\n"
		"\n"
		"commands:\n",
		uodp_version());
	for (i = 0; i < NCMDS; i++)
		if (cmds[i].run)
			fprintf(out, "  %-8s %s\n", cmds[i].name,
				cmds[i].summary);
	fprintf(out, "  %-8s %s\n", "help", "help [COMMAND]: show help");
	fprintf(out, "\n`uodp COMMAND --help` shows a command's options. "
		     "See uodp(1).\n");
}

static const struct tool_cmd *find(const char *name)
{
	size_t i;

	for (i = 0; i < NCMDS; i++)
		if (cmds[i].run && !strcmp(cmds[i].name, name))
			return &cmds[i];
	return NULL;
}

static bool is_help(const char *s)
{
	return !strcmp(s, "--help") || !strcmp(s, "-h");
}

static int run_help(const struct tool_cmd *c)
{
	char *argv[] = { (char *)c->name, (char *)"--help", NULL };

	if (c->usage) {
		c->usage(stdout);
		return 0;
	}
	return c->run(2, argv);
}

int main(int argc, char **argv)
{
	const struct tool_cmd *c;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (is_help(argv[1])) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("uodp %s\n", uodp_version());
		return 0;
	}
	if (!strcmp(argv[1], "help")) {
		if (argc < 3) {
			usage(stdout);
			return 0;
		}
		c = find(argv[2]);
		if (!c) {
			fprintf(stderr, "uodp: no command '%s'\n", argv[2]);
			return 2;
		}
		return run_help(c);
	}
	c = find(argv[1]);
	if (!c) {
		fprintf(stderr, "uodp: no command '%s' (see uodp --help)\n",
			argv[1]);
		return 2;
	}
	if (argc > 2 && is_help(argv[2]))
		return run_help(c);
	return c->run(argc - 1, argv + 1);
}

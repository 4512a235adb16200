/* SPDX-License-Identifier: MIT */
/*
 * smaps.h - what /proc/self/smaps says of a test's mapping; shared by the
 * tests built on helpers.h and by those that are not (test_hooks.c).
 * Needs <cmocka.h> (and its prerequisites) included before it.
 */
#ifndef UODP_TEST_SMAPS_H
#define UODP_TEST_SMAPS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/*
 * Whether the mapping that holds @p is registered with a userfaultfd in
 * write-protect mode (the kernel monitor's mode): "uw" among its VmFlags
 * in /proc/self/smaps. 1 or 0; the test fails when no mapping holds @p or
 * smaps cannot be read.
 */
static inline int t_uffd_watched(const void *p)
{
	unsigned long a = (unsigned long)(uintptr_t)p, s, e;
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	int r = -1;

	assert_non_null(f);
	while (r < 0 && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2) {
			in = s <= a && a < e; /* a mapping's first line */
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			r = strstr(line, " uw") != NULL;
		}
	}
	fclose(f);
	if (r < 0)
		fail_msg("no mapping holds %p in /proc/self/smaps", p);
	return r;
}

#endif

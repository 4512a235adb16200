/* SPDX-License-Identifier: MIT */
/*
 * monitor.c - TEMPORARY STUB until the userfaultfd monitor lands: every
 * non-manual context reports that the kernel notifier is unavailable.
 * (The notifier helper replaces this file.)
 */
#include <errno.h>

#include "notifier/monitor.h"

int umon_create(struct uodp_ctx *ctx, struct umon **out)
{
	(void)ctx;
	(void)out;
	return -ENOSYS;
}

void umon_destroy(struct umon *m)
{
	(void)m;
}

int umon_register(struct umon *m, uint64_t start, uint64_t end)
{
	(void)m;
	(void)start;
	(void)end;
	return -ENOSYS;
}

void umon_unregister(struct umon *m, uint64_t start, uint64_t end)
{
	(void)m;
	(void)start;
	(void)end;
}

int umon_prepare_map(struct umon *m, uint64_t start, uint64_t end)
{
	(void)m;
	(void)start;
	(void)end;
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * example_ucm - UCX with UCM's hooks off and uodp feeding its memory
 * events. Start the adapter before any UCX call that installs an event
 * handler, watch the buffers you register, and UCX's caches see their
 * unmapping - also by a raw system call, which UCM's hooks miss.
 * Exit 77 when uodp's kernel monitor is unavailable.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ucm/api/ucm.h>

#include "uodp.h"
#include "uodp_ucm.h"

static atomic_ulong events;

static void on_unmapped(ucm_event_type_t type, ucm_event_t *ev, void *arg)
{
	(void)type;
	(void)arg;
	printf("UCX saw VM_UNMAPPED %p + %zu\n", ev->vm_unmapped.address,
	       ev->vm_unmapped.size);
	atomic_fetch_add(&events, 1);
}

int main(int argc, char **argv)
{
	size_t len = 1 << 20;
	void *buf;
	int r, i;

	(void)argc;

	r = uodp_ucm_start(0);
	if (r == -EBUSY && !getenv("UODP_UCM_REEXEC")) {
		/* UCM's hooks are on: UCX reads the switch from the
		 * environment when it loads, so run again with it set. */
		setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 1);
		setenv("UCX_MEM_MALLOC_HOOKS", "no", 1);
		setenv("UODP_UCM_REEXEC", "1", 1);
		execv("/proc/self/exe", argv);
		perror("execv");
		return 1;
	}
	if (r == -ENOSYS || r == -EPERM) {
		printf("SKIP: uodp_ucm_start: %s\n", uodp_strerror(r));
		return 77;
	}
	if (r) {
		fprintf(stderr, "uodp_ucm_start: %s\n", uodp_strerror(r));
		return 1;
	}
	/* what ucs_rcache_create() does inside UCX */
	if (ucm_set_event_handler(UCM_EVENT_VM_UNMAPPED, 0, on_unmapped,
				  NULL) != UCS_OK)
		return 1;

	buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	memset(buf, 1, len);
	uodp_ucm_watch(buf, len);      /* e.g. in your cache's mem_reg */
	syscall(SYS_munmap, buf, len); /* no hook sees this one */
	for (i = 0; i < 5000 && !atomic_load(&events); i++)
		usleep(1000);	    /* delivered on uodp's relay thread */
	uodp_ucm_unwatch(buf, len); /* e.g. in mem_dereg */

	ucm_unset_event_handler(UCM_EVENT_VM_UNMAPPED, on_unmapped, NULL);
	uodp_ucm_stop();
	return atomic_load(&events) ? 0 : 1;
}

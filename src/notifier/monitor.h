/* SPDX-License-Identifier: MIT */
/*
 * monitor.h - the kernel notifier of a context (internal interface).
 *
 * One userfaultfd and one thread per non-manual context, turning the
 * kernel's UNMAP / REMOVE / REMAP events into uodp_invalidate_range_start()
 * / _end() calls. The engine drives its life cycle; every call below is
 * made with the context's monitor lock held (struct uodp_ctx::mon_lock) and
 * no other engine lock, never from the monitor thread. The monitor thread
 * never takes mon_lock, so umon_destroy() can join it under that lock.
 */
#ifndef UODP_MONITOR_H
#define UODP_MONITOR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct uodp_ctx;
struct umon;

/* Open the userfaultfd (user-mode only, feature handshake) and start the
 * thread. Errors: -ENOSYS / -EPERM / -EACCES when userfaultfd is unavailable
 * (the caller should say: use UODP_CTX_MANUAL), -EMFILE / -ENFILE (no fd),
 * -ENOMEM, -EAGAIN (no thread). */
int umon_create(struct uodp_ctx *ctx, struct umon **out);

/* Unregister every range, stop and join the thread (events already queued
 * are read and handled first, so no application thread stays blocked in
 * munmap), close the fds, free. No-op in a forked child. */
void umon_destroy(struct umon *m);

/*
 * A region over [start, end) (page aligned) was registered / released: keep
 * the kernel registration of every address covered by at least one region
 * (ranges are reference counted; the kernel sees each address once).
 * Holes in the range are fine (umon_prepare_map() registers what is mapped
 * there later). Parts the kernel refuses (a mapping type userfaultfd cannot
 * follow) are not an error here: uodp_umem_map() over them fails instead.
 * Errors of register: -EBUSY (another userfaultfd has part of the range),
 * -ENOMEM; nothing is left registered on error.
 */
int umon_register(struct umon *m, uint64_t start, uint64_t end);
void umon_unregister(struct umon *m, uint64_t start, uint64_t end);

/*
 * Called by the fault path before it populates [start, end) of a region:
 * make sure mappings created there after registration are registered too.
 * One atomic compare when no covered mapping went away and no covered range
 * had a hole at its last check; otherwise registration ioctls.
 * Errors: -EBUSY (another userfaultfd has the memory), -EOPNOTSUPP (the
 * range holds a mapping the kernel refuses to watch, e.g. a MAP_SHARED file
 * opened read-only, VM_IO/PFNMAP, or a regular file mapping on a kernel
 * without UFFD_FEATURE_WP_ASYNC), -ENOMEM. A range with nothing mapped is
 * not an error (populating it fails with -EFAULT).
 */
int umon_prepare_map(struct umon *m, uint64_t start, uint64_t end);

/* ---- observation, for tests and statistics (any thread, no lock) ---- */

struct umon_stats {
	uint64_t unmap, remove, remap; /* kernel events handled */
	uint64_t other;		/* unexpected messages (never, normally) */
	uint64_t wakeups;	/* times the thread found events */
	uint64_t fences;	/* fence/unfence pairs (strict ordering) */
	uint64_t slow_prepares; /* prepare_map calls that re-registered */
};
void umon_get_stats(struct umon *m, struct umon_stats *out);

/* Kernel features enabled on the fd (UFFD_FEATURE_*). */
uint64_t umon_features(const struct umon *m);

/* Thread id of the monitor thread (0 until it has started). */
pid_t umon_tid(struct umon *m);

/* True when kernel events are queued that the thread has not read yet
 * (application threads are blocked on them). */
bool umon_pending(struct umon *m);

/* True once umon_destroy() asked the thread to stop. */
bool umon_stopping(struct umon *m);

#endif

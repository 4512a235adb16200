/* SPDX-License-Identifier: MIT */
/*
 * monitor.h - the kernel notifier of a context (internal interface).
 *
 * One userfaultfd and one thread per non-manual context, turning the
 * kernel's UNMAP / REMOVE / REMAP events into uodp_invalidate_range_start()
 * / _end() calls. The engine drives its life cycle; the calls below are made
 * with the context's monitor lock held (struct uodp_ctx::mon_lock), never
 * with the tree lock or a region lock, and never from the monitor thread.
 */
#ifndef UODP_MONITOR_H
#define UODP_MONITOR_H

#include <stdint.h>

struct uodp_ctx;
struct umon;

/* Open the userfaultfd (user-mode only, feature handshake) and start the
 * thread. Errors: -ENOSYS / -EPERM / -EACCES when userfaultfd is unavailable,
 * -ENOMEM, -EAGAIN (no thread). */
int umon_create(struct uodp_ctx *ctx, struct umon **out);

/* Stop and join the thread (events still pending are drained, so no
 * application thread stays blocked), close the fd, free. */
void umon_destroy(struct umon *m);

/* A region over [start, end) was registered / released: keep the kernel
 * registration of every address covered by at least one region.
 * Errors of register: -EBUSY (another userfaultfd has the range), -EINVAL
 * (a mapping type the kernel refuses), -ENOMEM. */
int umon_register(struct umon *m, uint64_t start, uint64_t end);
void umon_unregister(struct umon *m, uint64_t start, uint64_t end);

/* Called by the fault path before it populates [start, end) of a region:
 * make sure mappings created there after registration are registered too.
 * Must be cheap when nothing changed. Errors as umon_register. */
int umon_prepare_map(struct umon *m, uint64_t start, uint64_t end);

#endif

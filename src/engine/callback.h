/* SPDX-License-Identifier: MIT */
/*
 * callback.h - whether the calling thread is inside a driver callback of
 * any engine context, and the rule that follows (-EDEADLK). The engine's
 * entry points check it (internal.h includes this). Engine-internal: the
 * layers above ask uodp_in_callback() (uodp.h), which returns the same
 * state (the device checks it once before an operation that would end in
 * engine calls refusing it half way: src/device/device.h).
 */
#ifndef UODP_ENGINE_CALLBACK_H
#define UODP_ENGINE_CALLBACK_H

#include <errno.h>
#include <stdbool.h>

#include "uodp.h"

/* uodp_in_callback() returns engine_in_callback as is: the values are the
 * public ones. */
enum {
	CB_NONE = 0,
	CB_LOCKED = UODP_CALLBACK_LOCKED,
	CB_DEFERRED = UODP_CALLBACK_DEFERRED
};
/* CB_*; initial-exec as ulock_self_tag (lib/lock.h): every invalidation
 * saves and sets it around the callback */
extern __thread int engine_in_callback
	__attribute__((tls_model("initial-exec")));
/* -EDEADLK when a call that may wait for invalidations (or take the tree
 * write lock) is made from a callback; deferred callbacks hold no lock
 * and may register and release (@tree_ok).
 *
 * Manual invalidations (uodp_invalidate_range*()) are refused from every
 * callback, fence and unfence included, whatever the context and range,
 * although one on another context or on memory no region of the calling
 * one covers looks harmless. It is not, and the engine cannot tell the
 * harmless case: the nested walk calls that context's driver on this
 * thread, which holds the outer walk's tree read lock and possibly the
 * outer region's lock (callbacks may take it) and the driver's own
 * locks, and on the monitor thread the notifier's subscriber list: a
 * UODP_CTX_DEFERRED target's callback, allowed to take locks held across
 * uodp_umem_get() (which may wait for the monitor), would then run on the
 * monitor thread and wait for itself; a same-context nested drop takes a
 * region lock the callback may hold (not recursive); a driver's
 * invalidate is not required to be reentrant. So the rule is one bit of
 * thread state, checked before anything changes; the driver records the
 * range and invalidates once its callback returned (as the registration
 * caches of libfabric and UCX queue what their monitors report). */
static inline int callback_check(bool tree_ok)
{
	if (engine_in_callback == CB_LOCKED ||
	    (engine_in_callback == CB_DEFERRED && !tree_ok))
		return -EDEADLK;
	return 0;
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * callback.h - whether the calling thread is inside a driver callback of
 * any engine context, and the rule that follows (-EDEADLK). The engine's
 * entry points check it (internal.h includes this); so does the device
 * layer above, before the calls that would end in engine calls refusing
 * it half way (a deregistration whose uodp_umem_release() fails after the
 * key is gone, src/device/mr.c): the state is the thread's, not a
 * context's, so one check before anything changes answers for all the
 * engine calls the operation would make.
 */
#ifndef UODP_ENGINE_CALLBACK_H
#define UODP_ENGINE_CALLBACK_H

#include <errno.h>
#include <stdbool.h>

enum {
	CB_NONE = 0,
	CB_LOCKED = 1,
	CB_DEFERRED = 2
};
/* CB_*; initial-exec as ulock_self_tag (lib/lock.h): every invalidation
 * saves and sets it around the callback */
extern __thread int engine_in_callback
	__attribute__((tls_model("initial-exec")));
/* -EDEADLK when a call that may wait for invalidations (or take the tree
 * write lock) is made from a callback; deferred callbacks hold no lock
 * and may register and release (@tree_ok). */
static inline int callback_check(bool tree_ok)
{
	if (engine_in_callback == CB_LOCKED ||
	    (engine_in_callback == CB_DEFERRED && !tree_ok))
		return -EDEADLK;
	return 0;
}

#endif

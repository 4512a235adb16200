/* SPDX-License-Identifier: MIT */
/*
 * watchset.h - the adapters' table of watches by (addr, len).
 *
 * Role: libuodp-ofi and libuodp-ucm both receive "watch [addr, len)" and
 * "stop watching [addr, len)" from a registration cache that names a watch
 * by its range alone, and may watch the same range more than once (two
 * caches, or an entry flushed and re-created before its old watch went).
 * Each watch is a monitor-only region (UODP_ACCESS_WATCH) of its own, so
 * that it watches the mapping there now; the set keeps every watch of a
 * range, oldest first, and a removal takes the oldest. Compiled into each
 * adapter (hidden symbols); private to adapters/.
 *
 * Locking: one mutex per set, held only around the hash chains, never
 * across a uodp call: registration may take system calls, and a release
 * may come from the adapter's own deferred callback (relay thread) while
 * another thread registers.
 */
#ifndef UODP_ADP_WATCHSET_H
#define UODP_ADP_WATCHSET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "uodp.h"

/* Why 4096 buckets: a cache holds a few thousand entries (libfabric's
 * FI_MR_CACHE_MAX_COUNT is 1024 per domain; an MPI rank's UCX rcache a
 * few thousand regions), so chains stay short; 32 KiB of heads. */
#define WATCHSET_BUCKETS 4096

struct watchset_node;

struct watchset {
	pthread_mutex_t lock; /* the chains; a leaf lock */
	struct watchset_node *buckets[WATCHSET_BUCKETS];
	atomic_uint_fast64_t count; /* watches in the set */
};

#define WATCHSET_INIT                             \
	{                                         \
		.lock = PTHREAD_MUTEX_INITIALIZER \
	}

/* Watch [addr, addr + len) on @ctx with a region of its own whose priv is
 * @priv. 0, or uodp_umem_get()'s negative errno, or -ENOMEM; the set is
 * unchanged on error. */
int watchset_add(struct watchset *ws, struct uodp_ctx *ctx, void *addr,
		 size_t len, void *priv);

/* Stop the oldest watch of exactly [addr, addr + len): its region is
 * released. 0, or -ENOENT when the set has none. May run from a deferred
 * callback of the region's context. */
int watchset_remove(struct watchset *ws, const void *addr, size_t len);

/* Release every watch; their number. */
uint64_t watchset_clear(struct watchset *ws);

#endif

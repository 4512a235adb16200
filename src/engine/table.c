/* SPDX-License-Identifier: MIT */
/*
 * table.c - the memory discipline of the engine's sparse tables (a region's
 * translation table, the process's pin counts).
 *
 * Those tables are guarded by locks the monitor thread may wait for (the
 * region lock, the pin lock), so nothing may call malloc() or free() with
 * them held: a thread blocked in free() on a userfaultfd event (a trimmed
 * registered heap) holds its arena lock until the monitor thread reads the
 * event; if the monitor waited for our lock while we waited for that arena
 * lock, nobody would move. The tables therefore run in no_alloc mode: a
 * write that needs nodes fails, table_refill() allocates them with the
 * lock dropped, and emptied nodes wait on the graveyard until a thread that
 * holds no such lock frees them (table_trim() + pgt_free_nodes()).
 */
#include <errno.h>
#include <stdlib.h>

#include "engine/internal.h"

int table_refill(struct pgt *t, struct ulock *lock, uint64_t idx)
{
	size_t sizes[PGT_MAX_PATH];
	void *nodes[PGT_MAX_PATH];
	unsigned n = pgt_need(t, idx, sizes), i;
	int r = 0;

	ulock_unlock(lock);
	for (i = 0; i < n; i++) {
		nodes[i] = pgt_node_malloc(sizes[i]);
		if (!nodes[i]) {
			while (i-- > 0)
				free(nodes[i]);
			r = -ENOMEM;
			break;
		}
	}
	ulock_lock(lock);
	for (i = 0; !r && i < n; i++)
		pgt_stock(t, nodes[i], sizes[i]);
	return r;
}

void *table_trim(struct pgt *t)
{
	if (t->cached_bytes > t->bytes + TABLE_SPARE_BYTES)
		return pgt_take_graveyard(t);
	return NULL;
}

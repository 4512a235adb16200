/* SPDX-License-Identifier: MIT */
/*
 * dpt.c - the device page table: what the device may access, per page.
 *
 * Separate from the engine's translation table the way an adapter's MTT is
 * separate from the umem. It is not the engine's sparse table (lib/
 * pgtable) because the invalidate callback, which clears it, may run on the
 * kernel monitor's thread, where free() is forbidden (it could trim a heap
 * registered with userfaultfd and deadlock). So leaves are allocated by
 * faults and only freed with the table. A fault allocates them before it
 * takes any lock (dpt_need_leaf(), then dpt_add_leaf() under the write
 * lock): the install runs under the engine's region lock and the pt_lock,
 * both of which an invalidation waits for, so it must not call malloc()
 * either (an allocator blocked on a userfaultfd event waits for the
 * monitor; see src/engine/table.c). dpt_set() therefore never allocates.
 * The directory of a region up to 1 GiB (512 leaves, one 4 KiB page of
 * pointers) comes from the heap, zeroed: no system call per registration.
 * A larger one is reserved with mmap(MAP_NORESERVE): O(1) at registration
 * whatever the region's size, and backed only where leaves exist. [lo, hi) bounds the leaves ever
 * allocated so that clearing a huge range scans only the used part.
 * Not thread safe: the span's pt_lock protects it (but dpt_need_leaf()).
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "device/device.h"

/* Directories up to this size come from calloc(): one page of pointers,
 * which the allocator serves from its arenas (larger calloc()s are mmap()s
 * anyway, and zeroing a large directory would cost O(size)). */
#define DPT_DIR_HEAP_MAX 4096u

int dpt_init(struct dpt *t, uint64_t npages)
{
	uint64_t nleaves = (npages + DPT_LEAF_SLOTS - 1) >> DPT_LEAF_SHIFT;
	size_t bytes = (size_t)nleaves * sizeof(uint64_t *);
	void *dir;

	if (bytes <= DPT_DIR_HEAP_MAX) {
		/* Most regions: the directory from the heap (no system
		 * call per registration, issue 11). */
		dir = calloc(1, bytes ? bytes : sizeof(uint64_t *));
		if (!dir)
			return -ENOMEM;
		t->dir_mapped = false;
	} else {
		dir = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (dir == MAP_FAILED)
			return -ENOMEM;
		t->dir_mapped = true;
	}
	t->dir = dir;
	t->dir_bytes = bytes;
	t->npages = npages;
	t->used = 0;
	t->leaves = 0;
	t->lo = nleaves;
	t->hi = 0;
	return 0;
}

void dpt_destroy(struct dpt *t)
{
	uint64_t i;

	if (!t->dir)
		return;
	for (i = t->lo; i < t->hi; i++)
		free(t->dir[i]);
	if (t->dir_mapped)
		munmap(t->dir, t->dir_bytes);
	else
		free(t->dir);
	t->dir = NULL;
}

bool dpt_need_leaf(const struct dpt *t, uint64_t idx)
{
	/* Lock-free: pairs with the release store of dpt_add_leaf(). */
	return !__atomic_load_n(&t->dir[idx >> DPT_LEAF_SHIFT],
				__ATOMIC_ACQUIRE);
}

bool dpt_add_leaf(struct dpt *t, uint64_t idx, uint64_t *leaf)
{
	uint64_t li = idx >> DPT_LEAF_SHIFT;

	if (t->dir[li])
		return false;
	/* Published for dpt_need_leaf(), which takes no lock. */
	__atomic_store_n(&t->dir[li], leaf, __ATOMIC_RELEASE);
	t->leaves++;
	if (li < t->lo)
		t->lo = li;
	if (li + 1 > t->hi)
		t->hi = li + 1;
	return true;
}

int dpt_set(struct dpt *t, uint64_t idx, uint64_t word)
{
	uint64_t *leaf = t->dir[idx >> DPT_LEAF_SHIFT];
	uint64_t *slot;

	if (!leaf)
		return -ENOMEM; /* not reserved: the caller's bug */
	slot = &leaf[idx & (DPT_LEAF_SLOTS - 1)];
	t->used += !*slot;
	__atomic_store_n(slot, word, __ATOMIC_RELAXED); /* dpt_peek() */
	return 0;
}

uint64_t dpt_clear(struct dpt *t, uint64_t from, uint64_t to)
{
	uint64_t li, i, first, last, n = 0;
	uint64_t *leaf;

	if (to > t->npages)
		to = t->npages;
	if (from >= to || !t->used)
		return 0;
	first = from >> DPT_LEAF_SHIFT;
	last = (to - 1) >> DPT_LEAF_SHIFT;
	if (first < t->lo)
		first = t->lo;
	if (t->hi && last > t->hi - 1)
		last = t->hi - 1;
	for (li = first; li <= last && li < t->hi; li++) {
		uint64_t base = li << DPT_LEAF_SHIFT, a, b;

		leaf = t->dir[li];
		if (!leaf)
			continue;
		a = from > base ? from - base : 0;
		b = to - base < DPT_LEAF_SLOTS ? to - base : DPT_LEAF_SLOTS;
		for (i = a; i < b; i++) {
			if (leaf[i]) {
				/* atomic for dpt_peek(), which takes no lock */
				__atomic_store_n(&leaf[i], 0, __ATOMIC_RELAXED);
				n++;
			}
		}
	}
	t->used -= n;
	return n;
}

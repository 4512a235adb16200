/* SPDX-License-Identifier: MIT */
/*
 * mr.c - memory regions by key: registration, lookup with references,
 * deregistration, and the implicit region's lazily created children.
 *
 * A key is (slot + 1) << 8 | generation: the slot indexes dev->keys, the
 * generation (bumped when a slot is reused) makes a stale key fail with
 * -ENOENT instead of reaching the next region in its slot. A generation
 * never wraps: a slot that issued its 255th key is retired when that key
 * is deregistered (never reused), so no key value is ever issued twice by
 * a device and a dead key stays dead (issue 12, finding 3). The price is
 * a finite supply, (2^24 - 1) slots x 255 keys = ~4.3e9 registrations per
 * device, after which registration fails with -ENOSPC; the table grows
 * by one 13-byte slot per 255 registrations at worst.
 *
 * Registration and deregistration are O(1) in the number of keys (issue
 * 11): free slots form a stack (dev->free_next), the most recently freed
 * on top (its table line is likely cached); the table grows by doubling. A lookup takes
 * a reference (dmr->refs) under the key table's read lock; deregistration
 * removes the key under the write lock, so no new reference can be taken,
 * then waits for the references to drain before releasing engine regions.
 *
 * The implicit region covers [0, IMPLICIT_TOP) with one engine region
 * (span) per aligned 1 GiB, created when a fault first reaches it and
 * watched lazily (UODP_ACCESS_LAZY_WATCH: the kernel monitor registers
 * what the child's faults reach, not the whole GiB). The
 * child array is reserved with mmap(MAP_NORESERVE) (2^17 pointers, backed
 * only where used). Children are referenced by operations that use them
 * and by queued faults; uodp_dev_mr_trim() releases those with no
 * reference and an empty device page table, and so does the creation of a
 * child once IMPLICIT_AUTO_TRIM exist (the invalidate callback, which
 * empties them, may not free anything).
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "device/device.h"

/* Slot + 1 must fit the 24 bits above the generation: 2^24 - 1 slots. */
#define KEY_SLOTS_MAX ((1u << 24) - 1)
#define KEY_GEN_MAX 255u /* a slot retires after issuing this generation */
#define SLOT_NONE UINT32_MAX
/* Creating a child when this many exist first releases the idle ones. */
#define IMPLICIT_AUTO_TRIM 16

static uint32_t key_make(uint32_t slot, uint8_t gen)
{
	return ((slot + 1) << 8) | gen;
}

/* ------------------------------------------------------------------------ */
/* Spans                                                                     */
/* ------------------------------------------------------------------------ */

static void span_free(struct span *sp)
{
	if (sp->umem)
		uodp_umem_release(sp->umem);
	dpt_destroy(&sp->dpt);
	pthread_rwlock_destroy(&sp->pt_lock);
	free(sp);
}

/* Register [start, end) (page aligned) with the engine and attach a device
 * page table. */
static int span_create(struct uodp_dev *dev, uint64_t start, uint64_t end,
		       unsigned umem_access, struct span **out)
{
	pthread_rwlockattr_t a;
	struct span *sp;
	int r;

	sp = calloc(1, sizeof(*sp));
	if (!sp)
		return -ENOMEM;
	sp->dev = dev;
	sp->start = start;
	sp->end = end;
	sp->umem_access = umem_access;
	atomic_init(&sp->refs, 0);
	/* Writer preference: an invalidation waiting for the lock must not
	 * be starved by a stream of device accesses. Readers never nest. */
	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setkind_np(
		&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	r = pthread_rwlock_init(&sp->pt_lock, &a);
	pthread_rwlockattr_destroy(&a);
	if (r) {
		free(sp);
		return -ENOMEM;
	}
	r = dpt_init(&sp->dpt, (end - start) >> dev->page_shift);
	if (r)
		goto err_lock;
	r = uodp_umem_get(dev->ctx, (void *)(uintptr_t)start, end - start,
			  umem_access, &sp->umem);
	if (r) {
		r = dev_engine_error(r);
		goto err_dpt;
	}
	/* The bounds first: a callback that finds the span through the
	 * region's priv reads them (it may run as soon as priv is set).
	 * priv is set before anyone can fault on the span. */
	sp->start = (uintptr_t)uodp_umem_start(sp->umem);
	sp->end = (uintptr_t)uodp_umem_end(sp->umem);
	uodp_umem_set_priv(sp->umem, sp);
	*out = sp;
	return 0;
err_dpt:
	dpt_destroy(&sp->dpt);
err_lock:
	pthread_rwlock_destroy(&sp->pt_lock);
	free(sp);
	return r;
}

static unsigned umem_access_of(unsigned access)
{
	unsigned a = UODP_ACCESS_READ;

	if (access & (UODP_DEV_ACCESS_WRITE | UODP_DEV_ACCESS_ATOMIC))
		a |= UODP_ACCESS_WRITE;
	return a;
}

/* ------------------------------------------------------------------------ */
/* The key table                                                             */
/* ------------------------------------------------------------------------ */

static void dmr_free(struct uodp_dev *dev, struct dmr *mr)
{
	uint64_t i, n;

	if (mr->span)
		span_free(mr->span);
	if (mr->kids) {
		n = mr->kids_bytes / sizeof(*mr->kids);
		for (i = 0; i < n && mr->nkids; i++) {
			if (mr->kids[i]) {
				span_free(mr->kids[i]);
				mr->nkids--;
				dev_count(dev, ST_CHILDREN_RELEASED, 1);
			}
		}
		munmap(mr->kids, mr->kids_bytes);
		pthread_rwlock_destroy(&mr->kids_lock);
	}
	free(mr);
}

/* Grow the table to hold @cap slots; mr_lock held for writing. */
static int key_grow(struct uodp_dev *dev, uint32_t cap)
{
	struct dmr **k;
	uint32_t *f;
	uint8_t *g;

	/* Each array is replaced only once all three are allocated, so a
	 * failure leaves the table as it was. */
	k = realloc(dev->keys, (size_t)cap * sizeof(*k));
	if (!k)
		return -ENOMEM;
	dev->keys = k;
	g = realloc(dev->gens, cap);
	if (!g)
		return -ENOMEM;
	dev->gens = g;
	f = realloc(dev->free_next, (size_t)cap * sizeof(*f));
	if (!f)
		return -ENOMEM;
	dev->free_next = f;
	dev->cap = cap;
	return 0;
}

/* Take a free slot (or a new one) and publish @mr there. O(1) amortised:
 * the table doubles when full. */
static int key_insert(struct uodp_dev *dev, struct dmr *mr)
{
	uint32_t slot, cap;
	int r = 0;

	pthread_rwlock_wrlock(&dev->mr_lock);
	if (dev->free_top != SLOT_NONE) {
		slot = dev->free_top;
		dev->free_top = dev->free_next[slot];
	} else {
		slot = dev->nslots;
		if (slot == KEY_SLOTS_MAX) {
			r = -ENOSPC;
			goto out;
		}
		if (slot == dev->cap) {
			cap = dev->cap ? dev->cap * 2 : 16;
			if (cap > KEY_SLOTS_MAX)
				cap = KEY_SLOTS_MAX;
			r = key_grow(dev, cap);
			if (r)
				goto out;
		}
		dev->keys[slot] = NULL;
		dev->gens[slot] = 0;
		dev->nslots++;
	}
	dev->gens[slot]++;
	mr->key = key_make(slot, dev->gens[slot]);
	dev->keys[slot] = mr;
out:
	pthread_rwlock_unlock(&dev->mr_lock);
	return r;
}

/* Give @slot back (mr_lock held for writing), unless it issued its last
 * generation: then it is retired for good. */
static void slot_free_locked(struct uodp_dev *dev, uint32_t slot)
{
	dev->keys[slot] = NULL;
	if (dev->gens[slot] >= KEY_GEN_MAX)
		return;
	dev->free_next[slot] = dev->free_top;
	dev->free_top = slot;
}

struct dmr *mr_get(struct uodp_dev *dev, uint32_t key)
{
	uint32_t slot = (key >> 8) - 1;
	struct dmr *mr = NULL;

	if (!(key >> 8))
		return NULL;
	pthread_rwlock_rdlock(&dev->mr_lock);
	if (slot < dev->nslots && dev->keys[slot] &&
	    dev->keys[slot]->key == key) {
		mr = dev->keys[slot];
		atomic_fetch_add(&mr->refs, 1);
	}
	pthread_rwlock_unlock(&dev->mr_lock);
	return mr;
}

/*
 * A deregistration owns the key table's reference and waits until the
 * count falls to 1 (dmr_retire()), so the wakeup is due when a put leaves
 * 1, not 0. @mr may be freed as soon as the count falls: after the
 * decrement only @dev is touched. The seq_cst pair (decrement, then load
 * of retiring here; increment of retiring, then load of the count there)
 * guarantees that one side sees the other: either the retiring thread
 * sees the new count, or this put sees it retiring and wakes it under
 * idle_lock (which it holds from its check until it sleeps).
 */
void mr_put(struct uodp_dev *dev, struct dmr *mr)
{
	long old = atomic_fetch_sub(&mr->refs, 1);

	if (old <= 2 && atomic_load(&dev->retiring)) {
		pthread_mutex_lock(&dev->idle_lock);
		pthread_cond_broadcast(&dev->idle_cond);
		pthread_mutex_unlock(&dev->idle_lock);
	}
}

int mr_check_range(const struct dmr *mr, uint64_t va, uint64_t len)
{
	if (va + len < va || va < mr->start || va + len > mr->end)
		return -ERANGE;
	return 0;
}

static int reg_common(struct uodp_dev *dev, unsigned access, uint32_t *key)
{
	int r = dev_check(dev);

	if (r)
		return r;
	if (!key || !access || (access & ~UODP_DEV_ACCESS_ALL))
		return -EINVAL;
	return 0;
}

UODP_API int uodp_dev_reg_mr(struct uodp_dev *dev, uint64_t addr, uint64_t len,
			     unsigned access, uint32_t *key)
{
	uint64_t start, end, pmask;
	struct dmr *mr;
	int r;

	r = reg_common(dev, access, key);
	if (r)
		return r;
	if (!len || addr + len < addr)
		return -EINVAL;
	pmask = dev->page_size - 1;
	start = addr & ~pmask;
	end = (addr + len + pmask) & ~pmask;
	if (end < addr + len)
		return -EINVAL;
	mr = calloc(1, sizeof(*mr));
	if (!mr)
		return -ENOMEM;
	mr->access = access;
	mr->start = addr;
	mr->end = addr + len;
	atomic_init(&mr->refs, 1);
	r = span_create(dev, start, end, umem_access_of(access), &mr->span);
	if (r)
		goto err;
	r = key_insert(dev, mr);
	if (r)
		goto err;
	*key = mr->key;
	return 0;
err:
	dmr_free(dev, mr);
	return r;
}

UODP_API int uodp_dev_reg_implicit_mr(struct uodp_dev *dev, unsigned access,
				      uint32_t *key)
{
	struct dmr *mr;
	void *kids;
	int r;

	r = reg_common(dev, access, key);
	if (r)
		return r;
	mr = calloc(1, sizeof(*mr));
	if (!mr)
		return -ENOMEM;
	mr->access = access;
	mr->implicit = true;
	mr->start = 0;
	mr->end = IMPLICIT_TOP - dev->page_size;
	atomic_init(&mr->refs, 1);
	mr->kids_bytes = (IMPLICIT_TOP >> IMPLICIT_SHIFT) * sizeof(*mr->kids);
	kids = mmap(NULL, mr->kids_bytes, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (kids == MAP_FAILED) {
		free(mr);
		return -ENOMEM;
	}
	mr->kids = kids;
	if (pthread_rwlock_init(&mr->kids_lock, NULL)) {
		munmap(kids, mr->kids_bytes);
		free(mr);
		return -ENOMEM;
	}
	r = key_insert(dev, mr);
	if (r) {
		dmr_free(dev, mr);
		return r;
	}
	*key = mr->key;
	return 0;
}

/* Remove @key from the table; the table's reference goes to the caller. */
static struct dmr *key_remove(struct uodp_dev *dev, uint32_t key)
{
	uint32_t slot = (key >> 8) - 1;
	struct dmr *mr = NULL;

	if (!(key >> 8))
		return NULL;
	pthread_rwlock_wrlock(&dev->mr_lock);
	if (slot < dev->nslots && dev->keys[slot] &&
	    dev->keys[slot]->key == key) {
		mr = dev->keys[slot];
		slot_free_locked(dev, slot);
	}
	pthread_rwlock_unlock(&dev->mr_lock);
	return mr;
}

/* Wait until only the caller's reference is left, then free. */
static void dmr_retire(struct uodp_dev *dev, struct dmr *mr)
{
	atomic_fetch_add(&dev->retiring, 1); /* before the count is read */
	pthread_mutex_lock(&dev->idle_lock);
	while (atomic_load(&mr->refs) > 1)
		pthread_cond_wait(&dev->idle_cond, &dev->idle_lock);
	pthread_mutex_unlock(&dev->idle_lock);
	atomic_fetch_sub(&dev->retiring, 1);
	dmr_free(dev, mr);
}

UODP_API int uodp_dev_dereg_mr(struct uodp_dev *dev, uint32_t key)
{
	struct dmr *mr;
	int r = dev_check(dev);

	if (r)
		return r;
	/* From a driver callback the engine refuses the release (and the
	 * wait for the key's users could be a wait for that very
	 * callback): refuse before the key goes, not after (the span would
	 * be freed under a region still registered). */
	r = callback_check(true);
	if (r)
		return r;
	mr = key_remove(dev, key);
	if (!mr)
		return -ENOENT;
	r = dev_nocancel_begin(); /* waits for the key's users */
	dmr_retire(dev, mr);
	dev_nocancel_end(r);
	return 0;
}

void mr_release_all(struct uodp_dev *dev)
{
	uint32_t slot;
	struct dmr *mr;

	for (slot = 0; slot < dev->nslots; slot++) {
		pthread_rwlock_wrlock(&dev->mr_lock);
		mr = dev->keys[slot];
		dev->keys[slot] = NULL;
		pthread_rwlock_unlock(&dev->mr_lock);
		if (mr)
			dmr_retire(dev, mr);
	}
	free(dev->keys);
	free(dev->gens);
	free(dev->free_next);
	dev->keys = NULL;
	dev->gens = NULL;
	dev->free_next = NULL;
	dev->free_top = SLOT_NONE;
	dev->nslots = dev->cap = 0;
}

/* ------------------------------------------------------------------------ */
/* Spans of a region, implicit children                                      */
/* ------------------------------------------------------------------------ */

static int kids_trim_locked(struct uodp_dev *dev, struct dmr *mr);

struct span *mr_span_get(struct uodp_dev *dev, struct dmr *mr, uint64_t va,
			 bool create, int *err)
{
	uint64_t idx = va >> IMPLICIT_SHIFT, start, end;
	struct span *sp;
	int r;

	*err = 0;
	if (!mr->implicit)
		return mr->span; /* lives as long as the dmr reference */
	pthread_rwlock_rdlock(&mr->kids_lock);
	sp = mr->kids[idx];
	if (sp)
		atomic_fetch_add(&sp->refs, 1);
	pthread_rwlock_unlock(&mr->kids_lock);
	if (sp || !create)
		return sp;
	/* Creating registers and may trim (release) idle children, which a
	 * driver callback may not (see dereg): fail as the registration
	 * would, before the trim. */
	*err = callback_check(true);
	if (*err)
		return NULL;

	pthread_rwlock_wrlock(&mr->kids_lock);
	sp = mr->kids[idx];
	if (!sp && mr->nkids >= IMPLICIT_AUTO_TRIM)
		kids_trim_locked(dev, mr); /* creation is rare: tidy up */
	if (!sp) {
		start = idx << IMPLICIT_SHIFT;
		end = start + (UINT64_C(1) << IMPLICIT_SHIFT);
		if (start < dev->page_size)
			start = dev->page_size; /* page 0 is never mapped */
		if (end > mr->end)
			end = mr->end;
		/* Watched lazily: the monitor registers only the mappings
		 * the child's faults reach, so memory it refuses elsewhere
		 * in the GiB (SysV shared memory) fails only the accesses
		 * that touch it, and the rest of the GiB (malloc arenas,
		 * thread stacks, a sanitizer's buffers) stays unwatched. */
		r = span_create(dev, start, end,
				umem_access_of(mr->access) |
					UODP_ACCESS_LAZY_WATCH,
				&sp);
		if (r) {
			pthread_rwlock_unlock(&mr->kids_lock);
			*err = r;
			return NULL;
		}
		mr->kids[idx] = sp;
		mr->nkids++;
		dev_count(dev, ST_CHILDREN_CREATED, 1);
	}
	atomic_fetch_add(&sp->refs, 1);
	pthread_rwlock_unlock(&mr->kids_lock);
	return sp;
}

void mr_span_put(struct dmr *mr, struct span *sp)
{
	if (mr->implicit && sp)
		atomic_fetch_sub(&sp->refs, 1);
}

/* Release the idle children (no reference, empty device page table);
 * kids_lock held for writing, so no reference can appear meanwhile. */
static int kids_trim_locked(struct uodp_dev *dev, struct dmr *mr)
{
	uint64_t i, n = mr->kids_bytes / sizeof(*mr->kids), left = mr->nkids;
	struct span *sp;
	int freed = 0;
	bool idle;

	for (i = 0; i < n && left; i++) {
		sp = mr->kids[i];
		if (!sp)
			continue;
		left--;
		pthread_rwlock_rdlock(&sp->pt_lock);
		idle = !sp->dpt.used && !atomic_load(&sp->refs);
		pthread_rwlock_unlock(&sp->pt_lock);
		if (!idle)
			continue;
		mr->kids[i] = NULL;
		mr->nkids--;
		span_free(sp);
		dev_count(dev, ST_CHILDREN_RELEASED, 1);
		freed++;
	}
	return freed;
}

UODP_API int uodp_dev_mr_trim(struct uodp_dev *dev, uint32_t key)
{
	struct dmr *mr;
	int r = dev_check(dev), freed = 0;

	if (r)
		return r;
	r = callback_check(true); /* it releases children: see dereg */
	if (r)
		return r;
	mr = mr_get(dev, key);
	if (!mr)
		return -ENOENT;
	if (mr->implicit) {
		pthread_rwlock_wrlock(&mr->kids_lock);
		freed = kids_trim_locked(dev, mr);
		pthread_rwlock_unlock(&mr->kids_lock);
	}
	mr_put(dev, mr);
	return freed;
}

UODP_API int64_t uodp_dev_mr_children(struct uodp_dev *dev, uint32_t key)
{
	struct dmr *mr;
	int64_t n = 1;
	int r = dev_check(dev);

	if (r)
		return r;
	mr = mr_get(dev, key);
	if (!mr)
		return -ENOENT;
	if (mr->implicit) {
		pthread_rwlock_rdlock(&mr->kids_lock);
		n = (int64_t)mr->nkids;
		pthread_rwlock_unlock(&mr->kids_lock);
	}
	mr_put(dev, mr);
	return n;
}

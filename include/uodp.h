/* SPDX-License-Identifier: MIT */
/*
 * uodp.h - the on-demand paging engine.
 *
 * A context follows one address space (this process). Memory regions
 * ("umems") are registered in O(1), pages are mapped for a device only when
 * the device faults on them, and invalidations tell the driver to drop its
 * translations when the address space changes. A sequence/count protocol
 * guarantees that a fault racing an invalidation never installs a stale
 * translation:
 *
 *     again:
 *         uodp_umem_wait(umem);                  // no invalidation running
 *         seq = uodp_umem_read_seq(umem);
 *         n = uodp_umem_map(umem, va, len, access, seq);
 *         if (n == -EAGAIN) goto again;
 *         uodp_umem_lock(umem);
 *         if (uodp_umem_retry(umem, seq)) { uodp_umem_unlock(umem); goto again; }
 *         ... copy uodp_umem_entry() values into the device page table ...
 *         uodp_umem_unlock(umem);
 *
 * Conventions for every function below:
 *  - errors are returned as negative errno values and leave all state as it
 *    was; nothing is reported through errno;
 *  - addresses are process virtual addresses, pages are the system page size
 *    (sysconf(_SC_PAGESIZE)); ranges are half open [start, end);
 *  - every function may be called from any thread unless it says otherwise;
 *  - functions that change or wait on a context or region (those listing
 *    -ECHILD) fail with -ECHILD when called in a child process forked after
 *    the context was created: the child has another address space, and the
 *    engine refuses it, as Linux refuses ODP regions in child processes.
 *    Accessors and the region lock must not be used in such a child at all
 *    (a lock held by another thread at fork() stays held there).
 */
#ifndef UODP_H
#define UODP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UODP_API __attribute__((visibility("default")))
#else
#define UODP_API
#endif

struct uodp_ctx;
struct uodp_umem;

/* ------------------------------------------------------------------------ */
/* Contexts                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * Driver callbacks. All are optional; @priv is passed back to each.
 *
 * invalidate_range: the translations of [start, end) (clamped to @umem and
 *   page aligned) must be dropped from the driver's own page table before the
 *   callback returns, and device accesses to those pages that are in flight
 *   must have completed. The engine drops its own entries for the range right
 *   after the callback returns (writable ones go to the dirty set). The
 *   callback runs on the thread that invalidates (the notifier's monitor
 *   thread, or the caller of uodp_invalidate_range*()), with no engine lock
 *   held but the context's region-tree read lock. It may call uodp_umem_lock/
 *   unlock/unmap/entry/retry on @umem. It must not call uodp_umem_get/
 *   release, uodp_ctx_destroy or uodp_umem_wait, nor wait for a thread that
 *   is inside uodp_umem_map/get/release (those may be waiting for this
 *   callback to return: deadlock) - so it waits for device *data* accesses
 *   in flight, never for faults, which the retry protocol already stops.
 *   On no thread may it allocate, free, munmap or madvise memory that may be
 *   registered: the kernel would make it wait for the monitor thread, which
 *   may be waiting for it.
 *   NULL selects on-demand pinning: each page stays mlock()ed from the time
 *   it is mapped until it is unmapped or its region released, so it cannot
 *   be swapped or migrated under the device.
 *
 * fence / unfence: strict ordering (UODP_CTX_STRICT) only. fence asks the
 *   driver to pause new device accesses and to wait for those in flight;
 *   unfence lets them go on. Same rules as invalidate_range.
 */
struct uodp_ctx_ops {
	void (*invalidate_range)(struct uodp_umem *umem, uint64_t start,
				 uint64_t end, void *priv);
	void (*fence)(struct uodp_ctx *ctx, void *priv);
	void (*unfence)(struct uodp_ctx *ctx, void *priv);
	void *priv;
};

/* Invalidations come only through uodp_invalidate_range*(); no monitor. */
#define UODP_CTX_MANUAL (1u << 0)
/* With the monitor: fence the context before reading a kernel event, so
 * that once munmap() returns no device access uses the old translation. */
#define UODP_CTX_STRICT (1u << 1)
/* Record no page frames: skips one /proc/self/pagemap read per batch of up
 * to 512 pages (only done where frames are visible, with CAP_SYS_ADMIN).
 * uodp_umem_pfn() then returns 0 and a frame that changed under a live
 * entry goes unnoticed - harmless for drivers that, like the software
 * device, access memory by virtual address. */
#define UODP_CTX_NO_FRAMES (1u << 2)
#define UODP_CTX_FLAGS_ALL \
	(UODP_CTX_MANUAL | UODP_CTX_STRICT | UODP_CTX_NO_FRAMES)

/*
 * Create a context for this process's address space. @ops may be NULL (no
 * callbacks: pinning mode); it is copied.
 * Errors: -EINVAL (@out NULL, unknown flag, STRICT with MANUAL, STRICT without
 * fence and unfence), -ENOSYS (the kernel lacks MADV_POPULATE_READ/WRITE,
 * Linux < 5.14), -ENOMEM.
 */
UODP_API int uodp_ctx_create(const struct uodp_ctx_ops *ops, unsigned flags,
			     struct uodp_ctx **out);

/*
 * Tear a context down. Live regions are invalidated as a whole (the driver's
 * invalidate_range sees each one), their entries dropped, and they are marked
 * dying: from then on uodp_umem_map() fails with -ENODEV and uodp_umem_wait()
 * returns -ENODEV at once. They must still be released with
 * uodp_umem_release(); the context's memory goes with the last of them.
 * The context pointer must not be used after this call (so it must not be
 * destroyed twice, nor from two threads). Must not be called from an
 * invalidate_range callback.
 * Errors: -EINVAL (NULL or not a context), -ECHILD.
 */
UODP_API int uodp_ctx_destroy(struct uodp_ctx *ctx);

/* ------------------------------------------------------------------------ */
/* Regions                                                                   */
/* ------------------------------------------------------------------------ */

#define UODP_ACCESS_READ (1u << 0)
#define UODP_ACCESS_WRITE (1u << 1)
#define UODP_ACCESS_ALL (UODP_ACCESS_READ | UODP_ACCESS_WRITE)

/*
 * Register [addr, addr + len) with the given access rights. O(1) in @len:
 * nothing is allocated per page and the memory need not be mapped yet. The
 * region covers whole pages: @addr is rounded down and @addr + @len up to
 * page boundaries.
 * Errors: -EINVAL (@ctx or @out NULL, @len 0, @addr + @len overflows or is
 * beyond the user address space, @access 0 or unknown bits), -ENODEV (the
 * context is being destroyed), -ECHILD, -ENOMEM; with the kernel monitor also
 * -ENOSYS/-EPERM/-EACCES (userfaultfd unavailable: use UODP_CTX_MANUAL),
 * -EBUSY (another userfaultfd has the range), -EMFILE/-ENFILE (no file
 * descriptor for it), -EAGAIN (no thread for the monitor).
 */
UODP_API int uodp_umem_get(struct uodp_ctx *ctx, uint64_t addr, uint64_t len,
			   unsigned access, struct uodp_umem **out);

/*
 * Release a region: its entries are dropped (writable ones first go to the
 * dirty set, which is freed with the region; pinned pages are unlocked), it
 * leaves the context's region tree and its memory is freed. The driver must
 * have stopped device accesses to it. Must not be called from an
 * invalidate_range callback.
 * Errors: -EINVAL (NULL or not a live region), -ECHILD.
 */
UODP_API int uodp_umem_release(struct uodp_umem *umem);

/* Page-aligned bounds, access rights, context of a region. */
UODP_API uint64_t uodp_umem_start(const struct uodp_umem *umem);
UODP_API uint64_t uodp_umem_end(const struct uodp_umem *umem);
UODP_API unsigned uodp_umem_access(const struct uodp_umem *umem);
UODP_API struct uodp_ctx *uodp_umem_ctx(const struct uodp_umem *umem);

/*
 * A driver pointer attached to the region (NULL until set). Callbacks may run
 * before it is set: they must accept NULL.
 */
UODP_API void uodp_umem_set_priv(struct uodp_umem *umem, void *priv);
UODP_API void *uodp_umem_priv(const struct uodp_umem *umem);

/* ------------------------------------------------------------------------ */
/* The fault path and the retry protocol                                     */
/* ------------------------------------------------------------------------ */

/*
 * The invalidation sequence a fault starts from. Read it before
 * uodp_umem_map() and pass it to uodp_umem_map() and uodp_umem_retry().
 * Returns 0 for NULL.
 */
UODP_API uint64_t uodp_umem_read_seq(struct uodp_umem *umem);

/*
 * Make the pages of [va, va + bcnt) present with @access (write access uses
 * MADV_POPULATE_WRITE, read MADV_POPULATE_READ) and record for each page its
 * entry: virtual address | access bits, plus its page frame where
 * /proc/self/pagemap reveals it. Pages already mapped get their access bits
 * upgraded. Returns the number of pages mapped starting at va's page.
 *
 * Errors:
 *  -EINVAL  @umem NULL or not a region, @bcnt 0, @access 0, unknown bits, or
 *           more access than the region was registered with;
 *  -EFAULT  the range is outside the region, or memory at va's page is not
 *           mapped (pages before a hole are mapped and counted: the call
 *           returns their number if there are any);
 *  -EACCES  the process may not access the first page that way (write to
 *           read-only memory, any access to PROT_NONE); partial as -EFAULT;
 *  -EAGAIN  an invalidation of the region started after @seq was read, or is
 *           running: nothing was installed by the failing batch; wait with
 *           uodp_umem_wait() and start again from uodp_umem_read_seq();
 *           also when a page's frame changed under a live entry (the entry
 *           is invalidated first, as a one-page invalidation);
 *  -ENODEV  the context was destroyed;
 *  -ENOMEM  out of memory, or (pinning mode) mlock() refused
 *           (RLIMIT_MEMLOCK), or the kernel kept failing the populate
 *           with a transient error;
 *  -EINTR   the populate was interrupted by signals 100 times in a row;
 *  -EBUSY   (kernel monitor) another userfaultfd has the memory;
 *  -EOPNOTSUPP (kernel monitor) the range holds a mapping the monitor
 *           cannot follow (a read-only MAP_SHARED file, device memory,
 *           file mappings on kernels without UFFD_FEATURE_WP_ASYNC):
 *           use a UODP_CTX_MANUAL context for such memory;
 *  -ECHILD.
 */
UODP_API int64_t uodp_umem_map(struct uodp_umem *umem, uint64_t va,
			       uint64_t bcnt, unsigned access, uint64_t seq);

/*
 * The region lock: held while a driver checks uodp_umem_retry() and writes
 * its own page table from the engine's entries. Invalidations take it to
 * bump the sequence, so a driver holding it sees a stable answer. It is
 * recursive (uodp_umem_entry() and friends take it too, so they work with
 * or without it held), but never hold it across uodp_umem_map(),
 * uodp_umem_wait() or any call that invalidates. NULL is ignored.
 */
UODP_API void uodp_umem_lock(struct uodp_umem *umem);
UODP_API void uodp_umem_unlock(struct uodp_umem *umem);

/*
 * True when a fault that started from @seq must not install translations:
 * an invalidation is running, one ran since @seq was read, the region was
 * registered while invalidations were running and has no private counters
 * yet, or the region is dying. Call with the region lock held. True for NULL.
 */
UODP_API bool uodp_umem_retry(struct uodp_umem *umem, uint64_t seq);

/*
 * Block until no invalidation of the region runs (and the region has its
 * private counters), so a driver retries after -EAGAIN without spinning.
 * Returns 0, or -ENODEV when the region is dying, -EINVAL for NULL,
 * -ECHILD.
 * Must not be called with the region lock held or from a callback.
 */
UODP_API int uodp_umem_wait(struct uodp_umem *umem);

/*
 * The entry of the page holding @va: its page-aligned virtual address | the
 * UODP_ACCESS_* bits it is mapped with, or 0 when not mapped (or @va outside
 * the region, or NULL). Consistent when read with the region lock held.
 */
UODP_API uint64_t uodp_umem_entry(struct uodp_umem *umem, uint64_t va);

/*
 * The page frame number recorded for the page holding @va, or 0 when not
 * mapped or not known (pagemap shows frames only with CAP_SYS_ADMIN).
 */
UODP_API uint64_t uodp_umem_pfn(struct uodp_umem *umem, uint64_t va);

/*
 * Visit the mapped entries of [start, end) in address order, skipping
 * unmapped stretches without touching them; @fn gets the page's virtual
 * address and its entry (as uodp_umem_entry()) and returns nonzero to stop.
 * The region lock must be held by the caller, and @fn must not take it.
 * Returns the number of entries visited, -EINVAL (NULL @umem or @fn) or
 * -ECHILD.
 */
UODP_API int64_t uodp_umem_for_each_entry(
	struct uodp_umem *umem, uint64_t start, uint64_t end,
	int (*fn)(uint64_t va, uint64_t entry, void *arg), void *arg);

/*
 * Drop the entries of [va, bound) clamped to the region. Pages that were
 * mapped writable are added to the dirty set; in pinning mode pages are
 * unlocked. Takes the region lock. Returns the number of entries dropped.
 * Errors: -EINVAL (NULL, or @va > @bound), -ECHILD.
 */
UODP_API int64_t uodp_umem_unmap(struct uodp_umem *umem, uint64_t va,
				 uint64_t bound);

/*
 * Take up to @max addresses of dirty pages (pages that were mapped writable
 * and have been unmapped since the last call) in ascending order, removing
 * them from the set. Returns how many were written to @vas; call again while
 * it returns @max. Errors: -EINVAL (NULL @umem, or NULL @vas with @max > 0),
 * -ECHILD.
 */
UODP_API int64_t uodp_umem_dirty_take(struct uodp_umem *umem, uint64_t *vas,
				      size_t max);

/* Counters of one region, cumulative since uodp_umem_get(). */
struct uodp_umem_stats {
	uint64_t map_calls;	    /* uodp_umem_map() calls */
	uint64_t pages_mapped;	    /* pages newly or re-mapped by them */
	uint64_t invalidations;	    /* invalidations that touched the region */
	uint64_t pages_invalidated; /* entries dropped by them */
	uint64_t eagain;      /* uodp_umem_map() calls that ended -EAGAIN */
	uint64_t mapped_now;  /* entries currently mapped */
	uint64_t table_bytes; /* memory of the translation table's live
			       * nodes; nodes emptied by invalidations are
			       * kept for reuse (not counted) until a fault
			       * or release frees them, and a dirty page
			       * keeps its leaf until uodp_umem_dirty_take() */
};

/* Errors: -EINVAL (NULL argument), -ECHILD. */
UODP_API int uodp_umem_stats(struct uodp_umem *umem,
			     struct uodp_umem_stats *out);

/* ------------------------------------------------------------------------ */
/* Invalidations                                                             */
/* ------------------------------------------------------------------------ */

/*
 * The notifier entry points, for event sources other than the kernel monitor
 * (and for callers who change protections with mprotect(), which produces no
 * kernel event). start() finds the regions overlapping [start, end), raises
 * their invalidation counters (faults on them now return -EAGAIN), calls the
 * driver's invalidate_range for the overlap and drops the engine's entries.
 * end() must follow with the same range; it bumps each region's sequence and
 * wakes uodp_umem_wait(). uodp_invalidate_range() does both for each
 * region in a single walk of the tree, for changes already made (as the
 * kernel monitor reports them); bracket a change you are about to make with
 * start() and end() instead.
 * A region registered between start() and end() gets its counters only once
 * no invalidation of the context runs; until then its faults return -EAGAIN.
 * Ranges are rounded out to pages.
 * Errors: -EINVAL (NULL, @start >= @end; end() with no start() pending),
 * -ECHILD.
 */
UODP_API int uodp_invalidate_range_start(struct uodp_ctx *ctx, uint64_t start,
					 uint64_t end);
UODP_API int uodp_invalidate_range_end(struct uodp_ctx *ctx, uint64_t start,
				       uint64_t end);
UODP_API int uodp_invalidate_range(struct uodp_ctx *ctx, uint64_t start,
				   uint64_t end);

/* ------------------------------------------------------------------------ */
/* Misc                                                                      */
/* ------------------------------------------------------------------------ */

/* A static description of an error code of this library (never NULL). */
UODP_API const char *uodp_strerror(int err);

/* The library version as "MAJOR.MINOR.PATCH". */
UODP_API const char *uodp_version(void);

#ifdef __cplusplus
}
#endif

#endif /* UODP_H */

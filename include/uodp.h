/* SPDX-License-Identifier: MIT */
/*
 * uodp.h - the on-demand paging engine (uodp 0.2).
 *
 * A context follows one address space (this process). Memory regions
 * ("umems") are registered in O(1), pages are mapped for a device only when
 * the device faults on them, and invalidations tell the driver to drop its
 * translations when the address space changes. The shape is that of Linux's
 * interval notifiers: a fault reads a sequence, makes the pages present
 * without any lock, then takes the region lock and installs translations
 * only if no invalidation overlapped it. uodp_umem_map_and_lock() is that
 * whole loop, bounded in time:
 *
 *     n = uodp_umem_map_and_lock(umem, addr, len, UODP_ACCESS_WRITE, 100);
 *     if (n < 0)
 *         return n;                 // -EBUSY after 100 ms of collisions,
 *                                   // -ENODEV after teardown, -EFAULT, ...
 *     uodp_umem_entries_locked(umem, addr, n, entries);
 *     ... write entries[] into the device page table ...
 *     uodp_umem_unlock(umem);
 *
 * Drivers that need the steps (their own pacing, several regions under one
 * lock) use uodp_umem_read_begin(), uodp_umem_map(), uodp_umem_lock() and
 * uodp_umem_read_retry(), exactly as map_and_lock does.
 *
 * Conventions for every function below:
 *  - errors are negative errno values and leave all state as it was;
 *    nothing is reported through errno; one errno means one thing in this
 *    header (see uodp_strerror());
 *  - process memory is named by pointers and byte lengths; a region covers
 *    whole pages (sysconf(_SC_PAGESIZE)); ranges are half open;
 *  - every function may be called from any thread unless it says otherwise,
 *    and none is a cancellation point: cancellation is disabled inside the
 *    library, so a cancelled thread never leaves a uodp lock held;
 *  - functions that change or wait on a context or region (those listing
 *    -ECHILD) fail with -ECHILD in a child process forked after the context
 *    was created (the child has another address space). The region lock
 *    must not be used in such a child at all;
 *  - "callback" below means the driver's invalidate, fence and unfence,
 *    of any context. Calls that could wait for the invalidation that is
 *    calling back fail there with -EDEADLK instead of deadlocking (they
 *    say so); the rule is the calling thread's: such a call on another
 *    context, or on memory the invalidation does not touch, is refused
 *    the same (record it, and make it once the callback returned).
 *
 * Regions and contexts are handles: a handle that was released or destroyed
 * must not be passed again. Such a call is undefined (as for free()); a
 * build with -DUODP_DEBUG=ON aborts on it with a message (the object is
 * poisoned, not reused, until the process exits). The one exception is a
 * destroyed context that something still holds (see uodp_ctx_destroy()).
 *
 * ABI: symbols are exported under one version node per release (UODP_0.2);
 * structures the caller passes in carry a comp_mask and reserved fields
 * that must be zero, structures the library writes take their size.
 */
#ifndef UODP_H
#define UODP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UODP_API __attribute__((visibility("default")))
#else
#define UODP_API
#endif

/* The version of this header. uodp_check_version() compares the library. */
#define UODP_VERSION_MAJOR 0
#define UODP_VERSION_MINOR 2
#define UODP_VERSION_PATCH 0

struct uodp_ctx;
struct uodp_umem;

/* ------------------------------------------------------------------------ */
/* Invalidation ranges                                                       */
/* ------------------------------------------------------------------------ */

/* Why translations must go (struct uodp_range::event). */
enum uodp_event {
	UODP_EVENT_MANUAL = 0,	/* uodp_invalidate_range*() by the caller */
	UODP_EVENT_UNMAP = 1,	/* munmap(), or a mapping replaced over it */
	UODP_EVENT_REMOVE = 2,	/* madvise(MADV_DONTNEED / _FREE / _REMOVE);
				 * under libuodp-hooks also memory a refused
				 * munmap(), mremap() or mmap(MAP_FIXED) may
				 * have left mapped (UODP_CTX_PIN) */
	UODP_EVENT_REMAP = 3,	/* mremap() moved the pages elsewhere */
	UODP_EVENT_FRAME = 4,	/* a fault found a page frame changed under
				 * a live entry (migration, swap, COW) */
	UODP_EVENT_TEARDOWN = 5 /* uodp_ctx_destroy() */
};
#define UODP_EVENT_MAX UODP_EVENT_TEARDOWN

/*
 * An invalidation. In a callback it describes one region's part of it:
 * [start, end) page aligned and clamped to the region, the event, and the
 * region's priv. For uodp_invalidate_range_start() / _end() it is also the
 * token that pairs them: the caller owns it (on its stack, typically),
 * fills it with uodp_range_init(), and passes the same object to both;
 * the engine keeps its bookkeeping in the reserved fields.
 */
struct uodp_range {
	void *start;	       /* first byte */
	void *end;	       /* one past the last byte */
	enum uodp_event event; /* why */
	uint32_t flags;	       /* none defined yet: 0 */
	void *umem_priv;       /* callbacks: uodp_umem_priv() of the region */
	uint64_t reserved[6];  /* the engine's; zero before start() */
};

/* Fill a range token for uodp_invalidate_range_start(). */
static inline void uodp_range_init(struct uodp_range *r, void *addr, size_t len,
				   enum uodp_event event)
{
	unsigned i;

	r->start = addr;
	r->end = (char *)addr + len;
	r->event = event;
	r->flags = 0;
	r->umem_priv = 0;
	for (i = 0; i < sizeof(r->reserved) / sizeof(r->reserved[0]); i++)
		r->reserved[i] = 0;
}

/* ------------------------------------------------------------------------ */
/* Contexts                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * The driver's callbacks; @priv is passed back to each.
 *
 * invalidate: the translations of @range (inside @umem) must be dropped
 *   from the driver's page table before it returns, and device accesses to
 *   those pages that are in flight must have completed. The engine drops
 *   its own entries of the range right after (writable ones join the dirty
 *   set). It runs on the thread that invalidates (the notifier's monitor
 *   thread, or the caller of uodp_invalidate_range*()), holding no region
 *   lock. It MAY call uodp_umem_lock/unlock, uodp_umem_unmap,
 *   uodp_umem_entries_locked and the accessors on @umem. It MUST NOT wait
 *   for a thread that is faulting (inside map_and_lock, read_begin, get or
 *   release): those calls fail with -EDEADLK when made from a callback, and
 *   a thread waiting for them to finish while the callback waits for it is
 *   a deadlock the engine cannot see. On no thread may it allocate, free,
 *   munmap or madvise memory that may be registered (the kernel would make
 *   it wait for the monitor thread, which is waiting for it).
 *   Required, except with UODP_CTX_PIN, where it is optional.
 *
 * fence / unfence: UODP_CTX_STRICT only. fence pauses new device accesses
 *   and waits for those in flight; unfence lets them go on. Same rules as
 *   invalidate.
 *
 * comp_mask: which optional members are valid (none in 0.2: 0); reserved:
 * zero. Unknown bits or nonzero reserved words are -EINVAL, so a program
 * built against a later header fails cleanly on an older library.
 */
struct uodp_ctx_ops {
	uint64_t comp_mask;
	void (*invalidate)(struct uodp_umem *umem,
			   const struct uodp_range *range, void *priv);
	void (*fence)(struct uodp_ctx *ctx, void *priv);
	void (*unfence)(struct uodp_ctx *ctx, void *priv);
	void *priv;
	void *reserved[4];
};

/* Invalidations come only through uodp_invalidate_range*(); no monitor. */
#define UODP_CTX_MANUAL (1u << 0)
/* With the monitor: fence the context before reading a kernel event, so
 * that once munmap() returns no device access uses the old translation. */
#define UODP_CTX_STRICT (1u << 1)
/* Record no page frames: skips one /proc/self/pagemap read per batch of up
 * to 512 pages (frames are visible only with CAP_SYS_ADMIN). uodp_umem_pfn()
 * then returns 0 and a frame that changed under a live entry goes
 * unnoticed - harmless for drivers that access memory by virtual address. */
#define UODP_CTX_NO_FRAMES (1u << 2)
/* On-demand pinning: each page stays mlock()ed from the time it is mapped
 * until it is invalidated, unmapped or its region released, so it is not
 * swapped or migrated under the device. The invalidate callback becomes
 * optional. mlock() is not counted by the kernel, so the library counts
 * references per page for the whole process: a page pinned by several
 * regions, of one context or of several, stays locked until the last of
 * them drops it (but the last unlock also undoes an mlock() the
 * application made itself on the page). Pinned pages are locked memory: the application's own
 * madvise(MADV_DONTNEED/MADV_FREE) on them fails with EINVAL while they
 * are pinned (the kernel refuses it on mlocked pages). mremap() moves the
 * lock with the pages: with the kernel monitor the destination (and the
 * part a growing move added) is unlocked when the move is handled (by
 * the monitor, or in the calling thread under libuodp-hooks), before the
 * REMAP's callback
 * (like any invalidation, that may be just after mremap() returns); a
 * MANUAL context must invalidate pinned memory before it moves it (after,
 * the lock stays at the destination). A move is not synchronized with a
 * release, unmap or manual invalidation of the same memory on another
 * thread: a release, uodp_umem_unmap() or uodp_invalidate_range*() (which
 * unpins what it drops) racing it waits for the move once the monitor has
 * read it (a wait on the monitor's report of the move only, never on a
 * callback: it may be called holding locks the callbacks take), but one
 * that runs before that read drops the source's pins first and leaves the
 * destination locked. Do not release, unmap or invalidate pinned memory
 * while another thread moves it (a mremap() that returned has been
 * handled). Under libuodp-hooks, a munmap(), mremap() or mmap(MAP_FIXED)
 * the kernel refuses leaves what it did not unmap mapped, pinned and
 * translated, as without the hooks. Memory the kernel monitor reports
 * unmapped (or moved away) loses its pins without munlock(): the kernel
 * unlocked it with its mapping, and a mapping made there since
 * (MAP_LOCKED, mlockall()) keeps its lock. What an invalidation covers
 * beyond that memory loses its pins with munlock(): the pages a
 * UODP_CTX_DEFERRED context invalidates together with an unmap (one
 * callback for several events of a region: the span between them, a
 * REMOVE among them; each unmap among them keeps its own memory's pins
 * apart, up to 4 unmaps pending on a region, beyond which the rest
 * unlocks too), and, under libuodp-hooks, what a refused call may
 * have left mapped where the hooks could not read or watch it again
 * (delivered as UODP_EVENT_REMOVE). */
#define UODP_CTX_PIN (1u << 3)
/* Deferred delivery: kernel events reach the invalidate callback on a
 * relay thread that holds no uodp lock, so the callback may take the
 * driver's own locks even where the driver calls uodp_umem_get() or
 * uodp_umem_release() under them (a registration cache), and may release
 * the region it is called for. Faults on the range wait or retry from the
 * moment the event is read until the callback has returned, and
 * uodp_ctx_sync() is false meanwhile; with UODP_CTX_STRICT the context
 * stays fenced until then. The unmapping thread itself does not wait for
 * the callback. */
#define UODP_CTX_DEFERRED (1u << 4)
#define UODP_CTX_FLAGS_ALL                                        \
	(UODP_CTX_MANUAL | UODP_CTX_STRICT | UODP_CTX_NO_FRAMES | \
	 UODP_CTX_PIN | UODP_CTX_DEFERRED)

/*
 * Create a context for this process's address space. @ops is copied.
 * Errors: -EINVAL (@ops or @out NULL, unknown flag or comp_mask bit,
 * nonzero reserved word, no invalidate without UODP_CTX_PIN, STRICT with
 * MANUAL, STRICT without fence and unfence), -ENOSYS (the kernel lacks
 * MADV_POPULATE_READ/WRITE, Linux < 5.14), -ENOMEM, -EDEADLK (callback).
 */
UODP_API int uodp_ctx_create(const struct uodp_ctx_ops *ops, unsigned flags,
			     struct uodp_ctx **out);

/*
 * Tear a context down. Live regions are invalidated as a whole (the
 * driver's invalidate sees each, with UODP_EVENT_TEARDOWN), their entries
 * dropped, and they are marked dying: from then on uodp_umem_read_begin(),
 * uodp_umem_map() and uodp_umem_map_and_lock() fail with -ENODEV at once
 * and uodp_umem_read_retry() is true. They must still be released with
 * uodp_umem_release(); the context's memory goes with the last of them
 * (or with the uodp_invalidate_range_end() of a token started before the
 * destroy and still open, which may follow it).
 * While such a region or token holds it, the context handle may still be
 * passed: uodp_umem_get() fails with -ENODEV, uodp_invalidate_range*()
 * find only dying regions, a second destroy is -EINVAL. Other calls that
 * take the context (uodp_umem_get(), uodp_invalidate_range_start(),
 * uodp_invalidate_range(), uodp_ctx_sync(), uodp_ctx_destroy()) must not
 * race the destroy on another thread unless the caller holds a region or
 * an open token of the context across both: as for free(), the caller
 * orders them (joins or stops its registering threads first), else the
 * call is undefined - it may come after the memory is freed. (One
 * already inside the library when the last hold goes completes or fails
 * with -ENODEV, and the free waits for it; the library cannot catch one
 * that comes later.)
 * With the kernel monitor it first waits for the event delivery in
 * progress (it leaves the process's subscriber list, which the monitor
 * holds across a delivery, fences and callbacks included): MUST NOT be
 * called holding a lock that this or another context's fence or
 * non-deferred callback takes (as the kernel's mmu_interval_notifier_remove
 * may not), unlike uodp_umem_release(), which may.
 * Errors: -EINVAL (NULL, or destroyed already while a region or token
 * holds it), -EDEADLK (callback), -ECHILD.
 */
UODP_API int uodp_ctx_destroy(struct uodp_ctx *ctx);

/*
 * True when no invalidation of the context is in flight (kernel events
 * read but not yet delivered, or manual start() without end()): one
 * atomic load, for caches that validate every hit. False for NULL.
 */
UODP_API bool uodp_ctx_sync(const struct uodp_ctx *ctx);

/*
 * Whether the calling thread is inside a driver callback (of any
 * context), and of which kind:
 *  0                       not in a callback;
 *  UODP_CALLBACK_LOCKED    an invalidate, fence or unfence the engine calls
 *                          with its locks held: every call below that lists
 *                          EDEADLK for a callback fails there;
 *  UODP_CALLBACK_DEFERRED  the invalidate callback of a UODP_CTX_DEFERRED
 *                          context (no uodp lock held): uodp_umem_get() and
 *                          uodp_umem_release() are allowed, the others that
 *                          list EDEADLK for a callback still fail.
 * For a layer above the engine whose one operation makes several engine
 * calls (a device deregistering a key, then releasing its regions): it asks
 * once, before it changes anything, and refuses the whole operation rather
 * than fail half way. The state is the thread's (a callback of one context
 * is a callback for all). One thread-local load; never blocks.
 * Errors: none.
 */
#define UODP_CALLBACK_LOCKED 1
#define UODP_CALLBACK_DEFERRED 2
UODP_API int uodp_in_callback(void);

/*
 * Whether contexts on the kernel monitor (created without
 * UODP_CTX_MANUAL) can watch memory in this process now: registers one
 * region of a fresh anonymous page on a context of its own, releases it,
 * destroys the context. 0, or the error uodp_umem_get() gave: -ENOSYS /
 * -EPERM / -EACCES (userfaultfd unavailable or forbidden: use
 * UODP_CTX_MANUAL),
 * -EMFILE/-ENFILE, -EAGAIN, -EBADF, -ENOMEM as there; -EDEADLK (callback).
 * Costs what it does (the notifier starts, and stops again unless another
 * context uses it): call it once, at start. Any thread, not a callback.
 */
UODP_API int uodp_monitor_probe(void);

/* ------------------------------------------------------------------------ */
/* Regions                                                                   */
/* ------------------------------------------------------------------------ */

#define UODP_ACCESS_READ (1u << 0)
#define UODP_ACCESS_WRITE (1u << 1)
#define UODP_ACCESS_ALL (UODP_ACCESS_READ | UODP_ACCESS_WRITE)
/* uodp_umem_get() @access: a region that only wants invalidations (a
 * registration cache entry). It keeps no translation table; faulting it is
 * -EPERM. Give it alone, without READ or WRITE. */
#define UODP_ACCESS_WATCH (1u << 2)
/* uodp_umem_get() @access, with READ and/or WRITE: with the kernel
 * monitor, watch only what faults reach. The call reads and registers
 * nothing; each fault registers the mappings of the pages it maps before it
 * makes them present (as it does for memory mapped in a region's hole
 * after uodp_umem_get()). So memory the monitor refuses (SysV shared
 * memory, a read-only MAP_SHARED file, another userfaultfd's) fails only
 * the faults that reach it (-EOPNOTSUPP, -EBUSY), never the registration
 * or faults elsewhere; and a mapping no fault reached stays unregistered
 * (its munmap or madvise raises no event: the region has no entry
 * there). For large sparse regions (a device's implicit region, one per
 * GiB). uodp_umem_access() returns it with the rights. No effect on a
 * UODP_CTX_MANUAL context. */
#define UODP_ACCESS_LAZY_WATCH (1u << 3)

/*
 * Register [addr, addr + len) with the given access rights. O(1) in @len:
 * nothing is allocated per page and the memory need not be mapped yet. The
 * region covers whole pages: @addr is rounded down and @addr + @len up.
 * Errors: -EINVAL (@ctx or @out NULL, @len 0, @access 0 or unknown bits,
 * WATCH with READ or WRITE, LAZY_WATCH without READ or WRITE),
 * -ERANGE (@addr + @len wraps or leaves the user address space), -ENODEV
 * (the context is being destroyed), -EDEADLK (callback), -ECHILD, -ENOMEM;
 * with the kernel monitor also -ENOSYS/-EPERM/-EACCES (userfaultfd
 * unavailable or forbidden: use UODP_CTX_MANUAL), -EBUSY (another userfaultfd watches the
 * memory), -EOPNOTSUPP (the range holds SysV shared memory, whose shmdt()
 * the kernel does not report: use UODP_CTX_MANUAL; with LAZY_WATCH neither
 * of these two: the faults that reach such memory fail), -EMFILE/-ENFILE (no
 * file descriptor), -EAGAIN (no thread could be created for the monitor:
 * transient), -EBADF (the monitor's descriptors were closed or replaced by
 * someone else: it can no longer report changes, so it refuses).
 */
UODP_API int uodp_umem_get(struct uodp_ctx *ctx, void *addr, size_t len,
			   unsigned access, struct uodp_umem **out);

/*
 * Release a region: its entries are dropped (writable ones first go to the
 * dirty set, which is freed with the region; pinned pages are unlocked), it
 * leaves the context and its memory is freed. The driver must have stopped
 * device accesses to it. From a callback of a UODP_CTX_DEFERRED context it
 * may release the region being invalidated (the release completes after
 * the callback returns). With UODP_CTX_PIN on the kernel monitor it first
 * waits until the moves the monitor has read are handled (see there).
 * Errors: -EINVAL (NULL), -EDEADLK (a callback of a context without
 * UODP_CTX_DEFERRED, or the region lock is held by the calling thread),
 * -ECHILD.
 */
UODP_API int uodp_umem_release(struct uodp_umem *umem);

/* Page-aligned bounds [start, end), access rights, context, or
 * NULL / 0 for NULL. */
UODP_API void *uodp_umem_start(const struct uodp_umem *umem);
UODP_API void *uodp_umem_end(const struct uodp_umem *umem);
UODP_API unsigned uodp_umem_access(const struct uodp_umem *umem);
UODP_API struct uodp_ctx *uodp_umem_ctx(const struct uodp_umem *umem);

/*
 * A driver pointer attached to the region (NULL until set), passed to the
 * callback as range->umem_priv; callbacks may run before it is set.
 */
UODP_API void uodp_umem_set_priv(struct uodp_umem *umem, void *priv);
UODP_API void *uodp_umem_priv(const struct uodp_umem *umem);

/* ------------------------------------------------------------------------ */
/* The fault path                                                            */
/* ------------------------------------------------------------------------ */

/* map_and_lock's @timeout_ms: wait for invalidations without bound. */
#define UODP_TIMEOUT_INFINITE 0xffffffffu

/*
 * The whole fault: make the pages of [addr, addr + len) present with
 * @access (UODP_ACCESS_WRITE uses MADV_POPULATE_WRITE, otherwise
 * MADV_POPULATE_READ), record an entry for each, and return with the
 * region lock held and no invalidation of those pages since they were made
 * present. Invalidations that overlap the pages make it start again; those
 * elsewhere in the region do not. Returns the number of pages mapped from
 * @addr's page (at least 1; fewer than asked when a hole or a forbidden
 * page follows): read them with uodp_umem_entries_locked(), then
 * uodp_umem_unlock(). On error the lock is not held.
 *
 * @timeout_ms bounds the time spent waiting for and colliding with
 * invalidations, counted from the call on CLOCK_MONOTONIC (a step of the
 * wall clock neither lengthens nor cuts it; 0: one attempt;
 * UODP_TIMEOUT_INFINITE: no bound). That includes the retries of a page
 * the kernel refuses while it is mapped (see -ENOMEM): another thread
 * unmapping and mapping it again collides like an invalidation; past the
 * bound they stop, overshooting it by one pause at most (256 us). The
 * populate itself (reclaim, reading a file) is the kernel's and not cut.
 *
 * Errors:
 *  -EINVAL  @umem NULL, @len 0, @access 0, unknown bits;
 *  -EPERM   more access than the region was registered with (or a
 *           UODP_ACCESS_WATCH region);
 *  -ERANGE  [addr, addr + len) is not inside the region;
 *  -EFAULT  @addr's page is not mapped by the process;
 *  -EACCES  the process may not access @addr's page that way (write to
 *           read-only memory, any access to PROT_NONE);
 *  -EBUSY   @timeout_ms passed with invalidations of these pages running
 *           or colliding with every attempt, or before a page the kernel
 *           refused while mapped was told from a shortage (fewer than the
 *           10 refusals of -ENOMEM; with timeout 0, at the first); also,
 *           at once, (kernel
 *           monitor) when another userfaultfd of the process watches
 *           @addr's page (memory mapped there since the registration,
 *           or any with UODP_ACCESS_LAZY_WATCH);
 *  -ENODEV  the context was destroyed (at once, whatever @timeout_ms);
 *  -ENOMEM  out of memory, or (UODP_CTX_PIN) mlock() refused
 *           (RLIMIT_MEMLOCK). Not for a page another thread unmaps and
 *           maps again meanwhile (the kernel answers ENOMEM for the hole
 *           too): that is -EFAULT or mapped; -ENOMEM only once the page
 *           stayed mapped through 10 refusals, retried with growing
 *           pauses (about 1 ms in all) within @timeout_ms (else -EBUSY);
 *  -EOPNOTSUPP (kernel monitor) @addr's page is in a mapping the monitor
 *           cannot follow (a read-only MAP_SHARED file, device memory,
 *           SysV shared memory, file mappings on kernels without
 *           UFFD_FEATURE_WP_ASYNC): use a UODP_CTX_MANUAL context;
 *  -EBADF   (kernel monitor) its descriptors were closed or replaced by
 *           someone else (a daemon closing every descriptor it does not
 *           know): it can no longer report changes, so faults are refused;
 *  -ENOSYS  (kernel monitor) @addr's page must be watched first (memory
 *           mapped there since the registration, or any with
 *           UODP_ACCESS_LAZY_WATCH) and userfaultfd registration is
 *           forbidden (a sandbox entered since): use UODP_CTX_MANUAL;
 *  -EDEADLK called from a callback, or with the region lock held;
 *  -ECHILD.
 */
UODP_API int64_t uodp_umem_map_and_lock(struct uodp_umem *umem,
					const void *addr, size_t len,
					unsigned access, unsigned timeout_ms);

/*
 * Copy the entries of @n pages from @addr's page into @out, with the region
 * lock held by the calling thread (as map_and_lock leaves it). An entry is
 * the page's address | UODP_ENTRY_* bits, or 0 when not mapped.
 * Errors: -EINVAL (NULL @umem or @out), -ERANGE (the pages are not inside
 * the region), -EPERM (the calling thread does not hold the region lock).
 */
UODP_API int uodp_umem_entries_locked(struct uodp_umem *umem, const void *addr,
				      size_t n, uint64_t *out);

/* Entry bits: the access the page is mapped with (nonzero iff mapped),
 * and HUGE when the page is part of a 2 MiB huge page that the engine
 * holds as one entry (THP or hugetlb memory, where the kernel reports it
 * through PAGEMAP_SCAN, Linux 6.7+). An invalidation of any page of a huge
 * entry drops the whole entry from the engine (the driver is told only of
 * the pages that changed; the rest faults again on demand), except a frame
 * change a fault finds under it (a write breaking a COW share): that one
 * invalidates the whole block (UODP_EVENT_FRAME). */
#define UODP_ENTRY_READ UODP_ACCESS_READ
#define UODP_ENTRY_WRITE UODP_ACCESS_WRITE
#define UODP_ENTRY_HUGE ((uint64_t)1 << 2)
#define UODP_ENTRY_ACCESS_MASK ((uint64_t)UODP_ACCESS_ALL)
#define UODP_ENTRY_ADDR_MASK (~(uint64_t)0xfff)

/* ---- the steps of map_and_lock, for drivers that need them ---- */

/*
 * Begin a fault: wait while an invalidation of the region runs, then
 * return the sequence to pass to uodp_umem_map() and read_retry().
 * Returns the sequence (>= 0), or -ENODEV (the region is dying), -EINVAL
 * (NULL), -EDEADLK (callback, or the region lock is held by this thread),
 * -ECHILD.
 */
UODP_API int64_t uodp_umem_read_begin(struct uodp_umem *umem);

/*
 * True when a fault that began with @seq must not use what it mapped: an
 * invalidation of the region runs or ran since read_begin, or the region is
 * dying. The region lock must be held by the calling thread (a debug build
 * aborts otherwise; a release build answers true). True for NULL.
 */
UODP_API bool uodp_umem_read_retry(struct uodp_umem *umem, uint64_t seq);

/*
 * Make the pages of [addr, addr + len) present with @access and install
 * their entries if no invalidation ran since @seq (see map_and_lock for
 * the details and errors). Returns the number of pages mapped from @addr's
 * page. Errors as map_and_lock (-EBUSY only for another userfaultfd),
 * plus -EAGAIN: an invalidation ran or runs since @seq (nothing of the
 * failing batch was installed): begin again.
 */
UODP_API int64_t uodp_umem_map(struct uodp_umem *umem, const void *addr,
			       size_t len, unsigned access, uint64_t seq);

/*
 * The region lock: held while a driver checks read_retry and writes its own
 * page table from the engine's entries. Invalidations take it to move the
 * sequence, so a driver holding it sees a stable answer. Not recursive.
 * Never hold it across map, read_begin, get/release or any call that
 * invalidates (they fail with -EDEADLK), nor across munmap()/madvise() of
 * registered memory: the kernel monitor must take it to invalidate, and
 * the kernel makes the unmapping thread wait for the monitor.
 * Errors: -EINVAL (NULL), -EDEADLK (lock: already held by this thread),
 * -EPERM (unlock: not held by this thread).
 */
UODP_API int uodp_umem_lock(struct uodp_umem *umem);
UODP_API int uodp_umem_unlock(struct uodp_umem *umem);

/* ---- entries, dirty pages, counters ---- */

/*
 * The page frame number recorded for the page holding @addr, or 0 when not
 * mapped, not known (frames are visible with CAP_SYS_ADMIN only) or
 * @addr outside the region. Consistent with the region lock held.
 */
UODP_API uint64_t uodp_umem_pfn(struct uodp_umem *umem, const void *addr);

/*
 * Visit the mapped entries of [addr, addr + len) in address order, skipping
 * unmapped stretches without touching them (huge entries or not); @fn gets
 * the page's address and its entry (each page of a huge entry once, with
 * UODP_ENTRY_HUGE, as uodp_umem_entries_locked() gives it) and returns
 * nonzero to stop. The region lock must be held by
 * the calling thread, and @fn must not take it. Returns the number of
 * entries visited. Errors: -EINVAL (NULL @umem or @fn), -EPERM (lock not
 * held by this thread), -ECHILD.
 */
UODP_API int64_t uodp_umem_for_each_entry(
	struct uodp_umem *umem, const void *addr, size_t len,
	int (*fn)(void *page, uint64_t entry, void *arg), void *arg);

/*
 * Drop the entries of [addr, addr + len) clamped to the region (the driver
 * evicting pages). Writable ones join the dirty set; pinned pages are
 * unlocked. Takes the region lock. Returns the number of entries dropped.
 * Errors: -EINVAL (NULL), -EDEADLK (the lock is held by this thread),
 * -ECHILD.
 */
UODP_API int64_t uodp_umem_unmap(struct uodp_umem *umem, const void *addr,
				 size_t len);

/*
 * Take up to @max addresses of dirty pages (mapped writable, unmapped since
 * the last call) in ascending order, removing them from the set. Returns
 * how many were written to @pages; call again while it returns @max.
 * Errors: -EINVAL (NULL @umem, or NULL @pages with @max > 0), -EDEADLK
 * (the lock is held by this thread), -ECHILD.
 */
UODP_API int64_t uodp_umem_dirty_take(struct uodp_umem *umem, void **pages,
				      size_t max);

/* Counters of one region, cumulative since uodp_umem_get(). */
struct uodp_umem_stats {
	uint64_t map_calls;	    /* populate-and-install attempts */
	uint64_t pages_mapped;	    /* pages newly or re-mapped by them */
	uint64_t invalidations;	    /* invalidations that touched the region */
	uint64_t pages_invalidated; /* entries dropped by them */
	uint64_t retries;     /* attempts that collided with an invalidation */
	uint64_t mapped_now;  /* pages currently mapped (huge entries count
			       * for all their pages) */
	uint64_t table_bytes; /* memory of the translation table's live
			       * nodes (emptied nodes are kept for reuse and
			       * not counted until a fault or release frees
			       * them; a dirty page keeps its leaf until
			       * uodp_umem_dirty_take()) */
	uint64_t huge_now;    /* huge entries currently mapped */
};

/*
 * Copy the counters into @out: the first @size bytes of the structure as
 * this library knows it (a caller built against an older, shorter
 * structure passes its own size). Errors: -EINVAL (NULL, @size 0),
 * -EDEADLK (the lock is held by this thread), -ECHILD.
 */
UODP_API int uodp_umem_stats(struct uodp_umem *umem,
			     struct uodp_umem_stats *out, size_t size);

/* ------------------------------------------------------------------------ */
/* Invalidations from other event sources                                    */
/* ------------------------------------------------------------------------ */

/*
 * For changes the kernel monitor does not see (mprotect(), a manual
 * context, the application's own userfaultfd): bracket a change you are
 * about to make with start() and end(). start() finds the regions that
 * overlap @range (filled with uodp_range_init()), makes their faults on it
 * wait or retry, calls the driver's invalidate for each overlap and drops
 * the engine's entries. end() with the same @range object lets faults on
 * it go on. A region registered between the two does not fault anywhere
 * until end() (as with Linux's deferred insertion: keep brackets short);
 * likewise, on a UODP_CTX_DEFERRED context, a region registered while
 * kernel events are being relayed waits until the relay caught up. Ranges
 * are rounded out to pages.
 * Errors of start: -EINVAL (NULL, empty range, reserved fields not zero:
 * the token is in use), -ERANGE (the range leaves the address space),
 * -ENODEV (the context was destroyed and nothing holds it: a start
 * racing uodp_ctx_destroy(), see there), -EDEADLK (called from a
 * callback, the monitor's fence included, of any context: also for
 * another context or a range the callback's does not overlap), -ECHILD.
 * Errors of end: -EINVAL (NULL, or @range is not a token started and not
 * yet ended: a wrong, copied or second end() changes nothing), -ECHILD.
 */
UODP_API int uodp_invalidate_range_start(struct uodp_ctx *ctx,
					 struct uodp_range *range);
UODP_API int uodp_invalidate_range_end(struct uodp_range *range);

/*
 * start() + end() in one walk, for a change already made (as the kernel
 * monitor reports munmap), with the event to report.
 * Errors: -EINVAL (NULL, @len 0, event out of range), -ERANGE, -ENODEV
 * and -EDEADLK (as start()), -ECHILD.
 */
UODP_API int uodp_invalidate_range(struct uodp_ctx *ctx, void *addr, size_t len,
				   enum uodp_event event);

/* ------------------------------------------------------------------------ */
/* Misc                                                                      */
/* ------------------------------------------------------------------------ */

/* A static description of an error code as this header uses it (never
 * NULL; the device layer has uodp_dev_strerror()). */
UODP_API const char *uodp_strerror(int err);

/* The library version as "MAJOR.MINOR.PATCH". */
UODP_API const char *uodp_version(void);

/*
 * 0 when the running library implements the API of version @major.@minor
 * (same major, minor at least @minor), else -EPROTO. Programs check with
 * uodp_check_version(UODP_VERSION_MAJOR, UODP_VERSION_MINOR).
 */
UODP_API int uodp_check_version(unsigned major, unsigned minor);

#ifdef __cplusplus
}
#endif

#endif /* UODP_H */

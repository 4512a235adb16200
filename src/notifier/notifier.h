/* SPDX-License-Identifier: MIT */
/*
 * notifier.h - the process-wide memory notifier (internal interface of
 * src/notifier, used by the engine; it knows no engine type).
 *
 * Linux has one MMU notifier per address space with many subscribers; so do
 * we: one userfaultfd and one monitor thread per process, started by the
 * first subscriber and stopped with the last. A subscriber (an engine
 * context) is an event sink: an ops table and an owner pointer, like
 * mmu_notifier_ops. It asks for address ranges to be watched; the notifier
 * watches whole mappings (userfaultfd WP mode, never write-protecting a
 * page, costs nothing until an event) and reference-counts them, so a range
 * inside an already watched mapping is watched with no system call and no
 * mapping is split.
 *
 * Every event (UNMAP, REMOVE, REMAP's source) goes to every subscriber:
 * subscribers filter by their own regions, which they find faster than we
 * could. For each event:
 *
 *   1. strict subscribers are fenced (ops->fence) before the event is read
 *      (reading it lets the unmapping thread return);
 *   2. ops->begin(owner, start, end, event) on the monitor thread: the
 *      subscriber makes faults on the range wait or retry. It must not
 *      block on anything an application thread may hold;
 *   3. ops->finish(owner, start, end, event): on the monitor thread right
 *      after begin, or, for subscribers created with UNF_DEFERRED, on the
 *      notifier's relay thread, in event order (per subscriber), holding
 *      no notifier lock; the unmapping thread is not waiting for it then.
 *      The relay queue has a fixed size; when it is full, an event is
 *      merged into the subscriber's last queued finish (the hull of the
 *      ranges, as UNF_UNMAP if the kinds differ): over-invalidation;
 *   4. strict subscribers are unfenced (on the thread that ran finish, after
 *      it).
 *
 * Rules of the monitor thread (the kernel blocks the unmapping thread until
 * it reads the event): it never allocates, frees, maps, unmaps or madvises;
 * it never waits for the relay thread (a full relay queue coalesces ranges
 * instead); every asynchronous signal is blocked in it.
 *
 * Locks: the functions below may take notifier locks, but never call a
 * subscriber's ops while holding one that subscribe/unsubscribe/watch take
 * for writing... except the subscriber list's read side, which writers hold
 * only briefly and never across a system call or an allocation.
 * unf_unsubscribe() waits until no op of that subscriber runs or is queued.
 * unf_prepare() takes no lock in its common case (one atomic compare).
 *
 * Fork: the child inherits no monitor (userfaultfd events are not forked);
 * a subscriber created in the child starts the child's own notifier, and
 * calls on a parent's subscriber in the child are no-ops (the engine
 * refuses them first with -ECHILD).
 */
#ifndef UODP_NOTIFIER_H
#define UODP_NOTIFIER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum unf_event {
	UNF_UNMAP = 1,	/* munmap, a mapping replaced over the range */
	UNF_REMOVE = 2, /* madvise DONTNEED / FREE / REMOVE */
	UNF_REMAP = 3,	/* mremap moved the range away */
};

struct unf_ops {
	void (*begin)(void *owner, uint64_t start, uint64_t end,
		      enum unf_event ev);
	/* @merged: how many begins this finish stands for (more than 1
	 * when the relay queue was full and events were merged: [start,
	 * end) is then the hull of their ranges). */
	void (*finish)(void *owner, uint64_t start, uint64_t end,
		       enum unf_event ev, unsigned merged);
	void (*fence)(void *owner);   /* UNF_STRICT only */
	void (*unfence)(void *owner); /* UNF_STRICT only */
	/* Optional, for a move only: [from, from + len) moved to
	 * [to, to + len). Called before the REMAP's begin, under the same
	 * rules (no allocation, no unmapping), on the monitor thread for a
	 * kernel event or on the calling thread for the hooks' mremap. The
	 * kernel moves per-mapping state with the pages (VM_LOCKED: an
	 * mlock), which a subscriber may have to undo at the destination. */
	void (*moved)(void *owner, uint64_t from, uint64_t to, uint64_t len);
};

#define UNF_STRICT (1u << 0)   /* fence before reading events */
#define UNF_DEFERRED (1u << 1) /* finish on the relay thread */
/* With UNF_STRICT, not UNF_DEFERRED: the fence is needed only around the
 * monitor's reads of kernel events (where the unmapping thread resumes
 * before the finish). An in-thread delivery (libuodp-hooks.so, intercept.h)
 * returns to the application only after the finish ran, so it calls no
 * fence / unfence for this subscriber: two lock round trips less per
 * hooked munmap. For a subscriber whose fence only marks "in flight" and
 * that marks its own finish so. */
#define UNF_FENCE_READS (1u << 2)

struct unf_sub;

/*
 * Subscribe (starting the process's notifier if needed). @ops is not
 * copied and must outlive the subscription. UNF_STRICT needs fence and
 * unfence; they nest per subscriber (a deferred strict subscriber may be
 * fenced again before its unfence is due): the notifier counts, so the
 * subscriber sees fence / unfence strictly alternate. UNF_FENCE_READS
 * (above) leaves them out of in-thread deliveries.
 * Errors: -ENOSYS / -EPERM / -EACCES (userfaultfd unavailable or forbidden;
 * -EPERM also when a filter forbids UFFDIO_REGISTER: probed at start),
 * -EMFILE / -ENFILE, -ENOMEM, -EAGAIN (no thread could be created),
 * -EBADF (the running notifier lost its descriptors, see below), -EINVAL
 * (unknown flags, STRICT without fence/unfence, DEFERRED without finish,
 * FENCE_READS without STRICT or with DEFERRED).
 */
int unf_subscribe(const struct unf_ops *ops, void *owner, unsigned flags,
		  struct unf_sub **out);

/* Detach the subscription: drop its watches and wait until no op of it
 * runs or is queued (holding no notifier lock while it waits); no event
 * reaches it afterwards. Must not be called from an op. The notifier stops
 * with its last subscriber. The handle stays valid memory until
 * unf_free(): a thread that loaded it before may still call unf_prepare()
 * (0 at once), unf_watch() (-ENODEV) or unf_unwatch() (nothing) on it.
 * A second call, or a parent's subscription in a forked child, does
 * nothing. */
void unf_detach(struct unf_sub *sub);
/* Free a detached subscription (or a parent's, in a forked child): only
 * memory, never waits - callable from an op of another subscription. */
void unf_free(struct unf_sub *sub);
/* unf_detach() then unf_free(). */
void unf_unsubscribe(struct unf_sub *sub);

/*
 * Watch [start, end) (page aligned) for @sub: reference-counted for the
 * process (per watched stretch of whole mappings: unwatch with the same
 * range). The mappings there (whole mappings) are registered with the
 * kernel unless already watched: then no system call at all. Holes are
 * fine (unf_prepare() registers what is mapped there later); so is a
 * mapping the kernel refuses to register (unf_prepare() over it fails).
 * Errors: -EBUSY (another userfaultfd watches part of it), -EOPNOTSUPP
 * (the range holds a mapping whose changes the kernel does not report:
 * SysV shared memory, whose shmdt() sends no event; detected by its
 * /proc/self/maps path "/SYSV..."), -EPERM (registration forbidden, e.g.
 * by seccomp), -ENOMEM, -EBADF (notifier broken), -ECHILD (a parent's
 * subscription in a forked child), -EINVAL (empty range). Nothing is left
 * watched on error.
 */
int unf_watch(struct unf_sub *sub, uint64_t start, uint64_t end);
/*
 * Watch [start, end) lazily: as unf_watch(), but nothing in it is read or
 * registered now. Every mapping there counts as a hole: unf_prepare()
 * registers the mappings a range it is given overlaps, when it is given
 * it, and fails only for those (-EBUSY, -EOPNOTSUPP, ...). Mappings no
 * prepare reached stay unregistered: their changes raise no event (nor
 * block the thread that makes them on the monitor). For large sparse
 * ranges of which a fault path uses little (the device's implicit region).
 * Unwatch with unf_unwatch() and the same range. While such a watch
 * lasts, unf_prepare() takes its locked path (one lock and a lookup; no
 * system call where the range is registered already), as it does while
 * any watched range has a hole.
 * Errors: -ENOMEM, -EBADF, -ECHILD, -ENODEV, -EINVAL (empty range).
 */
int unf_watch_lazy(struct unf_sub *sub, uint64_t start, uint64_t end);
void unf_unwatch(struct unf_sub *sub, uint64_t start, uint64_t end);

/*
 * Before the fault path populates [start, end): make sure mappings created
 * there since the watch began are registered too, so that their unmap is
 * reported. Lock-free when nothing changed (one atomic compare); after an
 * event, one lock and a lookup, and system calls only where a watched
 * mapping went away.
 * Errors: -EBUSY (another userfaultfd has the memory), -EOPNOTSUPP (a
 * mapping the kernel refuses to watch, or SysV shared memory), -ENOMEM,
 * -EPERM (registration forbidden), -EBADF (notifier broken), -ECHILD.
 * A range with nothing mapped is not an error.
 * *@settled (if not NULL) tells whether the range was NOT already known
 * whole, mapped and registered, so that the call had to read the mappings
 * and (re)register: the fault path then checks again after populating,
 * and starts over if a mapping appeared meanwhile (see fault.c).
 *
 * Broken: if the application closes or replaces our userfaultfd or pipe
 * (a daemon closing "all unknown fds"), the monitor notices (POLLNVAL,
 * POLLHUP, or an identity check by st_dev / st_ino / access mode before
 * each read and every idle second), stops delivering events, and
 * subscribe / watch / prepare fail with -EBADF until the last subscriber
 * leaves. A descriptor number that is no longer ours is never read,
 * written or closed.
 */
int unf_prepare(struct unf_sub *sub, uint64_t start, uint64_t end,
		bool *settled);

/* ---- observation (any thread, no lock) ---- */
struct unf_stats {
	uint64_t unmap, remove, remap, other;
	uint64_t wakeups, fences, slow_prepares, relayed, coalesced;
	uint64_t registrations; /* UFFDIO_REGISTER calls made */
	/* mappings registered but changed before the maps were read again
	 * (not counted as watched; see verify_registered() in watch.c) */
	uint64_t unsure_registrations;
	/* relayed: finishes queued to the relay; coalesced: events merged
	 * into a queued finish because the ring was full */
	uint64_t subscribers;
};
void unf_get_stats(struct unf_stats *out);

/* The end of the mapping that holds @addr (from /proc/self/maps, read into
 * a stack buffer: no allocation, so callable on the monitor thread): 0 and
 * *end, -ENOENT when no mapping holds it, -errno when the maps cannot be
 * read. */
int unf_map_end(uint64_t addr, uint64_t *end);
pid_t unf_monitor_tid(void); /* 0 when no notifier runs */
bool unf_pending(void);	     /* events queued in the kernel, unread */
/* Wait until the moves (REMAP) read so far have been reported to the
 * subscribers' moved op: a moving thread returns from mremap() once its
 * events are read, before they are delivered. Waits on two counters, not
 * on a lock: only moved() runs between a read and its report (no fence,
 * no driver callback), so a caller may hold any lock of its own, a
 * driver lock its fence or callback takes included. Returns at once when
 * no notifier runs. Moves the kernel queued but the monitor has not read
 * are not waited for, nor the other events' delivery. */
void unf_barrier(void);

/* ---- test hooks (set or called only by tests) ---- */
/* Relay ring capacity (0: the default, 1024): tests make it small to see
 * coalescing. Read by the monitor thread at each event. */
extern unsigned unf_test_ring_cap;
/* Called by the registration path between its read of the maps and each
 * mapping's UFFDIO_REGISTER (watch_lock held; the hook must not call
 * uodp), so a test can change the address space in that window. */
extern void (*unf_test_hook_before_register)(void);
/* ... and after its registrations, before it reads the maps again. */
extern void (*unf_test_hook_after_register)(void);
/* Called by a rebuild of the records' filter (a record went away, see
 * watch.c) before the new bits are in place (watch_lock held; the hook
 * must not call uodp), so a test can make a hooked call then. */
extern void (*unf_test_hook_filter_rebuild)(void);
/* Called by the monitor thread after each read that returned events,
 * before it delivers them (subs_lock held, the unmapping threads already
 * returned; the hook must not call uodp), so a test can act in that
 * window. */
extern void (*unf_test_hook_after_read)(void);
/* Called by the in-thread fast path (libuodp-hooks.so) after a call the
 * kernel refused, before it reads the maps and registers again what is
 * still mapped (no notifier lock held: the hook may call unf_unwatch()),
 * so a test can drop a record between the call's two halves. */
extern void (*unf_test_hook_icpt_failed)(void);
/* Called by unf_barrier() once, when a move read is not reported yet,
 * before it waits for the report. */
extern void (*unf_test_hook_barrier_wait)(void);
/* The notifier's descriptor numbers (-1 when it does not run), for tests
 * that close them behind its back. */
void unf_test_fds(int *uffd, int *pipe_rd, int *pipe_wr);

#endif

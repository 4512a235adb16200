/* SPDX-License-Identifier: MIT */
/*
 * nf.h - state shared by notifier.c (life cycle, monitor and relay threads,
 * subscribers, fork) and watch.c (watched mappings). Internal to
 * src/notifier; the engine sees only notifier.h.
 */
#ifndef UODP_NOTIFIER_NF_H
#define UODP_NOTIFIER_NF_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/itree.h"
#include "notifier/notifier.h"
#include "notifier/uffd.h"

/*
 * A mutex that knows its owner, so that code relying on a lock can assert
 * it holds it. The owner is recorded always (pthread_self(): no system
 * call); the check runs in -DUODP_DEBUG builds.
 */
struct nf_lock {
	pthread_mutex_t m;
	_Atomic unsigned long owner; /* pthread_self() of the holder, or 0 */
};

#define NF_LOCK_INIT                         \
	{                                    \
		PTHREAD_MUTEX_INITIALIZER, 0 \
	}

void nf_lock(struct nf_lock *l);
/* The number of nf_locks the calling thread holds (raised by nf_lock()
 * and nf_trylock(), lowered by nf_unlock(); a condition wait keeps it:
 * the thread is still inside). Nonzero: the thread is inside the
 * notifier, and the hooks' fast path must not re-enter it (intercept.c).
 * Why a thread-local count and not nf_held() of each lock: those are
 * loads of the lock words, on cache lines the monitor writes at every
 * drain (a miss per munmap on another CPU). */
extern _Thread_local unsigned nf_depth;
void nf_unlock(struct nf_lock *l);
bool nf_held(struct nf_lock *l);
void nf_cond_wait(pthread_cond_t *c, struct nf_lock *l);
void nf_assert_fail(const char *what, const char *file, int line);

#ifdef UODP_DEBUG
#define NF_ASSERT_HELD(l)                                                \
	do {                                                             \
		if (!nf_held(l))                                         \
			nf_assert_fail("lock " #l " not held", __FILE__, \
				       __LINE__);                        \
	} while (0)
#else
#define NF_ASSERT_HELD(l) ((void)0)
#endif

/* Unmap log: ranges of UNMAP / REMAP events, written by the monitor
 * thread, read by watch.c to invalidate the watched records they touch. */
#define NF_LOG 256
struct nf_logent {
	_Atomic uint64_t start, end;
};

/* Relay ring: deferred finish calls, fixed size (no allocation on the
 * monitor thread). */
#define NF_RING 1024
struct nf_entry {
	struct unf_sub *sub;
	uint64_t start, end;
	enum unf_event ev;
	unsigned unfences; /* fence references released after finish */
	unsigned merged;   /* begins this finish stands for (>= 1) */
};

/* A cache line (x86-64, arm64). Why it matters: see struct unf_sub's gap
 * and nf_state's locks. */
#define NF_LINE 64

struct unf_sub {
	/* Read by every delivery, written only at subscribe / detach. */
	const struct unf_ops *ops;
	void *owner;
	unsigned flags;
	unsigned gen;	       /* nf.gen at subscribe: a forked child differs */
	_Atomic bool detached; /* unf_detach() ran: no event, no watch */
	struct unf_sub *next;  /* nf.subs; under nf.subs_lock */
	/* A line's worth of gap (calloc gives no line alignment): the fields
	 * above never share a line with fence_lock and the relay state below,
	 * which the monitor writes at every drain (the hooks' in-thread
	 * delivery reads the ones above from another CPU). */
	char gap[NF_LINE];

	/* Fence nesting (strict): under fence_lock, which is held across
	 * ops->fence / ops->unfence so they alternate strictly. */
	pthread_mutex_t fence_lock;
	unsigned fence_depth;

	/* Relay state; under nf.ring_lock. */
	uint64_t inflight;     /* ring entries + overflow + running op */
	uint64_t last_seq;     /* ring sequence of the last entry queued */
	bool has_last;	       /* last_seq is meaningful */
	bool running;	       /* the relay runs one of our entries now */
	unsigned run_unfences; /* released by the relay after that entry */
	bool ovf_set;	       /* ovf holds coalesced events (ring was full) */
	struct nf_entry ovf;
	struct unf_sub *ovf_next; /* nf.ovf_list */
};

/* One watched stretch: see watch.c. */
struct nf_pair;
struct nf_piece {
	uint64_t start, end;
};

struct nf_state {
	/*
	 * Locks, in the order they nest (outer first). Ops of subscribers
	 * are called holding only subs_lock (monitor) or nothing (relay).
	 *
	 * life_lock: starting and stopping the notifier (fds, threads),
	 *   nsubs. Held across pthread_create / pthread_join; never taken by
	 *   the monitor or the relay thread. Taken by atfork prepare.
	 * subs_lock: the subscriber list. The monitor holds it across one
	 *   drain of events (it is the "read side": it calls begin / finish /
	 *   fence with it); subscribe / unsubscribe hold it only to link or
	 *   unlink, never across a system call or an allocation.
	 * watch_lock: the watched records (doms), the log position synced.
	 *   Held across /proc/self/maps reads, registration ioctls and
	 *   malloc. Never taken by the monitor or the relay thread, so a
	 *   deferred finish may wait for a thread in unf_watch().
	 * sub->fence_lock: fence depth of one subscriber (monitor, relay).
	 * ring_lock: the relay ring and the per-subscriber relay fields; a
	 *   leaf, held for a few instructions (the monitor takes it).
	 */
	/* Each hot lock on cache lines of its own (NF_LINE): the monitor
	 * writes subs_lock and ring_lock at every drain, the hooks' fast path
	 * takes watch_lock from another thread (and CPU): sharing a line
	 * with them, watch_lock was a cache miss after every kernel event. */
	struct nf_lock life_lock;
	_Alignas(NF_LINE) struct nf_lock subs_lock;
	_Alignas(NF_LINE) struct nf_lock watch_lock;
	_Alignas(NF_LINE) struct nf_lock ring_lock;
	_Alignas(NF_LINE) pthread_cond_t ring_cv; /* relay: work or stop
						     (ring_lock) */
	pthread_cond_t drained_cv; /* unsubscribe: a sub's inflight hit 0 */

	/* Life cycle; under life_lock (read racily by observers). */
	_Atomic bool running;
	_Atomic uint64_t nsubs; /* subscribers, including leaving ones */
	int uffd;
	int pipe[2]; /* monitor wake-up: read end polled, write end at stop */
	struct uffd_fdid uffd_id, pipe_id[2];
	uint64_t features;
	pthread_t mon, relay;
	/* Their stacks are ours (notifier.c: own_stack()), not glibc's:
	 * glibc madvises a cached stack at thread exit, and a stack inside a
	 * watched range (a region over the whole address space) would then
	 * raise an event the exiting monitor itself must read. */
	void *mon_stack, *relay_stack;
	bool relay_started;
	_Atomic pid_t mon_tid;
	_Atomic bool stop;    /* monitor: stop (after draining the fd) */
	bool relay_stop;      /* under ring_lock */
	_Atomic unsigned gen; /* bumped in a forked child */

	/* -EBADF once one of our descriptors was closed or replaced behind
	 * our back: no more events; calls fail. Cleared at stop. */
	_Atomic int broken;

	/* Monitor thread -> watch.c (see watch.c for the protocol). */
	_Alignas(NF_LINE) _Atomic uint64_t epoch; /* odd while the monitor
						     reads events */
	_Atomic uint64_t log_claim, log_head;
	struct nf_logent log[NF_LOG];
	_Atomic uint64_t all_ok; /* even epoch at which every record was
				    verified whole; 0 = no */

	/* Moves (REMAP) read, and reported to the subscribers' moved op:
	 * read is raised before the read's epoch turns even, done once
	 * moved() ran for them, with no subscriber op but moved() in
	 * between (unf_barrier() waits on these, never on subs_lock: the
	 * monitor holds that across strict fences, which may wait for a
	 * driver lock the waiting thread holds). */
	_Atomic uint64_t moves_read, moves_done;

	/* Under subs_lock. */
	struct unf_sub *subs;

	/* Under watch_lock. */
	struct itree doms;
	uint64_t ndoms, unverified;
	uint64_t synced_epoch, synced_head;

	/* Under ring_lock. */
	struct nf_entry ring[NF_RING];
	uint64_t ring_head, ring_tail; /* sequence numbers: pop, push */
	struct unf_sub *ovf_list;      /* subs with ovf_set, FIFO */
	struct unf_sub *ovf_last;
	bool ring_kick; /* something queued since the relay was woken */

	_Alignas(NF_LINE) struct {
		_Atomic uint64_t unmap, remove, remap, other, wakeups, fences,
			slow_prepares, relayed, coalesced, registrations,
			unsure_registrations;
	} st;
};

extern struct nf_state nf;

static inline void nf_stat_inc(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* watch.c */
int nf_watch(struct unf_sub *sub, uint64_t start, uint64_t end, bool lazy);
void nf_unwatch(struct unf_sub *sub, uint64_t start, uint64_t end);
int nf_prepare_slow(uint64_t start, uint64_t end, bool *settled);
void nf_drop_sub(struct unf_sub *sub); /* all watches of @sub */
void nf_drop_all(void);		       /* stop: unregister and free all */
void nf_forget_all(void);	       /* forked child: forget, no syscall */

/* notifier.c: is our userfaultfd still ours? Marks broken if not. */
bool nf_uffd_ok(void);

#endif

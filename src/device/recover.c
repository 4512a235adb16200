/* SPDX-License-Identifier: MIT */
/*
 * recover.c - guarded instructions: a device access that touches host
 * memory directly and survives the memory vanishing under it.
 *
 * 8-byte atomics have no syscall that fails cleanly on a hole (there is no
 * process_vm_* for atomics), and the application may munmap or mprotect a
 * page between the device page-table check and the instruction (munmap's
 * userfaultfd event arrives only after the pages are gone; mprotect sends
 * none). So the instruction runs inside a window: a thread-local record
 * holds a sigsetjmp() point and the ranges the window may touch: the
 * host range [lo, hi) and, for a copy, the caller's buffer (a bad buffer
 * is the caller's -EFAULT, not a crash: issue 12, finding 1). A process-wide SIGSEGV/SIGBUS handler, installed once, checks the
 * record of the faulting thread: a fault whose address is inside the armed
 * range of that thread's window jumps back (the access fails with -EFAULT);
 * any other fault goes to the handler that was installed before ours (or,
 * if that was the default, is re-delivered with the default action), so
 * the application's own crash behaviour is unchanged. The handler is
 * (re)installed by every uodp_dev_open(), in front of whatever handler is
 * current then.
 *
 * Chaining: each (re)installation pushes the handler it replaces on a
 * small stack of predecessors (at most RCV_PREV_MAX; when full, the device
 * stops going in front again; a handler already on it is not pushed twice,
 * the stack is cut back to it). A fault that is not ours goes to the top
 * one. That handler may itself chain to the handler it replaced, which can
 * be ours (installed before it): we then get the same delivery again,
 * nested, and pass it one level further down the stack, and below the
 * bottom to the default action. Without this a chaining handler behind us
 * and ours would call each other until the stack overflowed. A nested call
 * is recognised by the same siginfo pointer and a deeper stack frame than
 * the call in progress (a thread-local record; a handler that jumps out
 * leaves it stale, but a later delivery at the same depth is not deeper).
 * Thread-local data is initial-exec, so the handler never makes the
 * dynamic loader allocate a TLS block (not async-signal-safe).
 *
 * Why it is safe: the window holds nothing but one instruction (or, for
 * the fast copy, one rep movsb) written in assembly, so no lock, allocator
 * or sanitizer state can be left half updated by the jump, and nothing but
 * that instruction can fault on the armed range while armed... except an
 * asynchronous signal handler that runs inside the window and faults on
 * the very same bytes, which we accept. The instructions are assembly also
 * so that ThreadSanitizer does not run them inside its own runtime (whose
 * locks a jump would leave held). Limitations: an application that
 * replaces our handler after uodp_dev_open() without chaining to it loses
 * this protection until the next uodp_dev_open() (atomics racing an munmap then crash as a CPU
 * access would); on architectures other than x86-64 the guarded window is
 * not available: atomics use the compiler's builtins unguarded, and the
 * fast copy is off.
 *
 * The window works whatever the thread's signal mask: it unblocks SIGSEGV
 * and SIGBUS while it runs (see rcv_mask_enter()). A fault sent with
 * kill() to a thread that ignores the signal (SIG_IGN) stays ignored.
 *
 * Cost (see docs/DEVICE.md): sigsetjmp without saving the mask, two
 * thread-local stores and one rt_sigprocmask() (two when the caller had
 * one of the signals blocked; none on the device's own worker threads,
 * see rcv_worker_mask()).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "device/device.h"

#if defined(__x86_64__)
#define RCV_GUARDED 1
#else
#define RCV_GUARDED 0
#endif

struct rcv_window {
	sigjmp_buf jb;
	uintptr_t lo, hi;   /* host range */
	uintptr_t lo2, hi2; /* copies: the caller's buffer (or empty) */
	volatile sig_atomic_t armed;
	volatile uintptr_t fault_addr;
};

#define RCV_TLS __thread __attribute__((tls_model("initial-exec")))
#define RCV_PREV_MAX 8

/* The handlers we went in front of, per signal (0: SIGSEGV, 1: SIGBUS),
 * oldest first. Written under rcv_lock: an entry is filled before n
 * publishes it, and never changed after, so the handler reads without the
 * lock. */
struct rcv_prev {
	struct sigaction sa[RCV_PREV_MAX];
	atomic_int n;
};

/* The delivery this thread's handler is passing on (see the top). */
struct rcv_nest {
	const siginfo_t *si;
	uintptr_t frame;
	int level;
};

static RCV_TLS struct rcv_window *volatile rcv_cur;
/* This thread is a device worker whose mask rcv_worker_mask() set: the
 * windows skip their rt_sigprocmask() (see rcv_worker_mask()). */
static RCV_TLS bool rcv_mask_known;
void (*rcv_test_hook_mask_call)(void);
static RCV_TLS struct rcv_nest rcv_nesting[2];
static struct rcv_prev rcv_prevs[2];
static pthread_mutex_t rcv_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int rcv_status = -ENOTSUP;
static void rcv_segvbus_init(void);

/* Hand a fault that is not ours to the handler @level places below the
 * newest one we replaced, or to the default action. */
static void rcv_chain(int sig, siginfo_t *si, void *uc, int level)
{
	struct rcv_prev *p = &rcv_prevs[sig == SIGBUS];
	int i = atomic_load_explicit(&p->n, memory_order_acquire) - 1 - level;
	const struct sigaction *old = i >= 0 ? &p->sa[i] : NULL;
	struct sigaction dfl;

	/* sa_handler and sa_sigaction share storage: SIG_DFL and SIG_IGN
	 * are recognised whatever SA_SIGINFO says, never called. */
	if (old && old->sa_handler == SIG_IGN) {
		/* The application ignores the signal. One sent with kill()
		 * or raise() is dropped, as the kernel would drop it. A
		 * fault the hardware raised cannot be ignored: the kernel
		 * kills the process whatever the disposition, so it takes
		 * the default action below, as it would without us. */
		if (si->si_code <= 0)
			return;
	} else if (old && old->sa_handler != SIG_DFL) {
		if (old->sa_flags & SA_SIGINFO)
			old->sa_sigaction(sig, si, uc);
		else
			old->sa_handler(sig);
		return;
	}
	/* Default action: restore it. A hardware fault re-executes the
	 * instruction and faults again, now fatally; a signal sent with
	 * kill() must be raised again. */
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	if (si->si_code <= 0)
		raise(sig);
}

static void rcv_handler(int sig, siginfo_t *si, void *uc)
{
	struct rcv_window *w = rcv_cur;
	uintptr_t a = (uintptr_t)si->si_addr;
	struct rcv_nest *nest = &rcv_nesting[sig == SIGBUS], saved;
	volatile char marker;
	uintptr_t here = (uintptr_t)&marker;
	int level = 0;

	if (w && w->armed && si->si_code > 0 &&
	    ((a >= w->lo && a < w->hi) || (a >= w->lo2 && a < w->hi2))) {
		w->armed = 0;
		w->fault_addr = a;
		/* The window's sigsetjmp() did not save the mask: the
		 * window puts back the one it saved on entry. */
		siglongjmp(w->jb, 1);
	}
	/* Called back, for the same delivery, by a handler we chained to? */
	if (nest->si == si && here < nest->frame)
		level = nest->level + 1;
	saved = *nest;
	nest->si = si;
	nest->frame = here;
	nest->level = level;
	rcv_chain(sig, si, uc, level);
	*nest = saved;
}

/*
 * Put our handler in front for both signals, remembering the one we
 * replace. Done at every uodp_dev_open(): if the application installed a
 * handler since (without chaining to ours), we go in front of it again.
 * Called under rcv_lock; the handler reads the predecessors without it.
 */
static bool same_handler(const struct sigaction *a, const struct sigaction *b)
{
	if ((a->sa_flags & SA_SIGINFO) != (b->sa_flags & SA_SIGINFO))
		return false;
	if (a->sa_flags & SA_SIGINFO)
		return a->sa_sigaction == b->sa_sigaction;
	return a->sa_handler == b->sa_handler;
}

static int rcv_install_one(int sig)
{
	struct rcv_prev *p = &rcv_prevs[sig == SIGBUS];
	int n = atomic_load_explicit(&p->n, memory_order_relaxed), i;
	struct sigaction sa, cur;

	if (sigaction(sig, NULL, &cur))
		return -errno;
	if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == rcv_handler)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = rcv_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	for (i = n - 1; i >= 0; i--)
		if (same_handler(&p->sa[i], &cur))
			break;
	if (i >= 0) {
		/* A handler we replaced before is back in front (a test
		 * framework re-installing its own, say): it is found again
		 * at its place; those pushed after it left the chain. */
		atomic_store_explicit(&p->n, i + 1, memory_order_release);
	} else if (n == RCV_PREV_MAX) {
		return 0; /* stay behind: the documented limitation */
	} else {
		p->sa[n] = cur;
		atomic_store_explicit(&p->n, n + 1, memory_order_release);
	}
	if (sigaction(sig, &sa, NULL))
		return -errno;
	return 0;
}

int rcv_init(void)
{
	int r;

	if (!RCV_GUARDED)
		return -ENOTSUP;
	pthread_mutex_lock(&rcv_lock);
	rcv_segvbus_init();
	r = rcv_install_one(SIGSEGV);
	if (!r)
		r = rcv_install_one(SIGBUS);
	atomic_store(&rcv_status, r);
	pthread_mutex_unlock(&rcv_lock);
	return r;
}

bool rcv_available(void)
{
	return RCV_GUARDED && atomic_load(&rcv_status) == 0;
}

/*
 * The signal mask around a window. A synchronous fault on a thread that
 * blocks SIGSEGV/SIGBUS is not delivered to any handler: the kernel resets
 * the disposition to the default and kills the process. Threads often
 * block every signal (the "block all in main, sigwait in one thread"
 * design, inherited by every thread created later), so each window on an
 * application thread unblocks the two signals for its duration and puts
 * the caller's mask back after it. One rt_sigprocmask() per window
 * when neither was blocked (the mask comes back with the unblock), two
 * when one was. After a jump out of the handler the mask is whatever the
 * delivery left (ours asks for SA_NODEFER, but a wrapper in front of it,
 * ThreadSanitizer's, may run it with the signal blocked): the saved mask
 * is set again in every case.
 */
static sigset_t rcv_segvbus;

static void rcv_segvbus_init(void)
{
	sigemptyset(&rcv_segvbus);
	sigaddset(&rcv_segvbus, SIGSEGV);
	sigaddset(&rcv_segvbus, SIGBUS);
}

/*
 * The device's own worker threads (queue.c) are the exception: their mask
 * is set once, when they start, and no one else can change it, so their
 * windows skip the system call. Why no one else can:
 *  - a thread's mask changes only by its own sigprocmask()/
 *    pthread_sigmask()/sigsuspend()/pselect-style calls, by a signal
 *    handler's delivery and return, or by siglongjmp() with a saved mask;
 *    no other thread can change it;
 *  - the code a worker runs is the device's, the engine's and the C
 *    library's: requests (dma.c), faults (uodp_umem_map_and_lock()), the
 *    context's callbacks, which are the device's own (dev.c: invalidate,
 *    fence, unfence; a shared context belongs to a device group too), and
 *    implicit children's creation and trim (engine registration, calloc'ed
 *    page-table directories, so no munmap() through the hooks library's
 *    wrappers, whose in-thread invalidations are the only path by which
 *    another context's callback could run on a thread of ours). None of it
 *    touches the mask except these windows;
 *  - asynchronous signals are blocked on workers (from their creation,
 *    queue.c's pool_start_locked(), and again here), so no
 *    application handler for them runs there; the synchronous ones it
 *    cannot block (SIGSEGV/SIGBUS must stay deliverable, and a SIGSEGV/
 *    SIGBUS sent with kill() goes to the application's handler through
 *    rcv_chain()) run a handler that either returns, and the kernel puts
 *    the worker's mask back from the signal frame, or ends the process,
 *    or jumps: only to a jump point on this thread, and the only ones on
 *    a worker are our windows', after which the window unblocks the two
 *    signals again (rcv_mask_after_jump()). A handler that rewrites the
 *    mask in its signal frame (uc_sigmask) of a thread it does not own is
 *    outside what any library can defend against.
 * Test: test_worker_mask (test_dev_hostile.c).
 */
void rcv_worker_sigset(sigset_t *m)
{
	/* As the monitor's thread (notifier.c): the synchronous ones stay
	 * as they are, a crash in our code keeps its default handling. */
	static const int sync_sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL,
					 SIGTRAP, SIGSYS, SIGABRT };
	size_t i;

	sigfillset(m);
	for (i = 0; i < sizeof(sync_sigs) / sizeof(sync_sigs[0]); i++)
		sigdelset(m, sync_sigs[i]);
}

int rcv_worker_mask(void)
{
	sigset_t m, now;
	int r;

	rcv_worker_sigset(&m);
	r = pthread_sigmask(SIG_SETMASK, &m, NULL);
	if (r)
		return -r;
	/* Trust what the kernel has, not what we asked for. */
	if (pthread_sigmask(SIG_BLOCK, NULL, &now))
		return -EINVAL;
	rcv_mask_known = !sigismember(&now, SIGSEGV) &&
			 !sigismember(&now, SIGBUS);
	return 0;
}

/* Unblock; true when the caller's mask must be put back after. */
static inline bool rcv_mask_enter(sigset_t *saved)
{
	if (rcv_mask_known)
		return false; /* a worker: unblocked since it started */
	if (rcv_test_hook_mask_call)
		rcv_test_hook_mask_call();
	if (pthread_sigmask(SIG_UNBLOCK, &rcv_segvbus, saved))
		return false;
	return sigismember(saved, SIGSEGV) || sigismember(saved, SIGBUS);
}

static inline void rcv_mask_leave(const sigset_t *saved, bool restore)
{
	if (restore)
		pthread_sigmask(SIG_SETMASK, saved, NULL);
}

/* After a jump out of the handler: the delivery may have left the signal
 * blocked (see above), so put back the caller's mask, or on a worker
 * (nothing saved) unblock the two again. An error path: the system call
 * does not matter here. */
static inline void rcv_mask_after_jump(const sigset_t *saved)
{
	if (rcv_mask_known)
		pthread_sigmask(SIG_UNBLOCK, &rcv_segvbus, NULL);
	else
		pthread_sigmask(SIG_SETMASK, saved, NULL);
}

#if RCV_GUARDED
/*
 * The guarded instructions. noinline keeps each window a plain call the
 * compiler cannot merge with surrounding code; the asm is opaque to
 * sanitizers.
 */
static __attribute__((noinline)) void rcv_movs(void *dst, const void *src,
					       size_t n)
{
	__asm__ volatile("rep movsb"
			 : "+D"(dst), "+S"(src), "+c"(n)
			 :
			 : "memory");
}

static __attribute__((noinline)) uint64_t rcv_xadd(uint64_t *p, uint64_t v)
{
	__asm__ volatile("lock xaddq %0, %1"
			 : "+r"(v), "+m"(*p)
			 :
			 : "memory", "cc");
	return v;
}

static __attribute__((noinline)) uint64_t rcv_cmpxchg(uint64_t *p, uint64_t cmp,
						      uint64_t swap)
{
	__asm__ volatile("lock cmpxchgq %2, %1"
			 : "+a"(cmp), "+m"(*p)
			 : "r"(swap)
			 : "memory", "cc");
	return cmp;
}
#endif

/*
 * Each guarded call: unblock the two signals, publish the window, take
 * the jump point, arm, run the instruction, disarm, put the mask back.
 * Results travel through volatile locals (a value changed between
 * sigsetjmp and siglongjmp is otherwise indeterminate).
 */
#if RCV_GUARDED
#define RCV_ENTER(w, l1, h1, l2, h2, saved, restore)  \
	do {                                          \
		(w).lo = (l1);                        \
		(w).hi = (h1);                        \
		(w).lo2 = (l2);                       \
		(w).hi2 = (h2);                       \
		(w).armed = 0;                        \
		(restore) = rcv_mask_enter(&(saved)); \
		rcv_cur = &(w);                       \
	} while (0)
#endif

int rcv_copy(void *dst, const void *src, size_t n, uintptr_t lo, uintptr_t hi,
	     uintptr_t lo2, uintptr_t hi2, uint64_t *fault_va)
{
#if RCV_GUARDED
	struct rcv_window w;
	sigset_t saved;
	volatile bool restore;

	RCV_ENTER(w, lo, hi, lo2, hi2, saved, restore);
	if (sigsetjmp(w.jb, 0)) {
		rcv_cur = NULL;
		rcv_mask_after_jump(&saved);
		*fault_va = w.fault_addr;
		return -EFAULT;
	}
	w.armed = 1;
	atomic_signal_fence(memory_order_seq_cst);
	rcv_movs(dst, src, n);
	atomic_signal_fence(memory_order_seq_cst);
	w.armed = 0;
	rcv_cur = NULL;
	rcv_mask_leave(&saved, restore);
	return 0;
#else
	(void)dst;
	(void)src;
	(void)n;
	(void)hi;
	(void)lo2;
	(void)hi2;
	*fault_va = lo;
	return -ENOTSUP;
#endif
}

int rcv_fetch_add(uint64_t *p, uint64_t add, uint64_t *old)
{
#if RCV_GUARDED
	struct rcv_window w;
	volatile uint64_t v = 0;
	sigset_t saved;
	volatile bool restore;

	RCV_ENTER(w, (uintptr_t)p, (uintptr_t)p + sizeof(*p), 0, 0, saved,
		  restore);
	if (sigsetjmp(w.jb, 0)) {
		rcv_cur = NULL;
		rcv_mask_after_jump(&saved);
		return -EFAULT;
	}
	w.armed = 1;
	atomic_signal_fence(memory_order_seq_cst);
	v = rcv_xadd(p, add);
	atomic_signal_fence(memory_order_seq_cst);
	w.armed = 0;
	rcv_cur = NULL;
	rcv_mask_leave(&saved, restore);
	*old = v;
	return 0;
#else
	*old = __atomic_fetch_add(p, add, __ATOMIC_SEQ_CST);
	return 0;
#endif
}

int rcv_cmp_swap(uint64_t *p, uint64_t cmp, uint64_t swap, uint64_t *old)
{
#if RCV_GUARDED
	struct rcv_window w;
	volatile uint64_t v = 0;
	sigset_t saved;
	volatile bool restore;

	RCV_ENTER(w, (uintptr_t)p, (uintptr_t)p + sizeof(*p), 0, 0, saved,
		  restore);
	if (sigsetjmp(w.jb, 0)) {
		rcv_cur = NULL;
		rcv_mask_after_jump(&saved);
		return -EFAULT;
	}
	w.armed = 1;
	atomic_signal_fence(memory_order_seq_cst);
	v = rcv_cmpxchg(p, cmp, swap);
	atomic_signal_fence(memory_order_seq_cst);
	w.armed = 0;
	rcv_cur = NULL;
	rcv_mask_leave(&saved, restore);
	*old = v;
	return 0;
#else
	uint64_t e = cmp;

	__atomic_compare_exchange_n(p, &e, swap, false, __ATOMIC_SEQ_CST,
				    __ATOMIC_SEQ_CST);
	*old = e;
	return 0;
#endif
}

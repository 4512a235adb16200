/* SPDX-License-Identifier: MIT */
/*
 * intercept.h - the contract between the notifier (in libuodp) and the
 * preload library libuodp-hooks.so (hooks/): the in-thread fast path for
 * munmap / mremap / madvise / mmap(MAP_FIXED) / shmat(SHM_REMAP) / shmdt.
 *
 * Why: the kernel makes a thread that unmaps watched memory wait until the
 * monitor thread reads the event: two context switches (measured 11.7 us
 * against 5.4 us for a 4 KiB munmap, 40 us when the monitor sleeps on
 * another CPU). The hooks wrap libc's functions; for a call over watched
 * memory they ask the notifier to take the registered parts of the range
 * out of the userfaultfd first (UFFDIO_UNREGISTER: the kernel then sends no
 * event and does not wait), call the real function, and deliver the event
 * to every subscriber from the calling thread, exactly as the monitor
 * would (fence, begin, finish or a finish queued to the relay, unfence;
 * no fence for a subscriber with UNF_FENCE_READS, whose fence only matters
 * while the unmapping thread could return before the finish).
 *
 * Nothing is lost by construction: what stays registered still sends its
 * kernel event (the userfaultfd stays the safety net for raw system calls,
 * static code and libc-internal calls), and what was taken out is covered
 * by the in-thread delivery, which runs after the real call. A call the
 * kernel refused is delivered only where it unmapped something (what is
 * still mapped is registered again and keeps its translations and pins;
 * what cannot be registered again or read is delivered as a REMOVE:
 * intercept.c, failed()). When in doubt (a notifier lock is busy, too many
 * pieces, the calling thread is inside the notifier) the fast path is not
 * taken and the call goes to the kernel path unchanged.
 *
 * Binding: libuodp's symbols are hidden, so the hooks library exports
 * UODP_HOOKS_ATTACH and the notifier, when its first subscriber arrives,
 * looks it up (dlsym(RTLD_DEFAULT)) and hands it its ops table. Without the
 * hooks library nothing changes.
 */
#ifndef UODP_NOTIFIER_INTERCEPT_H
#define UODP_NOTIFIER_INTERCEPT_H

#include <stdatomic.h>
#include <stdint.h>

/* 2: UODP_ICPT_RETRY (a hooks library of ABI 1 would ignore it and lose
 * the events of a refused madvise: it must not attach). */
#define UODP_ICPT_ABI 2

/* Event kinds: the values of enum unf_event. */
#define UODP_ICPT_UNMAP 1
#define UODP_ICPT_REMOVE 2
#define UODP_ICPT_REMAP 3

/* flags */
#define UODP_ICPT_KEEP 1u /* the mapping stays (madvise): re-register it */
#define UODP_ICPT_SHM 2u  /* shmdt(r[0].start): no kernel event at all */
/* shmat(SHM_REMAP) over r[0]: the kernel sends no event and drops the
 * registration of what it replaces: delivered whatever the call returned
 * (never backed out like the others, whose leftovers the kernel still
 * reports), up to the end of the new attachment if that is longer
 * (hugetlb segments are rounded up to their page size). */
#define UODP_ICPT_SILENT 4u
/* Set by after() (out), for a UODP_ICPT_KEEP call that failed: what
 * before() took out is registered again and nothing was delivered; the
 * hooks call the real function once more, so that the kernel reports
 * exactly what it changes. Why: a madvise refused in part (EINVAL at a
 * locked mapping, after discarding the ones before it) changed some of
 * the range, and a delivery over all of it would drop and unpin pages the
 * kernel kept (a pinning context's device may hold their frames). */
#define UODP_ICPT_RETRY 8u

/* Why 16: a munmap / madvise range rarely covers more than a few watched
 * mappings; more than 16 registered pieces go to the kernel path. */
#define UODP_ICPT_MAXP 16
#define UODP_ICPT_MAXR 2

struct uodp_icpt {
	/* Set by the hooks: the ranges the call changes, page aligned. */
	unsigned nr, flags;
	struct {
		uint64_t start, end;
		int ev;
	} r[UODP_ICPT_MAXR];
	/* The notifier's, between before() and after(). */
	unsigned np;
	int state;
	struct {
		uint64_t start, end;
	} p[UODP_ICPT_MAXP];
};

struct uodp_icpt_stats {
	uint64_t fast;	  /* calls that took the in-thread path */
	uint64_t passed;  /* nothing watched there: the real call alone */
	uint64_t busy;	  /* a notifier lock was busy: kernel path */
	uint64_t toomany; /* more than UODP_ICPT_MAXP pieces: kernel path */
	uint64_t rereg;	  /* madvise: registrations restored after */
	uint64_t dirty;	  /* a registration could not be restored */
	uint64_t shm;	  /* shmdt delivered in-thread */
	uint64_t events;  /* ranges delivered in-thread */
};

struct uodp_icpt_ops {
	unsigned abi, size; /* UODP_ICPT_ABI, sizeof(struct uodp_icpt_ops) */
	/* Before the real call. 1: call it, then after() (always); 0: call
	 * the real function alone. Sets errno to nothing. Neither is a
	 * cancellation point (both disable it: the wrapped calls are none). */
	int (*before)(struct uodp_icpt *ic);
	/* After the real call; @ok: it succeeded. */
	void (*after)(struct uodp_icpt *ic, int ok);
	void (*stats)(struct uodp_icpt_stats *out);
	/* Quick check without a call: bit (addr >> filter_shift) %
	 * filter_bits of filter[] clear means nothing watched is there. A
	 * record that exists when the check starts never reads clear (not
	 * even while another record's removal rebuilds the filter): for
	 * shmat(SHM_REMAP), which the kernel does not report, a clear bit is
	 * final; for the other calls it sends them the kernel path. */
	const _Atomic uint64_t *filter;
	unsigned filter_bits, filter_shift;
};

/* Exported by libuodp-hooks.so: void uodp_hooks_attach_v1(const struct
 * uodp_icpt_ops *ops). The first libuodp to start its notifier attaches;
 * the ops stay valid for the life of the process (libuodp is not meant to
 * be unloaded while the hooks are used). */
#define UODP_HOOKS_ATTACH "uodp_hooks_attach_v1"
typedef void uodp_hooks_attach_fn(const struct uodp_icpt_ops *ops);

#endif

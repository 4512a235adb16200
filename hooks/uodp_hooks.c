/* SPDX-License-Identifier: MIT */
/*
 * libuodp-hooks.so - in-thread invalidation for libc's munmap, mremap,
 * madvise, mmap(MAP_FIXED), shmat(SHM_REMAP) and shmdt (see
 * src/notifier/intercept.h).
 *
 * Preload it (LD_PRELOAD=libuodp-hooks.so) or link it before libc. Each
 * wrapper calls the real function (dlsym(RTLD_NEXT)); over memory that
 * uodp's notifier watches it first asks the notifier to take the range out
 * of the userfaultfd, and afterwards to deliver the event from this thread:
 * the unmapping thread no longer waits for the monitor thread (two context
 * switches). Everything else goes straight to libc. UODP_HOOKS=0 in the
 * environment turns the fast path off (the wrappers then only forward).
 *
 * Not seen by the hooks (and still reported by the kernel, as without
 * them): raw syscall(SYS_munmap), statically linked code, and libc's own
 * internal calls (glibc's free() of a large block unmaps without going
 * through the exported munmap).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "notifier/intercept.h"
#include "uodp_hooks.h"

#define EXPORT __attribute__((visibility("default")))

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24 /* Linux 5.18 */
#endif

static _Atomic(const struct uodp_icpt_ops *) ops;
static _Atomic int enabled = 1;
/* Re-entry guard: the notifier's work or a driver callback may call these.
 * initial-exec: no allocation on first access (we may be inside malloc). */
static __thread int busy __attribute__((tls_model("initial-exec")));
static uint64_t page = 4096;

typedef int munmap_fn(void *, size_t);
typedef void *mremap_fn(void *, size_t, size_t, int, ...);
typedef int madvise_fn(void *, size_t, int);
typedef int shmdt_fn(const void *);
typedef void *shmat_fn(int, const void *, int);
typedef void *mmap_fn(void *, size_t, int, int, int, off_t);

static munmap_fn *real_munmap;
static mremap_fn *real_mremap;
static madvise_fn *real_madvise;
static shmdt_fn *real_shmdt;
static shmat_fn *real_shmat;
static mmap_fn *real_mmap;

static void *next_sym(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

__attribute__((constructor)) static void hooks_init(void)
{
	const char *env = getenv("UODP_HOOKS");
	long pg = sysconf(_SC_PAGESIZE);
	void *p;

	if (pg > 0)
		page = (uint64_t)pg;
	if (env && !strcmp(env, "0"))
		atomic_store(&enabled, 0);
	busy++; /* dlsym may allocate, and allocators may unmap */
	p = next_sym("munmap");
	memcpy(&real_munmap, &p, sizeof(p));
	p = next_sym("mremap");
	memcpy(&real_mremap, &p, sizeof(p));
	p = next_sym("madvise");
	memcpy(&real_madvise, &p, sizeof(p));
	p = next_sym("shmdt");
	memcpy(&real_shmdt, &p, sizeof(p));
	p = next_sym("shmat");
	memcpy(&real_shmat, &p, sizeof(p));
	p = next_sym("mmap");
	memcpy(&real_mmap, &p, sizeof(p));
	busy--;
}

EXPORT void uodp_hooks_attach_v1(const struct uodp_icpt_ops *o)
{
	const struct uodp_icpt_ops *none = NULL;

	if (!o || o->abi != UODP_ICPT_ABI || o->size < sizeof(*o))
		return;
	atomic_compare_exchange_strong(&ops, &none, o);
}

EXPORT int uodp_hooks_enable(int on)
{
	return atomic_exchange(&enabled, on ? 1 : 0);
}

EXPORT int uodp_hooks_attached(void)
{
	return atomic_load(&ops) != NULL;
}

EXPORT int uodp_hooks_stats(struct uodp_icpt_stats *out)
{
	const struct uodp_icpt_ops *o = atomic_load(&ops);

	if (!o || !out)
		return -ENOENT;
	o->stats(out);
	return 0;
}

/* The ops when the fast path may run on this call, else NULL. */
static const struct uodp_icpt_ops *fast(void)
{
	const struct uodp_icpt_ops *o;

	if (busy || !atomic_load_explicit(&enabled, memory_order_relaxed))
		return NULL;
	o = atomic_load_explicit(&ops, memory_order_acquire);
	return o;
}

/* [addr, addr + len) rounded out to pages; false when the kernel would
 * refuse it anyway (unaligned, empty, wrapping): no fast path then. */
static bool span(const void *addr, size_t len, uint64_t *s, uint64_t *e)
{
	uint64_t a = (uint64_t)(uintptr_t)addr;
	uint64_t l = ((uint64_t)len + page - 1) & ~(page - 1);

	if (!len || (a & (page - 1)) || l < len || a + l < a)
		return false;
	*s = a;
	*e = a + l;
	return true;
}

/* May [s, e) be watched? The notifier's filter, read without a call or a
 * lock: a clear bit is "no" (and a stale one costs only the kernel path). */
static bool maybe(const struct uodp_icpt_ops *o, uint64_t s, uint64_t e)
{
	uint64_t g, last;

	if (o->size < sizeof(*o) || !o->filter)
		return true;
	g = s >> o->filter_shift;
	last = (e - 1) >> o->filter_shift;
	if (last - g >= 64) /* large: let the notifier look */
		return true;
	for (; g <= last; g++) {
		uint64_t b = g % o->filter_bits;

		if (atomic_load_explicit(&o->filter[b / 64],
					 memory_order_relaxed) &
		    (1ull << (b % 64)))
			return true;
	}
	return false;
}

/*
 * Around the real call of a wrapper that took the fast path: enter() marks
 * the thread busy (the notifier's work and the callbacks may call the
 * wrappers again) and asks the notifier to take the range out
 * (before()); true when it did. leave() then delivers the event from this
 * thread (after(): whatever the call returned, @ok says whether it
 * succeeded) with the call's errno kept, and unmarks the thread. errno is
 * the caller's @err when the real call starts.
 */
static bool enter(const struct uodp_icpt_ops *o, struct uodp_icpt *ic, int err)
{
	bool took;

	busy++;
	took = o->before(ic) > 0;
	errno = err;
	return took;
}

static void leave(const struct uodp_icpt_ops *o, struct uodp_icpt *ic,
		  bool took, bool ok)
{
	if (took) {
		int err = errno;

		o->after(ic, ok);
		errno = err;
	}
	busy--;
}

static int call_munmap(void *addr, size_t len)
{
	if (real_munmap)
		return real_munmap(addr, len);
	return (int)syscall(SYS_munmap, addr, len);
}

EXPORT int munmap(void *addr, size_t len)
{
	const struct uodp_icpt_ops *o = fast();
	struct uodp_icpt ic;
	bool fast_path;
	int r, err = errno;

	if (!o || !span(addr, len, &ic.r[0].start, &ic.r[0].end) ||
	    !maybe(o, ic.r[0].start, ic.r[0].end))
		return call_munmap(addr, len);
	ic.nr = 1;
	ic.flags = 0;
	ic.r[0].ev = UODP_ICPT_UNMAP;
	fast_path = enter(o, &ic, err);
	r = call_munmap(addr, len);
	leave(o, &ic, fast_path, r == 0);
	return r;
}

static int call_madvise(void *addr, size_t len, int advice)
{
	if (real_madvise)
		return real_madvise(addr, len, advice);
	return (int)syscall(SYS_madvise, addr, len, advice);
}

/* The advices the kernel reports as REMOVE (pages discarded). */
static bool discards(int advice)
{
	return advice == MADV_DONTNEED || advice == MADV_FREE ||
	       advice == MADV_REMOVE || advice == MADV_DONTNEED_LOCKED;
}

EXPORT int madvise(void *addr, size_t len, int advice)
{
	const struct uodp_icpt_ops *o = fast();
	struct uodp_icpt ic;
	bool fast_path;
	int r, err = errno;

	if (!o || !discards(advice) ||
	    !span(addr, len, &ic.r[0].start, &ic.r[0].end) ||
	    !maybe(o, ic.r[0].start, ic.r[0].end))
		return call_madvise(addr, len, advice);
	ic.nr = 1;
	ic.flags = UODP_ICPT_KEEP;
	ic.r[0].ev = UODP_ICPT_REMOVE;
	fast_path = enter(o, &ic, err);
	r = call_madvise(addr, len, advice);
	leave(o, &ic, fast_path, r == 0);
	/* Refused (in part): registered again, nothing delivered; the
	 * kernel reports what this call discards (UODP_ICPT_RETRY). */
	if (fast_path && (ic.flags & UODP_ICPT_RETRY))
		r = call_madvise(addr, len, advice);
	return r;
}

static void *call_mremap(void *old, size_t osz, size_t nsz, int flags,
			 void *naddr)
{
	if (real_mremap)
		return real_mremap(old, osz, nsz, flags, naddr);
	return (void *)syscall(SYS_mremap, old, osz, nsz, flags, naddr);
}

/*
 * Only the moves and shrinks whose outcome is known before the call go
 * the fast path: a shrink in place (UNMAP of the tail) and MREMAP_FIXED
 * (REMAP of the source, UNMAP of what was at the target). A growth that
 * may move is left to the kernel (in place it sends no event at all).
 */
EXPORT void *mremap(void *old, size_t osz, size_t nsz, int flags, ...)
{
	const struct uodp_icpt_ops *o = fast();
	struct uodp_icpt ic;
	bool fast_path;
	void *naddr = NULL, *r;
	uint64_t s, e, ns, ne;
	int err = errno;
	va_list ap;

	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		naddr = va_arg(ap, void *);
		va_end(ap);
	}
	if (!o || (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED)) ||
	    !span(old, osz, &s, &e) || !nsz)
		return call_mremap(old, osz, nsz, flags, naddr);
	ic.flags = 0;
	if (flags & MREMAP_FIXED) {
		if (!(flags & MREMAP_MAYMOVE) || !span(naddr, nsz, &ns, &ne))
			return call_mremap(old, osz, nsz, flags, naddr);
		ic.nr = 2;
		ic.r[0].start = s;
		ic.r[0].end = e;
		ic.r[0].ev = UODP_ICPT_REMAP;
		ic.r[1].start = ns;
		ic.r[1].end = ne;
		ic.r[1].ev = UODP_ICPT_UNMAP;
		if (!maybe(o, s, e) && !maybe(o, ns, ne))
			return call_mremap(old, osz, nsz, flags, naddr);
	} else {
		uint64_t keep = ((uint64_t)nsz + page - 1) & ~(page - 1);

		if (keep >= e - s)
			return call_mremap(old, osz, nsz, flags, naddr);
		ic.nr = 1;
		ic.r[0].start = s + keep;
		ic.r[0].end = e;
		ic.r[0].ev = UODP_ICPT_UNMAP;
		if (!maybe(o, ic.r[0].start, ic.r[0].end))
			return call_mremap(old, osz, nsz, flags, naddr);
	}
	fast_path = enter(o, &ic, err);
	r = call_mremap(old, osz, nsz, flags, naddr);
	leave(o, &ic, fast_path, r != MAP_FAILED);
	return r;
}

static void *call_mmap(void *addr, size_t len, int prot, int flags, int fd,
		       off_t off)
{
	if (real_mmap)
		return real_mmap(addr, len, prot, flags, fd, off);
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

/* MAP_FIXED replaces what is mapped there: UNMAP of the range. */
EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd,
		  off_t off)
{
	const struct uodp_icpt_ops *o;
	struct uodp_icpt ic;
	bool fast_path;
	void *r;
	int err = errno;

	if (!(flags & MAP_FIXED) || (flags & MAP_FIXED_NOREPLACE))
		return call_mmap(addr, len, prot, flags, fd, off);
	o = fast();
	if (!o || !span(addr, len, &ic.r[0].start, &ic.r[0].end) ||
	    !maybe(o, ic.r[0].start, ic.r[0].end))
		return call_mmap(addr, len, prot, flags, fd, off);
	ic.nr = 1;
	ic.flags = 0;
	ic.r[0].ev = UODP_ICPT_UNMAP;
	fast_path = enter(o, &ic, err);
	r = call_mmap(addr, len, prot, flags, fd, off);
	leave(o, &ic, fast_path, r != MAP_FAILED);
	return r;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd,
		    off_t off) __attribute__((alias("mmap")));

static int call_shmdt(const void *addr)
{
	if (real_shmdt)
		return real_shmdt(addr);
	return (int)syscall(SYS_shmdt, addr);
}

/* shmdt() sends no userfaultfd event at all: with the hooks, subscribers
 * hear of it (UNMAP of the attachment) after it succeeded. */
EXPORT int shmdt(const void *addr)
{
	const struct uodp_icpt_ops *o = fast();
	struct uodp_icpt ic;
	bool fast_path;
	int r, err = errno;

	if (!o || ((uintptr_t)addr & (page - 1)))
		return call_shmdt(addr);
	ic.nr = 1;
	ic.flags = UODP_ICPT_SHM;
	ic.r[0].start = (uint64_t)(uintptr_t)addr;
	ic.r[0].end = ic.r[0].start + page;
	ic.r[0].ev = UODP_ICPT_UNMAP;
	fast_path = enter(o, &ic, err);
	r = call_shmdt(addr);
	leave(o, &ic, fast_path, r == 0);
	return r;
}

static void *call_shmat(int id, const void *addr, int flg)
{
	if (real_shmat)
		return real_shmat(id, addr, flg);
	return (void *)syscall(SYS_shmat, id, addr, flg);
}

/*
 * shmat(SHM_REMAP) replaces what is mapped at the address, and the kernel
 * sends no userfaultfd event for it (the attach maps without the unmap
 * bookkeeping that munmap and mmap(MAP_FIXED) do): without the hooks
 * nothing tells the subscribers. UNMAP of the range the segment will
 * cover, whose size IPC_STAT gives (a caller allowed to attach may read
 * it: both need read permission), delivered whatever happens
 * (UODP_ICPT_SILENT: never backed out, as the other wrappers may be when
 * the kernel still reports what they leave). Any other attach maps only
 * where nothing is: no event is due.
 */
EXPORT void *shmat(int id, const void *addr, int flg)
{
	const struct uodp_icpt_ops *o = fast();
	struct uodp_icpt ic;
	bool fast_path;
	struct shmid_ds ds;
	uintptr_t a = (uintptr_t)addr;
	void *r;
	int err = errno;

	if (!o || !addr || !(flg & SHM_REMAP))
		return call_shmat(id, addr, flg);
	if (flg & SHM_RND)
		a &= ~(uintptr_t)(SHMLBA - 1);
	if (shmctl(id, IPC_STAT, &ds) ||
	    !span((void *)a, ds.shm_segsz, &ic.r[0].start, &ic.r[0].end) ||
	    !maybe(o, ic.r[0].start, ic.r[0].end)) {
		errno = err;
		return call_shmat(id, addr, flg);
	}
	ic.nr = 1;
	ic.flags = UODP_ICPT_SILENT;
	ic.r[0].ev = UODP_ICPT_UNMAP;
	fast_path = enter(o, &ic, err);
	r = call_shmat(id, addr, flg);
	leave(o, &ic, fast_path, r != (void *)-1);
	return r;
}

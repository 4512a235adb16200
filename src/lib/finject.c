/* SPDX-License-Identifier: MIT */
/*
 * finject.c - the counting wrappers behind finject.h (test builds only).
 *
 * Compiled into the library as an empty unit (src/CMakeLists.txt globs
 * every lib/ source) and into
 * the test programs with UODP_FAULT_INJECT defined; those are linked with
 * -Wl,--wrap=<fn>, which resolves the library's calls to <fn> to
 * __wrap_<fn> here and __real_<fn> to the libc function.
 */
#ifdef UODP_FAULT_INJECT

#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include "lib/finject.h"

enum mode {
	M_OFF = 0,
	M_NTH,	/* the nth call only */
	M_FROM, /* the nth call and every later one */
	M_RANDOM
};

struct fclass {
	_Atomic int mode;
	atomic_ulong nth;
	atomic_int err;
	atomic_uint one_in;
	atomic_ulong seed;
	atomic_ulong calls;
	atomic_ulong failures;
};

static struct fclass classes[FI_NCLASS];
/* Any class armed: the wrappers' fast path is one relaxed load. */
static atomic_int armed;
static __thread int paused;
static atomic_long live_allocs;

static const char *const names[FI_NCLASS] = {
	[FI_ALLOC] = "alloc", [FI_THREAD] = "thread", [FI_UFFD] = "uffd",
	[FI_IOCTL] = "ioctl", [FI_MMAP] = "mmap",     [FI_OPEN] = "open",
};

/* Why these: the errno the real call reports when the resource runs out
 * (ENOMEM for memory, EAGAIN for threads, EMFILE for descriptors), which
 * is what an application under pressure actually sees. */
static const int default_err[FI_NCLASS] = {
	[FI_ALLOC] = ENOMEM, [FI_THREAD] = EAGAIN, [FI_UFFD] = EMFILE,
	[FI_IOCTL] = ENOMEM, [FI_MMAP] = ENOMEM,   [FI_OPEN] = EMFILE,
};

const char *finject_class_name(enum finject_class cls)
{
	return (unsigned)cls < FI_NCLASS ? names[cls] : "?";
}

int finject_default_errno(enum finject_class cls)
{
	return (unsigned)cls < FI_NCLASS ? default_err[cls] : EINVAL;
}

static void recount_armed(void)
{
	int i, any = 0;

	for (i = 0; i < FI_NCLASS; i++)
		any |= atomic_load(&classes[i].mode) != M_OFF;
	atomic_store(&armed, any);
}

static void arm(enum finject_class cls, int mode, unsigned long nth, int err,
		unsigned one_in, unsigned long seed)
{
	struct fclass *c;

	if ((unsigned)cls >= FI_NCLASS)
		return;
	c = &classes[cls];
	atomic_store(&c->mode, M_OFF);
	atomic_store(&c->calls, 0);
	atomic_store(&c->failures, 0);
	atomic_store(&c->nth, nth);
	atomic_store(&c->err, err ? err : default_err[cls]);
	atomic_store(&c->one_in, one_in);
	atomic_store(&c->seed, seed);
	atomic_store(&c->mode, mode);
	recount_armed();
}

void finject_arm(enum finject_class cls, unsigned long nth, int err)
{
	arm(cls, nth ? M_NTH : M_OFF, nth, err, 0, 0);
}

void finject_arm_from(enum finject_class cls, unsigned long nth, int err)
{
	arm(cls, nth ? M_FROM : M_OFF, nth, err, 0, 0);
}

void finject_arm_random(enum finject_class cls, unsigned one_in, int err,
			unsigned long seed)
{
	arm(cls, one_in ? M_RANDOM : M_OFF, 0, err, one_in, seed);
}

void finject_disarm_all(void)
{
	int i;

	for (i = 0; i < FI_NCLASS; i++)
		atomic_store(&classes[i].mode, M_OFF);
	atomic_store(&armed, 0);
}

unsigned long finject_calls(enum finject_class cls)
{
	return (unsigned)cls < FI_NCLASS ? atomic_load(&classes[cls].calls) : 0;
}

unsigned long finject_failures(enum finject_class cls)
{
	return (unsigned)cls < FI_NCLASS ? atomic_load(&classes[cls].failures) :
					   0;
}

void finject_pause(void)
{
	paused++;
}

void finject_resume(void)
{
	paused--;
}

/* splitmix64: a stateless mix of the seed and the call number, so that
 * concurrent callers need no shared generator state. */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Count a call of @cls; true (and *@err) when it must fail. */
static bool inject(enum finject_class cls, int *err)
{
	struct fclass *c = &classes[cls];
	unsigned long n;
	bool fail = false;
	int mode;

	if (!atomic_load_explicit(&armed, memory_order_relaxed) || paused)
		return false;
	mode = atomic_load(&c->mode);
	if (mode == M_OFF)
		return false;
	n = atomic_fetch_add(&c->calls, 1) + 1;
	switch (mode) {
	case M_NTH:
		fail = n == atomic_load(&c->nth);
		break;
	case M_FROM:
		fail = n >= atomic_load(&c->nth);
		break;
	case M_RANDOM:
		fail = mix(atomic_load(&c->seed) ^ n) %
			       atomic_load(&c->one_in) ==
		       0;
		break;
	}
	if (fail) {
		atomic_fetch_add(&c->failures, 1);
		*err = atomic_load(&c->err);
		/* FI_TRACE=1: where the failure was injected (resolve the
		 * binary(+offset) lines with addr2line -e). */
		if (getenv("FI_TRACE")) {
			void *bt[16];
			int n = backtrace(bt, 16);

			paused++;
			backtrace_symbols_fd(bt, n, 2);
			paused--;
		}
	}
	return fail;
}

/* ---- the wrappers ---- */

long finject_live_allocs(void)
{
	return atomic_load(&live_allocs);
}

void *__real_malloc(size_t n);
void __real_free(void *p);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
int __real_pthread_create(pthread_t *t, const pthread_attr_t *a,
			  void *(*fn)(void *), void *arg);
int __real_ioctl(int fd, unsigned long req, ...);
long __real_syscall(long nr, ...);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd,
		  off_t off);
int __real_open(const char *path, int flags, ...);

void *__wrap_malloc(size_t n);
void __wrap_free(void *p);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a,
			  void *(*fn)(void *), void *arg);
int __wrap_ioctl(int fd, unsigned long req, ...);
long __wrap_syscall(long nr, ...);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
		  off_t off);
int __wrap_open(const char *path, int flags, ...);

void *__wrap_malloc(size_t n)
{
	void *p;
	int err;

	if (inject(FI_ALLOC, &err)) {
		errno = err;
		return NULL;
	}
	p = __real_malloc(n);
	if (p)
		atomic_fetch_add(&live_allocs, 1);
	return p;
}

void __wrap_free(void *p)
{
	if (p)
		atomic_fetch_sub(&live_allocs, 1);
	__real_free(p);
}

void *__wrap_calloc(size_t n, size_t size)
{
	void *p;
	int err;

	if (inject(FI_ALLOC, &err)) {
		errno = err;
		return NULL;
	}
	p = __real_calloc(n, size);
	if (p)
		atomic_fetch_add(&live_allocs, 1);
	return p;
}

void *__wrap_realloc(void *p, size_t n)
{
	void *q;
	int err;

	/* realloc(p, 0) frees: never fail a free. */
	if (n && inject(FI_ALLOC, &err)) {
		errno = err;
		return NULL;
	}
	q = __real_realloc(p, n);
	if (!p && q)
		atomic_fetch_add(&live_allocs, 1);
	else if (p && !n)
		atomic_fetch_sub(&live_allocs, 1);
	return q;
}

void *finject_malloc(size_t n)
{
	return __wrap_malloc(n);
}

void *finject_calloc(size_t n, size_t size)
{
	return __wrap_calloc(n, size);
}

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a,
			  void *(*fn)(void *), void *arg)
{
	int err;

	if (inject(FI_THREAD, &err))
		return err;
	return __real_pthread_create(t, a, fn, arg);
}

int __wrap_ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	void *arg;
	int err;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (inject(FI_IOCTL, &err)) {
		errno = err;
		return -1;
	}
	return __real_ioctl(fd, req, arg);
}

/* syscall() takes up to six word-sized arguments; forwarding all six is
 * what the libc function itself does with its registers. Reading the ones
 * the caller did not pass reads its stack above the call (harmless, and
 * what libc's assembly does), which ASan reports: not instrumented. */
__attribute__((no_sanitize_address)) long __wrap_syscall(long nr, ...)
{
	va_list ap;
	long a[6];
	int i, err;

	va_start(ap, nr);
	for (i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
#ifdef __NR_userfaultfd
	if (nr == __NR_userfaultfd && inject(FI_UFFD, &err)) {
		errno = err;
		return -1;
	}
#else
	(void)err;
#endif
	return __real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
		  off_t off)
{
	int err;

	if (inject(FI_MMAP, &err)) {
		errno = err;
		return MAP_FAILED;
	}
	return __real_mmap(addr, len, prot, flags, fd, off);
}

int __wrap_open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	va_list ap;
	int err;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (inject(strcmp(path, "/dev/userfaultfd") ? FI_OPEN : FI_UFFD,
		   &err)) {
		errno = err;
		return -1;
	}
	return __real_open(path, flags, mode);
}

#else
/* ISO C wants at least one declaration in a translation unit. */
typedef int finject_disabled;
#endif /* UODP_FAULT_INJECT */

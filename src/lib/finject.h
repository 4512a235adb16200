/* SPDX-License-Identifier: MIT */
/*
 * finject.h - fault injection for test builds: make the N-th call of a
 * class (allocation, thread creation, userfaultfd, ioctl, mmap, open) fail
 * with a chosen errno.
 *
 * How it reaches the library: test binaries are linked with
 *   -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=pthread_create,
 *   --wrap=ioctl,--wrap=syscall,--wrap=mmap,--wrap=open,--wrap=free
 * (fuzz/CMakeLists.txt, UODP_FI_WRAP_OPTIONS), so every call the static
 * library's objects make to those functions lands in finject.c's
 * __wrap_* first. The library's sources are unchanged and the shared
 * library never contains any of this: finject.c compiles to nothing unless
 * UODP_FAULT_INJECT is defined, which only the test targets do. Calls made
 * from shared libraries (libc internals, cmocka) are not wrapped.
 *
 * Counting is global over all threads (worker threads' allocations count
 * too), so with several threads "the N-th call" is the N-th in time. A
 * class is armed with finject_arm(); calls are counted only while any
 * class is armed and the calling thread has not paused injection
 * (finject_pause(), for the test's own bookkeeping).
 *
 * uodp_malloc()/uodp_calloc() are for code that cannot be linked with
 * --wrap (none today): they are malloc/calloc, or the counting versions
 * in a UODP_FAULT_INJECT build.
 */
#ifndef UODP_FINJECT_H
#define UODP_FINJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

enum finject_class {
	FI_ALLOC = 0, /* malloc, calloc, realloc: NULL, errno ENOMEM */
	FI_THREAD,    /* pthread_create: returns the errno (EAGAIN) */
	FI_UFFD,      /* syscall(__NR_userfaultfd) and open(/dev/userfaultfd) */
	FI_IOCTL,     /* ioctl: -1, errno (ENOMEM by default) */
	FI_MMAP,      /* mmap: MAP_FAILED, errno ENOMEM */
	FI_OPEN,      /* open (other than /dev/userfaultfd): -1, errno EMFILE */
	FI_NCLASS
};

#ifdef UODP_FAULT_INJECT

/* Fail the @nth call (1-based, counted from now) of @cls with @err
 * (0: the class's default errno). @nth 0 disarms the class. One-shot: the
 * calls after the failing one succeed again. */
void finject_arm(enum finject_class cls, unsigned long nth, int err);
/* Fail every call of @cls from the @nth on (until disarmed). */
void finject_arm_from(enum finject_class cls, unsigned long nth, int err);
/* Random mode (fuzzer): fail each call of @cls with probability
 * 1/@one_in (0: off), from a private generator seeded with @seed. */
void finject_arm_random(enum finject_class cls, unsigned one_in, int err,
			unsigned long seed);
void finject_disarm_all(void);
/* Calls of @cls counted and failures injected since it was last armed. */
unsigned long finject_calls(enum finject_class cls);
unsigned long finject_failures(enum finject_class cls);
/* Not counted, never failed, on the calling thread while paused (nests). */
void finject_pause(void);
void finject_resume(void);
const char *finject_class_name(enum finject_class cls);
/* Blocks from the wrapped malloc/calloc/realloc not yet given to the
 * wrapped free (counted always, armed or not): equal before and after a
 * flow that should leak nothing. */
long finject_live_allocs(void);
int finject_default_errno(enum finject_class cls);

void *finject_malloc(size_t n);
void *finject_calloc(size_t n, size_t size);
#define uodp_malloc(n) finject_malloc(n)
#define uodp_calloc(n, s) finject_calloc(n, s)

#else

#define uodp_malloc(n) malloc(n)
#define uodp_calloc(n, s) calloc(n, s)

#endif /* UODP_FAULT_INJECT */

#endif

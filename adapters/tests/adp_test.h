/* SPDX-License-Identifier: MIT */
/* adp_test.h - small helpers shared by the adapters' tests (not cmocka:
 * these programs run scenarios against real libfabric / UCX and report
 * figures; each check prints what failed and the program exits 1). */
#ifndef ADP_TEST_H
#define ADP_TEST_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define ADP_SKIP 77

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
			exit(1);                                               \
		}                                                              \
	} while (0)

#define CHECK_EQ(a, b)                                               \
	do {                                                         \
		long long a_ = (long long)(a), b_ = (long long)(b);  \
		if (a_ != b_) {                                      \
			fprintf(stderr,                              \
				"%s:%d: %s == %lld, expected %s "    \
				"== %lld\n",                         \
				__FILE__, __LINE__, #a, a_, #b, b_); \
			exit(1);                                     \
		}                                                    \
	} while (0)

static inline uint64_t adp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Poll @cond (an expression) every 50 us for up to @ms milliseconds. Why
 * poll: the adapters deliver on uodp's relay thread, asynchronously to the
 * unmapping thread by design; 5 s is far above any delivery we measured
 * (tens of microseconds) and only bounds a failing run. */
#define WAIT_FOR(cond, ms)                                               \
	({                                                               \
		uint64_t dl_ = adp_now_ns() + (uint64_t)(ms)*1000000ull; \
		while (!(cond) && adp_now_ns() < dl_)                    \
			usleep(50);                                      \
		(cond);                                                  \
	})

static inline size_t adp_page(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

/* New anonymous memory at @a, which the caller just unmapped; NULL when
 * another thread mapped something there in between (ASan's allocator
 * does, from the threads of uodp, libfabric and UCX): the caller moves on
 * to another address. */
static inline void *adp_remap_at(void *a, size_t len)
{
	void *p = mmap(a, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
		       0);

	if (p == MAP_FAILED) {
		CHECK(errno == EEXIST);
		return NULL;
	}
	CHECK(p == a); /* old kernels ignore the flag: then it is a hint */
	memset(p, 0x33, len);
	return p;
}

/* Anonymous memory at a low address (from 1 GiB up), where the kernel's
 * top-down placement does not put other threads' mappings: a test that
 * unmaps it and maps new memory at the same address then finds it free.
 * Why 1 GiB: below every sanitizer's shadow and allocator ranges, above
 * the traditional low mappings of non-PIE programs. */
static inline void *adp_map_low(size_t len)
{
	uintptr_t hint;
	void *p;

	for (hint = 1ul << 30; hint < (1ul << 36); hint += 1ul << 28) {
		p = mmap((void *)hint, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
			 0);
		if (p == (void *)hint)
			return p;
		if (p != MAP_FAILED)
			munmap(p, len); /* flag ignored: a hint elsewhere */
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	CHECK(p != MAP_FAILED);
	return p;
}

/* Exit 77 with a reason when the kernel monitor is not there (before the
 * notifier lands: -ENOSYS from the stub; userfaultfd forbidden: -EPERM). */
static inline void adp_skip_if_no_monitor(int r, const char *what)
{
	if (r == -ENOSYS || r == -EPERM) {
		printf("SKIP: %s: %s (uodp's kernel monitor unavailable)\n",
		       what, strerror(-r));
		exit(ADP_SKIP);
	}
}

#endif

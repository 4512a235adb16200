/* SPDX-License-Identifier: MIT */
/*
 * test_dev_hostile.c - the software device used as a hostile or careless
 * application would (issue 12), one regression test per finding that does
 * not need the kernel monitor (those are in test_dev_monitor.c):
 *
 *   1  a bad caller buffer (read into / write from invalid memory), sync
 *      and queued, both data paths: -EFAULT, no crash;
 *   2  SIGSEGV/SIGBUS blocked by the calling thread (and so by the
 *      device's workers it creates): guarded atomics and copies still fail
 *      cleanly (-EACCES after mprotect(PROT_NONE), -EFAULT on a hole);
 *   3  a dead key stays dead: no key value is issued twice, even after a
 *      slot's generations are used up;
 *  14  an application that ignores SIGSEGV/SIGBUS (SIG_IGN) keeps doing so
 *      once the device's handler is in front;
 *  16  a seccomp sandbox that forbids process_vm_readv/writev: the device
 *      detects it at open (or at the first refused copy) and copies with
 *      the guarded copy instead of failing every operation with -EPERM;
 *  17  a neighbour in the fault-around window that cannot be mapped (hole,
 *      PROT_NONE) does not fail an access to a good page;
 *  12  a thread cancelled while it waits in the device (poll_wait) leaves
 *      no lock held;
 *  18  errors name the right cause: a write from a bad source buffer is
 *      -EFAULT (not -EACCES); a file truncated under a stale entry gives
 *      -EFAULT, as a fresh fault does.
 *
 * Cases that would kill the process if the finding came back run in a
 * forked child, which reports through its exit status (a signal = the
 * crash the finding was about).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <setjmp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "uodp.h"
#include "uodp_dev.h"

#include "helpers_dev.h" /* T_DEV_CHECK, t_dev_in_child, t_hold */
#include "sandbox.h"	 /* t_sandbox_deny */

#define VA(p) ((uint64_t)(uintptr_t)(p))

static size_t PS;

/* In a child: exit with @code unless @cond holds (the line is printed);
 * run a child to its end. Short names of helpers_dev.h's, used throughout. */
#define CHECK(cond, code) T_DEV_CHECK(cond, code)
#define in_child(fn, arg) t_dev_in_child(fn, arg)

static char *map_anon(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static struct uodp_dev *open_dev(unsigned flags)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL | flags };
	struct uodp_dev *dev = NULL;

	if (uodp_dev_open(&a, &dev))
		return NULL;
	return dev;
}

/* Post one request and wait for its completion; the status. */
static int post_wait(struct uodp_dev_queue *q, const struct uodp_dev_wr *wr)
{
	struct uodp_dev_wc wc;
	int r = uodp_dev_post(q, wr);

	if (r)
		return 1000 + r; /* refused: not what the tests expect */
	if (uodp_dev_poll_wait(q, &wc, 1, 10000) != 1)
		return 2000;
	return wc.status;
}

/* ------------------------------------------------------------------------ */
/* 1, 18: the caller's buffer                                                */

static void bad_buffer_child(unsigned flags)
{
	struct uodp_dev *dev = open_dev(flags);
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	char *none = map_anon(PS, PROT_NONE);
	char *ro = map_anon(PS, PROT_READ);
	char *hole = map_anon(PS, PROT_READ | PROT_WRITE);
	char *half = map_anon(2 * PS, PROT_READ | PROT_WRITE);
	struct uodp_dev_queue *q;
	struct uodp_dev_wr wr = { 0 };
	uint32_t k;
	size_t i;

	CHECK(dev && p && none && ro && hole && half, 2);
	CHECK(!munmap(hole, PS), 3);
	CHECK(!mprotect(half + PS, PS, PROT_NONE), 4);
	memset(p, 0x5a, 4 * PS);
	CHECK(!uodp_dev_reg_mr(dev, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL, &k), 5);

	/* reads into memory the caller may not write */
	CHECK(uodp_dev_read(dev, k, VA(p), none, 64) == -EFAULT, 10);
	CHECK(uodp_dev_read(dev, k, VA(p), ro, 64) == -EFAULT, 11);
	CHECK(uodp_dev_read(dev, k, VA(p), hole, 64) == -EFAULT, 12);
	/* part way: the first page of the buffer is good */
	CHECK(uodp_dev_read(dev, k, VA(p), half, 2 * PS) == -EFAULT, 13);
	CHECK((unsigned char)half[0] == 0x5a, 14);
	/* writes from memory the caller may not read: -EFAULT, never
	 * -EACCES (which is about the target memory), target untouched */
	CHECK(uodp_dev_write(dev, k, VA(p), none, 64) == -EFAULT, 20);
	CHECK(uodp_dev_write(dev, k, VA(p), hole, 64) == -EFAULT, 21);
	for (i = 0; i < 64; i++)
		CHECK((unsigned char)p[i] == 0x5a, 22);

	/* queued: the same on the device's workers */
	CHECK(!uodp_dev_queue_create(dev, 4, &q), 30);
	wr.opcode = UODP_DEV_OP_READ;
	wr.key = k;
	wr.va = VA(p);
	wr.len = 64;
	wr.buf = none;
	CHECK(post_wait(q, &wr) == -EFAULT, 31);
	wr.buf = hole;
	CHECK(post_wait(q, &wr) == -EFAULT, 32);
	wr.opcode = UODP_DEV_OP_WRITE;
	wr.buf = none;
	CHECK(post_wait(q, &wr) == -EFAULT, 33);
	wr.buf = hole;
	CHECK(post_wait(q, &wr) == -EFAULT, 34);
	/* and the device still works */
	wr.buf = ro;
	CHECK(post_wait(q, &wr) == 0, 35);
	CHECK(!uodp_dev_queue_destroy(q), 36);
	CHECK(!uodp_dev_close(dev), 37);
}

static void test_bad_caller_buffer(void **state)
{
	(void)state;
	in_child(bad_buffer_child, 0);
	in_child(bad_buffer_child, UODP_DEV_FAST_COPY);
}

/* ------------------------------------------------------------------------ */
/* 2: SIGSEGV/SIGBUS blocked                                                 */

static void blocked_child(unsigned flags)
{
	sigset_t all, now;
	struct uodp_dev *dev;
	struct uodp_dev_queue *q;
	struct uodp_dev_wr wr = { 0 };
	char *p, b[16];
	uint64_t old;
	uint32_t k;

	/* Block everything first: the device's handler and its workers
	 * come after, as in a program that sigwait()s in one thread. */
	sigfillset(&all);
	CHECK(!pthread_sigmask(SIG_BLOCK, &all, NULL), 2);
	dev = open_dev(flags);
	p = map_anon(4 * PS, PROT_READ | PROT_WRITE);
	CHECK(dev && p, 3);
	CHECK(!uodp_dev_reg_mr(dev, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL, &k), 4);
	CHECK(!uodp_dev_prefetch(dev, k, VA(p), 4 * PS,
				 UODP_DEV_PREFETCH_WRITE),
	      5);
	CHECK(!uodp_dev_queue_create(dev, 4, &q), 6); /* workers: blocked */

	/* Stale entries: the application changes the memory and tells
	 * nobody, so the device's instruction meets the change itself. */
	CHECK(!mprotect(p, PS, PROT_NONE), 7);
	CHECK(uodp_dev_fetch_add(dev, k, VA(p), 1, &old) == -EACCES, 10);
	CHECK(uodp_dev_cmp_swap(dev, k, VA(p), 0, 1, &old) == -EACCES, 11);
	CHECK(uodp_dev_read(dev, k, VA(p), b, 16) == -EACCES, 12);
	CHECK(uodp_dev_write(dev, k, VA(p), b, 16) == -EACCES, 13);
	wr.opcode = UODP_DEV_OP_FETCH_ADD;
	wr.key = k;
	wr.va = VA(p);
	wr.compare_add = 1;
	CHECK(post_wait(q, &wr) == -EACCES, 14);
	wr.opcode = UODP_DEV_OP_READ;
	wr.len = 16;
	wr.buf = b;
	CHECK(post_wait(q, &wr) == -EACCES, 15);

	CHECK(!munmap(p + PS, PS), 16);
	CHECK(uodp_dev_fetch_add(dev, k, VA(p + PS), 1, &old) == -EFAULT, 20);
	CHECK(uodp_dev_read(dev, k, VA(p + PS), b, 16) == -EFAULT, 21);
	wr.opcode = UODP_DEV_OP_CMP_SWAP;
	wr.va = VA(p + PS);
	CHECK(post_wait(q, &wr) == -EFAULT, 22);

	/* good memory still works, and the caller's mask is as it was */
	CHECK(uodp_dev_fetch_add(dev, k, VA(p + 2 * PS), 5, &old) == 0, 30);
	CHECK(old == 0 && *(uint64_t *)(p + 2 * PS) == 5, 31);
	CHECK(!pthread_sigmask(SIG_BLOCK, NULL, &now), 32);
	CHECK(sigismember(&now, SIGSEGV) && sigismember(&now, SIGBUS), 33);
	CHECK(!uodp_dev_queue_destroy(q), 34);
	CHECK(!uodp_dev_close(dev), 35);
}

static void test_blocked_signals(void **state)
{
	(void)state;
	in_child(blocked_child, 0);
	in_child(blocked_child, UODP_DEV_FAST_COPY);
}

/*
 * 2, on the device's workers: they set their own mask when they start
 * (asynchronous signals blocked, SIGSEGV/SIGBUS unblocked, whatever the
 * creating thread had) and their guarded windows make no rt_sigprocmask()
 * (src/device/recover.c, rcv_worker_mask()). A queued operation whose page
 * is unmapped under its device page-table entry (an munmap nobody reports:
 * a manual device, so the instruction itself meets the hole) still fails
 * cleanly, again and again on the same worker, which goes on working: the
 * mask is unblocked again after every jump out of the handler.
 */
extern void (*rcv_test_hook_mask_call)(void);
static atomic_long mask_calls;

static void count_mask_call(void)
{
	atomic_fetch_add(&mask_calls, 1);
}

/* Thread @tid's SigBlk (bit n-1 for signal n) into *@blk and whether
 * it has a device worker's name into *@named; false if unreadable. */
static bool task_sigblk(long tid, unsigned long long *blk, bool *named)
{
	char path[64], line[256];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%ld/comm", tid);
	f = fopen(path, "r");
	if (!f)
		return false;
	*named = fgets(line, sizeof(line), f) && !strncmp(line, "uodp-dev-", 9);
	fclose(f);
	snprintf(path, sizeof(path), "/proc/self/task/%ld/status", tid);
	f = fopen(path, "r");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "SigBlk: %llx", blk) == 1;
	fclose(f);
	return found;
}

/* Is thread @tid a device worker (by its name)? Then true, with *@blk
 * its SigBlk. Other threads (a sanitizer's) are not ours to check. A
 * worker names itself once its start-up is done (queue.c). */
static bool worker_sigblk(long tid, unsigned long long *blk)
{
	bool named;

	return task_sigblk(tid, blk, &named) && named;
}

/* Workers held at their very start (dev_test_hook_worker_start), before
 * any code of their own ran: what they were born with. */
extern void (*dev_test_hook_worker_start)(void);
static atomic_long held_tid[2];
static atomic_uint held_n;
static atomic_bool held_go;

static void hold_worker(void)
{
	unsigned i = atomic_fetch_add(&held_n, 1);

	if (i < 2)
		atomic_store(&held_tid[i], syscall(SYS_gettid));
	while (!atomic_load(&held_go))
		usleep(100);
}

static void worker_mask_child(unsigned flags)
{
	/* fault_around 1: the prefetch below maps only what it names, so
	 * page 8 misses (the default, 16, mapped it too: the first request
	 * hit on the exec worker and the fault worker might not have run). */
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL | flags,
				   .fault_around = 1,
				   .exec_workers = 1,
				   .fault_workers = 1 };
	struct uodp_dev_stats st;
	bool named;
	struct uodp_dev *dev = NULL;
	struct uodp_dev_queue *q;
	struct uodp_dev_wr wr = { 0 };
	unsigned long long blk;
	long self = syscall(SYS_gettid), tid;
	char *p, b[16], path[64];
	unsigned workers = 0, i;
	sigset_t all, now;
	struct dirent *de;
	uint32_t k;
	DIR *d;

	/* Everything blocked first, so the workers inherit it. */
	sigfillset(&all);
	CHECK(!pthread_sigmask(SIG_BLOCK, &all, NULL), 2);
	CHECK(!uodp_dev_open(&a, &dev), 3);
	p = map_anon(9 * PS, PROT_READ | PROT_WRITE);
	CHECK(p, 4);
	memset(p, 0x11, 9 * PS);
	CHECK(!uodp_dev_reg_mr(dev, VA(p), 9 * PS, UODP_DEV_ACCESS_ALL, &k), 5);
	CHECK(!uodp_dev_prefetch(dev, k, VA(p), 8 * PS,
				 UODP_DEV_PREFETCH_WRITE),
	      6);
	/* Born with their mask: read it while both workers are held before
	 * their own start-up (this failed, SIGSEGV blocked as the creator
	 * had it, when a worker set its mask only once it ran; under load a
	 * worker may not run for a while). And no name yet: a worker is
	 * named only once its start-up is done, which the check below
	 * relies on. */
	dev_test_hook_worker_start = hold_worker;
	CHECK(!uodp_dev_queue_create(dev, 4, &q), 7);
	/* up to 10 s for both to arrive: a loaded CI machine, a sanitizer */
	for (i = 0; i < 10000 &&
		    !(atomic_load(&held_tid[0]) && atomic_load(&held_tid[1]));
	     i++)
		usleep(1000);
	CHECK(atomic_load(&held_tid[0]) && atomic_load(&held_tid[1]), 8);
	for (i = 0; i < 2; i++) {
		CHECK(task_sigblk(atomic_load(&held_tid[i]), &blk, &named), 9);
		CHECK(!(blk & (1ull << (SIGSEGV - 1))), 9);
		CHECK(!(blk & (1ull << (SIGBUS - 1))), 9);
		CHECK(blk & (1ull << (SIGUSR1 - 1)), 9);
		CHECK(!named, 9);
	}
	dev_test_hook_worker_start = NULL;
	atomic_store(&held_go, true);

	/* A request that misses (page 8 was not prefetched), so both the
	 * exec and the fault worker have surely started: the fault worker
	 * resolved it (async_faults). */
	wr.opcode = UODP_DEV_OP_READ;
	wr.key = k;
	wr.va = VA(p + 8 * PS);
	wr.len = sizeof(b);
	wr.buf = b;
	CHECK(post_wait(q, &wr) == 0, 8);
	CHECK(!uodp_dev_stats(dev, &st) && st.async_faults == 1, 8);

	/* The workers' masks, as the kernel has them. */
	snprintf(path, sizeof(path), "/proc/self/task");
	d = opendir(path);
	CHECK(d, 10);
	while ((de = readdir(d))) {
		tid = strtol(de->d_name, NULL, 10);
		if (tid <= 0 || tid == self || !worker_sigblk(tid, &blk))
			continue;
		CHECK(!(blk & (1ull << (SIGSEGV - 1))), 12);
		CHECK(!(blk & (1ull << (SIGBUS - 1))), 13);
		CHECK(blk & (1ull << (SIGUSR1 - 1)), 14);
		CHECK(blk & (1ull << (SIGTERM - 1)), 15);
		workers++;
	}
	closedir(d);
	CHECK(workers == 2, 16);

	/* The hook counts: a window on this (application) thread pays. */
	rcv_test_hook_mask_call = count_mask_call;
	CHECK(!uodp_dev_read(dev, k, VA(p), b, sizeof(b)), 20);
	CHECK(atomic_load(&mask_calls) == (flags ? 1 : 0), 21);
	atomic_store(&mask_calls, 0);

	for (i = 0; i < 4; i++) {
		char *gone = p + 2 * i * PS, *good = gone + PS;

		CHECK(!munmap(gone, PS), 30);
		wr.va = VA(gone);
		wr.opcode = UODP_DEV_OP_READ;
		CHECK(post_wait(q, &wr) == -EFAULT, 31);
		wr.opcode = UODP_DEV_OP_WRITE;
		CHECK(post_wait(q, &wr) == -EFAULT, 32);
		wr.opcode = UODP_DEV_OP_FETCH_ADD;
		wr.compare_add = 1;
		CHECK(post_wait(q, &wr) == -EFAULT, 33);
		/* the same worker goes on working */
		wr.va = VA(good);
		CHECK(post_wait(q, &wr) == 0, 34);
		CHECK(*(uint64_t *)good == 0x1111111111111112ull, 35);
		wr.opcode = UODP_DEV_OP_READ;
		memset(b, 0, sizeof(b));
		CHECK(post_wait(q, &wr) == 0, 36);
		CHECK(b[8] == 0x11, 37);
	}
	/* None of those windows made the call (FAST_COPY: every copy and
	 * atomic was a guarded window; otherwise the atomics were). */
	CHECK(atomic_load(&mask_calls) == 0, 40);
	rcv_test_hook_mask_call = NULL;

	/* and the caller's mask is as it was */
	CHECK(!pthread_sigmask(SIG_BLOCK, NULL, &now), 41);
	CHECK(sigismember(&now, SIGSEGV) && sigismember(&now, SIGUSR1), 42);
	CHECK(!uodp_dev_queue_destroy(q), 43);
	CHECK(!uodp_dev_close(dev), 44);
}

static void test_worker_mask(void **state)
{
	(void)state;
	in_child(worker_mask_child, 0);
	in_child(worker_mask_child, UODP_DEV_FAST_COPY);
}

/* ------------------------------------------------------------------------ */
/* 3: dead keys                                                              */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static void test_dead_keys_stay_dead(void **state)
{
	/* Enough cycles to use up one slot's 255 generations twice over. */
	enum {
		CYCLES = 600
	};
	struct uodp_dev *dev = open_dev(0);
	char *p = map_anon(PS, PROT_READ | PROT_WRITE), b[8];
	uint32_t *keys = calloc(CYCLES, sizeof(*keys)), live;
	int i;

	(void)state;
	assert_non_null(dev);
	assert_non_null(p);
	assert_non_null(keys);
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), PS, UODP_DEV_ACCESS_READ,
					 &live),
			 0);
	for (i = 0; i < CYCLES; i++) {
		assert_int_equal(uodp_dev_reg_mr(dev, VA(p), PS,
						 UODP_DEV_ACCESS_READ,
						 &keys[i]),
				 0);
		assert_int_equal(uodp_dev_read(dev, keys[i], VA(p), b, 8), 0);
		assert_int_equal(uodp_dev_dereg_mr(dev, keys[i]), 0);
	}
	for (i = 0; i < CYCLES; i++) {
		assert_int_equal(uodp_dev_read(dev, keys[i], VA(p), b, 8),
				 -ENOENT);
		assert_int_equal(uodp_dev_dereg_mr(dev, keys[i]), -ENOENT);
	}
	qsort(keys, CYCLES, sizeof(*keys), cmp_u32);
	for (i = 1; i < CYCLES; i++)
		assert_true(keys[i] != keys[i - 1]);
	for (i = 0; i < CYCLES; i++)
		assert_true(keys[i] != live);
	assert_int_equal(uodp_dev_read(dev, live, VA(p), b, 8), 0);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, PS);
	free(keys);
}

/* ------------------------------------------------------------------------ */
/* 14: SIG_IGN                                                               */

static void ignore_child(unsigned flags)
{
	struct uodp_dev *dev;
	char *p = map_anon(2 * PS, PROT_READ | PROT_WRITE);
	uint64_t old;
	uint32_t k;

	(void)flags;
	CHECK(signal(SIGSEGV, SIG_IGN) != SIG_ERR, 2);
	CHECK(signal(SIGBUS, SIG_IGN) != SIG_ERR, 3);
	dev = open_dev(0); /* its handler goes in front of SIG_IGN */
	CHECK(dev && p, 4);
	CHECK(!raise(SIGSEGV), 5); /* ignored, as before the device */
	CHECK(!raise(SIGBUS), 6);
	CHECK(!kill(getpid(), SIGSEGV), 7);
	/* the device still recovers its own faults */
	CHECK(!uodp_dev_reg_mr(dev, VA(p), 2 * PS, UODP_DEV_ACCESS_ALL, &k), 8);
	CHECK(!uodp_dev_prefetch(dev, k, VA(p), 2 * PS,
				 UODP_DEV_PREFETCH_WRITE),
	      9);
	CHECK(!munmap(p, PS), 10);
	CHECK(uodp_dev_fetch_add(dev, k, VA(p), 1, &old) == -EFAULT, 11);
	CHECK(!raise(SIGSEGV), 12);
	CHECK(!uodp_dev_close(dev), 13);
}

static void test_sig_ign_kept(void **state)
{
	(void)state;
	in_child(ignore_child, 0);
}

/* ------------------------------------------------------------------------ */
/* 16: seccomp forbids process_vm_readv/writev                               */

static int forbid_process_vm(void)
{
	static const long nr[] = { __NR_process_vm_readv,
				   __NR_process_vm_writev };

	return t_sandbox_deny(nr, 2, 0);
}

/* @late: the sandbox comes after uodp_dev_open(). */
static void seccomp_child(unsigned late)
{
	struct uodp_dev *dev = NULL;
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE), b[64];
	struct iovec l = { b, 1 }, rm = { p, 1 };
	uint32_t k;
	int r;

	CHECK(p, 2);
	if (late)
		CHECK(!uodp_dev_open(&a, &dev), 3);
	CHECK(!forbid_process_vm(), 4);
	/* the filter works */
	CHECK(process_vm_readv(getpid(), &l, 1, &rm, 1, 0) < 0 &&
		      errno == EPERM,
	      5);
	if (!late) {
		r = uodp_dev_open(&a, &dev);
#if !defined(__x86_64__)
		/* no guarded copy: the distinct error, at once */
		CHECK(r == -ENOSYS, 6);
		return;
#endif
		CHECK(r == 0, 7);
	}
	CHECK(!uodp_dev_reg_mr(dev, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL, &k), 8);
	r = uodp_dev_write(dev, k, VA(p) + 100, "sandboxed", 10);
#if !defined(__x86_64__)
	CHECK(r == -ENOSYS, 9);
	return;
#endif
	CHECK(r == 0, 10);
	CHECK(!strcmp(p + 100, "sandboxed"), 11);
	memset(b, 0, sizeof(b));
	CHECK(!uodp_dev_read(dev, k, VA(p) + 100, b, 10), 12);
	CHECK(!strcmp(b, "sandboxed"), 13);
	/* errors keep their meaning: a hole is -EFAULT, not -EPERM */
	CHECK(!munmap(p + 2 * PS, PS), 14);
	CHECK(uodp_dev_read(dev, k, VA(p + 2 * PS), b, 8) == -EFAULT, 15);
	CHECK(!uodp_dev_close(dev), 16);
}

static void test_seccomp_process_vm(void **state)
{
	(void)state;
	in_child(seccomp_child, 0);
	in_child(seccomp_child, 1);
}

/* UFFDIO_REGISTER forbidden (a sandbox) with the kernel monitor: an
 * explicit key fails at once, an implicit key registers and every access
 * through it fails -ENOSYS (uodp_dev.h), not once but each time. */
static void register_denied_child(unsigned arg)
{
	struct uodp_dev *dev = NULL;
	struct uodp_dev_attr a = { .flags = 0 }; /* the kernel monitor */
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE), b[8];
	uint32_t k;

	(void)arg;
	CHECK(p, 2);
	CHECK(!t_sandbox_deny(NULL, 0, UFFDIO_REGISTER), 4);
	CHECK(!uodp_dev_open(&a, &dev), 5);
	CHECK(uodp_dev_reg_mr(dev, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL, &k) ==
		      -ENOSYS,
	      6);
	CHECK(!uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_ALL, &k), 7);
	CHECK(uodp_dev_read(dev, k, VA(p), b, 8) == -ENOSYS, 8);
	CHECK(uodp_dev_read(dev, k, VA(p), b, 8) == -ENOSYS, 9);
	CHECK(!uodp_dev_close(dev), 10);
}

/* The sandbox comes after the keys' first accesses: memory an access must
 * watch first (an implicit key's new mapping, a mapping made in an explicit
 * key's hole since) fails -ENOSYS too, never -EPERM (the key's rights). */
static void register_denied_late_child(unsigned arg)
{
	struct uodp_dev *dev = NULL;
	struct uodp_dev_attr a = { .flags = 0 }; /* the kernel monitor */
	/* [0, 4) the explicit key (pages 2-3 a hole until the sandbox),
	 * page 5 the implicit key's first mapping, page 7 its second
	 * (mappings of their own: pages 4 and 6 unmapped) */
	char *p = map_anon(8 * PS, PROT_READ | PROT_WRITE), b[8];
	uint32_t ke, ki;

	(void)arg;
	CHECK(p, 2);
	CHECK(!munmap(p + 2 * PS, 3 * PS) && !munmap(p + 6 * PS, 2 * PS), 3);
	CHECK(!uodp_dev_open(&a, &dev), 4);
	CHECK(!uodp_dev_reg_mr(dev, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL, &ke),
	      5);
	CHECK(!uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_ALL, &ki), 6);
	CHECK(!uodp_dev_read(dev, ki, VA(p + 5 * PS), b, 8), 7);
	CHECK(!t_sandbox_deny(NULL, 0, UFFDIO_REGISTER), 9);
	CHECK(mmap(p + 2 * PS, 2 * PS, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
		   0) == p + 2 * PS,
	      10);
	CHECK(mmap(p + 7 * PS, PS, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
		   0) == p + 7 * PS,
	      11);
	CHECK(uodp_dev_read(dev, ke, VA(p + 3 * PS), b, 8) == -ENOSYS, 12);
	CHECK(uodp_dev_read(dev, ki, VA(p + 7 * PS), b, 8) == -ENOSYS, 13);
	CHECK(uodp_dev_write(dev, ki, VA(p + 7 * PS), b, 8) == -ENOSYS, 14);
	/* what was watched before the sandbox still works */
	CHECK(!uodp_dev_read(dev, ke, VA(p), b, 8), 15);
	CHECK(!uodp_dev_read(dev, ki, VA(p + 5 * PS), b, 8), 16);
	CHECK(!uodp_dev_close(dev), 17);
}

static void test_implicit_register_denied(void **state)
{
	(void)state;
	if (uodp_monitor_probe()) /* no userfaultfd here at all */
		skip();
	in_child(register_denied_child, 0);
	in_child(register_denied_late_child, 0);
}

/* ------------------------------------------------------------------------ */
/* 17: neighbours in the fault-around window                                 */

static void test_window_neighbours(void **state)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL,
				   .fault_around = 16 };
	struct uodp_dev *dev;
	char *p = map_anon(16 * PS, PROT_READ | PROT_WRITE), b[8];
	uint32_t k;

	(void)state;
	assert_non_null(p);
	assert_int_equal(uodp_dev_open(&a, &dev), 0);
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), 16 * PS,
					 UODP_DEV_ACCESS_ALL, &k),
			 0);
	assert_int_equal(munmap(p + PS, PS), 0);
	assert_int_equal(mprotect(p + 2 * PS, PS, PROT_NONE), 0);
	assert_int_equal(mprotect(p + 3 * PS, PS, PROT_READ), 0);
	strcpy(p, "first");
	strcpy(p + 4 * PS, "after");
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, 6), 0);
	assert_string_equal(b, "first");
	assert_int_equal(uodp_dev_write(dev, k, VA(p), "FIRST", 6), 0);
	assert_string_equal(p, "FIRST");
	/* a read-only neighbour does not fail a read-write fault on the
	 * good page before it, nor a read of its own */
	assert_int_equal(uodp_dev_read(dev, k, VA(p + 3 * PS), b, 6), 0);
	assert_int_equal(uodp_dev_write(dev, k, VA(p + 4 * PS), "AFTER", 6), 0);
	/* the pages an access touches decide */
	assert_int_equal(uodp_dev_read(dev, k, VA(p + PS) - 4, b, 8), -EFAULT);
	assert_int_equal(uodp_dev_read(dev, k, VA(p + 2 * PS), b, 8), -EACCES);
	assert_int_equal(uodp_dev_write(dev, k, VA(p + 3 * PS), b, 8), -EACCES);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, 16 * PS);
}

/* ------------------------------------------------------------------------ */
/* 18: a file truncated under a stale entry                                  */

static void truncated_case(unsigned flags)
{
	char path[] = "/tmp/uodp-trunc-XXXXXX", b[8];
	struct uodp_dev *dev = open_dev(flags);
	uint64_t old;
	uint32_t k;
	char *p;
	int fd;

	assert_non_null(dev);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(ftruncate(fd, (off_t)(2 * PS)), 0);
	p = mmap(NULL, 2 * PS, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	memset(p, 7, 2 * PS);
	assert_int_equal(uodp_dev_reg_mr(dev, VA(p), 2 * PS,
					 UODP_DEV_ACCESS_ALL, &k),
			 0);
	assert_int_equal(uodp_dev_prefetch(dev, k, VA(p), 2 * PS,
					   UODP_DEV_PREFETCH_WRITE),
			 0);
	/* the second page goes past the end: its entry is now stale */
	assert_int_equal(ftruncate(fd, (off_t)PS), 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(p + PS), b, 8), -EFAULT);
	assert_int_equal(uodp_dev_write(dev, k, VA(p + PS), b, 8), -EFAULT);
	assert_int_equal(uodp_dev_fetch_add(dev, k, VA(p + PS), 1, &old),
			 -EFAULT);
	/* a fresh fault says the same */
	assert_int_equal(uodp_invalidate_range(uodp_dev_ctx(dev), p, 2 * PS,
					       UODP_EVENT_MANUAL),
			 0);
	assert_int_equal(uodp_dev_read(dev, k, VA(p + PS), b, 8), -EFAULT);
	assert_int_equal(uodp_dev_read(dev, k, VA(p), b, 8), 0);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, 2 * PS);
	close(fd);
}

static void test_truncated_file(void **state)
{
	(void)state;
	truncated_case(0);
	truncated_case(UODP_DEV_FAST_COPY);
}

/* ------------------------------------------------------------------------ */
/* 12: cancellation                                                          */

extern void (*dev_test_hook_before_install)(struct uodp_umem *umem);
static struct t_hold cancel_hold;

static void cancel_hook(struct uodp_umem *umem)
{
	(void)umem;
	t_hold_here(&cancel_hold);
}

static void *cancel_poller(void *arg)
{
	struct uodp_dev_wc wc;

	uodp_dev_poll_wait(arg, &wc, 1, -1);
	return NULL;
}

/* A thread cancelled while it waits in uodp_dev_poll_wait() must not exit
 * holding the queue's lock: the next poll would hang. */
static void cancel_child(unsigned flags)
{
	struct uodp_dev *dev = open_dev(flags);
	char *p = map_anon(4 * PS, PROT_READ | PROT_WRITE), b[8];
	struct uodp_dev_wr wr = { 0 };
	struct uodp_dev_queue *q;
	struct uodp_dev_wc wc;
	pthread_t t;
	void *ret;
	uint32_t k;

	alarm(20); /* a hang is the failure */
	CHECK(dev && p, 2);
	CHECK(!uodp_dev_reg_mr(dev, VA(p), 4 * PS, UODP_DEV_ACCESS_ALL, &k), 3);
	CHECK(!uodp_dev_queue_create(dev, 4, &q), 4);
	t_hold_close(&cancel_hold);
	dev_test_hook_before_install = cancel_hook;
	wr.opcode = UODP_DEV_OP_READ;
	wr.key = k;
	wr.va = VA(p);
	wr.len = 8;
	wr.buf = b;
	CHECK(!uodp_dev_post(q, &wr), 5);
	t_hold_wait_in(&cancel_hold);
	CHECK(!pthread_create(&t, NULL, cancel_poller, q), 6);
	usleep(50000); /* let it block in the wait */
	CHECK(!pthread_cancel(t), 7);
	usleep(50000);
	t_hold_release(&cancel_hold); /* the request completes */
	CHECK(!pthread_join(t, &ret), 8);
	dev_test_hook_before_install = NULL;
	/* the queue still works: its lock was not left held */
	wr.wr_id = 2;
	CHECK(!uodp_dev_post(q, &wr), 9);
	CHECK(uodp_dev_poll_wait(q, &wc, 1, 5000) == 1, 10);
	CHECK(!uodp_dev_queue_destroy(q), 11);
	CHECK(!uodp_dev_close(dev), 12);
}

static void test_cancel_poll_wait(void **state)
{
	(void)state;
	in_child(cancel_child, 0);
}

/* ------------------------------------------------------------------------ */

static void test_strerror(void **state)
{
	static const int codes[] = { EINVAL,	 ENOENT, ERANGE, EPERM,
				     EFAULT,	 EACCES, ENOMEM, ENOSPC,
				     ENODEV,	 ECHILD, ENOSYS, EBUSY,
				     EOPNOTSUPP, EAGAIN, EMFILE, ENFILE,
				     EDEADLK,	 EBADF };
	size_t i, j;

	(void)state;
	assert_string_equal(uodp_dev_strerror(0), "success");
	assert_string_equal(uodp_dev_strerror(-EPERM),
			    "the key's rights do not allow the operation");
	assert_string_equal(uodp_dev_strerror(EPERM),
			    uodp_dev_strerror(-EPERM));
	assert_string_equal(uodp_dev_strerror(-12345), "unknown error");
	/* every code the header lists has its own message (EMFILE and
	 * ENFILE share one: both are "no descriptor") */
	for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		assert_string_not_equal(uodp_dev_strerror(-codes[i]),
					"unknown error");
		for (j = 0; j < i; j++)
			if (codes[j] != EMFILE || codes[i] != ENFILE)
				assert_string_not_equal(
					uodp_dev_strerror(-codes[i]),
					uodp_dev_strerror(-codes[j]));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_caller_buffer),
		cmocka_unit_test(test_blocked_signals),
		cmocka_unit_test(test_worker_mask),
		cmocka_unit_test(test_dead_keys_stay_dead),
		cmocka_unit_test(test_sig_ign_kept),
		cmocka_unit_test(test_seccomp_process_vm),
		cmocka_unit_test(test_implicit_register_denied),
		cmocka_unit_test(test_window_neighbours),
		cmocka_unit_test(test_truncated_file),
		cmocka_unit_test(test_cancel_poll_wait),
		cmocka_unit_test(test_strerror),
	};

	PS = (size_t)sysconf(_SC_PAGESIZE);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

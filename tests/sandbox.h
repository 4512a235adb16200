/* SPDX-License-Identifier: MIT */
/*
 * sandbox.h - the seccomp filter of the tests that play a sandbox: some
 * system calls, and ioctl() with one request, fail with EPERM; everything
 * else is allowed. test_engine_misuse.c, test_dev_hostile.c and
 * test_notifier.c each spelled it out; it uses nothing of uodp (the
 * notifier's test links no engine).
 */
#ifndef UODP_TESTS_SANDBOX_H
#define UODP_TESTS_SANDBOX_H

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

/* at most this many system calls per filter (the tests need two) */
#define T_SANDBOX_MAX_CALLS 4

/*
 * Make the @n system calls @nrs, and ioctl() whose request is @ioctl_req
 * (0: none; compared on its low 32 bits, as a 32-bit filter word sees the
 * argument), fail with EPERM in the calling thread and the threads it
 * creates from then on. Sets PR_SET_NO_NEW_PRIVS first (the filter needs
 * it without CAP_SYS_ADMIN). Irreversible: call it in a child process.
 * 0, or -errno of the prctl() that failed (-EINVAL: too many calls).
 */
static inline int t_sandbox_deny(const long *nrs, unsigned n,
				 unsigned long ioctl_req)
{
	/* load nr; two words per call; four for the ioctl; allow */
	struct sock_filter f[1 + 2 * T_SANDBOX_MAX_CALLS + 4 + 1];
	struct sock_fprog prog;
	unsigned i, k = 0;

	if (n > T_SANDBOX_MAX_CALLS)
		return -EINVAL;
	f[k++] = (struct sock_filter)BPF_STMT(
		BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	for (i = 0; i < n; i++) {
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
						      (uint32_t)nrs[i], 0, 1);
		f[k++] = (struct sock_filter)BPF_STMT(
			BPF_RET | BPF_K,
			SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
	}
	if (ioctl_req) {
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
						      __NR_ioctl, 0, 3);
		f[k++] = (struct sock_filter)BPF_STMT(
			BPF_LD | BPF_W | BPF_ABS,
			offsetof(struct seccomp_data, args[1]));
		f[k++] = (struct sock_filter)BPF_JUMP(
			BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)ioctl_req, 0, 1);
		f[k++] = (struct sock_filter)BPF_STMT(
			BPF_RET | BPF_K,
			SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
	}
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
					      SECCOMP_RET_ALLOW);
	prog.len = (unsigned short)k;
	prog.filter = f;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -errno;
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		return -errno;
	return 0;
}

#endif

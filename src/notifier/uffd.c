/* SPDX-License-Identifier: MIT */
/*
 * uffd.c - the userfaultfd handshake and the kernel calls of the notifier.
 *
 * Owns nothing but the knowledge of what the kernel offers. The fd is
 * opened with UFFD_USER_MODE_ONLY so that an unprivileged process gets one
 * (vm.unprivileged_userfaultfd=0 refuses it only kernel-mode faults, which
 * the monitor never asks for); kernels older than 5.11 do not know the flag
 * and get a second try without it. Where the syscall is forbidden (seccomp
 * filters commonly answer ENOSYS or EPERM) /dev/userfaultfd may still be
 * open to us. UFFDIO_API can be issued only once per fd and rejects unknown
 * features, so the kernel's feature set is learnt with a zero-feature
 * handshake on a throw-away fd, once per process, and the fd the monitor
 * keeps is asked for exactly what it needs: the UNMAP, REMOVE and REMAP
 * events, plus WP_ASYNC when present (it lets WP-only registration cover
 * regular file mappings). EVENT_FORK is never asked: without it a child's
 * mappings simply lose the registration and fork() never waits for us.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "notifier/uffd.h"

/* Kernel features, learnt once: 0 = not yet, else features | KNOWN. */
#define KNOWN ((uint64_t)1 << 63)
static _Atomic uint64_t kernel_features;

/* A userfaultfd the cheapest way the system allows, or -errno. */
static int open_raw(void)
{
	const int flags = O_CLOEXEC | O_NONBLOCK;
	int fd, dev, err;

#ifdef __NR_userfaultfd
	fd = (int)syscall(__NR_userfaultfd, flags | UFFD_USER_MODE_ONLY);
	if (fd >= 0)
		return fd;
	err = errno;
	if (err == EINVAL) { /* before 5.11: no UFFD_USER_MODE_ONLY */
		fd = (int)syscall(__NR_userfaultfd, flags);
		if (fd >= 0)
			return fd;
		err = errno;
	}
#else
	err = ENOSYS;
#endif
	if (err != EPERM && err != ENOSYS && err != EACCES)
		return -err;

	/* The syscall is forbidden; the device node (5.16+) may not be. */
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -err;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags | UFFD_USER_MODE_ONLY);
	if (fd < 0 && errno == EINVAL)
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
	close(dev);
	return fd >= 0 ? fd : -err;
}

/* UFFDIO_API on a fresh fd; returns the fd or -errno. */
static int open_api(uint64_t want, uint64_t *got)
{
	struct uffdio_api api = { .api = UFFD_API, .features = want };
	int fd = open_raw();

	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int err = errno;

		close(fd);
		/* EINVAL: API version or feature refused; EPERM: a feature
		 * needs a privilege. Neither is something we can use.
		 * ENOMEM is the kernel being short of memory, not of
		 * features: it stays -ENOMEM. */
		if (err == EPERM || err == ENOMEM)
			return -err;
		return -ENOSYS;
	}
	*got = api.features;
	return fd;
}

static int learn_features(uint64_t *avail)
{
	uint64_t f =
		atomic_load_explicit(&kernel_features, memory_order_relaxed);
	int fd;

	if (!f) {
		fd = open_api(0, &f);
		if (fd < 0)
			return fd;
		close(fd);
		f |= KNOWN;
		atomic_store_explicit(&kernel_features, f,
				      memory_order_relaxed);
	}
	*avail = f & ~KNOWN;
	return 0;
}

int uffd_open(uint64_t *features)
{
	uint64_t avail, want, got;
	int r, fd;

	r = learn_features(&avail);
	if (r)
		return r;
	/* The events came in 4.11, write-protect registration (our only
	 * mode) in 5.7: it announces itself with PAGEFAULT_FLAG_WP. */
	if ((avail & UFFD_NEEDED) != UFFD_NEEDED ||
	    !(avail & UFFD_FEATURE_PAGEFAULT_FLAG_WP))
		return -ENOSYS;
	want = UFFD_NEEDED | (avail & UFFD_FEATURE_WP_ASYNC);
	fd = open_api(want, &got);
	if (fd < 0)
		return fd;
	*features = want;
	return fd;
}

int uffd_register(int fd, uint64_t start, uint64_t end)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = end - start },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};

	return ioctl(fd, UFFDIO_REGISTER, &reg) ? -errno : 0;
}

int uffd_unregister(int fd, uint64_t start, uint64_t end)
{
	struct uffdio_range range = { .start = start, .len = end - start };

	return ioctl(fd, UFFDIO_UNREGISTER, &range) ? -errno : 0;
}

bool uffd_fully_mapped(uint64_t start, uint64_t end)
{
	return msync((void *)(uintptr_t)start, end - start, MS_ASYNC) == 0;
}

/* ------------------------------------------------------------------------ */
/* Whole mappings, with what their path says                                 */
/* ------------------------------------------------------------------------ */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/*
 * Parser state of one /proc/self/maps line, all fields:
 * "start-end perms offset dev inode   path". Only the first characters of
 * the path are looked at: SysV shared memory shows as "/SYSV%08x
 * (deleted)" (measured on 6.18: "/SYSV00000000 (deleted)", dev 00:01).
 */
struct maps_full {
	struct uffd_map m;
	int field;   /* 0: start, 1: end, 2: the rest */
	int tokens;  /* tokens seen in the rest: perms offset dev inode path */
	int pathlen; /* characters of the path seen */
	bool intok, bad, sysv_prefix, inode_zero;
};

static const char sysv_path[] = "/SYSV";

/* Feed one character; true at the end of a well-formed line (in l->m). */
static bool maps_full_feed(struct maps_full *l, char c)
{
	int v;

	if (c == '\n') {
		bool ok = !l->bad && l->field == 2 && l->tokens >= 4;

		l->m.sysv = l->sysv_prefix &&
			    l->pathlen >= (int)sizeof(sysv_path) - 1;
		l->m.anon = l->inode_zero;
		if (!ok)
			l->m.start = l->m.end = 0;
		l->field = l->tokens = l->pathlen = 0;
		l->intok = l->bad = l->sysv_prefix = l->inode_zero = false;
		return ok;
	}
	if (l->field == 2) {
		if (c == ' ' && l->tokens < 5) {
			l->intok = false;
			return false;
		}
		if (!l->intok) {
			l->intok = true;
			l->tokens++;
			if (l->tokens == 5)
				l->sysv_prefix = true;
			if (l->tokens == 4)
				l->inode_zero = true;
		}
		if (l->tokens == 4 && c != '0')
			l->inode_zero = false;
		if (l->tokens == 5 && l->pathlen < (int)sizeof(sysv_path) - 1) {
			if (c != sysv_path[l->pathlen])
				l->sysv_prefix = false;
			l->pathlen++;
		}
		return false;
	}
	if (l->field == 0 && c == '-') {
		l->field = 1;
		return false;
	}
	if (l->field == 1 && c == ' ') {
		l->field = 2;
		return false;
	}
	v = hexval(c);
	if (v < 0) {
		l->bad = true;
		l->field = 2;
		l->tokens = 5; /* ignore the rest of the line */
		return false;
	}
	if (l->field == 0)
		l->m.start = (l->m.start << 4) | (uint64_t)v;
	else
		l->m.end = (l->m.end << 4) | (uint64_t)v;
	return false;
}

int uffd_for_each_map(uint64_t start, uint64_t end,
		      int (*fn)(const struct uffd_map *m, void *arg), void *arg)
{
	struct maps_full l = { 0 };
	char buf[2048];
	ssize_t n, i;
	int fd, r = 0;

	fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : 0;
			break;
		}
		for (i = 0; i < n; i++) {
			struct uffd_map m;

			if (!maps_full_feed(&l, buf[i]))
				continue;
			m = l.m;
			l.m.start = l.m.end = 0;
			if (m.start >= end) /* the file is sorted: done */
				goto out;
			if (m.end <= start || m.start >= m.end)
				continue;
			r = fn(&m, arg);
			if (r)
				goto out;
		}
	}
out:
	close(fd);
	return r;
}

/* ------------------------------------------------------------------------ */
/* Descriptor identity                                                       */
/* ------------------------------------------------------------------------ */

int uffd_fd_id(int fd, struct uffd_fdid *id)
{
	struct stat st;
	int fl;

	if (fstat(fd, &st))
		return -errno;
	fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	id->dev = (uint64_t)st.st_dev;
	id->ino = (uint64_t)st.st_ino;
	id->acc = fl & O_ACCMODE;
	return 0;
}

bool uffd_fd_is(int fd, const struct uffd_fdid *id)
{
	struct uffd_fdid now;

	if (fd < 0 || uffd_fd_id(fd, &now))
		return false;
	return now.dev == id->dev && now.ino == id->ino && now.acc == id->acc;
}

/* ------------------------------------------------------------------------ */
/* Is registration itself forbidden?                                         */
/* ------------------------------------------------------------------------ */

int uffd_register_probe(int fd)
{
	long pg = sysconf(_SC_PAGESIZE);
	void *p = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int r;

	if (p == MAP_FAILED)
		return -ENOMEM;
	r = uffd_register(fd, (uint64_t)(uintptr_t)p,
			  (uint64_t)(uintptr_t)p + (uint64_t)pg);
	if (r == 0 && uffd_unregister(fd, (uint64_t)(uintptr_t)p,
				      (uint64_t)(uintptr_t)p + (uint64_t)pg)) {
		/* Still registered: unmapping it would raise an event that
		 * this thread then waits for, and the monitor may not run
		 * yet (nf_start() probes before starting it). One page is
		 * left behind instead, once, on a failure that should not
		 * happen. */
		return r;
	}
	/* Not registered any more: unmapping it sends no event. */
	munmap(p, (size_t)pg);
	return r;
}

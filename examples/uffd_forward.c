/* SPDX-License-Identifier: MIT */
/*
 * uffd_forward.c - coexisting with the application's own userfaultfd.
 *
 * Only one userfaultfd may watch a range of memory. An application that
 * already watches its memory with its own userfaultfd (a checkpointer, a
 * live-migration agent, a garbage collector) cannot also let uodp's kernel
 * monitor watch it: uodp_umem_get() on a monitored context fails there
 * with -EBUSY. Instead it gives uodp a manual context (UODP_CTX_MANUAL)
 * and forwards the address-space events its own userfaultfd reads:
 *
 *   UFFD_EVENT_UNMAP   munmap()           -> UODP_EVENT_UNMAP
 *   UFFD_EVENT_REMOVE  madvise(DONTNEED)  -> UODP_EVENT_REMOVE
 *   UFFD_EVENT_REMAP   mremap()           -> UODP_EVENT_REMAP (old range)
 *
 * each with one uodp_invalidate_range() call on the thread that reads the
 * events (the example does all three). The kernel makes munmap()/madvise() wait until the event has been
 * READ, not until it has been handled: an application that needs the
 * device to have let go before munmap() returns must make its munmap()
 * wait for the forwarding (here: the "forwarded" counter), as uodp's own
 * monitor does in UODP_CTX_STRICT mode.
 *
 * Exits 0 when every step behaved as stated, 77 (skipped) where
 * userfaultfd is unavailable, 1 otherwise.
 *
 *   cc uffd_forward.c $(pkg-config --cflags --libs uodp) -pthread
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <uodp.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define NPAGES 8
#define SKIP 77
#define FAULT_TIMEOUT_MS 100

static size_t page;
static char *buf;

/* The "device page table": the entries the driver copied, one per page. */
static _Atomic uint64_t dev_pt[NPAGES];

/* Events read from the application's userfaultfd and forwarded. */
static atomic_uint forwarded;

static void on_invalidate(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv)
{
	char *p;

	(void)umem;
	(void)priv;
	for (p = range->start; p < (char *)range->end; p += page)
		atomic_store(&dev_pt[(p - buf) / page], 0);
}

struct forwarder {
	struct uodp_ctx *ctx;
	int uffd, stopfd;
	int err; /* a forwarding call that failed */
};

/* The application's userfaultfd thread: read events, forward them. */
static void *forward_main(void *arg)
{
	struct forwarder *f = arg;
	struct pollfd pfd[2] = { { .fd = f->uffd, .events = POLLIN },
				 { .fd = f->stopfd, .events = POLLIN } };
	struct uffd_msg msg[16];

	for (;;) {
		ssize_t n, i;
		int r;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[1].revents)
			break;
		n = read(f->uffd, msg, sizeof(msg));
		if (n <= 0)
			continue;
		for (i = 0; i < n / (ssize_t)sizeof(msg[0]); i++) {
			struct uffd_msg *m = &msg[i];
			uint64_t s, e;

			switch (m->event) {
			case UFFD_EVENT_UNMAP:
			case UFFD_EVENT_REMOVE:
				s = m->arg.remove.start;
				e = m->arg.remove.end;
				r = uodp_invalidate_range(
					f->ctx, (void *)(uintptr_t)s, e - s,
					m->event == UFFD_EVENT_UNMAP ?
						UODP_EVENT_UNMAP :
						UODP_EVENT_REMOVE);
				break;
			case UFFD_EVENT_REMAP:
				r = uodp_invalidate_range(
					f->ctx,
					(void *)(uintptr_t)m->arg.remap.from,
					m->arg.remap.len, UODP_EVENT_REMAP);
				break;
			default:
				r = 0; /* page faults: not asked for */
				break;
			}
			if (r)
				f->err = r;
			atomic_fetch_add(&forwarded, 1);
		}
	}
	return NULL;
}

/* The application's own userfaultfd over [p, p + len): events only (write
 * protection mode, with nothing write-protected, so no page fault is ever
 * delivered). Returns the descriptor, or -errno. */
static int app_uffd(void *p, size_t len)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)p, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	int fd, err;

	fd = (int)syscall(SYS_userfaultfd,
			  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0 && errno == EINVAL) /* kernels before 5.11 */
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	api.features = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE |
		       UFFD_FEATURE_EVENT_REMAP;
	if (ioctl(fd, UFFDIO_API, &api) || ioctl(fd, UFFDIO_REGISTER, &reg)) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Wait (up to 2 s) until @n events have been forwarded. */
static int wait_forwarded(unsigned n)
{
	struct timespec ts = { 0, 1000000 };
	int i;

	for (i = 0; i < 2000 && atomic_load(&forwarded) < n; i++)
		nanosleep(&ts, NULL);
	return atomic_load(&forwarded) >= n;
}

/* The driver's fault: map_and_lock, copy entries, unlock. */
static int64_t fault(struct uodp_umem *umem, char *p, size_t npages,
		     unsigned access)
{
	uint64_t e[NPAGES];
	int64_t n, i;

	n = uodp_umem_map_and_lock(umem, p, npages * page, access,
				   FAULT_TIMEOUT_MS);
	if (n < 0)
		return n;
	uodp_umem_entries_locked(umem, p, (size_t)n, e);
	for (i = 0; i < n; i++)
		atomic_store(&dev_pt[(p - buf) / page + i], e[i]);
	uodp_umem_unlock(umem);
	return n;
}

static int check(int ok, const char *what)
{
	printf("  [%s] %s\n", ok ? "ok" : "FAIL", what);
	return ok;
}

int main(void)
{
	const struct uodp_ctx_ops ops = { .invalidate = on_invalidate };
	struct forwarder f = { .uffd = -1, .stopfd = -1 };
	struct uodp_umem *umem = NULL;
	char *moved = MAP_FAILED;
	pthread_t th;
	bool thread = false;
	int64_t n;
	int r, ok = 1;
	uint64_t one = 1;

	page = (size_t)sysconf(_SC_PAGESIZE);
	buf = mmap(NULL, NPAGES * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	memset(buf, 0x5a, NPAGES * page);

	f.uffd = app_uffd(buf, NPAGES * page);
	if (f.uffd < 0) {
		printf("userfaultfd unavailable here (%s): skipped\n",
		       strerror(-f.uffd));
		munmap(buf, NPAGES * page);
		return SKIP;
	}
	printf("the application watches %d pages at %p with its own "
	       "userfaultfd\n",
	       NPAGES, buf);

	/* Why a manual context: one with the kernel monitor cannot watch
	 * memory another userfaultfd already watches. */
	if (!uodp_ctx_create(&ops, 0, &f.ctx)) {
		r = uodp_umem_get(f.ctx, buf, NPAGES * page, UODP_ACCESS_ALL,
				  &umem);
		printf("a context with the kernel monitor: uodp_umem_get -> "
		       "%d (%s)\n",
		       r, r ? uodp_strerror(r) : "registered");
		/* -ENOSYS / -EPERM: no kernel monitor here at all. */
		ok &= check(r == -EBUSY || r == -ENOSYS || r == -EPERM,
			    "it is refused (-EBUSY where the monitor works)");
		if (!r)
			uodp_umem_release(umem);
		umem = NULL;
		uodp_ctx_destroy(f.ctx);
		f.ctx = NULL;
	}
	r = uodp_ctx_create(&ops, UODP_CTX_MANUAL, &f.ctx);
	if (r) {
		fprintf(stderr, "uodp_ctx_create: %s\n", uodp_strerror(r));
		goto out;
	}
	r = uodp_umem_get(f.ctx, buf, NPAGES * page, UODP_ACCESS_ALL, &umem);
	if (r) {
		fprintf(stderr, "uodp_umem_get: %s\n", uodp_strerror(r));
		goto out;
	}
	f.stopfd = eventfd(0, EFD_CLOEXEC);
	if (f.stopfd < 0 || pthread_create(&th, NULL, forward_main, &f)) {
		r = -EAGAIN;
		goto out;
	}
	thread = true;

	n = fault(umem, buf, NPAGES, UODP_ACCESS_ALL);
	ok &= check(n == NPAGES, "the device faults all pages in");

	printf("madvise(MADV_DONTNEED) of pages 0-1:\n");
	madvise(buf, 2 * page, MADV_DONTNEED);
	ok &= check(wait_forwarded(1) && !atomic_load(&dev_pt[0]) &&
			    !atomic_load(&dev_pt[1]) && atomic_load(&dev_pt[2]),
		    "UFFD_EVENT_REMOVE forwarded: device entries of pages "
		    "0-1 dropped, page 2 kept");
	n = fault(umem, buf, 1, UODP_ACCESS_READ);
	ok &= check(n == 1 && buf[0] == 0,
		    "a new fault maps page 0 again (zero-filled now)");

	printf("munmap() of pages 4-5:\n");
	munmap(buf + 4 * page, 2 * page);
	ok &= check(wait_forwarded(2) && !atomic_load(&dev_pt[4]) &&
			    !atomic_load(&dev_pt[5]),
		    "UFFD_EVENT_UNMAP forwarded: device entries of pages "
		    "4-5 dropped");
	n = fault(umem, buf + 4 * page, 1, UODP_ACCESS_READ);
	ok &= check(n == -EFAULT, "a fault on page 4 fails with -EFAULT");

	printf("mremap() of pages 6-7 elsewhere:\n");
	moved = mmap(NULL, 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		     0);
	if (moved != MAP_FAILED)
		moved = mremap(buf + 6 * page, 2 * page, 2 * page,
			       MREMAP_MAYMOVE | MREMAP_FIXED, moved);
	ok &= check(moved != MAP_FAILED && wait_forwarded(3) &&
			    !atomic_load(&dev_pt[6]) &&
			    !atomic_load(&dev_pt[7]),
		    "UFFD_EVENT_REMAP forwarded: device entries of pages "
		    "6-7 dropped");
	n = fault(umem, buf + 6 * page, 1, UODP_ACCESS_READ);
	ok &= check(n == -EFAULT, "a fault on old page 6 fails with -EFAULT");
	ok &= check(f.err == 0, "every forwarding call succeeded");
out:
	if (thread) {
		if (write(f.stopfd, &one, sizeof(one)) == sizeof(one))
			pthread_join(th, NULL);
	}
	if (f.stopfd >= 0)
		close(f.stopfd);
	if (umem)
		uodp_umem_release(umem);
	if (f.ctx)
		uodp_ctx_destroy(f.ctx);
	close(f.uffd);
	munmap(buf, 4 * page);
	munmap(buf + 6 * page, 2 * page); /* already moved: harmless */
	if (moved != MAP_FAILED)
		munmap(moved, 2 * page);
	if (r) {
		printf("uffd_forward: setup failed\n");
		return 1;
	}
	printf("%s\n", ok ? "uffd_forward: every step behaved as stated" :
			    "uffd_forward: UNEXPECTED RESULT");
	return ok ? 0 : 1;
}

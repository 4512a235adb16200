/* SPDX-License-Identifier: MIT */
/*
 * uffd.h - the kernel side of the notifier: opening a userfaultfd with the
 * features the monitor needs, registering and unregistering ranges, and the
 * few address-space queries that tell a hole from a mapping the kernel
 * refuses (internal interface of src/notifier).
 *
 * Constants newer than the oldest headers we build against are defined here
 * by their kernel values.
 */
#ifndef UODP_NOTIFIER_UFFD_H
#define UODP_NOTIFIER_UFFD_H

#include <stdbool.h>
#include <stdint.h>

#include <linux/userfaultfd.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ull << 15)
#endif

/* The events the monitor cannot work without. */
#define UFFD_NEEDED                                                        \
	((uint64_t)(UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | \
		    UFFD_FEATURE_EVENT_REMAP))

/*
 * Open a userfaultfd (close-on-exec, non-blocking, user-mode faults only)
 * and enable UFFD_NEEDED plus WP_ASYNC where the kernel has it; never
 * EVENT_FORK. The kernel's feature set is learnt once per process with a
 * zero-feature handshake on a throw-away fd. Returns the fd, the enabled
 * features in *@features.
 * Errors: -ENOSYS (no userfaultfd, or it lacks the UFFD_NEEDED events or
 * write-protect registration: Linux < 5.7),
 * -EPERM / -EACCES (forbidden: sysctl, seccomp, container policy),
 * -EMFILE / -ENFILE / -ENOMEM.
 */
int uffd_open(uint64_t *features);

/* UFFDIO_REGISTER_MODE_WP / UFFDIO_UNREGISTER of [start, end) (page
 * aligned). Return 0 or the kernel's -errno: -EINVAL also when nothing at
 * all is mapped in the range. */
int uffd_register(int fd, uint64_t start, uint64_t end);
int uffd_unregister(int fd, uint64_t start, uint64_t end);

/* True when every page of [start, end) is mapped (no hole). One vma walk
 * under the mmap read lock (msync(MS_ASYNC) does no I/O). */
bool uffd_fully_mapped(uint64_t start, uint64_t end);

/*
 * Call @fn for each mapping overlapping [start, end), whole (not clamped
 * to the range), in address order, as read from /proc/self/maps with a
 * buffer on the stack (no allocation), with what its path tells: @sysv
 * when it is SysV shared memory (the path starts with "/SYSV":
 * "/SYSV%08x (deleted)", checked on Linux 6.18; shmat() mappings always
 * show it). Stops when @fn returns nonzero and returns that value; returns
 * 0 after the last mapping, -errno when the file cannot be read. The one
 * reader of the maps in the library.
 */
struct uffd_map {
	uint64_t start, end;
	bool sysv;
	bool anon; /* inode 0: anonymous memory, which userfaultfd never
		    * refuses (a failed registration means it went away) */
};
int uffd_for_each_map(uint64_t start, uint64_t end,
		      int (*fn)(const struct uffd_map *m, void *arg),
		      void *arg);

/*
 * Identity of an open descriptor, to tell whether a descriptor number still
 * refers to the file we opened (an application may close "unknown" fds and
 * the number be reused). Each userfaultfd and each pipe has its own inode
 * (measured on 6.18; eventfds share one inode, so the notifier uses a pipe
 * to wake its thread). uffd_fd_is() is false when @fd is closed or is
 * another file.
 */
struct uffd_fdid {
	uint64_t dev, ino;
	int acc; /* O_ACCMODE of the open file: tells a pipe's two ends apart */
};
int uffd_fd_id(int fd, struct uffd_fdid *id);
bool uffd_fd_is(int fd, const struct uffd_fdid *id);

/*
 * Register and unregister a page of our own, to tell a registration
 * forbidden by a seccomp filter (-EPERM here too) from a mapping the kernel
 * refuses (a MAP_SHARED file opened read-only also answers EPERM).
 * Returns 0 (registration works), -EPERM or another -errno.
 */
int uffd_register_probe(int fd);

#endif

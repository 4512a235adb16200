/* SPDX-License-Identifier: MIT */
/*
 * uodp_ofi.h - uodp as libfabric's memory monitor (libuodp-ofi).
 *
 * libfabric's registration cache (used by providers that must register
 * memory: verbs, efa, ...) asks a "memory monitor" to watch every cached
 * buffer and to tell it when the buffer's pages go away. Since 1.13 an
 * application may give libfabric a monitor of its own through the import
 * extension of <rdma/fi_ext.h> (fi_open("mr_cache") + fi_import_fid()).
 * uodp_ofi_import() imports one backed by uodp's kernel monitor
 * (userfaultfd, unprivileged): it sees munmap(), raw syscall(SYS_munmap),
 * madvise(MADV_DONTNEED), mremap() and mappings replaced over the buffer,
 * on anonymous, file-backed and shared memory alike.
 *
 *     int r = uodp_ofi_import(0);   // before fi_domain() is called
 *     if (r < 0)
 *         fprintf(stderr, "uodp-ofi: %s\n", uodp_strerror(r));
 *     ... fi_getinfo / fi_fabric / fi_domain / fi_mr_reg as usual ...
 *     uodp_ofi_close();             // after the last domain is closed
 *
 * One imported monitor per process: libfabric keeps one. The first import
 * wins; a later one (ours or another library's) is refused with EBUSY, and
 * so is an import once a domain's cache runs on libfabric's own monitor.
 * See uodp_ofi_import(3) for Open MPI, which imports its own.
 */
#ifndef UODP_OFI_H
#define UODP_OFI_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UODP_OFI_API __attribute__((visibility("default")))
#else
#define UODP_OFI_API
#endif

struct fid_mem_monitor;
struct uodp_ctx;

/*
 * Import the uodp monitor into libfabric as the default monitor of system
 * memory. Call it before any domain is opened (fi_domain()); caches opened
 * afterwards use it. @flags: 0 (none defined yet).
 *
 * The monitor runs on a UODP_CTX_DEFERRED context: libfabric calls
 * subscribe() with its cache lock held, and its notify() takes that lock,
 * so notify() is called from uodp's relay thread, holding no uodp lock.
 * valid() is one atomic load: false while any invalidation of the process
 * is in flight (read from the kernel, not yet passed to notify()), so a
 * lookup made after munmap() returned never answers from a stale entry.
 *
 * Returns 0, or:
 *  -EINVAL   unknown @flags bits;
 *  -EALREADY uodp_ofi_import() already succeeded in this process;
 *  -EBUSY    libfabric has an imported monitor already (Open MPI's, for
 *            instance), or a cache already runs on its default monitor;
 *  -ENOSYS   uodp's kernel monitor is unavailable (userfaultfd missing,
 *            Linux < 5.14), or this libfabric has no import extension;
 *  -EPERM    userfaultfd is forbidden (seccomp, vm.unprivileged_userfaultfd
 *            on kernels without UFFD_USER_MODE_ONLY);
 *  -ENOMEM, -EMFILE, -ENFILE, -EAGAIN as uodp_umem_get().
 * Nothing is imported on error.
 */
UODP_OFI_API int uodp_ofi_import(unsigned flags);

/*
 * Undo uodp_ofi_import(): the monitor is closed in libfabric and the uodp
 * context destroyed. Call it after every domain that used the monitor is
 * closed. Returns 0, -ENOENT (nothing imported), -EBUSY (libfabric still
 * has regions subscribed: a domain is still open).
 */
UODP_OFI_API int uodp_ofi_close(void);

/*
 * The imported monitor (NULL before uodp_ofi_import()), for programs and
 * tests that drive it as libfabric's cache does: export_ops are ours,
 * import_ops (notify) libfabric's.
 */
UODP_OFI_API struct fid_mem_monitor *uodp_ofi_monitor(void);

/* The uodp context behind the monitor (NULL before import). */
UODP_OFI_API struct uodp_ctx *uodp_ofi_ctx(void);

/* Counters since import (any thread, no lock). */
struct uodp_ofi_stats {
	uint64_t subscribes;   /* subscribe() calls that succeeded */
	uint64_t sub_errors;   /* subscribe() calls that failed */
	uint64_t unsubscribes; /* unsubscribe() calls that matched */
	uint64_t notifies;     /* notify() calls made into libfabric */
	uint64_t invalid;      /* valid() answers "no" */
	uint64_t watched;      /* regions watched now */
};
UODP_OFI_API void uodp_ofi_stats(struct uodp_ofi_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* UODP_OFI_H */

/* SPDX-License-Identifier: MIT */
/*
 * uodp_ofi_guard.h - revoke a libfabric memory registration when its
 * memory goes away (libuodp-ofi-guard).
 *
 * Software RMA providers (tcp;ofi_rxm, sockets, ...) write a remote peer's
 * data to the target buffer by virtual address. If the target unmaps a
 * registered buffer and maps something else there, a late write from a
 * peer lands in the new, unrelated memory. A guarded registration watches
 * its buffer with uodp's kernel monitor and closes the MR (fi_close) when
 * the buffer is unmapped, replaced, remapped or discarded
 * (MADV_DONTNEED): the provider then refuses writes with its key.
 *
 *     uodp_ofi_guard_open(UODP_OFI_GUARD_STRICT, NULL, NULL, &g);
 *     uodp_ofi_guard_mr_reg(g, domain, NULL, buf, len, FI_REMOTE_WRITE,
 *                           key, &gm);
 *     ... give uodp_ofi_guard_mr_key(gm) to peers ...
 *     // the target's progress loop:
 *     uodp_ofi_guard_progress_begin(g);
 *     fi_cq_read(cq, ...);
 *     uodp_ofi_guard_progress_end(g);
 *
 * Without UODP_OFI_GUARD_STRICT the MR is closed shortly after munmap()
 * returns (on uodp's relay thread); a write the provider processes in
 * between still lands. With it, the guard fences the provider's progress:
 * from before munmap() returns until the MR is closed, no progress section
 * runs, so no write can land in memory mapped after the munmap. The
 * domain must be FI_THREAD_SAFE unless every provider call of the target
 * runs inside progress sections (the MR is closed on another thread).
 */
#ifndef UODP_OFI_GUARD_H
#define UODP_OFI_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UODP_OFI_GUARD_API __attribute__((visibility("default")))
#else
#define UODP_OFI_GUARD_API
#endif

struct fid_domain;
struct fid_ep;
struct fid_mr;
struct uodp_ctx;
struct uodp_ofi_guard;
struct uodp_ofi_guard_mr;

/* Fence the target's progress sections while an invalidation is handled
 * (see above). Progress sections must then not unmap, madvise or free
 * memory in a mapping a guarded MR lies in: the kernel would make them
 * wait for the monitor, which waits for them. Register buffers that have
 * mappings of their own (mmap), not heap memory. */
#define UODP_OFI_GUARD_STRICT (1u << 0)

/* Called on uodp's relay thread after an MR was revoked (no uodp lock
 * held; the guard's lock is not held either). */
typedef void (*uodp_ofi_guard_revoked_fn)(struct uodp_ofi_guard_mr *gm,
					  void *arg);

/*
 * A guard: one uodp context (UODP_CTX_DEFERRED). @revoked may be NULL.
 * Errors: -EINVAL (@out NULL, unknown flags), -ENOMEM, and those of
 * uodp_ctx_create().
 */
UODP_OFI_GUARD_API int uodp_ofi_guard_open(unsigned flags,
					   uodp_ofi_guard_revoked_fn revoked,
					   void *arg,
					   struct uodp_ofi_guard **out);

/* Close a guard with no registration left (-EBUSY otherwise), -EINVAL
 * for NULL. */
UODP_OFI_GUARD_API int uodp_ofi_guard_close(struct uodp_ofi_guard *g);

/*
 * fi_mr_reg(@domain, @buf, @len, @access, 0, @requested_key, 0) under
 * guard; with @ep non-NULL (FI_MR_ENDPOINT domains) the MR is bound to it
 * and enabled. Errors: -EINVAL (NULL argument, @len 0), libfabric's
 * (negative FI_E* values are errno values), those of uodp_umem_get()
 * (-ENOSYS / -EPERM: no kernel monitor; -EOPNOTSUPP: SysV shm), -EFAULT
 * (the buffer was unmapped while it was being registered). Do not call
 * it, nor uodp_ofi_guard_mr_close(), inside a progress section.
 */
UODP_OFI_GUARD_API int
uodp_ofi_guard_mr_reg(struct uodp_ofi_guard *g, struct fid_domain *domain,
		      struct fid_ep *ep, void *buf, size_t len, uint64_t access,
		      uint64_t requested_key, struct uodp_ofi_guard_mr **out);

/* The MR's key and descriptor (valid until revoked or closed). */
UODP_OFI_GUARD_API uint64_t
uodp_ofi_guard_mr_key(const struct uodp_ofi_guard_mr *gm);
UODP_OFI_GUARD_API void *
uodp_ofi_guard_mr_desc(const struct uodp_ofi_guard_mr *gm);

/* True once the MR was revoked because its memory went away. */
UODP_OFI_GUARD_API bool
uodp_ofi_guard_mr_revoked(const struct uodp_ofi_guard_mr *gm);

/*
 * Close the MR (if not revoked) and stop watching. Waits until no
 * revocation of it runs. Errors: -EINVAL (NULL), -EDEADLK (from the
 * revoked callback).
 */
UODP_OFI_GUARD_API int uodp_ofi_guard_mr_close(struct uodp_ofi_guard_mr *gm);

/* The target's progress sections (UODP_OFI_GUARD_STRICT; no-ops
 * otherwise). begin waits while a revocation is pending. */
UODP_OFI_GUARD_API void uodp_ofi_guard_progress_begin(struct uodp_ofi_guard *g);
UODP_OFI_GUARD_API void uodp_ofi_guard_progress_end(struct uodp_ofi_guard *g);

UODP_OFI_GUARD_API struct uodp_ctx *
uodp_ofi_guard_ctx(const struct uodp_ofi_guard *g);

#ifdef __cplusplus
}
#endif

#endif /* UODP_OFI_GUARD_H */

/* SPDX-License-Identifier: MIT */
/*
 * uodp_ucm.h - uodp as the source of UCX's memory events (libuodp-ucm).
 *
 * UCX's registration caches (ucs_rcache: UCP's, and the IB, CUDA, ...
 * memory domains') learn that memory went away from UCM, which hooks
 * munmap/mremap/madvise/shmdt/brk in every loaded object. Hooks miss what
 * does not call those symbols: raw syscall(SYS_munmap), inline system
 * calls, statically linked code (a static libc, the Go runtime), and they
 * cost an interposition on every call. UCM can instead be told that the
 * event comes from outside (ucm_set_external_event()) and fed with
 * ucm_vm_munmap(). uodp_ucm_start() does that, with uodp's kernel monitor
 * as the source: every munmap, raw or not, of a watched range reaches UCX.
 *
 *     // UCM's hooks off in the environment of the process (UCX reads it
 *     // when it loads): UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_MALLOC_HOOKS=no
 *     uodp_ucm_start(0);            // before ucp_init() / ucs_rcache_create()
 *     ... the buffers you register: ...
 *     uodp_ucm_watch(buf, len);     // e.g. in your rcache's mem_reg
 *     uodp_ucm_unwatch(buf, len);   // in mem_dereg
 *
 * What to watch. UCX has no subscribe call: a cache tells nobody which
 * ranges it holds. Watch the ranges your cache registers (its mem_reg /
 * mem_dereg), or your communication buffers (the ranges you ucp_mem_map()
 * or send from). uodp watches whole kernel mappings, so one watch of a
 * buffer covers every cached region inside that mapping. A watch of the
 * whole address space (UODP_UCM_WATCH_ALL) covers the mappings that exist
 * when it is made, not those mapped later; uodp_ucm_refresh() re-takes it.
 *
 * The stale window. The event reaches UCX on uodp's relay thread, after
 * munmap() has returned: a lookup made right after munmap() (and a new
 * mmap() at the same address) can still find the old region. UCX asks no
 * one before it answers from its cache (it has no per-lookup validate hook
 * as libfabric has), so this adapter cannot close the window inside UCX.
 * Callers that own the lookup close it with uodp_ucm_lookup_begin() /
 * _end() around it. Upstream, UCX would need a validate callback in
 * ucs_rcache_params (called on each hit, like libfabric's valid()), which
 * uodp would answer with uodp_ctx_sync().
 */
#ifndef UODP_UCM_H
#define UODP_UCM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UODP_UCM_API __attribute__((visibility("default")))
#else
#define UODP_UCM_API
#endif

struct uodp_ctx;

/* uodp_ucm_start() flags. Watch every mapping of the address space that
 * exists now (see "What to watch"). There is no flag to turn UCM's hooks
 * off: UCX reads that setting from the environment when it loads, and
 * changing ucm_global_opts afterwards makes UCM 1.13 recurse into its own
 * mmap hook (measured: a stack overflow at the first mmap). */
#define UODP_UCM_WATCH_ALL (1u << 1)

/*
 * Declare UCM_EVENT_VM_UNMAPPED external and start feeding it from uodp.
 * Must precede every UCX call that installs an event handler (ucp_init(),
 * ucs_rcache_create()): UCM decides at that point whether to hook.
 * Returns 0, or:
 *  -EINVAL   unknown @flags bits;
 *  -EALREADY started already;
 *  -EBUSY    UCM's hooks are enabled: set UCX_MEM_MMAP_HOOK_MODE=none and
 *            UCX_MEM_MALLOC_HOOKS=no in the environment before UCX loads
 *            (example_ucm re-executes itself with them);
 *  -ENOSYS / -EPERM  uodp's kernel monitor is unavailable / forbidden;
 *  -EOPNOTSUPP (UODP_UCM_WATCH_ALL) a mapping the kernel cannot report
 *            (SysV shared memory) is in the address space;
 *  -ENOMEM, -EMFILE, -ENFILE, -EAGAIN as uodp_umem_get().
 */
UODP_UCM_API int uodp_ucm_start(unsigned flags);

/* Stop: the watches are dropped, the event stays external (UCM cannot
 * install its hooks after handlers exist). -ENOENT when not started. */
UODP_UCM_API int uodp_ucm_stop(void);

/*
 * Watch [addr, addr + len) (rounded out to pages): its unmapping, a
 * mapping replaced over it, MADV_DONTNEED/FREE/REMOVE on it and mremap()
 * away from it reach UCX as ucm_vm_munmap(range). Watches are counted per
 * (addr, len); unwatch with the same pair. May be called from UCX's
 * mem_reg / mem_dereg callbacks, and from an event handler that runs
 * because of this adapter. watch: 0, -ENOENT (not started) or an error
 * of uodp_umem_get(); unwatch: 0 or -ENOENT (no such watch).
 */
UODP_UCM_API int uodp_ucm_watch(void *addr, size_t len);
UODP_UCM_API int uodp_ucm_unwatch(void *addr, size_t len);

/* UODP_UCM_WATCH_ALL: watch the mappings made since start (or the last
 * refresh) too. Costs one read of /proc/self/maps and one system call per
 * new mapping. Returns 0, -ENOENT (not started), -EINVAL (started without
 * UODP_UCM_WATCH_ALL) or an error of uodp_umem_get() (-EOPNOTSUPP: SysV
 * shared memory is attached); on error the previous watch stays. */
UODP_UCM_API int uodp_ucm_refresh(void);

/*
 * The lookup lock, for callers that own their cache lookups: begin waits
 * until no invalidation is in flight (every munmap that returned before
 * the call has reached UCX), then holds events back until _end, so what
 * the lookup returned stays valid in between. Keep the section short: the
 * relay thread (shared by every deferred uodp context of the process)
 * waits for it. Do not unmap watched memory between begin and end.
 * Returns 0, -EBUSY (@timeout_ms passed with events in flight: the lookup
 * may be stale), -EDEADLK (called from an event handler), -ENOENT.
 */
UODP_UCM_API int uodp_ucm_lookup_begin(unsigned timeout_ms);
UODP_UCM_API void uodp_ucm_lookup_end(void);

/* The uodp context behind the adapter (NULL when not started). */
UODP_UCM_API struct uodp_ctx *uodp_ucm_ctx(void);

struct uodp_ucm_stats {
	uint64_t events;  /* ucm_vm_munmap() calls made */
	uint64_t watches; /* uodp_ucm_watch() calls that succeeded */
	uint64_t watched; /* watches held now */
	uint64_t refreshes;
};
UODP_UCM_API void uodp_ucm_stats(struct uodp_ucm_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* UODP_UCM_H */

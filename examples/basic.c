/* SPDX-License-Identifier: MIT */
/*
 * basic.c - the engine in one page: register memory, fault it in the way a
 * driver does (uodp_umem_map_and_lock, copy the entries, unlock),
 * invalidate it and read the dirty set. Uses a manual context, so it needs
 * no userfaultfd: the program reports its own munmap() to the engine.
 *
 *   cc basic.c $(pkg-config --cflags --libs uodp)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uodp.h>

#define NPAGES 16

/* How long a fault may wait behind invalidations before giving up. */
#define FAULT_TIMEOUT_MS 100

static void on_invalidate(struct uodp_umem *umem,
			  const struct uodp_range *range, void *priv)
{
	(void)umem;
	(void)priv;
	printf("  driver: invalidate [%p, %p) (event %d) - dropping device "
	       "translations\n",
	       range->start, range->end, (int)range->event);
}

/*
 * The driver's fault: map_and_lock returns with the region lock held and
 * no invalidation of the pages since they were made present; the entries
 * are copied into the device page table (here: @entries) under that lock.
 * Returns the pages mapped or a negative errno.
 */
static int64_t fault(struct uodp_umem *umem, void *va, size_t len,
		     unsigned access, uint64_t *entries)
{
	int64_t n;

	n = uodp_umem_map_and_lock(umem, va, len, access, FAULT_TIMEOUT_MS);
	if (n < 0)
		return n; /* lock not held */
	uodp_umem_entries_locked(umem, va, (size_t)n, entries);
	/* ... a real driver writes entries[] into its page table here ... */
	uodp_umem_unlock(umem);
	return n;
}

/* The engine's entry of one page (0: not mapped). */
static uint64_t entry_of(struct uodp_umem *umem, void *va)
{
	uint64_t e = 0;

	if (uodp_umem_lock(umem))
		return 0;
	uodp_umem_entries_locked(umem, va, 1, &e);
	uodp_umem_unlock(umem);
	return e;
}

int main(void)
{
	const struct uodp_ctx_ops ops = { .invalidate = on_invalidate };
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	struct uodp_umem_stats st;
	struct uodp_umem *umem;
	struct uodp_ctx *ctx;
	uint64_t entries[NPAGES];
	void *dirty[NPAGES];
	int64_t n, ndirty;
	char *buf;
	int r, ok = 1;

	r = uodp_check_version(UODP_VERSION_MAJOR, UODP_VERSION_MINOR);
	if (r) {
		fprintf(stderr, "libuodp %s: %s\n", uodp_version(),
			uodp_strerror(r));
		return 1;
	}
	buf = mmap(NULL, NPAGES * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;

	r = uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx);
	if (r) {
		fprintf(stderr, "uodp_ctx_create: %s\n", uodp_strerror(r));
		munmap(buf, NPAGES * page);
		return 1;
	}
	r = uodp_umem_get(ctx, buf, NPAGES * page, UODP_ACCESS_ALL, &umem);
	if (r) {
		fprintf(stderr, "uodp_umem_get: %s\n", uodp_strerror(r));
		uodp_ctx_destroy(ctx);
		munmap(buf, NPAGES * page);
		return 1;
	}
	printf("registered %d pages at %p (nothing mapped yet)\n", NPAGES, buf);

	n = fault(umem, buf, 4 * page, UODP_ACCESS_ALL, entries);
	printf("device write fault on pages 0-3: %" PRId64 " pages mapped, "
	       "entry of page 0 = %#" PRIx64 "\n",
	       n, n > 0 ? entries[0] : 0);
	ok &= n == 4 && (entries[0] & UODP_ENTRY_WRITE);

	n = fault(umem, buf + 8 * page, page, UODP_ACCESS_READ, entries);
	printf("device read fault on page 8: %" PRId64 " page mapped\n", n);
	ok &= n == 1;

	printf("application invalidates pages 0-1:\n");
	r = uodp_invalidate_range(ctx, buf, 2 * page, UODP_EVENT_MANUAL);
	printf("  entry of page 0 = %#" PRIx64 ", page 2 = %#" PRIx64 "\n",
	       entry_of(umem, buf), entry_of(umem, buf + 2 * page));
	ok &= r == 0 && entry_of(umem, buf) == 0 &&
	      entry_of(umem, buf + 2 * page) != 0;

	ndirty = uodp_umem_dirty_take(umem, dirty, NPAGES);
	printf("dirty pages after the invalidation: %" PRId64 "\n", ndirty);
	ok &= ndirty == 2 && dirty[0] == buf;

	/* A manual context hears of an munmap only from the program. */
	printf("application unmaps page 8 and says so:\n");
	munmap(buf + 8 * page, page);
	uodp_invalidate_range(ctx, buf + 8 * page, page, UODP_EVENT_UNMAP);
	n = fault(umem, buf + 8 * page, page, UODP_ACCESS_READ, entries);
	printf("fault on page 8 after munmap: %s\n",
	       n < 0 ? uodp_strerror((int)n) : "mapped?!");
	ok &= n == -EFAULT;

	n = fault(umem, buf + 16 * page, page, UODP_ACCESS_READ, entries);
	printf("fault past the region: %s\n",
	       n < 0 ? uodp_strerror((int)n) : "mapped?!");
	ok &= n == -ERANGE;

	r = uodp_umem_stats(umem, &st, sizeof(st));
	printf("counters: %" PRIu64 " map calls, %" PRIu64
	       " pages mapped, %" PRIu64 " invalidations, %" PRIu64
	       " pages invalidated, %" PRIu64 " mapped now\n",
	       st.map_calls, st.pages_mapped, st.invalidations,
	       st.pages_invalidated, st.mapped_now);
	ok &= r == 0 && st.mapped_now == 2;

	uodp_umem_release(umem);
	uodp_ctx_destroy(ctx);
	munmap(buf, 8 * page);
	munmap(buf + 9 * page, 7 * page);
	printf("%s\n",
	       ok ? "every step behaved as stated" : "UNEXPECTED RESULT");
	return ok ? 0 : 1;
}

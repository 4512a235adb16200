/* SPDX-License-Identifier: MIT */
/*
 * basic.c - the engine in one page: register memory, fault it in the way a
 * driver does (read_seq, map, lock + retry, copy entries), invalidate it and
 * read the dirty set. Uses a manual context, so it needs no userfaultfd.
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

static void on_invalidate(struct uodp_umem *umem, uint64_t start, uint64_t end,
			  void *priv)
{
	(void)umem;
	(void)priv;
	printf("  driver: invalidate [%#" PRIx64 ", %#" PRIx64 ") - dropping "
	       "device translations\n",
	       start, end);
}

/* The driver's fault loop (see uodp.h). Returns pages mapped or -errno. */
static int64_t fault(struct uodp_umem *umem, uint64_t va, uint64_t len,
		     unsigned access)
{
	int64_t n;
	uint64_t seq;

	for (;;) {
		if (uodp_umem_wait(umem))
			return -ENODEV;
		seq = uodp_umem_read_seq(umem);
		n = uodp_umem_map(umem, va, len, access, seq);
		if (n == -EAGAIN)
			continue;
		if (n < 0)
			return n;
		uodp_umem_lock(umem);
		if (uodp_umem_retry(umem, seq)) {
			uodp_umem_unlock(umem);
			continue;
		}
		/* ... a real driver copies the entries to its page table ... */
		uodp_umem_unlock(umem);
		return n;
	}
}

int main(void)
{
	const struct uodp_ctx_ops ops = { .invalidate_range = on_invalidate };
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	struct uodp_umem_stats st;
	struct uodp_umem *umem;
	struct uodp_ctx *ctx;
	uint64_t dirty[NPAGES], base;
	int64_t n, ndirty;
	char *buf;
	int r, ok = 1;

	buf = mmap(NULL, NPAGES * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	base = (uint64_t)(uintptr_t)buf;

	r = uodp_ctx_create(&ops, UODP_CTX_MANUAL, &ctx);
	if (r) {
		fprintf(stderr, "uodp_ctx_create: %s\n", uodp_strerror(r));
		return 1;
	}
	r = uodp_umem_get(ctx, base, NPAGES * page, UODP_ACCESS_ALL, &umem);
	if (r) {
		fprintf(stderr, "uodp_umem_get: %s\n", uodp_strerror(r));
		return 1;
	}
	printf("registered %d pages at %p (nothing mapped yet)\n", NPAGES, buf);

	n = fault(umem, base, 4 * page, UODP_ACCESS_WRITE | UODP_ACCESS_READ);
	printf("device write fault on pages 0-3: %" PRId64 " pages mapped, "
	       "entry of page 0 = %#" PRIx64 "\n",
	       n, uodp_umem_entry(umem, base));
	ok &= n == 4;

	n = fault(umem, base + 8 * page, page, UODP_ACCESS_READ);
	printf("device read fault on page 8: %" PRId64 " page mapped\n", n);
	ok &= n == 1;

	printf("application invalidates pages 0-1 (as after an munmap):\n");
	uodp_invalidate_range(ctx, base, base + 2 * page);
	printf("  entry of page 0 = %#" PRIx64 ", page 2 = %#" PRIx64 "\n",
	       uodp_umem_entry(umem, base),
	       uodp_umem_entry(umem, base + 2 * page));
	ok &= uodp_umem_entry(umem, base) == 0 &&
	      uodp_umem_entry(umem, base + 2 * page) != 0;

	ndirty = uodp_umem_dirty_take(umem, dirty, NPAGES);
	printf("dirty pages after the invalidation: %" PRId64 "\n", ndirty);
	ok &= ndirty == 2;

	munmap(buf + 8 * page, page);
	n = fault(umem, base + 8 * page, page, UODP_ACCESS_READ);
	printf("fault on page 8 after munmap: %s\n",
	       n < 0 ? uodp_strerror((int)n) : "mapped?!");
	ok &= n == -EFAULT;

	uodp_umem_stats(umem, &st);
	printf("counters: %" PRIu64 " map calls, %" PRIu64
	       " pages mapped, %" PRIu64 " invalidations, %" PRIu64
	       " pages invalidated, %" PRIu64 " mapped now\n",
	       st.map_calls, st.pages_mapped, st.invalidations,
	       st.pages_invalidated, st.mapped_now);

	uodp_umem_release(umem);
	uodp_ctx_destroy(ctx);
	munmap(buf, NPAGES * page);
	printf("%s\n",
	       ok ? "every step behaved as stated" : "UNEXPECTED RESULT");
	return ok ? 0 : 1;
}

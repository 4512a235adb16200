/* SPDX-License-Identifier: MIT */
/*
 * test_monitor_hugetlb.c - hugetlbfs memory (MAP_HUGETLB, 2 MiB pages):
 * a region over a sub-range of huge pages faults exactly that sub-range,
 * manual invalidations of a few small pages inside a huge page drop what
 * they cover, and the kernel monitor reports MADV_DONTNEED and munmap of
 * whole huge pages.
 *
 * Huge pages must be reserved: as root the test raises
 * /proc/sys/vm/nr_hugepages by what it needs and restores the old value
 * when it exits; otherwise it uses free huge pages if there are any and
 * skips (77) if not. Also skips without the kernel monitor.
 */
#include "helpers.h"

#define HUGE ((size_t)2 << 20)
#define NHUGE 2 /* huge pages used */

static size_t page;
static long saved_nr = -1; /* nr_hugepages to restore, or -1 */

static long read_long(const char *path, const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	if (!key) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
	} else {
		size_t k = strlen(key);

		while (fgets(line, sizeof(line), f))
			if (!strncmp(line, key, k) &&
			    sscanf(line + k, "%ld", &v) == 1)
				break;
	}
	fclose(f);
	return v;
}

static bool write_nr(long n)
{
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
	bool ok;

	if (!f)
		return false;
	ok = fprintf(f, "%ld\n", n) > 0;
	return fclose(f) == 0 && ok;
}

static void restore_nr(void)
{
	if (saved_nr >= 0) {
		write_nr(saved_nr);
		saved_nr = -1;
	}
}

/* Make NHUGE free 2 MiB huge pages available, or say why not. */
static const char *reserve(void)
{
	long size_kb = read_long("/proc/meminfo", "Hugepagesize:");
	long free_ = read_long("/proc/meminfo", "HugePages_Free:");
	long nr = read_long("/proc/sys/vm/nr_hugepages", NULL);

	if (size_kb != 2048)
		return "the default huge page size is not 2 MiB";
	if (free_ >= NHUGE)
		return NULL;
	if (geteuid() != 0 || nr < 0)
		return "no free huge pages, and not root to reserve some";
	saved_nr = nr;
	atexit(restore_nr);
	if (!write_nr(nr + NHUGE - (free_ > 0 ? free_ : 0)) ||
	    read_long("/proc/meminfo", "HugePages_Free:") < NHUGE) {
		restore_nr();
		return "the kernel could not reserve huge pages";
	}
	return NULL;
}

static char *map_huge(void)
{
	char *p = mmap(NULL, NHUGE * HUGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);

	if (p == MAP_FAILED)
		t_skip("mmap(MAP_HUGETLB) failed");
	return p;
}

static uint64_t addr_bits(uint64_t e)
{
	return e & UODP_ENTRY_ADDR_MASK;
}

/* A region over a sub-range: [0.5 MiB + 1 page, 3 MiB) of the two huge
 * pages, crossing the boundary between them. */
static void check_subrange(unsigned flags)
{
	struct uodp_ctx *ctx;
	char *p = map_huge(), *s, *e;
	size_t n;
	struct uodp_umem *u;
	struct uodp_range r;
	uint64_t ent;

	ctx = t_ctx(flags);
	t_rec_reset();
	s = p + HUGE / 4 + page;
	e = p + HUGE + HUGE / 2;
	n = (size_t)(e - s) / page;
	memset(p, 0x33, NHUGE * HUGE);
	u = t_get(ctx, s, (size_t)(e - s), UODP_ACCESS_ALL);
	assert_int_equal(t_fault(u, s, (size_t)(e - s), UODP_ACCESS_WRITE),
			 (int64_t)n);
	for (size_t i = 0; i < n; i += 61) {
		ent = t_entry(u, t_pg(s, i));
		assert_int_equal(addr_bits(ent), (uintptr_t)t_pg(s, i));
		assert_int_equal(ent & UODP_ENTRY_ACCESS_MASK,
				 UODP_ACCESS_WRITE);
	}
	/* Outside the region: refused, even inside the same huge page. */
	assert_int_equal(t_fault(u, s - page, page, UODP_ACCESS_READ), -ERANGE);
	assert_int_equal(t_fault(u, e, page, UODP_ACCESS_READ), -ERANGE);

	/* A manual invalidation of two small pages inside the first huge
	 * page: the driver is told of exactly them; they are gone. */
	uodp_range_init(&r, p + HUGE / 2, 2 * page, UODP_EVENT_MANUAL);
	assert_int_equal(uodp_invalidate_range_start(ctx, &r), 0);
	assert_true(t_rec_find(0, u, p + HUGE / 2, p + HUGE / 2 + 2 * page,
			       UODP_EVENT_MANUAL) >= 0);
	assert_int_equal(t_entry(u, p + HUGE / 2), 0);
	assert_int_equal(t_entry(u, p + HUGE / 2 + page), 0);
	assert_int_equal(uodp_umem_map_and_lock(u, p + HUGE / 2, page,
						UODP_ACCESS_READ, 0),
			 -EBUSY);
	assert_int_equal(uodp_invalidate_range_end(&r), 0);
	assert_int_equal(t_fault(u, p + HUGE / 2, 2 * page, UODP_ACCESS_READ),
			 2);
	/* The data was never touched by any of this. */
	assert_int_equal(p[HUGE / 2], 0x33);
	assert_int_equal(t_fault(u, s, (size_t)(e - s), UODP_ACCESS_ALL),
			 (int64_t)n);
	assert_int_equal(t_stats(u).mapped_now, n);

	if (!(flags & UODP_CTX_MANUAL)) {
		unsigned mark = t_rec_count();

		/* MADV_DONTNEED of the first huge page (hugetlb needs whole
		 * huge pages): the region's part of it. */
		assert_int_equal(madvise(p, HUGE, MADV_DONTNEED), 0);
		t_rec_wait(mark, u, s, p + HUGE, UODP_EVENT_REMOVE, 10);
		t_wait_sync(ctx);
		assert_int_equal(t_entry(u, s), 0);
		assert_int_equal(t_entry(u, p + HUGE - page), 0);
		assert_true(t_entry(u, p + HUGE) != 0);
		/* munmap of the second. */
		mark = t_rec_count();
		assert_int_equal(munmap(p + HUGE, HUGE), 0);
		t_rec_wait(mark, u, p + HUGE, e, UODP_EVENT_UNMAP, 10);
		t_wait_sync(ctx);
		assert_int_equal(
			t_count(u, p + HUGE, (size_t)(e - p - HUGE) / page), 0);
		assert_int_equal(t_fault(u, p + HUGE, page, UODP_ACCESS_READ),
				 -EFAULT);
		/* The first faults again (fresh zeroed huge page). */
		assert_int_equal(t_fault(u, s, page, UODP_ACCESS_READ), 1);
		assert_int_equal(s[0], 0);
		assert_int_equal(uodp_umem_release(u), 0);
		assert_int_equal(uodp_ctx_destroy(ctx), 0);
		munmap(p, HUGE);
		return;
	}
	assert_int_equal(uodp_umem_release(u), 0);
	assert_int_equal(uodp_ctx_destroy(ctx), 0);
	munmap(p, NHUGE * HUGE);
}

static void test_hugetlb_manual(void **state)
{
	(void)state;
	check_subrange(UODP_CTX_MANUAL);
}

static void test_hugetlb_monitor(void **state)
{
	(void)state;
	if (!t_monitor_available())
		t_skip("the kernel monitor is unavailable here");
	check_subrange(0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hugetlb_manual),
		cmocka_unit_test(test_hugetlb_monitor),
	};
	const char *why;
	int r;

	page = t_page_size();
	if (page != 4096)
		t_skip_program("written for 4 KiB base pages");
	why = reserve();
	if (why)
		t_skip_program("%s", why);
	r = t_run(tests, NULL, NULL);
	restore_nr();
	return r;
}

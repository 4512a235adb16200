/* SPDX-License-Identifier: MIT */
/*
 * test_dev_va.c - the address-space bound of device keys. The implicit key
 * covers [0, 2^47 - page) on every machine: all of the user address space
 * with four-level paging. With five-level paging (LA57, a 2^56 user
 * space) the kernel maps memory above 2^47 only where the application
 * asks for it with an mmap() hint above 2^47; such memory is outside the
 * implicit key (-ERANGE, documented in uodp_dev.h) and reachable through
 * an explicit key (the engine accepts addresses up to 2^56).
 *
 * Whether the kernel runs with LA57 is found at run time, by asking mmap()
 * for a page above 2^47: the test that needs such a page skips, with a
 * message, where there is none.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "helpers.h" /* t_skip, t_run */
#include "uodp_dev.h"

#define TOP ((uint64_t)1 << 47) /* the implicit key's documented end + page */

static size_t PS;

static struct uodp_dev *open_manual(void)
{
	struct uodp_dev_attr a = { .flags = UODP_DEV_MANUAL };
	struct uodp_dev *dev = NULL;

	assert_int_equal(uodp_dev_open(&a, &dev), 0);
	return dev;
}

/* The implicit key ends at 2^47 - page, exactly: the last bytes before it
 * are inside (whatever the access then finds: the stack's top page may be
 * mapped there, with address randomisation off), the first after it are
 * not, nor is anything above 2^47. */
static void test_implicit_top(void **state)
{
	struct uodp_dev *dev = open_manual();
	uint64_t end = TOP - PS, b = 0;
	uint32_t key;
	int r;

	(void)state;
	assert_int_equal(
		uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_READ, &key), 0);
	r = uodp_dev_read(dev, key, end - 8, &b, 8);
	assert_true(r == 0 || r == -EFAULT);
	assert_int_equal(uodp_dev_read(dev, key, end - 4, &b, 8), -ERANGE);
	assert_int_equal(uodp_dev_read(dev, key, end, &b, 8), -ERANGE);
	assert_int_equal(uodp_dev_read(dev, key, TOP, &b, 8), -ERANGE);
	assert_int_equal(uodp_dev_read(dev, key, (uint64_t)1 << 52, &b, 8),
			 -ERANGE);
	assert_int_equal(uodp_dev_read(dev, key, ((uint64_t)1 << 56) - PS, &b,
				       8),
			 -ERANGE);
	assert_int_equal(uodp_dev_prefetch(dev, key, TOP, PS, 0), -ERANGE);
	/* Nothing was created for them. */
	assert_true(uodp_dev_mr_children(dev, key) <= 1);
	assert_int_equal(uodp_dev_dereg_mr(dev, key), 0);
	assert_int_equal(uodp_dev_close(dev), 0);
}

/* With LA57: a page mapped above 2^47 is -ERANGE through the implicit
 * key and readable through an explicit one. */
static void test_high_mapping(void **state)
{
	struct uodp_dev *dev;
	uint64_t want = 0x5a5a5a5a12345678ull, got = 0;
	uint32_t ikey, key;
	char *p;

	(void)state;
	p = mmap((void *)((uintptr_t)1 << 52), PS, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		t_skip("mmap() with a hint above 2^47 failed");
	if ((uintptr_t)p < TOP) {
		munmap(p, PS);
		t_skip("no five-level paging (LA57) here: the kernel maps "
		       "nothing above 2^47");
	}
	memcpy(p, &want, sizeof(want));
	dev = open_manual();
	assert_int_equal(
		uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_READ, &ikey), 0);
	assert_int_equal(uodp_dev_read(dev, ikey, (uintptr_t)p, &got, 8),
			 -ERANGE);
	assert_int_equal(uodp_dev_reg_mr(dev, (uintptr_t)p, PS,
					 UODP_DEV_ACCESS_READ, &key),
			 0);
	assert_int_equal(uodp_dev_read(dev, key, (uintptr_t)p, &got, 8), 0);
	assert_true(got == want);
	assert_int_equal(uodp_dev_close(dev), 0);
	munmap(p, PS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_implicit_top),
		cmocka_unit_test(test_high_mapping),
	};

	PS = t_page_size();
	return t_run(tests, NULL, NULL);
}

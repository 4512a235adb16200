/* SPDX-License-Identifier: MIT */
/*
 * test_ofi_guard - remote write after unmap, libfabric tcp;ofi_rxm on
 * 127.0.0.1 (one process, a target and an initiator endpoint).
 *
 * The target registers a buffer for remote writes; the initiator writes
 * it once (it lands). Then the target unmaps the buffer and maps new
 * memory at the same address, and the initiator writes again with the
 * same key:
 *   unguarded  plain fi_mr_reg: printed whether the write lands in the
 *              new memory (it does: that is the bug the guard prevents);
 *   guarded    uodp_ofi_guard: once the revocation ran, the write must
 *              not land;
 *   strict     UODP_OFI_GUARD_STRICT: the write is posted right after
 *              mmap() returns, without waiting for anything: it must not
 *              land either (the target's progress is fenced until the MR
 *              is closed).
 * Usage: test_ofi_guard [unguarded|guarded|strict|all]
 * Exit 77 when tcp;ofi_rxm is absent or uodp's kernel monitor is
 * unavailable (the unguarded run needs no monitor).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include "../../tests/adp_test.h"
#include "uodp.h"
#include "uodp_ofi_guard.h"

#define PROV "tcp;ofi_rxm"
#define BUFLEN (64 * 1024)
#define KEY 0xC0FFEEull

struct side {
	struct fid_ep *ep;
	struct fid_cq *cq;
	struct fid_av *av;
};

static struct fi_info *info;
static struct fid_fabric *fabric;
static struct fid_domain *domain;
static struct side tgt, ini;
static struct uodp_ofi_guard *guard;
static atomic_bool stop_progress;
/* Held across each progress call: the provider writes the target buffer
 * there, and the test reads the buffer under it (no data race). */
static pthread_mutex_t prog_mx = PTHREAD_MUTEX_INITIALIZER;

static int get_info(void)
{
	struct fi_info *hints = fi_allocinfo();
	int r;

	hints->ep_attr->type = FI_EP_RDM;
	hints->caps = FI_MSG | FI_RMA | FI_WRITE | FI_REMOTE_WRITE;
	hints->domain_attr->threading = FI_THREAD_SAFE;
	hints->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_ALLOCATED |
				      FI_MR_PROV_KEY | FI_MR_LOCAL;
	hints->addr_format = FI_SOCKADDR_IN;
	hints->fabric_attr->prov_name = strdup(PROV);
	r = fi_getinfo(FI_VERSION(1, 13), "127.0.0.1", NULL, FI_SOURCE, hints,
		       &info);
	fi_freeinfo(hints);
	return r;
}

static void open_side(struct side *s)
{
	struct fi_cq_attr cqa = { .format = FI_CQ_FORMAT_CONTEXT };
	struct fi_av_attr ava = { .type = FI_AV_TABLE };

	CHECK(fi_endpoint(domain, info, &s->ep, NULL) == 0);
	CHECK(fi_cq_open(domain, &cqa, &s->cq, NULL) == 0);
	CHECK(fi_av_open(domain, &ava, &s->av, NULL) == 0);
	CHECK(fi_ep_bind(s->ep, &s->av->fid, 0) == 0);
	CHECK(fi_ep_bind(s->ep, &s->cq->fid, FI_TRANSMIT | FI_RECV) == 0);
	CHECK(fi_enable(s->ep) == 0);
}

static void close_side(struct side *s)
{
	fi_close(&s->ep->fid);
	fi_close(&s->av->fid);
	fi_close(&s->cq->fid);
}

/* The target's progress: software RMA lands when the target polls. */
static void *target_progress(void *arg)
{
	struct fi_cq_entry e;

	(void)arg;
	while (!atomic_load(&stop_progress)) {
		pthread_mutex_lock(&prog_mx);
		uodp_ofi_guard_progress_begin(guard);
		fi_cq_read(tgt.cq, &e, 1);
		uodp_ofi_guard_progress_end(guard);
		pthread_mutex_unlock(&prog_mx);
	}
	return NULL;
}

/* Post a write and wait for its completion: 1 done, -err failed, 0 no
 * completion within 3 s. */
static int write_and_wait(fi_addr_t dest, void *src, void *desc, uint64_t raddr,
			  uint64_t key)
{
	struct fi_cq_err_entry err;
	struct fi_cq_entry e;
	uint64_t dl = adp_now_ns() + 3000000000ull;
	ssize_t n;

	do {
		n = fi_write(ini.ep, src, BUFLEN, desc, dest, raddr, key, NULL);
		if (n == -FI_EAGAIN)
			fi_cq_read(ini.cq, &e, 1);
	} while (n == -FI_EAGAIN && adp_now_ns() < dl);
	if (n)
		return (int)n;
	while (adp_now_ns() < dl) {
		n = fi_cq_read(ini.cq, &e, 1);
		if (n == 1)
			return 1;
		if (n == -FI_EAVAIL) {
			memset(&err, 0, sizeof(err));
			fi_cq_readerr(ini.cq, &err, 0);
			return -(int)err.err;
		}
	}
	return 0;
}

static size_t count_byte(const unsigned char *p, unsigned char b)
{
	size_t i, n = 0;

	pthread_mutex_lock(&prog_mx);
	for (i = 0; i < BUFLEN; i++)
		n += p[i] == b;
	pthread_mutex_unlock(&prog_mx);
	return n;
}

#define SKIPPED ((size_t)-1) /* the round could not run */
enum mode {
	UNGUARDED,
	GUARDED,
	STRICT
};
static const char *mode_name[] = { "unguarded", "guarded", "strict" };

/* Returns the bytes of the late write that landed in the new memory. */
static size_t scenario(enum mode m)
{
	struct uodp_ofi_guard_mr *gm = NULL;
	struct fid_mr *mr = NULL, *lmr = NULL;
	unsigned char *a, *src;
	void *desc = NULL;
	char name[64];
	size_t nlen = sizeof(name), landed;
	fi_addr_t dest;
	uint64_t raddr, key;
	pthread_t t;
	int r;

	CHECK(fi_fabric(info->fabric_attr, &fabric, NULL) == 0);
	CHECK(fi_domain(fabric, info, &domain, NULL) == 0);
	if (m != UNGUARDED) {
		r = uodp_ofi_guard_open(m == STRICT ? UODP_OFI_GUARD_STRICT : 0,
					NULL, NULL, &guard);
		CHECK_EQ(r, 0);
	}
	open_side(&tgt);
	open_side(&ini);
	CHECK(fi_getname(&tgt.ep->fid, name, &nlen) == 0);
	CHECK(fi_av_insert(ini.av, name, 1, &dest, 0, NULL) == 1);

	a = adp_map_low(BUFLEN);
	memset(a, 0xaa, BUFLEN);
	src = malloc(BUFLEN);
	CHECK(src);
	if (m == UNGUARDED) {
		CHECK(fi_mr_reg(domain, a, BUFLEN, FI_REMOTE_WRITE, 0, KEY, 0,
				&mr, NULL) == 0);
		key = fi_mr_key(mr);
	} else {
		r = uodp_ofi_guard_mr_reg(guard, domain, NULL, a, BUFLEN,
					  FI_REMOTE_WRITE, KEY, &gm);
		adp_skip_if_no_monitor(r, "uodp_ofi_guard_mr_reg");
		CHECK_EQ(r, 0);
		key = uodp_ofi_guard_mr_key(gm);
	}
	if (info->domain_attr->mr_mode & FI_MR_LOCAL) {
		CHECK(fi_mr_reg(domain, src, BUFLEN, FI_WRITE, 0, KEY + 1, 0,
				&lmr, NULL) == 0);
		desc = fi_mr_desc(lmr);
	}
	raddr = (info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) ?
			(uint64_t)(uintptr_t)a :
			0;
	atomic_store(&stop_progress, false);
	CHECK(pthread_create(&t, NULL, target_progress, NULL) == 0);

	/* 1. a write to the live buffer lands */
	memset(src, 0x11, BUFLEN);
	r = write_and_wait(dest, src, desc, raddr, key);
	CHECK_EQ(r, 1);
	CHECK(WAIT_FOR(count_byte(a, 0x11) == BUFLEN, 3000));

	/* 2. the target unmaps the buffer and maps new memory there */
	CHECK(munmap(a, BUFLEN) == 0);
	if (!adp_remap_at(a, BUFLEN)) {
		printf("%-9s: address reused by another thread before the new "
		       "mapping; round repeated\n",
		       mode_name[m]);
		a = NULL;
		landed = SKIPPED;
		goto out;
	}
	if (m == GUARDED)
		CHECK(WAIT_FOR(uodp_ofi_guard_mr_revoked(gm), 5000));

	/* 3. the late write */
	memset(src, 0x22, BUFLEN);
	r = write_and_wait(dest, src, desc, raddr, key);
	usleep(200 * 1000); /* let anything in the pipe land */
	landed = count_byte(a, 0x22);
	printf("%-9s: late write %s; %zu of %d bytes landed in the new "
	       "memory%s\n",
	       mode_name[m],
	       r == 1 ? "completed" :
	       r == 0 ? "got no completion in 3 s" :
			"failed at the initiator",
	       landed, BUFLEN,
	       m == UNGUARDED && landed ? " (the corruption the guard "
					  "prevents)" :
					  "");
	if (r < 0)
		printf("           initiator error: %s\n", fi_strerror(-r));
	if (gm)
		printf("           MR revoked: %s\n",
		       uodp_ofi_guard_mr_revoked(gm) ? "yes" : "no");

out:
	atomic_store(&stop_progress, true);
	pthread_join(t, NULL);
	if (gm)
		CHECK_EQ(uodp_ofi_guard_mr_close(gm), 0);
	if (mr)
		fi_close(&mr->fid);
	if (lmr)
		fi_close(&lmr->fid);
	close_side(&ini);
	close_side(&tgt);
	fi_close(&domain->fid);
	fi_close(&fabric->fid);
	if (guard) {
		CHECK_EQ(uodp_ofi_guard_close(guard), 0);
		guard = NULL;
	}
	if (a)
		munmap(a, BUFLEN);
	free(src);
	return landed;
}

/* A round whose address was taken is repeated (up to 10 times). */
static size_t run(enum mode m)
{
	size_t landed = SKIPPED;
	int i;

	for (i = 0; i < 10 && landed == SKIPPED; i++)
		landed = scenario(m);
	CHECK(landed != SKIPPED);
	return landed;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "all";
	int r;

	setvbuf(stdout, NULL, _IONBF, 0);
	r = get_info();
	if (r) {
		printf("SKIP: no %s provider on 127.0.0.1 in this libfabric "
		       "(%s)\n",
		       PROV, fi_strerror(-r));
		return ADP_SKIP;
	}
	printf("%s, mr_mode 0x%x, threading %d\n", info->fabric_attr->prov_name,
	       (unsigned)info->domain_attr->mr_mode,
	       (int)info->domain_attr->threading);
	if (!strcmp(what, "unguarded") || !strcmp(what, "all"))
		run(UNGUARDED); /* shown, not asserted */
	if (!strcmp(what, "guarded") || !strcmp(what, "all"))
		CHECK_EQ(run(GUARDED), 0);
	/* Why 5 rounds: the strict run has no wait in it, so each round is
	 * a fresh race between the write and the revocation. */
	if (!strcmp(what, "strict") || !strcmp(what, "all"))
		for (r = 0; r < 5; r++)
			CHECK_EQ(run(STRICT), 0);
	fi_freeinfo(info);
	return 0;
}

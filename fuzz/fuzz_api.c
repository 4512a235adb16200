/* SPDX-License-Identifier: MIT */
/*
 * fuzz_api.c - an interpreter that turns bytes into a sequence of
 * operations over include/uodp.h and include/uodp_dev.h, and a model
 * oracle that checks every result.
 *
 * THE POOL. POOL_PAGES pages reserved once per process with
 * mmap(PROT_NONE); every mapping operation is confined to it with
 * MAP_FIXED, so the fuzzer never touches memory outside. A munmap makes a
 * real hole; before a hole is mapped again it is re-reserved with
 * MAP_FIXED_NOREPLACE, so a mapping someone else (the allocator, a worker
 * thread) placed there meanwhile is never clobbered: that page becomes
 * "foreign" and is left alone for the rest of the process.
 *
 * THE MODEL. For each pool page: hole or mapped, its protection, the
 * mapping object ("obj", one per mmap call; mremap moves it) and the
 * object's page index, and a shadow of its bytes. Every byte the fuzzer
 * writes (by CPU or device) belongs to a tagged 8-byte word:
 *   bits 40-63 obj, 28-39 object page, 16-27 word index, 0-15 version,
 * so a word anywhere in memory says which mapping and place it belongs to
 * (zero: a fresh page). Atomics change words arithmetically; such words
 * are marked untagged.
 * File pages (file_pages): shared mappings of the input's memfd, pool
 * page p on file page p, tagged with the file's object, so the bytes
 * survive an unmap and come back (from pread) with the next mapping; a
 * truncation (op_file_size) zeroes what it cuts off and makes those pages
 * fail -EFAULT until the file grows back, with no invalidation.
 *
 * THE ORACLE.
 *  - A synchronous device read of pages the model knows exactly returns
 *    exactly the shadow; of pages with an async write in flight (or a
 *    partial failed write), only plausible words: zero, or tagged with
 *    the page's current mapping or one that held the page since the last
 *    check, at the right object page and word.
 *  - An async read returns the shadow when nothing changed the pages
 *    between post and completion, else plausible words.
 *  - Results: success exactly when the model says every page is
 *    accessible that way; otherwise the errno of the first page that is
 *    not (-EFAULT for a hole, -EACCES for a protection), or another errno
 *    the header documents for the call (-ENOMEM only while allocation
 *    failures are injected).
 *  - Translations: at every check point (after every change of the
 *    address space and its invalidation), no device page-table entry
 *    (uodp_dev_snapshot) and no engine entry (uodp_umem_entries_locked)
 *    covers a page that is a hole, or is writable where the page is
 *    read-only, or readable where it is PROT_NONE. The device moves bytes
 *    by virtual address, so a stale translation cannot return a gone
 *    mapping's bytes: the translation is what a DMA device would read
 *    through, and this check is the "never bytes of a mapping already
 *    gone" oracle. On a manual context it holds right after
 *    uodp_invalidate_range(); with the kernel monitor once
 *    uodp_ctx_sync() is true.
 *  - No wedge: map_and_lock with a timeout never returns -EBUSY while no
 *    invalidation is open (the interpreter is the only invalidator).
 *
 * Kernel-monitor contexts are chosen by the first input byte; while the
 * notifier is not merged, uodp_umem_get() fails -ENOSYS and the fuzzer
 * treats that as "monitor unavailable" (no regions on that context).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_api.h"
#include "uodp.h"
#include "uodp_dev.h"

#ifdef UODP_FAULT_INJECT
#include "lib/finject.h"
#endif

/* Why 32 pages: enough for several regions, keys and mappings to overlap
 * in every way, small enough that the libFuzzer corpus explores the
 * combinations instead of distances. */
#define POOL_PAGES 32
#define MAX_RUN 4  /* pages per mapping operation */
#define MAX_XFER 3 /* pages per device transfer */
#define MAX_UMEMS 4
#define MAX_KEYS 4
#define MAX_ASYNC 8
#define MAX_TOKENS 2
/* Mappings remembered per page between two exact points (a resync with
 * nothing in flight); past that, plausibility checks of the page are
 * skipped until the next resync (counted as words_unchecked). */
#define HIST 32
#define WORDS_MAX 1024 /* words per page, 8 KiB pages at most */
/* Why 200 ms: a fault in this single-threaded interpreter waits only for
 * the async workers' invalidations, which take microseconds; 200 ms of
 * -EBUSY means an invalidation that never ended. */
#define MAP_TIMEOUT_MS 200

enum pstate {
	P_HOLE = 0,
	P_MAPPED,
	P_FOREIGN
};

struct mpage {
	uint8_t st;
	int prot; /* PROT_NONE, PROT_READ, PROT_READ|PROT_WRITE */
	bool shared;
	bool uncertain; /* shadow not exact (async write, failed write) */
	/* SysV shared memory (cfg2 bit 4): the kernel monitor refuses it
	 * (-EOPNOTSUPP); manual contexts do not care. */
	bool sysv;
	/* A MAP_SHARED mapping of the input's file (byte 2 bits 6-7 = 10):
	 * pool page p maps file page p, always (op_mremap leaves file pages
	 * alone), so no file page is mapped twice; past the file's end
	 * (file_pages_now) every access fails -EFAULT (uodp_dev.h). */
	bool file;
	uint32_t obj, objpage;
	uint64_t mods; /* bumped by every change of content or mapping */
	uint32_t hist_obj[HIST], hist_pg[HIST];
	unsigned nhist;
	uint64_t untagged[WORDS_MAX / 64];
};

struct fumem {
	struct uodp_umem *umem;
	int first, n; /* pool pages */
	unsigned access;
	bool on_monitor;
};

struct fkey {
	uint32_t key;
	bool live, implicit;
	uint64_t start, end; /* exact bytes */
	unsigned access;
};

struct fasync {
	bool busy;
	struct uodp_dev_wr wr;
	uint64_t mods[MAX_XFER + 2];
	bool certain[MAX_XFER + 2];
	int first, n;
	bool injected;
	char *buf;
};

/* ---- process-wide state ---- */
static char *pool;
static size_t ps;
static unsigned words_per_page;
static uint8_t *shadow;
static struct mpage pages[POOL_PAGES];
static uint32_t next_obj = 1;
/* Where each recent mapping object was born (for reports). */
#define BIRTHS 4096
static struct {
	uint32_t obj;
	unsigned input, step;
	int first;
} births[BIRTHS];
static uint16_t next_ver = 1;
static enum fuzz_mutation mutation;
static int abort_on_finding = 1;
static int verbose;
static struct fuzz_stats stats;

/* ---- per-input state ---- */
static const uint8_t *in;
static size_t in_len, in_pos;
static bool stop;
static struct uodp_ctx *ectx; /* the fuzzer's own engine context */
static unsigned ectx_flags;   /* its flags, for the thread ops' contexts */
static struct uodp_ctx_ops fz_ops;
static bool ectx_manual, ectx_pin, ectx_monitor_ok;
static struct uodp_dev *dev;
static bool dev_manual;
static unsigned dev_flags;
static struct uodp_dev_queue *queue;
static struct fumem umems[MAX_UMEMS];
static struct fkey keys[MAX_KEYS];
/* Keys deregistered in this input: a dead key stays dead (issue 12,
 * finding 3), so none may be issued again by the same device. */
#define MAX_DEAD 1024
static uint32_t dead_keys[MAX_DEAD];
static unsigned ndead;
static bool churned; /* the key churn ran in this input (op_dereg) */
static bool key_dead(uint32_t key);
static struct fasync async[MAX_ASYNC];
static int nasync;
static struct uodp_range tokens[MAX_TOKENS];
static bool token_open[MAX_TOKENS];
static bool inject_ok; /* allocation failures injected in this input */
static bool injecting; /* ... in the current (or last) call */
static unsigned long inject_seed;
static unsigned step;
static bool bad_buffers; /* cfg2 bit 2: some caller buffers are bad */
/* cfg2 bit 3: snapshot op bytes >= 128 start application threads instead
 * (op_thread(): get racing destroy, cancellation; issue 12, findings 6
 * and 12). */
static bool thread_ops;
/* cfg2 bit 7: the input runs in a forked child under a seccomp filter
 * (install_sandbox()) that denies these: */
#define SB_PVM 1u	 /* process_vm_readv/writev */
#define SB_REGISTER 2u	 /* ioctl(UFFDIO_REGISTER) */
static unsigned sandbox; /* in the child: what the filter denies */
static uint64_t sandbox_before, sandbox_other; /* findings before it */
/* The child's exit: findings, all stale / some other (a sanitizer's
 * error exits 1). */
#define SANDBOX_STALE 10
#define SANDBOX_OTHER 11
static bool sysv_shared; /* cfg2 bit 4: shared mappings are SysV memory */
/* Byte 2 bits 6-7 = 10 (cfg2 bit 7 set): shared mappings map the input's
 * file (a memfd of POOL_PAGES pages), which op_file_size() truncates and
 * grows (issue 12, finding 18). No corpus input of before had that
 * pattern, so they keep their meaning. */
static bool file_pages;
static int file_fd = -1;
static int file_pages_now; /* the file's size in pages */
static uint32_t file_obj;  /* the tag object of every file page */
static sigset_t saved_mask;
static bool mask_blocked;
/* cfg2 bit 5: SIGSEGV and SIGBUS ignored (SIG_IGN) for the input (issue
 * 12, finding 14). orig_sa: the dispositions before any device was opened
 * in this process, put back after the input (see fuzz_one()). */
static bool sig_ignored;
static struct sigaction orig_sa[2];
/* mlock() really locks (the sanitizers' runtimes make it a no-op that
 * returns 0): only then must a pinned page refuse MADV_DONTNEED. */
static bool mlock_real;
/* cfg2 bit 6: at the first snapshot op, the kernel monitor's userfaultfd
 * is replaced by a sentinel file (dup2), as a daemon that closes every
 * descriptor it does not know and opens its own would (finding 13).
 * Monitored calls may then fail -EBADF and promise no translations; the
 * descriptor number, now the sentinel's, must never be written or closed
 * by the library. */
static bool fd_sabotage, sabotaged;
static int sentinel_fd = -1, sabotaged_fd = -1;
static const char sentinel_bytes[16] = "uodp-fuzz-sntnl";

void fuzz_set_mutation(enum fuzz_mutation m)
{
	mutation = m;
}

enum fuzz_mutation fuzz_mutation_by_name(const char *name)
{
	if (!name || !*name || !strcmp(name, "none"))
		return MUT_NONE;
	if (!strcmp(name, "skip-inval"))
		return MUT_SKIP_INVAL;
	if (!strcmp(name, "double-end"))
		return MUT_DOUBLE_END;
	return (enum fuzz_mutation) - 1;
}

void fuzz_set_abort(int on)
{
	abort_on_finding = on;
}

void fuzz_set_verbose(int on)
{
	verbose = on;
}

const struct fuzz_stats *fuzz_get_stats(void)
{
	return &stats;
}

int fuzz_finding_kind_by_name(const char *name)
{
	if (!strcmp(name, "stale"))
		return FIND_STALE;
	if (!strcmp(name, "other"))
		return FIND_OTHER;
	return -1;
}

static void vfinding(enum fuzz_finding_kind kind, const char *fmt, va_list ap)
{
	fprintf(stderr, "FUZZ FINDING (step %u, %s): ", step,
		kind == FIND_STALE ? "stale" : "other");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	stats.findings++;
	stats.findings_of[kind]++;
	if (abort_on_finding)
		abort();
	stop = true;
}

static void finding(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfinding(FIND_OTHER, fmt, ap);
	va_end(ap);
}

static void trace(const char *fmt, ...)
{
	va_list ap;

	if (!verbose)
		return;
	va_start(ap, fmt);
	fprintf(stderr, "  %4u ", step);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- input ---- */
static unsigned byte(void)
{
	if (in_pos >= in_len) {
		stop = true;
		return 0;
	}
	return in[in_pos++];
}

static unsigned upto(unsigned n) /* 0 .. n-1 */
{
	return n ? byte() % n : 0;
}

/* ---- allocation-failure injection around one call ---- */
static void inject_begin(void)
{
	injecting = false;
#ifdef UODP_FAULT_INJECT
	if (inject_ok && upto(4) == 0) {
		finject_arm_random(FI_ALLOC, 3 + upto(8), 0,
				   inject_seed + step);
		injecting = true;
	}
#endif
}

static void inject_end(void)
{
#ifdef UODP_FAULT_INJECT
	if (injecting) {
		stats.injected += finject_failures(FI_ALLOC);
		finject_disarm_all();
	}
#endif
}

/* ---- words ---- */
static uint64_t tag_of(uint32_t obj, uint32_t objpage, unsigned w)
{
	return ((uint64_t)(obj & 0xffffff) << 24) |
	       ((uint64_t)(objpage & 0xfff) << 12) | (w & 0xfff);
}

static uint64_t word_for(int p, unsigned w, uint16_t ver)
{
	return tag_of(pages[p].obj, pages[p].objpage, w) << 16 | ver;
}

static uint64_t pool_va(int p)
{
	return (uint64_t)(uintptr_t)(pool + (size_t)p * ps);
}

static int page_of(uint64_t va)
{
	if (va < pool_va(0) || va >= pool_va(POOL_PAGES))
		return -1;
	return (int)((va - pool_va(0)) / ps);
}

/* Is pool page @p a file page past the end of its file (any access
 * raises SIGBUS)? */
static bool past_eof(int p)
{
	return pages[p].st == P_MAPPED && pages[p].file && p >= file_pages_now;
}

static void hist_push(int p)
{
	struct mpage *m = &pages[p];

	m->hist_obj[m->nhist % HIST] = m->obj;
	m->hist_pg[m->nhist % HIST] = m->objpage;
	m->nhist++;
}

/* Is @v a word that may be at word @w of page @p (current mapping or one
 * in its history)? Byte by byte: a transfer that starts or ends inside a
 * word leaves it half old, half new, so each tag byte must be zero or the
 * byte of a tag that belongs there (the version bytes may be anything). */
static bool plausible(int p, unsigned w, uint64_t v)
{
	const struct mpage *m = &pages[p];
	uint64_t tags[HIST + 1];
	unsigned i, j, n;

	if (v == 0 || (m->untagged[w / 64] >> (w % 64) & 1))
		return true;
	tags[0] = tag_of(m->obj, m->objpage, w);
	if (v >> 16 == tags[0])
		return true;
	if (m->nhist > HIST) {
		stats.words_unchecked++;
		return true;
	}
	n = m->nhist;
	for (i = 0; i < n; i++)
		tags[i + 1] = tag_of(m->hist_obj[i], m->hist_pg[i], w);
	for (j = 0; j < 6; j++) {
		unsigned b = (unsigned)(v >> (16 + 8 * j)) & 0xff;
		bool ok = b == 0;

		for (i = 0; i <= n && !ok; i++)
			ok = b == ((tags[i] >> (8 * j)) & 0xff);
		if (!ok)
			return false;
	}
	return true;
}

/* Words are tagged again once rewritten - but an async atomic in flight
 * may still land on any word it was posted for: keep the marks then. */
static void clear_tags(int p)
{
	if (!nasync)
		memset(pages[p].untagged, 0, sizeof(pages[p].untagged));
}

static void explain_word(int p, uint64_t v);

static void set_untagged(int p, unsigned w)
{
	pages[p].untagged[w / 64] |= (uint64_t)1 << (w % 64);
}

/*
 * Check @len bytes @got that the device returned for [va, va + len):
 * exact against the shadow where the page is certain and @exact allows,
 * plausible otherwise.
 */
static void check_bytes(uint64_t va, const uint8_t *got, size_t len,
			bool exact_ok, const char *what)
{
	size_t off = 0;

	while (off < len) {
		uint64_t a = va + off;
		int p = page_of(a);
		size_t in_pg = ps - (a - pool_va(p)), n;
		const uint8_t *sh = shadow + (a - pool_va(0));

		n = len - off < in_pg ? len - off : in_pg;
		stats.bytes_checked += n;
		if (exact_ok && !pages[p].uncertain) {
			if (memcmp(got + off, sh, n)) {
				size_t i;

				for (i = 0; got[off + i] == sh[i]; i++)
					;
				finding("%s: byte at pool page %d +%zu is "
					"%#x, the mapping holds %#x",
					what, p, (size_t)(a + i - pool_va(p)),
					got[off + i], sh[i]);
				return;
			}
		} else {
			/* Whole words inside the range. */
			uint64_t w0 = (a + 7) & ~(uint64_t)7;

			for (; w0 + 8 <= a + n; w0 += 8) {
				uint64_t v;
				unsigned w = (unsigned)((w0 - pool_va(p)) / 8);

				memcpy(&v, got + off + (w0 - a), 8);
				stats.words_checked++;
				if (!plausible(p, w, v)) {
					explain_word(p, v);
					finding("%s: word %#" PRIx64
						" at pool page %d word %u "
						"belongs to no mapping that "
						"held the page",
						what, v, p, w);
					return;
				}
			}
		}
		off += n;
	}
}

/* Say where the mapping a word's tag names was born (reports). */
static void explain_word(int p, uint64_t v)
{
	uint32_t obj = (uint32_t)(v >> 40) & 0xffffff;
	unsigned i;

	fprintf(stderr,
		"  word tag: mapping %u page %u word %u version %u; pool page "
		"%d now holds mapping %u page %u\n",
		obj, (unsigned)(v >> 28) & 0xfff, (unsigned)(v >> 16) & 0xfff,
		(unsigned)v & 0xffff, p, pages[p].obj, pages[p].objpage);
	if (births[obj % BIRTHS].obj == obj)
		fprintf(stderr,
			"  mapping %u: born in input %u step %u at pool page "
			"%d\n",
			obj, births[obj % BIRTHS].input,
			births[obj % BIRTHS].step, births[obj % BIRTHS].first);
	fprintf(stderr, "  history of pool page %d:", p);
	for (i = 0; i < pages[p].nhist && i < HIST; i++)
		fprintf(stderr, " %u/%u", pages[p].hist_obj[i],
			pages[p].hist_pg[i]);
	fprintf(stderr, "\n");
}

/* Copy the page's real bytes into the shadow after checking they are
 * plausible; the page is exact again. Only for readable pages with no
 * async write in flight. */
static void resync_page(int p)
{
	struct mpage *m = &pages[p];
	uint8_t *sh = shadow + (size_t)p * ps;
	const uint8_t *real = (const uint8_t *)pool + (size_t)p * ps;
	unsigned w;

	if (m->st != P_MAPPED || !(m->prot & PROT_READ) || past_eof(p))
		return;
	for (w = 0; w < words_per_page; w++) {
		uint64_t v;

		memcpy(&v, real + w * 8, 8);
		if (v != 0 && v >> 16 != tag_of(m->obj, m->objpage, w) &&
		    !(m->untagged[w / 64] >> (w % 64) & 1)) {
			if (!plausible(p, w, v)) {
				explain_word(p, v);
				finding("memory word %#" PRIx64
					" at pool page %d word %u belongs to "
					"no mapping that held the page",
					v, p, w);
				return;
			}
			set_untagged(p, w); /* a racing write's old tag */
		}
	}
	memcpy(sh, real, ps);
	m->uncertain = false;
	m->nhist = 0;
}

static void resync_all(void)
{
	int p;

	if (nasync)
		return;
	for (p = 0; p < POOL_PAGES; p++)
		if (pages[p].uncertain)
			resync_page(p);
}

/* ---- the model's prediction for an access ---- */

/* Is the hole at page @p still a hole? (Someone else may have mapped
 * there: the page is then foreign.) */
static bool hole_real(int p)
{
	unsigned char v;

	if (mincore(pool + (size_t)p * ps, ps, &v) == 0 || errno != ENOMEM) {
		pages[p].st = P_FOREIGN;
		return false;
	}
	return true;
}

/* 0 when every page of [va, va + len) is accessible with @prot_need in
 * the model, else the errno of the first one that is not (1 when a page
 * is foreign: no prediction). */
static int predict_on(uint64_t va, uint64_t len, int prot_need, bool manual)
{
	uint64_t a;

	if (!len)
		return 0;
	for (a = va & ~(uint64_t)(ps - 1); a < va + len; a += ps) {
		int p = page_of(a);

		if (p < 0 || pages[p].st == P_FOREIGN)
			return 1;
		if (pages[p].st == P_HOLE && !hole_real(p))
			return 1;
		if (pages[p].st == P_HOLE)
			return -EFAULT;
		/* Memory the monitor refuses: -EOPNOTSUPP, or whatever the
		 * library documents. Only the pages the access touches
		 * decide: a refused page in the fault-around window of a
		 * good one is no excuse (finding 17). */
		if (pages[p].sysv && !manual)
			return 1;
		if ((pages[p].prot & prot_need) != prot_need)
			return -EACCES;
		/* uodp_dev.h: "-EFAULT ... a file page past the end of its
		 * file" (what a fresh fault gives: SIGBUS). */
		if (past_eof(p))
			return -EFAULT;
	}
	return 0;
}

/* For the device (the engine: predict_on(..., ectx_manual)). */
static int predict(uint64_t va, uint64_t len, int prot_need)
{
	return predict_on(va, len, prot_need, dev_manual);
}

static bool any_foreign(int first, int n)
{
	int p;

	for (p = first; p < first + n; p++)
		if (pages[p].st == P_FOREIGN)
			return true;
	return false;
}

/* Errors the device conventions document for an operation on a key. */
static bool dev_documented(int r)
{
	switch (-r) {
	case EINVAL:
	case ENOENT:
	case ERANGE:
	case EPERM:
	case EFAULT:
	case EACCES:
	case ENOMEM:
	case ENODEV:
		return true;
	case EBUSY:
	case EOPNOTSUPP:
		return !dev_manual;
	case EBADF:
		return !dev_manual && sabotaged;
	case ENOSYS:
		/* "a forbidden userfaultfd is -ENOSYS here" */
		return !dev_manual && (sandbox & SB_REGISTER);
	}
	return false;
}

/* Compare a result with the prediction: @pred 0 (must succeed), an errno
 * (must fail so), 1 (no prediction: any documented result). */
static void judge(const char *what, int r, int pred, bool injected)
{
	if (r < 0)
		stats.errors_seen++;
	if (r < 0 && !dev_documented(r)) {
		finding("%s: undocumented error %d (%s)", what, r,
			strerror(-r));
		return;
	}
	if (pred == 1 || r == pred)
		return;
	/* Registration forbidden by the sandbox: a monitored device can
	 * fault nothing, whatever the pages (uodp_dev.h: "a forbidden
	 * userfaultfd is -ENOSYS here"); the checks that do not depend on
	 * the pages (range, rights, key) still come first. */
	if (r == -ENOSYS && !dev_manual && (sandbox & SB_REGISTER) &&
	    (pred == 0 || pred == -EFAULT || pred == -EACCES))
		return;
	/* Which argument check comes first is the library's choice. */
	if ((pred == -ERANGE || pred == -EPERM || pred == -EINVAL) &&
	    (r == -ERANGE || r == -EPERM || r == -EINVAL))
		return;
	if (r == -ENOMEM && injected)
		return;
	if (r == -EBADF && sabotaged && !dev_manual)
		return;
	/* -EBUSY / -EOPNOTSUPP (monitor): memory another userfaultfd
	 * watches or of a kind the monitor refuses. The pool holds only the
	 * fuzzer's own anonymous mappings, so they are never right for a
	 * page the model knows (findings 7 and 17: a race or a neighbour in
	 * the fault-around window failed a good access so). */
	if (pred == 0)
		finding("%s: %d (%s) where every page is accessible", what, r,
			strerror(-r));
	else if (r == 0)
		finding("%s: succeeded where the model says %d (%s)", what,
			pred, strerror(-pred));
	else
		finding("%s: %d (%s) where the first bad page says %d (%s)",
			what, r, strerror(-r), pred, strerror(-pred));
}

/* ---- waiting for the kernel monitor ---- */
static void settle(struct uodp_ctx *ctx)
{
	int i;

	/* Why 2 s: the monitor thread delivers an event in microseconds;
	 * seconds mean it is stuck, and the check below then reports. */
	for (i = 0; ctx && i < 2000 && !uodp_ctx_sync(ctx); i++)
		usleep(1000);
	if (ctx && !uodp_ctx_sync(ctx))
		finding("the kernel monitor delivered nothing for 2 s "
			"(uodp_ctx_sync() stays false)");
}

/* ---- the translation invariant ---- */
static bool stale_word(int p, unsigned state_or_access, bool is_dev)
{
	int prot;

	if (p < 0 || pages[p].st == P_FOREIGN)
		return false;
	if (pages[p].st == P_HOLE)
		return state_or_access != 0 && hole_real(p);
	prot = pages[p].prot;
	if (is_dev) {
		if (state_or_access == UODP_DEV_PAGE_WRITE)
			return !(prot & PROT_WRITE);
		if (state_or_access == UODP_DEV_PAGE_READ)
			return !(prot & PROT_READ);
		return false;
	}
	if (state_or_access & UODP_ACCESS_WRITE)
		return !(prot & PROT_WRITE);
	if (state_or_access & UODP_ACCESS_READ)
		return !(prot & PROT_READ);
	return false;
}

static const char *pstate_name(int p)
{
	if (pages[p].st == P_HOLE)
		return "a hole";
	if (pages[p].prot == PROT_NONE)
		return "PROT_NONE";
	if (pages[p].prot == PROT_READ)
		return "read-only";
	return "read-write";
}

static void check_translations_once(const char *after, bool report);
static bool stale_seen;
/* Non-strict kernel-monitor devices drop translations soon after munmap()
 * returns, strict ones (and manual ones, after the invalidation) at once. */
#define dev_eventual (!dev_manual && !(dev_flags & UODP_DEV_STRICT))

static void stale(bool report, const char *fmt, ...)
{
	va_list ap;

	stale_seen = true;
	if (!report)
		return;
	va_start(ap, fmt);
	vfinding(FIND_STALE, fmt, ap);
	va_end(ap);
}

/*
 * With the kernel monitor and no strict mode, munmap() may return before
 * the monitor thread has accounted the event it read (uodp_ctx_sync() is
 * then briefly true): a stale entry must go away soon, not at once.
 */
static void check_translations(const char *after)
{
	int i;

	if (dev_manual && ectx_manual) {
		check_translations_once(after, true);
		return;
	}
	for (i = 0; i < 200; i++) {
		stale_seen = false;
		check_translations_once(after, false);
		if (!stale_seen || stop)
			return;
		usleep(1000);
	}
	check_translations_once(after, true);
}

static void check_translations_once(const char *after, bool report)
{
	uint8_t st[POOL_PAGES];
	uint64_t e[POOL_PAGES];
	int i, p;

	if (stop)
		return;
	/* A strict device promises more: once munmap() (or any call the
	 * monitor gets an event for) has returned, no snapshot or prefetch
	 * shows the old translation (finding 8): checked at once, without
	 * waiting for the monitor. */
	if (dev && !dev_manual && !(dev_flags & UODP_DEV_STRICT) && !sabotaged)
		settle(uodp_dev_ctx(dev));
	bool engine_ok = true;

	if (ectx && !ectx_manual) {
		/* ctx_sync is false while a start() is open: then the
		 * monitor's progress cannot be seen; skip the engine part.
		 * A monitor without its descriptor promises nothing. */
		for (i = 0; i < MAX_TOKENS; i++)
			engine_ok &= !token_open[i];
		engine_ok &= !sabotaged;
		if (engine_ok)
			settle(ectx);
	}
	for (i = 0; i < MAX_KEYS && !(sabotaged && !dev_manual); i++) {
		struct fkey *k = &keys[i];
		uint64_t lo, hi;
		int64_t n;

		if (!k->live)
			continue;
		lo = k->start > pool_va(0) ? k->start : pool_va(0);
		hi = k->end < pool_va(POOL_PAGES) ? k->end :
						    pool_va(POOL_PAGES);
		if (lo >= hi)
			continue;
		n = uodp_dev_snapshot(dev, k->key, lo, hi - lo, st);
		if (n < 0) {
			finding("snapshot of key %u: %" PRId64, k->key, n);
			return;
		}
		for (p = page_of(lo); p >= 0 && p < page_of(lo) + n; p++)
			if (stale_word(p, st[p - page_of(lo)], true)) {
				stale(report || !dev_eventual,
				      "stale device translation after %s: "
				      "key %u pool page %d is %s in the "
				      "device page table but %s in the "
				      "process",
				      after, k->key, p,
				      st[p - page_of(lo)] ==
						      UODP_DEV_PAGE_WRITE ?
					      "writable" :
					      "readable",
				      pstate_name(p));
				return;
			}
	}
	for (i = 0; i < MAX_UMEMS && engine_ok; i++) {
		struct fumem *u = &umems[i];

		if (!u->umem)
			continue;
		if (uodp_umem_lock(u->umem)) {
			finding("umem lock failed");
			return;
		}
		if (uodp_umem_entries_locked(u->umem, pool + u->first * ps,
					     (size_t)u->n, e))
			finding("entries_locked failed");
		uodp_umem_unlock(u->umem);
		for (p = 0; p < u->n && !stop; p++) {
			uint64_t acc = e[p] & UODP_ENTRY_ACCESS_MASK;

			if (acc && (e[p] & UODP_ENTRY_ADDR_MASK) !=
					   pool_va(u->first + p))
				finding("engine entry of pool page %d names "
					"%#" PRIx64,
					u->first + p, e[p]);
			else if (stale_word(u->first + p, (unsigned)acc, false))
				stale(report || ectx_manual,
				      "stale engine entry after %s: pool "
				      "page %d mapped %s but %s in the "
				      "process",
				      after, u->first + p,
				      acc & UODP_ACCESS_WRITE ? "writable" :
								"readable",
				      pstate_name(u->first + p));
		}
	}
}

/* ---- invalidation of an address-space change ---- */
static void invalidate_all(int first, int n, enum uodp_event ev)
{
	void *a = pool + (size_t)first * ps;
	int r;

	if (mutation == MUT_SKIP_INVAL)
		return;
	if (ectx && ectx_manual) {
		r = uodp_invalidate_range(ectx, a, (size_t)n * ps, ev);
		if (r)
			finding("invalidate_range: %d", r);
	}
	if (dev && dev_manual) {
		r = uodp_invalidate_range(uodp_dev_ctx(dev), a, (size_t)n * ps,
					  ev);
		if (r)
			finding("device invalidate_range: %d", r);
	}
}

static void mark_changed(int p)
{
	pages[p].mods++;
}

/* Re-reserve holes of [first, first + n) without clobbering anything that
 * appeared there; false when a page turned out foreign. */
static bool reserve_holes(int first, int n)
{
	int p;

	for (p = first; p < first + n; p++) {
		void *a = pool + (size_t)p * ps, *r;

		if (pages[p].st != P_HOLE)
			continue;
		r = mmap(a, ps, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1,
			 0);
		if (r != a) {
			if (r != MAP_FAILED)
				munmap(r, ps); /* an old kernel placed it
						  elsewhere */
			pages[p].st = P_FOREIGN;
			return false;
		}
		hist_push(p);
		pages[p].st = P_MAPPED;
		pages[p].prot = PROT_NONE;
		pages[p].obj = next_obj++;
		pages[p].objpage = 0;
		pages[p].shared = false;
		pages[p].sysv = false;
		pages[p].file = false;
		pages[p].uncertain = nasync > 0;
		clear_tags(p);
		memset(shadow + (size_t)p * ps, 0, ps);
	}
	return true;
}

static int prot_of(unsigned b)
{
	static const int prots[4] = { PROT_NONE, PROT_READ,
				      PROT_READ | PROT_WRITE,
				      PROT_READ | PROT_WRITE };

	return prots[b % 4];
}

static void new_mapping(int first, int n, int prot, bool shared)
{
	uint32_t obj = next_obj++;
	int p;

	births[obj % BIRTHS].obj = obj;
	births[obj % BIRTHS].input = (unsigned)stats.inputs;
	births[obj % BIRTHS].step = step;
	births[obj % BIRTHS].first = first;

	for (p = first; p < first + n; p++) {
		hist_push(p);
		pages[p].st = P_MAPPED;
		pages[p].prot = prot;
		pages[p].shared = shared;
		pages[p].obj = obj;
		pages[p].objpage = (uint32_t)(p - first);
		pages[p].sysv = false;
		pages[p].file = false;
		clear_tags(p);
		memset(shadow + (size_t)p * ps, 0, ps);
		pages[p].uncertain = nasync > 0;
		mark_changed(p);
	}
}

/* The model of a fresh mapping of the file at [first, first + n): the
 * pages hold what the file holds (pread: the file's bytes; zero past its
 * end), tagged with the file's object, so a word written through an
 * earlier mapping of the same file page is still at home. */
static void file_mapping(int first, int n)
{
	uint8_t *sh = shadow + (size_t)first * ps;
	ssize_t r;
	int p;

	memset(sh, 0, (size_t)n * ps);
	r = pread(file_fd, sh, (size_t)n * ps, (off_t)first * (off_t)ps);
	if (r < 0)
		finding("pread of the file: %s", strerror(errno));
	for (p = first; p < first + n; p++) {
		const uint64_t *w8 =
			(const uint64_t *)(shadow + (size_t)p * ps);
		unsigned w;

		pages[p].file = true;
		pages[p].obj = file_obj;
		pages[p].objpage = (uint32_t)p;
		for (w = 0; w < words_per_page; w++)
			if (w8[w] && w8[w] >> 16 != tag_of(file_obj, p, w))
				set_untagged(p, w); /* an atomic's result */
	}
}

/* ---- operations: the address space ---- */

static bool unmap_pages(int first, int n);

/* A SysV segment attached in the hole [a, a + len), removed at once so it
 * goes with its last detach, then mprotect()ed to @prot. MAP_FAILED when
 * the kernel gives none or the hole is no longer free. */
static void *sysv_map(void *a, size_t len, int prot)
{
	int id = shmget(IPC_PRIVATE, len, IPC_CREAT | 0600);
	void *r;

	if (id < 0)
		return MAP_FAILED;
	r = shmat(id, a, 0);
	shmctl(id, IPC_RMID, NULL);
	if (r == (void *)-1)
		return MAP_FAILED;
	if (r != a || mprotect(r, len, prot)) {
		finding("shmat/mprotect inside the pool: %p", r);
		return MAP_FAILED;
	}
	return r;
}
static void op_mmap(void)
{
	int first = (int)upto(POOL_PAGES), n = 1 + (int)upto(MAX_RUN);
	int prot = prot_of(byte());
	bool shared = upto(4) == 0;
	void *a, *r;

	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	if (stop || !reserve_holes(first, n))
		return;
	a = pool + (size_t)first * ps;
	if (shared && sysv_shared) {
		/* shmat(SHM_REMAP) over a mapping sends no userfaultfd
		 * event (the kernel passes no unmap list), like mprotect:
		 * a careful application unmaps first. */
		if (!unmap_pages(first, n))
			return;
		r = sysv_map(a, (size_t)n * ps, prot);
		if (r == MAP_FAILED) {
			check_translations("munmap before shmat");
			return; /* no SysV memory (limits), or the hole was
				   taken meanwhile: holes in the model */
		}
	} else if (shared && file_pages) {
		r = mmap(a, (size_t)n * ps, prot, MAP_SHARED | MAP_FIXED,
			 file_fd, (off_t)first * (off_t)ps);
	} else {
		r = mmap(a, (size_t)n * ps, prot,
			 (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS |
				 MAP_FIXED,
			 -1, 0);
	}
	if (r != a) {
		finding("mmap MAP_FIXED inside the pool failed");
		return;
	}
	trace("mmap pages %d+%d prot %d%s", first, n, prot,
	      shared ? (sysv_shared ? " sysv" :
			file_pages  ? " file" :
				      " shared") :
		       "");
	new_mapping(first, n, prot, shared);
	for (int p = first; p < first + n; p++)
		pages[p].sysv = shared && sysv_shared;
	if (shared && !sysv_shared && file_pages)
		file_mapping(first, n);
	invalidate_all(first, n, UODP_EVENT_UNMAP);
	check_translations("mmap over a mapping");
}

/* munmap [first, first + n) (holes re-reserved, nothing foreign) and
 * invalidate it; false on failure (a finding). */
static bool unmap_pages(int first, int n)
{
	int p;

	if (munmap(pool + (size_t)first * ps, (size_t)n * ps)) {
		finding("munmap inside the pool failed");
		return false;
	}
	trace("munmap pages %d+%d", first, n);
	for (p = first; p < first + n; p++) {
		if (pages[p].st == P_MAPPED)
			hist_push(p);
		pages[p].st = P_HOLE;
		pages[p].prot = PROT_NONE;
		pages[p].file = false;
		mark_changed(p);
	}
	invalidate_all(first, n, UODP_EVENT_UNMAP);
	return true;
}

static void op_munmap(void)
{
	int first = (int)upto(POOL_PAGES), n = 1 + (int)upto(MAX_RUN);

	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	/* A hole may have been filled by someone else since: re-reserve
	 * holes first, so that munmap only ever removes our own pages. */
	if (stop || any_foreign(first, n) || !reserve_holes(first, n))
		return;
	if (unmap_pages(first, n))
		check_translations("munmap");
}

static void op_mprotect(void)
{
	int first = (int)upto(POOL_PAGES), n = 1 + (int)upto(MAX_RUN), p;
	int prot = prot_of(byte());
	struct uodp_range r1, r2;
	bool t1 = false, t2 = false;

	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	if (stop)
		return;
	for (p = first; p < first + n; p++)
		if (pages[p].st != P_MAPPED)
			return;
	/* The monitor does not see mprotect: bracket it, on any context. */
	uodp_range_init(&r1, pool + (size_t)first * ps, (size_t)n * ps,
			UODP_EVENT_MANUAL);
	uodp_range_init(&r2, pool + (size_t)first * ps, (size_t)n * ps,
			UODP_EVENT_MANUAL);
	if (mutation != MUT_SKIP_INVAL) {
		if (ectx && uodp_invalidate_range_start(ectx, &r1) == 0)
			t1 = true;
		if (dev &&
		    uodp_invalidate_range_start(uodp_dev_ctx(dev), &r2) == 0)
			t2 = true;
	}
	if (mprotect(pool + (size_t)first * ps, (size_t)n * ps, prot)) {
		finding("mprotect inside the pool failed");
		return;
	}
	trace("mprotect pages %d+%d prot %d", first, n, prot);
	for (p = first; p < first + n; p++) {
		pages[p].prot = prot;
		mark_changed(p);
	}
	if (t1 && uodp_invalidate_range_end(&r1))
		finding("invalidate_range_end refused its token");
	if (t2 && uodp_invalidate_range_end(&r2))
		finding("device invalidate_range_end refused its token");
	if (mutation == MUT_DOUBLE_END && t1 &&
	    uodp_invalidate_range_end(&r1) != -EINVAL)
		finding("a second invalidate_range_end was not refused");
	for (p = first; p < first + n; p++)
		if (pages[p].uncertain && !nasync)
			resync_page(p);
	check_translations("mprotect");
}

/* Has pool page @p an entry in one of the fuzzer's regions (with
 * UODP_CTX_PIN: is it pinned)? */
static bool engine_entry(int p)
{
	uint64_t e;
	int i;

	for (i = 0; i < MAX_UMEMS; i++) {
		struct fumem *u = &umems[i];
		bool got;

		if (!u->umem || p < u->first || p >= u->first + u->n)
			continue;
		if (uodp_umem_lock(u->umem)) {
			finding("umem lock failed");
			return false;
		}
		got = !uodp_umem_entries_locked(u->umem, pool + (size_t)p * ps,
						1, &e) &&
		      (e & UODP_ENTRY_ACCESS_MASK);
		uodp_umem_unlock(u->umem);
		if (got)
			return true;
	}
	return false;
}

/* A private page just zapped by MADV_DONTNEED reads zero (pinned or not:
 * finding 15, an allocator relying on zero-fill). */
static void check_zero(int p)
{
	const uint8_t *real = (const uint8_t *)pool + (size_t)p * ps;
	size_t i;

	if (!(pages[p].prot & PROT_READ))
		return;
	for (i = 0; i < ps; i++)
		if (real[i]) {
			finding("pool page %d after MADV_DONTNEED: byte +%zu "
				"is %#x, not zero",
				p, i, real[i]);
			return;
		}
}

/* Retry MADV_DONTNEED of pool page @p for up to 200 ms (the monitor
 * handles an event in microseconds; see check_translations()). */
static bool madvise_soon(int p)
{
	for (int i = 0; i < 200; i++) {
		usleep(1000);
		if (!madvise(pool + (size_t)p * ps, ps, MADV_DONTNEED))
			return true;
		if (errno != EINVAL)
			return false;
	}
	return false;
}

static void op_madvise(void)
{
	int first = (int)upto(POOL_PAGES), n = 1 + (int)upto(MAX_RUN), p;

	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	if (stop)
		return;
	for (p = first; p < first + n; p++)
		if (pages[p].st != P_MAPPED)
			return;
	trace("madvise DONTNEED pages %d+%d", first, n);
	for (p = first; p < first + n; p++) {
		bool pinned = ectx_pin && engine_entry(p);

		/* Page by page: a range call that fails on a pinned
		 * (mlocked) page has already zapped the ones before it. */
		if (madvise(pool + (size_t)p * ps, ps, MADV_DONTNEED)) {
			/* uodp.h, UODP_CTX_PIN: the application's madvise
			 * fails with EINVAL while the page is pinned (it has
			 * an entry) - and only then (issue 12, finding 15). */
			/* A pinned page moved by mremap: with the kernel
			 * monitor its destination is unlocked when the
			 * monitor handles the move, which may be just after
			 * mremap() returned (uodp.h, UODP_CTX_PIN). */
			if (errno == EINVAL && !pinned && ectx_pin &&
			    !ectx_manual && madvise_soon(p))
				goto zapped;
			if (errno != EINVAL || !pinned)
				finding("madvise(MADV_DONTNEED) of pool page "
					"%d: %s, but the page is not pinned",
					p, strerror(errno));
			continue; /* unchanged */
		}
		if (pinned && ectx_manual && mlock_real)
			finding("madvise(MADV_DONTNEED) of pinned pool page "
				"%d succeeded; uodp.h says EINVAL",
				p);
zapped:
		mark_changed(p);
		/* A private page reads zero again; a shared one keeps its
		 * bytes (they live in the shmem object). */
		if (!pages[p].shared) {
			memset(shadow + (size_t)p * ps, 0, ps);
			clear_tags(p);
			if (!nasync) {
				pages[p].uncertain = false;
				check_zero(p);
			}
		}
	}
	invalidate_all(first, n, UODP_EVENT_REMOVE);
	check_translations("madvise");
}

static void op_mremap(void)
{
	int src = (int)upto(POOL_PAGES), dst = (int)upto(POOL_PAGES);
	int n = 1 + (int)upto(MAX_RUN), p;
	void *r;

	if (stop || src + n > POOL_PAGES || dst + n > POOL_PAGES ||
	    (dst < src + n && src < dst + n))
		return;
	for (p = src; p < src + n; p++)
		if (pages[p].st != P_MAPPED || pages[p].obj != pages[src].obj ||
		    pages[p].prot != pages[src].prot || pages[p].file)
			return; /* file pages stay at their place (struct mpage) */
	if (any_foreign(dst, n) || !reserve_holes(dst, n))
		return;
	/* uodp.h, UODP_CTX_PIN: a manual context invalidates pinned memory
	 * before it moves it (mremap moves the mlock with the pages). */
	if (ectx && ectx_manual && ectx_pin && mutation != MUT_SKIP_INVAL &&
	    uodp_invalidate_range(ectx, pool + (size_t)src * ps, (size_t)n * ps,
				  UODP_EVENT_REMAP))
		finding("invalidate_range before mremap failed");
	r = mremap(pool + (size_t)src * ps, (size_t)n * ps, (size_t)n * ps,
		   MREMAP_MAYMOVE | MREMAP_FIXED, pool + (size_t)dst * ps);
	if (r != pool + (size_t)dst * ps)
		return; /* the range spans two kernel mappings: unchanged */
	trace("mremap pages %d+%d -> %d", src, n, dst);
	for (p = 0; p < n; p++) {
		struct mpage *d = &pages[dst + p], *s = &pages[src + p];

		hist_push(dst + p);
		/* The bytes move, and with them the tags of every mapping
		 * that held the source page since the last exact point. */
		for (unsigned h = 0; h < s->nhist && h < HIST; h++) {
			d->hist_obj[d->nhist % HIST] = s->hist_obj[h];
			d->hist_pg[d->nhist % HIST] = s->hist_pg[h];
			d->nhist++;
		}
		d->st = P_MAPPED;
		d->prot = s->prot;
		d->shared = s->shared;
		d->obj = s->obj;
		d->objpage = s->objpage;
		d->uncertain = s->uncertain || nasync;
		d->sysv = s->sysv;
		memcpy(d->untagged, s->untagged, sizeof(d->untagged));
		memcpy(shadow + (size_t)(dst + p) * ps,
		       shadow + (size_t)(src + p) * ps, ps);
		mark_changed(dst + p);
		hist_push(src + p);
		d->file = false;
		s->st = P_HOLE;
		s->prot = PROT_NONE;
		mark_changed(src + p);
	}
	invalidate_all(src, n, UODP_EVENT_REMAP);
	invalidate_all(dst, n, UODP_EVENT_UNMAP);
	check_translations("mremap");
}

/*
 * Truncate or grow the input's file to 0..POOL_PAGES pages. Nothing tells
 * the library (the kernel monitor gets no event for a truncation either):
 * the device's and the engine's entries of the pages cut off go stale,
 * and an access through them must fail as a fresh fault does, -EFAULT
 * (issue 12, finding 18). What was cut off reads zero once the file grows
 * back.
 */
static void op_file_size(void)
{
	int k = (int)upto(POOL_PAGES + 1), p;

	if (stop || file_fd < 0)
		return;
	if (ftruncate(file_fd, (off_t)k * (off_t)ps)) {
		finding("ftruncate of the file: %s", strerror(errno));
		return;
	}
	trace("file size %d pages (was %d)", k, file_pages_now);
	for (p = k; p < POOL_PAGES; p++) {
		if (pages[p].st != P_MAPPED || !pages[p].file)
			continue;
		memset(shadow + (size_t)p * ps, 0, ps);
		clear_tags(p);
		pages[p].uncertain = nasync > 0;
		mark_changed(p);
	}
	file_pages_now = k;
}

/* CPU writes through the mapping: new versions of the pages' words. */
static void op_cpu_write(void)
{
	int first = (int)upto(POOL_PAGES), n = 1 + (int)upto(MAX_RUN), p;
	unsigned w;

	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	if (stop)
		return;
	for (p = first; p < first + n; p++) {
		uint64_t *mem = (uint64_t *)(pool + (size_t)p * ps);
		uint64_t *sh = (uint64_t *)(shadow + (size_t)p * ps);
		uint16_t ver = next_ver++;

		if (pages[p].st != P_MAPPED ||
		    pages[p].prot != (PROT_READ | PROT_WRITE) || past_eof(p))
			continue; /* (past the end: SIGBUS) */
		for (w = 0; w < words_per_page; w++) {
			mem[w] = word_for(p, w, ver);
			sh[w] = mem[w];
		}
		clear_tags(p);
		mark_changed(p);
	}
}

/* ---- operations: engine regions ---- */
static void op_umem_get(void)
{
	int slot = (int)upto(MAX_UMEMS), first = (int)upto(POOL_PAGES);
	int n = 1 + (int)upto(8);
	unsigned access = 1 + upto(3);
	struct uodp_umem *u = NULL;
	int r;

	if (stop || !ectx || umems[slot].umem)
		return;
	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	inject_begin();
	r = uodp_umem_get(ectx, pool + (size_t)first * ps, (size_t)n * ps,
			  access, &u);
	inject_end();
	if ((sandbox & SB_REGISTER) && !ectx_manual &&
	    !(r == -ENOMEM && injecting)) {
		/* Registration forbidden: get fails at once, -EPERM
		 * (NOTIFIER.md, issue 12 finding 18), never a region whose
		 * every fault fails. */
		if (r != -EPERM)
			finding("umem_get with UFFDIO_REGISTER denied: %d (%s), "
				"not -EPERM",
				r, strerror(-r));
		if (!r)
			uodp_umem_release(u);
		return;
	}
	if (r == -ENOSYS && !ectx_manual) {
		stats.skipped_monitor++;
		return; /* monitor unavailable (notifier not merged) */
	}
	if (r == -ENOMEM && injecting)
		return;
	if (r) {
		/* -ENOMEM only while allocations fail (above) */
		if (!(!ectx_manual && (r == -EBUSY || r == -EOPNOTSUPP ||
				       (r == -EBADF && sabotaged))))
			finding("umem_get: %d (%s)", r, strerror(-r));
		return;
	}
	trace("umem_get slot %d pages %d+%d access %u", slot, first, n, access);
	umems[slot] = (struct fumem){ u, first, n, access, !ectx_manual };
	ectx_monitor_ok = true;
}

static void op_umem_release(void)
{
	int slot = (int)upto(MAX_UMEMS), r;

	if (stop || !umems[slot].umem)
		return;
	r = uodp_umem_release(umems[slot].umem);
	if (r)
		finding("umem_release: %d", r);
	trace("umem_release slot %d", slot);
	umems[slot].umem = NULL;
}

static void op_map_and_lock(void)
{
	int slot = (int)upto(MAX_UMEMS), i0;
	struct fumem *u = &umems[slot];
	unsigned access = 1 + upto(3), i;
	int off, n, pred, j;
	uint64_t e[POOL_PAGES];
	int64_t r;
	bool tok_open = false;

	for (i0 = 0; i0 < MAX_UMEMS && !u->umem; i0++) {
		slot = (slot + 1) % MAX_UMEMS;
		u = &umems[slot];
	}
	if (stop || !u->umem)
		return;
	off = (int)upto((unsigned)u->n);
	n = 1 + (int)upto((unsigned)(u->n - off));
	for (i = 0; i < MAX_TOKENS; i++)
		tok_open |= token_open[i];
	inject_begin();
	r = uodp_umem_map_and_lock(u->umem,
				   pool + (size_t)(u->first + off) * ps,
				   (size_t)n * ps, access,
				   tok_open ? 0 : MAP_TIMEOUT_MS);
	inject_end();
	trace("map_and_lock slot %d pages %d+%d access %u: %" PRId64, slot,
	      u->first + off, n, access, r);
	if ((access & ~u->access) != 0) {
		if (r != -EPERM)
			finding("map_and_lock beyond the region's rights: %" PRId64,
				r);
		if (r >= 0)
			uodp_umem_unlock(u->umem);
		return;
	}
	pred = sabotaged && !ectx_manual ?
		       1 :
		       predict_on(pool_va(u->first + off), ps,
				  access & UODP_ACCESS_WRITE ?
					  PROT_READ | PROT_WRITE :
					  PROT_READ,
				  ectx_manual);
	if (r == -EBUSY) {
		if (!tok_open)
			finding("map_and_lock: -EBUSY for %d ms with no "
				"invalidation open (wedged region)",
				MAP_TIMEOUT_MS);
		return;
	}
	if (r < 0) {
		/* Pinning: mlock() may hit RLIMIT_MEMLOCK. */
		if (r == -ENOMEM && (injecting || ectx_pin))
			return;
		if (pred == 1 || r == pred)
			return;
		if (r == -EBADF && sabotaged && !ectx_manual)
			return;
		finding("map_and_lock: %" PRId64 " (%s), model says %d", r,
			strerror((int)-r), pred);
		return;
	}
	if (pred != 0 && pred != 1)
		finding("map_and_lock mapped %" PRId64
			" pages where the model says %d",
			r, pred);
	if (r > n)
		finding("map_and_lock: %" PRId64 " pages of %d", r, n);
	if (!stop && uodp_umem_entries_locked(
			     u->umem, pool + (size_t)(u->first + off) * ps,
			     (size_t)r, e))
		finding("entries_locked after map_and_lock");
	for (j = 0; j < r && !stop; j++) {
		int p = u->first + off + j;

		if ((e[j] & UODP_ENTRY_ADDR_MASK) != pool_va(p) ||
		    (e[j] & access) != access)
			finding("entry %d after map_and_lock: %#" PRIx64, j,
				e[j]);
		else if (!(sabotaged && !ectx_manual) &&
			 stale_word(p, (unsigned)(e[j] & UODP_ACCESS_ALL),
				    false))
			finding("map_and_lock installed pool page %d with "
				"access %u but it is %s",
				p, access, pstate_name(p));
	}
	if (uodp_umem_unlock(u->umem))
		finding("unlock after map_and_lock");
}

static void op_umem_unmap(void)
{
	int slot = (int)upto(MAX_UMEMS);
	int64_t r;

	if (stop || !umems[slot].umem)
		return;
	r = uodp_umem_unmap(umems[slot].umem, pool, POOL_PAGES * ps);
	if (r < 0)
		finding("umem_unmap: %" PRId64, r);
}

static void op_token(void)
{
	int t = (int)upto(MAX_TOKENS), first = (int)upto(POOL_PAGES);
	int n = 1 + (int)upto(MAX_RUN), r;

	if (stop || !ectx)
		return;
	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	if (!token_open[t]) {
		uodp_range_init(&tokens[t], pool + (size_t)first * ps,
				(size_t)n * ps, UODP_EVENT_MANUAL);
		r = uodp_invalidate_range_start(ectx, &tokens[t]);
		if (r)
			finding("invalidate_range_start: %d", r);
		else
			token_open[t] = true;
		if (uodp_ctx_sync(ectx))
			finding("ctx_sync true with a start() open");
		trace("token %d start pages %d+%d", t, first, n);
		check_translations("invalidate_range_start");
		return;
	}
	r = uodp_invalidate_range_end(&tokens[t]);
	if (r)
		finding("invalidate_range_end: %d", r);
	token_open[t] = false;
	if (mutation == MUT_DOUBLE_END) {
		r = uodp_invalidate_range_end(&tokens[t]);
		if (r != -EINVAL)
			finding("second invalidate_range_end: %d, not -EINVAL",
				r);
	}
	trace("token %d end", t);
}

/* ---- operations: the device ---- */
/* A live key: the slot the input names, or the next live one (so random
 * inputs do not waste most device operations on empty slots). */
static struct fkey *pick_key(void)
{
	unsigned i, s = upto(MAX_KEYS);

	for (i = 0; i < MAX_KEYS; i++)
		if (keys[(s + i) % MAX_KEYS].live)
			return &keys[(s + i) % MAX_KEYS];
	return NULL;
}

/* An address and length for an access through @k, mostly inside the
 * pool and the key, sometimes straddling their ends. */
static void pick_range(const struct fkey *k, uint64_t *va, uint64_t *len)
{
	unsigned mode = upto(16);
	uint64_t lo = k->start > pool_va(0) ? k->start : pool_va(0);
	uint64_t hi = k->end < pool_va(POOL_PAGES) ? k->end :
						     pool_va(POOL_PAGES);
	uint64_t span = hi > lo ? hi - lo : 0;

	*va = lo + (span ? (byte() | byte() << 8) * 8 % span : 0);
	*len = 1 + (byte() | byte() << 8) % (MAX_XFER * ps);
	if (mode == 0 && k->start >= pool_va(0))
		*va = k->start - 8; /* before the key */
	else if (mode == 1)
		*len = MAX_XFER * ps;
	if (*va + *len > hi && mode != 1 && mode != 0)
		*len = hi > *va ? hi - *va : 8;
}

static bool in_key(const struct fkey *k, uint64_t va, uint64_t len)
{
	return va >= k->start && va + len <= k->end && va + len >= va;
}

/* Prediction for a device access through @k. */
static int dev_predict(const struct fkey *k, uint64_t va, uint64_t len,
		       int prot, unsigned right)
{
	if (!in_key(k, va, len))
		return -ERANGE;
	if (!(k->access & right))
		return -EPERM;
	if (page_of(va) < 0 || page_of(va + len - 1) < 0)
		return 1;
	return predict(va, len, prot);
}

static void fill_buf(uint8_t *buf, uint64_t va, uint64_t len, uint16_t ver)
{
	uint64_t a;

	for (a = va; a < va + len; a++) {
		int p = page_of(a);
		uint64_t v = 0;

		if (p >= 0)
			v = word_for(p, (unsigned)((a - pool_va(p)) / 8), ver);

		buf[a - va] = (uint8_t)(v >> (8 * (a % 8)));
	}
}

static uint8_t xbuf[MAX_XFER * 8192 + 16], ybuf[MAX_XFER * 8192 + 16];

/*
 * Sometimes (1 in 8) the caller's own buffer is bad: a run of pool pages
 * that are holes or PROT_NONE (issue 12, finding 1: the fast copy died
 * on it). The call must fail -EFAULT (or with the host side's error, or
 * an argument error, whichever the device checks first), never crash.
 */
static uint8_t *bad_local(uint64_t len)
{
	int first = (int)upto(POOL_PAGES), n, p, tries;

	if (!bad_buffers || upto(8))
		return NULL;
	n = (int)((len + ps - 1) / ps) + 1;
	for (tries = 0; tries < POOL_PAGES; tries++, first++) {
		first %= POOL_PAGES;
		if (first + n > POOL_PAGES)
			continue;
		for (p = first; p < first + n; p++)
			if (!((pages[p].st == P_HOLE && hole_real(p)) ||
			      (pages[p].st == P_MAPPED &&
			       pages[p].prot == PROT_NONE)))
				break;
		if (p == first + n)
			return (uint8_t *)pool + (size_t)first * ps +
			       upto(64) * 8;
	}
	return NULL;
}

static int bad_local_pred(int pred)
{
	if (pred == -ERANGE || pred == -EPERM || pred == -EINVAL || pred == 1)
		return pred;
	return -EFAULT;
}

static void op_dev_read(void)
{
	struct fkey *k = pick_key();
	uint64_t va, len;
	uint8_t *buf = xbuf;
	int r, pred;
	bool inj;

	if (stop || !k)
		return;
	pick_range(k, &va, &len);
	pred = dev_predict(k, va, len, PROT_READ, UODP_DEV_ACCESS_READ);
	buf = bad_local(len);
	if (buf) {
		r = uodp_dev_read(dev, k->key, va, buf, len);
		stats.dev_ops++;
		trace("dev_read into a bad buffer key %u va +%#" PRIx64
		      " len %" PRIu64 ": %d",
		      k->key, va - pool_va(0), len, r);
		if (r != pred || pred == 0)
			judge("dev_read into a bad buffer", r,
			      bad_local_pred(pred), false);
		return;
	}
	buf = xbuf;
	memset(xbuf, 0xee, len);
	inject_begin();
	inj = injecting;
	r = uodp_dev_read(dev, k->key, va, xbuf, len);
	inject_end();
	stats.dev_ops++;
	trace("dev_read key %u va +%#" PRIx64 " len %" PRIu64 ": %d", k->key,
	      va - pool_va(0), len, r);
	judge("dev_read", r, pred, inj);
	if (!r && pred == 0)
		check_bytes(va, xbuf, len, !nasync, "dev_read");
}

static void apply_write(uint64_t va, const uint8_t *buf, uint64_t len)
{
	memcpy(shadow + (va - pool_va(0)), buf, len);
	for (int p = page_of(va); p <= page_of(va + len - 1); p++)
		mark_changed(p);
}

static void mark_uncertain(uint64_t va, uint64_t len)
{
	int p;

	for (p = page_of(va); p >= 0 && p < POOL_PAGES && pool_va(p) < va + len;
	     p++) {
		pages[p].uncertain = true;
		mark_changed(p);
	}
}

static void op_dev_write(void)
{
	struct fkey *k = pick_key();
	uint64_t va, len;
	uint8_t *bad;
	int r, pred;
	bool inj;

	if (stop || !k)
		return;
	pick_range(k, &va, &len);
	pred = dev_predict(k, va, len, PROT_READ | PROT_WRITE,
			   UODP_DEV_ACCESS_WRITE);
	if (pred == 1)
		return; /* outside the pool: never write there */
	bad = bad_local(len);
	if (bad) {
		r = uodp_dev_write(dev, k->key, va, bad, len);
		stats.dev_ops++;
		trace("dev_write from a bad buffer key %u va +%#" PRIx64
		      " len %" PRIu64 ": %d",
		      k->key, va - pool_va(0), len, r);
		if (r != pred || pred == 0)
			judge("dev_write from a bad buffer", r,
			      bad_local_pred(pred), false);
		if (r == 0)
			finding("dev_write from a bad buffer succeeded");
		else if (r == -EFAULT || r == -EACCES || r == -EBADF)
			mark_uncertain(va, len);
		if (!nasync)
			resync_all();
		return;
	}
	fill_buf(xbuf, va, len, next_ver++);
	inject_begin();
	inj = injecting;
	r = uodp_dev_write(dev, k->key, va, xbuf, len);
	inject_end();
	stats.dev_ops++;
	trace("dev_write key %u va +%#" PRIx64 " len %" PRIu64 ": %d", k->key,
	      va - pool_va(0), len, r);
	judge("dev_write", r, pred, inj);
	if (!r)
		apply_write(va, xbuf, len);
	else if (r == -EFAULT || r == -EACCES || r == -ENOMEM || r == -EBADF)
		mark_uncertain(va, len); /* written up to the failing page */
	if (!nasync)
		resync_all();
}

static void op_dev_atomic(void)
{
	struct fkey *k = pick_key();
	uint64_t va, len, old = 0, arg, sw, before = 0, *sh;
	bool cas = upto(2), inj;
	int r, pred, p;

	if (stop || !k)
		return;
	pick_range(k, &va, &len);
	va &= ~(uint64_t)7;
	if (upto(16) == 0)
		va |= 4; /* misaligned: -EINVAL */
	p = page_of(va);
	pred = va & 7 ? -EINVAL :
			dev_predict(k, va, 8, PROT_READ | PROT_WRITE,
				    UODP_DEV_ACCESS_ATOMIC);
	if (pred == 1 || p < 0)
		return;
	sh = (uint64_t *)(shadow + (va & ~(uint64_t)7) - pool_va(0));
	before = *sh;
	arg = cas ? (upto(2) ? before : before + 1) : upto(256);
	sw = word_for(p, (unsigned)((va - pool_va(p)) / 8), next_ver++);
	inject_begin();
	inj = injecting;
	if (cas)
		r = uodp_dev_cmp_swap(dev, k->key, va, arg, sw, &old);
	else
		r = uodp_dev_fetch_add(dev, k->key, va, arg, &old);
	inject_end();
	stats.dev_ops++;
	trace("dev_%s key %u va +%#" PRIx64 ": %d", cas ? "cas" : "fadd",
	      k->key, va - pool_va(0), r);
	judge(cas ? "cmp_swap" : "fetch_add", r, pred, inj);
	if (r)
		return;
	if (!pages[p].uncertain && !nasync && old != before)
		finding("atomic at pool page %d: old value %#" PRIx64
			", the mapping held %#" PRIx64,
			p, old, before);
	if (cas) {
		if (old == arg)
			*sh = sw;
	} else {
		*sh = old + arg;
		set_untagged(p, (unsigned)((va - pool_va(p)) / 8));
	}
	if (pages[p].uncertain || nasync) {
		pages[p].uncertain = true;
		set_untagged(p, (unsigned)((va - pool_va(p)) / 8));
	}
	mark_changed(p);
}

/*
 * May a prefetch of [@va, +@len) succeed where a fresh fault fails? Yes
 * when every page that would fail is a file page cut off by a truncation
 * (past_eof): nothing tells the library of a truncation (README, finding
 * 18), so such a page may keep the device entry an earlier fault or an
 * asynchronous operation gave it, and a prefetch answers from the device
 * page table without touching the page. (A data operation through that
 * entry faults and is probed: -EFAULT, as the model says.)
 */
static bool prefetch_stale_ok(uint64_t va, uint64_t len, int prot)
{
	uint64_t a = va & ~(ps - 1), end = va + len;
	bool stale = false;

	for (; a < end; a += ps) {
		uint64_t s = a < va ? va : a, e = a + ps < end ? a + ps : end;
		int p = page_of(a);

		if (p >= 0 && past_eof(p))
			stale = true;
		else if (predict(s, e - s, prot) != 0)
			return false;
	}
	return stale;
}

static void op_dev_prefetch(void)
{
	struct fkey *k = pick_key();
	uint64_t va, len;
	bool w = upto(2), inj;
	int r, pred;

	if (stop || !k)
		return;
	pick_range(k, &va, &len);
	pred = dev_predict(k, va, len, w ? PROT_READ | PROT_WRITE : PROT_READ,
			   w ? UODP_DEV_ACCESS_WRITE : UODP_DEV_ACCESS_READ);
	/* A prefetch answers from the device page table, which a monitor
	 * without its descriptor no longer maintains (finding 13: the
	 * library notices asynchronously): only documented errors then. */
	if (sabotaged && !dev_manual && pred != -ERANGE && pred != -EPERM)
		pred = 1;
	inject_begin();
	inj = injecting;
	r = uodp_dev_prefetch(dev, k->key, va, len,
			      w ? UODP_DEV_PREFETCH_WRITE : 0);
	inject_end();
	stats.dev_ops++;
	trace("dev_prefetch%s key %u va +%#" PRIx64 " len %" PRIu64 ": %d",
	      w ? "_write" : "", k->key, va - pool_va(0), len, r);
	if (r == 0 && pred == -EFAULT &&
	    prefetch_stale_ok(va, len, w ? PROT_READ | PROT_WRITE : PROT_READ))
		pred = 0;
	judge("prefetch", r, pred, inj);
	check_translations("prefetch");
}

static void op_dev_copy(void)
{
	struct fkey *d = pick_key(), *s = pick_key();
	uint64_t dva, dlen, sva, slen, len;
	int r, pd, psrc, pred;
	bool inj;

	if (stop || !d || !s)
		return;
	pick_range(d, &dva, &dlen);
	pick_range(s, &sva, &slen);
	len = dlen < slen ? dlen : slen;
	if (sva < dva + len && dva < sva + len)
		return; /* overlapping copies: not modelled */
	psrc = dev_predict(s, sva, len, PROT_READ, UODP_DEV_ACCESS_READ);
	pd = dev_predict(d, dva, len, PROT_READ | PROT_WRITE,
			 UODP_DEV_ACCESS_WRITE);
	if (pd == 1 || psrc == 1)
		return;
	/* Argument errors (rights, range) come before memory errors; among
	 * memory errors, which side fails first is the device's choice. */
	if (psrc == -ERANGE || psrc == -EPERM)
		pred = psrc;
	else if (pd == -ERANGE || pd == -EPERM)
		pred = pd;
	else
		pred = psrc ? psrc : pd;
	inject_begin();
	inj = injecting;
	r = uodp_dev_copy(dev, d->key, dva, s->key, sva, len);
	inject_end();
	stats.dev_ops++;
	trace("dev_copy %u+%#" PRIx64 " <- %u+%#" PRIx64 " len %" PRIu64 ": %d",
	      d->key, dva - pool_va(0), s->key, sva - pool_va(0), len, r);
	if (r && psrc && pd && r == pd)
		pred = pd;
	judge("copy", r, pred, inj);
	if (!r && pred == 0) {
		memcpy(ybuf, shadow + (sva - pool_va(0)), len);
		apply_write(dva, ybuf, len);
		/* The source may be uncertain: so is the target. */
		for (int p = page_of(sva); p <= page_of(sva + len - 1); p++)
			if (pages[p].uncertain || nasync)
				mark_uncertain(dva, len);
		/* Words copied to another place carry the source's tags. */
		for (int p = page_of(dva); p <= page_of(dva + len - 1); p++)
			memset(pages[p].untagged, 0xff,
			       sizeof(pages[p].untagged));
		if (!nasync)
			resync_all();
	} else if (r && r != -ERANGE && r != -EPERM && r != -EINVAL) {
		/* Written up to the failing page (dva is in the pool: pd
		 * would be 1 otherwise). */
		mark_uncertain(dva, len);
		for (int p = page_of(dva);
		     p >= 0 && p <= page_of(dva + len - 1); p++)
			memset(pages[p].untagged, 0xff,
			       sizeof(pages[p].untagged));
		if (!nasync)
			resync_all();
	}
}

/* The kernel monitor's userfaultfd, found by its link in /proc/self/fd
 * (nothing else in this process makes one), or -1. */
static int find_uffd(void)
{
	char path[300], link[64];
	struct dirent *e;
	DIR *d = opendir("/proc/self/fd");
	int fd = -1;

	if (!d)
		return -1;
	while (fd < 0 && (e = readdir(d))) {
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (!strcmp(link, "anon_inode:[userfaultfd]"))
			fd = atoi(e->d_name);
	}
	closedir(d);
	return fd;
}

static void sabotage_fd(void)
{
	int fd = find_uffd();

	sabotaged = true; /* once per input, found or not */
	if (fd < 0)
		return;
	sentinel_fd = memfd_create("uodp-fuzz-sentinel", 0);
	if (sentinel_fd < 0 ||
	    pwrite(sentinel_fd, sentinel_bytes, sizeof(sentinel_bytes), 0) !=
		    (ssize_t)sizeof(sentinel_bytes) ||
	    dup2(sentinel_fd, fd) != fd) {
		finding("sentinel: %s", strerror(errno));
		return;
	}
	sabotaged_fd = fd;
	trace("userfaultfd %d replaced by a sentinel file", fd);
}

/* After the teardown: the number is still the sentinel's, unwritten. */
static void check_sentinel(void)
{
	struct stat a, b;
	char got[sizeof(sentinel_bytes)];

	if (sabotaged_fd >= 0) {
		if (fstat(sabotaged_fd, &a) || fstat(sentinel_fd, &b) ||
		    a.st_ino != b.st_ino || a.st_dev != b.st_dev)
			finding("descriptor %d, the application's sentinel, "
				"was closed or replaced by the library",
				sabotaged_fd);
		else if (pread(sentinel_fd, got, sizeof(got), 0) !=
				 (ssize_t)sizeof(got) ||
			 memcmp(got, sentinel_bytes, sizeof(got)) ||
			 lseek(sentinel_fd, 0, SEEK_CUR) != 0 ||
			 lseek(sentinel_fd, 0, SEEK_END) !=
				 (off_t)sizeof(sentinel_bytes))
			finding("the library wrote to descriptor %d, the "
				"application's sentinel file",
				sabotaged_fd);
		close(sabotaged_fd);
	}
	if (sentinel_fd >= 0)
		close(sentinel_fd);
	sentinel_fd = sabotaged_fd = -1;
	sabotaged = false;
}

static void op_dev_snapshot(void)
{
	/* An application that ignores SIGSEGV/SIGBUS survives one sent to
	 * it, device open or not (finding 14: the device's handler took
	 * SIG_IGN for SIG_DFL and killed the process). */
	if (sig_ignored) {
		raise(SIGSEGV);
		raise(SIGBUS);
	}
	if (fd_sabotage && !sabotaged)
		sabotage_fd();
	check_translations("snapshot");
}

static void op_reg(void)
{
	int slot = (int)upto(MAX_KEYS), first = (int)upto(POOL_PAGES);
	unsigned access = 1 + upto(7), lenb = 1 + upto(12 * 64);
	bool implicit = upto(8) == 0;
	struct fkey *k = &keys[slot];
	uint64_t start = pool_va(first) + upto(64) * 8, len;
	int r;

	if (stop || !dev || k->live)
		return;
	len = (uint64_t)lenb * 64;
	if (start + len > pool_va(POOL_PAGES))
		len = pool_va(POOL_PAGES) - start;
	inject_begin();
	if (implicit)
		r = uodp_dev_reg_implicit_mr(dev, access, &k->key);
	else
		r = uodp_dev_reg_mr(dev, start, len, access, &k->key);
	inject_end();
	if (r == -ENOSYS && !dev_manual) {
		stats.skipped_monitor++;
		return;
	}
	if (r) {
		/* -ENOMEM only while allocations fail */
		if (!((r == -ENOMEM && injecting) ||
		      (!dev_manual && (r == -EBUSY || r == -EOPNOTSUPP ||
				       (r == -EBADF && sabotaged)))))
			finding("reg_mr: %d (%s)", r, strerror(-r));
		return;
	}
	if (key_dead(k->key))
		finding("key %u issued again after its deregistration", k->key);
	k->live = true;
	k->implicit = implicit;
	k->access = access;
	if (implicit) {
		k->start = 0; /* the implicit region: [0, 2^47 - page) */
		k->end = ((uint64_t)1 << 47) - ps;
	} else {
		k->start = start;
		k->end = start + len;
	}
	trace("reg key %u slot %d %s access %u", k->key, slot,
	      implicit ? "implicit" : "explicit", access);
}

static bool key_dead(uint32_t key)
{
	for (unsigned d = 0; d < ndead && d < MAX_DEAD; d++)
		if (dead_keys[d] == key)
			return true;
	return false;
}

/*
 * Once per input, right after the first deregistration: 300 implicit
 * registrations and deregistrations, each in the slot just freed (the
 * device reuses the most recently freed one), so a slot goes through more
 * generations than a key's 8 bits hold. No key may come back (finding 3:
 * an 8-bit generation wrapped after 256 reuses and a dead key reached a
 * new region). Implicit regions cost nothing until a fault reaches them.
 */
static void key_churn(void)
{
	uint32_t key;
	int i, r;

	if (churned || !dev)
		return;
	churned = true;
	for (i = 0; i < 300 && ndead < MAX_DEAD && !stop; i++) {
		r = uodp_dev_reg_implicit_mr(dev, UODP_DEV_ACCESS_READ, &key);
		if (r) {
			if (r != -ENOMEM && r != -ENOSPC)
				finding("churn: reg_implicit_mr: %d", r);
			return;
		}
		if (key_dead(key))
			finding("key %u issued again after its deregistration "
				"(churn %d)",
				key, i);
		r = uodp_dev_dereg_mr(dev, key);
		if (r)
			finding("churn: dereg_mr: %d", r);
		dead_keys[ndead++] = key;
	}
}

static void op_dereg(void)
{
	struct fkey *k = &keys[upto(MAX_KEYS)];
	int r;

	if (stop || !k->live)
		return;
	if (nasync)
		return; /* queued requests hold keys: drained first */
	if (k->implicit && upto(2)) {
		r = uodp_dev_mr_trim(dev, k->key);
		if (r < 0)
			finding("mr_trim: %d", r);
		check_translations("trim");
		return;
	}
	r = uodp_dev_dereg_mr(dev, k->key);
	if (r)
		finding("dereg_mr: %d", r);
	/* A dead key stays dead. */
	if (uodp_dev_read(dev, k->key, pool_va(0), xbuf, 1) != -ENOENT)
		finding("key %u readable after deregistration", k->key);
	trace("dereg key %u", k->key);
	if (ndead < MAX_DEAD)
		dead_keys[ndead++] = k->key;
	k->live = false;
	key_churn();
}

/* ---- the queue ---- */
static void complete(const struct uodp_dev_wc *wc)
{
	struct fasync *a;
	int i;

	if (wc->wr_id >= MAX_ASYNC || !async[wc->wr_id].busy) {
		finding("completion with unknown wr_id %" PRIu64, wc->wr_id);
		return;
	}
	a = &async[wc->wr_id];
	stats.async_ops++;
	if (wc->status && !dev_documented(wc->status))
		finding("async %s: undocumented status %d",
			uodp_dev_opcode_name(a->wr.opcode), wc->status);
	if (wc->status == -ENOMEM && !a->injected)
		finding("async %s: -ENOMEM with no allocation failing",
			uodp_dev_opcode_name(a->wr.opcode));
	if (a->wr.opcode == UODP_DEV_OP_READ && wc->status == 0 &&
	    page_of(a->wr.va) >= 0 && page_of(a->wr.va + a->wr.len - 1) >= 0) {
		bool exact = true;

		for (i = 0; i < a->n; i++)
			exact &= a->certain[i] &&
				 pages[a->first + i].mods == a->mods[i] &&
				 !pages[a->first + i].uncertain;
		check_bytes(a->wr.va, (const uint8_t *)a->buf, a->wr.len, exact,
			    "async read");
	}
	a->busy = false;
	nasync--;
}

static void op_post(void)
{
	struct fkey *k = pick_key();
	struct fasync *a = NULL;
	uint64_t va, len;
	unsigned kind = upto(4);
	int i, r;

	if (stop || !k || !dev)
		return;
	if (!queue) {
		inject_begin();
		r = uodp_dev_queue_create(dev, MAX_ASYNC, &queue);
		inject_end();
		if (r) {
			if (r != -ENOMEM && r != -EAGAIN)
				finding("queue_create: %d", r);
			queue = NULL;
			return;
		}
	}
	for (i = 0; i < MAX_ASYNC; i++)
		if (!async[i].busy) {
			a = &async[i];
			break;
		}
	if (!a)
		return;
	pick_range(k, &va, &len);
	if (page_of(va) < 0 || page_of(va + len - 1) < 0)
		return;
	memset(&a->wr, 0, sizeof(a->wr));
	a->wr.wr_id = (uint64_t)(a - async);
	a->wr.key = k->key;
	a->wr.va = va;
	a->wr.len = len;
	a->wr.buf = a->buf;
	switch (kind) {
	case 0:
		a->wr.opcode = UODP_DEV_OP_READ;
		memset(a->buf, 0xee, len);
		break;
	case 1:
		a->wr.opcode = UODP_DEV_OP_WRITE;
		fill_buf((uint8_t *)a->buf, va, len, next_ver++);
		break;
	case 2:
		a->wr.opcode = UODP_DEV_OP_FETCH_ADD;
		a->wr.va = va & ~(uint64_t)7;
		a->wr.compare_add = 1;
		break;
	default:
		a->wr.opcode = upto(2) ? UODP_DEV_OP_PREFETCH :
					 UODP_DEV_OP_PREFETCH_WRITE;
		break;
	}
	a->first = page_of(a->wr.va);
	a->n = page_of(a->wr.va + (a->wr.len ? a->wr.len : 8) - 1) - a->first +
	       1;
	for (i = 0; i < a->n; i++) {
		a->mods[i] = pages[a->first + i].mods;
		a->certain[i] = !pages[a->first + i].uncertain;
	}
	inject_begin();
	a->injected = injecting;
	r = uodp_dev_post(queue, &a->wr);
	inject_end();
	if (r) {
		/* Refused requests: key checks the model can predict. */
		if (r != -ERANGE && r != -EPERM && r != -EINVAL && r != -ENOSPC)
			finding("post: %d (%s)", r, strerror(-r));
		return;
	}
	/* Workers allocate while the request runs; injection is over by
	 * then, except that the window is racy: keep -ENOMEM legal. */
	a->injected = inject_ok;
	a->busy = true;
	nasync++;
	trace("post %s key %u va +%#" PRIx64 " len %" PRIu64 " id %d",
	      uodp_dev_opcode_name(a->wr.opcode), k->key, a->wr.va - pool_va(0),
	      a->wr.len, (int)a->wr.wr_id);
	if (a->wr.opcode == UODP_DEV_OP_WRITE)
		mark_uncertain(a->wr.va, a->wr.len);
	else if (a->wr.opcode == UODP_DEV_OP_FETCH_ADD) {
		int p = page_of(a->wr.va);

		mark_uncertain(a->wr.va, 8);
		set_untagged(p, (unsigned)((a->wr.va - pool_va(p)) / 8));
	}
}

static void op_poll(bool drain)
{
	struct uodp_dev_wc wc[MAX_ASYNC];
	int n, i, rounds = 0;

	if (stop || !queue)
		return;
	do {
		n = drain ? uodp_dev_poll_wait(queue, wc, MAX_ASYNC, 5000) :
			    uodp_dev_poll(queue, wc, MAX_ASYNC);
		if (n < 0) {
			finding("poll: %d", n);
			return;
		}
		for (i = 0; i < n && !stop; i++)
			complete(&wc[i]);
		if (drain && n == 0 && nasync) {
			finding("%d queued requests not completed after 5 s",
				nasync);
			return;
		}
	} while (drain && nasync && ++rounds < 100);
	if (!nasync)
		resync_all();
}

/* ---- operations: application threads (cfg2 bit 3) ----
 *
 * The interpreter is one thread; these operations start helpers for the
 * two hostile patterns one thread cannot make (issue 12): a region
 * registered on a context another thread is destroying (finding 6), and
 * a thread cancelled while it is inside the library (finding 12). The
 * helpers judge nothing themselves: they record, the interpreter judges
 * after the join. A wait that does not end is judged by the watchdog. */

/* The watchdog: a call that must return (an invalidation, a join) runs
 * between watch_arm() and watch_disarm(); if it has not returned after
 * WATCH_S seconds the process is wedged, the finding is reported and the
 * process aborts (nothing else can end the input). Why 5 s: what it
 * guards takes microseconds; 5 s is a hang even on a loaded CI host. */
#define WATCH_S 5
static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static const char *wd_what;
static unsigned wd_gen;
static bool wd_started;
static char input_label[128];

void fuzz_set_label(const char *label)
{
	snprintf(input_label, sizeof(input_label), "%s", label);
}

static void *watchdog(void *arg)
{
	struct timespec dl;

	(void)arg;
	pthread_mutex_lock(&wd_lock);
	for (;;) {
		unsigned gen;

		while (!wd_what)
			pthread_cond_wait(&wd_cond, &wd_lock);
		gen = wd_gen;
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += WATCH_S;
		while (wd_what && wd_gen == gen &&
		       pthread_cond_timedwait(&wd_cond, &wd_lock, &dl) !=
			       ETIMEDOUT)
			;
		if (wd_what && wd_gen == gen) {
			fprintf(stderr,
				"FUZZ FINDING (step %u, other): %s has not "
				"returned after %d s (a hang)%s%s\n",
				step, wd_what, WATCH_S,
				input_label[0] ? "; input: " : "", input_label);
			abort(); /* the process is wedged: nothing can go on */
		}
	}
	return NULL;
}

static void watch_arm(const char *what)
{
	pthread_mutex_lock(&wd_lock);
	if (!wd_started) {
		pthread_condattr_t ca;
		pthread_t t;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&wd_cond, &ca);
		pthread_condattr_destroy(&ca);
		if (pthread_create(&t, NULL, watchdog, NULL))
			abort();
		pthread_detach(t);
		wd_started = true;
	}
	wd_what = what;
	wd_gen++;
	pthread_cond_signal(&wd_cond);
	pthread_mutex_unlock(&wd_lock);
}

static void watch_disarm(void)
{
	pthread_mutex_lock(&wd_lock);
	wd_what = NULL;
	wd_gen++;
	pthread_cond_signal(&wd_cond);
	pthread_mutex_unlock(&wd_lock);
}

/* A seeded moment: at once, after a yield, or after 50 us / 1 ms. */
static void seeded_pause(unsigned b)
{
	switch (b & 3) {
	case 0:
		break;
	case 1:
		sched_yield();
		break;
	case 2:
		usleep(50);
		break;
	default:
		usleep(1000);
		break;
	}
}

/* Finding 6: uodp_umem_get() / release on a context that another thread
 * destroys. A region ("keep") holds the context's memory until the end,
 * so the getters never pass a freed handle (undefined, uodp.h); what they
 * pass is a context being destroyed, for which uodp_umem_get documents
 * -ENODEV. */
#define GETTERS 2
struct getter {
	struct uodp_ctx *ctx;
	char *addr;
	size_t len;
	atomic_int *phase; /* 0 running, 1 destroying, 2 destroy returned */
	atomic_int calls;  /* progress, read by the destroyer */
	int bad, bad_phase, nodev, ok, after;
	int bad_release;
};

static void *getter_main(void *arg)
{
	struct getter *g = arg;

	/* Until refused after destroy returned (three times), or a bound
	 * counted from then: a getter never refused is judged below. */
	for (g->after = 0; g->after < 10000; atomic_fetch_add(&g->calls, 1)) {
		int ph = atomic_load(g->phase), r;
		struct uodp_umem *u = NULL;

		if (ph == 2)
			g->after++;
		r = uodp_umem_get(g->ctx, g->addr, g->len, UODP_ACCESS_ALL, &u);
		if (r == 0) {
			g->ok++;
			if (ph == 2 && !g->bad_phase)
				g->bad_phase = 1; /* registered after destroy */
			if (uodp_umem_release(u) && !g->bad_release)
				g->bad_release = 1;
		} else if (r == -ENODEV) {
			/* The phase after the call: destroy not yet called
			 * when it returned. */
			if (atomic_load(g->phase) == 0 && !g->bad_phase)
				g->bad_phase = -1; /* refused before destroy */
			if (ph == 2 && ++g->nodev >= 3)
				break;
		} else if (!g->bad) {
			g->bad = r;
		}
	}
	return NULL;
}

static bool get_error_ok(int r)
{
	/* What op_umem_get accepts, from the same list of uodp.h; not
	 * -ENOMEM: nothing here makes allocations fail (a get racing
	 * destroy answering -ENOMEM instead of -ENODEV is a finding). */
	return !ectx_manual &&
	       (r == -EBUSY || r == -EOPNOTSUPP || (r == -EBADF && sabotaged));
}

static void op_get_vs_destroy(void)
{
	int first = (int)upto(POOL_PAGES), n = 1 + (int)upto(MAX_RUN);
	unsigned start_after = upto(8), pause = byte();
	struct getter g[GETTERS];
	pthread_t t[GETTERS];
	struct uodp_ctx *c = NULL;
	struct uodp_umem *keep = NULL;
	atomic_int phase;
	int64_t m;
	int i, r;

	if (stop)
		return;
	if (first + n > POOL_PAGES)
		n = POOL_PAGES - first;
	r = uodp_ctx_create(&fz_ops, ectx_flags, &c);
	if (r) {
		if (r != -ENOSYS)
			finding("get_vs_destroy: ctx_create: %d", r);
		return;
	}
	r = uodp_umem_get(c, pool + (size_t)first * ps, (size_t)n * ps,
			  UODP_ACCESS_ALL, &keep);
	if (r == -EPERM && (sandbox & SB_REGISTER) && !ectx_manual) {
		uodp_ctx_destroy(c); /* op_umem_get judges this case */
		return;
	}
	if (r) {
		if (r == -ENOSYS && !ectx_manual)
			stats.skipped_monitor++;
		else if (!get_error_ok(r))
			finding("get_vs_destroy: umem_get: %d (%s)", r,
				strerror(-r));
		if (uodp_ctx_destroy(c))
			finding("get_vs_destroy: ctx_destroy");
		return;
	}
	trace("get_vs_destroy pages %d+%d after %u gets, pause %u", first, n,
	      start_after, pause & 3);
	atomic_init(&phase, 0);
	for (i = 0; i < GETTERS; i++) {
		/* Each getter a run of its own inside keep's pages. */
		g[i] = (struct getter){ .ctx = c,
					.addr = pool +
						(size_t)(first + i % n) * ps,
					.len = ps,
					.phase = &phase };
		atomic_init(&g[i].calls, 0);
		if (pthread_create(&t[i], NULL, getter_main, &g[i]))
			abort();
	}
	/* Progress, not time: destroy once the getters made some calls. */
	while (atomic_load(&g[0].calls) < (int)start_after &&
	       atomic_load(&g[GETTERS - 1].calls) < (int)start_after)
		sched_yield();
	seeded_pause(pause);
	atomic_store(&phase, 1);
	r = uodp_ctx_destroy(c);
	atomic_store(&phase, 2);
	if (r)
		finding("get_vs_destroy: ctx_destroy racing gets: %d", r);
	/* A dying region fails at once with -ENODEV (uodp.h). */
	m = uodp_umem_map_and_lock(keep, pool + (size_t)first * ps, ps,
				   UODP_ACCESS_READ, UODP_TIMEOUT_INFINITE);
	if (m != -ENODEV) {
		finding("get_vs_destroy: map_and_lock on a region of a "
			"destroyed context: %" PRId64 ", not -ENODEV",
			m);
		if (m > 0)
			uodp_umem_unlock(keep);
	}
	watch_arm("a getter racing uodp_ctx_destroy()");
	for (i = 0; i < GETTERS; i++)
		pthread_join(t[i], NULL);
	watch_disarm();
	for (i = 0; i < GETTERS; i++) {
		if (g[i].bad && !get_error_ok(g[i].bad))
			finding("get_vs_destroy: umem_get racing destroy: %d "
				"(%s)",
				g[i].bad, strerror(-g[i].bad));
		if (g[i].bad_phase > 0)
			finding("get_vs_destroy: umem_get succeeded after "
				"uodp_ctx_destroy() returned");
		if (g[i].bad_phase < 0)
			finding("get_vs_destroy: umem_get -ENODEV before "
				"uodp_ctx_destroy() was called");
		if (g[i].bad_release)
			finding("get_vs_destroy: umem_release of a region "
				"got racing destroy failed");
		if (g[i].nodev < 3)
			finding("get_vs_destroy: %d gets after destroy, %d "
				"refused with -ENODEV",
				g[i].after, g[i].nodev);
	}
	if (uodp_umem_release(keep)) /* frees the context */
		finding("get_vs_destroy: release of the last region");
}

/* Finding 12: a thread cancelled inside the library. The victim faults a
 * page of a live region - while an invalidation of it is open (it waits
 * in the library), or not (it may be anywhere in the fault path) - and is
 * cancelled at a seeded moment. No uodp function is a cancellation point
 * (uodp.h): the cancel acts after the call returned, so the victim
 * records the call's result; then the region must still be invalidated
 * and faulted as usual, within the watchdog's bound. */
struct victim {
	struct uodp_umem *umem;
	char *addr;
	unsigned access, timeout;
	atomic_int entered; /* the victim's thread id once it runs */
	atomic_long result;
};

static void *victim_main(void *arg)
{
	struct victim *v = arg;
	int64_t r;

	pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
	atomic_store(&v->entered, (int)gettid());
	r = uodp_umem_map_and_lock(v->umem, v->addr, ps, v->access, v->timeout);
	if (r > 0)
		uodp_umem_unlock(v->umem);
	atomic_store(&v->result, (long)r);
	for (;;)
		pthread_testcancel(); /* the first cancellation point */
	return NULL;
}

/* Whether thread @tid sleeps (blocked in the kernel). */
static bool task_sleeps(pid_t tid)
{
	char path[64], buf[256], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'S';
}

static void op_cancel(void)
{
	int slot = (int)upto(MAX_UMEMS), off, i, p;
	bool pending = upto(2), tok_open = false;
	unsigned access = 1 + upto(2), pause = byte();
	struct fumem *u = &umems[slot];
	struct victim v;
	struct uodp_range tok;
	pthread_t t;
	void *ret;
	int64_t r, m;
	int pred;

	for (i = 0; i < MAX_UMEMS && !u->umem; i++) {
		slot = (slot + 1) % MAX_UMEMS;
		u = &umems[slot];
	}
	for (i = 0; i < MAX_TOKENS; i++)
		tok_open |= token_open[i];
	/* Another open token would keep the victim waiting for good. */
	if (stop || !u->umem || tok_open || (access & ~u->access))
		return;
	off = (int)upto((unsigned)u->n);
	p = u->first + off;
	trace("cancel slot %d page %d access %u%s, pause %u", slot, p, access,
	      pending ? " with an invalidation open" : "", pause & 3);
	v = (struct victim){ .umem = u->umem,
			     .addr = pool + (size_t)p * ps,
			     .access = access,
			     .timeout = pending ? UODP_TIMEOUT_INFINITE :
						  MAP_TIMEOUT_MS };
	atomic_init(&v.entered, 0);
	atomic_init(&v.result, 1L << 40);
	if (pending) {
		uodp_range_init(&tok, v.addr, ps, UODP_EVENT_MANUAL);
		if (uodp_invalidate_range_start(ectx, &tok)) {
			finding("cancel: invalidate_range_start");
			return;
		}
	}
	if (pthread_create(&t, NULL, victim_main, &v))
		abort();
	while (!atomic_load(&v.entered))
		sched_yield();
	if (pending) {
		/* Let it block in the library (bounded: a victim that does
		 * not block is cancelled anyway, which only tests less). */
		struct timespec t0, t1;
		pid_t tid = (pid_t)atomic_load(&v.entered);

		clock_gettime(CLOCK_MONOTONIC, &t0);
		do {
			if (atomic_load(&v.result) != (1L << 40) ||
			    task_sleeps(tid))
				break;
			sched_yield();
			clock_gettime(CLOCK_MONOTONIC, &t1);
		} while ((t1.tv_sec - t0.tv_sec) * 1000000000L +
				 (t1.tv_nsec - t0.tv_nsec) <
			 100000000L);
	}
	seeded_pause(pause);
	pthread_cancel(t);
	if (pending) {
		usleep(1000); /* a chance for a wrong cancel to act */
		/* An error may come before the wait (a refusing monitor);
		 * pages mapped under an open start() never. */
		r = atomic_load(&v.result);
		if (r >= 0 && r != (1L << 40))
			finding("cancel: map_and_lock mapped %" PRId64
				" pages while an invalidation of them was open",
				r);
		watch_arm("invalidate_range_end() after a thread was "
			  "cancelled in a fault");
		if (uodp_invalidate_range_end(&tok))
			finding("cancel: invalidate_range_end");
		watch_disarm();
	}
	watch_arm("a cancelled thread that was in a fault");
	pthread_join(t, &ret);
	watch_disarm();
	r = atomic_load(&v.result);
	if (ret != PTHREAD_CANCELED)
		finding("cancel: the victim was not cancelled");
	if (r == (1L << 40))
		finding("cancel: cancelled inside map_and_lock (no uodp "
			"function is a cancellation point)");
	pred = sabotaged && !ectx_manual ?
		       1 :
		       predict_on(pool_va(p), ps,
				  access & UODP_ACCESS_WRITE ?
					  PROT_READ | PROT_WRITE :
					  PROT_READ,
				  ectx_manual);
	if (r < 0 && r != (1L << 40) && pred != 1 && r != pred &&
	    !(r == -ENOMEM && ectx_pin) &&
	    !(r == -EBADF && sabotaged && !ectx_manual))
		finding("cancel: map_and_lock: %" PRId64 " (%s), model says %d",
			r, strerror((int)-r), pred);
	/* The region must still be invalidated and faulted. */
	watch_arm("an invalidation after a thread was cancelled in a fault");
	if (uodp_invalidate_range(ectx, v.addr, ps, UODP_EVENT_MANUAL))
		finding("cancel: invalidate_range after the cancel");
	m = uodp_umem_map_and_lock(u->umem, v.addr, ps, access, MAP_TIMEOUT_MS);
	watch_disarm();
	if (m == -EBUSY)
		finding("cancel: map_and_lock -EBUSY for %d ms after a thread "
			"was cancelled in a fault (wedged region)",
			MAP_TIMEOUT_MS);
	else if (m > 0 && uodp_umem_unlock(u->umem))
		finding("cancel: unlock");
}

static void op_thread(void)
{
	if (upto(2))
		op_get_vs_destroy();
	else
		op_cancel();
}

/* ---- the sandbox (cfg2 bit 7) ----
 *
 * A seccomp filter cannot be removed from a process, so a sandboxed input
 * runs in a child forked before any uodp object of the input exists: the
 * child installs the filter, runs the input as usual and exits with its
 * verdict; the parent judges the exit. The filter answers EPERM, as
 * container runtimes do, for process_vm_readv/writev (SB_PVM: issue 12,
 * finding 16: the device must detect it at open and copy with the
 * guarded copy, or fail to open with -ENOSYS where there is none) and/or
 * for ioctl(UFFDIO_REGISTER) (SB_REGISTER: finding 18: uodp_umem_get() on
 * a monitored context fails at once with -EPERM, NOTIFIER.md). */
/* Why 60 s: an input runs in milliseconds; its longest own wait is
 * poll_wait's 5 s. */
#define SANDBOX_S 60

static int install_sandbox(unsigned what)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_readv, 0,
			 1),
		BPF_STMT(BPF_RET | BPF_K, what & SB_PVM ?
						  SECCOMP_RET_ERRNO | EPERM :
						  SECCOMP_RET_ALLOW),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_writev, 0,
			 1),
		BPF_STMT(BPF_RET | BPF_K, what & SB_PVM ?
						  SECCOMP_RET_ERRNO | EPERM :
						  SECCOMP_RET_ALLOW),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 3),
		/* The command's low word (x86-64 and arm64: little endian). */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)UFFDIO_REGISTER,
			 0, 1),
		BPF_STMT(BPF_RET | BPF_K, what & SB_REGISTER ?
						  SECCOMP_RET_ERRNO | EPERM :
						  SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]),
				   .filter = f };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		return -errno;
	return 0;
}

/* In the parent: wait for the sandboxed child and judge its exit. */
static void sandbox_wait(pid_t pid, unsigned what)
{
	struct timespec t0, t1;
	int st = 0;
	pid_t r;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while ((r = waitpid(pid, &st, WNOHANG)) == 0) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (t1.tv_sec - t0.tv_sec > SANDBOX_S) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			finding("sandboxed input (%#x denied): no end after "
				"%d s (a hang)",
				what, SANDBOX_S);
			return;
		}
		usleep(1000);
	}
	if (r != pid)
		finding("sandboxed input: waitpid: %d", errno);
	else if (WIFSIGNALED(st))
		finding("sandboxed input (%#x denied): the child died of "
			"signal %d (%s)",
			what, WTERMSIG(st), strsignal(WTERMSIG(st)));
	else if (WEXITSTATUS(st) == 77) {
		/* Counted in the summary: such an input tested nothing. */
		stats.skipped_sandbox++;
		trace("sandbox: seccomp unavailable here");
	} else if (WEXITSTATUS(st) == SANDBOX_STALE)
		stale(true,
		      "sandboxed input (%#x denied): the child reported "
		      "stale translations (above)",
		      what);
	else if (WEXITSTATUS(st) == SANDBOX_OTHER)
		finding("sandboxed input (%#x denied): the child reported a "
			"finding (above)",
			what);
	else if (WEXITSTATUS(st))
		finding("sandboxed input (%#x denied): the child exited %d "
			"(a sanitizer's error?)",
			what, WEXITSTATUS(st));
}

/* ---- setup and teardown of one input ---- */
static void on_invalidate(struct uodp_umem *umem, const struct uodp_range *r,
			  void *priv)
{
	(void)umem;
	(void)r;
	(void)priv;
}

static void on_fence(struct uodp_ctx *ctx, void *priv)
{
	(void)ctx;
	(void)priv;
}

/* Does mlock() lock? A locked page refuses MADV_DONTNEED (EINVAL). */
static bool mlock_probe(void)
{
	void *a = mmap(NULL, ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bool real = false;

	if (a == MAP_FAILED)
		return false;
	if (!mlock(a, ps)) {
		real = madvise(a, ps, MADV_DONTNEED) != 0;
		munlock(a, ps);
	}
	munmap(a, ps);
	return real;
}

static int process_init(void)
{
	int p;

	if (pool)
		return 0;
	ps = (size_t)sysconf(_SC_PAGESIZE);
	if (ps > 8192)
		return -1;
	/* Before the first uodp_dev_open(): the bottom of the device's
	 * handler chain (the sanitizer's or libFuzzer's handler, or
	 * SIG_DFL). */
	sigaction(SIGSEGV, NULL, &orig_sa[0]);
	sigaction(SIGBUS, NULL, &orig_sa[1]);
	mlock_real = mlock_probe();
	words_per_page = (unsigned)(ps / 8);
	/* Low in the address space, far below the libraries and the heap:
	 * the kernel hands out addresses top-down from the first gap that
	 * fits, so a hole the fuzzer punches in the pool is never chosen
	 * for someone else's mapping (above 0x10007fff8000, ASan's high
	 * memory, on x86-64). */
	pool = mmap((void *)(uintptr_t)0x200000000000ull, POOL_PAGES * ps,
		    PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
			    MAP_FIXED_NOREPLACE,
		    -1, 0);
	if (pool == MAP_FAILED)
		pool = mmap(NULL, POOL_PAGES * ps, PROT_NONE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	shadow = calloc(POOL_PAGES, ps);
	if (pool == MAP_FAILED || !shadow)
		abort();
	for (p = 0; p < POOL_PAGES; p++) {
		pages[p].st = P_MAPPED;
		pages[p].prot = PROT_NONE;
		pages[p].obj = next_obj++;
	}
	for (p = 0; p < MAX_ASYNC; p++)
		async[p].buf = malloc(MAX_XFER * 8192 + 16);
	return 0;
}

/* Back to an all-PROT_NONE pool, outside any region. */
static void reset_pool(void)
{
	int p;

	for (p = 0; p < POOL_PAGES; p++) {
		/* A foreign page comes back once its owner unmapped it. */
		if (pages[p].st == P_FOREIGN)
			pages[p].st = P_HOLE;
		if (pages[p].st == P_HOLE && !reserve_holes(p, 1))
			continue;
		if (mmap(pool + (size_t)p * ps, ps, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			 0) == MAP_FAILED)
			abort();
		hist_push(p);
		pages[p].st = P_MAPPED;
		pages[p].prot = PROT_NONE;
		pages[p].shared = false;
		pages[p].sysv = false;
		pages[p].file = false;
		pages[p].uncertain = false;
		pages[p].obj = next_obj++;
		pages[p].objpage = 0;
		pages[p].nhist = 0;
		clear_tags(p);
		mark_changed(p);
	}
	memset(shadow, 0, POOL_PAGES * ps);
}

static void teardown(void)
{
	int i, r;

	stop = false; /* the teardown itself is checked too */
	if (queue) {
		if (nasync)
			op_poll(true);
		r = uodp_dev_queue_destroy(queue);
		if (r)
			finding("queue_destroy: %d", r);
		queue = NULL;
	}
	for (i = 0; i < MAX_ASYNC; i++)
		async[i].busy = false;
	nasync = 0;
	for (i = 0; i < MAX_TOKENS; i++)
		if (token_open[i]) {
			if (uodp_invalidate_range_end(&tokens[i]))
				finding("invalidate_range_end at teardown");
			token_open[i] = false;
		}
	for (i = 0; i < MAX_UMEMS; i++)
		if (umems[i].umem) {
			if (uodp_umem_release(umems[i].umem))
				finding("umem_release at teardown");
			umems[i].umem = NULL;
		}
	if (ectx && uodp_ctx_destroy(ectx))
		finding("ctx_destroy");
	ectx = NULL;
	if (dev && uodp_dev_close(dev))
		finding("dev_close");
	dev = NULL;
	memset(keys, 0, sizeof(keys));
	check_sentinel();
	reset_pool();
	if (file_fd >= 0)
		close(file_fd);
	file_fd = -1;
	file_pages = false;
}

int fuzz_one(const uint8_t *data, size_t size)
{
	struct uodp_ctx_ops ops = { .invalidate = on_invalidate,
				    .fence = on_fence,
				    .unfence = on_fence };
	struct uodp_dev_attr attr = { 0 };
	unsigned cfg, cfg2, ctx_flags;
	int r;

	if (process_init())
		return 0;
	in = data;
	in_len = size;
	in_pos = 0;
	stop = false;
	step = 0;
	stats.inputs++;
	cfg = byte();
	cfg2 = byte();
	file_pages = false;
	if (stop)
		return 0;
	if ((cfg2 & 0x80) && !sandbox) {
		/* cfg2 bit 7: byte 2 follows; when its bits 2-3 are zero
		 * the input runs in a sandbox, bits 0-1 say what the filter
		 * denies (never nothing). A quarter: the sandbox changes
		 * how the device copies, the other inputs keep the usual
		 * paths covered. Bits 6-7 = 10: file pages (file_pages),
		 * sandboxed or not. */
		unsigned b2 = byte(), what = 1 + (b2 & 3) % 3;
		pid_t pid;

		file_pages = (b2 & 0xc0) == 0x80;

		if (stop || (b2 & 0xc))
			goto unsandboxed;
		fflush(NULL);
		pid = fork();
		if (pid < 0)
			return 0; /* no process to spare: not a finding */
		if (pid > 0) {
			sandbox_wait(pid, what);
			return 0;
		}
		if (install_sandbox(what))
			_exit(77);
		sandbox = what;
		wd_started = false; /* the watchdog thread stayed behind */
		trace("sandbox: %s%s denied",
		      what & SB_PVM ? "process_vm_readv/writev " : "",
		      what & SB_REGISTER ? "UFFDIO_REGISTER" : "");
		sandbox_before = stats.findings;
		sandbox_other = stats.findings_of[FIND_OTHER];
	}
unsandboxed:
	if (stop)
		return 0;
	if (file_pages) {
		file_fd = memfd_create("uodp-fuzz-file", MFD_CLOEXEC);
		if (file_fd >= 0 &&
		    ftruncate(file_fd, (off_t)POOL_PAGES * (off_t)ps)) {
			close(file_fd);
			file_fd = -1;
		}
		file_pages = file_fd >= 0; /* no memfd: shared anonymous */
		file_pages_now = POOL_PAGES;
		file_obj = next_obj++;
	}

	/* cfg bit 0: the engine context follows the kernel monitor; bit 1:
	 * the device does; bit 2: fast copy; bit 3: strict (monitor only);
	 * bits 4-5: fault-around; bit 6: allocation failures; bit 7:
	 * pinning. cfg2: bit 0 two exec workers, bit 1 SIGSEGV/SIGBUS
	 * blocked, bit 2 bad caller buffers, bit 4 shared mappings are
	 * SysV memory, bit 3 thread ops (op_thread), bit 5 SIGSEGV/SIGBUS
	 * ignored, bit 6 the monitor's
	 * userfaultfd replaced by a sentinel file;
	 * all of it seeds the injected failures. */
	ectx_manual = !(cfg & 1);
	ctx_flags = ectx_manual ? UODP_CTX_MANUAL : 0;
	ectx_pin = cfg & 0x80;
	if (ectx_pin)
		ctx_flags |= UODP_CTX_PIN;
	if (!ectx_manual && (cfg & 8))
		ctx_flags |= UODP_CTX_STRICT;
	fz_ops = ops;
	ectx_flags = ctx_flags;
	thread_ops = cfg2 & 8;
	r = uodp_ctx_create(&ops, ctx_flags, &ectx);
	if (r) {
		if (r != -ENOSYS)
			finding("ctx_create(%#x): %d", ctx_flags, r);
		ectx = NULL;
	}
	dev_manual = !(cfg & 2);
	dev_flags = dev_manual ? UODP_DEV_MANUAL : 0;
	if (cfg & 4)
		dev_flags |= UODP_DEV_FAST_COPY;
	if (!dev_manual && (cfg & 8))
		dev_flags |= UODP_DEV_STRICT;
	attr.flags = dev_flags;
	attr.fault_around = (unsigned[]){ 1, 2, 16, 64 }[(cfg >> 4) & 3];
	attr.exec_workers = 1 + (cfg2 & 1);
	/* cfg2 bit 1: SIGSEGV and SIGBUS blocked on this thread and every
	 * device worker created from it (issue 12, finding 2). */
	if (cfg2 & 2) {
		sigset_t set;

		sigemptyset(&set);
		sigaddset(&set, SIGSEGV);
		sigaddset(&set, SIGBUS);
		pthread_sigmask(SIG_BLOCK, &set, &saved_mask);
		mask_blocked = true;
	}
	ndead = 0;
	churned = false;
	bad_buffers = cfg2 & 4;
	sysv_shared = cfg2 & 0x10;
	fd_sabotage = cfg2 & 0x40;
	/* cfg2 bit 5: SIGSEGV and SIGBUS ignored for the input, before the
	 * device goes in front (finding 14). */
	if (cfg2 & 0x20) {
		struct sigaction ign;

		memset(&ign, 0, sizeof(ign));
		ign.sa_handler = SIG_IGN;
		sigemptyset(&ign.sa_mask);
		sigaction(SIGSEGV, &ign, NULL);
		sigaction(SIGBUS, &ign, NULL);
		sig_ignored = true;
	}
	r = uodp_dev_open(&attr, &dev);
	if (r) {
		if (r != -ENOSYS)
			finding("dev_open(%#x): %d", dev_flags, r);
#if defined(__x86_64__)
		/* The guarded copy exists here: a sandbox forbidding
		 * process_vm_readv/writev must not keep the device from
		 * opening (uodp_dev.h; -ENOSYS also means Linux < 5.14,
		 * where no context opens either). */
		else if ((sandbox & SB_PVM) && ectx)
			finding("dev_open with process_vm_readv/writev "
				"denied: -ENOSYS although the guarded copy "
				"exists");
#endif
		dev = NULL;
	}
#ifdef UODP_FAULT_INJECT
	inject_ok = cfg & 0x40;
#else
	inject_ok = false;
#endif
	inject_seed = cfg2 * 2654435761u;
	trace("config %#x: engine %s%s, device %s%s%s, fault-around %u%s", cfg,
	      ectx_manual ? "manual" : "monitor", ectx_pin ? " pin" : "",
	      dev_manual ? "manual" : "monitor",
	      dev_flags & UODP_DEV_STRICT ? " strict" : "",
	      dev_flags & UODP_DEV_FAST_COPY ? " fast-copy" : "",
	      attr.fault_around, inject_ok ? ", allocation failures" : "");

	while (!stop) {
		unsigned op = byte();

		if (stop)
			break;
		step++;
		stats.ops++;
		switch (op % 24) {
		case 0:
		case 1:
			op_mmap();
			break;
		case 2:
			op_munmap();
			break;
		case 3:
			op_mprotect();
			break;
		case 4:
			op_madvise();
			break;
		case 5:
			op_mremap();
			break;
		case 6:
		case 7:
			op_cpu_write();
			break;
		case 8:
			op_umem_get();
			break;
		case 9:
			op_umem_release();
			break;
		case 10:
		case 11:
			op_map_and_lock();
			break;
		case 12:
			op_umem_unmap();
			break;
		case 13:
			op_token();
			break;
		case 14:
			op_reg();
			break;
		case 15:
			op_dereg();
			break;
		case 16:
			op_dev_read();
			break;
		case 17:
			op_dev_write();
			break;
		case 18:
			op_dev_atomic();
			break;
		case 19:
			op_dev_prefetch();
			break;
		case 20:
			op_dev_copy();
			break;
		case 21:
			op_post();
			break;
		case 22:
			op_poll(op & 0x80);
			break;
		default:
			if (thread_ops && op >= 128)
				op_thread();
			else if (file_pages && (op & 0x40))
				op_file_size();
			else
				op_dev_snapshot();
			break;
		}
	}
	teardown();
	if (sandbox)
		_exit(stats.findings == sandbox_before ? 0 :
		      stats.findings_of[FIND_OTHER] == sandbox_other ?
							 SANDBOX_STALE :
							 SANDBOX_OTHER);
	if (mask_blocked) {
		pthread_sigmask(SIG_SETMASK, &saved_mask, NULL);
		mask_blocked = false;
	}
	if (sig_ignored) {
		/* After the mask: a signal raised while blocked is pending
		 * and reaches the device's handler, which drops it as
		 * SIG_IGN would. The dispositions from before the first device: the next
		 * uodp_dev_open() finds them on its chain and cuts SIG_IGN
		 * off it, so a real crash in a later input still reaches the
		 * sanitizer's (or libFuzzer's) handler. */
		sigaction(SIGSEGV, &orig_sa[0], NULL);
		sigaction(SIGBUS, &orig_sa[1], NULL);
		sig_ignored = false;
	}
	return 0;
}

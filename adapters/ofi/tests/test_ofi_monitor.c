/* SPDX-License-Identifier: MIT */
/*
 * test_ofi_monitor - the uodp monitor imported into Debian's libfabric
 * through the public API, driven as libfabric's registration cache drives
 * it. No provider on a machine without RDMA hardware uses that cache for
 * system memory (tcp, shm and sockets do not register it), so this program
 * plays the cache: it keeps entries, calls subscribe / valid / unsubscribe
 * under a "cache lock", and receives notify - libfabric's own notify entry,
 * wrapped so that it first takes the cache lock and drops the entries as
 * the cache does (which calls unsubscribe from inside notify). That is the
 * lock pattern that deadlocked the first prototype.
 *
 * Usage: test_ofi_monitor [events|race|locks|all]   (default all)
 * Exit 77 when uodp's kernel monitor is unavailable.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>

#include <rdma/fabric.h>
#include <rdma/fi_ext.h>

#include "../../tests/adp_test.h"
#include "uodp.h"
#include "uodp_ofi.h"

/* ---- the cache, as libfabric's behaves towards its monitor ---- */

#define MAXE 4096

struct ent {
	void *addr;
	size_t len;
	uint64_t gen; /* which mapping it was registered for */
	bool live;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ent ents[MAXE];
static struct fid_mem_monitor *mon;
static struct fi_ops_mem_notify *lf_notify; /* libfabric's */
static atomic_ulong notify_calls;

/* Drop every live entry overlapping [addr, addr + len): cache lock held. */
static void drop_overlaps(const void *addr, size_t len)
{
	uintptr_t s = (uintptr_t)addr, e = s + len;
	int i;

	for (i = 0; i < MAXE; i++) {
		struct ent *x = &ents[i];

		if (!x->live || (uintptr_t)x->addr >= e ||
		    (uintptr_t)x->addr + x->len <= s)
			continue;
		x->live = false;
		mon->export_ops->unsubscribe(mon, x->addr, x->len);
	}
}

static void cache_notify(struct fid_mem_monitor *m, const void *addr,
			 size_t len)
{
	pthread_mutex_lock(&cache_lock);
	drop_overlaps(addr, len);
	atomic_fetch_add(&notify_calls, 1);
	pthread_mutex_unlock(&cache_lock);
	/* and libfabric's own notify (it takes its locks; no cache there) */
	lf_notify->notify(m, addr, len);
}

static struct fi_ops_mem_notify wrapped = {
	.size = sizeof(struct fi_ops_mem_notify),
	.notify = cache_notify,
};

static int find_free(void)
{
	int i;

	for (i = 0; i < MAXE; i++)
		if (!ents[i].live)
			return i;
	return -1;
}

/* Insert an entry (subscribe under the cache lock). */
static int cache_insert(void *addr, size_t len, uint64_t gen)
{
	int i, r;

	pthread_mutex_lock(&cache_lock);
	i = find_free();
	CHECK(i >= 0);
	r = mon->export_ops->subscribe(mon, addr, len);
	if (!r)
		ents[i] = (struct ent){ addr, len, gen, true };
	pthread_mutex_unlock(&cache_lock);
	return r ? r : i;
}

enum {
	MISS,
	HIT
};

/* The cache's search: an exact live entry is asked valid(); not valid ->
 * flushed (unsubscribed) and a miss. Returns HIT/MISS, *gen of a hit. */
static int cache_lookup(void *addr, size_t len, uint64_t *gen)
{
	int i, res = MISS;

	pthread_mutex_lock(&cache_lock);
	for (i = 0; i < MAXE; i++) {
		struct ent *x = &ents[i];

		if (!x->live || x->addr != addr || x->len != len)
			continue;
		if (mon->export_ops->valid(mon, addr, len)) {
			*gen = x->gen;
			res = HIT;
		} else {
			x->live = false;
			mon->export_ops->unsubscribe(mon, addr, len);
		}
		break;
	}
	pthread_mutex_unlock(&cache_lock);
	return res;
}

static bool entry_live(int i)
{
	bool l;

	pthread_mutex_lock(&cache_lock);
	l = ents[i].live;
	pthread_mutex_unlock(&cache_lock);
	return l;
}

static void cache_flush_all(void)
{
	pthread_mutex_lock(&cache_lock);
	drop_overlaps((void *)0, UINTPTR_MAX);
	pthread_mutex_unlock(&cache_lock);
}

/* ---- events ---- */

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK(p != MAP_FAILED);
	memset(p, 0x5a, len);
	return p;
}

static int tmp_fd(size_t len)
{
	char path[] = "/tmp/uodp-ofi-XXXXXX";
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	unlink(path);
	CHECK(ftruncate(fd, (off_t)len) == 0);
	return fd;
}

enum kind {
	K_MUNMAP,
	K_RAW,
	K_DONTNEED,
	K_MREMAP,
	K_FIXED,
	K_FILE_SHARED,
	K_FILE_PRIVATE,
	K_MEMFD,
	K_NKINDS
};
static const char *kind_name[] = {
	"munmap",
	"syscall(SYS_munmap)",
	"madvise(MADV_DONTNEED)",
	"mremap",
	"mmap(MAP_FIXED) over",
	"file MAP_SHARED munmap",
	"file MAP_PRIVATE munmap",
	"memfd MAP_SHARED munmap",
};

static void one_event(enum kind k)
{
	size_t pg = adp_page(), len = 4 * pg;
	void *p, *q, *dst = NULL;
	int fd = -1, i;
	uint64_t gen, t0;
	unsigned long before = atomic_load(&notify_calls);

	switch (k) {
	case K_FILE_SHARED:
	case K_FILE_PRIVATE:
		fd = tmp_fd(len);
		p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 k == K_FILE_SHARED ? MAP_SHARED : MAP_PRIVATE, fd, 0);
		CHECK(p != MAP_FAILED);
		memset(p, 1, len);
		break;
	case K_MEMFD:
		fd = memfd_create("uodp-ofi", 0);
		CHECK(fd >= 0);
		CHECK(ftruncate(fd, (off_t)len) == 0);
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		CHECK(p != MAP_FAILED);
		memset(p, 1, len);
		break;
	default:
		p = map_anon(len);
	}
	i = cache_insert(p, len, 1);
	if (i < 0) {
		fprintf(stderr, "subscribe(%s) failed: %s\n", kind_name[k],
			strerror(-i));
		exit(1);
	}
	CHECK(WAIT_FOR(uodp_ctx_sync(uodp_ofi_ctx()), 5000));
	CHECK_EQ(cache_lookup(p, len, &gen), HIT);

	t0 = adp_now_ns();
	switch (k) {
	case K_MUNMAP:
	case K_FILE_SHARED:
	case K_FILE_PRIVATE:
	case K_MEMFD:
		CHECK(munmap(p, len) == 0);
		break;
	case K_RAW:
		CHECK(syscall(SYS_munmap, p, len) == 0);
		break;
	case K_DONTNEED:
		CHECK(madvise((char *)p + pg, pg, MADV_DONTNEED) == 0);
		break;
	case K_MREMAP:
		dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
		CHECK(dst != MAP_FAILED);
		q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
		CHECK(q == dst);
		break;
	case K_FIXED:
		q = mmap(p, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		CHECK(q == p);
		break;
	default:
		break;
	}
	/* No lookup before notify: a lookup in the window finds valid()
	 * false and flushes the entry itself, and then no notify is due
	 * (the race test checks those lookups). */
	if (!WAIT_FOR(atomic_load(&notify_calls) > before, 5000)) {
		fprintf(stderr, "%s: no notify within 5 s\n", kind_name[k]);
		exit(1);
	}
	printf("  %-26s notify after %6.1f us\n", kind_name[k],
	       (double)(adp_now_ns() - t0) / 1e3);
	CHECK(!entry_live(i));
	CHECK_EQ(cache_lookup(p, len, &gen), MISS);
	if (k == K_DONTNEED || k == K_FIXED)
		munmap(p, len);
	if (dst)
		munmap(dst, len);
	if (fd >= 0)
		close(fd);
	CHECK(WAIT_FOR(uodp_ctx_sync(uodp_ofi_ctx()), 5000));
}

/* SysV shared memory: its shmdt() sends no kernel event, so subscribe
 * refuses it and libfabric does not cache the buffer. */
static int test_sysv(void)
{
	size_t len = 4 * adp_page();
	int id = shmget(IPC_PRIVATE, len, IPC_CREAT | 0600), r;
	void *p;

	if (id < 0) {
		printf("  SysV shm: shmget failed (%s), not checked\n",
		       strerror(errno));
		return 0;
	}
	p = shmat(id, NULL, 0);
	shmctl(id, IPC_RMID, NULL);
	CHECK(p != (void *)-1);
	r = mon->export_ops->subscribe(mon, p, len);
	printf("  %-26s subscribe refused: %s\n", "SysV shm", strerror(-r));
	CHECK_EQ(r, -EOPNOTSUPP);
	shmdt(p);
	return 1;
}

static int sysv_refused;

static void test_events(void)
{
	int k;

	printf("events (each must reach notify):\n");
	for (k = 0; k < K_NKINDS; k++)
		one_event((enum kind)k);
	sysv_refused = test_sysv();
}

/* ---- munmap-and-reuse: 3000 iterations, 0 stale hits ---- */

static void test_race(void)
{
	/* Why 3000: the count of issue 10's prototype measurement, and
	 * enough to hit the window many times over (it opens on every
	 * iteration: the lookup follows munmap by a few microseconds). */
	const int iters = 3000;
	size_t len = 2 * adp_page();
	void *a = map_anon(len);
	uint64_t gen;
	int it, stale = 0, hits = 0, misses = 0, r;

	for (it = 1; it <= iters; it++) {
		/* the same address every time: mapping it = new memory */
		if (it > 1 && !adp_remap_at(a, len))
			a = map_anon(len); /* address taken: move on */
		if (cache_lookup(a, len, &gen) == HIT) {
			hits++;
			if (gen != (uint64_t)it)
				stale++;
		} else {
			misses++;
			r = cache_insert(a, len, (uint64_t)it);
			CHECK(r >= 0);
		}
		/* a second lookup of the live mapping: a legitimate hit once
		 * nothing is in flight (the previous event may still be) */
		WAIT_FOR(uodp_ctx_sync(uodp_ofi_ctx()), 5000);
		if (cache_lookup(a, len, &gen) == HIT && gen != (uint64_t)it)
			stale++;
		CHECK(munmap(a, len) == 0);
	}
	CHECK(WAIT_FOR(uodp_ctx_sync(uodp_ofi_ctx()), 5000));
	cache_flush_all();
	printf("race: %d munmap-and-reuse iterations: %d stale, %d first "
	       "lookups missed, %d hit\n",
	       iters, stale, misses, hits);
	CHECK_EQ(stale, 0);
}

/* ---- the cache's lock pattern, 10^4 times ---- */

static atomic_bool locks_stop;

/* Keeps registering under the cache lock while events are delivered. */
static void *registrar(void *arg)
{
	size_t len = adp_page();
	void *p = map_anon(len);
	uint64_t gen;
	unsigned long n = 0;

	(void)arg;
	while (!atomic_load(&locks_stop)) {
		if (cache_lookup(p, len, &gen) == MISS)
			CHECK(cache_insert(p, len, 7) >= 0);
		n++;
	}
	cache_flush_all();
	munmap(p, len);
	return (void *)n;
}

static void on_alarm(int sig)
{
	static const char m[] = "locks: no progress in 120 s: deadlock\n";

	(void)sig;
	if (write(2, m, sizeof(m) - 1) < 0)
		_exit(1);
	_exit(1);
}

static void test_locks(void)
{
	/* Why 10^4: the count issue 9 asks for; one loop takes ~1 s. */
	const int iters = 10000;
	size_t len = adp_page();
	pthread_t t;
	void *p, *n;
	uint64_t t0 = adp_now_ns();
	int i, r;

	signal(SIGALRM, on_alarm);
	alarm(120);
	atomic_store(&locks_stop, false);
	CHECK(pthread_create(&t, NULL, registrar, NULL) == 0);
	for (i = 0; i < iters; i++) {
		p = map_anon(len);
		/* subscribe under the cache lock ... */
		pthread_mutex_lock(&cache_lock);
		r = find_free();
		CHECK(r >= 0);
		CHECK(mon->export_ops->subscribe(mon, p, len) == 0);
		ents[r] = (struct ent){ p, len, 1, true };
		/* ... and unmap while holding it: the event's notify needs
		 * the lock; it must wait on the relay thread, not block us */
		if (i % 2)
			CHECK(munmap(p, len) == 0);
		pthread_mutex_unlock(&cache_lock);
		if (!(i % 2))
			CHECK(munmap(p, len) == 0);
	}
	atomic_store(&locks_stop, true);
	CHECK(pthread_join(t, &n) == 0);
	CHECK(WAIT_FOR(uodp_ctx_sync(uodp_ofi_ctx()), 10000));
	cache_flush_all();
	alarm(0);
	printf("locks: %d subscribe-under-lock + munmap, %lu registrar "
	       "lookups, %.2f s, no deadlock\n",
	       iters, (unsigned long)(uintptr_t)n,
	       (double)(adp_now_ns() - t0) / 1e9);
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "all";
	struct uodp_ofi_stats st;
	int r;

	setvbuf(stdout, NULL, _IONBF, 0);
	r = uodp_ofi_import(0);
	adp_skip_if_no_monitor(r, "uodp_ofi_import");
	if (r) {
		fprintf(stderr, "uodp_ofi_import: %s\n", strerror(-r));
		return 1;
	}
	printf("imported as uid %d\n", (int)geteuid());
	CHECK_EQ(uodp_ofi_import(0), -EALREADY);
	CHECK_EQ(uodp_ofi_import(1), -EINVAL);
	mon = uodp_ofi_monitor();
	CHECK(mon && mon->import_ops && mon->import_ops->notify);
	CHECK(mon->export_ops->size >= sizeof(struct fi_ops_mem_monitor));
	lf_notify = mon->import_ops;
	mon->import_ops = &wrapped;
	CHECK_EQ(mon->export_ops->start(mon), 0);

	if (!strcmp(what, "events") || !strcmp(what, "all"))
		test_events();
	if (!strcmp(what, "race") || !strcmp(what, "all"))
		test_race();
	if (!strcmp(what, "locks") || !strcmp(what, "all"))
		test_locks();

	uodp_ofi_stats(&st);
	printf("stats: %llu subscribes, %llu unsubscribes, %llu notifies, "
	       "%llu invalid answers, %llu errors, %llu watched\n",
	       (unsigned long long)st.subscribes,
	       (unsigned long long)st.unsubscribes,
	       (unsigned long long)st.notifies, (unsigned long long)st.invalid,
	       (unsigned long long)st.sub_errors,
	       (unsigned long long)st.watched);
	CHECK_EQ(st.watched, 0);
	CHECK_EQ(st.sub_errors, (uint64_t)sysv_refused);
	mon->export_ops->stop(mon);
	mon->import_ops = lf_notify;
	CHECK_EQ(uodp_ofi_close(), 0);
	CHECK_EQ(uodp_ofi_close(), -ENOENT);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * queue.c - the asynchronous interface: queues of work requests and
 * completions, and the device's worker pool.
 *
 * Shape of mlx5's page-fault handling: exec workers run requests (dma.c
 * state machines) until they finish or miss the device page table; a
 * request that misses goes to the fault list, and the exec worker takes
 * the next request at once. Fault workers resolve misses through the
 * engine (which may wait for invalidations or populate many pages) and
 * put the request back on the exec list, where it resumes where it
 * stopped. So a request faulting on slow memory never stalls requests
 * whose pages are present.
 *
 * Locks: dev->pool_lock guards both lists, the pool's life cycle and the
 * device's queue list; q->lock guards a queue's job free list, completion
 * ring and counters. Neither is held while the other is taken, nor while a
 * request runs.
 *
 * A queue owns @depth jobs, allocated at creation. A post fails with
 * -ENOSPC while requests outstanding + completions not polled reach
 * @depth, so the completion ring (of @depth entries) never overflows; a
 * job returns to the free list as soon as its completion is in the ring.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device/device.h"

struct job {
	struct job *next;
	struct uodp_dev_queue *q;
	uint64_t wr_id;
	struct dop op;
	struct fault_req fr;
};

struct uodp_dev_queue {
	struct uodp_dev *dev;
	struct uodp_dev_queue *next, *prev; /* dev->queues, under pool_lock */
	pthread_mutex_t lock;
	pthread_cond_t cond; /* a completion arrived or outstanding fell */
	unsigned depth;
	struct job *jobs, *free;
	struct uodp_dev_wc *ring;
	unsigned head, count; /* completions not yet polled */
	unsigned outstanding; /* posted, not yet completed */
};

struct worker_arg {
	struct uodp_dev *dev;
	bool fault;
};

static void list_push(struct wlist *l, struct job *j)
{
	j->next = NULL;
	if (l->tail)
		l->tail->next = j;
	else
		l->head = j;
	l->tail = j;
}

static struct job *list_pop(struct wlist *l)
{
	struct job *j = l->head;

	if (j) {
		l->head = j->next;
		if (!l->head)
			l->tail = NULL;
	}
	return j;
}

static void enqueue(struct uodp_dev *dev, struct job *j, bool fault)
{
	pthread_mutex_lock(&dev->pool_lock);
	list_push(fault ? &dev->fault_list : &dev->exec_list, j);
	pthread_cond_signal(fault ? &dev->fault_cond : &dev->exec_cond);
	pthread_mutex_unlock(&dev->pool_lock);
}

static void complete(struct uodp_dev *dev, struct job *j)
{
	struct uodp_dev_queue *q = j->q;
	struct uodp_dev_wc wc = { .wr_id = j->wr_id,
				  .opcode = j->op.opcode,
				  .status = j->op.status,
				  .bytes = j->op.done,
				  .old = j->op.old };

	dop_finish(dev, &j->op);
	dev_count_error(dev, wc.status);
	dev_count(dev, ST_ASYNC_COMPLETED, 1);
	pthread_mutex_lock(&q->lock);
	q->ring[(q->head + q->count) % q->depth] = wc;
	q->count++;
	q->outstanding--;
	j->next = q->free;
	q->free = j;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

static void run_exec(struct uodp_dev *dev, struct job *j)
{
	if (dop_run(dev, &j->op, &j->fr))
		enqueue(dev, j, true);
	else
		complete(dev, j);
}

static void run_fault(struct uodp_dev *dev, struct job *j)
{
	int r;

	dev_count(dev, ST_ASYNC_FAULTS, 1);
	r = dop_fault(dev, &j->fr);
	if (r) {
		j->op.status = r;
		complete(dev, j);
		return;
	}
	enqueue(dev, j, false);
}

void (*dev_test_hook_worker_start)(void);

static void *worker(void *p)
{
	struct worker_arg *a = p;
	struct uodp_dev *dev = a->dev;
	bool fault = a->fault;
	struct wlist *l = fault ? &dev->fault_list : &dev->exec_list;
	pthread_cond_t *c = fault ? &dev->fault_cond : &dev->exec_cond;
	struct job *j;

	free(a);
	if (dev_test_hook_worker_start)
		dev_test_hook_worker_start();
	/* Our thread: its signal mask is ours. It was born with it
	 * (pool_start_locked()); this reads it back and lets our guarded
	 * windows skip their rt_sigprocmask() (recover.c). */
	(void)rcv_worker_mask();
	/* Nobody cancels a worker (pool_stop() asks it to return and joins
	 * it), so cancellation is off for good: the engine's own
	 * disable/restore pair around each fault then finds it off already
	 * and makes no atomic update of the thread's cancel state. */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
	/* Named, as the monitor's thread is: for ps/gdb, and so tests can
	 * tell our threads from a sanitizer's. Last, by the thread itself:
	 * a thread with the name has done its start-up (the creator naming
	 * it right after pthread_create() showed the name of a thread that
	 * had not yet run; test_worker_mask read its mask too early). */
	pthread_setname_np(pthread_self(),
			   fault ? "uodp-dev-fault" : "uodp-dev-exec");
	pthread_mutex_lock(&dev->pool_lock);
	for (;;) {
		while (!l->head && !dev->pool_stop)
			pthread_cond_wait(c, &dev->pool_lock);
		j = list_pop(l);
		if (!j)
			break; /* stopping, and nothing left */
		pthread_mutex_unlock(&dev->pool_lock);
		if (fault)
			run_fault(dev, j);
		else
			run_exec(dev, j);
		pthread_mutex_lock(&dev->pool_lock);
	}
	pthread_mutex_unlock(&dev->pool_lock);
	return NULL;
}

/* Start the pool; pool_lock held. */
static int pool_start_locked(struct uodp_dev *dev)
{
	unsigned n = dev->nexec + dev->nfault, i;
	struct worker_arg *a;
	sigset_t wmask, old;
	int r = -EAGAIN; /* no thread could be created */

	if (dev->pool_started)
		return 0;
	dev->threads = calloc(n, sizeof(*dev->threads));
	if (!dev->threads)
		return -ENOMEM;
	dev->pool_stop = false;
	/* A new thread inherits its creator's mask: create the workers
	 * with theirs (as notifier.c's start_thread()), so no asynchronous
	 * signal the caller leaves unblocked reaches a worker before it
	 * runs, and a worker's kernel mask is right from its first
	 * instruction, not only once it has been scheduled. The caller's
	 * asynchronous signals wait meanwhile; its mask is back before we
	 * return. */
	rcv_worker_sigset(&wmask);
	pthread_sigmask(SIG_SETMASK, &wmask, &old);
	for (i = 0; i < n; i++) {
		a = malloc(sizeof(*a));
		if (!a) {
			r = -ENOMEM; /* not "no thread": say what failed */
			goto err;
		}
		a->dev = dev;
		a->fault = i >= dev->nexec;
		if (pthread_create(&dev->threads[i], NULL, worker, a)) {
			free(a);
			goto err;
		}
		dev->nthreads++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	dev->pool_started = true;
	return 0;
err:
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	dev->pool_started = true; /* let pool_stop join what started */
	pthread_mutex_unlock(&dev->pool_lock);
	pool_stop(dev);
	pthread_mutex_lock(&dev->pool_lock);
	return r;
}

void pool_stop(struct uodp_dev *dev)
{
	unsigned i;

	pthread_mutex_lock(&dev->pool_lock);
	if (!dev->pool_started) {
		pthread_mutex_unlock(&dev->pool_lock);
		return;
	}
	dev->pool_stop = true;
	pthread_cond_broadcast(&dev->exec_cond);
	pthread_cond_broadcast(&dev->fault_cond);
	pthread_mutex_unlock(&dev->pool_lock);
	for (i = 0; i < dev->nthreads; i++)
		pthread_join(dev->threads[i], NULL);
	free(dev->threads);
	dev->threads = NULL;
	dev->nthreads = 0;
	dev->pool_started = false;
}

UODP_API int uodp_dev_queue_create(struct uodp_dev *dev, unsigned depth,
				   struct uodp_dev_queue **out)
{
	struct uodp_dev_queue *q;
	unsigned i;
	int r = dev_check(dev);

	if (r)
		return r;
	if (!out || !depth || depth > UODP_DEV_QUEUE_DEPTH_MAX)
		return -EINVAL;
	q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->dev = dev;
	q->depth = depth;
	q->jobs = calloc(depth, sizeof(*q->jobs));
	q->ring = calloc(depth, sizeof(*q->ring));
	r = -ENOMEM;
	if (!q->jobs || !q->ring)
		goto err_mem;
	if (pthread_mutex_init(&q->lock, NULL))
		goto err_mem;
	if (dev_cond_init_timed(&q->cond)) /* poll_wait's bound */
		goto err_lock;
	for (i = 0; i < depth; i++) {
		q->jobs[i].q = q;
		q->jobs[i].next = q->free;
		q->free = &q->jobs[i];
	}
	pthread_mutex_lock(&dev->pool_lock);
	r = pool_start_locked(dev);
	if (!r) {
		q->next = dev->queues;
		if (dev->queues)
			dev->queues->prev = q;
		dev->queues = q;
	}
	pthread_mutex_unlock(&dev->pool_lock);
	if (r)
		goto err_cond;
	*out = q;
	return 0;
err_cond:
	pthread_cond_destroy(&q->cond);
err_lock:
	pthread_mutex_destroy(&q->lock);
err_mem:
	free(q->jobs);
	free(q->ring);
	free(q);
	return r;
}

static void queue_free(struct uodp_dev_queue *q)
{
	struct uodp_dev *dev = q->dev;

	pthread_mutex_lock(&q->lock);
	while (q->outstanding)
		pthread_cond_wait(&q->cond, &q->lock);
	pthread_mutex_unlock(&q->lock);

	pthread_mutex_lock(&dev->pool_lock);
	if (q->prev)
		q->prev->next = q->next;
	else
		dev->queues = q->next;
	if (q->next)
		q->next->prev = q->prev;
	pthread_mutex_unlock(&dev->pool_lock);

	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
	free(q->jobs);
	free(q->ring);
	free(q);
}

UODP_API int uodp_dev_queue_destroy(struct uodp_dev_queue *q)
{
	int r;

	if (!q)
		return -EINVAL;
	r = dev_check(q->dev);
	if (r)
		return r;
	if (callback_check(true)) {
		/* Its requests may wait for the invalidation calling back
		 * (a strict device's fence): refuse, keep the queue. */
		pthread_mutex_lock(&q->lock);
		r = q->outstanding ? -EDEADLK : 0;
		pthread_mutex_unlock(&q->lock);
		if (r)
			return r;
	}
	r = dev_nocancel_begin(); /* waits for the queue's requests */
	queue_free(q);
	dev_nocancel_end(r);
	return 0;
}

void queues_destroy_all(struct uodp_dev *dev)
{
	struct uodp_dev_queue *q;

	for (;;) {
		pthread_mutex_lock(&dev->pool_lock);
		q = dev->queues;
		pthread_mutex_unlock(&dev->pool_lock);
		if (!q)
			return;
		queue_free(q);
	}
}

UODP_API int uodp_dev_post(struct uodp_dev_queue *q,
			   const struct uodp_dev_wr *wr)
{
	struct uodp_dev *dev;
	struct job *j;
	int r;

	if (!q)
		return -EINVAL;
	dev = q->dev;
	r = dev_check(dev);
	if (r)
		return r;
	if (!wr)
		return -EINVAL;
	pthread_mutex_lock(&q->lock);
	j = NULL;
	if (q->outstanding + q->count < q->depth) {
		j = q->free; /* there is one: outstanding < depth */
		q->free = j->next;
		q->outstanding++;
	}
	pthread_mutex_unlock(&q->lock);
	if (!j)
		return -ENOSPC;

	memset(&j->op, 0, sizeof(j->op));
	j->wr_id = wr->wr_id;
	j->op.opcode = wr->opcode;
	j->op.key = wr->key;
	j->op.va = wr->va;
	j->op.len = wr->len;
	j->op.buf = wr->buf;
	j->op.key2 = wr->src_key;
	j->op.va2 = wr->src_va;
	j->op.cmp_add = wr->compare_add;
	j->op.swap = wr->swap;
	r = dop_prepare(dev, &j->op);
	if (r) {
		dev_count_error(dev, r);
		pthread_mutex_lock(&q->lock);
		j->next = q->free;
		q->free = j;
		q->outstanding--;
		pthread_cond_broadcast(&q->cond);
		pthread_mutex_unlock(&q->lock);
		return r;
	}
	dev_count(dev, ST_ASYNC_POSTED, 1);
	enqueue(dev, j, false);
	return 0;
}

/* Take up to @max completions; q->lock held. */
static int take_locked(struct uodp_dev_queue *q, struct uodp_dev_wc *wc,
		       int max)
{
	int n = 0;

	while (n < max && q->count) {
		wc[n++] = q->ring[q->head];
		q->head = (q->head + 1) % q->depth;
		q->count--;
	}
	return n;
}

static int poll_common(struct uodp_dev_queue *q, struct uodp_dev_wc *wc,
		       int max, int timeout_ms, bool wait)
{
	struct timespec ts;
	int r, n, cs;

	if (!q || max < 0 || (!wc && max > 0))
		return -EINVAL;
	r = dev_check(q->dev);
	if (r)
		return r;
	/* on CLOCK_MONOTONIC, as q->cond (device.h) */
	if (wait && timeout_ms >= 0)
		dev_deadline(&ts, timeout_ms);
	cs = dev_nocancel_begin(); /* the wait holds q->lock */
	pthread_mutex_lock(&q->lock);
	/* A wait without bound for requests that may wait for the
	 * invalidation calling back (a strict device's fence) never ends. */
	if (wait && timeout_ms < 0 && max > 0 && !q->count && q->outstanding &&
	    callback_check(true)) {
		pthread_mutex_unlock(&q->lock);
		dev_nocancel_end(cs);
		return -EDEADLK;
	}
	while (wait && max > 0 && !q->count && q->outstanding) {
		if (timeout_ms < 0)
			pthread_cond_wait(&q->cond, &q->lock);
		else if (pthread_cond_timedwait(&q->cond, &q->lock, &ts))
			break;
	}
	n = take_locked(q, wc, max);
	pthread_mutex_unlock(&q->lock);
	dev_nocancel_end(cs);
	return n;
}

UODP_API int uodp_dev_poll(struct uodp_dev_queue *q, struct uodp_dev_wc *wc,
			   int max)
{
	return poll_common(q, wc, max, 0, false);
}

UODP_API int uodp_dev_poll_wait(struct uodp_dev_queue *q,
				struct uodp_dev_wc *wc, int max, int timeout_ms)
{
	return poll_common(q, wc, max, timeout_ms, true);
}

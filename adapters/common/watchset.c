/* SPDX-License-Identifier: MIT */
/*
 * watchset.c - the adapters' table of watches by (addr, len): a chained
 * hash table, chains in insertion order. See watchset.h.
 */
#include <errno.h>
#include <stdlib.h>

#include "watchset.h"

struct watchset_node {
	struct watchset_node *next;
	const void *addr;
	size_t len;
	struct uodp_umem *umem;
};

static size_t bucket_of(const void *addr, size_t len)
{
	uint64_t h = ((uint64_t)(uintptr_t)addr >> 12) ^ ((uint64_t)len << 7);

	h *= 0x9e3779b97f4a7c15ull; /* Fibonacci hashing: top bits mix all */
	return (size_t)(h >> 52) & (WATCHSET_BUCKETS - 1);
}

int watchset_add(struct watchset *ws, struct uodp_ctx *ctx, void *addr,
		 size_t len, void *priv)
{
	struct watchset_node *n = malloc(sizeof(*n)), **pp;
	int r;

	if (!n)
		return -ENOMEM;
	r = uodp_umem_get(ctx, addr, len, UODP_ACCESS_WATCH, &n->umem);
	if (r) {
		free(n);
		return r;
	}
	uodp_umem_set_priv(n->umem, priv);
	n->addr = addr;
	n->len = len;
	n->next = NULL;
	pthread_mutex_lock(&ws->lock);
	for (pp = &ws->buckets[bucket_of(addr, len)]; *pp; pp = &(*pp)->next)
		;
	*pp = n;
	pthread_mutex_unlock(&ws->lock);
	atomic_fetch_add(&ws->count, 1);
	return 0;
}

int watchset_remove(struct watchset *ws, const void *addr, size_t len)
{
	struct watchset_node *n, **pp;

	pthread_mutex_lock(&ws->lock);
	for (pp = &ws->buckets[bucket_of(addr, len)]; (n = *pp); pp = &n->next)
		if (n->addr == addr && n->len == len) {
			*pp = n->next;
			break;
		}
	pthread_mutex_unlock(&ws->lock);
	if (!n)
		return -ENOENT;
	uodp_umem_release(n->umem);
	atomic_fetch_sub(&ws->count, 1);
	free(n);
	return 0;
}

uint64_t watchset_clear(struct watchset *ws)
{
	struct watchset_node *list = NULL, *n, *next;
	uint64_t k = 0;
	size_t i;

	pthread_mutex_lock(&ws->lock);
	for (i = 0; i < WATCHSET_BUCKETS; i++) {
		for (n = ws->buckets[i]; n; n = next) {
			next = n->next;
			n->next = list;
			list = n;
		}
		ws->buckets[i] = NULL;
	}
	pthread_mutex_unlock(&ws->lock);
	for (n = list; n; n = next) {
		next = n->next;
		uodp_umem_release(n->umem);
		atomic_fetch_sub(&ws->count, 1);
		free(n);
		k++;
	}
	return k;
}

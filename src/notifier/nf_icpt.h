/* SPDX-License-Identifier: MIT */
/*
 * nf_icpt.h - what intercept.c (the in-thread fast path, see intercept.h)
 * needs from notifier.c and watch.c. Internal to src/notifier.
 */
#ifndef UODP_NOTIFIER_NF_ICPT_H
#define UODP_NOTIFIER_NF_ICPT_H

#include <stdbool.h>
#include <stdint.h>

#include "notifier/nf.h"

/* notifier.c */
bool nf_trylock(struct nf_lock *l);
/* Deliver @n events from the calling thread as the monitor delivers a
 * kernel event: strict subscribers fenced (not those with UNF_FENCE_READS),
 * begin, finish (or queued to the relay for deferred ones), unfence. A
 * REMAP followed by an UNMAP is a move (source, destination): with @moves
 * (the call succeeded) it is reported to the moved op first. Takes
 * subs_lock. */
void nf_deliver_local(const uint64_t *start, const uint64_t *end,
		      const enum unf_event *ev, unsigned n, bool moves);
/* intercept.c: hand our ops to libuodp-hooks.so if it is loaded (once). */
void nf_icpt_attach(void);

/* watch.c: the records' filter (see there and intercept.h) */
#define NF_FILTER_SHIFT 21
#define NF_FILTER_BITS 4096
extern _Atomic uint64_t nf_filter[NF_FILTER_BITS / 64];
void nf_filter_add(uint64_t s, uint64_t e); /* watch_lock held */

/* watch.c (watch_lock held) */
/* The registered pieces overlapping [s, e), clipped, into @out (at most
 * @max; -1 when there are more, nothing changed then). With @cut they
 * leave the pieces, without allocating. Applies the monitor's log first. */
int nf_icpt_claim(uint64_t s, uint64_t e, struct nf_piece *out, size_t max,
		  bool cut);
/* Is [s, e) still inside the pieces of one record? */
bool nf_icpt_covered(uint64_t s, uint64_t e);
/* Is [s, e) watched: 2 inside one record, 1 partly in records, 0 in
 * none (whatever the pieces say). */
int nf_icpt_recorded(uint64_t s, uint64_t e);
/* Any lock: the pieces may be wrong (a registration could not be
 * restored): the next sync forgets them all, prepare re-registers. */
void nf_icpt_mark_dirty(void);

#endif

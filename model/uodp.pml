/*
 * uodp.pml - a Promela model of the uodp 0.2 retry protocol
 * ("periods + stripes"), for the SPIN model checker.
 *
 * What is modelled (model/MAPPING.md maps every name to the C code):
 *
 *   - one context with an invalidation count `active` and a `period`
 *     (odd while invalidations run, even when idle), both under inv_lock;
 *   - up to two regions, X (registered at start) and Y (registered by the
 *     `registrar` process, possibly while an invalidation runs), each with
 *     a `birth` period, a `dying` flag and NS = 2 stripes (seq, count);
 *     both regions cover the same two pages, one page per stripe;
 *   - the address space: each page holds a generation `gen[p]`; a change
 *     (munmap + mmap again at the same address) bumps it;
 *   - faulters: read_begin (wait for ready and idle stripes, read the seq
 *     sum of the window), populate without locks (read gen of each page of
 *     the window, one page per step), then under the region lock the
 *     retry check, the install into the engine table and the driver's
 *     copy into its device table;
 *   - invalidations: one-shot (monitor, after the fact; the caller's own
 *     uodp_invalidate_range), bracketed start/end with a token (manual
 *     contexts), and context teardown;
 *   - the strict fence of UODP_CTX_STRICT.
 *
 * Every critical section of a mutex (inv_lock, a region lock, the device
 * page-table lock) touches only state that lock protects, so it is one
 * atomic step; condition waits are explicit sleep flags cleared by the
 * broadcasts the protocol specifies; the tree rwlock is a reader count
 * that registration (a writer, one atomic step) waits to see at zero.
 *
 * Scenario switches (exactly one):
 *   SC_MON       monitor context: mutator (2 changes) + monitor, 2 faulters
 *   SC_STRICT    SC_MON with UODP_CTX_STRICT (fence before the event read)
 *   SC_MANUAL    manual context: bracketed start/change/end, a concurrent
 *                one-shot after-the-fact change, registration of Y,
 *                faulters on X and Y
 *   SC_TEARDOWN  monitor context: one change + monitor, context teardown,
 *                2 faulters
 *   SC_NOOVERLAP endless changes of page 1, one faulter on page 0 only
 *                (liveness only: counters wrap, see SEQMOD)
 * Other switches:
 *   LIVE         add the LTL liveness claim instead of the safety watcher
 *   GIVEUP       a retrying fault may give up (-EBUSY of map_and_lock)
 * Mutants (injected bugs; each must make a check fail):
 *   RETRY_WITHOUT_LOCK  the retry check and the install are two critical
 *                       sections (check result is stale at install)
 *   END_WITHOUT_TOKEN   manual end accounts the range the caller passes to
 *                       end, not the one start used (mismatched end)
 *   END_ALL_REGIONS     end accounts every region it finds, also those
 *                       registered since start (born in its period)
 *   NO_BIRTH            a region registered during an invalidation is
 *                       born ready (birth = 0)
 *   WALK_BEFORE_BEGIN   bracketed start walks the tree before active++
 *   END_NO_SEQ          end lowers count without bumping seq
 *   ACCOUNT_AFTER_DROP  start raises counts only after callback + drop
 *   STRIPE_FIRST_ONLY   only the first stripe of a range is accounted
 *   NO_FENCE            strict monitor reads the event without fencing
 *   NO_DYING            teardown's dying flag is ignored by the fault path
 *   NO_BROADCAST        end does not wake waiters when a count hits zero
 *   NO_STRIPES          every invalidation accounts every stripe (0.1-like)
 */

#define NR 2		/* regions: 0 = X, 1 = Y */
#define NP 2		/* pages; page s is stripe s of each region */
#define NF 2		/* faulters */
#define NONE 255	/* no entry */
#define IDX(r, p) ((r) * NP + (p))
#define SBIT(r, s) (1 << IDX(r, s))

#ifdef SC_NOOVERLAP
#define SEQMOD 4	/* the endless scenario wraps its counters */
#define PERMOD 4
#else
#define SEQMOD 250
#define PERMOD 250
#endif
#ifdef LIVE
#define GENMOD 1	/* no control flow reads gen, entry or dev: only the
			 * safety properties do, so liveness runs drop them */
#else
#define GENMOD 250
#endif

#ifdef SC_STRICT
#define SC_MON
#define STRICT
#endif

/* ---- state ---------------------------------------------------------- */

byte gen[NP];		/* address space: generation of each page */
byte entry[NR * NP];	/* engine table: generation installed, or NONE */
byte dev[NR * NP];	/* device table (the driver's copy) */

bool present[NR];	/* in the region tree */
byte birth[NR];		/* 0, or the (odd) period it was registered in */
bool dying[NR];
byte seq[NR * NP];	/* per stripe, under the region lock */
byte count[NR * NP];

byte nactive;	/* ctx->active, under inv_lock */
byte period;		/* ctx->period, under inv_lock */
byte readers;		/* tree_lock held for reading */

bool fenced;		/* strict: device paused */
bool ev;		/* a kernel event is queued (unmapper blocked) */
byte evm;		/* its range, as a page mask */

byte fr[NF];		/* faulter f's region */
byte fw[NF];		/* faulter f's window, as a stripe mask */
bool sleep_ctx[NF];	/* waiting for the period to move on */
bool sleep_reg[NF];	/* waiting on the region's condition variable */
bool fin[NF];		/* fault returned (installed, -ENODEV, -EBUSY) */

/* ghosts: not in the C code, only for the properties */
byte running[NP];	/* invalidations covering p, from the change (or
			 * manual start) until the invalidation returned */
byte unread[NP];	/* changes of p whose syscall has not returned */
bool torn[NR];		/* teardown's invalidation of the region returned */

/* ---- helpers -------------------------------------------------------- */

#define READY(r) (birth[r] == 0 || birth[r] != period)
#define BORN_IN(r, P) (birth[r] != 0 && birth[r] == (P))
#define SEQSUM(r, w) \
	(((w) & 1 -> seq[IDX(r, 0)] : 0) + ((w) & 2 -> seq[IDX(r, 1)] : 0))
#define WBUSY(r, w) \
	((((w) & 1) && count[IDX(r, 0)] > 0) || \
	 (((w) & 2) && count[IDX(r, 1)] > 0))
#ifdef NO_DYING
#define DEAD(r) false
#else
#define DEAD(r) dying[r]
#endif
#define RETRY(r, w, s0) (!READY(r) || WBUSY(r, w) || SEQSUM(r, w) != (s0))

/* Stripes of a region that an invalidation of pages m accounts. */
#if defined(NO_STRIPES)
#define SMASK(m) 3
#elif defined(STRIPE_FIRST_ONLY)
#define SMASK(m) (((m) & 1) -> 1 : (m))
#else
#define SMASK(m) (m)
#endif

#define WAKE_REG(r) \
	if :: fr[0] == (r) -> sleep_reg[0] = 0 :: else -> skip fi; \
	if :: fr[1] == (r) -> sleep_reg[1] = 0 :: else -> skip fi
#define WAKE_CTX sleep_ctx[0] = 0; sleep_ctx[1] = 0

/* ---- context: inv_lock sections ------------------------------------ */

inline ctx_begin(P)
{
	atomic {
		if
		:: nactive == 0 -> period = (period + 1) % PERMOD
		:: else -> skip
		fi;
		nactive++;
		P = period
	}
}

inline ctx_end()
{
	atomic {
		nactive--;
		if
		:: nactive == 0 -> period = (period + 1) % PERMOD; WAKE_CTX
		:: else -> skip
		fi
	}
}

/* ---- one region: start accounting, callback, drop, end accounting --- */

inline acct_start(r, m, P, a)
{
	atomic {
		if
		:: BORN_IN(r, P) -> skip
		:: else ->
			if
			:: (SMASK(m) & 1) -> count[IDX(r, 0)]++; a = a | SBIT(r, 0)
			:: else -> skip
			fi;
			if
			:: (SMASK(m) & 2) -> count[IDX(r, 1)]++; a = a | SBIT(r, 1)
			:: else -> skip
			fi
		fi
	}
}

inline cb_drop(r, m)
{
	/* the driver's invalidate_range callback: its device table */
	atomic {
		if :: (m & 1) -> dev[IDX(r, 0)] = NONE :: else -> skip fi;
		if :: (m & 2) -> dev[IDX(r, 1)] = NONE :: else -> skip fi
	}
	/* the engine drops its own entries (region lock) */
	atomic {
		if :: (m & 1) -> entry[IDX(r, 0)] = NONE :: else -> skip fi;
		if :: (m & 2) -> entry[IDX(r, 1)] = NONE :: else -> skip fi
	}
}

inline region_start(r, m, P, a)
{
#ifndef ACCOUNT_AFTER_DROP
	acct_start(r, m, P, a);
	cb_drop(r, m)
#else
	cb_drop(r, m);
	acct_start(r, m, P, a)
#endif
}

/* End of stripe s: accounted iff start accounted it (the ghost token bits
 * `a` say what start did: property (b)). */
#ifdef END_ALL_REGIONS
#define END_SKIPS(r, P) false
#else
#define END_SKIPS(r, P) BORN_IN(r, P)
#endif
inline end_stripe(r, s, m, P, a)
{
	if
	:: (!END_SKIPS(r, P) && (SMASK(m) & (1 << s))) ->
		assert((a & SBIT(r, s)) != 0);
		assert(count[IDX(r, s)] > 0);
#ifndef END_NO_SEQ
		seq[IDX(r, s)] = (seq[IDX(r, s)] + 1) % SEQMOD;
#endif
		count[IDX(r, s)]--;
#ifndef NO_BROADCAST
		if :: count[IDX(r, s)] == 0 -> WAKE_REG(r) :: else -> skip fi
#else
		skip
#endif
	:: else ->
		assert((a & SBIT(r, s)) == 0)
	fi
}

inline region_end(r, m, P, a)
{
	atomic {
		end_stripe(r, 0, m, P, a);
		end_stripe(r, 1, m, P, a)
	}
}

/* The start walk over the tree (read lock); one_shot ends each region in
 * the same walk (uodp_invalidate_range). */
inline walk_start(m, P, a, os)
{
	atomic { readers++ }
	if
	:: present[0] ->
		region_start(0, m, P, a);
		if :: os -> region_end(0, m, P, a) :: else -> skip fi
	:: else -> skip
	fi;
	if
	:: present[1] ->
		region_start(1, m, P, a);
		if :: os -> region_end(1, m, P, a) :: else -> skip fi
	:: else -> skip
	fi;
	atomic { readers-- }
}

/* The end walk of a bracketed invalidation: walks again (regions
 * registered since start are in the tree now) with the token's range and
 * period. */
inline walk_end(m, P, a)
{
	atomic { readers++ }
	if :: present[0] -> region_end(0, m, P, a) :: else -> skip fi;
	if :: present[1] -> region_end(1, m, P, a) :: else -> skip fi;
	atomic { readers-- }
}

/* uodp_invalidate_range(): begin, one walk, end. */
inline one_shot(m, P, a)
{
	a = 0;
	ctx_begin(P);
	walk_start(m, P, a, true);
	ctx_end()
}

inline pick_range(m)
{
	if
	:: m = 1
	:: m = 2
	:: m = 3
	fi
}

/* An address-space change of pages m: munmap + mmap again. */
#define CHANGE(m) \
	if :: (m & 1) -> gen[0] = (gen[0] + 1) % GENMOD :: else -> skip fi; \
	if :: (m & 2) -> gen[1] = (gen[1] + 1) % GENMOD :: else -> skip fi
#define GHOST_ADD(arr, m) \
	if :: (m & 1) -> arr[0]++ :: else -> skip fi; \
	if :: (m & 2) -> arr[1]++ :: else -> skip fi
#define GHOST_SUB(arr, m) \
	if :: (m & 1) -> arr[0]-- :: else -> skip fi; \
	if :: (m & 2) -> arr[1]-- :: else -> skip fi

/* ---- processes ------------------------------------------------------ */

/* A device fault on window fw[f] of region fr[f]: uodp_umem_read_begin,
 * then uodp_umem_map_and_lock (populate, lock, uodp_umem_read_retry,
 * install), the driver's copy into its table, unlock. */
proctype faulter(byte f)
{
	byte r = fr[f], w = fw[f];
	byte s0, g0, g1;

	present[r];	/* a fault needs a registered region */
begin:
	/* read_begin: region lock (and the period, written under inv_lock) */
	atomic {
		if
		:: DEAD(r) -> goto enodev
		:: !DEAD(r) && !READY(r) -> sleep_ctx[f] = 1
		:: !DEAD(r) && READY(r) && WBUSY(r, w) -> sleep_reg[f] = 1
		:: !DEAD(r) && READY(r) && !WBUSY(r, w) ->
			s0 = SEQSUM(r, w); goto populate
		fi
	}
	/* condition wait: the lock is released with the sleep, retaken
	 * after the broadcast, and the condition checked again */
	(!sleep_ctx[f] && !sleep_reg[f]);
	goto begin;

populate:
	/* no lock: each page read as it is now */
	if :: (w & 1) -> g0 = gen[0] :: else -> skip fi;
	if :: (w & 2) -> g1 = gen[1] :: else -> skip fi;

	/* lock; retry check; install; the driver copies; unlock */
	atomic {
		if
		:: DEAD(r) -> goto enodev
		:: !DEAD(r) && RETRY(r, w, s0) ->
#ifdef GIVEUP
			if
			:: goto begin
			:: goto done	/* -EBUSY after timeout_ms */
			fi
#else
			goto begin
#endif
		:: else -> skip
		fi;
#ifdef RETRY_WITHOUT_LOCK
	}
	/* the mutant: the lock is dropped and retaken between the check
	 * and the install, so the check's answer may be stale */
	atomic {
#endif
		if
		:: (w & 1) -> entry[IDX(r, 0)] = g0; dev[IDX(r, 0)] = g0
		:: else -> skip
		fi;
		if
		:: (w & 2) -> entry[IDX(r, 1)] = g1; dev[IDX(r, 1)] = g1
		:: else -> skip
		fi;
		fin[f] = 1
	}
	goto out;
enodev:
done:
	fin[f] = 1;
out:
	skip
}

/* The kernel monitor thread: one queued event at a time; strict mode
 * fences the driver before the read that releases the unmapper. */
proctype monitor()
{
	byte m, P, a;
end_idle:
	do
	:: ev ->
#if defined(STRICT) && !defined(NO_FENCE)
		fenced = 1;
#endif
		atomic { m = evm; ev = 0; GHOST_SUB(unread, m) }
		one_shot(m, P, a);
		atomic { GHOST_SUB(running, m); m = 0; P = 0; a = 0 }
#ifdef STRICT
		fenced = 0
#else
		skip
#endif
	od
}

/* A thread of the application that changes the address space; each
 * change blocks until the monitor has read its event. */
proctype mutator(byte n)
{
	byte m;
#ifdef SC_NOOVERLAP
end_loop:
	do
	:: atomic {
		!ev -> CHANGE(2); GHOST_ADD(running, 2); GHOST_ADD(unread, 2);
		evm = 2; ev = 1
	   }
	od
#else
	do
	:: n > 0 ->
		pick_range(m);
		atomic {
			!ev -> CHANGE(m); GHOST_ADD(running, m);
			GHOST_ADD(unread, m); evm = m; ev = 1
		}
		!ev;	/* munmap returns */
		n--; m = 0
	:: else -> break
	od
#endif
}

/* Manual context: uodp_invalidate_range_start(&tok, range), change,
 * uodp_invalidate_range_end(&tok). */
proctype bracket()
{
	byte m, P, a;
#ifdef END_WITHOUT_TOKEN
	byte m2;
#endif
	pick_range(m);
#ifndef WALK_BEFORE_BEGIN
	ctx_begin(P);
	atomic { GHOST_ADD(running, m) }
	walk_start(m, P, a, false);
#else
	atomic { P = period | 1 }	/* the period it expects to start */
	walk_start(m, P, a, false);
	ctx_begin(P);
	atomic { GHOST_ADD(running, m) }
#endif
	atomic { CHANGE(m) }
#ifdef END_WITHOUT_TOKEN
	pick_range(m2);
	walk_end(m2, P, a);
#else
	walk_end(m, P, a);
#endif
	ctx_end();
	atomic { GHOST_SUB(running, m) }
}

/* Manual context: the caller changed the address space, then reports it
 * with the one-shot uodp_invalidate_range(). */
proctype after_fact()
{
	byte m, P, a;
	pick_range(m);
	atomic { CHANGE(m); GHOST_ADD(running, m) }
	one_shot(m, P, a);
	atomic { GHOST_SUB(running, m) }
}

/* uodp_umem_get of Y: tree write lock, birth from the period. */
proctype registrar()
{
	atomic {
		readers == 0 ->
#ifdef NO_BIRTH
		birth[1] = 0;
#else
		birth[1] = ((period & 1) -> period : 0);
#endif
		present[1] = 1
	}
}

/* uodp_ctx_destroy: mark every region dying, wake all waiters, then
 * invalidate every region whole. */
proctype teardown()
{
	byte P, a;
	atomic {
		dying[0] = present[0]; dying[1] = present[1];
		WAKE_CTX; sleep_reg[0] = 0; sleep_reg[1] = 0
	}
	one_shot(3, P, a);
	atomic { torn[0] = dying[0]; torn[1] = dying[1] }
}

/* ---- properties ----------------------------------------------------- */

#define STALE(x, p) ((x) != NONE && (x) != gen[p])
/* an engine entry is current, or an invalidation of its page runs */
#define E_OK(r, p) (!STALE(entry[IDX(r, p)], p) || running[p] > 0)
#ifdef STRICT
/* strict: a device entry is current, or the device is fenced, or the
 * unmapping call has not returned yet (nothing can be done about that) */
#define D_OK(r, p) (!STALE(dev[IDX(r, p)], p) || unread[p] > 0 || fenced)
#else
#define D_OK(r, p) (!STALE(dev[IDX(r, p)], p) || running[p] > 0)
#endif
/* after teardown's invalidation of a region, it holds no entry */
#define T_OK(r) \
	(!torn[r] || (entry[IDX(r, 0)] == NONE && entry[IDX(r, 1)] == NONE && \
		      dev[IDX(r, 0)] == NONE && dev[IDX(r, 1)] == NONE))
#define ENGINE_OK (E_OK(0, 0) && E_OK(0, 1) && E_OK(1, 0) && E_OK(1, 1))
#define DEVICE_OK (D_OK(0, 0) && D_OK(0, 1) && D_OK(1, 0) && D_OK(1, 1))
#define TORN_OK (T_OK(0) && T_OK(1))

#ifdef LIVE
ltl live { <> (fin[0] && fin[1]) }
#else
/* checked in every reachable state (the process can run at any point) */
active proctype watch()
{
	atomic {
		assert(DEVICE_OK);
		assert(ENGINE_OK);
		assert(TORN_OK)
	}
}
#endif

init
{
	byte i;
	atomic {
		for (i : 0 .. NR * NP - 1) {
			entry[i] = NONE; dev[i] = NONE
		}
		present[0] = 1;	/* X registered while idle: birth 0 */
#if defined(SC_MON)
		fr[0] = 0; fw[0] = 2;
		fr[1] = 0; fw[1] = 3;
		run monitor(); run mutator(2);
		run faulter(0); run faulter(1)
#elif defined(SC_MANUAL)
		fr[0] = 0; fw[0] = 1;
		fr[1] = 1; fw[1] = 3;
		run bracket(); run after_fact(); run registrar();
		run faulter(0); run faulter(1)
#elif defined(SC_TEARDOWN)
		fr[0] = 0; fw[0] = 1;
		fr[1] = 0; fw[1] = 3;
		run monitor(); run mutator(1); run teardown();
		run faulter(0); run faulter(1)
#elif defined(SC_NOOVERLAP)
		fr[0] = 0; fw[0] = 1;
		fr[1] = 1; fin[1] = 1;	/* no second faulter */
		run monitor(); run mutator(0);
		run faulter(0)
#else
#error "select a scenario: -DSC_MON, -DSC_STRICT, -DSC_MANUAL, -DSC_TEARDOWN or -DSC_NOOVERLAP"
#endif
	}
}

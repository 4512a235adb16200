#!/usr/bin/env bash
# check.sh - model-check the 0.2 retry protocol (model/uodp.pml) with SPIN.
#
# Runs every scenario exhaustively for safety (assertions, invalid end
# states) and for liveness under weak fairness (pan -a -f), then runs each
# injected bug (mutant) and requires SPIN to find the violation it causes.
#
# Exit 0: all checks passed and all mutants were caught.
# Exit 1: a check failed, a mutant survived, or a run was incomplete.
# Exit 77: spin or a C compiler is missing (CTest reports a skip).
#
# Environment: SPIN, CC (default spin, gcc); MODEL_JOBS runs that many
# verifications at once (default 2); MODEL_KEEP=dir keeps the work
# directories (pan output and counterexample trails) there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model=$here/uodp.pml
SPIN=${SPIN:-spin}
CC=${CC:-gcc}

if ! command -v "$SPIN" >/dev/null 2>&1; then
	echo "model: SKIP: '$SPIN' not found (install the spin package)"
	exit 77
fi
if ! command -v "$CC" >/dev/null 2>&1; then
	echo "model: SKIP: C compiler '$CC' not found"
	exit 77
fi
[ -r "$model" ] || { echo "model: FAIL: $model not readable"; exit 1; }

if [ -n "${MODEL_KEEP:-}" ]; then
	work=$MODEL_KEEP
	mkdir -p "$work"
else
	work=$(mktemp -d "${TMPDIR:-/tmp}/uodp-model.XXXXXX")
	trap 'rm -rf "$work"' EXIT
fi

# Search depth bound: far above the deepest run (about 280 steps); pan
# says so if it is ever reached, and we treat that as a failure.
DEPTH=20000
# pan's memory bound in MB (the largest run needs about 500).
MEMLIM=4000

JOBS=${MODEL_JOBS:-2}
t_all=$(date +%s)

# verify NAME MODE EXPECT OPT FLAGS...
#   MODE   safety (assertions, invalid end states) or live (pan -a -f:
#          acceptance cycles under weak fairness)
#   EXPECT "pass", or the pattern of the violation a mutant must cause
#   OPT    gcc optimisation for pan (-O2 for the big runs; -O0 compiles
#          four times faster and is enough for the small ones)
# Writes one line to NAME/result: PASS, FAIL, CAUGHT or MISSED, then text.
verify() {
	local name=$1 mode=$2 expect=$3 opt=$4
	shift 4
	local dir=$work/$name
	local cflags=("$opt" -w -DCOLLAPSE -DMEMLIM=$MEMLIM -DNFAIR=3)
	local pflags=(-m$DEPTH)
	local out=$dir/pan.out res=$dir/result
	local bad=FAIL ok=PASS

	[ "$expect" = pass ] || { bad=MISSED; ok=CAUGHT; }
	mkdir -p "$dir"
	if [ "$mode" = live ]; then
		set -- -DLIVE "$@"
		pflags+=(-a -f)
	else
		cflags+=(-DSAFETY)
	fi
	if ! (cd "$dir" && "$SPIN" "$@" -a "$model") >"$dir/spin.log" 2>&1; then
		echo "$bad spin -a $* failed: $(head -3 "$dir/spin.log" | tr '\n' ' ')" >"$res"
		return 0
	fi
	if ! (cd "$dir" && "$CC" "${cflags[@]}" -o pan pan.c) >"$dir/cc.log" 2>&1; then
		echo "$bad compiling pan failed: $(head -3 "$dir/cc.log" | tr '\n' ' ')" >"$res"
		return 0
	fi
	local t0 t1 secs e sv st
	t0=$(date +%s.%N)
	# pan's exit status does not tell errors apart: read its report
	(cd "$dir" && ./pan "${pflags[@]}") >"$out" 2>&1 || true
	t1=$(date +%s.%N)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	e=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | head -1)
	sv=$(sed -n 's/.*State-vector \([0-9]*\) byte.*/\1/p' "$out" | head -1)
	st=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | head -1)
	if grep -qE 'max search depth too small|out of memory|MEMLIM|aborted' "$out"; then
		echo "$bad incomplete search: $(grep -m1 -E 'too small|memory|MEMLIM|aborted' "$out")" >"$res"
	elif [ -z "$e" ]; then
		echo "$bad no report from pan: $(head -2 "$out" | tr '\n' ' ')" >"$res"
	elif [ "$expect" = pass ]; then
		if [ "$e" -eq 0 ]; then
			echo "PASS vector ${sv:-?} B, ${st:-?} states stored, run ${secs}s" >"$res"
		else
			echo "FAIL $e error(s): $(grep -m1 -E 'pan:1:' "$out" | cut -c1-160)" >"$res"
		fi
	elif [ "$e" -gt 0 ] && grep -qE "$expect" "$out"; then
		echo "CAUGHT $(grep -m1 -oE "$expect" "$out") at depth $(sed -n 's/.*(at depth \([0-9]*\)).*/\1/p' "$out" | head -1), ${st:-?} states, run ${secs}s" >"$res"
	else
		echo "MISSED errors=$e, expected: $expect" >"$res"
	fi
	return 0
}

names=()
# job NAME ... : run verify in the background, at most $JOBS at a time.
job() {
	names+=("$1")
	while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
		wait -n || true
	done
	verify "$@" &
}

echo "model: $("$SPIN" -V | head -1); $("$CC" --version | head -1); $JOBS jobs"

# Real checks: safety (assertions + deadlocks), then liveness. The
# longest first, so that the two cores stay busy.
job manual-live        live   pass -O2 -DSC_MANUAL
job manual-safety      safety pass -O2 -DSC_MANUAL
# GIVEUP only adds the -EBUSY exit to each retry, so this run covers the
# faults that never give up too.
job mon-safety         safety pass -O0 -DSC_MON -DGIVEUP
job strict-safety      safety pass -O0 -DSC_STRICT
job teardown-safety    safety pass -O2 -DSC_TEARDOWN
job mon-live           live   pass -O0 -DSC_MON
# (no strict-live: the fence blocks no process of the model, so its
# liveness is mon-live's)
job teardown-live      live   pass -O2 -DSC_TEARDOWN
job nooverlap-live     live   pass -O0 -DSC_NOOVERLAP

# Mutants: each injected bug must be found, as the kind of violation named.
A='assertion violated'
job RETRY_WITHOUT_LOCK safety "$A" -O0 -DSC_MON -DRETRY_WITHOUT_LOCK
job END_WITHOUT_TOKEN  safety "$A" -O0 -DSC_MANUAL -DEND_WITHOUT_TOKEN
job END_ALL_REGIONS    safety "$A" -O0 -DSC_MANUAL -DEND_ALL_REGIONS
job NO_BIRTH           safety "$A" -O0 -DSC_MANUAL -DNO_BIRTH
job WALK_BEFORE_BEGIN  safety "$A" -O0 -DSC_MANUAL -DWALK_BEFORE_BEGIN
job END_NO_SEQ         safety "$A" -O0 -DSC_MON -DEND_NO_SEQ
job ACCOUNT_AFTER_DROP safety "$A" -O0 -DSC_MON -DACCOUNT_AFTER_DROP
job STRIPE_FIRST_ONLY  safety "$A" -O0 -DSC_MON -DSTRIPE_FIRST_ONLY
job NO_FENCE           safety "$A" -O0 -DSC_STRICT -DNO_FENCE
job NO_DYING           safety "$A" -O0 -DSC_TEARDOWN -DNO_DYING
job NO_BROADCAST       safety 'invalid end state' -O0 -DSC_MON -DNO_BROADCAST
job NO_STRIPES         live   'acceptance cycle' -O0 -DSC_NOOVERLAP -DNO_STRIPES
wait

passed=0 caught=0 failed=0
for n in "${names[@]}"; do
	r=$(cat "$work/$n/result" 2>/dev/null || echo "FAIL no result (verification crashed?)")
	printf 'model: %-6s %-20s %s\n' "${r%% *}" "$n" "${r#* }"
	case ${r%% *} in
	PASS) passed=$((passed + 1)) ;;
	CAUGHT) caught=$((caught + 1)) ;;
	*) failed=$((failed + 1)) ;;
	esac
done
[ "$failed" -eq 0 ] || [ -n "${MODEL_KEEP:-}" ] ||
	echo "model: rerun with MODEL_KEEP=dir to keep pan's output and trails"
echo "model: $passed checks passed, $caught mutants caught, $failed failed" \
	"($(($(date +%s) - t_all))s)"
[ "$failed" -eq 0 ]

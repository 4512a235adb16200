#!/bin/sh
# One full measurement for docs/PERFORMANCE.md: uodp bench (CSV files),
# bench_adapters (plain and with libuodp-hooks.so preloaded),
# hooks/bench_munmap and the UCX stale-window tests, one after the other,
# with start and end stamps (time, load average).
#
#   bench/perfdoc/run.sh REL TESTS OUT
#
# REL: a Release build with tests off (cmake -S . -B REL
# -DCMAKE_BUILD_TYPE=Release -DUODP_BUILD_TESTS=OFF); TESTS: a build of the
# same tree with tests on (for test_ucm_rcache / test_ucp_rcache, which
# print the stale window). OUT receives the logs, OUT/csv the CSV files.
# Then: bench/perfdoc/gen.py OUT OUT/csv docs/PERFORMANCE.md
set -eu
rel=$(cd "$1" && pwd); tst=$(cd "$2" && pwd); out=$3
src=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"; out=$(cd "$out" && pwd); csv=$out/csv
rm -rf "$csv"
( cd "$src" && git rev-parse --short HEAD && git status --short ) > "$out/head"
{ date -u +%Y-%m-%dT%H:%M:%SZ; cat /proc/loadavg; } > "$out/start"
t0=$(date +%s.%N)
"$rel/tools/uodp" bench --csv "$csv" > "$out/bench.log" 2>&1
t1=$(date +%s.%N)
{ date -u +%Y-%m-%dT%H:%M:%SZ; cat /proc/loadavg; echo "$t0 $t1"; } > "$out/bench-end"
"$rel/adapters/bench_adapters" > "$out/adapters.log" 2>&1 || true
LD_PRELOAD="$rel/hooks/libuodp-hooks.so" "$rel/adapters/bench_adapters" \
	> "$out/adapters-hooks.log" 2>&1 || true
if [ -x "$rel/hooks/bench_munmap" ]; then
	"$rel/hooks/bench_munmap" > "$out/munmap.log" 2>&1 || true
fi
# UCX's hooks off: uodp is the only monitor in these processes.
UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_MALLOC_HOOKS=no \
	"$tst/adapters/ucm/test_ucm_rcache" all > "$out/ucm_rcache.log" 2>&1 || true
UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_MALLOC_HOOKS=no UCX_RCACHE_ENABLE=yes \
	"$tst/adapters/ucm/test_ucp_rcache" > "$out/ucp_rcache.log" 2>&1 || true
t2=$(date +%s.%N)
{ date -u +%Y-%m-%dT%H:%M:%SZ; cat /proc/loadavg; echo "$t0 $t2"; } > "$out/end"
echo "run.sh: logs in $out; now: $src/bench/perfdoc/gen.py $out $csv $src/docs/PERFORMANCE.md"

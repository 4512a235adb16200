#!/bin/sh
# soak.sh BUILD [SECONDS] [SEED]
# Run the API fuzzer's seeded driver (BUILD/tests/fuzz_driver) for SECONDS
# (default 600) and sample its resident memory, descriptors and threads
# every 10 s; print the samples and whether each stayed flat.
#
# The driver, not libFuzzer: libFuzzer keeps its growing corpus in memory,
# which would hide or fake a leak; the driver keeps nothing between inputs
# but the library's own state.
#
# Flat means (why: the first minute warms up allocator arenas, the
# process-wide notifier and the device's caches):
#   RSS     last sample <= 1.25 x the sample at 60 s + 16 MiB
#   fds     last sample <= the highest of the first minute
#   threads last sample <= the highest of the first minute
# Exit 0 flat, 1 not flat, 2 the driver failed (a finding or a crash).
set -u
build=${1:?usage: soak.sh BUILD [SECONDS] [SEED]}
secs=${2:-600}
seed=${3:-$(date +%s)}
bin=$build/tests/fuzz_driver
[ -x "$bin" ] || { echo "no $bin"; exit 2; }

log=$(mktemp)
"$bin" --seed "$seed" --seconds "$secs" >"$log" 2>&1 &
pid=$!
echo "soak: $bin --seed $seed --seconds $secs (pid $pid)"
printf '%6s %10s %5s %8s\n' time rss_kib fds threads
t=0 rss60= fdmax=0 thrmax=0 rss= fds= thr=
while kill -0 "$pid" 2>/dev/null; do
	rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null)
	fds=$(ls /proc/$pid/fd 2>/dev/null | wc -l)
	thr=$(ls /proc/$pid/task 2>/dev/null | wc -l)
	[ -n "$rss" ] || break
	printf '%6s %10s %5s %8s\n' "$t" "$rss" "$fds" "$thr"
	if [ "$t" -le 60 ]; then
		rss60=$rss
		[ "$fds" -gt "$fdmax" ] && fdmax=$fds
		[ "$thr" -gt "$thrmax" ] && thrmax=$thr
	fi
	last_rss=$rss last_fds=$fds last_thr=$thr
	sleep 10
	t=$((t + 10))
done
wait "$pid"
rc=$?
tail -3 "$log"
rm -f "$log"
if [ "$rc" -ne 0 ]; then
	echo "soak: the driver exited $rc: NOT FLAT (see above)"
	exit 2
fi
if [ -z "${last_rss:-}" ] || [ -z "$rss60" ]; then
	echo "soak: too short to judge"
	exit 2
fi
verdict=flat
lim=$((rss60 * 5 / 4 + 16384))
[ "$last_rss" -le "$lim" ] || { echo "RSS grew: $rss60 -> $last_rss KiB"; verdict="not flat"; }
[ "$last_fds" -le "$fdmax" ] || { echo "fds grew: $fdmax -> $last_fds"; verdict="not flat"; }
[ "$last_thr" -le "$thrmax" ] || { echo "threads grew: $thrmax -> $last_thr"; verdict="not flat"; }
echo "soak: $verdict (RSS $rss60 -> $last_rss KiB, fds <= $fdmax -> $last_fds, threads <= $thrmax -> $last_thr)"
[ "$verdict" = flat ]

#!/bin/sh
# run-libfuzzer.sh SRC BUILD SECONDS [extra libFuzzer args]
# Run the libFuzzer target over fuzz/corpus for SECONDS. Uses BUILD's
# fuzz_api when that build has it (-DUODP_FUZZ=ON); otherwise configures
# a clang + ASan/UBSan sub-build in BUILD/fuzz-clang. Exit 77 (skip)
# without clang. New inputs go to a scratch directory, not the corpus;
# a crash input is written to BUILD/fuzz-artifacts/.
set -eu
src=$1 build=$2 secs=$3
shift 3
bin=$build/tests/fuzz_api
[ -x "$bin" ] || bin=$build/fuzz_api
if [ ! -x "$bin" ]; then
	command -v clang >/dev/null 2>&1 || { echo "no clang: skip"; exit 77; }
	sub=$build/fuzz-clang
	if [ ! -f "$sub/CMakeCache.txt" ]; then
		CC=clang cmake -S "$src" -B "$sub" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
			-DUODP_SANITIZE=address,undefined -DUODP_FUZZ=ON \
			-DUODP_BUILD_BENCH=OFF -DUODP_BUILD_EXAMPLES=OFF >/dev/null ||
			{ echo "clang configure failed: skip"; exit 77; }
	fi
	cmake --build "$sub" --target fuzz_api -j"$(nproc)" >/dev/null ||
		{ echo "clang build of fuzz_api failed"; exit 1; }
	bin=$sub/tests/fuzz_api
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/fuzz-artifacts"
# Why these options: -timeout 20 turns a hang into a finding (an input
# takes milliseconds); rss_limit 2 GiB; max_len 2048 bytes is ~1000 ops.
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
exec "$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
	-max_len=2048 -print_final_stats=1 \
	-artifact_prefix="$build/fuzz-artifacts/" "$@" "$work" "$src/fuzz/corpus"

#!/bin/sh
# check-symbols.sh LIBRARY [INCLUDEDIR]
#
# The ABI check of libuodp:
#  - every function declared UODP_API in INCLUDEDIR/*.h (default: the
#    include/ directory beside this script's tests/) is exported as a
#    global function under the version node UODP_0.2 (the default version,
#    name@@UODP_0.2);
#  - nothing else is exported: every other defined dynamic symbol is a
#    failure, except the version node's own definition (UODP_0.2, an
#    absolute symbol the linker adds).
# A function added in a later release belongs to that release's node:
# extend NODE_OF below (or make it a table) when that happens.
# Prints each failure; exits 0 only when there is none.
set -u

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 LIBRARY [INCLUDEDIR]" >&2
	exit 2
fi
lib=$1
incdir=${2:-$(cd "$(dirname "$0")/../include" && pwd)}
NODE=UODP_0.2

if [ ! -r "$lib" ]; then
	echo "$lib: not readable" >&2
	exit 2
fi
if ! command -v readelf >/dev/null 2>&1; then
	echo "readelf not found (binutils)" >&2
	exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Declared: the identifier before the first '(' of every declaration that
# starts with UODP_API, declarations joined onto one line first (they may
# wrap). The macro's own #define is skipped.
for h in "$incdir"/*.h; do
	grep -v '^[[:space:]]*#' "$h"
done | tr '\n' ' ' | tr ';' '\n' |
	sed -n 's/.*UODP_API[^(]*[^A-Za-z0-9_(]\([A-Za-z_][A-Za-z0-9_]*\)[[:space:]]*(.*/\1/p' |
	sort -u >"$tmp/declared"
if [ ! -s "$tmp/declared" ]; then
	echo "no UODP_API declaration found in $incdir/*.h" >&2
	exit 1
fi

# Exported: defined dynamic symbols, "type bind name@@version".
readelf --dyn-syms -W "$lib" |
	awk 'NF >= 8 && $1 ~ /^[0-9]+:$/ && $7 != "UND" { print $4, $5, $8 }' \
		>"$tmp/exported"

fail=0
while read -r f; do
	line=$(awk -v f="$f" '{ n = $3; sub(/@.*/, "", n) } n == f' \
		"$tmp/exported")
	if [ -z "$line" ]; then
		echo "declared but not exported: $f"
		fail=$((fail + 1))
		continue
	fi
	set -- $line
	if [ "$1" != FUNC ] || [ "$2" != GLOBAL ]; then
		echo "not a global function: $f ($1 $2)"
		fail=$((fail + 1))
	fi
	case $3 in
	"$f@@$NODE") ;;
	*)
		echo "wrong version: $3 (want $f@@$NODE)"
		fail=$((fail + 1))
		;;
	esac
done <"$tmp/declared"

while read -r type bind name; do
	base=${name%%@*}
	[ "$base" = "$NODE" ] && [ "$type" = OBJECT ] && continue
	if ! grep -qx "$base" "$tmp/declared"; then
		echo "exported but not declared UODP_API: $name ($type $bind)"
		fail=$((fail + 1))
	fi
done <"$tmp/exported"

echo "UODP_API functions: $(wc -l <"$tmp/declared"), exported symbols:" \
	"$(wc -l <"$tmp/exported"), problems: $fail"
[ "$fail" -eq 0 ]

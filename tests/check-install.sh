#!/bin/sh
# check-install.sh SRCDIR BUILDDIR
#
# What a user of the library does, from an installed tree only: install
# the build tree into a scratch prefix, MOVE the installed tree elsewhere
# (uodp.pc must be relocatable: its paths derive from ${pcfiledir}), then
# build examples/basic.c with `pkg-config --cflags --libs uodp` found
# there, and run it. Also checks the .pc version against uodp.h's.
set -eu
src="$1"
build="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/staged" >/dev/null
mv "$tmp/staged" "$tmp/moved"
pc=$(find "$tmp/moved" -name uodp.pc | head -n 1)
if [ -z "$pc" ]; then
	echo "no uodp.pc installed" >&2
	exit 1
fi
if grep -q "$tmp/staged" "$pc"; then
	echo "uodp.pc names the install prefix: not relocatable" >&2
	cat "$pc" >&2
	exit 1
fi
export PKG_CONFIG_PATH="$(dirname "$pc")"
# Plain pkg-config: no --define-prefix, the file must stand on its own.
cflags=$(pkg-config --cflags uodp)
libs=$(pkg-config --libs uodp)
libdir=$(pkg-config --variable=libdir uodp)
test -f "$(pkg-config --variable=includedir uodp)/uodp.h"

v_pc=$(pkg-config --modversion uodp)
v_h=$(sed -n 's/^#define UODP_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' \
	"$src/include/uodp.h" | paste -sd. -)
if [ "$v_pc" != "$v_h" ]; then
	echo "uodp.pc version $v_pc, uodp.h $v_h" >&2
	exit 1
fi

# shellcheck disable=SC2086 # word splitting of the flags
cc -std=gnu11 -Wall -Wextra -Werror -o "$tmp/basic" \
	"$src/examples/basic.c" $cflags $libs
LD_LIBRARY_PATH="$libdir" "$tmp/basic" >/dev/null

echo "installed, moved to $tmp/moved; uodp.pc $v_pc relocatable;" \
	"example built with pkg-config from there and ran"

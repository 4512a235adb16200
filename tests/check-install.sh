#!/bin/sh
# Installs the build tree into a scratch prefix, then builds and runs an
# example against the installed headers, library and uodp.pc only - what a
# user of the library does.
set -eu
src="$1"; build="$2"
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
pcdir=$(dirname "$(find "$prefix" -name uodp.pc | head -n 1)")
libdir=$(dirname "$pcdir")
export PKG_CONFIG_PATH="$pcdir"
test -f "$prefix/include/uodp.h"
cc -std=gnu11 -Wall -Wextra -Werror -o "$prefix/basic" "$src/examples/basic.c" \
	$(pkg-config --define-prefix --cflags --libs uodp)
LD_LIBRARY_PATH="$libdir" "$prefix/basic" >/dev/null

echo "installed to $prefix; example built with pkg-config and ran"

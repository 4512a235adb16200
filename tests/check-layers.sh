#!/bin/sh
# check-layers.sh SRCDIR
#
# The layering rule of libuodp, checked on the sources' #include lines:
# a layer includes only its own headers and those of the layers below it,
# and the device reaches the engine only through its public header.
#
#   layer      may include (quoted or <> includes naming these)
#   lib        lib/                    (and its own files by bare name)
#   notifier   lib/, notifier/
#   engine     lib/, notifier/, engine/, uodp.h
#   device     device/, uodp.h, uodp_dev.h   - not engine/, notifier/,
#              lib/: the device is a user of the engine's public API
#
# Any other include that names a project header (a path under src/ or
# include/, "../", or a bare name of a header of another layer) is a
# failure. System headers (<pthread.h>...) are not checked. Prints every
# violation as file:line; exits 0 only when there is none.
set -u

if [ $# -ne 1 ]; then
	echo "usage: $0 SRCDIR" >&2
	exit 2
fi
src=$1/src
inc=$1/include
if [ ! -d "$src" ] || [ ! -d "$inc" ]; then
	echo "$1: no src/ or include/" >&2
	exit 2
fi

allowed() { # layer header -> 0 when allowed
	case $1:$2 in
	lib:lib/*) return 0 ;;
	notifier:lib/* | notifier:notifier/*) return 0 ;;
	engine:lib/* | engine:notifier/* | engine:engine/* | engine:uodp.h)
		return 0 ;;
	device:device/* | device:uodp.h | device:uodp_dev.h) return 0 ;;
	esac
	return 1
}

bad=0
checked=0
for dir in "$src"/*/; do
	layer=$(basename "$dir")
	case $layer in
	lib | notifier | engine | device) ;;
	*)
		echo "src/$layer: a layer this check does not know (add it)"
		bad=$((bad + 1))
		continue
		;;
	esac
	for f in "$dir"*.c "$dir"*.h; do
		[ -f "$f" ] || continue
		checked=$((checked + 1))
		# "lineno header" for every #include "x" or <x>
		grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]' "$f" |
			sed 's/^\([0-9]*\):[[:space:]]*#[[:space:]]*include[[:space:]]*\(["<]\)\([^">]*\)[">].*/\1 \2 \3/' \
			>"${TMPDIR:-/tmp}/uodp-layers.$$"
		while read -r line q h; do
			name=$h
			# A bare name: a file of this layer's own directory
			# (quoted only), else a public header, else a system
			# header; a name with a directory names it from src/.
			case $h in
			*/*) ;;
			*)
				if [ "$q" = '"' ] && [ -f "$dir$h" ]; then
					name=$layer/$h
				elif [ -f "$inc/$h" ]; then
					name=$h
				else
					[ "$q" = '"' ] || continue # system
					name=unknown/$h
				fi
				;;
			esac
			case $name in
			../* | */../*)
				name=relative/$h ;;
			esac
			# <dir/x.h> outside src/ and include/: a system header
			if [ "$q" = '<' ] && [ "$name" = "$h" ] &&
				[ ! -f "$src/$h" ] && [ ! -f "$inc/$h" ]; then
				continue
			fi
			if ! allowed "$layer" "$name"; then
				echo "src/$layer/${f##*/}:$line: includes $h (layer $layer may not)"
				bad=$((bad + 1))
			fi
		done <"${TMPDIR:-/tmp}/uodp-layers.$$"
		rm -f "${TMPDIR:-/tmp}/uodp-layers.$$"
	done
done
echo "source files checked: $checked, layering violations: $bad"
[ "$checked" -gt 0 ] && [ "$bad" -eq 0 ]

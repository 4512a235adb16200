#!/bin/sh
# check-manpages.sh SRCDIR LIBRARY
#
# Fails unless every uodp_* function the shared library exports has a man
# page SRCDIR/man/<name>.3. A page may be a .so link to another page; the
# page it names must exist too. Prints what is missing.
set -u

if [ $# -ne 2 ]; then
	echo "usage: $0 SRCDIR LIBRARY" >&2
	exit 2
fi
srcdir=$1
lib=$2
mandir=$srcdir/man

if [ ! -r "$lib" ]; then
	echo "$lib: not readable" >&2
	exit 2
fi
# Exported functions only (T: text, W/i: weak and indirect functions);
# strip the symbol version (uodp_x@@UODP_0.1).
funcs=$(nm -D --defined-only "$lib" |
	awk '$2 ~ /^[TWi]$/ { sub(/@.*/, "", $3); print $3 }' |
	grep '^uodp_' | sort -u)
if [ -z "$funcs" ]; then
	echo "$lib: no exported uodp_* function" >&2
	exit 1
fi

missing=0
checked=0
for f in $funcs; do
	checked=$((checked + 1))
	page=$mandir/$f.3
	if [ ! -f "$page" ]; then
		echo "missing: man/$f.3"
		missing=$((missing + 1))
		continue
	fi
	# A .so link: "man3/other.3" is relative to the manual root, which
	# is man/ itself in the source tree.
	target=$(sed -n '1s/^\.so[ 	]\{1,\}//p' "$page")
	if [ -n "$target" ] && [ ! -f "$mandir/${target##*/}" ]; then
		echo "broken: man/$f.3 links to $target, which does not exist"
		missing=$((missing + 1))
	fi
done

echo "exported uodp_* functions: $checked, without a man page: $missing"
[ "$missing" -eq 0 ]

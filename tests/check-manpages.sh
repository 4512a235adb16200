#!/bin/sh
# check-manpages.sh SRCDIR LIBRARY
#
# Fails unless every uodp_* function the shared library exports has a man
# page SRCDIR/man/<name>.3. A page may be a .so link to another page; the
# page it names must exist too. Prints what is missing.
#
# For the functions of the headers in CHECKED_HEADERS (include/uodp.h) it
# also checks that the page (after .so links) has an ERRORS and a THREADS
# AND CALLBACKS section, and that its ERRORS name exactly the errnos the
# header's comment names for the functions the page documents: the
# comment above a declaration (or a group of declarations), from its first
# "Errors" on when it has one; "Errors as map_and_lock" brings in that
# function's errnos.
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

CHECKED_HEADERS=${CHECKED_HEADERS:-$srcdir/include/uodp.h}
bad=0
for h in $CHECKED_HEADERS; do
	# "name errno errno ..." per declared function.
	awk '
	function toks(t,   out, rest) {
		out = ""
		rest = t
		while (match(rest, /-E[A-Z0-9]+/)) {
			out = out " " substr(rest, RSTART + 1, RLENGTH - 1)
			rest = substr(rest, RSTART + RLENGTH)
		}
		return out
	}
	/\/\*/ { incom = 1; com = "" }
	incom { com = com " " $0 }
	incom && /\*\// { incom = 0; cur = com; next }
	!incom && /UODP_API/ && /\(/ && !/^#/ {
		line = $0
		sub(/\(.*/, "", line)
		n = split(line, w, /[^A-Za-z0-9_]+/)
		name = w[n]
		t = cur
		if (match(t, /Errors/))
			t = substr(t, RSTART)
		ref = ""
		if (t ~ /Errors as map_and_lock/)
			ref = "uodp_umem_map_and_lock"
		print name, ref "|" toks(t)
	}' "$h"
done >"${TMPDIR:-/tmp}/uodp-man-errs.$$"
errs="${TMPDIR:-/tmp}/uodp-man-errs.$$"
trap 'rm -f "$errs"' EXIT

# page file of a function, after .so links
page_of() {
	p=$mandir/$1.3
	t=$(sed -n '1s/^\.so[ 	]\{1,\}//p' "$p" 2>/dev/null)
	[ -n "$t" ] && p=$mandir/${t##*/}
	echo "$p"
}
# errnos of one function from the header (with its reference)
header_errs() {
	line=$(awk -v f="$1" '$1 == f' "$errs")
	ref=${line#* }
	ref=${ref%%|*}
	list=${line#*|}
	if [ -n "$ref" ]; then
		r=$(awk -v f="$ref" '$1 == f' "$errs")
		list="$list ${r#*|}"
	fi
	echo $list
}

pages=$(while read -r f rest; do page_of "$f"; done <"$errs" | sort -u)
for p in $pages; do
	name=${p##*/}
	if [ ! -f "$p" ]; then
		continue # reported above
	fi
	for sec in "ERRORS" "THREADS AND CALLBACKS"; do
		if ! grep -q "^\.SH $sec\$" "$p"; then
			echo "man/$name: no $sec section"
			bad=$((bad + 1))
		fi
	done
	want=$(while read -r f rest; do
		[ "$(page_of "$f")" = "$p" ] && header_errs "$f"
	done <"$errs" | tr ' ' '\n' | sed '/^$/d' | sort -u | tr '\n' ' ')
	have=$(sed -n '/^\.SH ERRORS/,/^\.SH /p' "$p" | sed 's/\\-/-/g' |
		grep -o -- '-E[A-Z0-9]*' | sed 's/^-//' | sort -u | tr '\n' ' ')
	if [ "$want" != "$have" ]; then
		echo "man/$name: ERRORS name [ $have] but the header says [ $want]"
		bad=$((bad + 1))
	fi
done
echo "pages checked against $CHECKED_HEADERS: $(echo "$pages" | wc -w)," \
	"problems: $bad"
[ "$missing" -eq 0 ] && [ "$bad" -eq 0 ]

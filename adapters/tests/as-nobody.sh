#!/bin/sh
# Run a test program as nobody (uid/gid 65534, no supplementary groups, no
# capabilities): the adapters must work unprivileged. Skipped (77) unless
# the suite runs as root with setpriv(1) available.
if [ "$(id -u)" != 0 ] || ! command -v setpriv >/dev/null 2>&1; then
	echo "SKIP: as nobody needs root and setpriv(1)"
	exit 77
fi
exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
	--bounding-set=-all -- "$@"

#!/bin/sh
# Fails if the shared library exports a symbol not named uodp_*.
lib="$1"
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^uodp_' | grep -v '^UODP_' )
if [ -n "$bad" ]; then
  echo "unexpected exported symbols:"; echo "$bad"; exit 1
fi
n=$(nm -D --defined-only "$lib" | grep -c ' T uodp_')
echo "exported uodp_* functions: $n"
[ "$n" -gt 0 ]

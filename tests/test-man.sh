#!/bin/sh
# The man pages: each renders without a warning (man --warnings), and they
# document every tunable dedupd has and every verb dedupctl has.
set -eu
: "${top_builddir:=$(cd "$(dirname "$0")/.." && pwd)}"
man="$(dirname "$0")/../man"
command -v man >/dev/null || { echo "SKIP: no man (Debian package man-db)"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

for page in "$man"/*.[0-9]; do
        out=$(man --warnings -l "$page" 2>&1 >/dev/null) || fail "$page does not render"
        [ -z "$out" ] || fail "$page: $out"
        echo "$(basename "$page"): no warnings"
done
for opt in $("$top_builddir/daemon/dedupd" --help | sed -n 's/^  --\([a-z-]*\)=.*/\1/p'); do
        name=$(echo "$opt" | sed -E 's/(^|-)([a-z])/\U\2/g')
        for page in org.dedupd1.5 dedupd.conf.5 dedupd.8; do
                grep -q "$name" "$man/$page" || fail "$name not in $page"
        done
        grep -q -- "$(echo "\\-\\-$opt" | sed 's/-/\\\\-/g')" "$man/dedupd.8" || fail "--$opt not in dedupd.8"
done
for verb in $("$top_builddir/daemon/dedupctl" --help | sed -n '/^Verbs:/,/^$/s/^  \([a-z]*\).*/\1/p'); do
        grep -q "^\.B.* $verb\|^\.B $verb\|^\.BI $verb\|^\.BR $verb" "$man/dedupctl.8" || fail "verb $verb not in dedupctl.8"
done
echo PASS

#!/bin/sh
# The installed units: systemd-analyze verify is clean and
# systemd-analyze security rates dedupd.service's exposure at most 3.0.
set -eu
: "${top_builddir:=$(cd "$(dirname "$0")/.." && pwd)}"
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze (Debian package systemd)"; exit 77; }
T=$(mktemp -d /tmp/dedupd-units.XXXXXX)
trap 'rm -rf "$T"' EXIT INT TERM

make -s -C "$top_builddir" install DESTDIR="$T/root" >/dev/null 2>&1
unit=$(find "$T/root" -name dedupd.service)
[ -n "$unit" ] || { echo "FAIL: dedupd.service not installed"; exit 1; }
# Verified against this host's units; ExecStart= pointed into DESTDIR.
mkdir "$T/units"
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
[ -x "$T/root$exec_start" ] || { echo "FAIL: ExecStart=$exec_start is not the installed dedupd"; exit 1; }
sed "s|^ExecStart=$exec_start|ExecStart=$T/root$exec_start|" "$unit" >"$T/units/dedupd.service"
cp "$(dirname "$unit")/dedupd.socket" "$T/units/"
systemd-analyze verify --man=no "$T/units/dedupd.service" "$T/units/dedupd.socket" >"$T/verify" 2>&1 || true
cat "$T/verify"
[ ! -s "$T/verify" ] || { echo "FAIL: systemd-analyze verify is not clean"; exit 1; }

systemd-analyze security --offline=true "$unit" >"$T/security" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for dedupd.service: \([0-9.]*\).*/\1/p' "$T/security")
echo "exposure of dedupd.service: ${score:-?}"
[ -n "$score" ] || { cat "$T/security"; echo "FAIL: no exposure level"; exit 1; }
awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }' || { grep '✗' "$T/security"; echo "FAIL: exposure $score > 3.0"; exit 1; }
[ -f "$(dirname "$unit")/../../tmpfiles.d/dedupd.conf" ] || { echo "FAIL: tmpfiles.d entry not installed"; exit 1; }
echo PASS

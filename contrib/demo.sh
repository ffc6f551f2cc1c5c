#!/bin/sh
# The demo: dedupd with three guests, showing the memory saved per guest as
# it merges, then what an operator sees: dedupctl status and dedupctl vms
# over a private D-Bus (this machine has no system bus).
#
#   qemu (default)  three unmodified QEMU TCG guests (Debian cloud kernel,
#                   busybox initramfs, 256 MiB of memfd share=on RAM) with
#                   libdedup-qemu.so preloaded; each writes the same files
#                   to tmpfs, rewrites some and checks their md5 every round
#   sim             three simulated guests (tests/guest-sim: memfd RAM sharing
#                   an OS image, writers running, every byte verified)
#
# Run from a build directory: contrib/demo.sh [qemu|sim] [MiB per guest] [seconds]
set -eu
MODE=${1:-qemu}
MIB=${2:-256}
SECS=${3:-20}
SRC=$(cd "$(dirname "$0")/.." && pwd)
GUESTS="guest1 guest2 guest3"
T=$(mktemp -d /tmp/dedupd-demo.XXXXXX)
PIDS=""
cleanup() {
        for p in $PIDS; do kill -TERM "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        rm -rf "$T"
}
trap cleanup EXIT INT TERM
stat() { v=$(sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1); echo "${v:-0}"; }
case $MODE in
qemu | sim) ;;
*) echo "usage: $0 [qemu|sim] [MiB per guest] [seconds]" >&2; exit 2 ;;
esac

dbus-daemon --session --address="unix:path=$T/bus" --nofork --nopidfile >"$T/bus.log" 2>&1 &
PIDS="$PIDS $!"
while [ ! -S "$T/bus" ]; do sleep 0.1; done
./daemon/dedupd --bus="unix:path=$T/bus" --socket="$T/vmm.sock" --status-file="$T/status" --pages-to-scan=20000 --sleep-millisecs=10 \
        >"$T/dedupd.log" 2>&1 &
PIDS="$PIDS $!"
while [ ! -S "$T/vmm.sock" ]; do sleep 0.1; done
if [ "$MODE" = qemu ]; then
        "$SRC/tests/qemu/build-guest.sh" tests/qemu-cache >"$T/build-guest.log" 2>&1 ||
                { cat "$T/build-guest.log"; exit 1; }
        for g in $GUESTS; do
                DEDUPD_SOCKET="$T/vmm.sock" LD_PRELOAD="$PWD/contrib/qemu/.libs/libdedup-qemu.so" \
                        "$SRC/tests/qemu/run-guest.sh" tests/qemu-cache "$g" "$MIB" "$T/$g.console" \
                        dedup.seconds=$((SECS + 60)) dedup.files=40 dedup.mib=2 >"$T/$g.qemu" 2>&1 &
                PIDS="$PIDS $!"
        done
        for g in $GUESTS; do
                while ! grep -qs '^dedup-guest: ready' "$T/$g.console"; do sleep 0.2; done
        done
        echo "dedupd demo: 3 QEMU TCG guests x $MIB MiB of memfd RAM, each writing the same 80 MiB of files to tmpfs"
else
        seed=0
        for g in $GUESTS; do
                seed=$((seed + 1))
                ./tests/guest-sim --name=$g --socket="$T/vmm.sock" --size="$MIB" --image-seed=42 --seed=$seed \
                        --image-pct=50 --zero-pct=20 --unique-pct=25 --volatile-pct=5 --writers=1 --write-rate=500 \
                        --stats-file="$T/$g.stats" --stats-interval-ms=500 --ready-file="$T/$g.ready" >"$T/$g.log" 2>&1 &
                PIDS="$PIDS $!"
        done
        for g in $GUESTS; do while [ ! -f "$T/$g.ready" ]; do sleep 0.1; done; done
        echo "dedupd demo: 3 simulated guests x $MIB MiB of memfd RAM (50% shared OS image, 20% zero, 25% unique, 5% volatile)"
fi
for s in $(seq 1 "$SECS"); do
        sleep 1
        printf "  t=%2ss  saved %6d MiB  (pages_shared=%s pages_sharing=%s zero_pages=%s)\n" "$s" \
                $(( ($(stat $T/status pages_sharing) + $(stat $T/status zero_pages)) / 256 )) \
                "$(stat $T/status pages_shared)" "$(stat $T/status pages_sharing)" "$(stat $T/status zero_pages)"
done
echo "per guest (pages mapped from dedupd's pools or zero overlays instead of the guest's own memfd):"
for g in $GUESTS; do
        if [ "$MODE" = qemu ]; then
                check="md5 rounds: $(grep -c '^dedup-guest: round=' "$T/$g.console"), wrong: $(grep -c 'BAD' "$T/$g.console" || true)"
        else
                check="verifier mismatches: $(stat "$T/$g.stats" mismatches)"
        fi
        printf "  %s: %5d MiB merged (%d MiB zero) of %d MiB, %s\n" "$g" \
                $(( ($(stat $T/status vm.$g.merging_pages) + $(stat $T/status vm.$g.zero_pages)) / 256 )) \
                $(( $(stat $T/status vm.$g.zero_pages) / 256 )) "$MIB" "$check"
done
echo "dedupd's pools hold $(( $(stat $T/status pages_shared) / 256 )) MiB of canonical pages; net saved $(( ($(stat $T/status pages_sharing) + $(stat $T/status zero_pages)) / 256 )) MiB"
echo
echo "$ dedupctl status"
./daemon/dedupctl --address="unix:path=$T/bus" status
echo
echo "$ dedupctl vms"
./daemon/dedupctl --address="unix:path=$T/bus" vms

#!/bin/sh
# End to end with real QEMU: three TCG guests (Debian cloud kernel, busybox
# initramfs from tests/qemu/build-guest.sh, 256 MiB of memfd share=on RAM)
# run unmodified qemu-system-x86_64 with libdedup-qemu.so preloaded. Inside,
# each guest writes the same files to tmpfs, rewrites some every round and
# prints their md5 check on the serial console. The test checks that dedupd
# registers all three and saves memory (dedupctl status), that every round
# of every guest stays right, that dedupd SIGKILLed leaves the guests
# running and right, and that a guest started with the shim but no dedupd
# runs as without it.
. "$(dirname "$0")/lib-daemon.sh"
. "$(dirname "$0")/lib-bus.sh"

SHIM="$top_builddir/contrib/qemu/.libs/libdedup-qemu.so"
CACHE="$top_builddir/tests/qemu-cache"
srcdir=$(cd "$(dirname "$0")" && pwd)
GUESTS="g1 g2 g3"

command -v qemu-system-x86_64 >/dev/null ||
        skip "no qemu-system-x86_64 (Debian package qemu-system-x86; ./contrib/quickstart.sh deps installs it)"
[ -f "$SHIM" ] || fail "no $SHIM"
"$srcdir/qemu/build-guest.sh" "$CACHE" >"$T/build-guest.log" 2>&1 ||
        { tail -n 20 "$T/build-guest.log"; skip "cannot build the guest kernel and initramfs (see above)"; }

# start_guest NAME SECONDS: a QEMU guest with the shim, in the background.
start_guest() {
        DEDUPD_SOCKET="$T/vmm.sock" LD_PRELOAD="$SHIM" \
                "$srcdir/qemu/run-guest.sh" "$CACHE" "$1" 256 "$T/$1.console" \
                dedup.seconds="$2" dedup.files=40 dedup.mib=2 >"$T/$1.qemu" 2>&1 &
        eval "QEMU_$1=$!"
        PIDS="$PIDS $!"
}

rounds() { n=$(grep -c "^dedup-guest: round=" "$T/$1.console" 2>/dev/null) || true; echo "${n:-0}"; }

# no_bad NAME: every round of NAME so far was right.
no_bad() {
        if grep -E "BAD|bad=[1-9]" "$T/$1.console"; then
                fail "guest $1 read wrong file content"
        fi
}

saved_mib() {
        "$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" status | tee "$T/dedupctl.out" |
                sed -n 's/^ *saved: *\([0-9.]*\) MiB.*/\1/p' | cut -d. -f1
}

start_private_bus
DEDUPD_BUS=$BUS_ADDRESS start_dedupd --pages-to-scan=20000 --sleep-millisecs=10
for g in $GUESTS; do start_guest "$g" 90; done

for g in $GUESTS; do
        wait_for 120 "grep -qs '^dedup-guest: ready' '$T/$g.console'" ||
                { cat "$T/$g.qemu"; tail -n 5 "$T/$g.console"; fail "guest $g did not come up"; }
        grep -q "registered with dedupd" "$T/$g.qemu" || { cat "$T/$g.qemu"; fail "guest $g did not register"; }
done
echo "three guests up and registered"

wait_for 60 "[ \"\$(saved_mib)\" -ge 100 ] 2>/dev/null" ||
        { cat "$T/dedupctl.out"; fail "dedupd did not save 100 MiB of three guests"; }
cat "$T/dedupctl.out"
"$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" vms

# Let merges, COW breaks and unmerges race the guests' rewrites.
for g in $GUESTS; do eval "r0_$g=$(rounds "$g")"; done
for g in $GUESTS; do
        eval "r0=\$r0_$g"
        wait_for 60 "[ \$(rounds $g) -ge $((r0 + 2)) ]" || fail "guest $g stopped printing rounds while merged"
        no_bad "$g"
done
echo "rounds right while merged: $(for g in $GUESTS; do printf '%s=%s ' "$g" "$(rounds "$g")"; done)"

kill -9 "$DEDUPD_PID"
wait "$DEDUPD_PID" 2>/dev/null || true
echo "dedupd SIGKILLed"
for g in $GUESTS; do eval "r0_$g=$(rounds "$g")"; done
for g in $GUESTS; do
        eval "r0=\$r0_$g"
        wait_for 60 "[ \$(rounds $g) -ge $((r0 + 2)) ]" || fail "guest $g hung after dedupd died"
        no_bad "$g"
        kill -0 "$(eval echo "\$QEMU_$g")" || fail "QEMU of $g is gone"
done
echo "rounds right after dedupd died: $(for g in $GUESTS; do printf '%s=%s ' "$g" "$(rounds "$g")"; done)"
for g in $GUESTS; do kill -TERM "$(eval echo "\$QEMU_$g")"; done

# The shim with no dedupd: one line, and the guest runs as without it.
rm -f "$T/vmm.sock"
start_guest g4 8
wait_for 120 "grep -qs '^dedup-guest: done' '$T/g4.console'" ||
        { cat "$T/g4.qemu"; tail -n 5 "$T/g4.console"; fail "guest g4 without dedupd did not finish"; }
no_bad g4
grep -q "no dedupd listening" "$T/g4.qemu" || { cat "$T/g4.qemu"; fail "shim did not say dedupd is absent"; }
echo "without dedupd: $(grep '^dedup-guest: done' "$T/g4.console")"
echo "PASS"

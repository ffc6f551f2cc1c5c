#!/bin/sh
# End to end with real QEMU: three TCG guests (Debian cloud kernel, busybox
# initramfs from tests/qemu/build-guest.sh, 256 MiB of memfd share=on RAM)
# run unmodified qemu-system-x86_64 with libdedup-qemu.so preloaded. Inside,
# each guest writes the same files to tmpfs, rewrites some every round and
# prints their md5 check on the serial console. The test checks that dedupd
# registers all three and saves memory (dedupctl status), that every round
# of every guest stays right, that dedupd SIGKILLed leaves the guests
# running and right, that a restarted dedupd gets them back and saves as
# much again, and that a guest started with the shim but no dedupd runs as
# without it.
top_srcdir=$(cd "$(dirname "$0")/.." && pwd)
. "$top_srcdir/tests/lib-daemon.sh"
. "$top_srcdir/tests/lib-bus.sh"
. "$top_srcdir/tests/lib-qemu.sh"

GUESTS="g1 g2 g3"
qemu_setup

# progress WHEN: every guest prints two more md5 rounds, all right, and its
# QEMU is still there.
progress() {
        for g in $GUESTS; do eval "r0_$g=$(rounds "$g")"; done
        for g in $GUESTS; do
                eval "r0=\$r0_$g"
                wait_for 60 "[ \$(rounds $g) -ge $((r0 + 2)) ]" || fail "guest $g stopped printing rounds $1"
                no_bad "$g"
                kill -0 "$(eval echo "\$QEMU_$g")" || fail "QEMU of $g is gone $1"
        done
        echo "rounds right $1: $(for g in $GUESTS; do printf '%s=%s ' "$g" "$(rounds "$g")"; done)"
}

saved_mib() {
        "$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" status | tee "$T/dedupctl.out" |
                sed -n 's/^ *saved: *\([0-9.]*\) MiB.*/\1/p' | cut -d. -f1
}

start_private_bus
DEDUPD_BUS=$BUS_ADDRESS start_dedupd --pages-to-scan=20000 --sleep-millisecs=10
for g in $GUESTS; do start_guest "$g" 180; done

for g in $GUESTS; do
        wait_guest "$g" ready 120
        grep -q "registered with dedupd" "$T/$g.qemu" || { cat "$T/$g.qemu"; fail "guest $g did not register"; }
done
echo "three guests up and registered"

wait_for 60 "[ \"\$(saved_mib)\" -ge 100 ] 2>/dev/null" ||
        { cat "$T/dedupctl.out"; fail "dedupd did not save 100 MiB of three guests"; }
cat "$T/dedupctl.out"
"$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" vms

# Let merges, COW breaks and unmerges race the guests' rewrites.
progress "while merged"

kill -9 "$DEDUPD_PID"
wait "$DEDUPD_PID" 2>/dev/null || true
echo "dedupd SIGKILLed"
progress "after dedupd died"
for g in $GUESTS; do
        wait_for 5 "grep -q 'lost dedupd' '$T/$g.qemu'" || { cat "$T/$g.qemu"; fail "shim of $g did not say dedupd is gone"; }
done

# Restarted, dedupd gets the guests back from their agents and saves again.
rm -f "$T/status"
DEDUPD_BUS=$BUS_ADDRESS start_dedupd --pages-to-scan=20000 --sleep-millisecs=10
for g in $GUESTS; do
        wait_for 30 "grep -q 'registered with dedupd again' '$T/$g.qemu'" ||
                { cat "$T/$g.qemu"; fail "guest $g did not come back to the new dedupd"; }
done
wait_for 60 "[ \"\$(saved_mib)\" -ge 100 ] 2>/dev/null" ||
        { cat "$T/dedupctl.out"; fail "the restarted dedupd did not save 100 MiB again"; }
echo "dedupd restarted: guests back, $(sed -n 's/^ *saved: *//p' "$T/dedupctl.out" | head -n 1) saved again"
progress "after dedupd came back"
stop_guests

# The shim with no dedupd: one line, and the guest runs as without it.
rm -f "$T/vmm.sock"
start_guest g4 8
wait_guest g4 done 120
no_bad g4
grep -q "no dedupd listening" "$T/g4.qemu" || { cat "$T/g4.qemu"; fail "shim did not say dedupd is absent"; }
echo "without dedupd: $(grep '^dedup-guest: done' "$T/g4.console")"
echo "PASS"

#!/bin/sh
# dedupd SIGKILLed at random points, CRASH_LOOPS times (9 here; tests/soak
# runs 50), while three guests write: in the middle of merging, with pages
# merged and being un-merged by copy-on-write, in the middle of an
# unmerge-all (Run=2 over D-Bus), and just after a restart while it takes
# back what the agents kept. dedupd runs as under systemd (tests/svc-manager:
# socket activation, the fd store, restarted when it dies). After every kill
# no byte is wrong and no writer hangs; after every restart each agent
# comes back by itself; at the end the last dedupd merges as before, the
# pools it was passed back have settled, and no VMM maps or holds a pool
# the last dedupd does not hold, so the kernel has freed the others.
. "$(dirname "$0")/lib-daemon.sh"
. "$(dirname "$0")/lib-bus.sh"

command -v busctl >/dev/null || skip "no busctl (Debian package systemd)"
loops=${CRASH_LOOPS:-9}
MIB=32
start_private_bus
B="busctl --address=$BUS_ADDRESS"
M="org.dedupd1 /org/dedupd1 org.dedupd1.Manager"


# every_sim CONDITION: CONDITION (with $g the guest) holds for a, b and c
every_sim() {
        for g in a b c; do eval "$1" || return 1; done
}

# random_sleep SEED MAX: sleep 0.05..MAX seconds, reproducibly per SEED
random_sleep() {
        sleep "$(awk -v s="$1" -v m="$2" 'BEGIN { srand(s); printf "%.2f", 0.05 + rand() * (m - 0.05) }')"
}

# What dedupd is doing when it does not answer on the bus.
bus_diagnosis() {
        echo "org.dedupd1 owned by $($B status org.dedupd1 2>&1 | grep -E '^(PID|UniqueName)=' | tr '\n' ' ');"
        echo "dedupd $DEDUPD_PID $(process_diagnosis "$DEDUPD_PID")"
}

merged_some() {
        wait_for 30 "[ \$(stat $T/status pages_sharing) -ge 2000 ]" ||
                fail "round $i: only $(stat $T/status pages_sharing) pages sharing after 30 s"
}

check_guests() {
        for g in a b c; do
                [ "$(stat $T/$g.stats mismatches)" = 0 ] || fail "guest $g saw a wrong byte after kill $1"
                [ "$(stat $T/$g.stats hangs)" = 0 ] || fail "guest $g has a hung writer after kill $1"
                kill -0 "$(eval echo \$SIM_PID_$g)" 2>/dev/null || fail "guest $g died after kill $1"
        done
}

DEDUPD_BUS=$BUS_ADDRESS start_managed_dedupd --pages-to-scan=4096 --sleep-millisecs=5
for g in a b c; do
        start_sim $g --size=$MIB --image-seed=3 --seed=$(printf %d "'$g") --image-pct=50 --zero-pct=20 \
                --unique-pct=25 --volatile-pct=5 --writers=2 --write-rate=2000 --churn-pct=5
done

i=0
while [ $i -lt $loops ]; do
        i=$((i + 1))
        wait_for 20 "every_sim '[ \$(stat $T/\$g.stats dedup_connected) = 1 ] && [ \$(stat $T/\$g.stats dedup_reconnects) -ge $((i - 1)) ]'" ||
                fail "not every guest came back for round $i: $(grep -ho 'dedup_connected=[0-9]* dedup_[a-z_]*=[0-9]*' $T/?.stats | tr '\n' ' ')"
        case $((i % 4)) in
        1) what="merging"; random_sleep $i 1.0 ;;
        2) what="merged, writers breaking COW"
           merged_some
           random_sleep $i 1.0 ;;
        3) wait_for 5 "[ \$(stat $T/status kept_pages) -gt 0 ]" || fail "round $i: nothing kept across the restart"
           random_sleep $i 0.5
           what="taking back kept pages, $(stat $T/status kept_pages) so far, $(stat $T/status pools_claiming) pools claiming" ;;
        0) what="unmerge-all"
           merged_some
           $B set-property $M Run u 2 || fail "Run=2 refused; $(bus_diagnosis)"
           random_sleep $i 0.4 ;;
        esac
        merged=$(stat $T/status pages_sharing)
        kill -9 "$DEDUPD_PID"
        wait "$DEDUPD_PID" 2>/dev/null || true
        sleep 0.3
        check_guests $i
        echo "kill $i ($what, $merged pages sharing): guests unharmed"
        managed_restarted "$DEDUPD_PID"
done

# The last dedupd merges as much as a first one.
want=$(( 3 * MIB * 256 * 30 / 100 ))
wait_for 60 "[ \$(( \$(stat $T/status pages_sharing) + \$(stat $T/status zero_pages) )) -ge $want ]" ||
        fail "the last dedupd saved only $(stat $T/status pages_sharing) + $(stat $T/status zero_pages) pages, want $want"
echo "after $loops kills: pages_sharing=$(stat $T/status pages_sharing) zero_pages=$(stat $T/status zero_pages)"
wait_for 20 "[ \$(stat $T/status pools_claiming) = 0 ]" ||
        fail "$(stat $T/status pools_claiming) pools passed back never settled"

# Those it took back from the fd store are the last dedupd's own.
for g in a b c; do
        no_stale_pools "$(eval echo \$SIM_PID_$g)" || fail "guest $g still maps or holds pools of a dead dedupd" \
                "(inodes $(echo $stale))"
done
echo "no guest maps or holds a pool the last dedupd does not hold"
check_guests final
for g in a b c; do stop_sim $g; done
echo "PASS"

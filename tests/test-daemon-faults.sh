#!/bin/sh
# dedupd against bad neighbours: hostile clients, a VMM killed in the middle
# of merging, a foreign process mapping a guest's memfd, and a VMA budget
# too small for all merges. Guests must stay byte-correct throughout.
. "$(dirname "$0")/lib-daemon.sh"

# guest RAM's fd of a simulator, and a dedupd pool fd its agent holds
memfd_fd() { sed -n 's/^memfd_fd=//p' "$T/$1.ready"; }
pool_fd() { ls -l /proc/$1/fd 2>/dev/null | sed -n 's/.* \([0-9]*\) -> \/memfd:dedupd-pool.*/\1/p' | head -n 1; }

start_dedupd --pages-to-scan=4096 --sleep-millisecs=5
start_sim good --size=32 --image-seed=3 --seed=1 --writers=1 --write-rate=2000
start_sim victim --size=32 --image-seed=3 --seed=2 --writers=1 --write-rate=2000
wait_for 30 "[ \$(stat $T/status pages_sharing) -gt 1000 ]" || fail "guests did not merge"

echo "hostile clients:"
"$top_builddir/tests/hostile-client" "$T/vmm.sock" "$SIM_PID_victim" "$(memfd_fd victim)" "$(pool_fd $SIM_PID_victim)" ||
        fail "a hostile client was not refused"
kill -0 "$DEDUPD_PID" || fail "dedupd died from hostile input"
# The status file is rewritten every 500 ms and teardown is deferred.
wait_for 5 "[ \$(stat $T/status vms) = 2 ]" || fail "hostile clients left VMs behind or dropped good ones: vms=$(stat $T/status vms)"

echo "a VMM killed mid-merge:"
start_sim doomed --size=32 --image-seed=3 --seed=3 --writers=1
wait_for 30 "[ \$(stat $T/status vm.doomed.merging_pages) -gt 100 ]" || fail "doomed guest did not merge"
kill -9 "$SIM_PID_doomed"
wait_for 10 "[ \$(stat $T/status vms) = 2 ]" || fail "dead VM not forgotten"
kill -0 "$DEDUPD_PID" || fail "dedupd died with the VMM"
wait_for 10 "[ \$(stat $T/status holds) = 0 ]" || fail "pool pages of the dead VMM still held"
echo "  forgotten, its pool pages released"

echo "a foreign mapper of a guest memfd:"
/usr/bin/python3 -c "
import mmap, os, sys, time
fd = os.open('/proc/$SIM_PID_good/fd/$(memfd_fd good)', os.O_RDWR)
m = mmap.mmap(fd, 4096)
open('$T/mapper.ready', 'w').close()
time.sleep(60)
" &
MAPPER=$!
PIDS="$PIDS $MAPPER"
wait_for 10 "[ -f $T/mapper.ready ]" || fail "mapper did not start"
wait_for 20 "grep -q 'vm.good.region.*reason=memfd also mapped by pid $MAPPER' $T/status" ||
        fail "foreign mapper not detected: $(grep good $T/status)"
wait_for 20 "[ \$(stat $T/status vm.good.merging_pages) = 0 ] && [ \$(stat $T/status vm.good.zero_pages) = 0 ]" ||
        fail "pages of a foreign-mapped region stayed merged"
echo "  $(grep 'vm.good.region' $T/status)"
kill "$MAPPER"

stop_sim good
stop_sim victim
kill -TERM "$DEDUPD_PID"

echo "a VMA budget too small for every merge:"
wait "$DEDUPD_PID" || true
max=$(cat /proc/sys/vm/max_map_count)
# Leave ~300 VMAs for merging: fewer than the runs two guests could merge.
start_dedupd --pages-to-scan=4096 --sleep-millisecs=5 --vma-headroom=$((max - 300))
start_sim t1 --size=32 --image-seed=5 --seed=1 --writers=1
start_sim t2 --size=32 --image-seed=5 --seed=2 --writers=1
wait_for 30 "grep -q 'reason=VMA budget reached' $T/status" || fail "VMA budget never reached: $(grep t2 $T/status)"
sleep 2
for g in t1 t2; do
        eval "p=\$SIM_PID_$g"
        vmas=$(wc -l < /proc/$p/maps)
        echo "  guest $g: $vmas VMAs (dedupd counts $(stat $T/status vm.$g.vmas)), limit for merging 300"
        # The VMM's own mappings (thread stacks, malloc arenas) move too,
        # and a sanitizer runtime maps more as the process allocates.
        slack=16
        grep -q libasan "/proc/$p/maps" && slack=64
        [ "$vmas" -le $((300 + slack)) ] || fail "guest $g has $vmas VMAs, over the budget"
done
stop_sim t1
stop_sim t2
echo "PASS"

#!/bin/sh
# Idle mode: once the guests stop writing and what can be merged is merged,
# dedupd stops scanning (its scan counters stand still, its CPU use drops to
# next to nothing). A guest write wakes it within a tick; it scans, merges
# again, and goes idle again when the guests are quiet again. Scanning runs
# on three threads here (ScanThreads).
. "$(dirname "$0")/lib-daemon.sh"

MIB=64
# cpu_ticks: dedupd's user + system time, in clock ticks
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$DEDUPD_PID/stat"; }
status() { grep -E "^($(echo "$*" | tr ' ' '|'))=" "$T/status" | tr '\n' ' '; }

# wait_idle WHAT: dedupd idle again, or fail saying WHAT
wait_idle() {
        wait_for 60 "[ \$(stat $T/status idle) = 1 ]" ||
                fail "dedupd did not go idle $1: $(status full_scans pages_scanned pages_sharing pages_pending idle)"
}

start_dedupd --pages-to-scan=4096 --sleep-millisecs=5 --scan-threads=3
# Writers wait for SIGUSR1: the guests are idle until then. Guest a then
# gives 20 volatile pages new (unique) content: pages never merged, so
# write-protected only by idle mode. Guest b churns 40 image and zero pages:
# merged pages that break, half of them taking their image content back.
common="--size=$MIB --image-seed=7 --image-pct=50 --zero-pct=20 --writers=1 --write-rate=100 --writes-after=3600"
common="$common --verify-interval-ms=200"
start_sim a $common --seed=1 --unique-pct=25 --volatile-pct=5 --max-writes=20
start_sim b $common --seed=2 --unique-pct=30 --volatile-pct=0 --churn-pct=10 --max-writes=40

# b's image pages merge onto a's, zero pages go to zero memory.
want=$(( 2 * MIB * 256 * 40 / 100 ))
wait_for 60 "[ \$(( \$(stat $T/status pages_sharing) + \$(stat $T/status zero_pages) )) -ge $want ]" ||
        fail "saved only $(status pages_sharing zero_pages), want $want pages"
wait_idle "with idle guests"
[ "$(stat $T/status scan_threads)" = 3 ] || fail "scanning on $(stat $T/status scan_threads) threads, not 3"
echo "idle: $(status pages_sharing zero_pages full_scans idle_entries)"

# Idle: nothing scanned for 3 s, and hardly any CPU used. The guests'
# verifiers read all their memory meanwhile: reads do not wake dedupd.
scans=$(stat $T/status full_scans) scanned=$(stat $T/status pages_scanned) ticks=$(cpu_ticks)
sleep 3
ticks=$(( $(cpu_ticks) - ticks ))
echo "idle for 3 s: full_scans $scans -> $(stat $T/status full_scans), pages_scanned $scanned ->" \
     "$(stat $T/status pages_scanned), $ticks CPU ticks of $(( 3 * $(getconf CLK_TCK) ))"
[ "$(stat $T/status full_scans)" = "$scans" ] && [ "$(stat $T/status pages_scanned)" = "$scanned" ] ||
        fail "dedupd kept scanning idle guests"
[ "$(stat $T/status idle)" = 1 ] || fail "dedupd left idle mode with the guests idle"
[ "$ticks" -le $(( 3 * $(getconf CLK_TCK) / 20 )) ] || fail "idle dedupd used $ticks CPU ticks in 3 s"

# Guest a writes unmerged pages: the write faults reach its agent, which
# tells dedupd; it scans again at once, then idles again.
entries=$(stat $T/status idle_entries)
kill -USR1 "$SIM_PID_a"
wait_for 60 "[ \$(stat $T/status full_scans) -gt $scans ]" || fail "no scan after guest a wrote"
wait_for 30 "[ \$(stat $T/a.stats writes) = 20 ]" || fail "guest a did not write"
# Its stats file is rewritten every 500 ms: a scan can finish before.
wait_for 5 "[ \$(stat $T/a.stats dedup_written_faults) -ge 1 ]" || fail "guest a's writes were not write-protected"
wait_idle "after guest a wrote"
[ "$(stat $T/status idle_entries)" -gt "$entries" ] || fail "dedupd did not wake up when guest a wrote"
echo "guest a wrote: written faults $(stat $T/a.stats dedup_written_faults); $(status full_scans idle_entries)"

# Guest b breaks merged pages and restores some: merged again, idle again.
scans=$(stat $T/status full_scans) remapped=$(stat $T/b.stats dedup_remapped_pages)
kill -USR1 "$SIM_PID_b"
wait_for 60 "[ \$(stat $T/status full_scans) -gt $scans ]" || fail "no scan after guest b wrote"
wait_for 30 "[ \$(stat $T/b.stats writes) = 40 ]" || fail "guest b did not write"
wait_for 60 "[ \$(stat $T/b.stats dedup_remapped_pages) -gt $remapped ]" ||
        fail "nothing of guest b merged again after it wrote"
wait_idle "after guest b wrote"
echo "guest b wrote: cow breaks $(stat $T/b.stats dedup_cow_breaks), remapped $remapped ->" \
     "$(stat $T/b.stats dedup_remapped_pages); $(status full_scans idle_entries)"

for g in a b; do
        [ "$(stat $T/$g.stats hangs)" = 0 ] || fail "guest $g reports a hung writer"
        stop_sim $g
done
echo "PASS"

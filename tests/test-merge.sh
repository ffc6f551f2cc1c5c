#!/bin/sh
# Three simulated guests sharing an OS image under dedupd, with writers
# racing merges and un-merges and a verifier checking every byte: memory
# is actually freed, no byte is ever wrong, and when dedupd is killed with
# SIGKILL in the middle of merging the guests run on, unharmed; restarted,
# it gets the guests back (their agents reconnect) and the savings return.
. "$(dirname "$0")/lib-daemon.sh"

MIB=64
start_dedupd --pages-to-scan=4096 --sleep-millisecs=5
for g in a b c; do
        start_sim $g --size=$MIB --image-seed=7 --seed=$(printf %d "'$g") --image-pct=50 --zero-pct=20 \
                --unique-pct=25 --volatile-pct=5 --writers=2 --write-rate=2000 --churn-pct=2
done

# Image pages of b and c merge onto a's (2 x 50%), zero pages go to zero
# memory: expect well over a third of the 3 x 64 MiB saved.
want=$(( 3 * MIB * 256 * 35 / 100 ))
wait_for 60 "[ \$(( \$(stat $T/status pages_sharing) + \$(stat $T/status zero_pages) )) -ge $want ]" ||
        fail "saved only $(stat $T/status pages_sharing) sharing + $(stat $T/status zero_pages) zero pages, want $want"
echo "merged: pages_shared=$(stat $T/status pages_shared) pages_sharing=$(stat $T/status pages_sharing) zero_pages=$(stat $T/status zero_pages)"

# Memory really freed: each guest's memfd holds far less than its size.
sleep 1
for g in a b c; do
        kib=$(stat $T/$g.stats memfd_kib)
        echo "guest $g: memfd holds $kib KiB of $((MIB * 1024))"
        [ "$kib" -le $(( MIB * 1024 * 75 / 100 )) ] || fail "guest $g memfd still holds $kib KiB"
done

# Anonymous KiB in the guest RAM range of process $1: every mapping from the
# first to the last VMA of its guest memfd, whatever dedupd mapped there.
guest_ram_anon_kib() {
        awk '
        /^[0-9a-f]+-[0-9a-f]+ / {
                # hex addresses compare as strings once padded to one width
                split($1, r, "-"); start = sprintf("%16s", r[1]); end = sprintf("%16s", r[2])
                n++; vs[n] = start; ve[n] = end; ram[n] = ($0 ~ /memfd:guest-sim/)
                if (ram[n]) { if (lo == "" || start < lo) lo = start; if (end > hi) hi = end }
        }
        /^Anonymous:/ { an[n] = $2 }
        END { for (i = 1; i <= n; i++) if (vs[i] >= lo && ve[i] <= hi) s += an[i]; print s + 0 }
        ' /proc/$1/smaps
}

# Zero runs cost nothing even though the verifier reads every page: reads
# of a zero run allocate no anonymous memory (kernel zero page, or dedupd's
# all-zero pool area where the kernel has none). Only copy-on-write of
# churned pages may leave anonymous memory in guest RAM, far less than the
# zero runs.
for g in a b c; do
        eval "p=\$SIM_PID_$g"
        anon=$(guest_ram_anon_kib $p)
        zero_kib=$(( $(stat $T/status vm.$g.zero_pages) * 4 ))
        echo "guest $g: $anon KiB anonymous in guest RAM, $zero_kib KiB of zero runs merged and read"
        [ "$anon" -le $(( zero_kib / 4 )) ] || fail "guest $g: reading zero runs allocated $anon KiB"
done

# Writers keep racing merges and COW breaks for a while.
sleep 10
[ "$(stat $T/status unmerges)" -gt 0 ] || fail "no copy-on-write break happened: writers did not race merges"
echo "racing: unmerges=$(stat $T/status unmerges) merge_aborts=$(stat $T/status merge_aborts)"
# The sample of merges undone (one page in 64) saw the merges, and counts
# only undoing of what it saw.
sm=$(stat $T/status sampled_merges) su=$(stat $T/status sampled_undone) si=$(stat $T/status sampled_undone_in_scan)
echo "sample: merges=$sm undone=$su undone_in_scan=$si"
[ "$sm" -ge $(( want / 128 )) ] && [ "$su" -le "$sm" ] && [ "$si" -le "$su" ] ||
        fail "sample of merges undone: merges=$sm undone=$su undone_in_scan=$si (want merges >= $(( want / 128 )))"

# Merged pages are holes that dedupd neither reads nor asks about: with most
# of the guests merged, scanning asks where holes are far less often than
# it reads (it used to ask two or three times per run of data it read).
r0=$(stat $T/status scan_reads) p0=$(stat $T/status scan_hole_probes) s0=$(stat $T/status full_scans)
wait_for 30 "[ \$(stat $T/status full_scans) -ge $((s0 + 3)) ]" || fail "fewer than 3 full scans in 30 s"
reads=$(( $(stat $T/status scan_reads) - r0 )) probes=$(( $(stat $T/status scan_hole_probes) - p0 ))
echo "3 full scans of merged guests: $reads reads, $probes hole probes"
[ "$reads" -gt 0 ] && [ $(( probes * 4 )) -le "$reads" ] ||
        fail "scanning merged guests: $probes hole probes for $reads reads"

# SIGKILL the daemon mid-merge: guests go on, no writer hangs.
zero_before=$(stat $T/status zero_pages)
kill -9 "$DEDUPD_PID"
before=$(stat $T/a.stats writes)
sleep 3
after=$(stat $T/a.stats writes)
[ "$after" -gt "$before" ] || fail "guest a stopped writing after dedupd died ($before -> $after)"
for g in a b c; do
        [ "$(stat $T/$g.stats hangs)" = 0 ] || fail "guest $g reports a hung writer"
done

# reconnected N: every guest has come back N times
reconnected() {
        for g in a b c; do
                wait_for 20 "[ \$(stat $T/$g.stats dedup_reconnects) = $1 ] && [ \$(stat $T/$g.stats dedup_connected) = 1 ]" ||
                        fail "guest $g did not reconnect: $(grep -o 'dedup_[a-z]*=[0-9]*' $T/$g.stats | tr '\n' ' ')"
        done
}

# Restart, not merging: each agent copies what it kept merged on pools
# back into its memfd, keeps its zero overlays and registers again; the
# new dedupd counts those as zero pages without scanning anything.
rm -f "$T/status"
start_dedupd --run=0
reconnected 1
# The agents are back; dedupd takes in their reports as it reads them.
wait_for 10 "[ \$(stat $T/status zero_pages) -ge $((zero_before * 8 / 10)) ]"
echo "restarted with Run=0: zero_pages=$(stat $T/status zero_pages) (kept; $zero_before before the kill)" \
     "pages_sharing=$(stat $T/status pages_sharing)"
[ "$(stat $T/status zero_pages)" -ge $((zero_before * 8 / 10)) ] || fail "zero overlays not kept across the restart"
[ "$(stat $T/status pages_sharing)" = 0 ] || fail "a dedupd with Run=0 merged"

# And merging: as much saved again.
kill "$DEDUPD_PID"; wait "$DEDUPD_PID" 2>/dev/null || true
rm -f "$T/status"
start_dedupd --pages-to-scan=4096 --sleep-millisecs=5
reconnected 2
wait_for 60 "[ \$(( \$(stat $T/status pages_sharing) + \$(stat $T/status zero_pages) )) -ge $want ]" ||
        fail "after the restart saved only $(stat $T/status pages_sharing) sharing + $(stat $T/status zero_pages) zero pages"
echo "after restart: pages_sharing=$(stat $T/status pages_sharing) zero_pages=$(stat $T/status zero_pages)"
sleep 2
# Without an fd store the new dedupd could not keep the old pools: the
# agents copied what they had on them back, and no longer map them.
for g in a b c; do
        [ "$(stat $T/$g.stats hangs)" = 0 ] || fail "guest $g reports a hung writer"
        no_stale_pools "$(eval echo \$SIM_PID_$g)" || fail "guest $g still maps or holds pools of a dead dedupd" \
                "(inodes $(echo $stale))"
        stop_sim $g
done
echo "no guest maps or holds a pool of the dead dedupds"
echo "PASS"

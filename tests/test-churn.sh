#!/bin/sh
# Pairs of new guests sharing an OS image rewrite every page of it as fast
# as they can, half the time with its original content, while dedupd sees
# their pages for the first time and merges them at first sight: merges,
# refused merges and the copy-on-write breaks of merged pages race the
# writers, and every byte the guests read must stay right.
# Some pages pair up by hash and change before dedupd copies one into a new
# canonical page; such a page is dropped (canon_stale) and nothing merges
# onto it. That race is won only now and then (0 to 78 times per pair
# measured, none at all under load), so it is reported, not required:
# test-engine's hashed_stale checks the rule itself.
. "$(dirname "$0")/lib-daemon.sh"

start_dedupd --pages-to-scan=4096 --sleep-millisecs=5
for i in 1 2 3 4; do
        for g in a$i b$i; do
                SIM_NO_WAIT=1 start_sim $g --size=4 --image-seed=3 --seed=$(printf %d "'$g") --image-pct=100 \
                        --zero-pct=0 --unique-pct=0 --volatile-pct=0 --churn-pct=100 --writers=2 --write-rate=0
        done
        for g in a$i b$i; do sim_ready $g; done
        wait_for 30 "[ \$(stat $T/status pages_sharing) -gt 0 ]" || fail "pair $i: nothing merged"
        sleep 3
        echo "pair $i: canon_stale=$(stat $T/status canon_stale) pages_sharing=$(stat $T/status pages_sharing)" \
             "merge_aborts=$(stat $T/status merge_aborts) unmerges=$(stat $T/status unmerges)"
        for g in a$i b$i; do
                [ "$(stat $T/$g.stats hangs)" = 0 ] || fail "guest $g reports a hung writer"
                [ "$(stat $T/$g.stats dedup_remapped_pages)" -gt 0 ] || fail "guest $g: nothing of it merged"
                stop_sim $g     # its final verify must be clean
        done
done
echo "PASS"

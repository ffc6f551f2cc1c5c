#!/bin/sh
# dedupd short of resources degrades to "not merging (more), reason
# logged", never to a crash or a guest error: a memory cgroup limit below
# what its pools would need, an fd limit, and a full disk under its log.
# (vm.max_map_count near a VMM's VMA count: test-daemon-faults.sh.)
. "$(dirname "$0")/lib-daemon.sh"

command -v prlimit >/dev/null && command -v unshare >/dev/null || skip "no prlimit/unshare (package util-linux)"

guests_ok() {
        for g in "$@"; do
                [ "$(stat $T/$g.stats mismatches)" = 0 ] && [ "$(stat $T/$g.stats hangs)" = 0 ] ||
                        fail "guest $g: $(stat $T/$g.stats mismatches) wrong bytes, $(stat $T/$g.stats hangs) hangs"
        done
}

# --- 1. memory: canonical pages are charged to dedupd's cgroup ---
own=$(sed -n 's/^[0-9]*:[^:]*memory[^:]*://p' /proc/self/cgroup | head -n 1)
if [ -n "$own" ] && [ -d "/sys/fs/cgroup/memory$own" ]; then
        CG="/sys/fs/cgroup/memory$own/dedupd-test-$$"
        limit_file=memory.limit_in_bytes
else
        own=$(sed -n 's/^0:://p' /proc/self/cgroup)
        CG="/sys/fs/cgroup$own/dedupd-test-$$"
        limit_file=memory.max
fi
if mkdir "$CG" 2>/dev/null && echo $((64 << 20)) >"$CG/$limit_file" 2>/dev/null; then
        trap 'cleanup; rmdir "$CG" 2>/dev/null || true' EXIT
        sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" \
                "$DEDUPD" --socket="$T/vmm.sock" --status-file="$T/status" --bus=none --sleep-millisecs=5 \
                >>"$T/dedupd.log" 2>&1 &
        DEDUPD_PID=$!
        PIDS="$PIDS $DEDUPD_PID"
        wait_for 10 "[ -S '$T/vmm.sock' ] && [ -f '$T/status' ]" || fail "dedupd did not start in $CG"
        # 3 x 128 MiB sharing an image: their canonical pages alone would
        # need more than the 64 MiB the cgroup allows dedupd.
        for g in m1 m2 m3; do
                start_sim $g --size=128 --image-seed=6 --seed=$(printf %d "'${g#m}") --writers=1
        done
        wait_for 60 "[ \$(stat $T/status memory_limited) = 1 ]" || fail "dedupd never held back under a 64 MiB limit"
        wait_for 30 "[ \$(stat $T/status zero_pages) -gt 10000 ]" || fail "zero pages stopped merging too"
        sleep 2
        kill -0 "$DEDUPD_PID" 2>/dev/null || fail "dedupd died under its memory limit: $(dmesg | tail -n 2)"
        grep -q "Not creating canonical pages: .* within 32 MiB of its memory limit" "$T/dedupd.log" ||
                fail "no reason logged for holding back"
        echo "memory: alive under a 64 MiB cgroup limit (peak $(($(cat "$CG/memory.max_usage_in_bytes" 2>/dev/null || cat "$CG/memory.peak" 2>/dev/null || echo 0) >> 20)) MiB)," \
             "$(stat $T/status pages_shared) canonical pages, $(stat $T/status pages_sharing) sharing, $(stat $T/status zero_pages) zero, reason logged"
        guests_ok m1 m2 m3
        for g in m1 m2 m3; do stop_sim $g; done
        kill "$DEDUPD_PID"; wait "$DEDUPD_PID" 2>/dev/null || true
else
        echo "memory: skipped, cannot create a memory cgroup under $(dirname "$CG")"
        rmdir "$CG" 2>/dev/null || true
fi

# --- 2. file descriptors: room for a few VMs only ---
rm -f "$T/status"
prlimit --nofile=96:96 "$DEDUPD" --socket="$T/vmm.sock" --status-file="$T/status" --bus=none --sleep-millisecs=5 \
        >>"$T/dedupd.log" 2>&1 &
DEDUPD_PID=$!
PIDS="$PIDS $DEDUPD_PID"
wait_for 10 "[ -S '$T/vmm.sock' ] && [ -f '$T/status' ]" || fail "dedupd did not start with 96 fds"
in=""
out=0
for g in f1 f2 f3 f4 f5 f6 f7 f8; do
        rm -f "$T/$g.ready"
        "$SIM" --name=$g --socket="$T/vmm.sock" --stats-file="$T/$g.stats" --ready-file="$T/$g.ready" \
                --stats-interval-ms=200 --size=16 --image-seed=8 --seed=${g#f} --writers=1 >"$T/$g.log" 2>&1 &
        eval "SIM_PID_$g=$!"
        PIDS="$PIDS $!"
        wait_for 10 "[ -f '$T/$g.ready' ] || ! kill -0 \$SIM_PID_$g 2>/dev/null" || fail "guest-sim $g neither ready nor gone"
        if [ -f "$T/$g.ready" ]; then in="$in $g"; else out=$((out + 1)); fi
done
[ "$out" -gt 0 ] || fail "8 VMs registered with 96 fds"
grep -q "Not taking VMM pid .*: fewer than 64 file descriptors left" "$T/dedupd.log" || fail "no reason logged for refusing VMMs"
grep -l "dedup_client_start.*Resource temporarily unavailable" $T/f?.log >/dev/null || fail "refused VMMs were not told: $(grep -h dedup_client $T/f?.log | head -n 3)"
wait_for 30 "[ \$(stat $T/status pages_sharing) -gt 1000 ]" || fail "the VMs that got in did not merge"
# Idle with refused VMMs around: no busy loop.
t0=$(awk '{ print $14 + $15 }' /proc/$DEDUPD_PID/stat)
sleep 2
t1=$(awk '{ print $14 + $15 }' /proc/$DEDUPD_PID/stat)
echo "fds: $(echo $in | wc -w) VMs in, $out refused with the reason logged; dedupd used $((t1 - t0)) ticks in 2 s"
[ $((t1 - t0)) -lt 150 ] || fail "dedupd spins at its fd limit ($((t1 - t0)) ticks of CPU in 2 s)"
kill -0 "$DEDUPD_PID" || fail "dedupd died at its fd limit"
guests_ok $in
first=${in# }; first=${first%% *}
stop_sim $first
wait_for 10 "! grep -q '^vm\.$first\.' $T/status" || fail "VM $first not forgotten"
"$SIM" --name=late --socket="$T/vmm.sock" --size=8 --duration=2 >"$T/late.log" 2>&1 ||
        fail "no VMM taken after one left: $(tail -n 1 $T/late.log)"
echo "fds: after $first left, a new VMM got in"
for g in $in; do [ "$g" = "$first" ] || stop_sim $g; done
kill "$DEDUPD_PID"; wait "$DEDUPD_PID" 2>/dev/null || true

# --- 3. a full disk under its log ---
rm -f "$T/status"
mkdir "$T/logs"
unshare -m --propagation private sh -c '
        mount -t tmpfs -o size=8k none "$1/logs" && (dd if=/dev/zero of="$1/logs/fill" bs=1k 2>/dev/null || true) &&
        shift && exec "$@" 2>>"$0/logs/dedupd.log" >&2' "$T" "$T" \
        "$DEDUPD" --socket="$T/vmm.sock" --status-file="$T/status" --bus=none --sleep-millisecs=5 &
DEDUPD_PID=$!
PIDS="$PIDS $DEDUPD_PID"
wait_for 10 "[ -S '$T/vmm.sock' ] && [ -f '$T/status' ]" || fail "dedupd did not start with its log disk full"
start_sim d1 --size=32 --image-seed=9 --seed=1 --writers=1
start_sim d2 --size=32 --image-seed=9 --seed=2 --writers=1
wait_for 30 "[ \$(stat $T/status pages_sharing) -gt 1000 ]" || fail "no merging with the log disk full"
kill -0 "$DEDUPD_PID" || fail "dedupd died with its log disk full"
guests_ok d1 d2
echo "log disk full: merging ($(stat $T/status pages_sharing) pages sharing), alive"
stop_sim d1; stop_sim d2
echo "PASS"

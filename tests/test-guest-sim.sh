#!/bin/sh
# Self-test of tests/guest-sim, no daemon needed (a few seconds):
#  - two memfd sims with one image seed run writers and churn and exit 0
#    with zero mismatches; they really share image and zero pages, and a
#    third sim with --shift holds the same image one page further on;
#  - a sim whose memory is corrupted behind its back (--self-test-corrupt)
#    exits 1 with a MISMATCH line: the verifier can fail;
#  - a writer stuck inside a write (--self-test-stall) is reported as HANG,
#    exit 3: the watchdog can fail;
#  - SIGTERM gives a final verify pass and exit 0;
#  - the anon-ksm backend starts and verifies;
#  - usage errors exit 2 and name the option.
set -eu

: "${top_builddir:=$(cd "$(dirname "$0")/.." && pwd)}"
SIM=${GUEST_SIM:-$top_builddir/tests/guest-sim}
T=$(mktemp -d /tmp/guest-sim-test.XXXXXX)
PIDS=""
cleanup() {
        for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        rm -rf "$T"
}
trap cleanup EXIT INT TERM

fail() { echo "FAIL: $*"; exit 1; }
[ -x "$SIM" ] || fail "no $SIM"

# A socket path nobody listens on: registration must fall back cleanly
# even when a real dedupd runs on this machine.
# Verify passes 20 ms apart and a generous hang timeout keep the test
# steady on a loaded machine (a test is not a benchmark).
COMMON="--socket=$T/no-daemon.sock --size=32 --write-rate=5000 --verify-interval-ms=20 --hang-timeout=30"

key() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

wait_ready() {
        i=0
        while [ ! -f "$1" ]; do
                i=$((i + 1))
                [ $i -le 200 ] || fail "$1 never appeared"
                sleep 0.05
        done
}

# run_bg NAME ARGS...: start a sim, log in $T/NAME.log, pid in PID_NAME
run_bg() {
        n=$1; shift
        "$SIM" --name="$n" --stats-file="$T/$n.stats" --ready-file="$T/$n.ready" "$@" >"$T/$n.log" 2>&1 &
        eval "PID_$n=$!"
        PIDS="$PIDS $!"
}

# expect_exit NAME RC: wait for the sim and check its exit status
expect_exit() {
        eval "p=\$PID_$1"
        rc=0
        wait "$p" || rc=$?
        [ "$rc" = "$2" ] || { cat "$T/$1.log"; fail "sim $1 exited $rc, expected $2"; }
}

# page_lines PID FD: the first 64 bytes of each page of a sim's memfd, in
# hex, one line per page (the 16-byte header names the content, the rest
# is noise derived from it)
page_lines() {
        od -An -v -tx8 -w4096 "/proc/$1/fd/$2" | cut -c1-136
}

# Run everything at once: the whole test takes about as long as the
# longest sim.
run_bg a $COMMON --image-seed=9 --seed=1 --writers=2 --churn-pct=10 --duration=2.5 --stats-interval-ms=250
run_bg b $COMMON --image-seed=9 --seed=2 --writers=2 --churn-pct=10 --duration=2.5
run_bg s1 $COMMON --size=8 --image-seed=5 --seed=1 --writers=0 --duration=0
run_bg s2 $COMMON --size=8 --image-seed=5 --seed=2 --writers=0 --shift=1 --duration=0
run_bg corrupt $COMMON --seed=3 --writers=1 --churn-pct=20 --duration=1.5 --self-test-corrupt=300
run_bg stall $COMMON --seed=4 --writers=1 --duration=20 --hang-timeout=0.5 --self-test-stall=200
run_bg ksm --backend=anon-ksm --size=32 --verify-interval-ms=20 --seed=5 --writers=1 --churn-pct=5 --duration=1.5

# Content model: same image seed -> same image and zero pages at the same
# offsets; --shift=1 -> the same image one page further on. Sample pages
# over the guest (kinds come in runs of 16 pages) from the live memfds,
# while the sims keep verifying.
wait_ready "$T/s1.ready"
wait_ready "$T/s2.ready"
fd1=$(key "$T/s1.ready" memfd_fd)
fd2=$(key "$T/s2.ready" memfd_fd)
page_lines "$PID_s1" "$fd1" >"$T/s1.pages"
page_lines "$PID_s2" "$fd2" >"$T/s2.pages"
set -- $(awk 'NR == FNR { a[FNR] = $0; next }
              { total++; if (a[FNR] == $0) same++; if (a[FNR - 1] == $0) shifted++ }
              END { print total + 0, same + 0, shifted + 0 }' "$T/s1.pages" "$T/s2.pages")
total=$1 same=$2 shifted=$3
[ "$total" = 2048 ] || fail "read $total pages of sim s2, expected 2048"
echo "content: $shifted of $total pages of s1 found one page on in s2 (shift 1), $same at the same offset"
# 50% image + 20% zero pages are shared; unique and volatile pages are not.
[ $shifted -ge $((total * 60 / 100)) ] && [ $shifted -le $((total * 80 / 100)) ] ||
        fail "shifted sim shares $shifted of $total sampled pages, expected about 70%"
# At the same offset only zero pages coincide (image indexes differ by one).
[ $same -le $((total * 30 / 100)) ] || fail "shifted sim matches $same of $total pages unshifted"
for n in s1 s2; do
        eval "kill -TERM \$PID_$n"
        expect_exit $n 0
        grep -q "SIGTERM received" "$T/$n.log" || fail "sim $n: no SIGTERM note"
        grep -q "^guest-sim: final .* mismatches=0 " "$T/$n.log" || fail "sim $n: no clean final line"
        [ "$(key "$T/$n.stats" state)" = final ] || fail "sim $n: stats file not final"
done

# Two memfd sims, one image, writers and churn: clean.
for n in a b; do
        expect_exit $n 0
        grep -q "guest-sim: note: no dedupd listening" "$T/$n.log" || fail "sim $n: no fallback note"
        [ "$(key "$T/$n.stats" mismatches)" = 0 ] || fail "sim $n: mismatches"
        [ "$(key "$T/$n.stats" verified_passes)" -ge 2 ] || fail "sim $n: fewer than 2 verify passes"
        [ "$(key "$T/$n.stats" writes)" -gt 0 ] || fail "sim $n: writers did not write"
        [ "$(key "$T/$n.stats" memfd_kib)" = $((32 * 1024)) ] || fail "sim $n: memfd_kib wrong"
        [ "$(key "$T/$n.stats" dedup_connected)" = 0 ] || fail "sim $n: dedup_connected should be 0"
        grep "^guest-sim: final" "$T/$n.log"
done
[ "$(grep -c "^guest-sim: name=a " "$T/a.log")" -ge 2 ] || fail "sim a: periodic stats lines missing"

# Corruption behind the writers' back is caught.
expect_exit corrupt 1
grep -q "^guest-sim: MISMATCH name=corrupt page=[0-9]* offset=2000 " "$T/corrupt.log" ||
        { cat "$T/corrupt.log"; fail "corrupted sim printed no MISMATCH line"; }
grep "MISMATCH" "$T/corrupt.log" | head -n 1

# A writer stuck in a page write is a HANG.
expect_exit stall 3
grep -q "^guest-sim: HANG name=stall writer=0 " "$T/stall.log" || { cat "$T/stall.log"; fail "no HANG line"; }
[ "$(key "$T/stall.stats" hangs)" = 1 ] || fail "stalled sim: hangs != 1 in stats file"
grep "HANG" "$T/stall.log"

# Kernel KSM backend: anonymous MADV_MERGEABLE memory.
rc=0
wait "$PID_ksm" || rc=$?
if [ $rc = 4 ] && grep -q "MADV_MERGEABLE" "$T/ksm.log"; then
        echo "anon-ksm: skipped, $(grep MADV_MERGEABLE "$T/ksm.log")"
else
        [ $rc = 0 ] || { cat "$T/ksm.log"; fail "anon-ksm sim exited $rc"; }
        grep -q "^guest-sim: final .*backend=anon-ksm .* mismatches=0 " "$T/ksm.log" || fail "anon-ksm: no clean final"
        grep "^guest-sim: final" "$T/ksm.log"
fi

# Usage errors: exit 2, message names the option.
for bad in --size=abc --backend=zram --image-pct=101 --duration=-1 --writers=x --shift=8192 --name=a/b; do
        rc=0
        "$SIM" --size=32 "$bad" >"$T/usage.log" 2>&1 || rc=$?
        [ $rc = 2 ] || fail "'$bad' exited $rc, expected 2"
        opt=${bad%%=*}
        grep -q -- "$opt" "$T/usage.log" || { cat "$T/usage.log"; fail "'$bad': message does not name $opt"; }
done
rc=0
"$SIM" --image-pct=60 --zero-pct=30 >"$T/usage.log" 2>&1 || rc=$?
[ $rc = 2 ] && grep -q "add up to 120%" "$T/usage.log" || fail "percentages over 100 not refused (rc $rc)"

echo "PASS"

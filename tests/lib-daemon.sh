# Shell helpers for tests that run dedupd with guest simulators.
# Source it; it sets T (a private directory, removed on exit) and kills
# everything it started on every exit path.

set -eu

: "${top_builddir:=$(cd "$(dirname "$0")/.." && pwd)}"
DEDUPD="$top_builddir/daemon/dedupd"
SIM="$top_builddir/tests/guest-sim"
# On tmpfs: dedupd's status file and the guests' stats files are rewritten
# several times a second, and on a disk file system under I/O load one
# open() or rename() can block for seconds, stalling dedupd's event loop
# (seen as D-Bus calls timing out). DEDUPD_TEST_TMP overrides.
tmp=${DEDUPD_TEST_TMP:-/dev/shm}
[ -d "$tmp" ] && [ -w "$tmp" ] || tmp=/tmp
T=$(mktemp -d "$tmp/dedupd-test.XXXXXX")
PIDS=""

cleanup() {
        for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        if [ "${KEEP_TEST_DIR:-}" = 1 ]; then echo "test dir kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT INT TERM

skip() { echo "SKIP: $*"; exit 77; }
fail() {
        echo "FAIL: $*"
        [ -f "$T/dedupd.log" ] && { echo "--- dedupd log (tail)"; tail -n 30 "$T/dedupd.log"; }
        [ -f "$T/status" ] && { echo "--- dedupd status"; grep -v '^vm' "$T/status" | tr '\n' ' '; echo; }
        exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root (userfaultfd on other processes' memory, /proc/PID/maps)"
[ -x "$DEDUPD" ] || fail "no $DEDUPD"
[ -x "$SIM" ] || fail "no $SIM"

# start_dedupd [options...]: dedupd on $T/vmm.sock writing $T/status
start_dedupd() {
        ${DEDUPD_WRAPPER:-} "$DEDUPD" --socket="$T/vmm.sock" --status-file="$T/status" --bus="${DEDUPD_BUS:-none}" "$@" >>"$T/dedupd.log" 2>&1 &
        DEDUPD_PID=$!
        PIDS="$PIDS $DEDUPD_PID"
        wait_for 10 "[ -S '$T/vmm.sock' ] && [ -f '$T/status' ]" || fail "dedupd did not start"
}

# start_managed_dedupd ARGS...: dedupd as under systemd, run by
# tests/svc-manager: socket activation, the fd store, restarted 100 ms
# after it dies (DEDUPD_PID follows it: see managed_restarted)
start_managed_dedupd() {
        "$top_builddir/tests/svc-manager" --socket="$T/vmm.sock" --pidfile="$T/svc.pid" -- \
                ${DEDUPD_WRAPPER:-} "$DEDUPD" --status-file="$T/status" --bus="${DEDUPD_BUS:-none}" "$@" \
                >>"$T/dedupd.log" 2>&1 &
        SVC_MANAGER_PID=$!
        PIDS="$PIDS $!"
        managed_restarted ""
}

# stop_managed_dedupd: stop svc-manager, which stops dedupd (SIGTERM)
stop_managed_dedupd() {
        kill -TERM "$SVC_MANAGER_PID"
        wait "$SVC_MANAGER_PID" || fail "svc-manager did not stop cleanly"
        rm -f "$T/svc.pid"
}

# process_diagnosis PID: what PID is doing (state, stack with gdb if any)
process_diagnosis() {
        echo "$(grep '^State' /proc/$1/status 2>/dev/null);"
        command -v gdb >/dev/null && gdb -p "$1" -batch -ex 'bt 16' 2>/dev/null | grep '^#'
}

# svc_started OLD: SVC is the main process svc-manager started after OLD
svc_started() {
        wait_for 10 "[ -s '$T/svc.pid' ] && [ \"\$(cat '$T/svc.pid')\" != '$1' ]" ||
                fail "svc-manager started no process after '$1'"
        SVC=$(cat "$T/svc.pid")
        PIDS="$PIDS $SVC"       # after svc-manager: killed too if the test fails
}

# managed_restarted OLD: DEDUPD_PID is the dedupd started after OLD, its
# status file written
managed_restarted() {
        rm -f "$T/status"
        svc_started "$1"
        DEDUPD_PID=$SVC
        wait_for "${DEDUPD_START_S:-10}" "[ -f '$T/status' ]" ||
                fail "dedupd $DEDUPD_PID did not start: $(process_diagnosis "$DEDUPD_PID")"
}

# pool_inodes PID: inodes of the pool memfds PID maps or holds
pool_inodes() {
        awk '$6 ~ /^\/memfd:dedupd-pool/ { print $5 }' "/proc/$1/maps"
        for f in /proc/"$1"/fd/*; do
                case "$(readlink "$f")" in /memfd:dedupd-pool*) command stat -L -c %i "$f" ;; esac
        done
}

# no_stale_pools PID: PID maps or holds no pool the running dedupd does not
# hold (by inode: every dedupd names its pools alike), so the kernel has
# freed those of dead dedupds; else false, with them in $stale
no_stale_pools() {
        stale=$(pool_inodes "$1" | sort -u | grep -vxF "$(pool_inodes "$DEDUPD_PID" | sort -u)" || true)
        [ -z "$stale" ]
}

# sim_var NAME: NAME as a shell variable suffix (VM names may hold - . :)
sim_var() { echo "$1" | tr -c 'A-Za-z0-9_\n' _; }

# start_sim NAME [options...]: a guest simulator registered with dedupd
# (unless --backend=anon-ksm), up when this returns (SIM_NO_WAIT=1: call
# sim_ready NAME later, to start several at once)
start_sim() {
        name=$1; shift
        sock="--socket=$T/vmm.sock"
        case " $* " in *" --backend=anon-ksm "*) sock="" ;; esac
        rm -f "$T/$name.ready" "$T/$name.stats"
        "$SIM" --name="$name" ${sock:+"$sock"} --stats-file="$T/$name.stats" \
                --ready-file="$T/$name.ready" --stats-interval-ms=200 "$@" >"$T/$name.log" 2>&1 &
        eval "SIM_PID_$(sim_var "$name")=$!"
        PIDS="$PIDS $!"
        [ -n "${SIM_NO_WAIT:-}" ] || sim_ready "$name"
}

# sim_ready NAME: wait until guest-sim NAME is up (after SIM_NO_WAIT=1 start_sim)
sim_ready() {
        wait_for 30 "[ -f '$T/$1.ready' ]" || { cat "$T/$1.log"; fail "guest-sim $1 not ready"; }
}

# wait_for SECONDS CONDITION: poll every 0.1 s
wait_for() {
        end=$(( $(date +%s) + $1 ))
        while ! eval "$2"; do
                [ "$(date +%s)" -ge "$end" ] && return 1
                sleep 0.1
        done
        return 0
}

# stat FILE KEY: a key=value from a status or stats file (0 if absent)
stat() {
        v=$(sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1)
        echo "${v:-0}"
}

# stop_sim NAME: SIGTERM, then it must exit 0 (no mismatch, no hang)
stop_sim() {
        eval "p=\$SIM_PID_$(sim_var "$1")"
        kill -TERM "$p" 2>/dev/null || true
        rc=0
        wait "$p" || rc=$?
        grep -h "guest-sim: final" "$T/$1.log" || true
        [ "$rc" = 0 ] || { tail -n 20 "$T/$1.log"; fail "guest-sim $1 exited $rc"; }
}

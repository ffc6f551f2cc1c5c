# Shell helpers for the benchmarks in tests/bench/: find (or make) the
# build, run one workload of guest simulators under dedupd or under kernel
# KSM, and measure what it saved, how fast and at what CPU cost. Source it
# from a script in tests/bench/. Benchmarks print figures; they assert
# nothing about speed (these machines are noisy), only that no guest saw a
# wrong byte.
#
# Kernel KSM's sysfs settings are read first and written back on every
# exit path (the EXIT trap below; INT and TERM exit through it).

set -eu

srcdir=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${top_builddir:-}" ]; then
        for d in "$srcdir" "$srcdir/build"; do
                [ -x "$d/daemon/dedupd" ] && [ -x "$d/tests/guest-sim" ] && { top_builddir=$d; break; }
        done
fi
if [ -z "${top_builddir:-}" ]; then
        "$srcdir/contrib/quickstart.sh" build
        top_builddir="$srcdir/build"
        make -s -C "$top_builddir" tests/guest-sim >/dev/null   # a check program
fi
export top_builddir
top_srcdir=$srcdir
. "$srcdir/tests/lib-daemon.sh"
. "$srcdir/tests/lib-bus.sh"

KSM=/sys/kernel/mm/ksm
KSM_KNOBS="run pages_to_scan sleep_millisecs merge_across_nodes use_zero_pages max_page_sharing"
KSM_SAVED=""

# ksm_save: remember every KSM knob this machine has (once).
ksm_save() {
        [ -d "$KSM" ] || skip "no $KSM (kernel without CONFIG_KSM)"
        [ -n "$KSM_SAVED" ] && return 0
        for k in $KSM_KNOBS; do
                [ -f "$KSM/$k" ] && KSM_SAVED="$KSM_SAVED $k=$(cat "$KSM/$k")"
        done
        KSM_SAVED="${KSM_SAVED# }"
}

# ksm_restore: write them back. run=2 first unmerges what the bench merged,
# as stopping KSM alone would leave it merged.
ksm_restore() {
        [ -n "$KSM_SAVED" ] || return 0
        echo 2 >"$KSM/run" 2>/dev/null || true
        for kv in $KSM_SAVED; do
                k=${kv%%=*}
                [ "$k" = run ] || echo "${kv#*=}" >"$KSM/$k" 2>/dev/null || echo "bench: could not restore $KSM/$k" >&2
        done
        for kv in $KSM_SAVED; do
                [ "${kv%%=*}" = run ] && echo "${kv#*=}" >"$KSM/run"
        done
        KSM_SAVED=""
}

bench_exit() {
        rc=$?
        ksm_restore
        cleanup
        exit "$rc"
}
trap bench_exit EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }

# ratio A B: A / B with two decimals, inf when B is 0
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print (a > 0 ? "inf" : "n/a") }'; }

# ticks_s PID: CPU seconds of PID, all its threads, the dead ones too.
ticks_s() {
        awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# thread_cpu_s PID COMM: CPU seconds of PID's threads named COMM (schedstat, ns).
thread_cpu_s() {
        for t in /proc/"$1"/task/*; do
                [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ] && cut -d' ' -f1 "$t/schedstat" 2>/dev/null
        done | awk '{ s += $1 } END { printf "%.3f\n", s / 1e9 }'
}

# engine_cpu_s ENGINE: CPU seconds spent deduplicating so far: dedupd and
# the agent threads of the simulators, or ksmd.
engine_cpu_s() {
        if [ "$1" = dedupd ]; then
                { ticks_s "$DEDUPD_PID"; for p in $SIMS_PIDS; do thread_cpu_s "$p" dedup-agent; done; } |
                        awk '{ s += $1 } END { printf "%.3f\n", s }'
        else
                ticks_s "$(pgrep -x ksmd)"
        fi
}

# saved_pages ENGINE: pages saved so far (dedupd: pages_sharing + zero
# pages; KSM: pages_sharing + ksm_zero_pages).
saved_pages() {
        if [ "$1" = dedupd ]; then
                echo $(( $(stat "$T/status" saved_bytes) / 4096 ))
        else
                echo $(( $(cat "$KSM/pages_sharing") + $(cat "$KSM/ksm_zero_pages" 2>/dev/null || echo 0) ))
        fi
}

scanned_pages() {
        if [ "$1" = dedupd ]; then stat "$T/status" pages_scanned; else cat "$KSM/pages_scanned"; fi
}

# scan_sample ENGINE: "CPU_SECONDS PAGES_SCANNED" of the engine itself (not
# the agents), at one instant: for dedupd both from its status file.
scan_sample() {
        if [ "$1" = dedupd ]; then
                awk -F= '$1 == "cpu_us" { c = $2 / 1e6 } $1 == "pages_scanned" { p = $2 } END { print c, p }' "$T/status"
        else
                echo "$(ticks_s "$(pgrep -x ksmd)") $(cat "$KSM/pages_scanned")"
        fi
}

# rate CPU0 PAGES0 CPU1 PAGES1: GiB scanned per CPU second between two
# scan_sample()s: what one scan thread running flat out reads in a second
rate() { awk -v c="$(($4 - $2))" -v t0="$1" -v t1="$3" 'BEGIN { printf "%.2f", (t1 > t0 ? c * 4096 / 2^30 / (t1 - t0) : 0) }'; }

# read_ceiling MIB THREADS: print what THREADS threads reading a memfd of
# MIB MiB with pread() (and hashing) reach here (tests/bench/read-ceiling),
# and set CEILING to its GiB/s per CPU with the hash. Memory allocated in
# one go is more contiguous and reads faster: 5.0 GiB/s at 4 GiB against
# 3.4-4.0 at 512 MiB on a 2-CPU test machine, so use the guest's size.
# read_ceiling FILE...: the same, one thread, over these files.
read_ceiling() {
        make -s -C "$top_builddir" tests/bench/read-ceiling >/dev/null
        ceiling=$("$top_builddir/tests/bench/read-ceiling" "$@") || fail "read-ceiling failed"
        echo "$ceiling"
        CEILING=$(echo "$ceiling" | sed -n 's/.*pread_hash_gib_s_per_cpu=\([0-9.]*\).*/\1/p')
}

# guest_ceiling: read_ceiling over the memfds of the simulators started by
# start_sims, read where they are (/proc/PID/fd): how fast memory reads
# here depends on where its pages are (see read-ceiling.c), and this is
# what the guests' scan is up against. Called with dedupd running, which
# first stops scanning (Run=0): a scan or settling on the other CPU would
# share the memory bandwidth and lower the ceiling.
guest_ceiling() {
        "$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" set Run 0 >/dev/null
        for p in $SIMS_PIDS; do # a guest's memfd may be open more than once
                for f in /proc/"$p"/fd/*; do
                        case $(readlink "$f") in /memfd:guest-sim:*) echo "$(command stat -L -c %i "$f") $f" ;; esac
                done
        done >"$T/guest-memfds"
        files=$(sort -u -k1,1 "$T/guest-memfds" | cut -d' ' -f2)
        [ -n "$files" ] || fail "no guest memfd to read"
        # shellcheck disable=SC2086
        read_ceiling $files
}

# until_scans ENGINE N: poll every 10 ms (wait_for's 100 ms would blur a
# window of a second) until the engine's full_scans counter reaches N
until_scans() {
        end=$(( $(date +%s) + 600 ))
        while [ "$(full_scans "$1")" -lt "$2" ]; do
                [ "$(date +%s)" -lt "$end" ] || fail "fewer than $2 full scans after 600 s"
                sleep 0.01
        done
}

# cow_ksm: copy-on-write faults on KSM pages, host-wide
cow_ksm() { awk '$1 == "cow_ksm" { print $2; f = 1 } END { if (!f) print 0 }' /proc/vmstat; }

# cow_breaks ENGINE: merged pages the guests' writes have un-merged so far
# (dedupd: its unmerges, none asked for here; KSM: cow_ksm, host-wide).
cow_breaks() {
        if [ "$1" = dedupd ]; then stat "$T/status" unmerges; else cow_ksm; fi
}

full_scans() {
        if [ "$1" = dedupd ]; then stat "$T/status" full_scans; else cat "$KSM/full_scans"; fi
}

# start_engine ENGINE [dedupd options...]: dedupd (not merging yet, on a
# private bus) at its defaults, or KSM stopped with its knobs saved and set
# as an operator tuning it for speed would (ENGINE ksm: pages_to_scan=10000,
# sleep_millisecs=0) or at its defaults (ksm-default: 100 pages every
# 20 ms); then start the guests.
start_engine() {
        engine=$1; shift
        if [ "$engine" = dedupd ]; then
                [ -n "${BUS_ADDRESS:-}" ] || start_private_bus
                DEDUPD_BUS=$BUS_ADDRESS start_dedupd --run=0 --status-interval-ms=50 "$@"
        else
                ksm_save
                echo 2 >"$KSM/run"
                echo 0 >"$KSM/run"
                if [ "$engine" = ksm-default ]; then
                        echo 100 >"$KSM/pages_to_scan"
                        echo 20 >"$KSM/sleep_millisecs"
                else
                        echo 10000 >"$KSM/pages_to_scan"
                        echo 0 >"$KSM/sleep_millisecs"
                fi
                echo 1 >"$KSM/merge_across_nodes" 2>/dev/null || true
                echo 0 >"$KSM/use_zero_pages" 2>/dev/null || true
        fi
}

# run_engine ENGINE: start merging now.
run_engine() {
        if [ "$1" = dedupd ]; then
                "$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" set Run 1 >/dev/null
        else
                echo 1 >"$KSM/run"
        fi
}

# stop_engine ENGINE: dedupd is killed (its guests run on); KSM unmerges.
stop_engine() {
        if [ "$1" = dedupd ]; then
                kill -TERM "$DEDUPD_PID" 2>/dev/null || true
                wait "$DEDUPD_PID" 2>/dev/null || true
        else
                echo 2 >"$KSM/run"
        fi
}

# start_sims ENGINE N MIB [guest-sim options...]: N simulators sharing one
# OS image (image seed 1), each with its own unique content; SIMS_PIDS.
start_sims() {
        engine=$1 n=$2 mib=$3; shift 3
        backend=memfd
        [ "$engine" = dedupd ] || backend=anon-ksm
        SIMS="" SIMS_PIDS=""
        i=1
        while [ "$i" -le "$n" ]; do
                start_sim "b$i" --backend="$backend" --size="$mib" --seed="$i" --verify-interval-ms=1000 "$@"
                SIMS="$SIMS b$i"
                eval "SIMS_PIDS=\"\$SIMS_PIDS \$SIM_PID_b$i\""
                i=$((i + 1))
        done
}

# stop_sims: every simulator must end clean: no wrong byte, no hang.
stop_sims() {
        for s in $SIMS; do stop_sim "$s" >/dev/null; done
}

# sims_sum KEY: a stats key summed over the simulators.
sims_sum() {
        for s in $SIMS; do stat "$T/$s.stats" "$1"; done | awk '{ s += $1 } END { print s + 0 }'
}

# sims_max KEY, sims_min KEY: a stats key's largest, smallest value
sims_max() { sims_pick "$1" '>'; }
sims_min() { sims_pick "$1" '<'; }
sims_pick() {
        for s in $SIMS; do stat "$T/$s.stats" "$1"; done | awk "NR == 1 || \$1 $2 m { m = \$1 } END { print m + 0 }"
}

# converge ENGINE MAX_S [QUIET_S]: merge from now until savings stop
# growing (under 1% more in QUIET_S seconds, default 5) after the engine
# went twice over all memory (a starved ksmd may not run for a while), or
# MAX_S pass. Sets SAVED (pages), CONVERGE95_S (seconds until 95% of
# SAVED), CPU_S and SCANNED (CPU seconds and pages scanned until then).
converge() {
        engine=$1 max=$2 quiet=${3:-5}
        : >"$T/samples"
        cpu0=$(engine_cpu_s "$engine")
        scan0=$(scanned_pages "$engine") full0=$(full_scans "$engine")
        t0=$(now)
        run_engine "$engine"
        ref=0 tref=0
        while :; do
                sleep 0.2
                t=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
                saved=$(saved_pages "$engine")
                echo "$t $saved $(engine_cpu_s "$engine") $(scanned_pages "$engine")" >>"$T/samples"
                if [ "$saved" -gt $((ref + ref / 100 + 16)) ]; then ref=$saved tref=$t; fi
                awk -v t="$t" -v r="$tref" -v m="$max" -v q="$quiet" -v f="$(( $(full_scans "$engine") - full0 ))" \
                        'BEGIN { exit !((t - r >= q && f >= 2) || t >= m) }' && break
        done
        SAVED=$saved
        set -- $(awk -v goal="$((saved * 95 / 100))" -v c0="$cpu0" -v s0="$scan0" \
                '$2 >= goal { printf "%s %.3f %d\n", $1, $3 - c0, $4 - s0; exit }' "$T/samples")
        CONVERGE95_S=$1 CPU_S=$2 SCANNED=$3
}

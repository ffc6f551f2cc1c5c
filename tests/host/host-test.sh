#!/bin/sh
# host-test.sh [RESULT_TTY]
#
# Runs inside the test host of tests/host (started at boot by
# dedupd-host-test.service): the commands an operator runs against the
# installed dedupd, under the host's own systemd and system bus. Each is
# printed on RESULT_TTY (default /dev/ttyS1) with its verdict:
#   PASS: / FAIL:     the operator sees what the documentation promises, or not
#   INFO:             a measurement
# with the evidence indented below it ("    | "), then the closing line
# "host-test: N passed, N failed" and the host powers off, whatever happened.
#
# The VMs are guest simulators (guest-sim): memfd guest RAM registered with
# dedupd on /run/dedupd/vmm.sock as a VMM would, with writer threads and a
# verifier that checks every byte of guest RAM.
# shellcheck disable=SC2086 # $M (name, path, interface) and $SIMS split on purpose
set -u

T=/usr/lib/dedupd-host-test
SIM=$T/guest-sim
W=/var/tmp/dedupd-host-test
M="org.dedupd1 /org/dedupd1 org.dedupd1.Manager"
# An unprivileged operator: neither root nor in the admin group "dedupd".
OPERATOR=dedupd-op
MIB=64
# MAX_MAP_COUNT: vm.max_map_count as systemd/50-dedupd.conf ships it.
# shellcheck source=/dev/null # written by build-host.sh
. "$T/expect"

passed=0 failed=0
SIMS=""

mkdir -p "$W"
exec 3>"${1:-/dev/ttyS1}"

# say LINE: on the result port, and in the journal (stdout).
say() {
        echo "$*" >&3
        echo "$*"
}

# show FILE [LINES]: FILE's first lines, indented, as evidence.
show() {
        head -n "${2:-12}" "$1" | sed 's/^/    | /' >&3
        head -n "${2:-12}" "$1" | sed 's/^/    | /'
}

pass() {
        passed=$((passed + 1))
        say "PASS: $*"
}

fail() {
        failed=$((failed + 1))
        say "FAIL: $*"
}

info() {
        say "INFO: $*"
}

# run CMD...: CMD with its output in $W/out; CMD's exit status.
run() {
        "$@" >"$W/out" 2>&1
}

# wait_for SECONDS CONDITION: poll every 0.5 s.
wait_for() {
        end=$(($(date +%s) + $1))
        while ! eval "$2"; do
                [ "$(date +%s)" -ge "$end" ] && return 1
                sleep 0.5
        done
        return 0
}

# elapsed T0: seconds since T0 (date +%s.%N), to a tenth.
elapsed() {
        echo "$(date +%s.%N) $1" | awk '{ printf "%.1f", $1 - $2 }'
}

# stat FILE KEY: a key=value from a simulator's stats file (0 if absent).
stat() {
        v=$(sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1)
        echo "${v:-0}"
}

# saved: bytes dedupd saves (pages sharing + zero pages), as dedupctl tells.
saved() {
        v=$(dedupctl --json status 2>/dev/null | sed -n 's/.*"SavedBytes": \([0-9]*\).*/\1/p')
        echo "${v:-0}"
}

# start_sim NAME SEED: a 64 MiB guest sharing an OS image with the others,
# started in the background. Waits until it has registered (its ready file)
# and its stats say so; fails if it exits first (a failed registration is
# a setup failure for guest-sim) or takes over 180 s.
start_sim() {
        rm -f "$W/$1.ready" "$W/$1.stats"
        # Gentle load: under TCG every CPU is slow; the verifier still reads all
        # of guest RAM about once a second. A page write may take long while two
        # vCPUs are shared by four busy processes: 30 s before a HANG.
        "$SIM" --name="$1" --size="$MIB" --image-seed=7 --seed="$2" --image-pct=50 --zero-pct=20 \
                --unique-pct=25 --volatile-pct=5 --writers=1 --write-rate=200 --churn-pct=1 \
                --verify-interval-ms=1000 --hang-timeout=30 --stats-interval-ms=500 \
                --stats-file="$W/$1.stats" --ready-file="$W/$1.ready" >"$W/$1.log" 2>&1 &
        eval "SIM_PID_$1=$!"
        SIMS="$SIMS $1"
        wait_for 180 "[ -f '$W/$1.ready' ] || ! kill -0 $! 2>/dev/null" &&
                wait_for 10 "[ \$(stat $W/$1.stats dedup_connected) = 1 ] || ! kill -0 $! 2>/dev/null" &&
                kill -0 $! 2>/dev/null
}

# drop_sim NAME: forget a simulator that exited.
drop_sim() {
        wait "$(sim_pid "$1")" 2>/dev/null
        SIMS=$(echo $SIMS | tr ' ' '\n' | grep -vx "$1" | tr '\n' ' ')
}

sim_pid() {
        eval "echo \$SIM_PID_$1"
}

# sims_verified WHAT: every simulator is alive and has verified all of its
# RAM at least twice since now (so after WHAT happened), with no mismatch
# and no hung writer. Prints one line per simulator into $W/out.
sims_verified() {
        : >"$W/out"
        for s in $SIMS; do
                eval "before_$s=$(stat "$W/$s.stats" verified_passes)"
        done
        ok=0
        for s in $SIMS; do
                eval "want=\$((before_$s + 2))"
                if ! kill -0 "$(sim_pid "$s")" 2>/dev/null; then
                        echo "$s: exited" >>"$W/out"
                        tail -n 5 "$W/$s.log" >>"$W/out"
                        ok=1
                        continue
                fi
                wait_for 120 "[ \$(stat $W/$s.stats verified_passes) -ge $want ] || ! kill -0 $(sim_pid "$s") 2>/dev/null" || true
                f=$W/$s.stats
                echo "$s: verified_passes=$(stat "$f" verified_passes) mismatches=$(stat "$f" mismatches)" \
                        "hangs=$(stat "$f" hangs) dedup_connected=$(stat "$f" dedup_connected)" \
                        "memfd_kib=$(stat "$f" memfd_kib)" >>"$W/out"
                [ "$(stat "$f" verified_passes)" -ge "$want" ] && [ "$(stat "$f" mismatches)" = 0 ] &&
                        [ "$(stat "$f" hangs)" = 0 ] && kill -0 "$(sim_pid "$s")" 2>/dev/null || ok=1
        done
        if [ "$ok" = 0 ]; then
                pass "guest-sims $(echo $SIMS | tr ' ' ,) after $1: running, every byte verified twice since, 0 wrong"
        else
                fail "guest-sims after $1: a simulator died, stalled or read a wrong byte"
        fi
        show "$W/out"
}

finish() {
        for s in $SIMS; do
                kill -9 "$(sim_pid "$s")" 2>/dev/null || true
        done
        say "host-test: $passed passed, $failed failed"
        # The host's job is done: QEMU exits when it powers off.
        systemctl poweroff --no-block
}
trap finish EXIT
trap 'exit 1' INT TERM

say "INFO: host $(uname -r), $(systemd --version | head -n 1), $(dbus-daemon --version | head -n 1)"
state=$(systemctl is-system-running --wait 2>/dev/null)
if [ "$state" = running ]; then
        pass "systemctl is-system-running: running"
else
        fail "systemctl is-system-running: $state"
        systemctl --failed --no-pager --plain >"$W/out" 2>&1
        show "$W/out"
fi

# --- sysctl.d ----------------------------------------------------------------
if run sysctl vm.max_map_count && grep -qx "vm.max_map_count = $MAX_MAP_COUNT" "$W/out"; then
        pass "sysctl vm.max_map_count: $MAX_MAP_COUNT as 50-dedupd.conf ships it"
else
        fail "sysctl vm.max_map_count: want $MAX_MAP_COUNT (50-dedupd.conf)"
fi
show "$W/out"

# --- Start, sd_notify status ---------------------------------------------------
t0=$(date +%s.%N)
if run systemctl start dedupd && [ "$(systemctl is-active dedupd)" = active ]; then
        pass "systemctl start dedupd: active (READY=1 after $(elapsed "$t0") s)"
        journalctl -u dedupd --no-pager -o short-monotonic | head -n 5 >"$W/line"
        show "$W/line"
else
        fail "systemctl start dedupd: $(systemctl is-active dedupd)"
        show "$W/out"
fi
run systemctl status dedupd --no-pager --lines=0
if grep -q 'Status: "Merging: ' "$W/out"; then
        pass "systemctl status dedupd: shows the sd_notify STATUS text"
        grep 'Status: ' "$W/out" >"$W/line"
        show "$W/line"
else
        fail "systemctl status dedupd: no 'Status: \"Merging: ...\"' line"
        show "$W/out" 20
fi

# --- The system bus ---------------------------------------------------------------
if run busctl set-property $M PagesToScan u 5000 &&
        [ "$(busctl get-property $M PagesToScan)" = "u 5000" ]; then
        pass "busctl set-property $M PagesToScan u 5000 (root): taken, reads back u 5000"
else
        fail "busctl set-property $M PagesToScan u 5000 (root)"
        show "$W/out"
fi

useradd --system --no-create-home --shell /usr/sbin/nologin "$OPERATOR" 2>/dev/null || true
if run runuser -u "$OPERATOR" -- busctl set-property $M PagesToScan u 6000; then
        fail "runuser -u $OPERATOR -- busctl set-property ... PagesToScan u 6000: accepted from an unprivileged user"
elif grep -q 'Access denied' "$W/out" && [ "$(busctl get-property $M PagesToScan)" = "u 5000" ]; then
        pass "runuser -u $OPERATOR -- busctl set-property $M PagesToScan u 6000: refused, value unchanged"
else
        fail "runuser -u $OPERATOR -- busctl set-property ... PagesToScan u 6000: refused, but not by the bus policy"
fi
show "$W/out"
if run runuser -u "$OPERATOR" -- dedupctl status; then
        pass "runuser -u $OPERATOR -- dedupctl status: read access for anyone"
else
        fail "runuser -u $OPERATOR -- dedupctl status: refused"
        show "$W/out"
fi

if wait_for 10 "journalctl -u dedupd --no-pager >'$W/out' 2>&1 && grep -q 'PagesToScan changed from .* to 5000' '$W/out'"; then
        pass "journalctl -u dedupd: the property change is logged"
        grep 'PagesToScan changed' "$W/out" >"$W/line"
        show "$W/line"
else
        fail "journalctl -u dedupd: no 'PagesToScan changed from ... to 5000'"
        tail -n 12 "$W/out" >"$W/line"
        show "$W/line"
fi

# --- Socket activation ----------------------------------------------------------------
# The service stops; dedupd.socket keeps listening. The first VMM to connect
# must start dedupd and register through the socket systemd passes it.
run systemctl stop dedupd
if [ "$(systemctl is-active dedupd)" = inactive ] && [ "$(systemctl is-active dedupd.socket)" = active ]; then
        pass "systemctl stop dedupd: inactive, dedupd.socket still listening"
else
        fail "systemctl stop dedupd: dedupd $(systemctl is-active dedupd), dedupd.socket $(systemctl is-active dedupd.socket)"
        show "$W/out"
fi
since=$(date '+%Y-%m-%d %H:%M:%S')
t0=$(date +%s.%N)
start_sim vm1 1
vm1=$?
if [ "$(systemctl is-active dedupd)" = active ] &&
        journalctl -u dedupd --since="$since" --no-pager -o cat | grep -q '^Started dedupd'; then
        pass "socket activation: the first VMM connecting (guest-sim vm1) started dedupd.service"
else
        fail "socket activation: dedupd $(systemctl is-active dedupd) after guest-sim vm1 connected"
fi
journalctl -u dedupd --since="$since" --no-pager -o short-monotonic | tail -n 4 >"$W/line"
show "$W/line"
# libdedup gives the daemon 5 s to answer HELLO (HANDSHAKE_TIMEOUT_MS),
# including the time systemd takes to start dedupd for the first connect.
if [ "$vm1" = 0 ]; then
        pass "socket activation: guest-sim vm1 registered through the passed socket ($(elapsed "$t0") s from start to ready)"
else
        fail "socket activation: guest-sim vm1 did not register on its first connect ($(elapsed "$t0") s from its start)"
        tail -n 2 "$W/vm1.log" >"$W/line"
        show "$W/line"
        # The other checks need vm1: once more, now that dedupd runs.
        kill -9 "$(sim_pid vm1)" 2>/dev/null
        drop_sim vm1
        if start_sim vm1 1; then
                info "guest-sim vm1 started again with dedupd running: registered"
        else
                fail "guest-sim vm1 started again with dedupd running: not registered"
                show "$W/vm1.log"
        fi
fi
# PagesToScan is runtime state: the activated dedupd has its default again.
busctl set-property $M PagesToScan u 5000

# --- Guests merge ---------------------------------------------------------------------
for s in vm2:2 vm3:3; do
        if ! start_sim "${s%:*}" "${s#*:}"; then
                fail "guest-sim ${s%:*}: not registered"
                show "$W/${s%:*}.log"
        fi
done
# Image pages of two sims merge onto the third's (2 x 50%), zero pages go
# (3 x 20%): over half of 3 x 64 MiB. Ask for more than a third.
want=$((3 * MIB * 1024 * 1024 * 35 / 100))
if wait_for 300 "[ \$(saved) -ge $want ]"; then
        pass "dedupctl status: $(($(saved) >> 20)) MiB saved of 3 x $MIB MiB (want >= $((want >> 20)) MiB)"
else
        fail "dedupctl status: only $(($(saved) >> 20)) MiB saved after 300 s (want >= $((want >> 20)) MiB)"
fi
dedupctl status >"$W/out" 2>&1
show "$W/out" 4
dedupctl vms >"$W/out" 2>&1
show "$W/out"
sleep 5
sims_verified "merging"

# --- Restart --------------------------------------------------------------------------
# The restarted dedupd gets its pools back from systemd's fd store; each
# VMM's agent registers again by itself and reports what it kept merged,
# which dedupd takes over as it is: the savings stay, no page goes back
# into a guest's memfd (each agent still has its merged pages after).
for s in $SIMS; do
        eval "merged_$s=\$(stat \"\$W/\$s.stats\" dedup_merged_pages)"
done
before=$(saved)
if run systemctl restart dedupd && [ "$(systemctl is-active dedupd)" = active ]; then
        pass "systemctl restart dedupd: active again"
else
        fail "systemctl restart dedupd: $(systemctl is-active dedupd)"
        show "$W/out"
fi
back() {
        for s in $SIMS; do
                [ "$(stat "$W/$s.stats" dedup_connected)" = 1 ] && [ "$(stat "$W/$s.stats" dedup_reconnects)" -ge 1 ] || return 1
        done
        [ "$(saved)" -ge $((before * 8 / 10)) ]
}
if [ "$before" -gt 0 ] && wait_for 300 back; then
        pass "savings after restart: $(($(saved) >> 20)) MiB (was $((before >> 20)) MiB), every VMM registered again"
else
        fail "savings after restart: dedupctl status says $(($(saved) >> 20)) MiB (was $((before >> 20)) MiB)"
fi
kept() {
        for s in $SIMS; do
                [ "$(stat "$W/$s.stats" dedup_merged_pages)" -ge $(( $(eval echo \$merged_$s) * 8 / 10 )) ] || return 1
        done
}
if kept && journalctl -u dedupd --no-pager -o cat | grep -q 'of the previous run kept'; then
        pass "restart kept the merged pages: pools back from the fd store, no VMM re-homed its pages"
else
        fail "restart lost merged pages: $(for s in $SIMS; do echo "$s $(stat "$W/$s.stats" dedup_merged_pages) of $(eval echo \$merged_$s);"; done)"
fi
{
        dedupctl status | head -n 2
        journalctl -u dedupd --no-pager -o cat | grep -i 'previous run' | tail -n 2
        for s in $SIMS; do
                echo "$s: dedup_connected=$(stat "$W/$s.stats" dedup_connected) dedup_reconnects=$(stat "$W/$s.stats" dedup_reconnects) memfd_kib=$(stat "$W/$s.stats" memfd_kib) of $((MIB * 1024))"
        done
} >"$W/out" 2>&1
show "$W/out"
sims_verified "systemctl restart dedupd"

# A new VMM registers with the restarted dedupd and merges (its own zero
# pages and the image's common blocks), so the stop below has a live client.
if start_sim vm4 4 && wait_for 120 "[ \$(saved) -gt 0 ] && [ \$(stat $W/vm4.stats dedup_connected) = 1 ]"; then
        pass "guest-sim vm4 after the restart: registered, $(($(saved) >> 20)) MiB saved"
else
        fail "guest-sim vm4 after the restart: dedup_connected=$(stat "$W/vm4.stats" dedup_connected), saved $(saved) bytes"
        show "$W/vm4.log"
fi

# --- Stop -------------------------------------------------------------------------------
# With dedupd.socket listening, the agents coming back start dedupd again
# (systemd warns that the socket can still trigger it): stopping dedupd
# alone is a restart. Stopping it for good takes the socket too.
if run systemctl stop dedupd; then
        pass "systemctl stop dedupd: stopped (now $(systemctl is-active dedupd): the VMMs' agents reconnect through dedupd.socket)"
else
        fail "systemctl stop dedupd: $(systemctl is-active dedupd)"
fi
sims_verified "systemctl stop dedupd"
if run systemctl stop dedupd.socket dedupd && [ "$(systemctl is-active dedupd)" = inactive ] &&
        [ "$(systemctl is-active dedupd.socket)" = inactive ]; then
        pass "systemctl stop dedupd.socket dedupd: both inactive"
else
        fail "systemctl stop dedupd.socket dedupd: dedupd $(systemctl is-active dedupd), socket $(systemctl is-active dedupd.socket)"
fi
sims_verified "systemctl stop dedupd.socket dedupd"
# dedupd ran the whole time without systemd killing it (WatchdogSec=30s)
# or it crashing: only the stops and restarts asked for above. (NRestarts
# cannot tell: a manual restart resets it.)
journalctl -u dedupd --no-pager -o short-monotonic >"$W/out" 2>&1
grep -E "Watchdog timeout|Failed with result|code=(killed|dumped)" "$W/out" >"$W/line"
if [ -s "$W/line" ]; then
        fail "journalctl -u dedupd: dedupd was killed or failed during the run"
else
        pass "journalctl -u dedupd: no watchdog timeout, crash or failure during the run"
fi
show "$W/line"

# Warnings the operator would find in the journal (dedupd, its socket, the
# bus and the service manager about them), for a look.
journalctl -b -p warning --no-pager -o short-monotonic -u dedupd -u dedupd.socket -u dbus >"$W/out" 2>&1
grep -v '^-- ' "$W/out" >"$W/line" || true
info "warnings in journalctl -b -p warning -u dedupd -u dedupd.socket -u dbus: $(wc -l <"$W/line")"
show "$W/line" 15

# SIGTERM: writers stop, a last full verify, exit 0 only if no byte was wrong.
for s in $SIMS; do
        kill -TERM "$(sim_pid "$s")" 2>/dev/null
        rc=0
        wait "$(sim_pid "$s")" || rc=$?
        grep -h 'guest-sim: final' "$W/$s.log" >"$W/line"
        if [ "$rc" = 0 ]; then
                pass "guest-sim $s SIGTERM: final verify clean, exit 0"
        else
                fail "guest-sim $s SIGTERM: exit $rc"
                tail -n 8 "$W/$s.log" >"$W/line"
        fi
        show "$W/line" 2
done
SIMS=""

# --- D-Bus activation ---------------------------------------------------------
# With dedupd stopped, a call to org.dedupd1 makes dbus-daemon ask systemd
# for dedupd.service (org.dedupd1.service: SystemdService=).
run systemctl stop dedupd
if run busctl --timeout=60 get-property $M PagesToScan && [ "$(systemctl is-active dedupd)" = active ]; then
        pass "busctl get-property $M PagesToScan with dedupd stopped: D-Bus activation started dedupd.service"
else
        fail "busctl get-property $M PagesToScan with dedupd stopped: dedupd $(systemctl is-active dedupd)"
fi
show "$W/out"

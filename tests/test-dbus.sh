#!/bin/sh
# The operator surface over a real dbus-daemon with the project's policy,
# driven by the real busctl: every tunable set and read back, invalid
# values refused with their name and range and logged, nothing changed by a
# refusal, counters moving as guests merge, VM objects coming and going,
# Run=2 unmerging while property reads keep answering within 100 ms, and a
# non-root caller refused.
. "$(dirname "$0")/lib-daemon.sh"
. "$(dirname "$0")/lib-bus.sh"

command -v busctl >/dev/null || skip "no busctl (Debian package systemd)"

# The installed interface XML is what dedupd really serves.
"$DEDUPD" --bus-introspect="$T/api.xml" || fail "--bus-introspect failed"
cmp "$T/api.xml" "$(dirname "$0")/../dbus/org.dedupd1.xml" ||
        fail "dbus/org.dedupd1.xml is stale: regenerate it with dedupd --bus-introspect"
start_private_bus
B="busctl --address=$BUS_ADDRESS"
M="org.dedupd1 /org/dedupd1 org.dedupd1.Manager"

DEDUPD_BUS=$BUS_ADDRESS start_dedupd --pages-to-scan=4096 --sleep-millisecs=5
wait_for 10 "$B status org.dedupd1 >/dev/null 2>&1" || fail "org.dedupd1 never appeared on the bus"

# get NAME: the value alone ("5000", "true", "\"none\"")
get() { $B get-property $M "$1" | cut -d' ' -f2-; }

# Every tunable: a good value is taken and read back, a bad one refused
# with the name and allowed range, logged, and the value left alone.
echo "tunables:"
while read -r name sig good bad; do
        $B set-property $M "$name" "$sig" "$good" || fail "$name=$good refused"
        [ "$(get "$name")" = "$good" ] || fail "$name reads $(get "$name") after setting $good"
        if out=$($B set-property $M "$name" "$sig" "$bad" 2>&1); then fail "$name=$bad accepted"; fi
        echo "$out" | grep -q "for $name: allowed" || fail "refusal of $name=$bad does not say what is allowed: $out"
        [ "$(get "$name")" = "$good" ] || fail "refused $name=$bad changed it to $(get "$name")"
        grep -q "Refused D-Bus change: Invalid value '$bad' for $name" "$T/dedupd.log" || fail "refusal of $name not logged"
        echo "  $name: $good taken, $bad refused"
done <<EOF
MaxPageSharing u 3 1
PagesToScan u 5000 0
SleepMillisecs u 10 60001
MaxPageSharing u 256 1
StableNodeChainsPruneMillisecs u 500 86400001
AdvisorTargetScanTimeSec u 60 0
AdvisorMaxCpuPercent u 50 101
VmaHeadroom u 2048 1000001
ScanThreads u 2 65
Run u 0 3
EOF
# Booleans and the mode take any well-typed value; only the mode has bad ones.
for name in MergeAcrossNodes UseZeroPages SmartScan; do
        $B set-property $M $name b false && [ "$(get $name)" = false ] || fail "$name=false not taken"
        $B set-property $M $name b true && [ "$(get $name)" = true ] || fail "$name=true not taken"
done
$B set-property $M AdvisorMode s scan-time && [ "$(get AdvisorMode)" = '"scan-time"' ] || fail "AdvisorMode not taken"
out=$($B set-property $M AdvisorMode s sometimes 2>&1) && fail "AdvisorMode=sometimes accepted"
echo "$out" | grep -q "allowed none, scan-time" || fail "AdvisorMode refusal: $out"
grep -q "PagesToScan changed from 4096 to 5000" "$T/dedupd.log" || fail "accepted change not logged"

# Tunable changes are signalled; counters are not (checked below).
$B monitor --match="type='signal',interface='org.freedesktop.DBus.Properties'" >"$T/monitor" 2>&1 &
PIDS="$PIDS $!"
sleep 0.5
$B set-property $M AdvisorMode s none
$B set-property $M PagesToScan u 4096
$B set-property $M SleepMillisecs u 5
$B set-property $M Run u 1
wait_for 5 "grep -q PagesToScan $T/monitor" || { cat $T/monitor; fail "no PropertiesChanged for PagesToScan"; }

# Idle reads as a boolean; scanning on two threads (ScanThreads set
# above) goes on below.
case "$($B get-property $M Idle)" in "b true" | "b false") ;; *) fail "Idle: $($B get-property $M Idle)" ;; esac

# Guests merge: counters move, a VM object per guest.
for g in a b; do
        start_sim $g --size=32 --image-seed=11 --seed=$(printf %d "'$g") --writers=1
done
wait_for 30 "[ \$(get PagesSharing) -gt 2000 ]" || fail "PagesSharing stays at $(get PagesSharing)"
echo "merged: PagesShared=$(get PagesShared) PagesSharing=$(get PagesSharing) ZeroPages=$(get ZeroPages) GeneralProfit=$(get GeneralProfit)"
[ "$(get GeneralProfit)" -gt 0 ] || fail "GeneralProfit $(get GeneralProfit) with $(get PagesSharing) pages shared"
$B call $M ListVMs | grep -q '"a" "" [0-9]* 0 "merging" "/org/dedupd1/vm/a"' || fail "ListVMs: $($B call $M ListVMs)"
VA="org.dedupd1 /org/dedupd1/vm/a org.dedupd1.VM"
[ "$($B get-property $VA MergingPages | cut -d' ' -f2)" -gt 0 ] || fail "VM a has no merging pages"
$B get-property $VA Regions | grep -q '"merging" ""' || fail "VM a's region: $($B get-property $VA Regions)"

# dedupctl, the operator's view of the same: text, JSON that parses, verbs.
CTL="$top_builddir/daemon/dedupctl --address=$BUS_ADDRESS"
$CTL status | tee "$T/ctl-status"
grep -q "saved: .*MiB" "$T/ctl-status" || fail "dedupctl status shows no savings"
$CTL vms | tee "$T/ctl-vms"
grep -q "^a .* merging " "$T/ctl-vms" || fail "dedupctl vms lacks VM a"
for v in status vms "vm a" get; do
        $CTL --json $v | python3 -c 'import json,sys; json.load(sys.stdin)' || fail "dedupctl --json $v is not JSON"
done
[ "$($CTL --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["PagesSharing"] > 0)')" = True ] ||
        fail "dedupctl --json status: no PagesSharing"
$CTL vm a | grep -q "^  0: gpa 0x0, 32.0 MiB, memfd .*, merging" || fail "dedupctl vm a: $($CTL vm a)"
$CTL set pages-to-scan 3000 && [ "$($CTL get PagesToScan)" = 3000 ] || fail "dedupctl set/get"
rc=0; $CTL set PagesToScan 0 2>"$T/ctl-err" || rc=$?
[ $rc = 1 ] && grep -q "Invalid value '0' for PagesToScan" "$T/ctl-err" || fail "dedupctl set refusal: exit $rc, $(cat "$T/ctl-err")"
rc=0; $CTL vm nosuchvm 2>/dev/null || rc=$?; [ $rc = 4 ] || fail "dedupctl vm nosuchvm exited $rc, not 4"
rc=0; $CTL get NoSuchTunable 2>/dev/null || rc=$?; [ $rc = 4 ] || fail "dedupctl get NoSuchTunable exited $rc"
rc=0; $CTL frobnicate 2>/dev/null || rc=$?; [ $rc = 2 ] || fail "dedupctl frobnicate exited $rc, not 2"
rc=0; "$top_builddir/daemon/dedupctl" --address=unix:path=$T/nobus status 2>/dev/null || rc=$?
[ $rc = 3 ] || fail "dedupctl without a bus exited $rc, not 3"
timeout 3 $CTL watch --interval=0.5 >"$T/watch" || true
[ "$(grep -c '^--$' "$T/watch")" -ge 2 ] || fail "dedupctl watch did not refresh: $(cat "$T/watch")"
$CTL set PagesToScan 4096

# EBUSY rules: refused with their own error, nothing changed.
out=$($B set-property $M MaxPageSharing u 5 2>&1) && fail "MaxPageSharing changed while pages are shared"
echo "$out" | grep -q "Cannot change MaxPageSharing to 5 while pages are shared" || fail "EBUSY refusal: $out"
out=$($B set-property $VA MergeGroup q 3 2>&1) && fail "MergeGroup changed while VM a has merged pages"
grep -q "PagesSharing" "$T/monitor" && fail "a counter was signalled"

# Unmerge one VM; the other keeps its pages. Merge() resumes.
$B call $VA Unmerge
# State says not-merging only once no merge of VM a is in flight either.
wait_for 10 "[ \"\$($B get-property $VA State)\" = 's \"not-merging\"' ]" || fail "VM a state: $($B get-property $VA State)"
[ "$($B get-property $VA MergingPages)" = "t 0" ] && [ "$($B get-property $VA ZeroPages)" = "t 0" ] || fail "VM a still merged"
wait_for 5 "grep -q 'unmerged on request' $T/monitor" || fail "no PropertiesChanged for VM a's Reason"
$B set-property $VA MergeGroup q 3 && [ "$($B get-property $VA MergeGroup)" = "q 3" ] || fail "MergeGroup not taken"
$B call $VA Merge

# Run=2: everything unmerges in bounded steps while reads keep answering:
# each read must be answered within 100 ms (busctl's call timeout; the
# wall time printed includes starting busctl).
$B set-property $M Run u 2
worst=0
for i in $(seq 1 30); do
        t0=$(date +%s%N)
        $B --timeout=0.1 get-property $M PagesSharing >/dev/null || fail "a property read took over 100 ms during Run=2"
        ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        [ $ms -gt $worst ] && worst=$ms
done
echo "Run=2: 30 property reads answered within 100 ms each (slowest busctl run $worst ms)"
wait_for 20 "[ \$(get PagesSharing) = 0 ] && [ \$(get ZeroPages) = 0 ]" || fail "Run=2 left $(get PagesSharing) pages"

# Non-root: reads yes, writes and methods no (the bus policy refuses).
nobody="setpriv --reuid=65534 --regid=65534 --clear-groups"
$nobody $B get-property $M PagesToScan >/dev/null || fail "non-root cannot read"
out=$($nobody $B set-property $M PagesToScan u 100 2>&1) && fail "non-root changed PagesToScan"
echo "$out" | grep -qi "access denied\|AccessDenied\|rejected" || fail "non-root refusal: $out"
$nobody $B call $M ResetStatistics 2>/dev/null && fail "non-root reset the statistics"
[ "$(get PagesToScan)" = 4096 ] || fail "PagesToScan changed by non-root"

# LogControl1.
L="org.dedupd1 /org/freedesktop/LogControl1 org.freedesktop.LogControl1"
$B set-property $L LogLevel s debug && [ "$($B get-property $L LogLevel)" = 's "debug"' ] || fail "LogLevel"
$B set-property $L LogLevel s loud 2>/dev/null && fail "LogLevel=loud accepted"

# VM objects vanish with their VMs.
stop_sim a
stop_sim b
wait_for 10 "! $B tree org.dedupd1 | grep -q /org/dedupd1/vm/" || fail "VM objects left: $($B tree org.dedupd1)"
echo "PASS"

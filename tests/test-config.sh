#!/bin/sh
# dedupd.conf: the shipped example parses (as is and with every setting
# uncommented), bad files are refused with file:line for every bad line and
# the daemon does not start, values apply and options override them, and
# [MergeGroup] rules keep VMs of different groups from sharing pages.
. "$(dirname "$0")/lib-daemon.sh"

example="$(dirname "$0")/../daemon/dedupd.conf"
"$DEDUPD" --check-config="$example" || fail "the shipped dedupd.conf does not parse"
sed 's/^#\([A-Za-z]*=\)/\1/; s/^#\[/[/; s/^AllowGroup=.*/AllowGroup=root/' "$example" >"$T/full.conf"
"$DEDUPD" --check-config="$T/full.conf" || fail "the shipped dedupd.conf, uncommented, does not parse"
for key in $("$DEDUPD" --help | sed -n 's/^  --\([a-z-]*\)=.*/\1/p'); do
        name=$(echo "$key" | sed -E 's/(^|-)([a-z])/\U\2/g')
        grep -q "^$name=" "$T/full.conf" || fail "tunable $name missing from the shipped dedupd.conf"
done

cat >"$T/bad.conf" <<CONF
[Manager]
PagesToScan=0
Bogus=1
MaxPageSharing=1
[Elsewhere]
noequals
[MergeGroup]
Name=a*
[MergeGroup]
Group=70000
Uuid=not-a-uuid
CONF
rc=0
"$DEDUPD" --check-config="$T/bad.conf" >"$T/check.out" 2>&1 || rc=$?
cat "$T/check.out"
[ $rc = 1 ] || fail "--check-config exited $rc on a bad file"
for want in ":2: Invalid value '0' for PagesToScan: allowed 1..1000000" ":3: unknown key 'Bogus'" \
            ":4: Invalid value '1' for MaxPageSharing: allowed 2..1048576" ":5: unknown section \[Elsewhere\]" \
            ":6: expected Key=Value" ":7: \[MergeGroup\] without Group=" ":10: Invalid value '70000' for Group" \
            ":11: 'not-a-uuid' is not a uuid"; do
        grep -q "bad.conf$want" "$T/check.out" || fail "no error '$want'"
done
rc=0
"$DEDUPD" --bus=none --config="$T/bad.conf" --socket="$T/bad.sock" >"$T/bad.log" 2>&1 || rc=$?
[ $rc = 1 ] && [ ! -e "$T/bad.sock" ] || fail "dedupd started (exit $rc) with a bad config"
"$DEDUPD" --bus=none --config="$T/missing.conf" >/dev/null 2>&1 && fail "dedupd started without its --config file"

# Values apply, options override; merge groups by name.
cat >"$T/dedupd.conf" <<CONF
[Manager]
PagesToScan=4096
SleepMillisecs=50
[MergeGroup]
Group=1
Name=iso*
CONF
start_dedupd --config="$T/dedupd.conf" --sleep-millisecs=5
grep -q "pages_to_scan=4096 sleep_millisecs=5 " "$T/dedupd.log" || fail "config or override not applied: $(grep listening "$T/dedupd.log")"
for g in iso b c; do
        start_sim $g --size=32 --image-seed=9 --seed=$(printf %d "'$g") --writers=1
done
wait_for 30 "[ \$(stat $T/status vm.c.merging_pages) -gt 1000 ]" || fail "b and c did not merge"
sleep 1
[ "$(stat $T/status vm.iso.group)" = 1 ] && [ "$(stat $T/status vm.b.group)" = 0 ] || fail "groups: $(grep group $T/status)"
echo "same image: iso (group 1) merges $(stat $T/status vm.iso.merging_pages) pages, b $(stat $T/status vm.b.merging_pages), c $(stat $T/status vm.c.merging_pages)"
# iso merges only duplicates within itself, from its own group's pool.
[ "$(stat $T/status vm.iso.merging_pages)" -lt $(( $(stat $T/status vm.b.merging_pages) / 4 )) ] ||
        fail "iso merges as much as b: shares across merge groups?"
grep -q dedupd-pool-g0 "/proc/$SIM_PID_iso/maps" && fail "iso maps group 0's pool"
grep -q dedupd-pool-g1 "/proc/$SIM_PID_b/maps" && fail "b maps group 1's pool"
for g in iso b c; do stop_sim $g; done
echo "PASS"

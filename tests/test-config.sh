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
"$DEDUPD" --bus=none --status-interval-ms=5 >/dev/null 2>"$T/interval.err" && fail "dedupd started with --status-interval-ms=5"
grep -q "status-interval-ms: '5' is not" "$T/interval.err" || fail "no error for --status-interval-ms=5: $(cat "$T/interval.err")"

# Values apply, options override; merge groups by name, and by a domain
# file (as the libvirt hook writes) that wins over dedupd.conf's rules.
UUID_ISOD=4f0e2a36-1c1e-4b7e-9d35-0a6f3c1d2e01 UUID_E=4f0e2a36-1c1e-4b7e-9d35-0a6f3c1d2e02
mkdir "$T/domains"
printf '[MergeGroup]\nGroup=2\nUuid=%s\n' $UUID_ISOD >"$T/domains/$UUID_ISOD.conf"
printf '[MergeGroup]\nGroup=two\nUuid=%s\n' $UUID_E >"$T/domains/$UUID_E.conf"
cat >"$T/dedupd.conf" <<CONF
[Manager]
PagesToScan=4096
SleepMillisecs=50
[Registration]
DomainDirectory=$T/domains
[MergeGroup]
Group=1
Name=iso*
CONF
start_dedupd --config="$T/dedupd.conf" --sleep-millisecs=5 --status-interval-ms=20
grep -q "pages_to_scan=4096 sleep_millisecs=5 " "$T/dedupd.log" || fail "config or override not applied: $(grep listening "$T/dedupd.log")"
start_sim isod --uuid=$UUID_ISOD --size=32 --image-seed=9 --seed=5 --writers=1
for g in iso b c; do
        start_sim $g --size=32 --image-seed=9 --seed=$(printf %d "'$g") --writers=1
done
wait_for 30 "[ \$(stat $T/status vm.c.merging_pages) -gt 1000 ]" || fail "b and c did not merge"
# While guests are scanned (their writers keep it from going idle), the
# status file is rewritten every 20 ms: each write renames a new file over
# the old one, so count the inodes seen.
n=$(for i in $(seq 50); do ls -i "$T/status"; sleep 0.01; done | sort -u | wc -l)
[ "$n" -ge 10 ] || fail "the status file was written $n times in 50 polls with --status-interval-ms=20"
[ "$(stat "$T/status" cpu_us)" -gt 0 ] || fail "no cpu_us in the status file"
sleep 1
[ "$(stat $T/status vm.iso.group)" = 1 ] && [ "$(stat $T/status vm.b.group)" = 0 ] &&
        [ "$(stat $T/status vm.isod.group)" = 2 ] || fail "groups: $(grep group $T/status)"
echo "same image: iso (group 1) merges $(stat $T/status vm.iso.merging_pages) pages, isod (group 2)" \
     "$(stat $T/status vm.isod.merging_pages), b $(stat $T/status vm.b.merging_pages), c $(stat $T/status vm.c.merging_pages)"
# iso and isod merge only duplicates within themselves, from their own
# group's pool.
for g in iso isod; do
        [ "$(stat $T/status vm.$g.merging_pages)" -lt $(( $(stat $T/status vm.b.merging_pages) / 4 )) ] ||
                fail "$g merges as much as b: shares across merge groups?"
done
grep -q dedupd-pool-g0 "/proc/$SIM_PID_iso/maps" && fail "iso maps group 0's pool"
grep -q dedupd-pool-g1 "/proc/$SIM_PID_b/maps" && fail "b maps group 1's pool"
grep -q dedupd-pool-g1 "/proc/$SIM_PID_isod/maps" && fail "isod maps group 1's pool"
# A domain file that does not parse keeps its VM out, with the reason.
"$SIM" --name=e --uuid=$UUID_E --socket="$T/vmm.sock" --size=8 >"$T/e.log" 2>&1 && fail "VM e with a bad domain file ran"
grep -q "dedup_client_start.*Invalid argument" "$T/e.log" || fail "VM e was not told: $(cat "$T/e.log")"
grep -q "VM 'e'.*domain file in DomainDirectory= is invalid" "$T/dedupd.log" || fail "VM e refused without the reason"
grep -q "$UUID_E.conf:2: Invalid value 'two' for Group" "$T/dedupd.log" || fail "the bad domain file's error is not logged"
for g in iso isod b c; do stop_sim $g; done
echo "PASS"

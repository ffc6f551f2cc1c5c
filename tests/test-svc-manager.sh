#!/bin/sh
# svc-manager (tests/svc-manager.c), the stand-in for systemd's service
# manager, keeps what its service pushes into the fd store and passes it
# back on restart, as dedupd.socket and dedupd.service do under systemd.
# First a scripted service whose every notification is known: fd store
# rules, NotifyAccess=main, what a restarted process is given. Then the real
# dedupd with two guests: its pools are stored, passed back with their names
# after a SIGKILL, the guests come back with no wrong byte and keep their
# merged pages (DESIGN.md: restart without loss), and SIGTERM stops it all.
. "$(dirname "$0")/lib-daemon.sh"

SHIM="$top_builddir/tests/svc-manager"
PY=/usr/bin/python3
[ -x "$SHIM" ] || fail "no $SHIM"
[ -x "$PY" ] || skip "no $PY (package python3)"
LOG=$T/dedupd.log       # svc-manager's lines and its service's, shown by fail()

# start_shim ARGS...: svc-manager on $T/vmm.sock
start_shim() {
        "$SHIM" --socket="$T/vmm.sock" --pidfile="$T/svc.pid" "$@" >>"$LOG" 2>&1 &
        SHIM_PID=$!
        PIDS="$PIDS $SHIM_PID"
}

# logged LINE: svc-manager logs LINE within 10 s
logged() {
        line=$1
        wait_for 10 'grep -qF -- "$line" "$LOG"' || fail "svc-manager did not log '$line'"
}

# list_store: $T/store gets "NAME INODE" lines, svc-manager's SIGUSR1 listing
list_store() {
        n=$(grep -c 'svc-manager: fd store holds' "$LOG" || true)
        kill -USR1 "$SHIM_PID"
        wait_for 5 "[ \$(grep -c 'svc-manager: fd store holds' '$LOG') -gt $n ]" || fail "no fd store listing on SIGUSR1"
        awk -v n="$n" '/svc-manager: fd store holds/ { k++; next }
                       k == n && /svc-manager: fd store: / { print $4, $6 }' "$LOG" >"$T/store"
}

# stop_shim: SIGTERM; svc-manager stops its service and exits 0, cleaned up
stop_shim() {
        kill -TERM "$SHIM_PID"
        rc=0
        wait "$SHIM_PID" || rc=$?
        [ "$rc" = 0 ] || fail "svc-manager exited $rc on SIGTERM"
        grep -qF "svc-manager: $SVC killed by signal 15" "$LOG" || grep -qF "svc-manager: $SVC exited with status 0" "$LOG" ||
                fail "svc-manager did not stop $SVC"
        ! kill -0 "$SVC" 2>/dev/null || fail "$SVC still runs after svc-manager stopped"
        [ ! -e "$T/vmm.sock" ] && [ ! -e "$T/svc.pid" ] || fail "svc-manager left its socket or pidfile"
}

# 1. A scripted service. Its first run stores fds as dedupd does, and some
# that must not be stored; its second run checks what it was given (its
# assertions fail it, and svc-manager restarts it again) and removes some.
cat >"$T/service.py" <<'EOF'
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"].replace("@", "\0", 1))
def notify(msg, fds=()):
    socket.send_fds(s, [msg.encode()], list(fds))
inodes = sys.argv[1]
if os.environ["LISTEN_FDS"] == "1":
    a, b1, b2, x = (os.memfd_create(n) for n in ("a", "b1", "b2", "x"))
    notify("FDSTORE=1\nFDNAME=a", [a])
    notify("FDSTORE=1\nFDNAME=a-dup", [os.dup(a)])                    # the same open file
    notify("FDSTORE=1\nFDNAME=b", [b1, b2])
    notify("FDSTORE=1\nFDNAME=bad:name", [x])                         # stored as "stored"
    notify("FDSTORE=1\nFDNAME=extra", [os.memfd_create("extra")])     # over --fdstore-max=4
    if os.fork() == 0:                                                # not the main process
        notify("FDSTORE=1\nFDNAME=intruder", [os.memfd_create("intruder")])
        os._exit(0)
    os.wait()
    with open(inodes, "w") as f:
        print(*(os.fstat(fd).st_ino for fd in (a, b1, b2, x)), file=f)
    notify("READY=1\nSTATUS=stored")
    while not os.path.exists(inodes + ".go"):                         # the test has looked
        time.sleep(0.05)
    sys.exit(3)
# Restarted: the socket at 3, the store at 4.. in the order stored.
assert os.environ["LISTEN_PID"] == str(os.getpid())
assert os.environ["LISTEN_FDS"] == "5", os.environ["LISTEN_FDS"]
assert os.environ["LISTEN_FDNAMES"] == "dedupd.socket:a:b:b:stored", os.environ["LISTEN_FDNAMES"]
assert "WATCHDOG_USEC" not in os.environ and "WATCHDOG_PID" not in os.environ
l = socket.socket(fileno=3)
assert l.type == socket.SOCK_SEQPACKET and l.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
assert [str(os.fstat(fd).st_ino) for fd in range(4, 8)] == open(inodes).read().split()
notify("FDSTOREREMOVE=1\nFDNAME=b")
notify("FDSTORE=1\nFDNAME=a-passed-back", [4])                        # passed back, sent again
notify("READY=1\nSTATUS=checked")
time.sleep(60)
EOF
WATCHDOG_USEC=30000000 WATCHDOG_PID=1 "$SHIM" --socket="$T/vmm.sock" --pidfile="$T/svc.pid" --fdstore-max=4 \
        --restart-sec=50 -- "$PY" "$T/service.py" "$T/inodes" >>"$LOG" 2>&1 &
SHIM_PID=$!
PIDS="$PIDS $SHIM_PID"
svc_started ""
first=$SVC
logged "svc-manager: $first status: stored"
logged "svc-manager: stored fd a (now 1)"
logged "svc-manager: fd a-dup is already stored as a, ignored"
logged "svc-manager: stored fd b (now 3)"
logged "svc-manager: invalid FDNAME='bad:name' ignored"
logged "svc-manager: stored fd stored (now 4)"
logged "svc-manager: fd store full (--fdstore-max=4): fd extra closed"
logged "ignored: only the main process $first may notify"
! grep -q "stored fd intruder" "$LOG" || fail "an fd of another process than the main one was stored"
touch "$T/inodes.go"
logged "svc-manager: $first exited with status 3, restarting"
svc_started "$first"
logged "svc-manager: started $SVC with 4 stored fds: a b b stored"
logged "svc-manager: $SVC status: checked"
logged "svc-manager: removed b (2 fds, now 2)"
logged "svc-manager: fd a-passed-back is already stored as a, ignored"
list_store
set -- $(cat "$T/inodes")
[ "$(cat "$T/store")" = "a $1
stored $4" ] || fail "fd store holds '$(cat "$T/store" | tr '\n' ' ')', want a $1, stored $4"
stop_shim
! grep -q Traceback "$LOG" || fail "the scripted service failed a check"
echo "scripted service: fd store, NotifyAccess=main, LISTEN_FDS/LISTEN_FDNAMES, restart and stop as systemd does them"
mv "$LOG" "$T/scripted.log"

# 2. dedupd, its pools in the store, SIGKILLed mid-merge. What dedupd is
# given is recorded at exec, before it (the same pid) takes it: its
# LISTEN_* variables, then the inode of each fd after the socket.
cat >"$T/exec-dedupd" <<EOF
#!/bin/sh
{
        echo "LISTEN_PID=\$LISTEN_PID LISTEN_FDS=\$LISTEN_FDS LISTEN_FDNAMES=\$LISTEN_FDNAMES"
        fd=4
        while [ \$fd -lt \$((3 + LISTEN_FDS)) ]; do
                stat -L -c %i /proc/\$\$/fd/\$fd 2>/dev/null || echo none
                fd=\$((fd + 1))
        done
} >"$T/passed.tmp.\$\$" && mv "$T/passed.tmp.\$\$" "$T/passed.\$\$"
exec "$DEDUPD" "\$@"
EOF
chmod +x "$T/exec-dedupd"
start_shim -- "$T/exec-dedupd" --bus=none --socket="$T/not-used.sock" --status-file="$T/status" \
        --pages-to-scan=4096 --sleep-millisecs=5
svc_started ""
first=$SVC
logged "svc-manager: $first ready"
grep -q "listening on 'the socket passed by systemd'" "$LOG" || fail "dedupd did not take the socket svc-manager passed"
for g in a b; do
        start_sim $g --size=32 --image-seed=5 --seed=$(printf %d "'$g") --image-pct=50 --zero-pct=20 \
                --unique-pct=25 --volatile-pct=5 --writers=2 --write-rate=2000 --churn-pct=2
done
wait_for 30 "[ \$(stat $T/status pages_sharing) -ge 1000 ]" ||
        fail "only $(stat $T/status pages_sharing) pages sharing after 30 s"

# pools_stored PID: the store holds exactly the pool memfds PID holds (by inode)
pools_stored() {
        list_store
        for f in /proc/"$1"/fd/*; do
                case "$(readlink "$f")" in /memfd:dedupd-pool*) command stat -L -c %i "$f" ;; esac
        done | sort -u >"$T/held"
        awk '$1 ~ /^pool-/ { print $2 }' "$T/store" | sort -u >"$T/stored"
        [ -s "$T/held" ] && cmp -s "$T/held" "$T/stored"
}
wait_for 10 "pools_stored $first" ||
        fail "dedupd $first holds pools $(echo $(cat $T/held)), the store $(echo $(cat $T/store))"
names=$(awk '{ print $1 }' "$T/store")
npools=$(wc -l <"$T/store")
old_inodes=$(awk '{ print $2 }' "$T/store")
echo "merged: pages_sharing=$(stat $T/status pages_sharing); stored:" $(cat "$T/store")
merged_before=$(( $(stat $T/status pages_sharing) + $(stat $T/status pages_shared) ))
agent_before_a=$(stat $T/a.stats dedup_merged_pages)
agent_before_b=$(stat $T/b.stats dedup_merged_pages)

rm -f "$T/status"       # what follows is the new dedupd's
kill -9 "$first"
logged "svc-manager: $first killed by signal 9, restarting"
svc_started "$first"
logged "svc-manager: started $SVC with $npools stored fds: $(echo $names)"
wait_for 5 "[ -f '$T/passed.$SVC' ]" || fail "dedupd $SVC was not executed"
want="LISTEN_PID=$SVC LISTEN_FDS=$((npools + 1)) LISTEN_FDNAMES=$(echo dedupd.socket $names | tr ' ' ':')"
[ "$(head -n 1 "$T/passed.$SVC")" = "$want" ] || fail "dedupd $SVC got $(head -n 1 "$T/passed.$SVC"), want $want"
passed=$(tail -n +2 "$T/passed.$SVC")
[ "$(echo $passed)" = "$(echo $old_inodes)" ] ||
        fail "dedupd $SVC got fds of inodes '$(echo $passed)' after the socket, want its pools '$(echo $old_inodes)'"
logged "svc-manager: $SVC ready"

# ---- dedupd's policy for pools passed back: change this block only ----
# dedupd keeps them (stored, claiming), the agents report the pages they
# still map from them, and the savings stay without merging again: each
# agent keeps most of its merged pages, dedupd takes them in (kept_pages),
# and once every mapper has reported the pools settle.
for n in $names; do
        ! grep -q "svc-manager: removed $n (" "$LOG" || fail "dedupd $SVC dropped $n from the store"
done
[ "$(grep -c "of the previous run kept: its pages stay merged" "$LOG")" = "$npools" ] ||
        fail "dedupd $SVC did not keep the $npools pools it was passed"
for g in a b; do
        wait_for 20 "[ \$(stat $T/$g.stats dedup_reconnects) = 1 ] && [ \$(stat $T/$g.stats dedup_connected) = 1 ]" ||
                fail "guest $g did not reconnect"
done
wait_for 10 "[ \$(stat $T/status kept_pages) -ge $((merged_before * 8 / 10)) ]" ||
        fail "dedupd $SVC took in $(stat $T/status kept_pages) merged pages, had $merged_before before the kill"
for g in a b; do
        kept=$(stat $T/$g.stats dedup_merged_pages)
        before=$(eval echo \$agent_before_$g)
        echo "guest $g: $kept pages still merged after the restart ($before before)"
        [ "$kept" -ge $((before * 8 / 10)) ] || fail "guest $g re-homed its merged pages: $kept left of $before"
done
wait_for 10 "[ \$(stat $T/status pools_claiming) = 0 ]" || fail "the kept pools never settled"
grep -q "of the previous run settled" "$LOG" || fail "no pool settled"
list_store
for i in $old_inodes; do
        grep -q " $i\$" "$T/store" || fail "inode $i of dedupd $first left the store"
done
echo "dedupd $SVC kept $npools pools and $(stat $T/status kept_pages) merged pages ($merged_before before the kill)"
# ---- end of dedupd's policy ----

# The new dedupd merges on; its pools are all stored.
wait_for 20 "[ \$(stat $T/status pages_sharing) -ge 1000 ] && pools_stored $SVC" ||
        fail "after the restart: $(stat $T/status pages_sharing) pages sharing, dedupd $SVC holds pools" \
             "$(echo $(cat $T/held)), the store $(echo $(cat $T/store))"
echo "after the restart: pages_sharing=$(stat $T/status pages_sharing); stored:" $(cat "$T/store")
for g in a b; do
        [ "$(stat $T/$g.stats mismatches)" = 0 ] || fail "guest $g saw a wrong byte"
        stop_sim $g
done
stop_shim
echo "PASS"

#!/bin/sh
# Socket activation and who may register: dedupd started on the first
# connection by systemd-socket-activate (the LISTEN_FDS contract that
# dedupd.socket uses), a guest registers through it, and a VMM that is not
# root is refused by SO_PEERCRED even though the socket lets it connect.
. "$(dirname "$0")/lib-daemon.sh"

command -v systemd-socket-activate >/dev/null || skip "no systemd-socket-activate (package systemd)"
command -v setpriv >/dev/null || skip "no setpriv (package util-linux)"

systemd-socket-activate --seqpacket -l "$T/vmm.sock" \
        "$DEDUPD" --bus=none --status-file="$T/status" --pages-to-scan=4096 --sleep-millisecs=5 >>"$T/dedupd.log" 2>&1 &
PIDS="$PIDS $!"
wait_for 10 "[ -S '$T/vmm.sock' ]" || fail "no activation socket"
[ ! -f "$T/status" ] || fail "dedupd ran before anyone connected"
chmod 0755 "$T"
chmod 0666 "$T/vmm.sock"

start_sim act --size=16 --image-seed=1 --seed=1 --writers=1
wait_for 20 "[ \$(stat $T/status vms) = 1 ]" || fail "guest did not register through the activated socket"
grep -q "listening on" "$T/dedupd.log" || fail "dedupd did not start"
echo "activated on first connect; guest registered: $(grep "registered" $T/dedupd.log | head -n 1)"

# An unprivileged process may connect (0666) but must not register.
setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect('$T/vmm.sock')
s.settimeout(5)
try:
    data = s.recv(4096)
except ConnectionResetError:
    data = b''
sys.exit(0 if data == b'' else 1)
" || fail "an unprivileged VMM was not cut off"
wait_for 5 "grep -q 'Refusing VMM registration from pid .* (uid 65534' $T/dedupd.log" ||
        fail "no refusal logged for uid 65534"
echo "unprivileged VMM refused: $(grep 'Refusing VMM registration' $T/dedupd.log | head -n 1)"
stop_sim act
echo "PASS"

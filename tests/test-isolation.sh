#!/bin/sh
# Isolation, with a VMM that is not root: a member of the group dedupd.conf
# allows (AllowGroup=, here nogroup) registers and merges; it cannot open a
# pool it holds for writing (not through its fd, not by reopening
# /proc/PID/fd), cannot reach another group's pool through dedupd's fds, and
# a write through its private mapping never reaches the pool. A user outside
# the group is refused (SO_PEERCRED). VMs of different groups never share.
. "$(dirname "$0")/lib-daemon.sh"

command -v setpriv >/dev/null && command -v unshare >/dev/null || skip "no setpriv/unshare (package util-linux)"
getent group nogroup >/dev/null || skip "no group nogroup"
[ -c /dev/userfaultfd ] || skip "no /dev/userfaultfd: a non-root VMM cannot get a userfaultfd here"
NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"

# The VMM user needs /dev/userfaultfd, as an operator grants it to QEMU's
# user. Not on the host's node: a copy bind-mounted in a private namespace.
uffd_dev=$(command stat -c '%t %T' /dev/userfaultfd)
mknod "$T/userfaultfd" c $((0x${uffd_dev% *})) $((0x${uffd_dev#* }))
chgrp nogroup "$T/userfaultfd"
chmod 0660 "$T/userfaultfd"
chmod 0755 "$T"
mkdir "$T/vmm" && chown 65534:65534 "$T/vmm"

cat >"$T/dedupd.conf" <<CONF
[Registration]
AllowGroup=nogroup
[MergeGroup]
Group=1
Name=other*
CONF
start_dedupd --config="$T/dedupd.conf" --pages-to-scan=4096 --sleep-millisecs=5
[ "$(command stat -c '%a %G' "$T/vmm.sock")" = "660 nogroup" ] || fail "socket is $(command stat -c '%a %G' "$T/vmm.sock"), not 660 nogroup"

# nobody_sim NAME ARGS...: a guest-sim as uid/gid 65534 (nogroup)
nobody_sim() {
        name=$1; shift
        unshare -m --propagation private sh -c 'mount --bind "$1" /dev/userfaultfd && shift && exec "$@"' sh \
                "$T/userfaultfd" $NOBODY "$SIM" --name="$name" --socket="$T/vmm.sock" \
                --stats-file="$T/vmm/$name.stats" --ready-file="$T/vmm/$name.ready" --stats-interval-ms=200 "$@" \
                >"$T/$name.log" 2>&1 &
        eval "SIM_PID_$name=$!"
        PIDS="$PIDS $!"
        wait_for 30 "[ -f '$T/vmm/$name.ready' ]" || { cat "$T/$name.log"; fail "guest-sim $name (uid 65534) not ready"; }
}

nobody_sim user --size=32 --image-seed=4 --seed=1 --writers=1
start_sim root --size=32 --image-seed=4 --seed=2 --writers=1
start_sim other --size=32 --image-seed=4 --seed=3 --writers=1
start_sim other2 --size=32 --image-seed=4 --seed=4 --writers=1
wait_for 30 "[ \$(stat $T/status vm.user.merging_pages) -gt 1000 ] && [ \$(stat $T/status vm.other2.merging_pages) -gt 1000 ]" ||
        fail "the uid 65534 VMM did not merge: $(grep 'vm.user' $T/status | tr '\n' ' ')"
grep -q "VM 'user' (pid $SIM_PID_user" "$T/dedupd.log" || fail "VM user not registered under its own pid"
echo "uid 65534 in AllowGroup: registered, $(stat $T/status vm.user.merging_pages) pages merged"

# Its pool, as it holds it, and group 1's pool, as only dedupd holds it.
pid=$SIM_PID_user        # unshare, sh and setpriv exec: the sim itself
[ "$(command stat -c %u /proc/$pid)" = 65534 ] || fail "guest-sim user does not run as uid 65534"
pool_fd_of() { ls -l /proc/$1/fd 2>/dev/null | sed -n "s/.* \([0-9]*\) -> \/memfd:dedupd-pool-g$2 .*/\1/p" | head -n 1; }
own=$(pool_fd_of "$pid" 0)
[ -n "$own" ] || fail "the VMM holds no group 0 pool fd"
[ -z "$(pool_fd_of "$pid" 1)" ] || fail "the group 0 VMM holds group 1's pool"
grep -q 'dedupd-pool-g1' /proc/$pid/maps && fail "the group 0 VMM maps group 1's pool"
theirs=$(pool_fd_of "$DEDUPD_PID" 1)
[ -n "$theirs" ] || fail "dedupd has no group 1 pool"
before=$(md5sum </proc/$pid/fd/$own)
$NOBODY /usr/bin/python3 - "$pid" "$own" "$DEDUPD_PID" "$theirs" <<'PY' || fail "a VMM could write or reach a pool: see above"
import ctypes, errno, mmap, os, sys
pid, own, dpid, theirs = sys.argv[1:]
def refused(what, f):
    try:
        f()
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EBADF, errno.EINVAL):
            print("  refused (%s): %s" % (errno.errorcode[e.errno], what))
            return
        raise
    print("FAIL: allowed: " + what)
    sys.exit(1)
# The pool fd exactly as the VMM holds it (pidfd_getfd: same user).
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(438, os.pidfd_open(int(pid)), int(own), 0)
if fd < 0:
    sys.exit("pidfd_getfd: " + os.strerror(ctypes.get_errno()))
refused("reopen the pool O_RDWR through /proc/self/fd/%d" % fd,
        lambda: os.open("/proc/self/fd/%d" % fd, os.O_RDWR))
refused("map the pool MAP_SHARED writable",
        lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
refused("make the pool writable (fchmod 0600)", lambda: os.fchmod(fd, 0o600))
refused("truncate the pool", lambda: os.ftruncate(fd, 0))
refused("write the pool", lambda: os.pwrite(fd, b"scribble", 0))
refused("open group 1's pool through dedupd's /proc/%s/fd/%s" % (dpid, theirs),
        lambda: os.open("/proc/%s/fd/%s" % (dpid, theirs), os.O_RDONLY))
m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:8] = b"scribble"
print("  a write through a private mapping stays private")
PY
[ "$(md5sum </proc/$pid/fd/$own)" = "$before" ] || fail "the pool changed after a VMM wrote its private mapping"

# The group as a supplementary one counts too (SO_PEERGROUPS); without it
# the socket's mode already keeps the VMM out.
unshare -m --propagation private sh -c 'mount --bind "$1" /dev/userfaultfd && shift && exec "$@"' sh "$T/userfaultfd" \
        setpriv --reuid=65534 --regid=65533 --groups=65534 "$SIM" --name=suppl --socket="$T/vmm.sock" --size=8 \
        --duration=3 >"$T/suppl.log" 2>&1 || fail "a VMM with AllowGroup as a supplementary group failed: $(tail -n 3 $T/suppl.log)"
grep -q "VM 'suppl' .* registered" "$T/dedupd.log" || fail "VM suppl (supplementary nogroup) not registered"
echo "uid 65534 gid 65533 with nogroup as a supplementary group: registered"
chmod 0666 "$T/userfaultfd"   # the socket alone must keep it out
unshare -m --propagation private sh -c 'mount --bind "$1" /dev/userfaultfd && shift && exec "$@"' sh "$T/userfaultfd" \
        setpriv --reuid=65534 --regid=65533 --clear-groups "$SIM" --name=outsider --socket="$T/vmm.sock" --size=8 \
        >"$T/outsider.log" 2>&1 && fail "a VMM outside AllowGroup ran registered"
grep -q "Permission denied" "$T/outsider.log" || fail "outsider not told why: $(cat $T/outsider.log)"
echo "uid 65534 gid 65533 without nogroup: refused ($(grep -o 'dedup_client_start.*' $T/outsider.log))"

# Groups never share: other/other2 (group 1) map only group 1's pool.
for g in other other2; do
        eval "p=\$SIM_PID_$g"
        grep -q dedupd-pool-g0 /proc/$p/maps && fail "$g (group 1) maps group 0's pool"
done
grep -q dedupd-pool-g1 /proc/$SIM_PID_root/maps && fail "root (group 0) maps group 1's pool"
echo "groups: user+root share group 0's pool, other+other2 group 1's; no cross mapping"

kill -TERM "$SIM_PID_user"; wait "$SIM_PID_user" || fail "the uid 65534 guest-sim exited $? (wrong bytes?)"
for g in root other other2; do stop_sim $g; done
echo "PASS"

#!/bin/sh
# End to end with a real libvirtd: the libvirt hook
# (contrib/libvirt/hooks/qemu.d/dedupd) gives a domain its merge group from
# <dedupd:group> in its <metadata>, and QEMU started by libvirt with
# libdedup-qemu.so in <qemu:env> registers with dedupd under the domain's
# name and uuid. Two TCG domains (tests/qemu kernel and initramfs, 256 MiB
# memfd shared RAM): lv-g3 with <dedupd:group>3, lv-plain without (dedupd.conf
# puts lv-* in group 5, which the domain file beats for lv-g3). Checks the
# domain file, dedupd's view of both VMs, the guests' md5 rounds, that a
# libvirtd restart (reconnect) writes a lost file again, that virsh destroy
# removes it, and that a group of 99999 fails virsh start with the hook's
# message.
#
# Nothing here touches the host: the test runs in private mount and PID
# namespaces (all it started dies with it) with empty tmpfs over /run,
# /var/lib, /var/cache and /var/log, its own /etc/libvirt, a copy of
# /etc/passwd and /etc/group with the libvirt-qemu user, and no cgroup
# mounts (libvirt then puts QEMU in no cgroup), so libvirtd, the hook,
# dedupd and the shim all use their default paths privately.
top_srcdir=$(cd "$(dirname "$0")/.." && pwd)

if [ -z "${DEDUPD_TEST_NAMESPACE:-}" ]; then
        [ "$(id -u)" = 0 ] || { echo "SKIP: needs root (libvirtd, mount namespaces)"; exit 77; }
        unshare -m -p -f --mount-proc --propagation private true 2>/dev/null ||
                { echo "SKIP: cannot create mount and PID namespaces (unshare -m -p)"; exit 77; }
        # --kill-child: if unshare is killed, so is everything in the namespace.
        DEDUPD_TEST_NAMESPACE=1 exec unshare -m -p -f --kill-child --mount-proc --propagation private "$0" "$@"
fi

. "$top_srcdir/tests/lib-daemon.sh"
. "$top_srcdir/tests/lib-bus.sh"
. "$top_srcdir/tests/lib-qemu.sh"
GUEST_LOG_DIR=/var/log/libvirt/qemu     # QEMU's output, for wait_guest()

HOOK="$top_srcdir/contrib/libvirt/hooks/qemu.d/dedupd"
DOMAINS=/run/dedupd/domains
NS='http://dedupd.org/xmlns/libvirt/1.0'
LIBVIRTD_PID=""

# Every exit path: QEMUs (their pid files), libvirtd, then what lib-daemon
# started. The PID namespace ends with this script in any case.
libvirt_cleanup() {
        for f in /run/libvirt/qemu/*.pid; do
                [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
        done
        [ -n "$LIBVIRTD_PID" ] && kill -9 "$LIBVIRTD_PID" 2>/dev/null
        cleanup
        umount -l /etc/passwd /etc/group /etc/libvirt /var/log/libvirt /var/log /var/cache /var/lib /run 2>/dev/null
}
trap libvirt_cleanup EXIT INT TERM

lfail() {
        [ -f "$T/libvirtd.log" ] && { echo "--- libvirtd log (tail)"; tail -n 20 "$T/libvirtd.log"; }
        fail "$@"
}

# private_host: the directories libvirtd, the hook, dedupd and the shim
# write to, as empty tmpfs or directories of $T, in this namespace only.
private_host() {
        for d in /run /var/lib /var/cache /var/log; do
                mount -t tmpfs -o mode=0755 tmpfs "$d" || skip "cannot mount a tmpfs over $d"
        done
        mkdir -p "$T/etc-libvirt/hooks/qemu.d" "$T/log" /var/log/libvirt
        mount --bind "$T/etc-libvirt" /etc/libvirt
        mount --bind "$T/log" /var/log/libvirt
        # libvirtd looks its default QEMU user up before reading qemu.conf
        # (user = "root" below): Debian's libvirt-daemon-system would create it.
        cp /etc/passwd "$T/passwd"
        cp /etc/group "$T/group"
        getent passwd libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin" >>"$T/passwd"
        for g in libvirt-qemu:64055 kvm:64056; do
                getent group "${g%:*}" >/dev/null || echo "${g%:*}:x:${g#*:}:" >>"$T/group"
        done
        mount --bind "$T/passwd" /etc/passwd
        mount --bind "$T/group" /etc/group
        if grep -q ' /sys/fs/cgroup' /proc/self/mounts; then
                umount -R /sys/fs/cgroup 2>/dev/null || umount -l /sys/fs/cgroup
        fi
}

# start_libvirtd: root QEMU without security labels (the test's files are
# in $T), QEMU's stdio to /var/log/libvirt/qemu/NAME.log (no virtlogd),
# and the hook under test installed.
start_libvirtd() {
        command -v libvirtd >/dev/null ||
                skip "no libvirtd (Debian packages libvirt-daemon, libvirt-daemon-driver-qemu; ./contrib/quickstart.sh deps)"
        command -v virsh >/dev/null || skip "no virsh (Debian package libvirt-clients)"
        cat >/etc/libvirt/libvirtd.conf <<CONF
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "2:file:$T/libvirtd.log"
CONF
        cat >/etc/libvirt/qemu.conf <<CONF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
namespaces = [ ]
CONF
        cp "$HOOK" /etc/libvirt/hooks/qemu.d/dedupd
        chmod 0755 /etc/libvirt/hooks/qemu.d/dedupd
        run_libvirtd || {
                cat "$T/libvirtd.out"; tail -n 20 "$T/libvirtd.log" 2>/dev/null
                skip "libvirtd did not start here (its output above)"
        }
        echo "libvirtd $(virsh -c qemu:///system version | sed -n 's/.*libvirt \([0-9.]*\)$/\1/p' | head -n 1) up"
}

run_libvirtd() {
        libvirtd --config /etc/libvirt/libvirtd.conf >>"$T/libvirtd.out" 2>&1 &
        LIBVIRTD_PID=$!
        wait_for 30 "virsh -q -c qemu:///system version >/dev/null 2>&1"
}

# restart_libvirtd: SIGTERM leaves the domains running; the new libvirtd
# reconnects to them (the hook's "reconnect").
restart_libvirtd() {
        kill -TERM "$LIBVIRTD_PID"
        wait "$LIBVIRTD_PID" 2>/dev/null || true
        LIBVIRTD_PID=""
        run_libvirtd || lfail "libvirtd did not start again"
}

# domain_xml NAME SECONDS [GROUP-ELEMENT]: a TCG domain booting the test
# guest with the shim preloaded, serial console to $T/NAME.console.
domain_xml() {
        cat <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$1</name>
  <metadata>${3:-}</metadata>
  <memory unit='MiB'>256</memory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$QEMU_CACHE/vmlinuz</kernel>
    <initrd>$QEMU_CACHE/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 dedup.seconds=$2 dedup.files=40 dedup.mib=2</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$T/$1.console'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:env name='LD_PRELOAD' value='$QEMU_SHIM'/>
  </qemu:commandline>
</domain>
XML
}

# define NAME SECONDS [GROUP-ELEMENT]: sets UUID_<NAME> (libvirt's choice).
define() {
        domain_xml "$@" >"$T/$1.xml"
        virsh -q -c qemu:///system define "$T/$1.xml" >/dev/null || lfail "virsh define $1"
        eval "UUID_$(sim_var "$1")=$(virsh -c qemu:///system domuuid "$1")"
}

# vm_json NAME: dedupd's entry for VM NAME (dedupctl --json vms).
vm_json() {
        "$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" --json vms | tr '{' '\n' | grep "\"Name\": *\"$1\""
}

# json_val KEY: from vm_json's line on stdin.
json_val() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p"; }

# The documented domain XML is valid for this libvirt.
for tool in virt-xml-validate:libvirt-clients xmllint:libxml2-utils; do
        command -v "${tool%:*}" >/dev/null || skip "no ${tool%:*} (Debian package ${tool#*:})"
done
virt-xml-validate "$top_srcdir/contrib/libvirt/domain-snippet.xml" domain >"$T/validate.out" 2>&1 ||
        { cat "$T/validate.out"; fail "contrib/libvirt/domain-snippet.xml does not validate"; }

qemu_setup
private_host
start_libvirtd
start_private_bus
mkdir -p /run/dedupd
cat >"$T/dedupd.conf" <<CONF
[MergeGroup]
Group=5
Name=lv-*
CONF
"$DEDUPD" --config="$T/dedupd.conf" --status-file="$T/status" --bus="$BUS_ADDRESS" \
        --pages-to-scan=20000 --sleep-millisecs=10 >>"$T/dedupd.log" 2>&1 &
DEDUPD_PID=$!
PIDS="$PIDS $DEDUPD_PID"
wait_for 10 "[ -S /run/dedupd/vmm.sock ] && [ -f '$T/status' ]" || fail "dedupd did not start on /run/dedupd/vmm.sock"

define lv-g3 60 "<dedupd:group xmlns:dedupd='$NS'>3</dedupd:group>"
define lv-plain 60
# lv-bad gets its group as contrib/libvirt/README shows, with virsh metadata.
define lv-bad 5
virsh -q -c qemu:///system metadata lv-bad "$NS" --key dedupd --set '<group>99999</group>' --config ||
        lfail "virsh metadata lv-bad"
for d in lv-g3 lv-plain; do
        virsh -q -c qemu:///system start "$d" >/dev/null 2>"$T/$d.start" || { cat "$T/$d.start"; lfail "virsh start $d"; }
done
[ -f "$DOMAINS/$UUID_lv_g3.conf" ] || lfail "the hook wrote no $DOMAINS/$UUID_lv_g3.conf"
grep -q "^Group=3$" "$DOMAINS/$UUID_lv_g3.conf" && grep -q "^Uuid=$UUID_lv_g3$" "$DOMAINS/$UUID_lv_g3.conf" &&
        grep -q "lv-g3" "$DOMAINS/$UUID_lv_g3.conf" || { cat "$DOMAINS/$UUID_lv_g3.conf"; fail "wrong domain file"; }
[ -e "$DOMAINS/$UUID_lv_plain.conf" ] && fail "the hook wrote a domain file for lv-plain (no group element)"
echo "hook wrote $DOMAINS/$UUID_lv_g3.conf (Group=3), none for lv-plain"

for d in lv-g3 lv-plain; do
        wait_guest "$d" ready 120
        wait_for 30 "grep -q 'registered with dedupd' /var/log/libvirt/qemu/$d.log" ||
                { cat "/var/log/libvirt/qemu/$d.log"; fail "QEMU of $d did not register with dedupd"; }
done
for d in lv-g3:3 lv-plain:5; do
        n=${d%:*} want=${d#*:}
        eval "uuid=\$UUID_$(sim_var "$n")"
        line=$(vm_json "$n") || fail "dedupd has no VM '$n' (domain $(virsh -c qemu:///system domstate "$n")):" \
                "$("$top_builddir/daemon/dedupctl" --address="$BUS_ADDRESS" vms)"
        [ "$(echo "$line" | json_val Uuid)" = "$uuid" ] || fail "VM $n registered with uuid '$(echo "$line" | json_val Uuid)', domain has $uuid"
        [ "$(echo "$line" | json_val MergeGroup)" = "$want" ] || fail "VM $n in group '$(echo "$line" | json_val MergeGroup)', not $want"
        [ "$(stat "$T/status" "vm.$n.group")" = "$want" ] || fail "status file: vm.$n.group=$(stat "$T/status" "vm.$n.group")"
done
echo "dedupd registered lv-g3 (uuid $UUID_lv_g3, group 3) and lv-plain (uuid $UUID_lv_plain, group 5)"

# Both guests merge (within their own groups) and every round stays right.
wait_for 60 "[ \$(stat $T/status vm.lv-g3.merging_pages) -gt 1000 ] && [ \$(stat $T/status vm.lv-plain.merging_pages) -gt 1000 ]" ||
        fail "no merging: $(grep merging_pages "$T/status")"
for d in lv-g3 lv-plain; do eval "r0_$(sim_var $d)=$(rounds $d)"; done
for d in lv-g3 lv-plain; do
        eval "r0=\$r0_$(sim_var $d)"
        wait_for 60 "[ \$(rounds $d) -ge $((r0 + 2)) ]" || fail "guest $d stopped printing rounds"
        no_bad "$d"
done
echo "merging: lv-g3 $(stat "$T/status" vm.lv-g3.merging_pages) pages, lv-plain" \
     "$(stat "$T/status" vm.lv-plain.merging_pages); rounds right: lv-g3=$(rounds lv-g3) lv-plain=$(rounds lv-plain)"

# libvirtd restarted while /run/dedupd lost the file: reconnect writes it.
rm "$DOMAINS/$UUID_lv_g3.conf"
restart_libvirtd
[ "$(virsh -c qemu:///system domstate lv-g3)" = running ] || lfail "lv-g3 not running after libvirtd restarted"
# libvirtd reconnects to running domains in a thread of their own, which may
# still run after virsh answers.
wait_for 30 "grep -qs '^Group=3$' '$DOMAINS/$UUID_lv_g3.conf'" ||
        lfail "reconnect did not write $DOMAINS/$UUID_lv_g3.conf again"
[ -e "$DOMAINS/$UUID_lv_plain.conf" ] && fail "reconnect wrote a domain file for lv-plain"
echo "libvirtd restarted: reconnect wrote the domain file of lv-g3 again"

virsh -q -c qemu:///system destroy lv-g3 >/dev/null || lfail "virsh destroy lv-g3"
[ -e "$DOMAINS/$UUID_lv_g3.conf" ] && fail "virsh destroy left $DOMAINS/$UUID_lv_g3.conf"
echo "virsh destroy lv-g3 removed its domain file"

rc=0
virsh -q -c qemu:///system start lv-bad >"$T/lv-bad.start" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "lv-bad with <dedupd:group>99999 started"
grep -q "invalid <dedupd:group> '99999'" "$T/lv-bad.start" || { cat "$T/lv-bad.start"; fail "virsh start lv-bad failed without the hook's reason"; }
[ -e "$DOMAINS/$UUID_lv_bad.conf" ] && fail "a domain file for lv-bad"
echo "lv-bad refused: $(grep -o "dedupd hook: .*" "$T/lv-bad.start" | head -n 1)"

virsh -q -c qemu:///system destroy lv-plain >/dev/null || lfail "virsh destroy lv-plain"
no_bad lv-g3
no_bad lv-plain
echo "PASS"

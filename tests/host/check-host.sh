#!/bin/sh
# check-host.sh: dedupd as operators run it ('make check-host').
#
# Builds (tests/host/build-host.sh, cached in $top_builddir/tests/host-cache)
# a Debian 12 host image with systemd, the system bus, a bookworm-backports
# kernel and dedupd installed from this source tree, boots it under QEMU TCG
# (2 vCPUs, 2 GiB), and prints what the test driver inside it
# (tests/host/host-test.sh) reports for each operator command:
# systemctl start/status/restart/stop, socket activation, busctl on the
# system bus as root and as an unprivileged user, journalctl, sysctl, and
# guest simulators merging without a wrong byte.
#
# Exit 0 when the host ran every command and none failed, 1 otherwise, 77
# (skip) when this machine cannot build or boot the host at all. Needs root.
#   DEDUP_HOST_TIMEOUT=SECONDS  the host's whole run (default 1800)
#   DEDUP_HOST_MIRROR=URL       Debian mirror for debootstrap and backports
#   KEEP_TEST_DIR=1             keep the serial console logs
set -eu

: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${top_builddir:=$(pwd)}"
cache=$top_builddir/tests/host-cache
T=$(mktemp -d /tmp/dedupd-host.XXXXXX)
QEMU_PID=

cleanup() {
        [ -z "$QEMU_PID" ] || kill -9 "$QEMU_PID" 2>/dev/null || true
        wait 2>/dev/null || true
        if [ "${KEEP_TEST_DIR:-}" = 1 ]; then echo "test dir kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

skip() {
        echo "SKIP: $*"
        exit 77
}

fail() {
        echo "FAIL: $*"
        if [ -s "$T/console.log" ]; then
                echo "--- host serial console (tail)"
                tr -d '\r' <"$T/console.log" | tail -n 40
        fi
        exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot)"
command -v qemu-system-x86_64 >/dev/null ||
        skip "no qemu-system-x86_64 (Debian package qemu-system-x86; ./contrib/quickstart.sh deps installs it)"

# --- Build (cached) -----------------------------------------------------------
start=$(date +%s)
rc=0
"$top_srcdir/tests/host/build-host.sh" "$cache" "$top_srcdir" >"$T/build.log" 2>&1 || rc=$?
sed 's/^/  /' "$T/build.log"
case $rc in
0) ;;
77) skip "cannot build the host image on this machine (see above)" ;;
*) fail "building the host image failed (see above)" ;;
esac
built=$(date +%s)
echo "host image built in $((built - start)) s"

# --- Boot ------------------------------------------------------------------------
# -kernel/-initrd: the host's own kernel and initramfs-tools initrd, so no
# boot loader is installed. snapshot=on: the image stays as built, writes go
# to a temporary file. Serial port 0 is the console (kernel, systemd, a
# getty); port 1 carries only the driver's results.
# -cpu max,-cx16: QEMU 7.2's TCG (Debian 12) corrupts EFLAGS after
# "cmpxchg16b %gs:(...)", which the 6.12 kernel's SLUB runs on every
# allocation when the CPU has CX16: the host double-faults within seconds of
# boot. Without CX16 the kernel takes its emulated path.
qemu-system-x86_64 \
        -accel tcg \
        -cpu max,-cx16 \
        -smp 2 \
        -m 2048 \
        -machine q35 \
        -kernel "$cache/vmlinuz" \
        -initrd "$cache/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet" \
        -drive "file=$cache/host.img,format=raw,if=virtio,snapshot=on" \
        -display none \
        -monitor none \
        -nodefaults \
        -serial "file:$T/console.log" \
        -serial "file:$T/results.log" \
        -no-reboot \
        -name dedupd-host >"$T/qemu.log" 2>&1 &
QEMU_PID=$!

# Print the results as they come, until the host powers off.
timeout=${DEDUP_HOST_TIMEOUT:-1800}
shown=0
first=
while :; do
        running=1
        kill -0 "$QEMU_PID" 2>/dev/null || running=0
        n=0
        [ ! -f "$T/results.log" ] || n=$(wc -l <"$T/results.log")
        if [ "$n" -gt "$shown" ]; then
                [ -n "$first" ] || first=$(date +%s)
                sed -n "$((shown + 1)),${n}p" "$T/results.log" | tr -d '\r'
                shown=$n
        fi
        [ "$running" = 1 ] || break
        if [ $(($(date +%s) - built)) -ge "$timeout" ]; then
                kill -9 "$QEMU_PID" 2>/dev/null || true
                fail "the host did not power off within $timeout s (DEDUP_HOST_TIMEOUT)"
        fi
        sleep 1
done
wait "$QEMU_PID" || true
QEMU_PID=
end=$(date +%s)
[ -s "$T/qemu.log" ] && sed 's/^/qemu: /' "$T/qemu.log"

echo "build $((built - start)) s, boot to first result $((${first:-$end} - built)) s, host run $((end - built)) s"
summary=$(tr -d '\r' <"$T/results.log" | grep '^host-test: [0-9]* passed, [0-9]* failed$') ||
        fail "the host powered off without the driver's closing line"
case $summary in
*" 0 failed") echo "PASS: every operator command" ;;
*) fail "$summary" ;;
esac

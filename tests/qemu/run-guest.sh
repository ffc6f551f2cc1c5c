#!/bin/sh
# run-guest.sh CACHE_DIR NAME MEM_MIB LOGFILE [KERNEL_ARG...]
#
# Boots the guest built by tests/qemu/build-guest.sh CACHE_DIR under QEMU
# (TCG: this machine's KVM cannot run guests), in the foreground: the script
# execs QEMU, so its pid is QEMU's and a signal to it reaches QEMU. QEMU exits
# when the guest powers off (done), or on a guest panic or reboot.
#
# Guest RAM is a shared memfd (memory-backend-memfd,share=on): that is the
# memory dedupd deduplicates, and where kernel KSM merges nothing.
#
# The serial console (every "dedup-guest: ..." line) goes to LOGFILE.
# KERNEL_ARGs are appended to the kernel command line, e.g.
#   dedup.seconds=40 dedup.files=40 dedup.mib=2 dedup.rewrite=3
# QEMU=/path/to/binary overrides qemu-system-x86_64 (e.g. a wrapper).
set -eu

die() {
	echo "run-guest: $*" >&2
	exit 1
}

[ $# -ge 4 ] || die "usage: $0 CACHE_DIR NAME MEM_MIB LOGFILE [KERNEL_ARG...]"
cache=$1 name=$2 mem=$3 log=$4
shift 4

case $mem in
'' | *[!0-9]*) die "MEM_MIB must be a number of MiB, not '$mem'" ;;
esac
# QEMU splits option values at commas; refuse them rather than escape them.
case $cache$name$log in
*,*) die "CACHE_DIR, NAME and LOGFILE must not contain commas" ;;
esac
for f in "$cache/vmlinuz" "$cache/initramfs.cpio.gz"; do
	[ -s "$f" ] || die "$f missing: run tests/qemu/build-guest.sh $cache"
done

# Options, as QEMU 7.2 (Debian 12) spells them:
#  -m with -machine memory-backend: the backend is the whole guest RAM and
#     must be as large as -m.
#  -display none -monitor none -serial file: rather than -nographic, which
#     would put the monitor on stdio (and put a terminal in raw mode); guests
#     run in the background, several at once.
#  -nodefaults: no VGA, NIC, floppy or CD-ROM to set up; the guest needs none.
#  -no-reboot with panic=-1: a guest that panics ends QEMU at once instead of
#     rebooting forever.
#  quiet: the console carries the workload's lines, not boot messages.
# GUEST_RAM=anon gives QEMU's default anonymous RAM instead (mem-merge=on:
# MADV_MERGEABLE, kernel KSM's domain), to measure KSM on the same guests.
kargs="$*"
if [ "${GUEST_RAM:-memfd}" = anon ]; then
	set -- -machine q35
else
	set -- -object "memory-backend-memfd,id=ram0,size=${mem}M,share=on" -machine q35,memory-backend=ram0
fi
exec "${QEMU:-qemu-system-x86_64}" \
	-accel tcg \
	-m "$mem" \
	"$@" \
	-kernel "$cache/vmlinuz" \
	-initrd "$cache/initramfs.cpio.gz" \
	-append "console=ttyS0 quiet panic=-1${kargs:+ $kargs}" \
	-display none \
	-monitor none \
	-nodefaults \
	-serial "file:$log" \
	-no-reboot \
	-name "$name"

#!/bin/sh
# build-guest.sh CACHE_DIR
#
# Builds what tests/qemu/run-guest.sh boots: a Debian 12 cloud kernel
# (CACHE_DIR/vmlinuz) and a busybox initramfs (CACHE_DIR/initramfs.cpio.gz)
# whose /init writes identical files into a tmpfs, keeps rewriting them and
# checks every byte each round, printing "dedup-guest: ..." lines on the
# serial console. Identical file pages in every guest are what dedupd should
# merge; the md5 checks catch any byte a wrong merge or COW break changed.
#
# Idempotent: each step is skipped when its output is already in CACHE_DIR
# (the initramfs is rebuilt only when /init or busybox changed). Needs root
# only when packages are missing (apt-get install).
set -eu

die() {
	echo "build-guest: $*" >&2
	exit 1
}

log() {
	echo "build-guest: $*"
}

[ $# -eq 1 ] || die "usage: $0 CACHE_DIR"
mkdir -p "$1"
# An absolute path, so nothing below depends on the current directory.
cache=$(cd "$1" && pwd)

# One build at a time per cache: the steps below use fixed scratch names.
exec 9>"$cache/.lock"
flock 9

export DEBIAN_FRONTEND=noninteractive

# --- Host packages -----------------------------------------------------------
# Only install what is missing: apt-get is slow and needs root, and a cached
# machine should not touch the network at all.
missing=
for pkg in qemu-system-x86 busybox-static cpio; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) || status=
	[ "$status" = installed ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
	log "installing$missing"
	# shellcheck disable=SC2086 # $missing is a list of package names
	if ! apt-get install -y -qq --no-install-recommends $missing; then
		# The package lists are missing or stale: refresh once and retry.
		apt-get update -qq
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing
	fi
fi

# --- Kernel ------------------------------------------------------------------
# linux-image-cloud-amd64 is a metapackage; the kernel itself is in the
# versioned package it depends on (linux-image-6.1.0-N-cloud-amd64). The cloud
# flavour is small and boots fast; it has the 8250 serial console, tmpfs,
# devtmpfs and gzip initrd support built in, so the initramfs needs no
# modules (checked against its config below).
resolve_kernel_pkg() {
	apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' |
		head -n 1
}

if [ -s "$cache/vmlinuz" ] && [ -s "$cache/kernel.pkg" ]; then
	log "kernel cached: $(cat "$cache/kernel.pkg")"
else
	kpkg=$(resolve_kernel_pkg)
	if [ -z "$kpkg" ]; then
		# apt-cache knows nothing before the first apt-get update.
		apt-get update -qq
		kpkg=$(resolve_kernel_pkg)
	fi
	[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
	log "kernel package: $kpkg"

	debdir=$cache/deb
	mkdir -p "$debdir"
	set -- "$debdir/${kpkg}_"*_amd64.deb
	if [ ! -f "$1" ]; then
		# apt-get download drops privileges to _apt, which must be able to
		# write the directory (otherwise it warns and downloads as root).
		if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
			chown _apt "$debdir"
		fi
		if ! (cd "$debdir" && apt-get download -qq "$kpkg"); then
			# A stale list points at a version the mirror no longer has.
			apt-get update -qq
			(cd "$debdir" && apt-get download -qq "$kpkg")
		fi
		set -- "$debdir/${kpkg}_"*_amd64.deb
		[ -f "$1" ] || die "apt-get download $kpkg left no .deb in $debdir"
	fi
	deb=$1

	# Unpack into a scratch tree (mostly modules, which we do not need),
	# keep only the kernel image and its config, then drop the tree.
	xdir=$cache/kernel-x
	rm -rf "$xdir"
	dpkg -x "$deb" "$xdir"
	set -- "$xdir"/boot/vmlinuz-*
	[ -f "$1" ] || die "no boot/vmlinuz-* in $deb"
	cp "$1" "$cache/vmlinuz.tmp"
	set -- "$xdir"/boot/config-*
	[ -f "$1" ] || die "no boot/config-* in $deb"
	cp "$1" "$cache/kernel.config"
	rm -rf "$xdir"

	# The initramfs below has no kernel modules: refuse a kernel that
	# would need them rather than boot one that hangs silently.
	for opt in BLK_DEV_INITRD RD_GZIP DEVTMPFS TMPFS PROC_FS SYSFS \
		SERIAL_8250 SERIAL_8250_CONSOLE BINFMT_ELF BINFMT_SCRIPT ACPI; do
		grep -q "^CONFIG_$opt=y\$" "$cache/kernel.config" ||
			die "$kpkg: CONFIG_$opt is not built in; the initramfs would need modules"
	done

	# vmlinuz is renamed into place last, so its presence means done.
	echo "$kpkg" >"$cache/kernel.pkg.tmp"
	mv "$cache/kernel.pkg.tmp" "$cache/kernel.pkg"
	mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
fi

# --- Initramfs ---------------------------------------------------------------
# /init runs as PID 1. It has no `set -e`: PID 1 exiting panics the kernel,
# so every failure must still end in a printed line and "poweroff -f".
# Parameters come from /proc/cmdline (dedup.* words are not passed to init's
# argv or environment, because the kernel takes dotted words for module
# parameters).
write_init() {
	cat <<'INIT'
#!/bin/sh
# PID 1 of a dedupd test guest; built by tests/qemu/build-guest.sh.
export PATH=/bin

msg() {
	echo "dedup-guest: $*"
}

halt_now() {
	# -f: no init to signal, we are init; reboot(2) directly. tmpfs holds
	# nothing worth syncing.
	poweroff -f
	# Still here (no ACPI?): exiting init panics, panic=-1 reboots and
	# QEMU's -no-reboot then exits.
	exit 1
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Talk to the console set by console= (ttyS0) whatever the kernel gave us.
exec </dev/console >/dev/console 2>&1
# Plain LF line ends in the host's log file, so "bad=0$" matches; the
# kernel's own messages still end in CR LF.
stty -onlcr 2>/dev/null

# Defaults; overridden by dedup.NAME=VALUE words on the kernel command line.
# corrupt=R changes one byte of one file in round R, to prove the check can
# fail (0: never).
seconds=60 files=40 mib=2 rewrite=3 corrupt=0
read -r cmdline </proc/cmdline
set -f # split the command line into words, but expand no globs
for word in $cmdline; do
	case $word in
	dedup.*=*)
		key=${word%%=*} key=${key#dedup.} val=${word#*=}
		case $val in
		'' | *[!0-9]*)
			msg "ignoring $word: not a number"
			continue
			;;
		esac
		case $key in
		seconds) seconds=$val ;;
		files) files=$val ;;
		mib) mib=$val ;;
		rewrite) rewrite=$val ;;
		corrupt) corrupt=$val ;;
		*) msg "ignoring unknown parameter $word" ;;
		esac
		;;
	esac
done
[ "$files" -ge 1 ] || files=1
[ "$files" -le 9999 ] || files=9999
[ "$mib" -ge 1 ] || mib=1
msg "config seconds=$seconds files=$files mib=$mib rewrite=$rewrite corrupt=$corrupt"

# Room for every file plus slack; a tmpfs lives in guest RAM, which is the
# memfd on the host that dedupd scans.
if ! mount -t tmpfs -o size=$((files * mib + 8))m tmpfs /data; then
	msg "ERROR cannot mount tmpfs"
	halt_now
fi

# gen SEED MIB: SEED's deterministic content, MIB MiB, on stdout. Every 4 KiB
# page is a 64-byte header naming seed and page, then a 4032-byte body of
# minstd (Park-Miller) numbers from SEED. So a page is the same in every file
# and every guest written with that seed, differs from every other page of
# the file, and one seed shares no page with another. minstd keeps every
# product below 2^53 and every value below 2^31, which busybox awk computes
# and prints exactly (its %x breaks at 2^31).
gen() {
	awk -v s="$1" -v n="$2" 'BEGIN {
		x = s % 2147483646 + 1
		body = ""
		for (l = 0; l < 63; l++) {
			for (w = 0; w < 7; w++) {
				x = (x * 16807) % 2147483647
				body = body sprintf("%08x ", x)
			}
			body = body "\n"
		}
		for (p = 0; p < n * 256; p++)
			printf "%-63s\n%s", sprintf("dedup-guest seed=%d page=%d", s, p), body
	}'
}

# md5_of SEED: md5 of SEED's content as generated, never as read back from
# /data (that would hide a wrong byte).
md5_of() {
	gen "$1" "$mib" | md5sum | {
		read -r s _
		echo "$s"
	}
}

# put INDEX SEED: write file INDEX with SEED's content in place (1<> opens
# without truncating), so the writes land on the very guest pages dedupd may
# have merged rather than on fresh ones.
put() {
	path "$1"
	gen "$2" "$mib" 1<>"$f"
}

# path INDEX: sets $f to file INDEX's name, /data/f0000 to /data/f9999.
# Arithmetic rather than $(printf): every fork is slow under TCG.
path() {
	f=$((10000 + $1))
	f=/data/f${f#1}
}

# Expected md5 of the base content (seed 0) of every file; file $newidx
# instead holds seed $newseed, whose md5 is $newsum.
base=$(md5_of 0)
put 0 0
path 0
first=$f
# The other files are copies of the first: under TCG cat is three times as
# fast as awk, which brings "ready" seconds earlier. A wrong byte in the
# first file would be copied, but every file is still checked against the
# generator's md5, so it shows up as bad.
i=1
while [ "$i" -lt "$files" ]; do
	path "$i"
	cat "$first" 1<>"$f"
	i=$((i + 1))
done
newidx=-1 newseed=0 newsum=
list=
i=0
while [ "$i" -lt "$files" ]; do
	path "$i"
	list="$list $f"
	i=$((i + 1))
done
msg ready

read -r start _ </proc/uptime
start=${start%%.*}
round=0 total=0 cursor=0
while :; do
	round=$((round + 1))
	# Give back the base content to last round's odd file, rewrite a few
	# more with the same bytes (a write to a merged page must break COW
	# without changing anything), then give one file new content.
	if [ "$newidx" -ge 0 ]; then
		put "$newidx" 0
	fi
	j=0
	while [ "$j" -lt "$rewrite" ]; do
		put "$cursor" 0
		cursor=$(((cursor + 1) % files))
		j=$((j + 1))
	done
	newidx=$(((round - 1) % files)) newseed=$round
	newsum=$(md5_of "$newseed")
	put "$newidx" "$newseed"
	if [ "$round" -eq "$corrupt" ]; then
		# The header's first byte is 'd': a '#' is sure to be wrong.
		path $(((newidx + 1) % files))
		msg "corrupting $f at byte 4096 (dedup.corrupt=$corrupt)"
		printf '#' | dd of="$f" bs=1 seek=4096 conv=notrunc 2>/dev/null
	fi

	# One md5sum over all files: forks are slow under TCG.
	ok=0 bad=0
	# shellcheck disable=SC2086 # $list is a list of our own file names
	md5sum $list >/tmp/sums 2>&1
	i=0
	while read -r sum file; do
		want=$base
		[ "$i" -eq "$newidx" ] && want=$newsum
		path "$i"
		if [ "$sum" = "$want" ] && [ "$file" = "$f" ]; then
			ok=$((ok + 1))
		else
			bad=$((bad + 1))
			msg "BAD file=$f round=$round got=$sum want=$want"
		fi
		i=$((i + 1))
	done </tmp/sums
	# A file md5sum could not read prints no sum line: count it bad too.
	if [ "$i" -lt "$files" ]; then
		msg "BAD md5sum printed $i of $files sums"
		bad=$((bad + files - i))
	fi
	total=$((total + bad))
	msg "round=$round ok=$ok bad=$bad"

	read -r now _ </proc/uptime
	now=${now%%.*}
	[ $((now - start)) -lt "$seconds" ] || break
done
msg "done rounds=$round bad=$total"
halt_now
INIT
}

stamp=$({
	write_init
	dpkg-query -W -f='${Version}' busybox-static
	echo
	/bin/busybox --list
} | md5sum | cut -d' ' -f1)
if [ -s "$cache/initramfs.cpio.gz" ] && [ -s "$cache/initramfs.stamp" ] &&
	[ "$(cat "$cache/initramfs.stamp")" = "$stamp" ]; then
	log "initramfs cached"
else
	log "building initramfs"
	root=$cache/initramfs-root
	rm -rf "$root"
	mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/data" \
		"$root/tmp"
	cp /bin/busybox "$root/bin/busybox"
	# Applet links made here, not with `busybox --install` at boot: one less
	# step in the guest, where every fork costs under TCG.
	for applet in $(/bin/busybox --list); do
		[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
	done
	write_init >"$root/init"
	chmod 0755 "$root/init"
	# newc is the format the kernel unpacks; -R 0:0 makes root own every
	# file whoever builds it. Sorted for a stable archive.
	(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
		gzip -9 >"$cache/initramfs.cpio.gz.tmp"
	rm -rf "$root"
	mv "$cache/initramfs.cpio.gz.tmp" "$cache/initramfs.cpio.gz"
	echo "$stamp" >"$cache/initramfs.stamp"
fi

log "ready: $cache/vmlinuz ($(cat "$cache/kernel.pkg")) $cache/initramfs.cpio.gz"

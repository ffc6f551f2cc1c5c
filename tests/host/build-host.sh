#!/bin/sh
# build-host.sh CACHE_DIR TOP_SRCDIR
#
# Builds the disk image that tests/host/check-host.sh boots: a small Debian 12
# (bookworm) host with systemd as init, the system bus, a bookworm-backports
# cloud kernel (>= 6.4: the agent needs userfaultfd WP_UNPOPULATED) and dedupd
# installed the way a package would install it (make install DESTDIR= from a
# --prefix=/usr build), plus the guest simulator and the in-host test driver
# (tests/host/host-test.sh, started at boot by dedupd-host-test.service).
#
# Outputs in CACHE_DIR: vmlinuz and initrd.img (the host's own kernel and
# initramfs-tools initrd, booted with QEMU -kernel/-initrd) and host.img (a raw
# ext4 image made with mkfs.ext4 -d: no loop mount).
#
# Cached: the debootstrap tree with its kernel (CACHE_DIR/base) is built once,
# and again only when the package list below changes; a second run rebuilds
# dedupd (incrementally, in CACHE_DIR/obj), copies the base tree, installs
# into the copy and makes a new image. Needs root (debootstrap, chroot).
#
# Exit 0 when the image is ready, 77 when this machine cannot build it (no
# Debian mirror, packages not installable), 1 on any other failure.
set -eu

die() {
        echo "build-host: $*" >&2
        exit 1
}

# unavailable MSG: this machine cannot build the host (no mirror, no
# packages): exit 77, which check-host.sh turns into a skip.
unavailable() {
        echo "build-host: $*" >&2
        exit 77
}

log() {
        echo "build-host: $*"
}

[ $# -eq 2 ] || die "usage: $0 CACHE_DIR TOP_SRCDIR"
mkdir -p "$1"
# Absolute paths, so nothing below depends on the current directory.
cache=$(cd "$1" && pwd)
srcdir=$(cd "$2" && pwd)
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"

# One build at a time per cache: the steps below use fixed scratch names.
exec 9>"$cache/.lock"
flock 9

export DEBIAN_FRONTEND=noninteractive LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

suite=bookworm
mirror=${DEDUP_HOST_MIRROR:-http://deb.debian.org/debian}
# What the host runs: systemd as PID 1 (systemd-sysv), the system bus (dbus),
# sysctl (procps), useradd and runuser (passwd, util-linux: in minbase), the
# runtime libraries of dedupd and libdedup, and initramfs-tools with zstd so
# the backports kernel gets an initrd that mounts a virtio-blk ext4 root.
include="systemd systemd-sysv dbus libsystemd0 liburing2 libxxhash0 libnuma1
        procps kmod udev initramfs-tools zstd"
kernel=linux-image-cloud-amd64
# Bump when the base tree is set up differently, to rebuild it.
base_version=1

# --- Host packages -----------------------------------------------------------
# debootstrap builds the tree, e2fsprogs (mkfs.ext4 -d) the image, util-linux
# (unshare) keeps the chroot's /proc mount private. Only what is missing is
# installed: a cached machine should not touch the network.
missing=
for pkg in debootstrap e2fsprogs util-linux; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) || status=
        [ "$status" = installed ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
        log "installing$missing"
        # shellcheck disable=SC2086 # $missing is a list of package names
        if ! apt-get install -y -qq --no-install-recommends $missing; then
                # The package lists are missing or stale: refresh once and retry.
                apt-get update -qq || true
                # shellcheck disable=SC2086
                apt-get install -y -qq --no-install-recommends $missing ||
                        unavailable "cannot install$missing"
        fi
fi

# in_root DIR CMD...: CMD chrooted into DIR with /proc mounted (update-initramfs
# and apt want it), in a private mount namespace: the mount goes away with the
# command whatever happens, and never shows on the machine.
in_root() {
        # shellcheck disable=SC2016 # expanded by the inner sh
        unshare --mount --propagation private sh -c \
                'root=$1; shift; mount -t proc proc "$root/proc" && exec chroot "$root" "$@"' \
                in_root "$@"
}

# --- Base tree: debootstrap and the backports kernel ---------------------------
base_stamp=$(echo "$base_version $suite $mirror $include $kernel" | md5sum | cut -d' ' -f1)

build_base() {
        tmp=$cache/base.tmp
        rm -rf "$tmp"
        log "debootstrap $suite into $tmp (minbase + $(echo "$include" | wc -w) packages)"
        # shellcheck disable=SC2086 # $include is a list of package names
        debootstrap --variant=minbase --include="$(echo $include | tr ' ' ,)" \
                "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
                { tail -n 20 "$cache/debootstrap.log" >&2; unavailable "debootstrap failed (log: $cache/debootstrap.log)"; }

        echo dedupd-host >"$tmp/etc/hostname"
        printf '127.0.0.1\tlocalhost\n127.0.1.1\tdedupd-host\n' >"$tmp/etc/hosts"
        echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$tmp/etc/fstab"
        # A root login without password on the serial console (ttyS0), for a
        # look at the image booted by hand. Test image only.
        in_root "$tmp" passwd -dq root
        # No service may start in the chroot while packages install.
        printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
        chmod 0755 "$tmp/usr/sbin/policy-rc.d"

        # Debian 12's own kernel (6.1) is too old: the cloud kernel from
        # bookworm-backports, installed by apt so that its postinst runs
        # initramfs-tools (MODULES=most: virtio and ext4 drivers included).
        echo "deb $mirror $suite-backports main" >"$tmp/etc/apt/sources.list.d/backports.list"
        log "installing $kernel from $suite-backports"
        {
                in_root "$tmp" apt-get update -qq &&
                        in_root "$tmp" apt-get install -y -qq --no-install-recommends -t "$suite-backports" "$kernel"
        } >"$cache/kernel-install.log" 2>&1 ||
                { tail -n 20 "$cache/kernel-install.log" >&2; unavailable "installing $kernel failed (log: $cache/kernel-install.log)"; }
        in_root "$tmp" apt-get clean
        rm -rf "$tmp"/var/lib/apt/lists/* "$tmp/usr/sbin/policy-rc.d"

        rm -rf "$cache/base"
        mv "$tmp" "$cache/base"
        echo "$base_stamp" >"$cache/base.stamp"
}

if [ -d "$cache/base" ] && [ "$(cat "$cache/base.stamp" 2>/dev/null)" = "$base_stamp" ]; then
        log "base tree cached: $cache/base"
else
        build_base
fi

# The kernel and initrd are booted from outside the image (no boot loader).
set -- "$cache"/base/boot/vmlinuz-*
[ -f "$1" ] || die "no /boot/vmlinuz-* in the base tree"
kver=${1##*/vmlinuz-}
[ -s "$cache/base/boot/initrd.img-$kver" ] || die "no initrd.img-$kver: see $cache/kernel-install.log"
case $kver in
[0-5].* | 6.[0-3].*) die "kernel $kver is older than 6.4 (userfaultfd WP_UNPOPULATED)" ;;
esac
# Built in or in the initrd: the drivers the root file system needs.
for pair in virtio_pci:VIRTIO_PCI virtio_blk:VIRTIO_BLK ext4:EXT4_FS; do
        mod=${pair%:*} opt=${pair#*:}
        grep -q "^CONFIG_$opt=y" "$cache/base/boot/config-$kver" && continue
        in_root "$cache/base" lsinitramfs "/boot/initrd.img-$kver" | grep -q "/$mod\.ko" ||
                die "initrd.img-$kver has no $mod: the root disk would not mount"
done
cp "$cache/base/boot/vmlinuz-$kver" "$cache/vmlinuz"
cp "$cache/base/boot/initrd.img-$kver" "$cache/initrd.img"
echo "$kver" >"$cache/kernel.version"
log "kernel $kver"

# --- dedupd, configured as a distribution package would be --------------------
# A build of its own (not the caller's build tree, whose prefix may be
# /usr/local): units, policy, sysctl.d and tmpfiles.d must land where the
# host's systemd and dbus-daemon look.
obj=$cache/obj
[ ! -f "$srcdir/config.status" ] ||
        die "$srcdir is configured in the source tree; build out of tree (e.g. contrib/quickstart.sh build) so build-host can configure its own --prefix=/usr build"
# A build of another source tree (a cache copied or moved) starts over.
[ "$(cat "$obj/.srcdir" 2>/dev/null)" = "$srcdir" ] || rm -rf "$obj"
mkdir -p "$obj"
echo "$srcdir" >"$obj/.srcdir"
# shellcheck disable=SC3013 # -nt: dash, bash and busybox sh have it
if [ ! -f "$obj/Makefile" ] || [ "$srcdir/configure" -nt "$obj/Makefile" ]; then
        log "configuring dedupd --prefix=/usr in $obj"
        (cd "$obj" && "$srcdir/configure" --prefix=/usr --sysconfdir=/etc --localstatedir=/var) \
                >"$cache/configure.log" 2>&1 || { tail -n 20 "$cache/configure.log" >&2; die "configure failed"; }
fi
log "building dedupd and tests/guest-sim"
make -C "$obj" -s -j"$(nproc)" all tests/guest-sim >"$cache/make.log" 2>&1 ||
        { tail -n 30 "$cache/make.log" >&2; die "make failed (log: $cache/make.log)"; }

# --- The host tree: base + dedupd -------------------------------------------------
root=$cache/rootfs
rm -rf "$root"
cp -a "$cache/base" "$root"
make -C "$obj" -s install DESTDIR="$root" >"$cache/install.log" 2>&1 ||
        { tail -n 30 "$cache/install.log" >&2; die "make install failed (log: $cache/install.log)"; }

# Where systemd and dbus-daemon in the host read them; anything elsewhere
# would be silently ignored there.
for f in usr/sbin/dedupd usr/bin/dedupctl \
        usr/lib/systemd/system/dedupd.service usr/lib/systemd/system/dedupd.socket \
        usr/share/dbus-1/system.d/org.dedupd1.conf usr/share/dbus-1/system-services/org.dedupd1.service \
        usr/lib/sysctl.d/50-dedupd.conf usr/lib/tmpfiles.d/dedupd.conf etc/dedupd/dedupd.conf; do
        [ -e "$root/$f" ] || die "make install put no /$f (see $cache/install.log)"
done
grep -q '^ExecStart=/usr/sbin/dedupd ' "$root/usr/lib/systemd/system/dedupd.service" ||
        die "dedupd.service does not start /usr/sbin/dedupd"

# The simulator: libtool's real binary (tests/guest-sim is a wrapper script),
# linked against libdedup.so.0, which make install put in /usr/lib.
t=$root/usr/lib/dedupd-host-test
mkdir -p "$t"
cp "$obj/tests/.libs/guest-sim" "$t/guest-sim"
cp "$srcdir/tests/host/host-test.sh" "$t/host-test.sh"
chmod 0755 "$t/guest-sim" "$t/host-test.sh"
# What the driver compares against: the value shipped in the source tree.
max_map_count=$(sed -n 's/^vm\.max_map_count *= *\([0-9]*\).*/\1/p' "$srcdir/systemd/50-dedupd.conf")
[ -n "$max_map_count" ] || die "no vm.max_map_count in $srcdir/systemd/50-dedupd.conf"
echo "MAX_MAP_COUNT=$max_map_count" >"$t/expect"
cp "$srcdir/tests/host/dedupd-host-test.service" "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../dedupd-host-test.service "$root/etc/systemd/system/multi-user.target.wants/"
in_root "$root" ldconfig
# Everything installed runs in the host's user space: libraries resolve.
in_root "$root" /usr/sbin/dedupd --help >/dev/null || die "/usr/sbin/dedupd does not run in the host tree"
in_root "$root" /usr/lib/dedupd-host-test/guest-sim --help >/dev/null ||
        die "guest-sim does not run in the host tree (a library missing?)"

# --- Image ------------------------------------------------------------------------
# 1 GiB free beyond the tree: the journal, simulator stats, /var/tmp.
mib=$(($(du -sm "$root" | cut -f1) + 1024))
rm -f "$cache/host.img"
mkfs.ext4 -q -F -L dedupd-host -d "$root" "$cache/host.img.tmp" "${mib}M" >/dev/null ||
        die "mkfs.ext4 -d failed"
mv "$cache/host.img.tmp" "$cache/host.img"
log "ready: $cache/host.img (${mib} MiB), kernel $kver"

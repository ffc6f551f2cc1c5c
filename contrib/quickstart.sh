#!/bin/sh
# dedupd quick start: install what is needed from Debian, build, then run
# the demo or the test suite. Run as root on Debian 12 from the source tree.
#
#   ./contrib/quickstart.sh demo    build and run the main job, showing memory saved
#   ./contrib/quickstart.sh check   build and run 'make check', print the summary
#   ./contrib/quickstart.sh build   install the Debian packages and build (into build/)
#   ./contrib/quickstart.sh fuzz [RUNS]  fuzz the protocol parser (ASan+UBSan, default 10M runs)
#   ./contrib/quickstart.sh deps    only install the Debian packages
set -eu

cd "$(dirname "$0")/.."
top=$(pwd)
build="$top/build"

# Build dependencies, test dependencies and what the demo runs.
packages="build-essential autoconf autoconf-archive automake libtool pkg-config
          libsystemd-dev liburing-dev libnuma-dev libxxhash-dev check
          clang libclang-rt-14-dev dbus systemd util-linux python3 strace man-db
          qemu-system-x86 busybox-static cpio debootstrap e2fsprogs
          libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils"

need_root() {
        if [ "$(id -u)" != 0 ]; then
                echo "quickstart: run as root (it installs Debian packages)" >&2
                exit 1
        fi
}

deps() {
        missing=""
        for p in $packages; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
        done
        [ -z "$missing" ] && return 0
        need_root
        echo "quickstart: installing$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || echo "quickstart: apt-get update failed, trying the cached package lists" >&2
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

build() {
        if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ]; then
                autoreconf -fi >/dev/null
        fi
        mkdir -p "$build"
        cd "$build"
        if [ ! -f Makefile ] || [ "$top/configure" -nt Makefile ]; then
                "$top/configure" ${DEDUP_CONFIGURE_FLAGS:-} >/dev/null
        fi
        make -s -j"$(nproc)" >/dev/null
}

check() {
        status=0
        make -s -j"$(nproc)" check >/dev/null 2>&1 || status=$?
        # Check's own summary line of every suite, then automake's verdicts.
        for log in $(find . -name 'test-*.log' | sort); do
                line=$(grep -h -E '^[0-9]+%: Checks:' "$log" | tail -n 1)
                [ -n "$line" ] && echo "$(basename "$log" .log): $line"
        done
        sed -n '/^# TOTAL/,/^# ERROR/p' test-suite.log 2>/dev/null || true
        if [ "$status" != 0 ]; then
                echo "quickstart: make check FAILED; failing logs follow" >&2
                grep -l -E '^:test-result: (FAIL|ERROR)' $(find . -name '*.trs') 2>/dev/null | while read -r trs; do
                        echo "=== ${trs%.trs}.log" >&2
                        tail -n 60 "${trs%.trs}.log" >&2
                done
                exit "$status"
        fi
}

demo() {
        make -s -j"$(nproc)" tests/guest-sim >/dev/null
        "$top/contrib/demo.sh" "${DEDUP_DEMO_MODE:-qemu}" "${DEDUP_DEMO_MIB:-256}" "${DEDUP_DEMO_SECONDS:-20}"
}

case "${1:-}" in
deps) deps ;;
build) deps; build ;;
demo) deps; build; demo ;;
check) deps; build; check ;;
fuzz) deps; [ -x "$top/configure" ] || autoreconf -fi >/dev/null; exec "$top/tests/fuzz/run-fuzz" ${2:+"$2"} ;;
*) echo "usage: $0 demo|check|build|fuzz|deps" >&2; exit 2 ;;
esac

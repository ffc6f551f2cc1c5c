# Shell helpers for tests and benchmarks that boot QEMU TCG guests from
# tests/qemu/ (Debian cloud kernel, busybox initramfs; see build-guest.sh).
# Source it after lib-daemon.sh, with top_srcdir set. Each guest NAME logs its serial console to
# $T/NAME.console and QEMU's own output (the shim's lines) to $T/NAME.qemu.

QEMU_DIR="${top_srcdir:?}/tests/qemu"
QEMU_SHIM="$top_builddir/contrib/qemu/.libs/libdedup-qemu.so"
QEMU_CACHE="$top_builddir/tests/qemu-cache"
QEMUS=""

# qemu_setup: QEMU, the shim, and the guest kernel and initramfs (built
# once, cached in the build tree), or skip saying what is missing.
qemu_setup() {
        command -v qemu-system-x86_64 >/dev/null ||
                skip "no qemu-system-x86_64 (Debian package qemu-system-x86; ./contrib/quickstart.sh deps installs it)"
        [ -f "$QEMU_SHIM" ] || fail "no $QEMU_SHIM"
        "$QEMU_DIR/build-guest.sh" "$QEMU_CACHE" >"$T/build-guest.log" 2>&1 ||
                { tail -n 20 "$T/build-guest.log"; skip "cannot build the guest kernel and initramfs (see above)"; }
}

# start_guest NAME SECONDS [memfd|anon]: a 256 MiB guest running its file
# workload for SECONDS, in the background. memfd (default): memfd share=on
# RAM with the shim, registering with dedupd on $T/vmm.sock; anon: QEMU's
# default anonymous RAM (kernel KSM's). Sets QEMU_<NAME>, adds to QEMUS.
start_guest() {
        if [ "${3:-memfd}" = anon ]; then
                GUEST_RAM=anon "$QEMU_DIR/run-guest.sh" "$QEMU_CACHE" "$1" 256 "$T/$1.console" \
                        dedup.seconds="$2" dedup.files=40 dedup.mib=2 >"$T/$1.qemu" 2>&1 &
        else
                DEDUPD_SOCKET="$T/vmm.sock" LD_PRELOAD="$QEMU_SHIM" "$QEMU_DIR/run-guest.sh" "$QEMU_CACHE" "$1" 256 \
                        "$T/$1.console" dedup.seconds="$2" dedup.files=40 dedup.mib=2 >"$T/$1.qemu" 2>&1 &
        fi
        eval "QEMU_$(sim_var "$1")=$!"
        QEMUS="$QEMUS $!"
        PIDS="$PIDS $!"
}

# wait_guest NAME WHAT SECONDS: until the guest prints "dedup-guest: WHAT".
# On failure, QEMU's output ($T/NAME.qemu, or NAME.log in GUEST_LOG_DIR for
# guests libvirt started) and the console's, whichever exist.
wait_guest() {
        wait_for "$3" "grep -qs '^dedup-guest: $2' '$T/$1.console'" && return 0
        for f in "$T/$1.qemu" "${GUEST_LOG_DIR:-$T}/$1.log" "$T/$1.console"; do
                if [ -f "$f" ]; then
                        echo "--- $f (tail)"
                        tail -n 20 "$f"
                fi
        done
        fail "guest $1 did not print '$2'"
}

# rounds NAME: md5 rounds the guest has printed.
rounds() { n=$(grep -c "^dedup-guest: round=" "$T/$1.console" 2>/dev/null) || true; echo "${n:-0}"; }

# no_bad NAME: every round of NAME so far was right.
no_bad() {
        if grep -E "BAD|bad=[1-9]" "$T/$1.console"; then
                fail "guest $1 read wrong file content"
        fi
}

# stop_guests: SIGTERM every guest started, and wait for them.
stop_guests() {
        for q in $QEMUS; do kill -TERM "$q" 2>/dev/null || true; done
        for q in $QEMUS; do wait "$q" 2>/dev/null || true; done
        QEMUS=""
}

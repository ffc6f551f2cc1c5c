# A private dbus-daemon with the project's policy (dbus/org.dedupd1.conf
# from the build tree), for tests that drive dedupd over D-Bus. Source it
# after lib-daemon.sh; start_private_bus sets BUS_ADDRESS.

# start_private_bus: like the system bus (the project's policy decides who
# may call dedupd), but any user may connect, so tests can be refused as
# non-root.
start_private_bus() {
        command -v dbus-daemon >/dev/null || skip "no dbus-daemon (Debian package dbus)"
        policy="$top_builddir/dbus/org.dedupd1.conf"
        [ -f "$policy" ] || fail "no $policy"
        cat >"$T/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$T/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <deny own="org.dedupd1"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>$policy</include>
</busconfig>
CONF
        chmod 755 "$T"
        dbus-daemon --config-file="$T/bus.conf" --nofork --nopidfile >"$T/bus.log" 2>&1 &
        PIDS="$PIDS $!"
        BUS_ADDRESS="unix:path=$T/bus"
        wait_for 10 "[ -S '$T/bus' ]" || { cat "$T/bus.log"; fail "dbus-daemon did not start"; }
        export BUS_ADDRESS
}

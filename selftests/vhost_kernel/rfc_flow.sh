#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# The RFC selftest's flow, driven against this harness installed under the
# RFC program's name. The 2021 RFC "Support kernel buffers in vhost" ended
# with a shell script that runs `./vhost_kernel_test` (the attach sanity
# check), then four times `./vhost_kernel_test --serve &`, finds the two new
# interfaces in /sys/class/net, moves them into namespaces h2g and g2h with
# `ip`, pings with `ping6 -c10 -A -s 20000` both ways, starts a `ping6 -f`
# flood each way and tears down mid-flood: the serving process killed;
# SIGUSR1 (it closes /dev/vktest) first; virtio_net unbound; unbound and
# bound again, with a ping after the rebind. This script makes the same
# calls in the same order with iproute2's `ip` and iputils' `ping -6`, and
# judges each step instead of trusting `sh -e`:
#   - the serving process is waited on through its first output line (the
#     interface line), not by polling /sys/class/net; the new interfaces are
#     still found the RFC's way and must agree with that line;
#   - addresses get `nodad` (the RFC raced ping6 against DAD);
#   - every ping before the floods must lose nothing; the flood must be
#     flowing both ways when the teardown starts (packet counters);
#   - SIGUSR1 must be answered by `closed /dev/vktest`, and the killed
#     serving process must exit cleanly (the RFC never looked);
#   - the virtio device to unbind is the one under our g2h interface (the
#     RFC assumed virtio0) and the rebound interface is looked up, not
#     assumed to keep its name (a diagnostic says when the RFC's guess
#     would have been wrong).
# What the RFC left running (the serving process of its second test, whose
# pid it forgot) is killed at the end.
#
# usage: rfc_flow.sh [HARNESS]   (default: vhost-kernel-test from PATH)
# Needs root, a kernel with the series, iproute2's ip and iputils' ping in
# PATH. KTAP on stdout (the attach check as a nested subtest), commands and
# their output on stderr. Exit: 0 all passed, 1 a failure, 4 skipped.
set -eu

HARNESS="${1:-$(command -v vhost-kernel-test || true)}"
IP=ip
PING=ping
HOSTIP=fe80::0
GUESTIP=fe80::1
# Replies each flood direction must have caused while it ran (as the harness).
FLOOD_MIN=20

# State of the current RFC test (the RFC script's globals).
PID=
PINGPID0=
PINGPID1=
LEFT=
h2g=
g2h=
virtio=

diag() {
	printf '# %s\n' "$*"
}

# Run a command, echoed on stderr like `sh -x`; on failure say which.
try() {
	echo "+ $*" >&2
	rc=0
	"$@" >&2 || rc=$?
	[ "$rc" -eq 0 ] || diag "failed (exit $rc): $*"
	return "$rc"
}

# The RFC's cleanup: kill the serving process and the floods, delete the
# namespaces. We also wait for the serving process and require a clean
# exit (serve exits 0 on SIGTERM after closing everything).
cleanup() {
	ok=0
	if [ -n "$PID" ]; then
		kill "$PID" 2>/dev/null || :
		rc=0
		wait "$PID" || rc=$?
		if [ "$rc" -ne 0 ]; then
			diag "the serving process $PID exited with $rc after SIGTERM"
			ok=1
		fi
	fi
	for p in "$PINGPID0" "$PINGPID1"; do
		[ -z "$p" ] || kill "$p" 2>/dev/null || :
		[ -z "$p" ] || wait "$p" 2>/dev/null || :
	done
	"$IP" netns del g2h 2>/dev/null || :
	"$IP" netns del h2g 2>/dev/null || :
	exec 3<&- || :
	PID=''
	PINGPID0=''
	PINGPID1=''
	return "$ok"
}

# Packets received by interface $2 in namespace $1.
rx_packets() {
	"$IP" netns exec "$1" cat "/sys/class/net/$2/statistics/rx_packets"
}

# `ping -6 -c10 -A -s 20000` from namespace $1 over $2 to $3: no loss.
ping_ten() {
	echo "+ ip netns exec $1 ping -6 -c10 -A -s 20000 $3%$2" >&2
	out="$("$IP" netns exec "$1" "$PING" -6 -c10 -A -s 20000 "$3%$2" 2>&1)" || {
		printf '%s\n' "$out" >&2
		diag "ping from $1 over $2 to $3 failed"
		return 1
	}
	printf '%s\n' "$out" >&2
	summary="$(printf '%s\n' "$out" | grep 'packets transmitted' || true)"
	diag "$1 -> $3: $summary"
	case "$summary" in
	"10 packets transmitted, 10 received, 0% packet loss"*) return 0 ;;
	esac
	diag "ping from $1 over $2 lost echoes"
	return 1
}

# The RFC's test_one: serve, find the interfaces, place them, ping both ways.
test_one() {
	ls /sys/class/net/ >before
	rm -f serve.fifo
	mkfifo serve.fifo
	echo "+ ./vhost_kernel_test --serve &" >&2
	./vhost_kernel_test --serve >serve.fifo &
	PID=$!
	exec 3<serve.fifo
	# The interface line says the attach is done (or EOF: serve failed).
	line=
	if ! IFS= read -r line <&3; then
		diag "./vhost_kernel_test --serve ended without its interface line"
		return 1
	fi
	diag "serve: $line"
	ls /sys/class/net/ >after
	grep -F -x -v -f before after >new || :
	if [ "$(wc -l <new)" -ne 2 ]; then
		diag "expected 2 new interfaces in /sys/class/net, found: $(tr '\n' ' ' <new)"
		return 1
	fi
	h2g=
	g2h=
	while IFS= read -r iface; do
		case "$iface" in
		vhostkernel*) h2g="$iface" ;;
		*) g2h="$iface" ;;
		esac
	done <new
	[ -n "$g2h" ] || { diag "did not find the guest-to-host interface"; return 1; }
	[ -n "$h2g" ] || { diag "did not find the host-to-guest interface"; return 1; }
	if [ "$line" != "h2g=$h2g g2h=$g2h" ]; then
		diag "serve said \"$line\", /sys/class/net says h2g=$h2g g2h=$g2h"
		return 1
	fi
	virtio="$(basename "$(readlink "/sys/class/net/$g2h/device")")"
	case "$virtio" in
	virtio[0-9]*) ;;
	*) diag "$g2h is not a virtio device ($virtio)"; return 1 ;;
	esac
	try "$IP" netns add g2h || return 1
	try "$IP" netns add h2g || return 1
	try "$IP" link set dev "$h2g" netns h2g || return 1
	try "$IP" netns exec h2g "$IP" addr add dev "$h2g" scope link "$HOSTIP/64" nodad || return 1
	try "$IP" netns exec h2g "$IP" link set dev "$h2g" up || return 1
	place_g2h "$g2h" || return 1
	ping_ten h2g "$h2g" "$GUESTIP" || return 1
	ping_ten g2h "$g2h" "$HOSTIP" || return 1
}

# Move the virtio-net interface $1 into g2h, address it, bring it up.
place_g2h() {
	try "$IP" link set dev "$1" netns g2h || return 1
	try "$IP" netns exec g2h "$IP" addr add dev "$1" scope link "$GUESTIP/64" nodad || return 1
	try "$IP" netns exec g2h "$IP" link set dev "$1" up || return 1
}

# The RFC's start_background_flood, then a check that both floods flow.
start_background_flood() {
	h0="$(rx_packets h2g "$h2g")" || return 1
	g0="$(rx_packets g2h "$g2h")" || return 1
	echo "+ ip netns exec h2g ping -6 -f $GUESTIP%$h2g &" >&2
	"$IP" netns exec h2g "$PING" -6 -f "$GUESTIP%$h2g" >/dev/null 2>&1 &
	PINGPID0=$!
	echo "+ ip netns exec g2h ping -6 -f $HOSTIP%$g2h &" >&2
	"$IP" netns exec g2h "$PING" -6 -f "$HOSTIP%$g2h" >/dev/null 2>&1 &
	PINGPID1=$!
	# Not a synchronisation: the RFC lets the floods run for a second
	# before it tears down; the counters then say whether they flowed.
	sleep 1
	h1="$(rx_packets h2g "$h2g")" || return 1
	g1="$(rx_packets g2h "$g2h")" || return 1
	diag "flood: $h2g received $((h1 - h0)), $g2h received $((g1 - g0)) packets in 1 s"
	if [ $((h1 - h0)) -lt "$FLOOD_MIN" ] || [ $((g1 - g0)) -lt "$FLOOD_MIN" ]; then
		diag "a flood is not flowing (fewer than $FLOOD_MIN packets)"
		return 1
	fi
}

# TEST: Basic test (the serving process killed mid-flood).
rfc_basic() {
	test_one || return 1
	start_background_flood || return 1
}

# TEST: Close vhost_test fd before vhost (SIGUSR1 mid-flood).
rfc_close_vktest_first() {
	test_one || return 1
	start_background_flood || return 1
	try kill -USR1 "$PID" || return 1
	line=
	IFS= read -r line <&3 || :
	if [ "$line" != "closed /dev/vktest" ]; then
		diag "after SIGUSR1 serve said \"$line\", expected \"closed /dev/vktest\""
		return 1
	fi
	# As the RFC: forget the pid, so cleanup leaves the process running.
	LEFT="$PID"
	PID=
}

# Write $1 to the virtio_net driver's $2 file (unbind or bind).
virtio_net() {
	echo "+ echo $1 > /sys/bus/virtio/drivers/virtio_net/$2" >&2
	echo "$1" >"/sys/bus/virtio/drivers/virtio_net/$2" || {
		diag "writing $1 to virtio_net/$2 failed"
		return 1
	}
}

# The RFC unbinds virtio0: say when ours is another one.
rfc_device_guess() {
	[ "$virtio" = virtio0 ] || diag "our virtio device is $virtio (the RFC's script would unbind virtio0)"
}

# TEST: Unbind virtio_net and close.
rfc_unbind() {
	test_one || return 1
	start_background_flood || return 1
	rfc_device_guess
	virtio_net "$virtio" unbind || return 1
}

# TEST: Unbind and rebind virtio_net (then ping over the new interface).
rfc_unbind_rebind() {
	test_one || return 1
	start_background_flood || return 1
	rfc_device_guess
	virtio_net "$virtio" unbind || return 1
	virtio_net "$virtio" bind || return 1
	# The RFC assumes the new interface takes $g2h's name: look it up.
	new_g2h="$(ls "/sys/bus/virtio/devices/$virtio/net/" 2>/dev/null || true)"
	if [ -z "$new_g2h" ]; then
		diag "no interface under $virtio after the bind"
		return 1
	fi
	[ "$new_g2h" = "$g2h" ] || diag "the rebound interface is $new_g2h, not $g2h (the RFC assumed the name stays)"
	g2h="$new_g2h"
	place_g2h "$g2h" || return 1
	# The floods are still running here (the RFC's order): ping's own
	# verdict (some reply) decides, the loss is a diagnostic.
	echo "+ ip netns exec g2h ping -6 -c10 -A -s 20000 $HOSTIP%$g2h" >&2
	out="$("$IP" netns exec g2h "$PING" -6 -c10 -A -s 20000 "$HOSTIP%$g2h" 2>&1)" || {
		printf '%s\n' "$out" >&2
		diag "ping over the rebound $g2h failed"
		return 1
	}
	printf '%s\n' "$out" >&2
	diag "g2h -> $HOSTIP after the rebind: $(printf '%s\n' "$out" | grep 'packets transmitted' || true)"
}

# What the RFC's script left running (the serving process of its second
# test, which still holds /dev/vhost-net-kernel): end it, it must exit 0.
rfc_leftover_serve_exits() {
	if [ -z "$LEFT" ]; then
		N=$((N + 1))
		echo "ok $N rfc_leftover_serve_exits # SKIP no process was left"
		return 0
	fi
	kill "$LEFT" 2>/dev/null || :
	rc=0
	wait "$LEFT" || rc=$?
	[ "$rc" -eq 0 ] || diag "the serving process left after SIGUSR1 exited with $rc after SIGTERM"
	result rfc_leftover_serve_exits "$rc"
}

N=0
PASSED=0
FAILED=0

result() {
	N=$((N + 1))
	if [ "$2" -eq 0 ]; then
		PASSED=$((PASSED + 1))
		echo "ok $N $1"
	else
		FAILED=$((FAILED + 1))
		echo "not ok $N $1"
	fi
}

# One RFC test: run it, then the RFC's cleanup; both must succeed.
point() {
	echo "TEST: $1" >&2
	rc=0
	"$1" || rc=1
	cleanup || rc=1
	result "$1" "$rc"
}

# The RFC's first step, `./vhost_kernel_test || fail`: its KTAP (the attach
# checks) nested as a subtest.
rfc_sanity_check() {
	echo "+ ./vhost_kernel_test" >&2
	rc=0
	./vhost_kernel_test >sanity.ktap || rc=$?
	sed 's/^/    /' sanity.ktap
	[ "$rc" -eq 0 ] || diag "./vhost_kernel_test exited with $rc"
	result rfc_sanity_check "$rc"
	return "$rc"
}

# The path of the first $1 in PATH whose `$1 -V` mentions $2. By path:
# a busybox shell built with FEATURE_SH_STANDALONE runs its own applet for
# a bare name (busybox's ip and ping lack the options we need).
real_tool() {
	old_ifs="$IFS"
	IFS=:
	for d in $PATH; do
		if [ -x "$d/$1" ] && "$d/$1" -V 2>/dev/null | grep -q "$2"; then
			IFS="$old_ifs"
			echo "$d/$1"
			return 0
		fi
	done
	IFS="$old_ifs"
	return 1
}

# Check the tools: the real ones, not busybox's applets of the same name.
check_tools() {
	IP="$(real_tool ip iproute2)" ||
		{ echo "Bail out! no iproute2 ip in PATH"; exit 1; }
	PING="$(real_tool ping iputils)" ||
		{ echo "Bail out! no iputils ping in PATH"; exit 1; }
	diag "tools: $IP ($("$IP" -V)), $PING ($("$PING" -V | head -n 1))"
	if [ -z "$HARNESS" ] || [ ! -x "$HARNESS" ]; then
		echo "Bail out! harness not found (give its path)"
		exit 1
	fi
}

main() {
	echo "KTAP version 1"
	echo "1..6"
	check_tools
	tests="rfc_basic rfc_close_vktest_first rfc_unbind rfc_unbind_rebind"
	if [ ! -e /dev/vktest ] || [ ! -e /dev/vhost-net-kernel ]; then
		for t in rfc_sanity_check $tests rfc_leftover_serve_exits; do
			N=$((N + 1))
			echo "ok $N $t # SKIP /dev/vktest or /dev/vhost-net-kernel missing"
		done
		exit 4
	fi
	HARNESS="$(cd "$(dirname "$HARNESS")" && pwd)/$(basename "$HARNESS")"
	work="$(mktemp -d)"
	cd "$work"
	# Our binary under the RFC program's name, called as the RFC calls it.
	ln -s "$HARNESS" vhost_kernel_test
	diag "$HARNESS as $work/vhost_kernel_test"
	if rfc_sanity_check; then
		for t in $tests; do
			point "$t"
		done
	else
		for t in $tests; do
			N=$((N + 1))
			echo "ok $N $t # SKIP the sanity check failed (the RFC stops there)"
		done
	fi
	rfc_leftover_serve_exits
	echo "# Totals: pass:$PASSED fail:$FAILED xfail:0 xpass:0 skip:0 error:0"
	echo "# rfc_flow: $PASSED passed, $FAILED failed"
	[ "$FAILED" -eq 0 ]
}

main

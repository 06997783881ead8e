#!/bin/bash
# Build the test initramfs.
#
# usage: scripts/mkinitramfs.sh HARNESS_BINARY OUT.cpio.gz
#
# Contents: /bin/busybox (busybox-static) with a symlink per applet, the
# static harness at /bin/vhost-kernel-test, and /init, which reads from the
# kernel command line:
#   vkt.mode=run|shell   run the suite (default) or give a shell on ttyS0
#   vkt.repeat=N         run the suite N times (stops at the first failure)
#   vkt.args=BASE64      base64 of the extra harness arguments, one a line
# In run mode the harness's stdout goes to the results port /dev/ttyS1, its
# stderr to the console (ttyS0), then "VKT-EXIT: <code>" is written to
# ttyS1 and the machine stops through QEMU's isa-debug-exit device (port
# 0xf4), so QEMU exits with (code << 1) | 1.
# The archive is deterministic: sorted, owner 0:0, mtime 0 (or
# $SOURCE_DATE_EPOCH), gzip -n.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

BUSYBOX="${VKT_BUSYBOX:-/bin/busybox}"

usage() {
	sed -n '2,/^set -eu/{/^#/s/^# \{0,1\}//p}' "$0" >&2
	exit 2
}

# The /init script, written verbatim into the archive.
write_init() {
	cat >"$1" <<'INIT'
#!/bin/sh
# /init of the vhost-kernel-test initramfs (busybox sh).
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
RESULTS=/dev/ttyS1

log() {
	echo "vkt-init: $*" >/dev/console
}

mount_filesystems() {
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev 2>/dev/null
	# No /dev/console in the archive (built without root): open it now.
	exec </dev/console >/dev/console 2>&1
	mount -t tmpfs tmpfs /run
	mount -t tmpfs tmpfs /tmp
	mkdir -p /run/netns
	if [ -d /sys/kernel/debug ]; then
		mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	fi
	if [ -d /sys/kernel/tracing ]; then
		mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
	fi
	mkdir -p /dev/pts
	mount -t devpts devpts /dev/pts 2>/dev/null
	hostname vkt
	ip link set lo up 2>/dev/null
}

# Value of vkt.NAME= on the kernel command line (last one wins).
param() {
	val=""
	set -f
	for word in $(cat /proc/cmdline); do
		case "$word" in
		"vkt.$1="*) val="${word#*=}" ;;
		esac
	done
	set +f
	echo "$val"
}

# Stop the machine; QEMU exits with ($1 << 1) | 1 through isa-debug-exit.
exit_qemu() {
	sync
	printf "$(printf '\\%03o' "$1")" |
		dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
	log "isa-debug-exit did not stop the machine; powering off"
	poweroff -f
	while :; do sleep 60; done
}

# Run the suite $repeat times with the decoded arguments; echo the verdict.
run_suite() {
	repeat="$1"
	shift
	passed=0
	final=4
	i=1
	while [ "$i" -le "$repeat" ]; do
		if [ "$repeat" -gt 1 ]; then
			echo "# vkt: run $i of $repeat" >"$RESULTS"
		fi
		log "running: vhost-kernel-test run $* ($i/$repeat)"
		vhost-kernel-test run "$@" >"$RESULTS" 2>/dev/console </dev/null
		rc=$?
		log "vhost-kernel-test exited with $rc"
		case "$rc" in
		0) passed=1 ;;
		4) ;;
		*)
			if [ "$rc" -ne 1 ]; then
				echo "# vkt: harness exited with status $rc" >"$RESULTS"
			fi
			final=1
			break
			;;
		esac
		i=$((i + 1))
	done
	if [ "$final" -ne 1 ] && [ "$passed" -eq 1 ]; then
		final=0
	fi
	echo "$final"
}

main() {
	mount_filesystems
	mode="$(param mode)"
	repeat="$(param repeat)"
	args="$(param args)"
	case "$repeat" in
	'' | *[!0-9]*) repeat=1 ;;
	esac
	[ "$repeat" -ge 1 ] || repeat=1
	set --
	if [ -n "$args" ]; then
		decoded="$(printf '%s' "$args" | base64 -d)" || {
			log "vkt.args is not valid base64"
			echo "VKT-EXIT: 1" >"$RESULTS"
			exit_qemu 1
		}
		while IFS= read -r a; do
			set -- "$@" "$a"
		done <<EOF
$decoded
EOF
	fi
	if [ "$mode" = shell ]; then
		log "shell mode: 'exit' or 'poweroff -f' stops the machine"
		setsid cttyhack sh -l
		exit_qemu 0
	fi
	if ! command -v vhost-kernel-test >/dev/null 2>&1; then
		echo "Bail out! vhost-kernel-test missing from the initramfs" >"$RESULTS"
		echo "VKT-EXIT: 1" >"$RESULTS"
		exit_qemu 1
	fi
	code="$(run_suite "$repeat" "$@")"
	echo "VKT-EXIT: $code" >"$RESULTS"
	exit_qemu "$code"
}

main
INIT
	chmod 0755 "$1"
}

# busybox and one symlink per applet in /bin; sbin, usr/bin, usr/sbin
# point at /bin.
install_busybox() {
	local root="$1" applet
	[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: apt-get install busybox-static"
	if readelf -lW "$BUSYBOX" 2>/dev/null | grep -q 'program interpreter'; then
		die "$BUSYBOX is dynamically linked: install busybox-static"
	fi
	mkdir -p "$root/bin" "$root/usr"
	install -m 0755 "$BUSYBOX" "$root/bin/busybox"
	ln -s bin "$root/sbin"
	ln -s ../bin "$root/usr/bin"
	ln -s ../bin "$root/usr/sbin"
	while IFS= read -r applet; do
		case "$applet" in
		busybox | '' | */*) continue ;;
		esac
		ln -sf busybox "$root/bin/$applet"
	done < <("$BUSYBOX" --list)
}

# The harness at /bin/vhost-kernel-test; must be static (or a script).
install_harness() {
	local root="$1" harness="$2"
	[ -f "$harness" ] || die "harness binary $harness not found"
	if [ "$(head -c2 "$harness")" = '#!' ]; then
		warn "$harness is a script, not the static harness binary"
	elif readelf -lW "$harness" 2>/dev/null | grep -q 'program interpreter'; then
		die "$harness is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'"
	fi
	install -m 0755 "$harness" "$root/bin/vhost-kernel-test"
}

make_skeleton() {
	local root="$1"
	mkdir -p "$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/tmp" \
		"$root/var" "$root/etc" "$root/root"
	ln -s ../run "$root/var/run"
	chmod 1777 "$root/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
	printf 'root:x:0:\n' >"$root/etc/group"
	if [ "$(id -u)" -eq 0 ]; then
		mknod -m 0600 "$root/dev/console" c 5 1
		mknod -m 0666 "$root/dev/null" c 1 3
	fi
}

# Sorted newc archive with fixed owners and times, gzip -n.
pack() {
	local root="$1" out="$2" epoch="${SOURCE_DATE_EPOCH:-0}"
	find "$root" -exec touch -h -d "@$epoch" {} +
	(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --quiet --null -o -H newc --reproducible -R 0:0) |
		gzip -n -9 >"$out.tmp"
	mv "$out.tmp" "$out"
}

main() {
	[ $# -eq 2 ] || usage
	local harness="$1" out="$2" root
	root="$(mktemp -d "${TMPDIR:-/tmp}/vkt-initramfs.XXXXXX")"
	# shellcheck disable=SC2064 # expand now: root is local
	trap "rm -rf '$root'" EXIT
	make_skeleton "$root"
	install_busybox "$root"
	install_harness "$root" "$harness"
	write_init "$root/init"
	pack "$root" "$out"
}

main "$@"

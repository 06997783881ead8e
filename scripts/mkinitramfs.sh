#!/bin/bash
# Build the test initramfs.
#
# usage: scripts/mkinitramfs.sh [--extra FILE]... [--extra-lib FILE]...
#                               HARNESS_BINARY OUT.cpio.gz
#
# Contents: /bin/busybox (busybox-static) with a symlink per applet, the
# static harness at /bin/vhost-kernel-test (HARNESS_BINARY "-": none), each
# --extra FILE (a static binary or a script; a dynamic one when libraries
# are given) at /bin/<its name>, each --extra-lib FILE (a shared library of
# a dynamic --extra) at /lib/x86_64-linux-gnu/<its name> (the loader also at
# /lib64/<its name>, where executables look for it), and /init,
# which reads from the kernel command line:
#   vkt.mode=run|exec|shell
#                        run the harness (default); exec: run the command in
#                        vkt.args as it is (program first), its stdout is
#                        the results and its exit status (0, 1, 4; anything
#                        else counts as 1) the verdict; shell: a shell on
#                        ttyS0
#   vkt.args=BASE64      base64 of the harness arguments, one a line; a
#                        first argument that is a harness subcommand (run,
#                        attach, serve, bench, ping, fuzz, help) selects it, else
#                        the arguments go to "vhost-kernel-test run"
# In run and exec mode the program's stdout goes to the results port
# /dev/ttyS1, its stderr to the console (ttyS0), then "VKT-EXIT: <code>" is
# written to
# ttyS1 and the machine stops through QEMU's isa-debug-exit device (port
# 0xf4), so QEMU exits with (code << 1) | 1.
# The archive is deterministic: sorted, owner 0:0, mtime 0 (or
# $SOURCE_DATE_EPOCH), gzip -n.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

BUSYBOX="${VKT_BUSYBOX:-/bin/busybox}"

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

# Harness subcommands that a first argument may select; any other first
# argument (an option such as --test) goes to "run".
SUBCOMMANDS="run attach serve bench ping fuzz help"

is_subcommand() {
	for c in $SUBCOMMANDS; do
		[ "$1" = "$c" ] && return 0
	done
	return 1
}

# Run "vhost-kernel-test SUBCOMMAND ARGS" (the subcommand is the first
# decoded argument when it names one, else "run"); echo the verdict.
run_harness() {
	cmd=run
	if [ $# -gt 0 ] && is_subcommand "$1"; then
		cmd="$1"
		shift
	fi
	log "running: vhost-kernel-test $cmd $*"
	vhost-kernel-test "$cmd" "$@" >"$RESULTS" 2>/dev/console </dev/null
	rc=$?
	log "vhost-kernel-test exited with $rc"
	case "$rc" in
	0 | 1 | 4) echo "$rc" ;;
	*)
		echo "# vkt: harness exited with status $rc" >"$RESULTS"
		echo 1
		;;
	esac
}

# Run the command "$@" once (vkt.mode=exec); echo the verdict.
run_exec() {
	if [ $# -eq 0 ]; then
		echo "Bail out! vkt.mode=exec without a command in vkt.args" >"$RESULTS"
		echo 1
		return
	fi
	log "running: $*"
	"$@" >"$RESULTS" 2>/dev/console </dev/null
	rc=$?
	log "$1 exited with $rc"
	case "$rc" in
	0 | 1 | 4) echo "$rc" ;;
	*)
		echo "# vkt: $1 exited with status $rc" >"$RESULTS"
		echo 1
		;;
	esac
}

main() {
	mount_filesystems
	mode="$(param mode)"
	args="$(param args)"
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
	# The guest's boot time as vmtest reports it.
	log "starting at uptime $(cut -d ' ' -f 1 /proc/uptime) s"
	if [ "$mode" = exec ]; then
		code="$(run_exec "$@")"
		echo "VKT-EXIT: $code" >"$RESULTS"
		exit_qemu "$code"
	fi
	if ! command -v vhost-kernel-test >/dev/null 2>&1; then
		echo "Bail out! vhost-kernel-test missing from the initramfs" >"$RESULTS"
		echo "VKT-EXIT: 1" >"$RESULTS"
		exit_qemu 1
	fi
	code="$(run_harness "$@")"
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

# True when $1 is a script (#!); fails when it is a dynamic executable.
check_static() {
	local f="$1"
	[ -f "$f" ] || die "$f not found"
	[ "$(head -c2 "$f")" = '#!' ] && return 0
	if readelf -lW "$f" 2>/dev/null | grep -q 'program interpreter'; then
		die "$f is dynamically linked: the initramfs has no libraries (link it statically)"
	fi
	return 1
}

# The harness at /bin/vhost-kernel-test; must be static (or a script).
install_harness() {
	local root="$1" harness="$2"
	[ "$harness" != - ] || return 0
	[ -f "$harness" ] || die "harness binary $harness not found"
	if check_static "$harness"; then
		warn "$harness is a script, not the static harness binary"
	fi
	install -m 0755 "$harness" "$root/bin/vhost-kernel-test"
}

# An --extra file at /bin/<name>; $3 = 1: libraries were given, so a
# dynamic executable may go in too.
install_extra() {
	local root="$1" f="$2" libs="${3:-0}"
	if [ "$libs" -eq 1 ]; then
		[ -f "$f" ] || die "$f not found"
	else
		check_static "$f" || true
	fi
	install -m 0755 "$f" "$root/bin/$(basename "$f")"
}

# An --extra-lib file at /lib/x86_64-linux-gnu/<name>; the program
# loader (ld-linux*) also at /lib64/<name>, the path executables name.
install_lib() {
	local root="$1" f="$2" name
	[ -f "$f" ] || die "library $f not found"
	name="$(basename "$f")"
	install -D -m 0755 "$f" "$root/lib/x86_64-linux-gnu/$name"
	case "$name" in
	ld-linux*) install -D -m 0755 "$f" "$root/lib64/$name" ;;
	esac
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
	local extras=() libs=() f
	while [ $# -gt 0 ]; do
		case "$1" in
		--extra) extras+=("${2:?--extra needs a file}"); shift ;;
		--extra-lib) libs+=("${2:?--extra-lib needs a file}"); shift ;;
		-h | --help) usage 2 ;;
		*) break ;;
		esac
		shift
	done
	[ $# -eq 2 ] || usage 2
	local harness="$1" out="$2" root
	root="$(mktemp -d "${TMPDIR:-/tmp}/vkt-initramfs.XXXXXX")"
	# shellcheck disable=SC2064 # expand now: root is local
	trap "rm -rf '$root'" EXIT
	make_skeleton "$root"
	install_busybox "$root"
	install_harness "$root" "$harness"
	for f in "${extras[@]}"; do
		install_extra "$root" "$f" "$(("${#libs[@]}" > 0))"
	done
	for f in "${libs[@]}"; do
		install_lib "$root" "$f"
	done
	write_init "$root/init"
	pack "$root" "$out"
}

main "$@"

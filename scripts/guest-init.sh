#!/bin/sh
# /init of the vhost-kernel-test initramfs (busybox sh), installed by
# scripts/mkinitramfs.sh, whose header says what it reads from the kernel
# command line (vkt.mode, vkt.args) and how it reports (results on
# /dev/ttyS1, "VKT-EXIT: <code>", isa-debug-exit).
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
	read -r cmdline </proc/cmdline
	for word in $cmdline; do
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
	# The format is the byte to write, as an octal escape.
	# shellcheck disable=SC2059
	printf "$(printf '\\%03o' "$1")" |
		dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
	log "isa-debug-exit did not stop the machine; powering off"
	poweroff -f
	while :; do sleep 60; done
}

# Harness subcommands that a first argument may select (VKT_SUBCOMMANDS of
# scripts/lib/common.sh, written here by mkinitramfs.sh); any other first
# argument (an option such as --test) goes to "run".
SUBCOMMANDS="$(cat /etc/vkt-subcommands 2>/dev/null)"

is_subcommand() {
	for c in $SUBCOMMANDS; do
		[ "$1" = "$c" ] && return 0
	done
	return 1
}

# Echo the verdict of program $1 from its exit status $2: 0, 1 and 4 are
# the harness's own (pass, fail, skip); anything else (a crash, a signal)
# is a failure, said on the results port.
verdict_of() {
	log "$1 exited with $2"
	case "$2" in
	0 | 1 | 4) echo "$2" ;;
	*)
		echo "# vkt: $1 exited with status $2" >"$RESULTS"
		echo 1
		;;
	esac
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
	verdict_of vhost-kernel-test "$?"
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
	verdict_of "$1" "$?"
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

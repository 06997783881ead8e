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
# /lib64/<its name>, where executables look for it), and /init
# (scripts/guest-init.sh), which reads from the kernel command line:
#   vkt.mode=run|exec|shell
#                        run the harness (default); exec: run the command in
#                        vkt.args as it is (program first), its stdout is
#                        the results and its exit status (0, 1, 4; anything
#                        else counts as 1) the verdict; shell: a shell on
#                        ttyS0
#   vkt.args=BASE64      base64 of the harness arguments, one a line; a
#                        first argument that is a harness subcommand
#                        (VKT_SUBCOMMANDS in scripts/lib/common.sh, written
#                        to /etc/vkt-subcommands) selects it, else the
#                        arguments go to "vhost-kernel-test run"
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

# /init (scripts/guest-init.sh) and the harness subcommands it knows
# (VKT_SUBCOMMANDS, the list scripts/vmtest uses as well) in
# /etc/vkt-subcommands.
install_init() {
	local root="$1"
	install -m 0755 "$VKT_ROOT/scripts/guest-init.sh" "$root/init"
	printf '%s\n' "$VKT_SUBCOMMANDS" >"$root/etc/vkt-subcommands"
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
	install_init "$root"
	pack "$root" "$out"
}

main "$@"

# shellcheck shell=bash
# Helpers shared by the scripts in scripts/. Source it, do not run it.

# Repository root (the parent of scripts/).
VKT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export VKT_ROOT

# Where the Debian package puts the kernel source.
VKT_TARBALL="${VKT_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"

# Packages the project needs on a Debian 12 machine.
# shellcheck disable=SC2034 # used by setup.sh
VKT_APT_PACKAGES=(qemu-system-x86 linux-source-6.12 busybox-static cpio bc
	bison flex libelf-dev libssl-dev make gcc xz-utils patch python3 perl
	shellcheck rsync iproute2 iputils-ping sparse)

# Harness subcommands that a first harness argument may select, for
# scripts/vmtest and the guest's /init (mkinitramfs.sh writes the list to
# /etc/vkt-subcommands); any other first argument is an option of "run".
VKT_SUBCOMMANDS="run attach serve bench ping fuzz scan-log report help"

# True when $1 is one of VKT_SUBCOMMANDS.
is_harness_subcommand() {
	local c
	for c in $VKT_SUBCOMMANDS; do
		[ "$1" != "$c" ] || return 0
	done
	return 1
}

# Print the calling script's header comment (from line 2 to `set -eu...`)
# as its help, and exit with $1 (default 2).
usage() {
	sed -n '2,/^set -eu/{/^#/s/^# \{0,1\}//p}' "$0" >&2
	exit "${1:-2}"
}

die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

warn() {
	printf 'warning: %s\n' "$*" >&2
}

# Progress line for a long step.
step() {
	printf '==> %s\n' "$*" >&2
}

# Cache root: VKT_CACHE_DIR, else $XDG_CACHE_HOME/vhost-kernel-test, else
# ~/.cache/vhost-kernel-test.
cache_dir() {
	if [ -n "${VKT_CACHE_DIR:-}" ]; then
		printf '%s\n' "$VKT_CACHE_DIR"
	else
		printf '%s/vhost-kernel-test\n' "${XDG_CACHE_HOME:-$HOME/.cache}"
	fi
}

# Number of CPUs to build with.
cpu_count() {
	nproc 2>/dev/null || echo 2
}

# Patch files of kernel-patches/series, in order, one absolute path a line;
# the cover letter (0000-*) and comments are skipped. Prints nothing when
# there is no series file.
series_patches() {
	local dir="$VKT_ROOT/kernel-patches" line
	[ -f "$dir/series" ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		line="${line%%#*}"
		line="$(printf '%s' "$line" | tr -d '[:space:]')"
		[ -n "$line" ] || continue
		case "$line" in
		0000-*) continue ;;
		esac
		[ -f "$dir/$line" ] || die "kernel-patches/series names $line, which does not exist"
		printf '%s\n' "$dir/$line"
	done <"$dir/series"
}

# sha256 of stdin, hex only.
sha256_stdin() {
	sha256sum | cut -d' ' -f1
}

# Seconds since the epoch, with fractions (for timings).
now() {
	date +%s.%N
}

# Elapsed seconds since $1 (from now), one decimal.
elapsed_since() {
	awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}

# True when KVM can really be used: the CPU advertises vmx or svm and
# /dev/kvm can be opened read-write. VKT_ACCEL=tcg|kvm overrides.
kvm_usable() {
	case "${VKT_ACCEL:-}" in
	kvm) return 0 ;;
	tcg) return 1 ;;
	esac
	grep -qE '\b(vmx|svm)\b' /proc/cpuinfo 2>/dev/null || return 1
	[ -c /dev/kvm ] || return 1
	{ : <>/dev/kvm; } 2>/dev/null || return 1
}

# shellcheck shell=bash
# Helpers shared by the scripts in scripts/. Source it, do not run it.

# Repository root (the parent of scripts/).
VKT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export VKT_ROOT

# Where the Debian package puts the kernel source.
VKT_TARBALL="${VKT_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"

# Packages the project needs on a Debian 12 machine.
VKT_APT_PACKAGES=(qemu-system-x86 linux-source-6.12 busybox-static cpio bc
	bison flex libelf-dev libssl-dev make gcc xz-utils patch python3 perl
	shellcheck rsync iproute2 iputils-ping sparse)

# Packages of VKT_APT_PACKAGES that are not installed.
missing_packages() {
	local pkg
	for pkg in "${VKT_APT_PACKAGES[@]}"; do
		if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
			grep -q 'install ok installed'; then
			printf '%s\n' "$pkg"
		fi
	done
}

# Install the missing packages (as root: apt-get update, then install), so
# that the README's two commands need nothing run before them. As another
# user: print the command to run and exit 4, a skip (nothing was tested),
# with that command as its reason, on stdout as KTAP and on stderr.
ensure_packages() {
	local missing line
	if ! command -v dpkg-query >/dev/null 2>&1; then
		warn "no dpkg-query (not Debian?): not checking for ${VKT_APT_PACKAGES[*]}"
		return 0
	fi
	mapfile -t missing < <(missing_packages)
	[ "${#missing[@]}" -gt 0 ] || return 0
	line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		printf '1..0 # SKIP missing Debian packages, run as root: %s\n' "$line"
		printf 'missing Debian packages: %s\nrun as root:\n  %s\n' "${missing[*]}" "$line" >&2
		exit 4
	fi
	step "installing the missing Debian packages: ${missing[*]}"
	apt_install "${missing[@]}"
}

# apt-get update, then install packages $@ (as root), or die.
apt_install() {
	DEBIAN_FRONTEND=noninteractive apt-get update >&2 || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		"$@" >&2 || die "apt-get install $* failed"
}

# Make sure the Rust toolchain has the target and the components
# (clippy, rustfmt) that test-all uses.
ensure_rust_components() {
	if ! command -v cargo >/dev/null 2>&1; then
		warn "cargo not found: install a Rust toolchain (rustup) to build the harness"
		return 0
	fi
	if command -v rustup >/dev/null 2>&1; then
		rustup component list --installed 2>/dev/null | grep -q '^clippy' ||
			rustup component add clippy rustfmt >&2 ||
			warn "could not add clippy/rustfmt"
		rustup target list --installed 2>/dev/null |
			grep -qx x86_64-unknown-linux-gnu ||
			rustup target add x86_64-unknown-linux-gnu >&2 ||
			warn "could not add target x86_64-unknown-linux-gnu"
	fi
}

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

# Seconds from time $1 to time $2 (as `now` prints them), one decimal.
seconds_between() {
	awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'
}

# Elapsed seconds since $1 (from now), one decimal.
elapsed_since() {
	seconds_between "$1" "$(now)"
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

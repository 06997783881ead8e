#!/bin/bash
# The RFC selftest's flow in the VM: selftests/vhost_kernel/rfc_flow.sh
# drives our harness, installed under the RFC program's name
# (vhost_kernel_test), with the same calls as the RFC's shell script, using
# iproute2's ip and iputils' ping (from this machine, with their shared
# libraries, in the initramfs for this test only).
#
# usage: scripts/rfc-flow-test.sh [--kernel BZIMAGE] [--timeout SECS]
#                                 [--log-dir DIR]
#
#   --kernel BZIMAGE   boot this kernel instead of the patched one
#   --timeout SECS     kill the VM after SECS (default 600)
#   --log-dir DIR      keep the console and results logs there
#
# stdout: KTAP from rfc_flow.sh (one point per RFC test, the attach check
# nested); exit status: vmtest's (0 pass, 1 fail, 4 skip, 124 timeout, 255
# panic).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

OPT_KERNEL=""
OPT_TIMEOUT=600
OPT_LOG_DIR=""

parse_args() {
	while [ $# -gt 0 ]; do
		case "$1" in
		--kernel) OPT_KERNEL="${2:?--kernel needs a bzImage}"; shift ;;
		--timeout) OPT_TIMEOUT="${2:?--timeout needs seconds}"; shift ;;
		--log-dir) OPT_LOG_DIR="${2:?--log-dir needs a directory}"; shift ;;
		-h | --help) usage 0 ;;
		*) printf 'unknown argument: %s\n' "$1" >&2; usage 2 ;;
		esac
		shift
	done
}

# Path of the real (iproute2/iputils) program $1; dies when it is missing.
real_tool() {
	local path
	path="$(command -v "$1" || true)"
	[ -n "$path" ] || die "$1 not found: apt-get install $2"
	readlink -f "$path"
}

# The shared libraries of the executables given (ldd), one a line, unique.
shared_libs() {
	ldd "$@" | awk '
		$2 == "=>" && $3 ~ /^\// { print $3 }
		$1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u
}

# The static harness, built as scripts/vmtest builds it (--exec leaves the
# harness out unless --harness names one).
static_harness() {
	local target=x86_64-unknown-linux-gnu
	step "building harness (static)"
	(cd "$VKT_ROOT" &&
		RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
			cargo build --release --target "$target" --bin vhost-kernel-test >&2) ||
		die "cargo build failed"
	printf '%s\n' "${CARGO_TARGET_DIR:-$VKT_ROOT/target}/$target/release/vhost-kernel-test"
}

main() {
	local ip ping harness lib args=()
	parse_args "$@"
	ip="$(real_tool ip iproute2)"
	ping="$(real_tool ping iputils-ping)"
	"$ip" -V | grep -q iproute2 || die "$ip is not iproute2's ip"
	"$ping" -V | grep -q iputils || die "$ping is not iputils' ping"
	harness="$(static_harness)"
	args=(--exec --harness "$harness" --timeout "$OPT_TIMEOUT"
		--extra "$VKT_ROOT/selftests/vhost_kernel/rfc_flow.sh"
		--extra "$ip" --extra "$ping")
	while IFS= read -r lib; do
		args+=(--extra-lib "$lib")
	done < <(shared_libs "$ip" "$ping")
	[ -z "$OPT_KERNEL" ] || args+=(--kernel "$OPT_KERNEL")
	[ -z "$OPT_LOG_DIR" ] || args+=(--log-dir "$OPT_LOG_DIR")
	"$VKT_ROOT/scripts/vmtest" "${args[@]}" -- rfc_flow.sh /bin/vhost-kernel-test
}

main "$@"

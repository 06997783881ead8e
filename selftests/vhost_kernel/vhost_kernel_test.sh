#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Run the vhost kernel-buffer selftest: the vhost-kernel-test harness
# drives /dev/vhost-net-kernel and /dev/vktest and prints KTAP.
# Exit status: 0 pass, 1 fail, 4 skip (kselftest's KSFT_SKIP).
set -eu -o pipefail

readonly KSFT_PASS=0
readonly KSFT_FAIL=1
readonly KSFT_SKIP=4

# The harness next to this script (installed by the Makefile), else PATH.
find_harness() {
	local here
	here="$(dirname "$(readlink -f "$0")")"
	if [ -x "$here/vhost-kernel-test" ]; then
		printf '%s\n' "$here/vhost-kernel-test"
	else
		command -v vhost-kernel-test 2>/dev/null || true
	fi
}

main() {
	local bin rc=0
	bin="$(find_harness)"
	if [ -z "$bin" ]; then
		echo "# SKIP vhost-kernel-test not found" \
			"(build with VKT_SRC=<crate dir> or put it in PATH)"
		exit "$KSFT_SKIP"
	fi
	"$bin" run "$@" || rc=$?
	case "$rc" in
	0) exit "$KSFT_PASS" ;;
	4) exit "$KSFT_SKIP" ;;
	*)
		echo "# vhost-kernel-test exited with status $rc"
		exit "$KSFT_FAIL"
		;;
	esac
}

main "$@"

#!/bin/bash
# All the project's tests, in order; every step runs, the script fails if
# any step failed.
#   1. cargo fmt --check          4. shellcheck on the scripts
#   2. cargo clippy -D warnings   5. checkpatch.pl --strict on the series
#   3. cargo test                 6. scripts/vmtest (the VM suite on the
#                                    patched kernel, normal config)
#   7. the suite's KTAP read back by the kernel's parser (kunit.py parse)
#   8. scripts/vmtest --debug (one pass on the KASAN/lockdep/kmemleak
#      kernel, fault_inject_sweep included)
# Missing Debian packages are installed first (as root; otherwise the
# apt-get line is printed and the script exits 4, a skip).
# Extra arguments go to both scripts/vmtest runs (e.g. --jobs N).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

PASSED=()
FAILED=()

# Run one named step, recording its outcome.
run_step() {
	local name="$1" t0 rc=0
	shift
	t0="$(now)"
	step "$name"
	"$@" || rc=$?
	if [ "$rc" -eq 0 ]; then
		PASSED+=("$name")
		step "$name: ok ($(elapsed_since "$t0")s)"
	else
		FAILED+=("$name")
		step "$name: FAILED with status $rc ($(elapsed_since "$t0")s)"
	fi
}

need_crate() {
	[ -f "$VKT_ROOT/Cargo.toml" ] || { printf 'no Cargo.toml: the harness crate is missing\n' >&2; return 1; }
}

cargo_fmt() { need_crate && (cd "$VKT_ROOT" && cargo fmt --all -- --check); }
cargo_clippy() { need_crate && (cd "$VKT_ROOT" && cargo clippy --all-targets -- -D warnings); }
# As root the tests that need root (#[ignore = "needs root"]) run too.
cargo_test() {
	local extra=()
	[ "$(id -u)" -ne 0 ] || extra=(-- --include-ignored)
	need_crate && (cd "$VKT_ROOT" && cargo test "${extra[@]}")
}

# Every shell script; scripts/*.sh includes the guest's /init
# (scripts/guest-init.sh, busybox sh).
shell_scripts() {
	printf '%s\n' "$VKT_ROOT"/scripts/*.sh "$VKT_ROOT/scripts/vmtest" \
		"$VKT_ROOT"/scripts/lib/*.sh "$VKT_ROOT/.ci/run" \
		"$VKT_ROOT/selftests/vhost_kernel/vhost_kernel_test.sh"
}

run_shellcheck() {
	local files
	mapfile -t files < <(shell_scripts)
	(cd "$VKT_ROOT" && shellcheck -x "${files[@]}")
}

# checkpatch.pl --strict from the extracted 6.12 source on every patch.
run_checkpatch() {
	local src p rc=0 patches
	mapfile -t patches < <(series_patches)
	if [ "${#patches[@]}" -eq 0 ]; then
		warn "no kernel-patches/series: nothing to check"
		return 0
	fi
	src="$("$VKT_ROOT/scripts/build-kernel.sh" --print-source | tail -n 1)"
	for p in "${patches[@]}"; do
		printf -- '-- %s\n' "$(basename "$p")" >&2
		(cd "$src" && perl scripts/checkpatch.pl --strict --no-summary --color=never "$p") >&2 || rc=1
	done
	return "$rc"
}

# scripts/vmtest with args $2..., its KTAP also kept in file $1. The VM
# suite must pass; a skip is only accepted without a series (pristine
# kernel, nothing to test).
vmtest_must_pass() {
	local log="$1" rc=0
	shift
	"$VKT_ROOT/scripts/vmtest" "$@" | tee "$log" || rc="${PIPESTATUS[0]}"
	if [ "$rc" -eq 4 ] && [ -z "$(series_patches)" ]; then
		warn "vmtest skipped on a pristine kernel (no kernel-patches/series): accepted"
		return 0
	fi
	return "$rc"
}

# The normal suite; its KTAP is kept in $KTAP_LOG for the parser check.
run_vmtest() {
	vmtest_must_pass "$KTAP_LOG" "$@"
}

# One pass of the suite on the debug kernel (KASAN, lockdep, kmemleak,
# fault injection), so that those oracles judge every change, not only the
# runs someone remembers to make with --debug.
run_vmtest_debug() {
	vmtest_must_pass /dev/null --debug "$@"
}

# The kernel's own KTAP parser (tools/testing/kunit/kunit.py) must read the
# suite's output without errors and count what the harness counted.
check_ktap() {
	local src parsed totals want got
	[ -s "$KTAP_LOG" ] || { printf 'no KTAP output to parse\n' >&2; return 1; }
	src="$("$VKT_ROOT/scripts/build-kernel.sh" --print-source | tail -n 1)"
	parsed="$(python3 "$src/tools/testing/kunit/kunit.py" parse "$KTAP_LOG" 2>&1)" || {
		printf '%s\n' "$parsed" >&2
		return 1
	}
	if printf '%s\n' "$parsed" | grep -qiE 'error|could not find|crashed'; then
		printf '%s\n' "$parsed" >&2
		return 1
	fi
	totals="$(grep -m1 '^# Totals:' "$KTAP_LOG")" || { printf 'no Totals line in the KTAP\n' >&2; return 1; }
	want="$(printf '%s\n' "$totals" | sed -E 's/.*pass:([0-9]+) fail:([0-9]+).* skip:([0-9]+).*/\1 \2 \3/')"
	got="$(printf '%s\n' "$parsed" | grep -m1 'Testing complete' |
		awk '{ p = 0; f = 0; s = 0
			for (i = 1; i <= NF; i++) {
				if ($i == "passed:") p = $(i + 1) + 0
				if ($i == "failed:") f = $(i + 1) + 0
				if ($i == "skipped:") s = $(i + 1) + 0
			}
			print p, f, s }')"
	printf 'harness pass/fail/skip: %s, kunit parser: %s\n' "$want" "$got" >&2
	[ "$want" = "$got" ]
}

main() {
	local t0
	t0="$(now)"
	ensure_packages
	ensure_rust_components
	KTAP_LOG="$(mktemp)"
	trap 'rm -f "$KTAP_LOG"' EXIT
	run_step "cargo fmt --check" cargo_fmt
	run_step "cargo clippy" cargo_clippy
	run_step "cargo test" cargo_test
	run_step "shellcheck" run_shellcheck
	run_step "checkpatch" run_checkpatch
	run_step "vmtest" run_vmtest "$@"
	run_step "KTAP parses with kunit.py" check_ktap
	run_step "vmtest --debug" run_vmtest_debug "$@"
	step "test-all took $(elapsed_since "$t0")s"
	[ "${#FAILED[@]}" -eq 0 ] || printf 'failed steps: %s\n' "${FAILED[*]}" >&2
	printf 'test-all: %d passed, %d failed\n' "${#PASSED[@]}" "${#FAILED[@]}"
	[ "${#FAILED[@]}" -eq 0 ]
}

main "$@"

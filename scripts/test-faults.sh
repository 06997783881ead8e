#!/bin/bash
# Prove that the tests catch broken kernels: build each deliberately broken
# variant of kernel-patches/faults/ (scripts/vmtest --fault NAME), run
# a few test points on it and check that the run fails the way it should.
#
# usage: scripts/test-faults.sh [--normal-only] [--harness BIN] [--jobs N]
#                               [--log-dir DIR] [NAME...]
#
#   NAME...         only these variants (default: all of the table below)
#   --normal-only   only the variants checked on the normal config
#   --harness BIN   static harness binary (passed to vmtest)
#   --jobs N        make -jN for the kernel builds
#   --log-dir DIR   keep each variant's logs in DIR/NAME/ (default: a temp
#                   dir, removed at the end)
#
# Variants (config, test points, what must show):
#   no-used-signal  normal  teardown_exit   not ok teardown_exit
#   drop-tx         normal  teardown_exit   not ok teardown_exit
#   corrupt-payload normal  teardown_exit   not ok teardown_exit (vhost-net
#                   swaps two data words of flood echoes, checksum valid)
#   flip-byte       normal  teardown_exit   not ok teardown_exit (vhost-net
#                   flips a bit of flood echoes: the stack drops them on
#                   their checksum, Icmp6InCsumErrors counts them)
#   ignore-set-features
#                   normal  teardown_exit with --features offloads: not ok
#                   teardown_exit (virtio-net negotiated the RFC's set)
#   attach-no-device
#                   normal  attach_once     not ok attach_once (the attach
#                   returns 0 without registering the vDPA device)
#   refused-attach-takes-vhost
#                   normal  attach_retry_after_failure: not ok (an attach
#                   refused for want of an IOTLB leaves the vhost device
#                   taken over: fixing its features is EPERM)
#   takeover-race   normal  ioctl_race_attach: not ok (hole 2 of issue 12:
#                   the EPERM-after-take-over check runs apart from the
#                   ioctl, with a sleep between them; a racing
#                   SET_FEATURES/RESET_OWNER changes the IOTLB under the
#                   attached device: traffic dies or the accessors warn)
#   callback-not-ready
#                   normal  eventfd_storm: not ok or the guest dies (hole
#                   3: calls reach virtio_vdpa's callback whatever the
#                   queue's state, with a sleep while info->vq is unset)
#   busypoll-stopped-queue
#                   debug   busyloop_rebind: not ok + KASAN or a page
#                   fault (hole 1: busy polling touches the stopped queue,
#                   whose freed rings stopping no longer forgets, with a
#                   sleep between the two queues' starts)
#   uaf-release     debug   attach_once     not ok attach_once + KASAN
#   missing-unlock  debug   attach_without_kick_call_einval: failed or timed
#                   out + lockdep ("lock held when returning to user space"
#                   or "possible recursive locking")
#   leak-eventfd    debug   attach_once, teardown_exit, then kmemleak_check:
#                   not ok kmemleak_check + kmemleak
#                   ("unreferenced object")
#   null-deref-release
#                   normal  attach_once, then teardown_exit: the second
#                   attached vktest's release passes fput() NULL: the oops
#                   panics the guest at once (fail fast), vmtest names
#                   teardown_exit and decodes the trace to
#                   vktest_release (drivers/vdpa/vktest/vktest.c:N)
#   worker-owner-thread
#                   normal  kernel_worker_no_owner_mm: not ok (the worker
#                   of a kernel device is a vhost_task again: a thread of
#                   the owner, in its address space)
# A variant is caught when vmtest exits non-zero, a test point it names is
# "not ok" or is the one vmtest names as running when the kernel crashed
# (fail fast: a panic, or the guest stopped after a report; for variants
# that may hang the guest a timeout is accepted too), and the kernel
# report, if any is expected, is in the console log, the KTAP or vmtest's
# decoded quote. stdout: KTAP, one test point per variant; exit 0 only when every
# variant was caught. A debug variant takes several minutes under TCG.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

# name|config|vmtest timeout|harness run args (space separated)|test points
# of which one must be "not ok"|report regex (ERE, may be empty)|may hang
# or panic the guest (then a timeout or a panic replaces the "not ok")
VARIANTS=(
	"no-used-signal|normal|300|--test teardown_exit --count 3|teardown_exit||no"
	"drop-tx|normal|300|--test teardown_exit --count 3|teardown_exit||no"
	"corrupt-payload|normal|300|--test teardown_exit --count 3|teardown_exit||no"
	"flip-byte|normal|300|--test teardown_exit --count 3|teardown_exit||no"
	"ignore-set-features|normal|300|--features offloads --test teardown_exit --count 3|teardown_exit||no"
	"attach-no-device|normal|300|--test attach_once|attach_once||no"
	"refused-attach-takes-vhost|normal|300|--test attach_retry_after_failure|attach_retry_after_failure||no"
	"takeover-race|normal|900|--test ioctl_race_attach|ioctl_race_attach||yes"
	"callback-not-ready|normal|600|--test eventfd_storm|eventfd_storm|Oops|KASAN|BUG:|yes"
	"busypoll-stopped-queue|debug|420|--test busyloop_rebind|busyloop_rebind|KASAN|unable to handle page fault|yes"
	"uaf-release|debug|900|--test attach_once|attach_once|KASAN|no"
	"missing-unlock|debug|240|--test attach_without_kick_call_einval|attach_without_kick_call_einval|lock held when returning to user space|possible recursive locking|yes"
	"leak-eventfd|debug|900|--test attach_once --test teardown_exit --count 3|kmemleak_check|unreferenced object|no"
	"null-deref-release|normal|300|--test attach_once --test teardown_exit --count 1|teardown_exit|vktest_release [(]drivers/vdpa/vktest/vktest[.]c:[0-9]+[)]|no"
	"worker-owner-thread|normal|300|--test kernel_worker_no_owner_mm|kernel_worker_no_owner_mm||no"
)

OPT_NORMAL_ONLY=0
OPT_HARNESS=""
OPT_JOBS=""
OPT_LOG_DIR=""
SELECTED=()
LOG_ROOT=""
CAUGHT=0
MISSED=0

parse_args() {
	while [ $# -gt 0 ]; do
		case "$1" in
		--normal-only) OPT_NORMAL_ONLY=1 ;;
		--harness) OPT_HARNESS="${2:?--harness needs a binary}"; shift ;;
		--jobs | -j) OPT_JOBS="${2:?--jobs needs a number}"; shift ;;
		--log-dir) OPT_LOG_DIR="${2:?--log-dir needs a directory}"; shift ;;
		-h | --help) usage 0 ;;
		-*) printf 'unknown argument: %s\n' "$1" >&2; usage 2 ;;
		*) SELECTED+=("$1") ;;
		esac
		shift
	done
}

# Field $2 (1-based) of variant line $1; the report regex may contain "|",
# so fields are counted from both ends.
field() {
	local line="$1" n="$2" name cfg tmo args points rest
	IFS='|' read -r name cfg tmo args points rest <<<"$line"
	case "$n" in
	1) printf '%s\n' "$name" ;;
	2) printf '%s\n' "$cfg" ;;
	3) printf '%s\n' "$tmo" ;;
	4) printf '%s\n' "$args" ;;
	5) printf '%s\n' "$points" ;;
	6) printf '%s\n' "${rest%|*}" ;;
	7) printf '%s\n' "${rest##*|}" ;;
	esac
}

# The variant lines to run, in table order.
selected_variants() {
	local v name s found
	for s in "${SELECTED[@]}"; do
		found=0
		for v in "${VARIANTS[@]}"; do
			[ "$(field "$v" 1)" = "$s" ] && found=1
		done
		[ "$found" -eq 1 ] || die "unknown variant $s (known: $(for v in "${VARIANTS[@]}"; do field "$v" 1; done | tr '\n' ' '))"
	done
	for v in "${VARIANTS[@]}"; do
		name="$(field "$v" 1)"
		[ -f "$VKT_ROOT/kernel-patches/faults/$name.patch" ] ||
			die "kernel-patches/faults/$name.patch missing"
		if [ "${#SELECTED[@]}" -gt 0 ] && ! printf '%s\n' "${SELECTED[@]}" | grep -qxF "$name"; then
			continue
		fi
		[ "$OPT_NORMAL_ONLY" -eq 0 ] || [ "$(field "$v" 2)" = normal ] || continue
		printf '%s\n' "$v"
	done
}

# Run vmtest for variant line $1 with logs in $2; prints its exit status.
run_variant_vm() {
	local v="$1" logs="$2" args=() run_args=() rc=0
	args=(--fault "$(field "$v" 1)" --timeout "$(field "$v" 3)" --log-dir "$logs")
	[ "$(field "$v" 2)" = normal ] || args+=(--debug)
	[ -z "$OPT_HARNESS" ] || args+=(--harness "$OPT_HARNESS")
	[ -z "$OPT_JOBS" ] || args+=(--jobs "$OPT_JOBS")
	read -r -a run_args <<<"$(field "$v" 4)"
	"$VKT_ROOT/scripts/vmtest" "${args[@]}" -- "${run_args[@]}" \
		>"$logs/vmtest.out" 2>"$logs/vmtest.err" </dev/null || rc=$?
	printf '%s\n' "$rc"
}


# Print the first line of files $2... matching ERE $1 as "# report: ...";
# fails when none does (missing files count as empty).
first_match() {
	local regex="$1" f
	shift
	for f in "$@"; do
		[ -f "$f" ] || continue
		awk -v re="$regex" '$0 ~ re { sub(/\r$/, ""); print "# report: " $0; found = 1; exit }
			END { exit !found }' "$f" && return 0
	done
	return 1
}

# The one of test points $2 that vmtest named as running when the kernel
# broke (a panic, or the guest stopped after a report), from $1/vmtest.err.
crashed_point() {
	local logs="$1" points="$2" p
	for p in $points; do
		if grep -qE "^vmtest: .* during test point $p: " "$logs/vmtest.err" 2>/dev/null; then
			printf '%s\n' "$p"
			return 0
		fi
	done
}

# Check the outcome of variant $1 (logs in $2, vmtest status $3); prints
# "#" diagnostics, returns 0 when the variant was caught.
judge_variant() {
	local v="$1" logs="$2" rc="$3" points regex hang p named="" ok=0
	points="$(field "$v" 5)"
	regex="$(field "$v" 6)"
	hang="$(field "$v" 7)"
	if [ "$rc" -eq 0 ]; then
		printf '# vmtest exited 0: the fault went unnoticed\n'
		ok=1
	else
		printf '# vmtest exited %s\n' "$rc"
	fi
	for p in $points; do
		if grep -qE "^not ok [0-9]+ $p( |$)" "$logs/vmtest.out" 2>/dev/null; then
			named="$p"
			break
		fi
	done
	if [ -n "$named" ]; then
		printf '# not ok %s, as expected\n' "$named"
	else
		named="$(crashed_point "$logs" "$points")"
		[ -z "$named" ] || printf '# vmtest: the kernel broke during %s, as expected\n' "$named"
	fi
	if [ -n "$named" ]; then
		: # caught, by name
	elif [ "$rc" -eq 124 ] && [ "$hang" = yes ]; then
		printf '# the guest hung (timeout), accepted for this variant\n'
	elif [ "$rc" -eq 255 ] && [ "$hang" = yes ]; then
		printf '# the guest panicked, accepted for this variant\n'
	else
		printf '# none of %s is "not ok"\n' "$points"
		ok=1
	fi
	if [ -n "$regex" ]; then
		if ! first_match "$regex" "$logs/console.log" "$logs/vmtest.out" "$logs/vmtest.err"; then
			printf '# no kernel report matching /%s/ in the console log or the KTAP\n' "$regex"
			ok=1
		fi
	fi
	return "$ok"
}

# One variant: run, judge, print its KTAP line.
check_variant() {
	local n="$1" v="$2" name logs rc t0 out
	name="$(field "$v" 1)"
	logs="$LOG_ROOT/$name"
	mkdir -p "$logs"
	t0="$(now)"
	step "fault $name ($(field "$v" 2) config, vmtest -- $(field "$v" 4))"
	rc="$(run_variant_vm "$v" "$logs")"
	if out="$(judge_variant "$v" "$logs" "$rc")"; then
		printf '%s\n# %s: %ss\nok %d %s\n' "$out" "$name" "$(elapsed_since "$t0")" "$n" "$name"
		CAUGHT=$((CAUGHT + 1))
	else
		printf '%s\n# %s: %ss, logs in %s\nnot ok %d %s\n' "$out" "$name" \
			"$(elapsed_since "$t0")" "$logs" "$n" "$name"
		tail -n 20 "$logs/vmtest.err" >&2 || true
		MISSED=$((MISSED + 1))
	fi
	step "fault $name: done in $(elapsed_since "$t0")s"
}

make_log_root() {
	if [ -n "$OPT_LOG_DIR" ]; then
		LOG_ROOT="$OPT_LOG_DIR"
		mkdir -p "$LOG_ROOT"
	else
		LOG_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/test-faults.XXXXXX")"
		# shellcheck disable=SC2064 # expand now
		trap "rm -rf '$LOG_ROOT'" EXIT
	fi
}

main() {
	local variants n=0 v
	parse_args "$@"
	mapfile -t variants < <(selected_variants)
	[ "${#variants[@]}" -gt 0 ] || die "no variant selected"
	make_log_root
	printf 'KTAP version 1\n1..%d\n' "${#variants[@]}"
	for v in "${variants[@]}"; do
		n=$((n + 1))
		check_variant "$n" "$v"
	done
	printf '# test-faults: %d caught, %d missed\n' "$CAUGHT" "$MISSED"
	[ "$MISSED" -eq 0 ]
}

main "$@"

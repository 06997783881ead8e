#!/bin/bash
# Regression bar for user-memory vhost: the kernel's own
# tools/virtio/vhost_net_test (a user-space virtio-net driver on
# /dev/vhost-net with a TAP backend) in the VM, once per variant.
#
# usage: scripts/vhost-net-test.sh [--kernel BZIMAGE] [--debug] [--jobs N]
#                                  [--variant-timeout SECS] [--log-dir DIR]
#                                  [VARIANT...]
#
#   --kernel BZIMAGE        boot this kernel (any 6.12 kernel with the options
#                           of selftests/vhost_kernel/config that it has,
#                           e.g. an unpatched one) instead of the patched one
#   --debug                 the patched kernel's debug flavour
#   --jobs N                make -jN for the kernel build
#   --variant-timeout SECS  limit of each variant in the guest (default 600)
#   --log-dir DIR           keep the console and results logs there
#   VARIANT...              default no-indirect no-event-idx
#                           delayed-interrupt (the default set), or
#                           no-virtio-1; "default" is vhost_net_test without
#                           options, the others are its --VARIANT option.
#                           no-virtio-1 is left out of the default set: it
#                           hangs on the unpatched 6.12 kernel as well, so it
#                           cannot tell anything about the series.
#
# vhost_net_test is built statically from the extracted 6.12 source that
# scripts/build-kernel.sh uses (series applied), in a scratch copy in the
# cache (headers_install, then tools/virtio with stub headers for what the
# 6.12 tools/virtio tree lacks), and cached by source and script. stdout:
# KTAP, "ok N vhost_net_test <variant>" per variant; the exit status is
# vmtest's (0 every variant passed, 1 one failed, 124 timeout, 255 panic).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

ALL_VARIANTS=(default no-indirect no-event-idx no-virtio-1 delayed-interrupt)
DEFAULT_VARIANTS=(default no-indirect no-event-idx delayed-interrupt)
OPT_KERNEL=""
OPT_DEBUG=0
OPT_JOBS=""
OPT_VARIANT_TIMEOUT=600
OPT_LOG_DIR=""
VARIANTS=()
TMP=""

need_number() {
	case "$2" in
	'' | *[!0-9]*) die "$1 needs a number, got '$2'" ;;
	esac
}

parse_args() {
	while [ $# -gt 0 ]; do
		case "$1" in
		--kernel) OPT_KERNEL="${2:?--kernel needs a bzImage}"; shift ;;
		--debug) OPT_DEBUG=1 ;;
		--jobs | -j) need_number "$1" "${2:-}"; OPT_JOBS="$2"; shift ;;
		--variant-timeout) need_number "$1" "${2:-}"; OPT_VARIANT_TIMEOUT="$2"; shift ;;
		--log-dir) OPT_LOG_DIR="${2:?--log-dir needs a directory}"; shift ;;
		-h | --help) usage 0 ;;
		-*) printf 'unknown argument: %s\n' "$1" >&2; usage 2 ;;
		*) check_variant "$1"; VARIANTS+=("$1") ;;
		esac
		shift
	done
	[ "${#VARIANTS[@]}" -gt 0 ] || VARIANTS=("${DEFAULT_VARIANTS[@]}")
	if [ -n "$OPT_KERNEL" ]; then
		[ -f "$OPT_KERNEL" ] || die "--kernel $OPT_KERNEL: no such file"
		[ "$OPT_DEBUG" -eq 0 ] || die "--debug builds a kernel: not with --kernel"
	fi
}

check_variant() {
	local v
	for v in "${ALL_VARIANTS[@]}"; do
		[ "$1" = "$v" ] && return 0
	done
	die "unknown variant '$1' (known: ${ALL_VARIANTS[*]})"
}

# Copy of the parts of source $1 that headers_install and tools/virtio need
# into $2 (the rest of drivers/ and the other architectures are left out).
copy_source() {
	local src="$1" dst="$2"
	step "copying the source to $dst"
	mkdir -p "$dst"
	rsync -a --delete \
		--exclude=/.git --exclude=/Documentation \
		--include=/drivers/ --include='/drivers/virtio/***' \
		--include='/drivers/vhost/***' --exclude='/drivers/*' \
		--include=/arch/ --include='/arch/x86/***' --exclude='/arch/*' \
		--exclude=/sound --exclude=/samples \
		"$src/" "$dst/"
}

# Stub headers for what the 6.12 tools/virtio tree lacks, into $1.
write_stubs() {
	local dir="$1"
	mkdir -p "$dir/linux"
	cat >"$dir/linux/compiler-context-analysis.h" <<'EOF'
/* Stubs for building tools/virtio (vhost-kernel-test, generated). */
#ifndef VKT_STUB_COMPILER_CONTEXT_ANALYSIS_H
#define VKT_STUB_COMPILER_CONTEXT_ANALYSIS_H
#define __must_hold(x)
#define __acquires(x)
#define __cond_acquires(x)
#define __releases(x)
#define __acquire(x) (void)0
#define __release(x) (void)0
#define __cond_lock(x, c) (c)
#endif
EOF
	cat >"$dir/moddesc.h" <<'EOF'
/* Stubs for building tools/virtio (vhost-kernel-test, generated). */
#ifndef VKT_STUB_MODDESC_H
#define VKT_STUB_MODDESC_H
#define MODULE_DESCRIPTION(x)
#define data_race(expr) (expr)
#endif
EOF
}

# Build vhost_net_test statically in scratch tree $1; log in $2.
compile_tool() {
	local tree="$1" log="$2" stubs="$1/vkt-stubs" cflags
	write_stubs "$stubs"
	step "make headers_install (log: $log)"
	make -C "$tree" ARCH=x86_64 INSTALL_HDR_PATH=usr headers_install >"$log" 2>&1 ||
		{ tail -n 30 "$log" >&2; die "headers_install failed (log: $log)"; }
	cflags="-g -O2 -Wno-maybe-uninitialized -idirafter $stubs -I. -I../include/"
	cflags="$cflags -I ../../usr/include/ -Wno-pointer-sign -fno-strict-overflow"
	cflags="$cflags -fno-strict-aliasing -fno-common -MMD -U_FORTIFY_SOURCE"
	cflags="$cflags -include ../../include/linux/kconfig.h -include $stubs/moddesc.h -pthread"
	step "building tools/virtio/vhost_net_test (static)"
	make -C "$tree/tools/virtio" clean >>"$log" 2>&1 || true
	make -C "$tree/tools/virtio" CFLAGS="$cflags" LDFLAGS="-pthread -static" \
		vhost_net_test >>"$log" 2>&1 ||
		{ grep -E 'error' "$log" | head -n 20 >&2; tail -n 20 "$log" >&2; die "vhost_net_test build failed (log: $log)"; }
	if readelf -lW "$tree/tools/virtio/vhost_net_test" | grep -q 'program interpreter'; then
		die "vhost_net_test came out dynamically linked"
	fi
}

# Path of the static vhost_net_test for the current source (built once).
get_tool() {
	local src id key dir t0
	command -v rsync >/dev/null 2>&1 || die "rsync not found: run scripts/setup.sh"
	src="$("$VKT_ROOT/scripts/build-kernel.sh" --print-source | tail -n 1)"
	id="$(basename "$(dirname "$src")")"
	key="$({ printf 'vkt-vhost-net-test-v1\n%s\n' "$id"; cat "$0"; } | sha256_stdin)"
	dir="$(cache_dir)/vhost-net-test"
	if [ -x "$dir/$key/vhost_net_test" ]; then
		step "vhost_net_test (cached: $dir/$key/vhost_net_test)"
		printf '%s\n' "$dir/$key/vhost_net_test"
		return 0
	fi
	t0="$(now)"
	mkdir -p "$dir"
	exec 8>"$dir/lock"
	flock 8
	copy_source "$src" "$dir/src"
	compile_tool "$dir/src" "$dir/build.log"
	mkdir -p "$dir/$key"
	cp "$dir/src/tools/virtio/vhost_net_test" "$dir/$key/vhost_net_test"
	step "vhost_net_test built in $(elapsed_since "$t0")s"
	printf '%s\n' "$dir/$key/vhost_net_test"
}

# The guest-side runner: runs vhost_net_test per variant, prints KTAP.
write_runner() {
	cat >"$1" <<'EOF'
#!/bin/sh
# vhost-net-test-ktap TIMEOUT VARIANT... (in the guest; busybox sh)
limit="$1"
shift
echo "KTAP version 1"
echo "1..$#"
i=0
failed=0
for v in "$@"; do
	i=$((i + 1))
	if [ "$v" = default ]; then
		flag=""
		name=default
	else
		flag="--$v"
		name="--$v"
	fi
	t0="$(date +%s)"
	echo "vhost-net-test: vhost_net_test $flag" >/dev/console
	# shellcheck disable=SC2086 # no flag: no argument
	timeout "$limit" /bin/vhost_net_test $flag >/tmp/vnt.out 2>&1
	rc=$?
	sed 's/^/# /' /tmp/vnt.out
	echo "# vhost_net_test $name: exit status $rc, $(($(date +%s) - t0))s"
	if [ "$rc" -eq 0 ]; then
		echo "ok $i vhost_net_test $name"
	else
		echo "not ok $i vhost_net_test $name"
		failed=1
	fi
done
exit "$failed"
EOF
	chmod 0755 "$1"
}

# Run the variants in the VM; returns vmtest's status.
run_vm() {
	local tool="$1" runner="$2" args=() timeout
	timeout=$((OPT_VARIANT_TIMEOUT * ${#VARIANTS[@]} + 300))
	args=(--exec --extra "$tool" --extra "$runner" --timeout "$timeout")
	[ -z "$OPT_KERNEL" ] || args+=(--kernel "$OPT_KERNEL")
	[ "$OPT_DEBUG" -eq 0 ] || args+=(--debug)
	[ -z "$OPT_JOBS" ] || args+=(--jobs "$OPT_JOBS")
	[ -z "$OPT_LOG_DIR" ] || args+=(--log-dir "$OPT_LOG_DIR")
	"$VKT_ROOT/scripts/vmtest" "${args[@]}" -- \
		vhost-net-test-ktap "$OPT_VARIANT_TIMEOUT" "${VARIANTS[@]}"
}

main() {
	local tool
	parse_args "$@"
	TMP="$(mktemp -d "${TMPDIR:-/tmp}/vhost-net-test.XXXXXX")"
	# shellcheck disable=SC2064 # expand now
	trap "rm -rf '$TMP'" EXIT
	tool="$(get_tool)"
	write_runner "$TMP/vhost-net-test-ktap"
	run_vm "$tool" "$TMP/vhost-net-test-ktap"
}

main "$@"

#!/bin/bash
# Check the kernel series the way a maintainer would before taking it.
#
# usage: scripts/check-series.sh [--checkpatch-only] [--jobs N]
#
#   1. scripts/checkpatch.pl --strict on every patch: 0 errors, 0 warnings.
#   2. Bisectability: on a pristine linux-source-6.12 tree configured with
#      tinyconfig + scripts/lib/vm.config + selftests/vhost_kernel/config,
#      apply the patches one by
#      one and build bzImage after each (incrementally, in one build dir).
#   3. W=1 builds of drivers/vhost and drivers/vdpa on the pristine and on
#      the fully patched tree: the patched tree may not add a warning.
#   4. sparse (make C=2) on the same directories, compared the same way
#      (without line numbers, which the series shifts): kernel addresses
#      must not hide in __user pointers unnoticed.
#
# The pristine bzImage is kept as check-series/bzImage-pristine in the cache.
#
# Work happens in the cache (see scripts/lib/common.sh), never in the repo.
# Exit status 0 when every check holds, 1 otherwise, naming what failed.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

OPT_CHECKPATCH_ONLY=0
OPT_JOBS="$(cpu_count)"
WORK=""

parse_args() {
	while [ $# -gt 0 ]; do
		case "$1" in
		--checkpatch-only) OPT_CHECKPATCH_ONLY=1 ;;
		--jobs)
			[ $# -ge 2 ] || die "--jobs needs a number"
			OPT_JOBS="$2"
			shift
			;;
		-h | --help) usage 0 ;;
		*) die "unknown option: $1 (see --help)" ;;
		esac
		shift
	done
}

# A pristine source tree of its own, so the build dirs stay incremental.
prepare_source() {
	local src="$1"
	[ -f "$VKT_TARBALL" ] || die "$VKT_TARBALL missing: run scripts/setup.sh (package linux-source-6.12)"
	rm -rf "$src"
	mkdir -p "$src"
	step "extracting $(basename "$VKT_TARBALL")"
	tar -xf "$VKT_TARBALL" -C "$src" --strip-components=1
}

# checkpatch's SPDX check imports python's ply and git: Debian's python3
# has them (python3-ply, python3-git), a pyenv python earlier in PATH may not.
run_checkpatch() {
	local src="$1" patch out failed=0
	for patch in $(series_patches); do
		out="$(PATH="/usr/bin:$PATH" "$src/scripts/checkpatch.pl" --strict -q \
			"$patch" 2>&1)" || true
		if printf '%s\n' "$out" | grep -qE '^(ERROR|WARNING):'; then
			printf '%s\n' "$out" >&2
			printf 'not ok checkpatch %s\n' "$(basename "$patch")"
			failed=1
		else
			printf 'ok checkpatch %s\n' "$(basename "$patch")"
		fi
	done
	return "$failed"
}

configure_build() {
	local src="$1" out="$2"
	rm -rf "$out"
	mkdir -p "$out"
	make -s -C "$src" O="$out" ARCH=x86_64 tinyconfig >/dev/null
	"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" \
		"$VKT_ROOT/scripts/lib/vm.config" \
		"$VKT_ROOT/selftests/vhost_kernel/config" >/dev/null
	make -s -C "$src" O="$out" ARCH=x86_64 olddefconfig >/dev/null
}

build_image() {
	local src="$1" out="$2" log="$3"
	make -C "$src" O="$out" ARCH=x86_64 -j"$OPT_JOBS" bzImage >"$log" 2>&1
}

# Warnings of a W=1 build of the two driver directories, without the
# build-dir prefix, so that two trees can be compared line by line.
w1_warnings() {
	local src="$1" out="$2"
	make -C "$src" O="$out" ARCH=x86_64 -j"$OPT_JOBS" W=1 \
		drivers/vhost/ drivers/vdpa/ 2>&1 >/dev/null |
		grep -E 'warning:' | sed -e "s|$src/||g" | sort -u || true
}

# sparse's warnings on the two driver directories (every file checked,
# C=2), without line and column numbers; one line per warning, repeats
# kept, so that the patched tree's list can be compared as a multiset.
sparse_warnings() {
	local src="$1" out="$2"
	make -C "$src" O="$out" ARCH=x86_64 -j"$OPT_JOBS" C=2 \
		drivers/vhost/ drivers/vdpa/ 2>&1 >/dev/null |
		grep -E 'warning:|error:' | sed -e "s|$src/||g" \
		-E -e 's/:[0-9]+:[0-9]+:/:/' | sort || true
}

# Report what the patched tree adds to a warning list; 1 if anything.
compare_warnings() {
	local what="$1" before="$2" after="$3" added
	added="$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed '/^$/d')"
	if [ -n "$added" ]; then
		printf '%s\n' "$added" >&2
		printf 'not ok %s adds warnings\n' "$what"
		return 1
	fi
	printf 'ok %s adds no warning (%s before, %s after)\n' "$what" \
		"$(printf '%s' "$before" | grep -c . || true)" \
		"$(printf '%s' "$after" | grep -c . || true)"
}

main() {
	local src out base_warnings patched_warnings base_sparse patch n=0 failed=0
	parse_args "$@"
	[ -n "$(series_patches)" ] || die "kernel-patches/series lists no patch"

	WORK="$(cache_dir)/check-series"
	src="$WORK/src"
	out="$WORK/build"
	mkdir -p "$WORK"
	prepare_source "$src"

	step "checkpatch --strict"
	run_checkpatch "$src" || failed=1
	if [ "$OPT_CHECKPATCH_ONLY" = 1 ]; then
		return "$failed"
	fi

	step "configuring and building the pristine tree (log: $WORK/build-0.log)"
	configure_build "$src" "$out"
	build_image "$src" "$out" "$WORK/build-0.log" || die "pristine tree does not build, see $WORK/build-0.log"
	# An unpatched kernel with the same config, for comparisons
	# (scripts/vmtest --kernel: the suite must skip on it).
	cp "$out/arch/x86/boot/bzImage" "$WORK/bzImage-pristine"
	base_warnings="$(w1_warnings "$src" "$out")"
	base_sparse="$(sparse_warnings "$src" "$out")"

	for patch in $(series_patches); do
		n=$((n + 1))
		patch -d "$src" -p1 --forward --quiet <"$patch" >/dev/null ||
			die "$(basename "$patch") does not apply"
		# New Kconfig options of this patch take their fragment value.
		"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" \
			"$VKT_ROOT/scripts/lib/vm.config" \
			"$VKT_ROOT/selftests/vhost_kernel/config" >/dev/null
		make -s -C "$src" O="$out" ARCH=x86_64 olddefconfig >/dev/null
		step "building after $(basename "$patch") (log: $WORK/build-$n.log)"
		if build_image "$src" "$out" "$WORK/build-$n.log"; then
			printf 'ok build after %s\n' "$(basename "$patch")"
		else
			tail -20 "$WORK/build-$n.log" >&2
			printf 'not ok build after %s\n' "$(basename "$patch")"
			failed=1
		fi
	done

	step "W=1 in drivers/vhost and drivers/vdpa, pristine vs patched"
	patched_warnings="$(w1_warnings "$src" "$out")"
	compare_warnings W=1 "$base_warnings" "$patched_warnings" || failed=1
	step "sparse in drivers/vhost and drivers/vdpa, pristine vs patched"
	compare_warnings sparse "$base_sparse" "$(sparse_warnings "$src" "$out")" || failed=1
	return "$failed"
}

main "$@"

#!/bin/bash
# Build a bzImage for the VM tests.
#
# usage: scripts/build-kernel.sh [--tree DIR] [--debug | --profile] [--jobs N]
#                                [--no-patches] [--fault NAME] [--print-source]
#
# Source: /usr/src/linux-source-6.12.tar.xz (Debian's linux-source-6.12),
# extracted into the cache, or --tree DIR (any 6.12 tree, built out of tree
# with O=). The series of kernel-patches/ is applied in the order of
# kernel-patches/series unless it is already applied (or --no-patches).
# Configuration: tinyconfig + scripts/lib/vm.config (what the VM needs) +
# selftests/vhost_kernel/config (what the test needs) (+ config.debug
# with --debug, or config.profile with --profile: the normal kernel plus
# /proc/profile and schedstats for `bench --profile`) + olddefconfig,
# checked option by option.
# --fault NAME applies kernel-patches/faults/NAME.patch (a deliberately
# broken variant) after the series, in the same build dir as the build
# without it (switching is incremental); the fault is reverted again when the
# build ends, failed or not, so the source holds exactly the series between
# builds. Only with the extracted tarball source (not --tree/--no-patches).
#
# Cache: $VKT_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/vhost-kernel-test.
#   work/<source-id>/src          extracted tarball, series applied
#   work/<source-id>/applied/     copies of the patches applied to src
#   work/<source-id>/build-<flavour>/   O= build dir (kept: incremental)
#   kernels/<key>/bzImage         result for one key = sha256(source id,
#                                 flavour, patches, fragments)
#   kernels/<key>/vmlinux         its vmlinux (decoding stack traces)
#   kernels/<key>/source          the source tree it was built from
#   steps-<flavour>               kbuild steps of the last cold build (the
#                                 total of the progress line)
# The bzImage path is the LAST line on stdout; everything else is stderr.
# --print-source only extracts the tarball source and prints its path.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

ARCH_MAKE=(ARCH=x86_64)
OPT_TREE=""
OPT_DEBUG=0
OPT_PROFILE=0
OPT_JOBS=""
OPT_NO_PATCHES=0
OPT_PRINT_SOURCE=0
OPT_FAULT=""
FAULT_WORK=""

parse_args() {
	while [ $# -gt 0 ]; do
		case "$1" in
		--tree) OPT_TREE="${2:?--tree needs a directory}"; shift ;;
		--debug) OPT_DEBUG=1 ;;
		--profile) OPT_PROFILE=1 ;;
		--jobs | -j) OPT_JOBS="${2:?--jobs needs a number}"; shift ;;
		--no-patches) OPT_NO_PATCHES=1 ;;
		--print-source) OPT_PRINT_SOURCE=1 ;;
		--fault) OPT_FAULT="${2:?--fault needs a name}"; shift ;;
		-h | --help) usage 0 ;;
		*) printf 'unknown argument: %s\n' "$1" >&2; usage 2 ;;
		esac
		shift
	done
	[ -n "$OPT_JOBS" ] || OPT_JOBS="$(cpu_count)"
	case "$OPT_JOBS" in
	'' | *[!0-9]*) die "--jobs needs a number, got '$OPT_JOBS'" ;;
	esac
	[ -z "$OPT_FAULT" ] || check_fault_args
	if [ "$OPT_DEBUG" -eq 1 ] && [ "$OPT_PROFILE" -eq 1 ]; then
		die "--debug and --profile exclude each other (KASAN would be what the profile shows)"
	fi
}

# Fault variants: kernel-patches/faults/NAME.patch.
fault_names() {
	local f
	for f in "$VKT_ROOT"/kernel-patches/faults/*.patch; do
		[ -f "$f" ] && basename "$f" .patch
	done
	return 0
}

fault_patch() {
	printf '%s/kernel-patches/faults/%s.patch\n' "$VKT_ROOT" "$OPT_FAULT"
}

check_fault_args() {
	case "$OPT_FAULT" in
	*/* | .*) die "--fault takes a name (one of: $(fault_names | tr '\n' ' '))" ;;
	esac
	[ -f "$(fault_patch)" ] ||
		die "no fault variant '$OPT_FAULT' (kernel-patches/faults/ has: $(fault_names | tr '\n' ' '))"
	[ -z "$OPT_TREE" ] || die "--fault works on the extracted tarball source only, not with --tree"
	[ "$OPT_NO_PATCHES" -eq 0 ] || die "--fault needs the series (not --no-patches)"
}

flavour() {
	if [ "$OPT_DEBUG" -eq 1 ]; then
		echo debug
	elif [ "$OPT_PROFILE" -eq 1 ]; then
		echo profile
	else
		echo normal
	fi
}

# Config fragments to merge, in order.
fragments() {
	printf '%s\n' "$VKT_ROOT/scripts/lib/vm.config" "$VKT_ROOT/selftests/vhost_kernel/config"
	if [ "$OPT_DEBUG" -eq 1 ]; then
		printf '%s\n' "$VKT_ROOT/selftests/vhost_kernel/config.debug"
	fi
	if [ "$OPT_PROFILE" -eq 1 ]; then
		printf '%s\n' "$VKT_ROOT/selftests/vhost_kernel/config.profile"
	fi
}

# Make sure the tarball is there (installing linux-source-6.12 if root).
ensure_tarball() {
	[ -f "$VKT_TARBALL" ] && return 0
	[ "$(id -u)" -eq 0 ] ||
		die "$VKT_TARBALL missing; run: apt-get install linux-source-6.12"
	step "installing linux-source-6.12"
	apt_install linux-source-6.12
	[ -f "$VKT_TARBALL" ] || die "$VKT_TARBALL still missing"
}

# Identity of the tarball: its sha256, remembered by size+mtime.
tarball_id() {
	local memo stamp
	memo="$(cache_dir)/tarball.sha256"
	stamp="$(stat -c '%n %s %Y' "$VKT_TARBALL")"
	if [ -f "$memo" ] && [ "$(sed -n 1p "$memo")" = "$stamp" ]; then
		sed -n 2p "$memo"
		return 0
	fi
	mkdir -p "$(dirname "$memo")"
	local sum
	sum="$(sha256_stdin <"$VKT_TARBALL")"
	printf '%s\n%s\n' "$stamp" "$sum" >"$memo"
	printf '%s\n' "$sum"
}

# Extract the tarball into $1/src unless it is there already.
extract_tarball() {
	local work="$1" tmp top
	[ -f "$work/src/Makefile" ] && return 0
	step "extracting $VKT_TARBALL into $work/src"
	rm -rf "$work/src" "$work/applied" "$work/extract.tmp"
	mkdir -p "$work/extract.tmp"
	tar -xf "$VKT_TARBALL" -C "$work/extract.tmp"
	top="$(find "$work/extract.tmp" -mindepth 1 -maxdepth 1 -type d | head -n1)"
	[ -f "$top/Makefile" ] || die "no kernel tree in $VKT_TARBALL"
	mv "$top" "$work/src"
	rm -rf "$work/extract.tmp"
	tmp="$work/applied"
	mkdir -p "$tmp"
	: >"$tmp/list"
}

# Revert the patches recorded in $1/applied after the first $2 of them.
revert_applied() {
	local work="$1" keep="$2" names i
	mapfile -t names <"$work/applied/list"
	for ((i = ${#names[@]} - 1; i >= keep; i--)); do
		step "reverting ${names[i]}"
		if ! patch -d "$work/src" -p1 -R --batch -s --no-backup-if-mismatch \
			<"$work/applied/${names[i]}" >&2; then
			warn "could not revert ${names[i]}: extracting the source again"
			rm -rf "$work/src"
			extract_tarball "$work"
			return 0
		fi
		rm -f "$work/applied/${names[i]}"
	done
	printf '%s\n' "${names[@]:0:keep}" | sed '/^$/d' >"$work/applied/list"
}

# Apply patch $2 to tree $1, failing loudly (and leaving the tree as it
# was: a dry run comes first).
apply_patch() {
	local tree="$1" p="$2" out
	local opts=(-d "$tree" -p1 --forward --batch --no-backup-if-mismatch --reject-file=-)
	if ! out="$(patch "${opts[@]}" --dry-run <"$p" 2>&1)"; then
		printf '%s\n' "$out" >&2
		die "patch $(basename "$p") does not apply to $tree"
	fi
	if printf '%s\n' "$out" | grep -q 'with fuzz\|offset'; then
		warn "$(basename "$p") applies with offset/fuzz:"
		printf '%s\n' "$out" | grep 'with fuzz\|offset' >&2
	fi
	patch "${opts[@]}" -s <"$p" >&2 || die "patch $(basename "$p") failed on $tree"
}

# Patches the extracted source should carry: the series, then the fault
# variant if any (recorded in applied/ like the others, so a run that died
# with the fault applied is reverted by the next one).
wanted_patches() {
	series_patches
	[ -z "$OPT_FAULT" ] || fault_patch
}

# Bring the extracted source of $1 to exactly the wanted patches: keep the
# common prefix of what is applied, revert the rest, apply the new ones.
sync_series_tarball() {
	local work="$1" applied=() wanted=() keep=0 i
	mapfile -t applied <"$work/applied/list"
	mapfile -t wanted < <(wanted_patches)
	while [ "$keep" -lt "${#applied[@]}" ] && [ "$keep" -lt "${#wanted[@]}" ] &&
		[ "${applied[keep]}" = "$(basename "${wanted[keep]}")" ] &&
		cmp -s "$work/applied/${applied[keep]}" "${wanted[keep]}"; do
		keep=$((keep + 1))
	done
	if [ "$keep" -lt "${#applied[@]}" ]; then
		revert_applied "$work" "$keep"
		mapfile -t applied <"$work/applied/list"
		keep="${#applied[@]}"
	fi
	for ((i = keep; i < ${#wanted[@]}; i++)); do
		step "applying $(basename "${wanted[i]}")"
		apply_patch "$work/src" "${wanted[i]}"
		cp "${wanted[i]}" "$work/applied/"
		basename "${wanted[i]}" >>"$work/applied/list"
	done
}

# Files that the series touches (paths relative to the tree).
series_files() {
	series_patches | xargs -r sed -n -e 's|^--- a/\([^\t ]*\).*$|\1|p' \
		-e 's|^+++ b/\([^\t ]*\).*$|\1|p' | LC_ALL=C sort -u
}

# Copy the files the series touches from tree $1 into scratch dir $2.
copy_series_files() {
	local tree="$1" scratch="$2" f
	rm -rf "$scratch"
	mkdir -p "$scratch"
	while IFS= read -r f; do
		if [ -f "$tree/$f" ]; then
			mkdir -p "$scratch/$(dirname "$f")"
			cp "$tree/$f" "$scratch/$f"
		fi
	done < <(series_files)
}

# Apply (or with -R, revert in reverse order) the whole series to scratch
# dir $2; prints the name of the first patch that fails.
try_series() {
	local dir="$1" scratch="$2" patches p
	mapfile -t patches < <(series_patches)
	if [ "$dir" = "-R" ]; then
		mapfile -t patches < <(printf '%s\n' "${patches[@]}" | tac)
	fi
	for p in "${patches[@]}"; do
		if ! patch -d "$scratch" -p1 "$dir" --batch -s --no-backup-if-mismatch \
			--reject-file=- <"$p" >/dev/null 2>&1; then
			basename "$p"
			return 1
		fi
	done
}

# Apply the series to a user's tree unless the whole series is applied
# already (checked on a scratch copy of the files it touches: reverting it
# in reverse order must work). Fails naming the first patch that does not
# apply.
sync_series_tree() {
	local tree="$1" scratch p bad
	scratch="$(mktemp -d "${TMPDIR:-/tmp}/vkt-series.XXXXXX")"
	copy_series_files "$tree" "$scratch"
	if try_series -R "$scratch" >/dev/null; then
		rm -rf "$scratch"
		step "series already applied to $tree"
		return 0
	fi
	copy_series_files "$tree" "$scratch"
	bad="$(try_series --forward "$scratch")" || {
		rm -rf "$scratch"
		die "patch $bad does not apply to $tree, and the series is not applied already (use --no-patches if the tree carries the feature in another form)"
	}
	rm -rf "$scratch"
	while IFS= read -r p; do
		step "applying $(basename "$p") to $tree"
		apply_patch "$tree" "$p"
	done < <(series_patches)
}

# Identity of a user's tree: version + HEAD + local changes (git), or
# version only (then the build always runs make, which is incremental).
tree_id() {
	local tree="$1" ver
	ver="$(make -s -C "$tree" kernelversion 2>/dev/null)" ||
		die "$tree: 'make kernelversion' failed (not a kernel tree?)"
	case "$ver" in
	6.12*) ;;
	*) warn "$tree is Linux $ver, not 6.12: the series may not apply" ;;
	esac
	if git -C "$tree" rev-parse --verify -q HEAD >/dev/null 2>&1; then
		{
			printf '%s\n' "$ver"
			git -C "$tree" rev-parse HEAD
			git -C "$tree" diff HEAD
			git -C "$tree" ls-files -z -o --exclude-standard |
				(cd "$tree" && xargs -0 -r sha256sum)
		} | sha256_stdin
	else
		printf 'nogit-%s\n' "$ver"
	fi
}

# Cache key of one build.
cache_key() {
	local srcid="$1" p
	{
		printf 'vkt-build-v1\n%s\n%s\n' "$srcid" "$(flavour)"
		sha256_stdin <"$0"
		printf 'no-patches=%s\n' "$OPT_NO_PATCHES"
		if [ -n "$OPT_FAULT" ]; then
			printf 'fault=%s\n' "$OPT_FAULT"
			cat "$(fault_patch)"
		fi
		if [ "$OPT_NO_PATCHES" -eq 0 ]; then
			while IFS= read -r p; do
				printf '%s\n' "$(basename "$p")"
				cat "$p"
			done < <(series_patches)
		fi
		while IFS= read -r p; do
			cat "$p"
		done < <(fragments)
	} | sha256_stdin
}

# Options requested by the fragments, last one wins: lines "NAME VALUE"
# with VALUE "n" for "is not set".
requested_options() {
	local f
	while IFS= read -r f; do
		sed -n -e 's/^\(CONFIG_[A-Za-z0-9_]*\)=\(.*\)$/\1 \2/p' \
			-e 's/^# \(CONFIG_[A-Za-z0-9_]*\) is not set$/\1 n/p' "$f"
	done < <(fragments) | awk '{ v[$1] = $2; if (!($1 in o)) { o[$1] = ++n; k[n] = $1 } }
		END { for (i = 1; i <= n; i++) print k[i], v[k[i]] }'
}

# Print the options of the fragments that the final .config ($1) lacks.
unmet_options() {
	local config="$1" name want have
	while read -r name want; do
		have="$(sed -n "s/^${name}=//p" "$config")"
		[ -n "$have" ] || have=n
		if [ "$have" != "$want" ]; then
			printf '  %s: requested %s, got %s\n' "$name" "$want" "$have"
		fi
	done < <(requested_options)
}

# tinyconfig + fragments + olddefconfig in build dir $2 for source $1.
configure() {
	local src="$1" build="$2" frags=()
	mapfile -t frags < <(fragments)
	step "configuring (tinyconfig + ${frags[*]##*/})"
	mkdir -p "$build"
	[ -f "$build/.config" ] && cp -p "$build/.config" "$build/.config.prev"
	make -C "$src" O="$build" "${ARCH_MAKE[@]}" tinyconfig >"$build/config.log" 2>&1 ||
		{ tail -n 30 "$build/config.log" >&2; die "make tinyconfig failed"; }
	(cd "$build" && "$src/scripts/kconfig/merge_config.sh" -m -O "$build" \
		"$build/.config" "${frags[@]}") >>"$build/config.log" 2>&1 ||
		{ tail -n 30 "$build/config.log" >&2; die "merge_config.sh failed"; }
	make -C "$src" O="$build" "${ARCH_MAKE[@]}" olddefconfig >>"$build/config.log" 2>&1 ||
		{ tail -n 30 "$build/config.log" >&2; die "make olddefconfig failed"; }
	# Same config as last time: keep the old mtime so make does not re-sync.
	if [ -f "$build/.config.prev" ] && cmp -s "$build/.config" "$build/.config.prev"; then
		touch -r "$build/.config.prev" "$build/.config"
	fi
	rm -f "$build/.config.prev"
}

# Fail (or, without a series, warn) when options did not come out as asked.
check_config() {
	local build="$1" strict="$2" unmet
	unmet="$(unmet_options "$build/.config")"
	[ -z "$unmet" ] && return 0
	if [ "$strict" -eq 1 ]; then
		printf 'options of the fragments not set as requested in %s:\n%s\n' \
			"$build/.config" "$unmet" >&2
		die "kernel configuration does not match the fragments"
	fi
	printf 'warning: options not set as requested (expected on a kernel without the series):\n%s\n' \
		"$unmet" >&2
}

# Kbuild steps a cold build of this flavour takes: what the last cold
# build in this cache counted, else what one counted when this was written
# (scripts/lib/vm.config + the fragments, 6.12), so the very first build
# shows a total too.
expected_steps() {
	local memo
	memo="$(cache_dir)/steps-$(flavour)"
	if [ -f "$memo" ]; then
		cat "$memo"
	elif [ "$OPT_DEBUG" -eq 1 ]; then
		echo 1710
	else
		echo 1654
	fi
}

# Show the progress of make from its quiet output on stdin (one "  CC
# path" line per kbuild step), copying every line to build log $1: on a
# terminal one line updated in place ("812/2300 steps, 2m14s"), otherwise
# one line a minute. $2 is the expected total (empty: unknown, as in an
# incremental build). Writes the count of steps to $3.
show_progress() {
	local log="$1" total="$2" countfile="$3" n=0 line shown=-1 tty=0 start="$SECONDS" el
	[ -t 2 ] && tty=1
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$log"
		case "$line" in
		"  "[A-Z]*) n=$((n + 1)) ;;
		*) continue ;;
		esac
		el=$((SECONDS - start))
		if [ "$tty" -eq 1 ]; then
			[ "$el" -ne "$shown" ] || continue
			printf '\r==> %s, %dm%02ds ' "$(progress_count "$n" "$total")" \
				$((el / 60)) $((el % 60)) >&2
			shown="$el"
		elif [ $((el / 60)) -gt "$shown" ]; then
			shown=$((el / 60))
			[ "$shown" -gt 0 ] || continue
			printf '==> kernel build: %s after %dm\n' "$(progress_count "$n" "$total")" "$shown" >&2
		fi
	done
	[ "$tty" -eq 0 ] || printf '\n' >&2
	printf '%s\n' "$n" >"$countfile"
}

progress_count() {
	if [ -n "$2" ] && [ "$1" -le "$2" ]; then
		printf '%d/%d steps (%d%%)' "$1" "$2" $(($1 * 100 / $2))
	else
		printf '%d steps' "$1"
	fi
}

# make bzImage (and vmlinux, kept for decoding stack traces), output in
# build.log with progress on stderr; tail on failure. A build dir without
# a vmlinux is a cold build: its step count becomes the next total. A
# changed configuration rebuilds most of the tree: the same total is shown.
compile() {
	local src="$1" build="$2" t0 total="" cold=0 rc=0 steps
	t0="$(now)"
	if [ ! -f "$build/vmlinux" ]; then
		cold=1
		total="$(expected_steps)"
	elif ! cmp -s "$build/.config" "$build/.config.built"; then
		total="$(expected_steps)"
	fi
	step "building kernel (make -j$OPT_JOBS bzImage in $build, log: $build/build.log)"
	: >"$build/build.log"
	set +e
	make -C "$src" O="$build" "${ARCH_MAKE[@]}" -j"$OPT_JOBS" bzImage 2>&1 |
		show_progress "$build/build.log" "$total" "$build/steps"
	rc="${PIPESTATUS[0]}"
	set -e
	if [ "$rc" -ne 0 ]; then
		grep -E 'error:|Error [0-9]|source tree is not clean|mrproper' "$build/build.log" |
			head -n 40 >&2 || true
		tail -n 40 "$build/build.log" >&2
		die "kernel build failed (log: $build/build.log)"
	fi
	steps="$(cat "$build/steps")"
	cp "$build/.config" "$build/.config.built"
	if [ "$cold" -eq 1 ]; then
		mkdir -p "$(cache_dir)"
		printf '%s\n' "$steps" >"$(cache_dir)/steps-$(flavour)"
	fi
	step "kernel built in $(elapsed_since "$t0")s ($steps kbuild steps)"
}

# Copy the result into kernels/<key>/ and print its path; $3 is the
# source tree it was built from.
publish() {
	local build="$1" key="$2" src="$3" out
	out="$(cache_dir)/kernels/$key"
	mkdir -p "$out"
	cp "$build/arch/x86/boot/bzImage" "$out/bzImage.tmp"
	cp "$build/.config" "$out/config"
	# The vmlinux of exactly this bzImage: the build dir is shared by the
	# fault variants, so only this copy is sure to match it.
	cp "$build/vmlinux" "$out/vmlinux.tmp"
	mv "$out/vmlinux.tmp" "$out/vmlinux"
	# For vmtest's decoder (scripts/decode_stacktrace.sh, file names
	# relative to it) without taking the build lock.
	printf '%s\n' "$src" >"$out/source"
	mv "$out/bzImage.tmp" "$out/bzImage"
	printf '%s\n' "$out/bzImage"
}

# Path of a cached result for key $1, if any.
cached_result() {
	local f
	f="$(cache_dir)/kernels/$1/bzImage"
	[ -f "$f" ] && printf '%s\n' "$f"
	return 0
}

have_series() {
	[ "$OPT_NO_PATCHES" -eq 0 ] && [ -n "$(series_patches)" ]
}

warn_no_series() {
	[ "$OPT_NO_PATCHES" -eq 1 ] && return 0
	[ -n "$(series_patches)" ] ||
		warn "kernel-patches/series missing or empty: building a PRISTINE kernel (the harness will skip)"
}

# Revert the fault variant (the patches after the series) from $1/src.
revert_fault() {
	local work="$1" n
	n="$(series_patches | wc -l)"
	if [ "$(wc -l <"$work/applied/list")" -gt "$n" ]; then
		step "reverting fault $OPT_FAULT"
		revert_applied "$work" "$n"
	fi
}

# From now on, leave the source without the fault when the script ends,
# whatever way it ends (the lock is still held in the EXIT trap).
arm_fault_revert() {
	FAULT_WORK="$1"
	trap 'revert_fault "$FAULT_WORK"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# Build from the Debian tarball.
build_from_tarball() {
	local srcid key hit work build strict=0
	ensure_tarball
	srcid="$(tarball_id)"
	key="$(cache_key "tarball-$srcid")"
	hit="$(cached_result "$key")"
	warn_no_series
	if [ -n "$hit" ]; then
		step "building kernel (cached: $hit)"
		printf '%s\n' "$hit"
		return 0
	fi
	work="$(cache_dir)/work/${srcid:0:16}"
	build="$work/build-$(flavour)"
	mkdir -p "$work"
	exec 9>"$work/lock"
	flock 9
	extract_tarball "$work"
	if [ "$OPT_NO_PATCHES" -eq 0 ]; then
		[ -z "$OPT_FAULT" ] || arm_fault_revert "$work"
		sync_series_tarball "$work"
	else
		revert_applied "$work" 0
	fi
	have_series && strict=1
	configure "$work/src" "$build"
	check_config "$build" "$strict"
	compile "$work/src" "$build"
	publish "$build" "$key" "$work/src"
}

# Build a user's tree out of tree.
build_from_tree() {
	local tree key hit build strict=0 id
	tree="$(cd "$OPT_TREE" && pwd)" || die "--tree $OPT_TREE: no such directory"
	[ -f "$tree/Makefile" ] || die "$tree is not a kernel tree"
	warn_no_series
	[ "$OPT_NO_PATCHES" -eq 1 ] || sync_series_tree "$tree"
	id="$(tree_id "$tree")"
	key="$(cache_key "tree-$id")"
	hit="$(cached_result "$key")"
	if [ -n "$hit" ] && [ "${id#nogit-}" = "$id" ]; then
		step "building kernel (cached: $hit)"
		printf '%s\n' "$hit"
		return 0
	fi
	build="$(cache_dir)/work/tree-$(printf '%s' "$tree" | sha256_stdin | cut -c1-16)/build-$(flavour)"
	mkdir -p "$build"
	exec 9>"$build/../lock"
	flock 9
	# The series is applied or the tree carries the feature: be strict
	# unless there is nothing to check against.
	have_series && strict=1
	[ "$OPT_NO_PATCHES" -eq 1 ] && strict=1
	configure "$tree" "$build"
	check_config "$build" "$strict"
	compile "$tree" "$build"
	publish "$build" "$key" "$tree"
}

print_source() {
	local work
	ensure_tarball
	work="$(cache_dir)/work/$(tarball_id | cut -c1-16)"
	mkdir -p "$work"
	exec 9>"$work/lock"
	flock 9
	extract_tarball "$work"
	printf '%s\n' "$work/src"
}

main() {
	parse_args "$@"
	# Fails here (not in a subshell) when the series names a missing file.
	series_patches >/dev/null
	if [ "$OPT_PRINT_SOURCE" -eq 1 ]; then
		print_source
	elif [ -n "$OPT_TREE" ]; then
		build_from_tree
	else
		build_from_tarball
	fi
}

main "$@"

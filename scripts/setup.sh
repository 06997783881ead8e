#!/bin/bash
# Install what the project needs (Debian 12). As root it runs apt-get;
# otherwise it prints the command to run and exits 1.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

# Packages of VKT_APT_PACKAGES that are not installed yet.
missing_packages() {
	local pkg
	for pkg in "${VKT_APT_PACKAGES[@]}"; do
		if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
			grep -q 'install ok installed'; then
			printf '%s\n' "$pkg"
		fi
	done
}

# Make sure the Rust toolchain has the target and components we use.
check_rust() {
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

main() {
	local missing
	mapfile -t missing < <(missing_packages)
	if [ "${#missing[@]}" -eq 0 ]; then
		step "all packages present"
	elif [ "$(id -u)" -ne 0 ]; then
		printf 'missing packages; run as root:\n' >&2
		printf 'apt-get update && apt-get install -y %s\n' "${missing[*]}"
		exit 1
	else
		step "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update >&2
		apt-get install -y --no-install-recommends "${missing[@]}" >&2
	fi
	check_rust
}

main "$@"

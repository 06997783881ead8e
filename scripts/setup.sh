#!/bin/bash
# Install what the project needs (Debian 12): the Debian packages of
# VKT_APT_PACKAGES (scripts/lib/common.sh) and the Rust components. As
# root it runs apt-get; otherwise it prints the command to run and exits 4.
# scripts/vmtest and scripts/test-all.sh do the same by themselves: this is
# for preparing a machine ahead of time.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

main() {
	ensure_packages
	step "all Debian packages present"
	ensure_rust_components
}

main "$@"

#!/usr/bin/env bash
# Builds the appliance's Debian package with cargo-deb ([package.metadata.deb] in Cargo.toml):
# the release daemon, the static vm-agent exactly as the image builds make it (image/lib.sh
# build_agent), then `cargo deb --no-build` over both, so one release build serves any number of
# package versions. Prints the .deb's path as its last line.
#
#   scripts/build-package.sh [--deb-version VERSION] [--output DIR] [--fast]
#
# DIR defaults to target/debian. --fast compresses less (a larger .deb, built in seconds rather
# than half a minute): for packages that are only tested, never shipped. Every cargo-deb run, to
# any DIR, deletes the earlier master-controller .debs in target/debian (its own clean-up), so copy
# a package out of there to keep it.
#
# cargo-deb is taken from PATH, else installed once (pinned) into ~/.cache/master-controller/
# cargo-deb (MC_CARGO_DEB_ROOT) from crates.io.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

CARGO_DEB_VERSION=3.8.0
deb_args=()
output=$REPO/target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --deb-version) deb_args+=(--deb-version "${2:?--deb-version needs a value}"); shift 2 ;;
    --output) output=${2:?--output needs a directory}; shift 2 ;;
    --fast) deb_args+=(--fast); shift ;;
    *) echo "build-package: unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo_deb_root=${MC_CARGO_DEB_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/master-controller/cargo-deb}
PATH=$PATH:$cargo_deb_root/bin
if ! command -v cargo-deb >/dev/null; then
  echo "build-package: installing cargo-deb $CARGO_DEB_VERSION into $cargo_deb_root" >&2
  cargo install --locked --quiet --version "$CARGO_DEB_VERSION" --root "$cargo_deb_root" cargo-deb >&2
fi

echo "build-package: building the release daemon" >&2
cargo build --release --locked --bin master-controller >&2
# The package's vm-agent is the one its assets name: build it here, never a substitute.
unset MC_VM_AGENT_BIN
BUILD_NAME=build-package CACHE_DIR=${TMPDIR:-/tmp}
# shellcheck source=image/lib.sh
. "$REPO/image/lib.sh"
build_agent >&2

mkdir -p "$output"
echo "build-package: packaging" >&2
# cargo deb prints the .deb's path on stdout.
cargo deb --no-build --locked --output "$output" "${deb_args[@]}"

#!/usr/bin/env bash
# Proves the repository is self-contained: a plain clone of the committed HEAD, in a fresh
# temporary directory with nothing beside it (no ../shared), passes `cargo test --test
# firecracker`, whose Firecracker API specs must come from the repository itself
# (tests/support/firecracker-api/). It shares this checkout's CARGO_TARGET_DIR, so only this crate
# is compiled again. Uncommitted changes are not in the clone.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd -P)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone --quiet "$repo" "$tmp/master-controller"
if [ -e "$tmp/shared" ]; then
  echo "plain-clone-test: $tmp/shared exists; the clone is not alone" >&2
  exit 1
fi
echo "plain-clone-test: cargo test --locked --test firecracker in $tmp/master-controller (no ../shared)"
# Nothing from this machine's test setup: the real-Firecracker case is skipped, as in any clone.
(cd "$tmp/master-controller" && env -u MC_TEST_FIRECRACKER_BIN cargo test --locked --test firecracker)

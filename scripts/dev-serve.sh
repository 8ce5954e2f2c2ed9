#!/usr/bin/env bash
# Quick start: builds and runs the daemon on 127.0.0.1:4000 with its state in ./.dev, and prints
# the admin token to use with the API. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "dev-serve.sh: needs a Rust toolchain (1.85 or newer) on PATH" >&2; exit 1; }
mkdir -p .dev
chmod 700 .dev
if [ ! -s .dev/admin-token ]; then
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > .dev/admin-token)
fi
echo "dev-serve.sh: building (release)"
cargo build --release --locked
echo "dev-serve.sh: admin token is in .dev/admin-token; try:"
echo "  curl -H \"Authorization: Bearer \$(cat .dev/admin-token)\" http://127.0.0.1:4000/api/admin/system/stats"
MC_ADMIN_TOKEN_FILE="$PWD/.dev/admin-token" exec target/release/master-controller serve \
  --listen "${MC_LISTEN:-127.0.0.1:4000}" --data-dir "$PWD/.dev/data"

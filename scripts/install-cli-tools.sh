#!/usr/bin/env bash
# Installs the pinned AI coding CLIs (image/cli-tools.txt) from npm into a cache directory, once,
# and prints that directory. The tests run these real CLIs against a fake model server.
#
#   scripts/install-cli-tools.sh [DIR]
#
# DIR defaults to ~/.cache/master-controller/cli-tools-<hash of the pinned versions>, so a new
# pin installs afresh and an unchanged one costs nothing. Progress goes to stderr; only the
# directory goes to stdout. Needs Node.js 20 and npm, and about 760 MB.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

mapfile -t specs < <(grep -Ev '^[[:space:]]*(#|$)' "$repo/image/cli-tools.txt")
hash=$(printf '%s\n' "${specs[@]}" | sha256sum | cut -c1-12)
dir="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/master-controller/cli-tools-$hash}"

if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "install-cli-tools: $tool is missing (Node.js 20 and npm are needed)" >&2
    exit 1
  fi
done
echo "install-cli-tools: installing ${specs[*]} into $dir" >&2
mkdir -p "$dir"
npm install --no-audit --no-fund --loglevel=error --prefix "$dir" "${specs[@]}" >&2
for bin in claude codex gemini; do
  [ -x "$dir/node_modules/.bin/$bin" ] || { echo "install-cli-tools: $bin is missing after the install" >&2; exit 1; }
done
touch "$dir/.complete"
echo "$dir"

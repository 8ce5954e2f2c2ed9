#!/usr/bin/env bash
# Builds the golden snapshot that GOLDEN_SNAPSHOT (and, for Firecracker, GOLDEN_MEMORY) point to:
# boots the configured guest image once with the configured hypervisor, waits for its agent, and
# saves it. Creates then restore from it instead of cold-booting.
#
#   sudo scripts/build-golden-snapshot.sh [--config /etc/master-controller/config.toml]
#
# It reads the daemon's own settings (the config file, then /etc/master-controller/env, then the
# environment), so the snapshot has the VMs' size and devices. Run it as root on the appliance
# host (it makes a tap on the guest bridge), then restart the daemon. Rebuild it whenever the
# kernel, image, VM size or hypervisor changes: the daemon refuses a snapshot that does not match.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

env_file="${MC_ENV_FILE:-/etc/master-controller/env}"
if [ -r "$env_file" ]; then
  set -a
  # shellcheck disable=SC1090
  . "$env_file"
  set +a
fi

bin="${MC_BIN:-}"
if [ -z "$bin" ]; then
  for candidate in "$(command -v master-controller || true)" "$repo/target/release/master-controller" "$repo/target/debug/master-controller"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then bin="$candidate"; break; fi
  done
fi
if [ -z "$bin" ]; then
  echo "build-golden-snapshot: no master-controller binary (install it, build it, or set MC_BIN)" >&2
  exit 1
fi
if [ -z "${GOLDEN_SNAPSHOT:-${MC_GOLDEN_SNAPSHOT:-}}" ] && [ $# -eq 0 ]; then
  echo "build-golden-snapshot: set GOLDEN_SNAPSHOT (in the environment or the config file)" >&2
  exit 2
fi
exec "$bin" golden-snapshot "$@"

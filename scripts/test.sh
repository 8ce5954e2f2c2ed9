#!/usr/bin/env bash
# The whole test suite, installing what it needs first. This is the README's test command and
# what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test.sh: needs a Rust toolchain (1.90 or newer) on PATH; Debian's packaged cargo is too old" >&2
  exit 1
fi

# Debian packages the tests use. Installed only when missing, so a prepared host needs no network.
# QEMU boots the real guests; e2fsprogs formats their data disks; iproute2 makes the test's
# private network; procps gives pgrep to the agent tests; nftables checks setup-network.sh;
# postgresql-15 (Supabase's major version) holds the mirror's schema in the Supabase tests, which
# start clusters of their own (the package's default cluster is neither used nor in their way:
# theirs listen on no TCP port); tinyproxy-bin (the binary alone, no service) is the real upstream
# proxy, with basic auth, that the egress tests put behind the gateway proxy. dpkg-dev gives
# dpkg-shlibdeps to cargo-deb, which builds the Debian package that scripts/package-test.sh installs.
# python3-venv holds schemathesis (from PyPI) in a virtual environment of its own.
packages=(ca-certificates qemu-system-x86 e2fsprogs iproute2 procps nftables postgresql-15 tinyproxy-bin dpkg-dev python3-venv)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Prometheus and promtool (Debian's prometheus package) for tests/monitoring.rs: the alert rules'
# unit tests, and a real Prometheus scraping a live daemon. The package enables its service and
# would start it, and a running Prometheus writes under /var/lib/prometheus through the whole
# suite: a policy-rc.d keeps it from starting during the install, and the service is disabled
# after it. The tests run their own Prometheus in a temporary directory.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "test.sh: installing prometheus (its service stays stopped and disabled)"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  added_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# test.sh: no service starts while prometheus is installed.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  apt-get update -qq
  installed=0
  apt-get install -y -qq --no-install-recommends prometheus || installed=$?
  if [ -n "$added_policy" ]; then rm -f "$policy"; fi
  [ "$installed" -eq 0 ] || exit "$installed"
  if command -v systemctl >/dev/null; then
    systemctl disable prometheus.service >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then systemctl stop prometheus.service || true; fi
  fi
fi
if [ -d /run/systemd/system ] && systemctl is-active --quiet prometheus.service 2>/dev/null; then
  echo "test.sh: a prometheus service runs here and writes under /var/lib/prometheus during the tests;" \
    "stop it (systemctl disable --now prometheus) or name its directory in MC_HOST_STATE_PRUNE" >&2
fi

# Local state (.dev/: the quick start's admin token and signing key) must never be committed.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -n "$(git ls-files .dev)" ]; then
  echo "test.sh: local state is committed; remove it from git: $(git ls-files .dev | tr '\n' ' ')" >&2
  exit 1
fi

echo "test.sh: building the guest test image"
image/build-test-image.sh
# The production guest (Debian 13, Node.js 20, the pinned CLIs): its base rootfs is cached by a
# hash of its inputs, so only a changed input rebuilds it (about 4 minutes cold). tests/golden.rs
# builds its own image versions from that cache.
echo "test.sh: building the golden image (cached)"
image/build-golden.sh

# The real AI coding CLIs at their pinned versions, run by tests/cli_tools.rs. They need Node.js 20.
if ! command -v npm >/dev/null; then
  echo "test.sh: installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm
fi
echo "test.sh: installing the pinned CLIs (cached)"
MC_TEST_CLI_TOOLS=$(scripts/install-cli-tools.sh)
export MC_TEST_CLI_TOOLS

# schemathesis (PyPI, pinned) fuzzes a live daemon against the OpenAPI document in tests/openapi.rs.
echo "test.sh: installing schemathesis (cached)"
MC_SCHEMATHESIS=$(scripts/install-schemathesis.sh)
export MC_SCHEMATHESIS

echo "test.sh: building and running the tests"
# The real-guest and real-CLI tests must not skip here: every prerequisite was just installed.
export MC_REQUIRE_GUESTS=1
# Benchmarks are not run here (they are not tests), but they are compiled by clippy in CI.
# The tests run as root; they must leave the machine as they found it. Compiling first keeps the
# build's own writes out of the comparison.
cargo test --locked --no-run --lib --bins --tests
# The made-up fourth CLI (src/providers/made_up.rs) is built only with its feature.
cargo test --locked --no-run --features made-up-cli --test made_up_provider
state_before=$(mktemp)
state_after=$(mktemp)
trap 'rm -f "$state_before" "$state_after"' EXIT
echo "test.sh: recording the host's files"
scripts/host-state.sh >"$state_before"
status=0
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads="${MC_TEST_THREADS:-2}" || status=$?
cargo test --locked --features made-up-cli --test made_up_provider || status=$?
# The Debian package installed, upgraded and removed by the real dpkg in a temporary root.
scripts/package-test.sh || status=$?
echo "test.sh: checking that the tests left the host's files as they were"
scripts/host-state.sh >"$state_after"
if ! diff "$state_before" "$state_after" >/dev/null; then
  echo "test.sh: the tests changed files outside their temporary directories:" >&2
  diff "$state_before" "$state_after" | head -n 40 >&2
  status=1
fi
exit "$status"

#!/usr/bin/env bash
# Installs master-controller on a Debian host (tested: Debian 12) from this checkout: builds the
# Debian package (scripts/build-package.sh), installs it with apt, which also installs the OS
# packages it depends on, then does what a package cannot: the env file, mc-vmm's ids in
# config.toml, and generated credentials (never overwritten). Rerun it to upgrade: the package
# keeps the configuration and restarts a running service.
# Usage: sudo appliance/install.sh [path/to/master-controller_VERSION_amd64.deb]
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

deb=${1:-}
if [ -z "$deb" ]; then
  # cargo-deb's $auto dependency (the C library version) comes from dpkg-shlibdeps.
  if ! command -v dpkg-shlibdeps >/dev/null; then
    echo "install.sh: installing dpkg-dev (to build the package)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dpkg-dev
  fi
  echo "install.sh: building the package"
  deb=$(scripts/build-package.sh | tail -n 1)
fi
[ -f "$deb" ] || { echo "install.sh: no package at $deb" >&2; exit 1; }

# An install.sh from before the package put its files in /usr/local and /etc/systemd/system,
# where they would shadow the package's (PATH order, unit precedence). Its units' enablement
# links point at those files, so they are disabled with them and enabled again on the package's.
was_active= was_enabled=()
if systemctl is-active --quiet master-controller 2>/dev/null; then was_active=1; fi
for unit in master-controller master-controller-network; do
  if [ -e "/etc/systemd/system/$unit.service" ] && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    was_enabled+=("$unit")
    systemctl disable --quiet "$unit"
  fi
done
migrated=
for path in /usr/local/bin/master-controller /usr/local/lib/master-controller/setup-network.sh \
  /usr/local/lib/master-controller/build-golden-snapshot.sh \
  /etc/systemd/system/master-controller.service /etc/systemd/system/master-controller-network.service; do
  if [ -e "$path" ]; then
    echo "install.sh: removing $path (installed by an older install.sh; the package replaces it)"
    rm -f "$path"
    migrated=1
  fi
done
rmdir /usr/local/lib/master-controller 2>/dev/null || true

echo "install.sh: installing $deb and the OS packages it depends on"
# apt wants a path, not a bare name, for a local file. An edited config.toml is kept even when the
# package's changes too (confold), instead of a prompt.
install_deb() {
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "$(realpath "$deb")"
}
install_deb || { apt-get update -qq && install_deb; }
if [ ${#was_enabled[@]} -gt 0 ]; then
  systemctl enable --quiet "${was_enabled[@]}"
fi
# An upgrade of the package restarts a running service itself; a first one (from the old files)
# does not, so it is done here.
if [ -n "$migrated" ] && [ -n "$was_active" ]; then
  echo "install.sh: restarting master-controller on the package's binary"
  systemctl restart master-controller
fi

# The example's placeholder ids become mc-vmm's (made by the package); an operator's own stay.
conf=/etc/master-controller/config.toml
sed -i -e "s/^jailer_uid = 990$/jailer_uid = $(id -u mc-vmm)/" \
  -e "s/^jailer_gid = 990$/jailer_gid = $(id -g mc-vmm)/" "$conf"
[ -f /etc/master-controller/env ] || install -m 0600 appliance/env.example /etc/master-controller/env

# Every secret is a systemd credential (see the unit): a file here, mode 0600 in a 0700
# directory. The two the daemon needs are generated; the optional ones (service-token,
# token-signing-key, supabase-service-key, model-api-key, decodo-user, decodo-password) are the
# operator's to add, and the unit starts without them.
umask 077
install -d -m 0700 /etc/master-controller/credentials
for name in admin-token encryption-master-key; do
  path=/etc/master-controller/credentials/$name
  if [ ! -s "$path" ]; then
    echo "install.sh: generating $path"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$path"
  fi
  chmod 0600 "$path"
done

# With no flags, doctor reads what the unit gives the service: config.toml, env, credentials/.
master-controller doctor || true
echo "install.sh: done. Edit /etc/master-controller/env (settings) and add the secrets you use"
echo "  to /etc/master-controller/credentials/ (one file each, mode 0600), then:"
echo "  systemctl enable --now master-controller-network master-controller"

#!/usr/bin/env bash
# Installs master-controller on a bare-metal Debian/Ubuntu host: the binary, the systemd unit,
# the tmpfiles entry, an example config, and generated credentials (never overwritten).
# Usage: sudo appliance/install.sh [path/to/master-controller]
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
binary=${1:-target/release/master-controller}
if [ ! -x "$binary" ]; then
  echo "install.sh: building the release binary"
  cargo build --release --locked
fi

echo "install.sh: installing $binary to /usr/local/bin"
install -m 0755 "$binary" /usr/local/bin/master-controller
install -m 0644 systemd/master-controller.service /etc/systemd/system/master-controller.service
install -m 0644 systemd/master-controller-network.service /etc/systemd/system/master-controller-network.service
install -d -m 0755 /usr/local/lib/master-controller
install -m 0755 scripts/setup-network.sh scripts/build-golden-snapshot.sh /usr/local/lib/master-controller/
install -m 0644 systemd/master-controller.tmpfiles.conf /usr/lib/tmpfiles.d/master-controller.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/master-controller.conf

# The hypervisors' unprivileged user: QEMU's -runas and the Firecracker jailer's uid/gid.
if ! id -u mc-vmm >/dev/null 2>&1; then
  echo "install.sh: creating the system user mc-vmm"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mc-vmm
fi
if [ ! -f /etc/master-controller/config.toml ]; then
  sed -e "s/^jailer_uid = .*/jailer_uid = $(id -u mc-vmm)/" \
      -e "s/^jailer_gid = .*/jailer_gid = $(id -g mc-vmm)/" \
      appliance/config.example.toml > /etc/master-controller/config.toml
  chmod 0644 /etc/master-controller/config.toml
fi
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

systemctl daemon-reload
# With no flags, doctor reads what the unit gives the service: config.toml, env, credentials/.
/usr/local/bin/master-controller doctor || true
echo "install.sh: done. Edit /etc/master-controller/env (settings) and add the secrets you use"
echo "  to /etc/master-controller/credentials/ (one file each, mode 0600), then:"
echo "  systemctl enable --now master-controller-network master-controller"

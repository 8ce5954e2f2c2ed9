#!/usr/bin/env bash
# Host networking for the guests: IPv4 forwarding, NAT for the guest network, and forward rules
# (guests may open connections out; nothing may open connections in; no guest-to-guest traffic
# through the host). The daemon itself creates the bridge and the taps.
#
#   sudo scripts/setup-network.sh [--bridge NAME] [--cidr ADDR/PREFIX]
#
# The defaults are the daemon's: MC_BRIDGE (fcbr0) and MC_BRIDGE_CIDR (192.168.100.1/24), read
# from the environment or /etc/master-controller/env. Idempotent: the rules live in their own
# nftables table, `inet master_controller`, which is replaced as a whole on every run. Run it at
# boot before the daemon (systemd/master-controller-network.service does);
# `master-controller doctor` checks the result.
set -euo pipefail

env_file="${MC_ENV_FILE:-/etc/master-controller/env}"
if [ -r "$env_file" ]; then
  set -a
  # shellcheck disable=SC1090
  . "$env_file"
  set +a
fi
bridge="${MC_BRIDGE:-fcbr0}"
cidr="${MC_BRIDGE_CIDR:-192.168.100.1/24}"
while [ $# -gt 0 ]; do
  case "$1" in
    --bridge) bridge="$2"; shift 2 ;;
    --cidr) cidr="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup-network: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! [[ "$bridge" =~ ^[A-Za-z0-9_-]{1,15}$ ]]; then
  echo "setup-network: bad bridge name $bridge" >&2; exit 2
fi
if ! [[ "$cidr" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})$ ]]; then
  echo "setup-network: bad network $cidr (expected a.b.c.d/prefix)" >&2; exit 2
fi
prefix="${BASH_REMATCH[5]}"
addr=$(( (BASH_REMATCH[1] << 24) | (BASH_REMATCH[2] << 16) | (BASH_REMATCH[3] << 8) | BASH_REMATCH[4] ))
mask=$(( (0xffffffff << (32 - prefix)) & 0xffffffff ))
net=$(( addr & mask ))
network="$(( (net >> 24) & 255 )).$(( (net >> 16) & 255 )).$(( (net >> 8) & 255 )).$(( net & 255 ))/$prefix"

for tool in nft sysctl; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup-network: $tool is missing (apt-get install nftables procps)" >&2; exit 1
  fi
done

echo "setup-network: enabling IPv4 forwarding"
sysctl -qw net.ipv4.ip_forward=1

echo "setup-network: NAT and forward rules for $network on $bridge (table inet master_controller)"
# Declaring the table first makes the delete succeed on the first run; the whole file is one
# transaction, so the rules are never half-replaced.
nft -f - <<RULES
table inet master_controller
delete table inet master_controller
table inet master_controller {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "$bridge" oifname "$bridge" drop comment "no guest-to-guest traffic through the host"
    iifname "$bridge" ip saddr $network accept comment "guests open connections out"
    oifname "$bridge" ct state established,related accept comment "and get their answers"
    oifname "$bridge" drop comment "nothing opens connections into the guests"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $network ip daddr != $network masquerade comment "guests leave with the host's address"
  }
}
RULES
echo "setup-network: done"

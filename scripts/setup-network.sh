#!/usr/bin/env bash
# Host networking for the guests: IPv4 forwarding, NAT of the guest network, and a firewall. On the
# host, guests reach only the gateway proxy and DNS on the gateway address; they open connections
# out (in strict mode only through the gateway proxy); nothing opens connections into them; no
# guest-to-guest traffic through the host; no IPv6. The daemon creates the bridge and the taps.
#
#   sudo scripts/setup-network.sh [--bridge NAME] [--cidr ADDR/PREFIX] [--gateway-port N] [--strict]
#
# Defaults are the daemon's, from the environment or /etc/master-controller/env: MC_BRIDGE (fcbr0),
# MC_BRIDGE_CIDR (192.168.100.1/24), MC_EGRESS_GATEWAY_PORT (3128), MC_EGRESS_STRICT (false).
# Idempotent: one nftables table, `inet master_controller`, replaced whole in one transaction. Run at
# boot before the daemon (master-controller-network.service); `master-controller doctor` checks it.
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
gateway_port="${MC_EGRESS_GATEWAY_PORT:-3128}"
strict="${MC_EGRESS_STRICT:-false}"
while [ $# -gt 0 ]; do
  case "$1" in
    --bridge) bridge="${2-}"; shift 2 || shift ;;
    --cidr) cidr="${2-}"; shift 2 || shift ;;
    --gateway-port) gateway_port="${2-}"; shift 2 || shift ;;
    --strict) strict=true; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup-network: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! [[ "$bridge" =~ ^[A-Za-z0-9_-]{1,15}$ ]]; then
  echo "setup-network: bad bridge name $bridge" >&2; exit 2
fi
# Digits only: the value goes into the nft rules as it is.
if ! [[ "$gateway_port" =~ ^[1-9][0-9]{0,4}$ ]] || [ "$gateway_port" -gt 65535 ]; then
  echo "setup-network: bad gateway port $gateway_port (expected 1..65535)" >&2; exit 2
fi
# The same values the daemon reads from the same variable, so one env file serves both; anything
# else is refused rather than silently read as "not strict".
case "$strict" in
  true) ;;
  false|"") strict=false ;;
  *) echo "setup-network: bad MC_EGRESS_STRICT $strict (expected true or false)" >&2; exit 2 ;;
esac
# The daemon's own rules (net::Subnet): no leading zeros, a /16 to /29 network.
octet='(0|[1-9][0-9]{0,2})'
if ! [[ "$cidr" =~ ^$octet\.$octet\.$octet\.$octet/([0-9]{2})$ ]]; then
  echo "setup-network: bad network $cidr (expected a.b.c.d/prefix)" >&2; exit 2
fi
octets=( "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}" "${BASH_REMATCH[4]}" )
prefix="${BASH_REMATCH[5]}"
for o in "${octets[@]}"; do
  if [ "$o" -gt 255 ]; then
    echo "setup-network: bad network $cidr (an octet is over 255)" >&2; exit 2
  fi
done
if [ "$prefix" -lt 16 ] || [ "$prefix" -gt 29 ]; then
  echo "setup-network: bad network $cidr (the prefix must be 16..29)" >&2; exit 2
fi
dotted() { echo "$(( ($1 >> 24) & 255 )).$(( ($1 >> 16) & 255 )).$(( ($1 >> 8) & 255 )).$(( $1 & 255 ))"; }
addr=$(( (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3] ))
mask=$(( (0xffffffff << (32 - prefix)) & 0xffffffff ))
hostmask=$(( ~mask & 0xffffffff ))
if [ $(( addr & hostmask )) -eq 0 ] || [ $(( addr & hostmask )) -eq "$hostmask" ]; then
  echo "setup-network: bad network $cidr (the bridge address must be a host address)" >&2; exit 2
fi
gateway="$(dotted "$addr")"
network="$(dotted $(( addr & mask )))/$prefix"

for tool in nft sysctl; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup-network: $tool is missing (apt-get install nftables procps)" >&2; exit 1
  fi
done

if [ "$strict" = true ]; then
  # The gateway proxy runs on the host, so its own connections out are not forwarded traffic:
  # dropping everything the guests would forward leaves the proxy as their only way out.
  guests_out="iifname \"$bridge\" drop comment \"strict: guests leave only through the gateway proxy\""
  mode="strict: egress only through the gateway proxy"
else
  guests_out="iifname \"$bridge\" ip saddr $network accept comment \"guests open connections out\"
    iifname \"$bridge\" drop comment \"but only from their own addresses\""
  mode="not strict: guests may also leave directly"
fi

echo "setup-network: enabling IPv4 forwarding"
sysctl -qw net.ipv4.ip_forward=1

echo "setup-network: NAT and forward rules for $network on $bridge (table inet master_controller)"
echo "setup-network: guests reach $gateway on tcp/$gateway_port and DNS only; $mode"
# Declaring the table first makes the delete succeed on the first run; the whole file is one
# transaction, so the rules are never half-replaced.
nft -f - <<RULES
table inet master_controller
delete table inet master_controller
table inet master_controller {
  chain input {
    type filter hook input priority filter; policy accept;
    meta nfproto ipv6 iifname "$bridge" drop comment "guests have only IPv4: no link-local way onto the host"
    iifname "$bridge" ct state established,related accept comment "answers to the host's own connections"
    iifname "$bridge" ip daddr $gateway tcp dport $gateway_port accept comment "the gateway proxy"
    iifname "$bridge" ip daddr $gateway udp dport 53 accept comment "DNS on the gateway"
    iifname "$bridge" ip daddr $gateway tcp dport 53 accept comment "DNS on the gateway"
    iifname "$bridge" drop comment "guests reach nothing else on the host"
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    meta nfproto ipv6 iifname "$bridge" drop comment "guests have only IPv4"
    iifname "$bridge" oifname "$bridge" drop comment "no guest-to-guest traffic through the host"
    $guests_out
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

#!/usr/bin/env bash
# Prints a manifest of the host's files that tests must not change, so that two manifests (before
# and after the suite) show whether a test changed the machine that ran it. /etc is compared by
# content (a test once overwrote the host's /etc/resolv.conf); the rest by size, modification time,
# mode, owner and link target, which is enough to see a write and keeps the walk over /usr to
# seconds.
#
# Walked: the system's own places (/etc, /usr, /opt, /var, /root, /home, ...), this repository's
# work tree, and the names (not the times) of what sits at the top of /, so a test that drops a
# file or directory there is seen. Not walked: anything else outside those, which is where a CI
# harness keeps its checkouts and its logs, and other work on the machine may write meanwhile.
#
# Left out inside them: the kernel's and the runtime's file systems (/proc, /sys, /dev, /run), the
# temporary directories (/tmp, /var/tmp), what the system itself writes while it runs (/var/log,
# /var/cache, /var/lib/systemd), and the build's own outputs and caches (this repository's target/
# and image/out/, ~/.cargo, ~/.rustup, ~/.cache, ~/.npm).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd -P)
home=$(cd ~ && pwd -P)

roots=()
for path in /etc /usr /bin /sbin /lib /lib32 /lib64 /libx32 /opt /srv /boot /mnt /media /var \
  /root /home "$home" "$repo"; do
  [ -e "$path" ] && roots+=("$path")
done
prune=(/var/tmp /var/log /var/cache /var/lib/systemd
  "$repo/target" "$repo/image/out" "$repo/.git"
  "$home/.cargo" "$home/.rustup" "$home/.cache" "$home/.npm")
# A machine that does other work while the suite runs names its busy places here (colon-separated).
if [ -n "${MC_HOST_STATE_PRUNE:-}" ]; then
  IFS=: read -r -a extra <<<"$MC_HOST_STATE_PRUNE"
  prune+=("${extra[@]}")
fi
args=()
for path in "${prune[@]}"; do
  args+=(-path "$path" -prune -o)
done

{
  find / -mindepth 1 -maxdepth 1 -printf '%p\t%y\n'
  find "${roots[@]}" -xdev "${args[@]}" -printf '%p\t%y\t%s\t%T@\t%m\t%u:%g\t%l\n'
} 2>/dev/null | LC_ALL=C sort -u
find /etc -xdev -type f -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum 2>/dev/null
# The host's network namespace: its links and nftables tables by name (a test that made a
# bridge, a tap or the taps' binding table outside a namespace of its own leaves one here), and
# the named network namespaces.
{
  ip -o link show 2>/dev/null | awk -F': ' '{print "link\t" $2}' | sed 's/@.*//'
  nft list tables 2>/dev/null | sed 's/^/nft\t/'
  ip netns list 2>/dev/null | awk '{print "netns\t" $1}'
} | LC_ALL=C sort -u

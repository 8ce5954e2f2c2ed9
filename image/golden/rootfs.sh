#!/usr/bin/env bash
# The golden image's base root filesystem, called by image/build-golden.sh (which caches its
# output by a hash of this file and its other inputs):
#   a Debian "$SUITE" minbase by debootstrap from $MIRROR, with systemd, Node.js 20, git and
#   ca-certificates from Debian; the pinned CLIs of image/cli-tools.txt from npm; the vm-agent
#   unit; the unprivileged user `dev` that runs the CLIs.
#
# Usage: rootfs.sh WORK_DIR OUT_EXT4   (as root; BUILD_NAME, REPO, MIRROR and SUITE set)
set -euo pipefail
work=$1
out=$2
root=$work/rootfs

progress() { echo "$BUILD_NAME: $*"; }
die() {
  echo "$BUILD_NAME: error: $*" >&2
  exit 1
}

mapfile -t CLIS < <(grep -Ev '^[[:space:]]*(#|$)' "$REPO/image/cli-tools.txt")
# Installed with apt inside the chroot: debootstrap does not resolve deep dependencies well.
PACKAGES=(nodejs git ca-certificates iproute2 procps less)

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
chroot_mounts() {
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
  mount --bind /dev "$root/dev" && mounted+=("$root/dev")
  mount -t devpts devpts "$root/dev/pts" && mounted+=("$root/dev/pts")
}
chroot_unmount() {
  cleanup
  mounted=()
}

# Quiet unless it fails.
quietly() {
  local log
  if ! log=$("$@" 2>&1); then
    echo "$log" | tail -n 40 >&2
    return 1
  fi
}

started=$(date +%s)
progress "debootstrap $SUITE (minbase, systemd) from $MIRROR"
quietly debootstrap --variant=minbase --include=systemd-sysv,udev "$SUITE" "$root" "$MIRROR" ||
  die "debootstrap $SUITE from $MIRROR failed"
progress "  debootstrap took $(($(date +%s) - started)) s"

progress "installing ${PACKAGES[*]} in the rootfs"
# The build host's resolver and apt sources reach the mirror; the image keeps neither.
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo "deb $MIRROR $SUITE main" >"$root/etc/apt/sources.list"
chroot_mounts
quietly chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
  die "apt-get update in the rootfs failed"
quietly chroot "$root" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" ||
  die "apt-get install ${PACKAGES[*]} in the rootfs failed"
chroot "$root" apt-get clean
node_version=$(chroot "$root" node --version) || die "node does not run in the rootfs"
case $node_version in
  v20.*) progress "  Node.js $node_version" ;;
  *) die "the rootfs has Node.js $node_version, not 20" ;;
esac
chroot_unmount

# With the host's npm, which trusts the host's CA store: a fresh chroot's store may lack the CA
# of a proxy between the host and the registry, and that CA must not be baked into the image.
progress "installing ${CLIS[*]} with npm"
quietly npm install --global --prefix "$root/usr/local" --no-audit --no-fund --loglevel=error "${CLIS[@]}" ||
  die "npm install ${CLIS[*]} failed"
for bin in claude codex gemini; do
  [ -x "$root/usr/local/bin/$bin" ] || die "$bin is missing after the npm install"
done
chroot_mounts
for bin in claude codex gemini; do
  version=$(chroot "$root" env HOME=/tmp "/usr/local/bin/$bin" --version </dev/null 2>&1 | tail -n 1) ||
    die "$bin --version fails in the rootfs: $version"
  progress "  $bin $version"
done
chroot_unmount

progress "configuring the guest"
install -m 0644 "$REPO/image/golden/vm-agent.service" "$root/etc/systemd/system/vm-agent.service"
mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
ln -sf /etc/systemd/system/vm-agent.service "$root/etc/systemd/system/sysinit.target.wants/vm-agent.service"
# Nothing in a VM may wait on a console login, a timer that reaches the network, or a
# disk check of a device the VM does not have.
for unit in getty.target serial-getty@ttyS0.service console-getty.service apt-daily.timer \
  apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
  systemd-timesyncd.service systemd-networkd-wait-online.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/bash dev
echo mc-guest >"$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# The root is assembled by the initramfs; no mount may depend on a device name.
: >"$root/etc/fstab"
# Each VM's identity is its own: the agent writes resolv.conf, and systemd makes a machine id.
: >"$root/etc/resolv.conf"
: >"$root/etc/machine-id"
rm -f "$root/etc/apt/sources.list"
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/tmp/"* "$root/root/.npm"

used_mib=$(du -sm "$root" | cut -f1)
size_mib=$((used_mib + used_mib / 8 + 128))
progress "writing the rootfs image (${used_mib} MiB used, ${size_mib} MiB file)"
# No journal: the base is only ever mounted read-only.
quietly mkfs.ext4 -q -F -L mc-rootfs -O ^has_journal -m 0 -E root_owner=0:0 -d "$root" "$out" "${size_mib}M" ||
  die "mkfs.ext4 of the rootfs failed"
rm -rf "$root"
progress "  the rootfs took $(($(date +%s) - started)) s"

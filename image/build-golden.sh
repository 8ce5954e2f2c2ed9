#!/usr/bin/env bash
# Builds the production guest image, only from Debian packages and npm:
#   rootfs.ext4        Debian 13 (trixie) with systemd, Node.js 20, git, ca-certificates and the
#                      pinned CLIs of image/cli-tools.txt; attached read-only and shared by all VMs
#   vmlinux            Debian's 6.1 kernel as an ELF image (QEMU microvm boots it through PVH;
#                      Firecracker boots it as it is)
#   initramfs.cpio.gz  busybox, the virtio, ext4, overlay and vsock modules, the static vm-agent,
#                      and an /init that mounts the base read-only under an overlay whose upper
#                      layer is on the VM's own data disk, then starts systemd
#
# Usage: sudo image/build-golden.sh [OUT_DIR]        (default image/out/golden)
#    or: sudo /usr/share/master-controller/image/build-golden.sh [OUT_DIR]   (from the package;
#        default /var/lib/master-controller/images)
#
# Each image is a version, named by a hash of its inputs, in OUT_DIR/images/<id>/ (with an
# image.json), and OUT_DIR/current links to the newest. Point the daemon at
# OUT_DIR/current/{vmlinux,initramfs.cpio.gz,rootfs.ext4}: each VM records the version it was
# created on and keeps it across hibernation, and a version no VM uses any more is removed.
# Unchanged inputs cost a few seconds; the base rootfs (the slow part) is cached apart, by a hash
# of its own inputs, so a new agent only makes a new initramfs.
#
# Environment:
#   MC_GOLDEN_MIRROR  the Debian mirror (default: the first Debian one in the host's apt sources)
#   MC_GOLDEN_CACHE   where the base rootfs and kernel packages are kept
#                     (default ~/.cache/master-controller/golden)
#   MC_VM_AGENT_BIN   use this vm-agent binary instead of building one
#   MC_TEST_KERNEL_PACKAGE  use this Debian kernel package instead of the newest linux-image-6.1.*
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# From a checkout the default is inside it; from the Debian package, the appliance's image store.
if [ -f "$REPO/Cargo.toml" ]; then
  OUT_DIR=${1:-$REPO/image/out/golden}
else
  OUT_DIR=${1:-/var/lib/master-controller/images}
fi
CACHE_DIR=${MC_GOLDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/master-controller/golden}
BUILD_NAME=build-golden
SUITE=trixie
# shellcheck source=image/lib.sh
. "$REPO/image/lib.sh"

# The test image's modules, plus overlay for the root and vsock for Firecracker's agent channel.
MODULES=(virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  failover net_failover virtio_net virtio_console virtio_blk
  crc16 mbcache jbd2 crc32c_generic ext4 overlay
  vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport)

# The first plain Debian archive in the host's apt sources (one-line or deb822 format).
host_mirror() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  { cat "${files[@]}" 2>/dev/null || true; } |
    grep -Eo '(https?|file)://[^ ]*/debian/?( |$)' | head -n 1 | tr -d ' ' || true
}
MIRROR=${MC_GOLDEN_MIRROR:-$(host_mirror)}
[ -n "$MIRROR" ] || die "no Debian mirror in the host's apt sources; set MC_GOLDEN_MIRROR"
MIRROR=${MIRROR%/}

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
started=$(date +%s)
ensure_packages debootstrap e2fsprogs busybox-static cpio python3
command -v npm >/dev/null || ensure_packages nodejs npm
mkdir -p "$CACHE_DIR" "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
# Concurrent builds would otherwise race for the cache and the current link.
exec 9>"$CACHE_DIR/.lock"
flock 9

resolve_kernel
build_agent

rootfs_key=$(
  {
    echo "suite $SUITE mirror $MIRROR"
    cat "$IMAGE_DIR/golden/rootfs.sh" "$IMAGE_DIR/golden/vm-agent.service" "$IMAGE_DIR/cli-tools.txt"
  } | sha256sum | cut -c1-16
)
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
image_id=$(
  {
    echo "rootfs $rootfs_key"
    echo "kernel $kernel_pkg $kernel_version"
    echo "busybox $busybox_version"
    echo "modules ${MODULES[*]}"
    sha256sum "$agent_bin" | cut -d' ' -f1
    cat "${BASH_SOURCE[0]}" "$IMAGE_DIR/lib.sh" "$IMAGE_DIR/golden/init" "$IMAGE_DIR/extract-vmlinux.py" \
      "$IMAGE_DIR/module-deps.py"
  } | sha256sum | cut -c1-16
)
image_dir=$OUT_DIR/images/$image_id

point_current() {
  ln -sfn "images/$image_id" "$OUT_DIR/.current.$$"
  mv -T "$OUT_DIR/.current.$$" "$OUT_DIR/current"
}
report() {
  progress "image $image_id in $image_dir:"
  local file
  for file in vmlinux initramfs.cpio.gz rootfs.ext4; do
    progress "  $file $(du -h --apparent-size "$image_dir/$file" | cut -f1)" \
      "($(du -h "$image_dir/$file" | cut -f1) on disk)"
  done
  progress "current -> images/$image_id"
}

if [ -f "$image_dir/image.json" ]; then
  point_current
  progress "up to date"
  report
  exit 0
fi

work=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

rootfs_cached=$CACHE_DIR/rootfs-$rootfs_key.ext4
if [ -f "$rootfs_cached" ]; then
  progress "using the cached base rootfs $(basename "$rootfs_cached")"
else
  BUILD_NAME=$BUILD_NAME REPO=$REPO MIRROR=$MIRROR SUITE=$SUITE \
    bash "$IMAGE_DIR/golden/rootfs.sh" "$work" "$work/rootfs.ext4"
  # The newest base only: each is over a gigabyte, and images that use an older one keep their
  # own link to it.
  find "$CACHE_DIR" -maxdepth 1 -name 'rootfs-*.ext4' -delete
  mv "$work/rootfs.ext4" "$rootfs_cached"
fi

unpack_kernel "$work"

progress "assembling the initramfs"
root=$work/initramfs
initramfs_base "$root" "${MODULES[@]}"
mkdir -p "$root/mnt" "$root/newroot"
install -m 0755 "$agent_bin" "$root/sbin/vm-agent"
install -m 0755 "$IMAGE_DIR/golden/init" "$root/init"
pack_initramfs "$root" "$work/initramfs.cpio.gz"

mkdir -p "$work/image"
mv "$work/vmlinux" "$work/initramfs.cpio.gz" "$work/image/"
# A hard link where the cache shares the filesystem; else a sparse copy.
ln "$rootfs_cached" "$work/image/rootfs.ext4" 2>/dev/null ||
  cp --sparse=always --reflink=auto "$rootfs_cached" "$work/image/rootfs.ext4" ||
  die "cannot place the rootfs in the image"
chmod 0444 "$work/image/rootfs.ext4"
cat >"$work/image/image.json" <<JSON
{
  "id": "$image_id",
  "rootfs": "$rootfs_key",
  "suite": "$SUITE",
  "kernel": "$kernel_pkg $kernel_version",
  "clis": [$(grep -Ev '^[[:space:]]*(#|$)' "$IMAGE_DIR/cli-tools.txt" | sed 's/.*/"&"/' | paste -sd,)],
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
JSON
mkdir -p "$OUT_DIR/images"
# image.json is written last, inside the directory that appears whole, so a half-built image is
# never taken for one.
mv -T "$work/image" "$image_dir"
point_current
progress "built in $(($(date +%s) - started)) s"
report

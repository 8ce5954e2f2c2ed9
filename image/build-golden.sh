#!/usr/bin/env bash
# Builds the production guest image for an operator (not run in CI, which boots the test image):
#   OUT_DIR/rootfs.ext4  Ubuntu 22.04 with Node 20, the three CLIs at pinned versions, and
#                        vm-agent as a systemd service; attached read-only and shared by all VMs
#   OUT_DIR/vmlinux      a kernel built from Debian's 6.1 source with Firecracker's guest config
#
# Usage: sudo image/build-golden.sh [OUT_DIR]        (default image/out/golden)
# Environment:
#   MC_GOLDEN_MIRROR    Ubuntu mirror for debootstrap (default http://archive.ubuntu.com/ubuntu)
#   MC_GOLDEN_SIZE_MIB  size of rootfs.ext4 (default 6144)
#   MC_NODE_TARBALL     a node-v20.*-linux-x64.tar.xz to install; downloaded from nodejs.org if unset
#   MC_KERNEL_CONFIG    kernel config (default ../shared/reference/firecracker-guest-kernel-x86_64-6.1.config)
# Then point GOLDEN_ROOTFS and GOLDEN_KERNEL at the outputs, and build the golden snapshot with
# scripts/build-golden-snapshot.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${1:-$REPO/image/out/golden}
MIRROR=${MC_GOLDEN_MIRROR:-http://archive.ubuntu.com/ubuntu}
SIZE_MIB=${MC_GOLDEN_SIZE_MIB:-6144}
KERNEL_CONFIG=${MC_KERNEL_CONFIG:-$REPO/../shared/reference/firecracker-guest-kernel-x86_64-6.1.config}
NODE_VERSION=20.19.5
# The pinned CLIs, shared with the tests (scripts/install-cli-tools.sh).
mapfile -t CLIS < <(grep -Ev '^[[:space:]]*(#|$)' "$REPO/image/cli-tools.txt")

progress() { echo "build-golden: $*"; }
die() {
  echo "build-golden: error: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
[ -f "$KERNEL_CONFIG" ] || die "no kernel config at $KERNEL_CONFIG"
mkdir -p "$OUT_DIR"
work=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
rootfs=$work/rootfs
cleanup() {
  for mount in proc sys dev/pts dev; do umount "$rootfs/$mount" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

progress "installing build tools"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends debootstrap e2fsprogs xz-utils curl ca-certificates \
  build-essential bc bison flex libelf-dev libssl-dev dwarves python3 linux-source-6.1 >/dev/null

progress "building vm-agent (static)"
(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
  --no-default-features --features agent --bin vm-agent \
  --target x86_64-unknown-linux-gnu --target-dir "$REPO/target/agent")
agent=$REPO/target/agent/x86_64-unknown-linux-gnu/release/vm-agent

progress "debootstrapping Ubuntu 22.04 from $MIRROR"
debootstrap --variant=minbase --components=main,universe \
  --include=systemd,systemd-sysv,udev,iproute2,iputils-ping,ca-certificates,curl,git,sudo,less,procps,xz-utils \
  jammy "$rootfs" "$MIRROR" >/dev/null

progress "installing Node $NODE_VERSION"
node_tarball=${MC_NODE_TARBALL:-$work/node.tar.xz}
if [ -z "${MC_NODE_TARBALL:-}" ]; then
  curl -fsSL "https://nodejs.org/dist/v$NODE_VERSION/node-v$NODE_VERSION-linux-x64.tar.xz" -o "$node_tarball"
fi
tar -xJf "$node_tarball" -C "$rootfs/usr/local" --strip-components=1

progress "installing ${CLIS[*]}"
mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
mount -t devpts devpts "$rootfs/dev/pts"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" /usr/local/bin/npm install -g --no-fund --no-audit "${CLIS[@]}" >/dev/null

progress "installing vm-agent as a service"
install -m 0755 "$agent" "$rootfs/usr/local/bin/vm-agent"
cat >"$rootfs/etc/systemd/system/vm-agent.service" <<'UNIT'
[Unit]
Description=master-controller guest agent
After=local-fs.target

[Service]
ExecStart=/usr/local/bin/vm-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
UNIT
chroot "$rootfs" systemctl enable vm-agent.service >/dev/null 2>&1
chroot "$rootfs" useradd --create-home --uid 1000 --shell /bin/bash dev
# The per-VM data disk (the second drive) holds the user's home; the base rootfs stays read-only.
cat >"$rootfs/etc/fstab" <<'FSTAB'
/dev/vdb /home/dev ext4 defaults,nofail 0 2
tmpfs    /tmp      tmpfs defaults 0 0
FSTAB
echo "mc-guest" >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"
for mount in dev/pts dev sys proc; do umount "$rootfs/$mount"; done

progress "writing rootfs.ext4 ($SIZE_MIB MiB)"
mkfs.ext4 -q -F -L mc-rootfs -d "$rootfs" "$work/rootfs.ext4" "${SIZE_MIB}M"

progress "building the guest kernel from Debian's 6.1 source"
tar -xf /usr/src/linux-source-6.1.tar.xz -C "$work"
kernel_src=$(find "$work" -maxdepth 1 -type d -name 'linux-source-6.1*' | head -n 1)
cp "$KERNEL_CONFIG" "$kernel_src/.config"
make -C "$kernel_src" olddefconfig >/dev/null
make -C "$kernel_src" -j"$(nproc)" vmlinux >/dev/null

mv "$work/rootfs.ext4" "$OUT_DIR/rootfs.ext4"
cp "$kernel_src/vmlinux" "$OUT_DIR/vmlinux"
progress "wrote $OUT_DIR/rootfs.ext4 and $OUT_DIR/vmlinux"

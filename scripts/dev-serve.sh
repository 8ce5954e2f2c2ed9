#!/usr/bin/env bash
# Quick start: builds and runs the daemon on 127.0.0.1:4000 with its state in ./.dev, and prints
# the admin token to use with the API. Run as root, it also builds the guest test image and
# enables VMs on QEMU (KVM when guests boot under it, else TCG) with their bridge fcbr0
# (192.168.100.1/24). Stop it with Ctrl-C; VMs keep running and are adopted at the next start.
#
#   sudo scripts/dev-serve.sh            VMs of the busybox test image (fast; no real CLIs)
#   sudo scripts/dev-serve.sh --golden   VMs of the golden image with the real CLIs: builds the
#                                        image (about 4 minutes the first time) and its golden
#                                        snapshot, each only when its inputs changed
# With --golden, MC_MODEL_BASE_URL and MC_MODEL_API_KEY name the model endpoint the CLIs use.
set -euo pipefail
cd "$(dirname "$0")/.."

golden=
case "${1:-}" in
  --golden) golden=1 ;;
  "") ;;
  *) echo "usage: scripts/dev-serve.sh [--golden]" >&2; exit 2 ;;
esac

command -v cargo >/dev/null || { echo "dev-serve.sh: needs a Rust toolchain (1.90 or newer) on PATH" >&2; exit 1; }
mkdir -p .dev
chmod 700 .dev
if [ ! -s .dev/admin-token ]; then
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > .dev/admin-token)
fi

vm_env=()
if [ "$(id -u)" -eq 0 ]; then
  missing=()
  for pkg in qemu-system-x86 e2fsprogs iproute2 jq; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dev-serve.sh: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  if [ -n "$golden" ]; then
    echo "dev-serve.sh: building the golden image (cached; about 4 minutes the first time)"
    image/build-golden.sh "$PWD/.dev/images"
    current=$PWD/.dev/images/current
    vm_env=(
      MC_HYPERVISOR=qemu
      MC_QEMU_USER="${MC_QEMU_USER:-nobody}"
      GOLDEN_KERNEL="$current/vmlinux"
      MC_INITRD="$current/initramfs.cpio.gz"
      GOLDEN_ROOTFS="$current/rootfs.ext4"
      GOLDEN_SNAPSHOT="$PWD/.dev/golden/state"
      MC_VM_VCPUS="${MC_VM_VCPUS:-2}"
      MC_VM_MEMORY_MIB="${MC_VM_MEMORY_MIB:-1024}"
      MC_VM_DATA_DISK_MIB="${MC_VM_DATA_DISK_MIB:-2048}"
    )
    [ -n "${MC_MODEL_BASE_URL:-}" ] ||
      echo "dev-serve.sh: MC_MODEL_BASE_URL is unset: the CLIs will call their vendors (logins needed)"
  else
    echo "dev-serve.sh: building the guest test image"
    image/build-test-image.sh
    vm_env=(
      MC_HYPERVISOR=qemu
      MC_QEMU_USER="${MC_QEMU_USER:-nobody}"
      GOLDEN_KERNEL="$PWD/image/out/test/vmlinux"
      MC_INITRD="$PWD/image/out/test/initramfs.cpio.gz"
      MC_VM_VCPUS="${MC_VM_VCPUS:-1}"
      MC_VM_MEMORY_MIB="${MC_VM_MEMORY_MIB:-512}"
      MC_VM_DATA_DISK_MIB="${MC_VM_DATA_DISK_MIB:-1024}"
    )
  fi
else
  echo "dev-serve.sh: not root, so VMs are off (taps and the bridge need root); the API still runs"
fi

echo "dev-serve.sh: building (release)"
cargo build --release --locked
if [ -n "$golden" ]; then
  # The snapshot belongs to one image version: rebuilt when `current` moved.
  image_id=$(basename "$(readlink "$PWD/.dev/images/current")")
  if [ "$(cat .dev/golden/image-id 2>/dev/null)" != "$image_id" ]; then
    echo "dev-serve.sh: building the golden snapshot of image $image_id"
    mkdir -p .dev/golden
    env "${vm_env[@]}" MC_ADMIN_TOKEN_FILE="$PWD/.dev/admin-token" MC_DATA_DIR="$PWD/.dev/data" \
      target/release/master-controller golden-snapshot
    echo "$image_id" >.dev/golden/image-id
  fi
fi
echo "dev-serve.sh: admin token is in .dev/admin-token; try:"
echo "  curl -H \"Authorization: Bearer \$(cat .dev/admin-token)\" http://127.0.0.1:4000/api/admin/system/stats"
exec env "${vm_env[@]}" MC_ADMIN_TOKEN_FILE="$PWD/.dev/admin-token" target/release/master-controller serve \
  --listen "${MC_LISTEN:-127.0.0.1:4000}" --data-dir "$PWD/.dev/data"

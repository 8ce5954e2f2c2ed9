#!/usr/bin/env bash
# Quick start: builds and runs the daemon on 127.0.0.1:4000 with its state in ./.dev, and prints
# the admin token to use with the API. Run as root, it also builds the guest test image and
# enables VMs on QEMU (KVM when guests boot under it, else TCG) with their bridge fcbr0
# (192.168.100.1/24). Stop it with Ctrl-C; VMs keep running and are adopted at the next start.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "dev-serve.sh: needs a Rust toolchain (1.85 or newer) on PATH" >&2; exit 1; }
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
  echo "dev-serve.sh: building the guest test image"
  image/build-test-image.sh
  vm_env=(
    MC_HYPERVISOR=qemu
    GOLDEN_KERNEL="$PWD/image/out/test/vmlinux"
    MC_INITRD="$PWD/image/out/test/initramfs.cpio.gz"
    MC_VM_VCPUS="${MC_VM_VCPUS:-1}"
    MC_VM_MEMORY_MIB="${MC_VM_MEMORY_MIB:-512}"
    MC_VM_DATA_DISK_MIB="${MC_VM_DATA_DISK_MIB:-1024}"
  )
else
  echo "dev-serve.sh: not root, so VMs are off (taps and the bridge need root); the API still runs"
fi

echo "dev-serve.sh: building (release)"
cargo build --release --locked
echo "dev-serve.sh: admin token is in .dev/admin-token; try:"
echo "  curl -H \"Authorization: Bearer \$(cat .dev/admin-token)\" http://127.0.0.1:4000/api/admin/system/stats"
exec env "${vm_env[@]}" MC_ADMIN_TOKEN_FILE="$PWD/.dev/admin-token" target/release/master-controller serve \
  --listen "${MC_LISTEN:-127.0.0.1:4000}" --data-dir "$PWD/.dev/data"

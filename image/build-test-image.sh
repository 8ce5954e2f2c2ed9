#!/usr/bin/env bash
# Builds the small guest test image that the tests and the quick start boot under QEMU microvm:
# an uncompressed ELF kernel and a busybox initramfs that runs vm-agent.
#
# Usage: image/build-test-image.sh [OUT_DIR]
#   OUT_DIR defaults to image/out/test in the repository; it receives vmlinux and
#   initramfs.cpio.gz. A relative OUT_DIR is taken from the current directory.
#
# Environment:
#   MC_VM_AGENT_BIN       use this vm-agent binary instead of building it with cargo
#   MC_TEST_KERNEL_PACKAGE use this Debian kernel package instead of the newest linux-image-6.1.*-amd64
#   MC_IMAGE_CACHE        where downloaded packages are kept (default image/out/cache)
#
# Why an extracted ELF kernel and these modules: QEMU boots an ELF vmlinux through PVH, which is
# reliable under TCG where the bzImage is not, and Debian builds the virtio drivers as modules.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${1:-$REPO/image/out/test}
CACHE_DIR=${MC_IMAGE_CACHE:-$REPO/image/out/cache}
BUILD_NAME=build-test-image
# shellcheck source=image/lib.sh
. "$REPO/image/lib.sh"

# Load order matters: busybox insmod does not resolve dependencies. module-deps.py adds any
# missing dependency ahead of its user. crc32c_generic is not a symbol dependency of ext4 but it
# is requested at mount time for metadata checksums, which mkfs.ext4 enables by default.
MODULES=(virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  failover net_failover virtio_net virtio_console virtio_blk
  crc16 mbcache jbd2 crc32c_generic ext4)

ensure_packages busybox-static cpio python3
resolve_kernel
build_agent

busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
inputs_hash=$(
  {
    echo "kernel $kernel_pkg $kernel_version"
    echo "busybox $busybox_version"
    echo "modules ${MODULES[*]}"
    sha256sum "$agent_bin" | cut -d' ' -f1
    cat "${BASH_SOURCE[0]}" "$IMAGE_DIR/lib.sh" "$IMAGE_DIR/init" "$IMAGE_DIR/extract-vmlinux.py" "$IMAGE_DIR/module-deps.py" \
      "$IMAGE_DIR/test-cli/claude" "$REPO/tests/support/fake-login-cli"
  } | sha256sum | cut -d' ' -f1
)

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
# Concurrent builds into the same OUT_DIR (parallel test runs) would otherwise race.
exec 9>"$OUT_DIR/.lock"
flock 9

if [ -f "$OUT_DIR/vmlinux" ] && [ -f "$OUT_DIR/initramfs.cpio.gz" ] &&
  [ "$(cat "$OUT_DIR/.inputs-hash" 2>/dev/null)" = "$inputs_hash" ]; then
  progress "up to date"
  exit 0
fi

# Inside OUT_DIR so the final renames stay on one filesystem and are atomic.
work=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

unpack_kernel "$work"

progress "assembling the initramfs"
root=$work/root
initramfs_base "$root" "${MODULES[@]}"
mkdir -p "$root/data"
install -m 0755 "$agent_bin" "$root/sbin/vm-agent"
install -m 0755 "$IMAGE_DIR/init" "$root/init"
# A scripted stand-in for Claude Code, so prompts can run through a real guest (the real CLIs are
# too heavy for this image).
install -m 0755 "$IMAGE_DIR/test-cli/claude" "$root/usr/local/bin/claude"
# The scripted logins of the CLIs, for the login relay tests; the scripted claude hands its `auth`
# commands to it. (codex and gemini stay absent: a prompt test checks the missing-CLI error.)
install -m 0755 "$REPO/tests/support/fake-login-cli" "$root/usr/local/bin/fake-login-cli"
echo "mc-guest" >"$root/etc/hostname"
pack_initramfs "$root" "$work/initramfs.cpio.gz"

# The hash goes last and only after both files are in place, so an interrupted build is never
# taken for an up-to-date one.
rm -f "$OUT_DIR/.inputs-hash"
mv "$work/vmlinux" "$OUT_DIR/vmlinux"
mv "$work/initramfs.cpio.gz" "$OUT_DIR/initramfs.cpio.gz"
echo "$inputs_hash" >"$work/inputs-hash"
mv "$work/inputs-hash" "$OUT_DIR/.inputs-hash"
progress "wrote $OUT_DIR/vmlinux ($(du -h "$OUT_DIR/vmlinux" | cut -f1)) and" \
  "$OUT_DIR/initramfs.cpio.gz ($(du -h "$OUT_DIR/initramfs.cpio.gz" | cut -f1))"

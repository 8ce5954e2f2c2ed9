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
IMAGE_DIR=$REPO/image
OUT_DIR=${1:-$REPO/image/out/test}
CACHE_DIR=${MC_IMAGE_CACHE:-$REPO/image/out/cache}

# Load order matters: busybox insmod does not resolve dependencies. module-deps.py adds any
# missing dependency ahead of its user. crc32c_generic is not a symbol dependency of ext4 but it
# is requested at mount time for metadata checksums, which mkfs.ext4 enables by default.
MODULES=(virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  failover net_failover virtio_net virtio_console virtio_blk
  crc16 mbcache jbd2 crc32c_generic ext4)

progress() { echo "build-test-image: $*"; }
die() {
  echo "build-test-image: error: $*" >&2
  exit 1
}

# /usr/bin/python3 rather than whatever is first on PATH: the helpers need the lzma module, which
# a self-built Python (pyenv and the like) may lack.
PYTHON=/usr/bin/python3

command -v apt-get >/dev/null || die "needs a Debian host with apt-get"

apt_updated=
apt_update() {
  if [ -z "$apt_updated" ]; then
    [ "$(id -u)" -eq 0 ] || die "apt-get update needs root"
    progress "updating the package lists"
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
}

# Installed only when missing, so a prepared host needs no network for this step.
missing=()
for pkg in busybox-static cpio python3; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "${missing[*]} missing and not root to install them"
  apt_update
  progress "installing ${missing[*]}"
  # Quiet unless it fails: apt prints debconf chatter on stderr even on success.
  if ! apt_log=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" 2>&1); then
    echo "$apt_log" >&2
    die "apt-get install ${missing[*]} failed"
  fi
fi
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing although busybox-static is installed"

newest_kernel_package() {
  # Plain flavour only: -cloud lacks drivers and -rt behaves differently under TCG.
  apt-cache pkgnames linux-image-6.1. | grep -E '^linux-image-6\.1\.[0-9]+-[0-9]+-amd64$' | sort -V | tail -n 1
}
resolve_kernel() {
  kernel_pkg=${MC_TEST_KERNEL_PACKAGE:-}
  if [ -z "$kernel_pkg" ]; then
    kernel_pkg=$(newest_kernel_package || true)
    if [ -z "$kernel_pkg" ]; then
      apt_update
      kernel_pkg=$(newest_kernel_package || true)
    fi
    [ -n "$kernel_pkg" ] || die "no linux-image-6.1.*-amd64 package in the apt sources"
  fi
  kernel_version=$(apt-cache show --no-all-versions "$kernel_pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
  [ -n "$kernel_version" ] || die "apt knows no version of $kernel_pkg"
}

mkdir -p "$CACHE_DIR"
# Each apt-cache call costs about a second where apt keeps no binary cache (Docker's default),
# which would dominate the up-to-date check. The answer only changes when apt-get update
# replaces a list file, which changes the lists directory's mtime.
apt_lists_key="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo none) ${MC_TEST_KERNEL_PACKAGE:-newest}"
resolved_file=$CACHE_DIR/kernel-package
kernel_pkg='' kernel_version=''
if [ -f "$resolved_file" ]; then
  { read -r cached_key && read -r kernel_pkg kernel_version; } <"$resolved_file" || true
  [ "${cached_key:-}" = "$apt_lists_key" ] || kernel_pkg=
fi
if [ -z "$kernel_pkg" ] || [ -z "$kernel_version" ]; then
  resolve_kernel
  apt_lists_key="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo none) ${MC_TEST_KERNEL_PACKAGE:-newest}"
  printf '%s\n%s %s\n' "$apt_lists_key" "$kernel_pkg" "$kernel_version" >"$resolved_file.$$"
  mv "$resolved_file.$$" "$resolved_file"
fi
kernel_deb=$CACHE_DIR/${kernel_pkg}_${kernel_version//:/%3a}_amd64.deb

agent_bin=${MC_VM_AGENT_BIN:-}
if [ -n "$agent_bin" ]; then
  [ -f "$agent_bin" ] || die "MC_VM_AGENT_BIN=$agent_bin is not a file"
else
  command -v cargo >/dev/null || die "cargo is not on PATH; build vm-agent or set MC_VM_AGENT_BIN"
  progress "building vm-agent (static)"
  # Static, so the initramfs needs no libc; its own target dir, so RUSTFLAGS do not invalidate
  # the main build's cache.
  (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
    --no-default-features --features agent --bin vm-agent \
    --target x86_64-unknown-linux-gnu --target-dir "$REPO/target/agent") ||
    die "cargo build of vm-agent failed"
  agent_bin=$REPO/target/agent/x86_64-unknown-linux-gnu/release/vm-agent
fi

busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
inputs_hash=$(
  {
    echo "kernel $kernel_pkg $kernel_version"
    echo "busybox $busybox_version"
    echo "modules ${MODULES[*]}"
    sha256sum "$agent_bin" | cut -d' ' -f1
    cat "${BASH_SOURCE[0]}" "$IMAGE_DIR/init" "$IMAGE_DIR/extract-vmlinux.py" "$IMAGE_DIR/module-deps.py" \
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

if [ -f "$kernel_deb" ]; then
  progress "using cached $(basename "$kernel_deb")"
else
  progress "downloading kernel package $kernel_pkg $kernel_version"
  mkdir "$work/download"
  # The sandbox user _apt cannot write into a root-owned work tree; root is fine for a download.
  (cd "$work/download" && apt-get download -qq -o APT::Sandbox::User=root "$kernel_pkg=$kernel_version") ||
    die "apt-get download $kernel_pkg=$kernel_version failed"
  downloaded=("$work"/download/*.deb)
  [ -f "${downloaded[0]}" ] || die "apt-get download left no .deb"
  # Older kernels are 70 MB each and never used again.
  find "$CACHE_DIR" -maxdepth 1 -name 'linux-image-*.deb' -delete
  mv "${downloaded[0]}" "$kernel_deb"
fi

progress "unpacking $(basename "$kernel_deb")"
dpkg-deb -x "$kernel_deb" "$work/kernel" || die "dpkg-deb -x $kernel_deb failed"
vmlinuz=$(find "$work/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
[ -n "$vmlinuz" ] || die "$kernel_deb has no /boot/vmlinuz-*"
modules_dir=$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)
[ -n "$modules_dir" ] || die "$kernel_deb has no /lib/modules/<version>"

progress "extracting vmlinux from $(basename "$vmlinuz")"
"$PYTHON" "$IMAGE_DIR/extract-vmlinux.py" "$vmlinuz" "$work/vmlinux" | sed 's/^/build-test-image:   /' ||
  die "extracting vmlinux from $vmlinuz failed"
[ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ] ||
  die "the extracted vmlinux is not an ELF file"

progress "assembling the initramfs"
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/modules,etc,dev,proc,sys,tmp,run,data,root}
cp "$BUSYBOX" "$root/bin/busybox"
# Links made at build time, so /init can use applets before anything is mounted.
"$BUSYBOX" --list-full | while read -r applet; do
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
[ -e "$root/bin/sh" ] || die "busybox has no sh applet"

"$PYTHON" "$IMAGE_DIR/module-deps.py" "$modules_dir" "${MODULES[@]}" >"$work/modules" ||
  die "resolving kernel modules failed"
while read -r name path; do
  cp "$modules_dir/$path" "$root/lib/modules/$name.ko"
  echo "$name" >>"$root/lib/modules/load-order"
done <"$work/modules"
progress "  modules: $(paste -sd' ' "$root/lib/modules/load-order")"

install -m 0755 "$agent_bin" "$root/sbin/vm-agent"
install -m 0755 "$IMAGE_DIR/init" "$root/init"
# A scripted stand-in for Claude Code, so prompts can run through a real guest (the real CLIs are
# too heavy for this image).
install -m 0755 "$IMAGE_DIR/test-cli/claude" "$root/usr/local/bin/claude"
# The scripted logins of the CLIs, for the login relay tests; the scripted claude hands its `auth`
# commands to it. (codex and gemini stay absent: a prompt test checks the missing-CLI error.)
install -m 0755 "$REPO/tests/support/fake-login-cli" "$root/usr/local/bin/fake-login-cli"
echo "mc-guest" >"$root/etc/hostname"
# The kernel gives init a console only if the node exists before devtmpfs is mounted. Making it
# needs CAP_MKNOD; without it /init still reopens the console after mounting devtmpfs.
mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --quiet --null -o -H newc --owner=0:0) |
  gzip -6 -n >"$work/initramfs.cpio.gz"

# The hash goes last and only after both files are in place, so an interrupted build is never
# taken for an up-to-date one.
rm -f "$OUT_DIR/.inputs-hash"
mv "$work/vmlinux" "$OUT_DIR/vmlinux"
mv "$work/initramfs.cpio.gz" "$OUT_DIR/initramfs.cpio.gz"
echo "$inputs_hash" >"$work/inputs-hash"
mv "$work/inputs-hash" "$OUT_DIR/.inputs-hash"
progress "wrote $OUT_DIR/vmlinux ($(du -h "$OUT_DIR/vmlinux" | cut -f1)) and" \
  "$OUT_DIR/initramfs.cpio.gz ($(du -h "$OUT_DIR/initramfs.cpio.gz" | cut -f1))"

# Shared steps of the guest image builds (sourced by build-test-image.sh and build-golden.sh):
# progress lines, Debian packages on the build host, the Debian kernel as an ELF vmlinux with its
# modules in load order, and the static vm-agent. The caller sets BUILD_NAME (the prefix of every
# line), REPO and CACHE_DIR before sourcing.

IMAGE_DIR=$REPO/image
# /usr/bin/python3 rather than whatever is first on PATH: the helpers need the lzma module, which
# a self-built Python (pyenv and the like) may lack.
PYTHON=/usr/bin/python3

progress() { echo "$BUILD_NAME: $*"; }
die() {
  echo "$BUILD_NAME: error: $*" >&2
  exit 1
}

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

# Installs the named Debian packages on the build host, only those missing, so a prepared host
# needs no network for this step.
ensure_packages() {
  local missing=() pkg apt_log
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" -eq 0 ] || die "${missing[*]} missing and not root to install them"
  apt_update
  progress "installing ${missing[*]}"
  # Quiet unless it fails: apt prints debconf chatter on stderr even on success.
  if ! apt_log=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" 2>&1); then
    echo "$apt_log" >&2
    die "apt-get install ${missing[*]} failed"
  fi
}

newest_kernel_package() {
  # Plain flavour only: -cloud lacks drivers and -rt behaves differently under TCG.
  apt-cache pkgnames linux-image-6.1. | grep -E '^linux-image-6\.1\.[0-9]+-[0-9]+-amd64$' | sort -V | tail -n 1
}

# Sets kernel_pkg, kernel_version and kernel_deb: Debian's newest 6.1 kernel package (or
# MC_TEST_KERNEL_PACKAGE), where its .deb is cached. Each apt-cache call costs about a second
# where apt keeps no binary cache (Docker's default), which would dominate an up-to-date check;
# the answer only changes when apt-get update replaces a list file, which changes the lists
# directory's mtime, so it is cached under that key.
resolve_kernel() {
  mkdir -p "$CACHE_DIR"
  local key resolved_file=$CACHE_DIR/kernel-package cached_key=
  key="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo none) ${MC_TEST_KERNEL_PACKAGE:-newest}"
  kernel_pkg='' kernel_version=''
  if [ -f "$resolved_file" ]; then
    { read -r cached_key && read -r kernel_pkg kernel_version; } <"$resolved_file" || true
    [ "${cached_key:-}" = "$key" ] || kernel_pkg=
  fi
  if [ -z "$kernel_pkg" ] || [ -z "$kernel_version" ]; then
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
    key="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo none) ${MC_TEST_KERNEL_PACKAGE:-newest}"
    printf '%s\n%s %s\n' "$key" "$kernel_pkg" "$kernel_version" >"$resolved_file.$$"
    mv "$resolved_file.$$" "$resolved_file"
  fi
  kernel_deb=$CACHE_DIR/${kernel_pkg}_${kernel_version//:/%3a}_amd64.deb
}

# Sets agent_bin: MC_VM_AGENT_BIN, the installed package's, or a static vm-agent built from this
# repository.
build_agent() {
  agent_bin=${MC_VM_AGENT_BIN:-}
  if [ -n "$agent_bin" ]; then
    [ -f "$agent_bin" ] || die "MC_VM_AGENT_BIN=$agent_bin is not a file"
    return 0
  fi
  # Run from the Debian package (/usr/share/master-controller/image, no sources beside it): the
  # package's own static agent, the one that matches its daemon.
  if [ ! -f "$REPO/Cargo.toml" ] && [ -x /usr/lib/master-controller/vm-agent ]; then
    agent_bin=/usr/lib/master-controller/vm-agent
    return 0
  fi
  command -v cargo >/dev/null || die "cargo is not on PATH; build vm-agent or set MC_VM_AGENT_BIN"
  progress "building vm-agent (static)"
  # Static, so the initramfs needs no libc; its own target dir, so RUSTFLAGS do not invalidate
  # the main build's cache.
  (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
    --no-default-features --features agent --bin vm-agent \
    --target x86_64-unknown-linux-gnu --target-dir "$REPO/target/agent") ||
    die "cargo build of vm-agent failed"
  agent_bin=$REPO/target/agent/x86_64-unknown-linux-gnu/release/vm-agent
}

# Downloads the kernel package into the cache (once) and unpacks it into $1/kernel. Sets
# modules_dir and writes $1/vmlinux, the ELF kernel QEMU boots through PVH (reliable under TCG
# where the bzImage is not) and Firecracker boots as it is.
unpack_kernel() {
  local work=$1 downloaded vmlinuz
  if [ -f "$kernel_deb" ]; then
    progress "using cached $(basename "$kernel_deb")"
  else
    progress "downloading kernel package $kernel_pkg $kernel_version"
    mkdir -p "$work/download"
    # The sandbox user _apt cannot write into a root-owned work tree; root is fine for a download.
    (cd "$work/download" && apt-get download -qq -o APT::Sandbox::User=root "$kernel_pkg=$kernel_version") ||
      die "apt-get download $kernel_pkg=$kernel_version failed"
    downloaded=("$work"/download/*.deb)
    [ -f "${downloaded[0]}" ] || die "apt-get download left no .deb"
    # Older kernels are 70 MB each and never used again.
    find "$CACHE_DIR" -maxdepth 1 -name 'linux-image-*.deb' -delete
    mv "${downloaded[0]}" "$kernel_deb.$$"
    mv "$kernel_deb.$$" "$kernel_deb"
  fi
  progress "unpacking $(basename "$kernel_deb")"
  dpkg-deb -x "$kernel_deb" "$work/kernel" || die "dpkg-deb -x $kernel_deb failed"
  vmlinuz=$(find "$work/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
  [ -n "$vmlinuz" ] || die "$kernel_deb has no /boot/vmlinuz-*"
  modules_dir=$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  [ -n "$modules_dir" ] || die "$kernel_deb has no /lib/modules/<version>"
  progress "extracting vmlinux from $(basename "$vmlinuz")"
  "$PYTHON" "$IMAGE_DIR/extract-vmlinux.py" "$vmlinuz" "$work/vmlinux" | sed "s/^/$BUILD_NAME:   /" ||
    die "extracting vmlinux from $vmlinuz failed"
  [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ] ||
    die "the extracted vmlinux is not an ELF file"
}

# Starts an initramfs tree at $1 with busybox (and its applet links, so /init can use them before
# anything is mounted) and the modules named after it, with their dependencies, in load order.
# Busybox insmod does not resolve dependencies; module-deps.py puts each ahead of its user.
initramfs_base() {
  local root=$1 applet name path
  shift
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/modules,etc,dev,proc,sys,tmp,run,root}
  cp /bin/busybox "$root/bin/busybox"
  /bin/busybox --list-full | while read -r applet; do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  [ -e "$root/bin/sh" ] || die "busybox has no sh applet"
  "$PYTHON" "$IMAGE_DIR/module-deps.py" "$modules_dir" "$@" >"$root/.modules" ||
    die "resolving kernel modules failed"
  while read -r name path; do
    cp "$modules_dir/$path" "$root/lib/modules/$name.ko"
    echo "$name" >>"$root/lib/modules/load-order"
  done <"$root/.modules"
  rm "$root/.modules"
  progress "  modules: $(paste -sd' ' "$root/lib/modules/load-order")"
  # The kernel gives init a console only if the node exists before devtmpfs is mounted. Making
  # it needs CAP_MKNOD; without it /init still reopens the console after mounting devtmpfs.
  mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true
}

# Packs the tree $1 into the gzip'd newc archive $2, reproducibly.
pack_initramfs() {
  (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --quiet --null -o -H newc --owner=0:0) |
    gzip -6 -n >"$2"
}

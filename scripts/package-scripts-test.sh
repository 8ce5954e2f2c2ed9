#!/usr/bin/env bash
# The maintainer scripts (appliance/deb/) on a system that systemd runs, the branch the dpkg test
# in a temporary root never takes (there DPKG_ROOT is set, and systemd is left alone). Run by
# scripts/package-test.sh.
#
# Why this way: the scripts then act on / itself (useradd, /etc, /var/lib), and the host must stay
# as it was. So they run in a private mount namespace in which /etc and /var are overlays whose
# writes land in a temporary directory, and /run is an empty tmpfs holding /run/systemd/system (the
# scripts' sign of a running systemd). The real useradd runs; systemctl is a stand-in on PATH that
# records its arguments, which are then compared with what each step must ask for.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "package-scripts-test: $*"; }
fail() {
  echo "package-scripts-test: FAIL: $*" >&2
  exit 1
}

if [ "${1:-}" != --inside ]; then
  [ "$(id -u)" -eq 0 ] || fail "run as root (it mounts in a private namespace)"
  work=$(mktemp -d "${TMPDIR:-/tmp}/mc-package-scripts.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  unshare --mount --propagation private "$0" --inside "$work"
  exit 0
fi

work=$2
for dir in etc var; do
  mkdir -p "$work/$dir.upper" "$work/$dir.work"
  mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$work/$dir.upper,workdir=$work/$dir.work" "/$dir"
done
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system "$work/bin"
cat >"$work/bin/systemctl" <<STANDIN
#!/bin/sh
echo "\$*" >>"$work/calls"
STANDIN
chmod 0755 "$work/bin/systemctl"
export PATH="$work/bin:$PATH"
unset DPKG_ROOT

# Runs one maintainer script and compares the systemctl calls it made with $1 (one per line).
step() {
  local want=$1 script=$2 got
  shift 2
  : >"$work/calls"
  "$REPO/appliance/deb/$script" "$@" >/dev/null || fail "$script $* exited $?"
  got=$(cat "$work/calls")
  [ "$got" = "$want" ] || fail "$script $*: systemctl was asked '${got//$'\n'/; }', expected '${want//$'\n'/; }'"
  if [ -n "$want" ]; then
    say "  $script $*: systemctl ${want//$'\n'/; systemctl }"
  else
    say "  $script $*: systemctl not called"
  fi
}
mode() { stat -c '%a' "$1" 2>/dev/null || echo missing; }

# An appliance host already has the user (and its state directories); postinst then keeps them.
host_has_user=
if id -u mc-vmm >/dev/null 2>&1; then host_has_user=1; fi
say "first install (postinst configure)"
step 'daemon-reload' postinst configure ''
if [ -z "$host_has_user" ]; then
  [ "$(mode /var/lib/master-controller)/$(mode /etc/master-controller/credentials)/$(mode /etc/master-controller)" = 700/700/755 ] ||
    fail "postinst made /var/lib/master-controller, credentials, /etc/master-controller with modes $(mode /var/lib/master-controller), $(mode /etc/master-controller/credentials), $(mode /etc/master-controller)"
  [ "$(id -gn mc-vmm)" = mc-vmm ] || fail "mc-vmm is not in a group of its own: $(id mc-vmm)"
  [ "$(getent passwd mc-vmm | cut -d: -f6,7)" = /nonexistent:/usr/sbin/nologin ] || fail "mc-vmm: $(getent passwd mc-vmm)"
  say "  state directories 0700, $(id mc-vmm)"
else
  say "  mc-vmm was already on this host; postinst kept it (package-test.sh's root shows its creation)"
fi
say "upgrade from 0.0.1"
step '' prerm upgrade 0.0.2
step 'daemon-reload
try-restart master-controller-network.service master-controller.service' postinst configure 0.0.1
[ "$(getent passwd | grep -c '^mc-vmm:')" = 1 ] || fail "the upgrade made a second mc-vmm"
say "removal and purge"
echo state >/var/lib/master-controller/state.redb
step 'stop master-controller.service master-controller-network.service' prerm remove
step 'daemon-reload' postrm remove
step 'daemon-reload' postrm purge
[ -f /var/lib/master-controller/state.redb ] || fail "postrm removed the state"
say "without a running systemd (a chroot, a container)"
umount /run
step '' postinst configure 0.0.1
step '' prerm remove
step '' postrm remove
say "ok"

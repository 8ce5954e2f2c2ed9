#!/usr/bin/env bash
# Installs, upgrades and removes the Debian package with the real dpkg, in a throwaway root, and
# fails on any difference from what the package promises (README "Installing from the package"):
#   1. dpkg -i version 1: every file of `dpkg-deb -c` is on disk with its type, mode and size,
#      `dpkg --verify` finds every file's content intact, and postinst made the state directories
#      and the mc-vmm user;
#   2. an operator's edit of /etc/master-controller/config.toml, then dpkg -i version 2: the
#      upgrade keeps the edit, and the conffile is the only file that differs from the package;
#   3. dpkg -r: the program is gone, the state in /var/lib/master-controller and the edited
#      conffile remain; dpkg --purge: the conffile goes, the state and the credentials stay.
#
# Why this way: the tests run as root on a machine they must leave as they found it, so nothing is
# installed into the real root. `dpkg --root=DIR` keeps the files and dpkg's database in DIR, and
# --force-script-chrootless (dpkg >= 1.21) runs the maintainer scripts on the host with
# DPKG_ROOT=DIR instead of chroot(2) into DIR, which would need a shell, useradd and their
# libraries copied in. The scripts honour $DPKG_ROOT (useradd --prefix; no systemctl). The root is
# new, with an empty dpkg database, so dependencies are not installed there (--force-depends).
#
# Both versions come from one release build (scripts/build-package.sh: cargo deb --no-build).
# The maintainer scripts' systemd branch is tested apart, by scripts/package-scripts-test.sh.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

say() { echo "package-test: $*"; }
fail() {
  echo "package-test: FAIL: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run as root (dpkg sets the files' owners)"

work=$(mktemp -d "${TMPDIR:-/tmp}/mc-package-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

started=$(date +%s)
say "building the package, versions 1 and 2"
deb1=$(scripts/build-package.sh --deb-version 0.0.1-test --output "$work/v1" --fast | tail -n 1)
deb2=$(scripts/build-package.sh --deb-version 0.0.2-test --output "$work/v2" --fast | tail -n 1)
[ -f "$deb1" ] && [ -f "$deb2" ] || fail "build-package.sh printed no .deb ($deb1, $deb2)"
say "built $(basename "$deb1") and $(basename "$deb2") in $(($(date +%s) - started)) s"

# A root with what dpkg and the maintainer scripts need: dpkg's database, and the account files
# useradd --prefix edits.
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:*:19000:0:99999:7:::' >"$root/etc/shadow"
echo 'root:x:0:' >"$root/etc/group"
echo 'root:*::' >"$root/etc/gshadow"
chmod 0640 "$root/etc/shadow" "$root/etc/gshadow"

dpkg_root() {
  dpkg --root="$root" --log="$work/dpkg.log" --force-script-chrootless --force-depends "$@"
}
status() {
  dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status} ${Version}' master-controller 2>/dev/null || true
}
conf=$root/etc/master-controller/config.toml

# Every entry of the package against the disk: type, mode and (for files) size.
check_files() {
  local deb=$1 perms size path type want got checked=0
  while read -r perms _ size _ _ path _; do
    path=${path#./}
    [ -n "$path" ] || continue
    type=${perms:0:1}
    case "$type" in
      d) [ -d "$root/$path" ] || fail "directory /$path is missing" ;;
      l) [ -L "$root/$path" ] || fail "link /$path is missing" ;;
      -)
        [ -f "$root/$path" ] || fail "file /$path is missing"
        want="$perms $size"
        got=$(stat -c '%A %s' "$root/$path")
        # The conffile is the operator's once edited; its presence is what counts here.
        [ "/$path" = /etc/master-controller/config.toml ] || [ "$got" = "$want" ] ||
          fail "/$path is '$got', the package has '$want'"
        ;;
      *) fail "unexpected entry type $type for /$path" ;;
    esac
    checked=$((checked + 1))
  done < <(dpkg-deb -c "$deb")
  [ "$checked" -gt 0 ] || fail "dpkg-deb -c $deb listed nothing"
  say "  $checked entries of $(basename "$deb") on disk with their type, mode and size"
}

# What dpkg --verify reports (content checksums), other than the lines allowed in $1.
check_verify() {
  local allowed=$1 report
  report=$(dpkg_root --verify master-controller || true)
  report=$(printf '%s\n' "$report" | grep -v -x -F -e "" ${allowed:+-e "$allowed"} || true)
  [ -z "$report" ] || fail "dpkg --verify: $report"
}

check_dir() {
  local path=$1 mode=$2 got
  got=$(stat -c '%a' "$root$path" 2>/dev/null) || fail "$path is missing"
  [ "$got" = "$mode" ] || fail "$path has mode $got, expected $mode"
}

say "dpkg -i $(basename "$deb1") into $root"
dpkg_root -i "$deb1" >"$work/out" 2>&1 || { cat "$work/out" >&2; fail "dpkg -i version 1"; }
[ "$(status)" = "install ok installed 0.0.1-test" ] || fail "status after install: $(status)"
say "  status: $(status)"
check_files "$deb1"
check_verify ''
say "  dpkg --verify: every file's checksum matches"
check_dir /var/lib/master-controller 700
check_dir /etc/master-controller/credentials 700
check_dir /etc/master-controller 755
grep -q '^mc-vmm:x:[0-9]*:[0-9]*::/nonexistent:/usr/sbin/nologin$' "$root/etc/passwd" ||
  fail "postinst made no mc-vmm user: $(cat "$root/etc/passwd")"
# Its own group: config.toml's jailer_gid is it.
vmm_gid=$(grep '^mc-vmm:' "$root/etc/passwd" | cut -d: -f4)
grep -q "^mc-vmm:x:$vmm_gid:" "$root/etc/group" || fail "mc-vmm's group $vmm_gid is not its own: $(cat "$root/etc/group")"
say "  postinst: /var/lib/master-controller and credentials 0700, user $(grep '^mc-vmm:' "$root/etc/passwd")"
cmp -s "$conf" appliance/config.example.toml || fail "config.toml is not the example configuration"
"$root/usr/bin/master-controller" --help >/dev/null || fail "the installed binary does not run"
say "  /usr/bin/master-controller runs"

say "editing /etc/master-controller/config.toml, as an operator would"
marker="# operator's edit $(date +%s%N)"
echo "$marker" >>"$conf"
# The operator's state, which no package step may touch.
echo state >"$root/var/lib/master-controller/state.redb"
echo key >"$root/etc/master-controller/credentials/encryption-master-key"

say "dpkg -i $(basename "$deb2") (upgrade)"
dpkg_root -i "$deb2" </dev/null >"$work/out" 2>&1 || { cat "$work/out" >&2; fail "dpkg -i version 2"; }
[ "$(status)" = "install ok installed 0.0.2-test" ] || fail "status after upgrade: $(status)"
say "  status: $(status)"
[ "$(tail -n 1 "$conf")" = "$marker" ] || fail "the upgrade lost the edit of config.toml"
[ ! -e "$conf.dpkg-new" ] && [ ! -e "$conf.dpkg-dist" ] || fail "the upgrade left a new config.toml beside the edited one"
say "  config.toml keeps the operator's edit"
check_files "$deb2"
# The edited conffile is the one expected difference (dpkg marks conffiles with a "c").
check_verify '??5?????? c /etc/master-controller/config.toml'
say "  dpkg --verify: only the edited conffile differs"
[ "$(grep -c '^mc-vmm:' "$root/etc/passwd")" = 1 ] || fail "the upgrade made a second mc-vmm user"

say "dpkg -r master-controller"
dpkg_root -r master-controller >"$work/out" 2>&1 || { cat "$work/out" >&2; fail "dpkg -r"; }
[ "$(status)" = "deinstall ok config-files 0.0.2-test" ] || fail "status after removal: $(status)"
say "  status: $(status)"
gone=0
while read -r perms _ _ _ _ path _; do
  path=${path#./}
  case "$perms" in d*) continue ;; esac
  [ "/$path" = /etc/master-controller/config.toml ] && continue
  [ ! -e "$root/$path" ] && [ ! -L "$root/$path" ] || fail "/$path is still there after dpkg -r"
  gone=$((gone + 1))
done < <(dpkg-deb -c "$deb2")
say "  $gone files of the package are gone, /usr/bin/master-controller among them"
[ ! -e "$root/usr/bin/master-controller" ] || fail "/usr/bin/master-controller is still there"
[ "$(cat "$root/var/lib/master-controller/state.redb")" = state ] || fail "the state in /var/lib/master-controller was lost"
[ "$(tail -n 1 "$conf")" = "$marker" ] || fail "dpkg -r lost the edited config.toml"
say "  /var/lib/master-controller and the edited config.toml remain"

say "dpkg --purge master-controller"
dpkg_root --purge master-controller >"$work/out" 2>&1 || { cat "$work/out" >&2; fail "dpkg --purge"; }
[ -z "$(status)" ] || [ "$(status)" = "unknown ok not-installed " ] || fail "status after purge: $(status)"
[ ! -e "$conf" ] || fail "config.toml is still there after purge"
[ "$(cat "$root/var/lib/master-controller/state.redb")" = state ] || fail "purge removed the state"
[ "$(cat "$root/etc/master-controller/credentials/encryption-master-key")" = key ] || fail "purge removed the credentials"
say "  config.toml is gone; the state and the credentials remain (the package never deletes them)"
# The same scripts on a system that systemd runs, which a temporary root cannot show.
scripts/package-scripts-test.sh
say "ok in $(($(date +%s) - started)) s"

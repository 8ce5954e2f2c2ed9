#!/usr/bin/env bash
# Installs schemathesis, at its pinned version, from PyPI into a virtual environment under the
# user's cache, and prints the path of its `st` command. The environment is kept between runs
# and reused while the pin is unchanged; tests/openapi.rs fuzzes a live daemon with it.
set -euo pipefail

version=4.32.5
# Debian's interpreter (python3-venv gives it venv and ensurepip), not whichever is first on PATH.
python=/usr/bin/python3
[ -x "$python" ] || python=python3
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cache="${XDG_CACHE_HOME:-$HOME/.cache}/master-controller"
venv="$cache/schemathesis-$version-py$python_version"

# The stamp is written last, so an interrupted install is redone rather than half used.
if [ ! -e "$venv/.installed" ]; then
  if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "install-schemathesis.sh: needs python3 with venv and ensurepip (Debian: python3-venv)" >&2
    exit 1
  fi
  echo "install-schemathesis.sh: installing schemathesis $version into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
  touch "$venv/.installed"
fi
"$venv/bin/st" --version >&2
echo "$venv/bin/st"

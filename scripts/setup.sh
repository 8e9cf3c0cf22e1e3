#!/usr/bin/env bash
# Everything `make demo` (setup.sh demo) and `make test` (setup.sh dev) need on a fresh machine:
# a Docker engine, a Python environment with cargohold (and, for `dev`, its test tools), and the
# Python base image.
#
# The Python environment is never the system interpreter (PEP 668: Debian and Ubuntu refuse
# `pip install` there). It is $PYTHON when given, else the active virtualenv, else ./.venv,
# made here with the system's `python3 -m venv`. What needs root (installing Docker or
# debootstrap, starting dockerd, building the base image) is checked before it is attempted:
# as root it is done, as anyone else the message says what to run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
extra=${1:-dev}
here=$(pwd -P)
venv=${VENV:-.venv}
case $venv in /*) ;; *) venv=$here/$venv ;; esac
logs=${CARGOHOLD_LOG_DIR:-build/logs}
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ]; then
  python=$VIRTUAL_ENV/bin/python
else
  python=$venv/bin/python
fi

# 1. The engine (its own messages say what to run as root).
bash scripts/ensure-engine.sh "${ENGINE_PIDFILE:-}"

# 2. The Python environment: ./.venv is made here; any other one must exist already.
# A .venv whose Python is gone, or older than 3.11 (made by an earlier, older python3), is made again.
if [ "$python" = "$venv/bin/python" ] \
  && ! "$python" -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
  base=${SYSTEM_PYTHON:-python3}
  if ! command -v "$base" >/dev/null 2>&1; then
    note "setup: no $base here. As root: apt-get install -y python3 python3-venv"
    exit 1
  fi
  # cargohold needs 3.11 (tomllib, typing); Ubuntu 22.04's python3 is 3.10.
  if ! "$base" -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
    note "setup: $base is Python $("$base" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'); cargohold needs 3.11 or newer."
    note "As root, once:  apt-get install -y python3.11 python3.11-venv"
    goal=demo; [ "$extra" = dev ] && goal=test
    note "then:  make $goal SYSTEM_PYTHON=python3.11"
    exit 1
  fi
  # Debian splits ensurepip (and so `python3 -m venv`) into the package python3-venv.
  if ! "$base" -c "import ensurepip, venv" 2>/dev/null; then
    note "setup: $base cannot make a virtual environment (python3 -m venv is not installed)."
    note "As root, once:  apt-get install -y python3-venv"
    exit 1
  fi
  if [ -f "$venv/pyvenv.cfg" ]; then
    rm -rf "$venv"  # a broken virtual environment (its Python was removed or upgraded)
  elif [ -e "$venv" ]; then
    note "setup: $venv exists and is not a virtual environment; move it away, or set VENV=…"
    exit 1
  fi
  run_logged "setup: making the virtual environment $venv" "$logs/venv.log" \
    "$base" -m venv "$venv" || { rm -rf "$venv"; exit 1; }
elif ! "$python" -c "" 2>/dev/null; then
  if [ -z "${PYTHON:-}" ]; then
    note "setup: the active virtualenv's $python does not run (VIRTUAL_ENV=$VIRTUAL_ENV)."
    note "Leave it (deactivate) to use $venv, or name an interpreter: PYTHON=…"
  else
    note "setup: PYTHON=$python does not run. Leave PYTHON unset to use $venv."
  fi
  exit 1
elif ! "$python" -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
  note "setup: $python is older than Python 3.11, which cargohold needs."
  note "Name a newer one (PYTHON=…), or leave PYTHON and any virtualenv to use $venv."
  exit 1
fi

# 3. cargohold (editable, from this checkout) and the extra's packages, again whenever
#    pyproject.toml changes. The stamp lives in the virtual environment itself (an interpreter
#    that is not a venv gets no stamp: pip decides each time).
read -r is_venv prefix < <("$python" -c "import sys; print(sys.prefix != sys.base_prefix, sys.prefix)")
stamp=/dev/null
[ "$is_venv" = True ] && stamp=$prefix/.cargohold-setup-$extra
want="$here $(sha256sum pyproject.toml | cut -c1-16)"
# The dev extra holds the demo's packages too.
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
  && { [ "$extra" != demo ] || [ "$(cat "${stamp%-demo}-dev" 2>/dev/null)" != "$want" ]; }; then
  what="cargohold"
  [ "$extra" = dev ] && what="cargohold and its test tools"
  if ! run_logged "setup: installing $what into $prefix" "$logs/pip-$extra.log" \
    "$python" -m pip install --disable-pip-version-check -e ".[$extra]"; then
    if grep -q "externally-managed-environment" "$logs/pip-$extra.log"; then
      note "setup: $python is the system's Python, which may not be changed with pip (PEP 668)."
      note "Leave PYTHON unset (and leave any virtualenv) to use the project's $venv."
    fi
    exit 1
  fi
  [ "$stamp" = /dev/null ] || echo "$want" >"$stamp"
fi

# 4. The Python base image. Building it needs debootstrap and root: as root install debootstrap
#    when the build is needed; as anyone else cargohold says what to run before attempting it.
if [ "$(id -u)" = 0 ] \
  && ! docker image inspect cargohold/python:3.11-bookworm >/dev/null 2>&1 \
  && ! docker image inspect python:3.11-slim >/dev/null 2>&1 \
  && ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
  run_logged "setup: installing Debian's debootstrap" "$logs/apt-debootstrap.log" \
    bash -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap'
fi
"$python" -m cargohold base-image --log "$logs/base-image.log" >/dev/null

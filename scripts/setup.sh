#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh machine: the Docker CLI and engine,
# debootstrap (for the registry-free base image), cargohold with its test tools, the engine
# running, and the Python base image.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" = 0 ]; then
  missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
# Install (editable) unless this very checkout is what `import cargohold` already finds.
here=$(pwd -P)/src/cargohold/__init__.py
found=$(cd / && "$PYTHON" -c "import cargohold, pytest, compose, check_jsonschema, numpy, yaml
print(cargohold.__file__)" 2>/dev/null || true)
if [ "$found" != "$here" ]; then
  echo "setup: installing cargohold and its test tools" >&2
  "$PYTHON" -m pip install -q --disable-pip-version-check -e ".[dev]"
fi
bash scripts/ensure-engine.sh "${ENGINE_PIDFILE:-}"
"$PYTHON" -m cargohold base-image >/dev/null

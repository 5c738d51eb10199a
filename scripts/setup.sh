#!/usr/bin/env bash
# Set up a machine to run the tests: system packages (Debian/Ubuntu), then .venv with requirements-dev.txt and
# this checkout installed in it, editable (`pip install -e .`: the `ambient` command, and `import ambient` from
# anywhere). With --app, only what the app needs (python3-venv where Debian lacks it, requirements.txt).
#
#   bash scripts/setup.sh && .venv/bin/python -m pytest -q
#   bash scripts/setup.sh --app && .venv/bin/python app.py
#
# Works in a root shell without sudo (a fresh Debian container, CI) and on a laptop (sudo is used only when
# not root). apt is skipped when the packages are already installed, or when there is no apt-get (then the
# tests that need Fashion-MNIST or Chromium say what is missing). Safe to run again.
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
REQUIREMENTS=requirements-dev.txt
packages=(dataset-fashion-mnist chromium)
if [ "${1:-}" = "--app" ]; then
  REQUIREMENTS=requirements.txt
  packages=()
elif [ -n "${1:-}" ]; then
  echo "usage: bash scripts/setup.sh [--app]" >&2
  exit 2
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  packages+=(python3 python3-venv)
elif ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
  packages+=(python3-venv)  # Debian splits venv/ensurepip out of python3
fi

if [ ${#packages[@]} -eq 0 ]; then
  echo "setup: no system packages needed"
elif command -v dpkg >/dev/null 2>&1 && dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  echo "setup: apt packages already installed (${packages[*]})"
elif command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "setup: need root or sudo to install ${packages[*]} with apt-get" >&2
    exit 1
  fi
  echo "setup: apt-get install ${packages[*]}"
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
else
  echo "setup: no apt-get here; install Fashion-MNIST (/usr/share/datasets/fashion-mnist) and Chromium yourself" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "setup: pip install -r $REQUIREMENTS"
"$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
# The checkout itself, editable and without dependencies (the pins above are what it runs with): the `ambient`
# command, and the package importable from scripts/ and benchmarks/.
# With setuptools already in the venv, no build environment is downloaded (so a second run works offline).
build=()
if "$VENV/bin/python" -c "import setuptools" >/dev/null 2>&1; then
  build=(--no-build-isolation)
fi
echo "setup: pip install -e ."
"$VENV/bin/python" -m pip install -q --no-deps ${build[@]+"${build[@]}"} -e .

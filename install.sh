#!/usr/bin/env bash
# Install afov_ray into ./.venv on a fresh Debian/Ubuntu machine (CPU). `make demo` / `make test` run it.
#   ./install.sh                  everything: system packages (apt-get), project, test tools, spconv,
#                                 MinkowskiEngine (CPU build, ~7 min)
#   ./install.sh --no-minkowski   skip the MinkowskiEngine compile (the pure-PyTorch engine is the default)
# Idempotent: re-running skips what is installed. See docs/install.md.
set -euo pipefail
cd "$(dirname "$0")"
WITH_ME=1
for a in "$@"; do
  case "$a" in
    --no-minkowski) WITH_ME=0 ;;
    *) echo "unknown option: $a" >&2; exit 2 ;;
  esac
done
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
# system packages: OpenBLAS (MinkowskiEngine build), Chromium + fonts (the 3D viewer's browser test)
missing=""
for p in libopenblas-dev chromium fonts-liberation; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "apt-get install:$missing"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing >/dev/null
fi
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
PIP="$VENV/bin/pip"
# torch first, pinned: 2.13.0 is a local CPU wheel here; a bare `torch` would pull a multi-GB CUDA build.
"$PIP" install -q torch==2.13.0 numpy setuptools wheel ninja
"$PIP" install -q -e '.[test,spconv]'
if [ "$WITH_ME" = 1 ] && ! "$VENV/bin/python" -c 'import importlib.util,sys; sys.exit(0 if importlib.util.find_spec("MinkowskiEngine") else 1)'; then
  echo "building MinkowskiEngine 0.5.4 (CPU, ~7 min)..."
  MAX_JOBS=2 "$PIP" install -q --no-build-isolation \
      --config-settings="--global-option=--blas=openblas" MinkowskiEngine==0.5.4
fi
echo "installed into $VENV"

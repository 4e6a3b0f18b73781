#!/usr/bin/env bash
# Install moediag (editable) into the current Python environment, with a CPU build of torch on
# machines without an NVIDIA GPU. Usage: bash scripts/install.sh [EXTRAS]   (e.g. "dev", "test,record")
#
# torch: an installed torch (CPU or CUDA) is always kept. Otherwise:
#   MOEDIAG_TORCH_SPEC set      -> pip install $MOEDIAG_TORCH_SPEC (yours to choose)
#   nvidia-smi present          -> pip install torch (the default PyPI build, with CUDA)
#   no NVIDIA GPU               -> the CPU build "torch==$MOEDIAG_TORCH_CPU+cpu": first from the package
#                                  indexes pip is configured with, then from PyTorch's CPU wheel index.
# See docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="${1:-}"
CPU_VERSION="${MOEDIAG_TORCH_CPU:-2.13.0}"
CPU_INDEX="${MOEDIAG_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
START=$SECONDS
# what it is doing, on stderr, so a fresh machine's minutes of downloads are not silent
say() { echo "install: [$(( SECONDS - START ))s] $*" >&2; }

if "$PY" -c "import torch" >/dev/null 2>&1; then
  say "1/2 keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif [ -n "${MOEDIAG_TORCH_SPEC:-}" ]; then
  say "1/2 installing torch as MOEDIAG_TORCH_SPEC says: $MOEDIAG_TORCH_SPEC"
  pip_install $MOEDIAG_TORCH_SPEC
elif command -v nvidia-smi >/dev/null 2>&1; then
  say "1/2 NVIDIA GPU found: installing torch with CUDA (a download of a few GB; minutes)"
  pip_install "torch>=2.2"
else
  say "1/2 no NVIDIA GPU found: installing the CPU build torch==${CPU_VERSION}+cpu (about 200 MB; a minute or two)"
  pip_install "torch==${CPU_VERSION}+cpu" 2>/dev/null \
    || { say "    not on the configured indexes; trying $CPU_INDEX"; \
         pip_install "torch==${CPU_VERSION}+cpu" --extra-index-url "$CPU_INDEX"; }
fi

if [ -n "$EXTRAS" ]; then
  say "2/2 installing moediag (editable) with extras [${EXTRAS}] and their dependencies"
  pip_install -e ".[${EXTRAS}]"
else
  say "2/2 installing moediag (editable) and its dependencies (typer, rich, pandas, matplotlib, safetensors)"
  pip_install -e .
fi
say "done: $("$PY" -m moediag --version 2>/dev/null || echo moediag) (moediag --help lists the commands)"

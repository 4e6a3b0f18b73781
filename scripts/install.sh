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

if "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')" >&2
elif [ -n "${MOEDIAG_TORCH_SPEC:-}" ]; then
  pip_install $MOEDIAG_TORCH_SPEC
elif command -v nvidia-smi >/dev/null 2>&1; then
  pip_install "torch>=2.2"
else
  echo "install: no NVIDIA GPU found; installing the CPU build torch==${CPU_VERSION}+cpu" >&2
  pip_install "torch==${CPU_VERSION}+cpu" 2>/dev/null \
    || pip_install "torch==${CPU_VERSION}+cpu" --extra-index-url "$CPU_INDEX"
fi

if [ -n "$EXTRAS" ]; then
  pip_install -e ".[${EXTRAS}]"
else
  pip_install -e .
fi

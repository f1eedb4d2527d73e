#!/usr/bin/env bash
# Create (or reuse) ./.venv and install lightning_reuse with its test and demo extras.
# torch is pinned here only: on our CI machines torch==2.13.0 resolves to a CPU build kept on local disk, while an
# unpinned torch resolves to a multi-GB CUDA build. Elsewhere, set LIGHTNING_REUSE_TORCH (e.g. to a CPU wheel URL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH_SPEC="${LIGHTNING_REUSE_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[install] installing $TORCH_SPEC"
  .venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
fi
echo "[install] installing lightning_reuse[test,demo] (editable)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,demo]"
echo "[install] done: $(.venv/bin/python -c 'import lightning_reuse, torch, lightning; print("lightning_reuse", lightning_reuse.__version__, "torch", torch.__version__, "lightning", lightning.__version__)')"

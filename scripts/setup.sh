#!/usr/bin/env bash
# One-step setup: keep an existing torch (GPU users keep theirs); on a machine without one,
# install the CPU build 2.13.0 first (a plain `pip install torch` may pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install -e ".[dev]"

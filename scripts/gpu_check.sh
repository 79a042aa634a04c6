#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) in one command, unattended, on a fresh machine that has
# only this repository and torch, transformers, peft and accelerate installed: no download, no
# install (the package runs from src/ through PYTHONPATH, installed or not). Under 5 minutes on one
# GPU. Report on stderr, JSON in $GPU_CHECK_JSON (default gpu_check.json); exit 1 if a check failed.
#
#   bash scripts/gpu_check.sh                        # all checks on the GPU
#   bash scripts/gpu_check.sh --dry-run              # every check on CPU at a tiny size (seconds)
#   bash scripts/gpu_check.sh --only step_benchmark  # one check (names: see gpu_check.py --help)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"
missing="$("$py" -c '
import importlib.util
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "yaml", "tqdm", "numpy"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
')"
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python packages: $missing (pip install -e . brings them)" >&2
    exit 2
fi
exec "$py" bench/gpu_check.py --json "${GPU_CHECK_JSON:-gpu_check.json}" "$@"

"""scripts/gpu_check.sh --dry-run: every check of bench/gpu_check.py on CPU at a tiny size,
end to end through the shell wrapper (PYTHONPATH=src, JSON report); no speed asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [
    "bf16_statistic",
    "sparse_equals_dense",
    "strict_bit_exact",
    "fused_adamw",
    "fsdp2",
    "deepspeed",
    "step_benchmark",
    "compile",
]


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = {
        **os.environ,
        "GPU_CHECK_JSON": str(out),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    env.pop("PYTHONPATH", None)  # the wrapper must find the package by itself
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,  # any working directory
        check=False,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else {})


@pytest.mark.slow  # ~35 s alone, over 60 s on a busy 2-core machine (two models compiled)
def test_gpu_check_dry_run_runs_every_check(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert report["ok"] and report["size"] == "tiny" and report["env"]["device"] == "cpu"
    assert report["env"]["date"] and report["env"]["torch"] and "gpu" in report["env"]
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == CHECKS
    for name, c in checks.items():
        expected = {"pass", "skip"} if name == "deepspeed" else {"pass"}
        assert c["status"] in expected, (name, c)
    assert checks["bf16_statistic"]["buffer_dtype"] == "torch.float32"
    assert checks["bf16_statistic"]["rel_err_vs_float64_of_bf16_outputs"] < 1e-4
    assert checks["strict_bit_exact"]["masked_rows_bit_identical"]
    assert checks["fsdp2"]["dtensor_grads"] and checks["fsdp2"]["masks_equal"]
    rows = {r["name"]: r for r in checks["step_benchmark"]["variants"]}
    assert set(rows) == {"FT", "FT+MIGU (grad)", "FT+MIGU (sparse)"}
    assert all(r["peak_mib"] > 0 for r in rows.values()) and rows["FT+MIGU (grad)"]["paired_ratio"] > 0
    assert checks["compile"]["graph_breaks_with_migu"] == checks["compile"]["graph_breaks_plain"]
    assert "checks: " in proc.stderr and "MIGU GPU check" in proc.stderr


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc, _ = _run(tmp_path, "--device", "cuda")
    assert proc.returncode == 2 and "--device cuda: torch.cuda.is_available() is False" in proc.stderr

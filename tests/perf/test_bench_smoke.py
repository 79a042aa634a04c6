"""bench/bench_step.py --smoke --json runs end to end (tiny models, seconds); no speed asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_step.py"
VARIANTS = {"FT", "FT (A/A)", "FT+MIGU (grad)", "FT+MIGU (strict)", "LoRA", "LoRA+MIGU", "FT+MIGU (sparse)"}


def _bench(*args: str) -> tuple[dict, str]:
    """(the JSON result, stderr) of ``bench_step.py ARGS --json`` in a subprocess, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr


def test_bench_step_smoke_json() -> None:
    result, _ = _bench("--smoke")
    assert result["env"]["torch"] and result["env"]["memory_method"]
    # CPU default: glibc asked to keep freed memory (see steady_malloc); says so when it cannot
    assert result["env"]["malloc"] in {"steady", "default (mallopt unavailable)"}
    models = {m["model"]: m for m in result["models"]}
    assert set(models) == {"t5-tiny", "llama-tiny"}
    for m in models.values():
        rows = {r["name"]: r for r in m["variants"]}
        assert set(rows) == VARIANTS
        for name, r in rows.items():
            assert r["median_ms"] > 0 and r["min_ms"] > 0 and r["rounds"] == 2, name
            assert r["peak_mib"] is not None and r["peak_mib"] > 0, name
            if r["baseline"] is not None:
                assert r["baseline"] in rows and r["ratio"] > 0 and r["paired_ratio"] > 0, name
        assert rows["LoRA+MIGU"]["baseline"] == "LoRA" and rows["FT+MIGU (sparse)"]["baseline"] == "FT"
        assert rows["FT (A/A)"]["baseline"] == "FT"  # the run's noise floor
        assert m["optimizer"] == "fused"  # the runner's default AdamW


def test_bench_step_repeat_combines_fresh_processes() -> None:
    """--repeat N runs N child processes and reports, per variant, the median and range of their ratios."""
    args = ["--smoke", "--model", "llama-tiny", "--variants", "FT,FT+MIGU (grad)", "--no-memory"]
    args += ["--optimizer", "for-loop"]
    result, stderr = _bench(*args, "--repeat", "2")
    assert len(result["runs"]) == 2
    (model,) = result["models"]
    rows = {r["name"]: r for r in model["variants"]}
    assert set(rows) == {"FT", "FT+MIGU (grad)"}
    migu_row = rows["FT+MIGU (grad)"]
    per_run = [run["models"][0]["variants"][1]["paired_ratio"] for run in result["runs"]]
    assert migu_row["runs"] == 2 and migu_row["paired_ratio_range"] == [min(per_run), max(per_run)]
    assert min(per_run) <= migu_row["paired_ratio"] <= max(per_run)
    assert "ratio" not in rows["FT"]  # a baseline has no ratio to itself
    assert model["optimizer"] == "for-loop" and all(
        run["models"][0]["optimizer"] == "for-loop" for run in result["runs"]
    )
    assert "2 processes" in stderr


def test_bench_step_compile_smoke() -> None:
    """--compile: FT, FT (A/A) and FT+MIGU compiled in one process (aot_eager: the same dynamo and
    AOT-autograd tracing as inductor, no kernel build), warmup raised to 2, no memory pass."""
    args = ["--smoke", "--model", "llama-tiny", "--compile", "--compile-backend", "aot_eager"]
    result, stderr = _bench(*args)
    (model,) = result["models"]
    assert model["compile"] == "aot_eager" and model["warmup"] == 2
    rows = {r["name"]: r for r in model["variants"]}
    assert set(rows) == {"FT", "FT (A/A)", "FT+MIGU (grad)"}
    assert rows["FT+MIGU (grad)"]["ratio"] > 0 and rows["FT+MIGU (grad)"]["peak_mib"] is None
    assert "compile aot_eager" in stderr


def test_bench_step_compile_refuses_the_sparse_variant() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--compile", "--variants", "FT,FT+MIGU (sparse)"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2 and "--compile: ['FT+MIGU (sparse)'] cannot be compiled" in proc.stderr


@pytest.mark.slow  # inductor builds C++ kernels for two models: minutes on a busy 2-core CPU
def test_bench_step_compile_inductor_smoke() -> None:
    result, _ = _bench("--smoke", "--model", "llama-tiny", "--compile", "--variants", "FT,FT+MIGU (grad)")
    (model,) = result["models"]
    assert model["compile"] == "inductor"
    assert {r["name"] for r in model["variants"]} == {"FT", "FT+MIGU (grad)"}


def test_bench_adamw_smoke_json() -> None:
    """bench/bench_adamw.py --smoke: every implementation timed dense and with zero rows."""
    script = SCRIPT.with_name("bench_adamw.py")
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert set(result["sqrt_ms"]) == {"positive", "zeros", "zero_rows"}
    assert all(v > 0 for v in result["sqrt_ms"].values())
    assert set(result["adamw_ms"]) == {"for-loop", "foreach", "fused"}
    for impl, r in result["adamw_ms"].items():
        assert r["dense"] > 0 and r["zero_rows"] > 0, impl
        assert r["ratio"] == r["zero_rows"] / r["dense"], impl
    assert "| fused |" in proc.stderr

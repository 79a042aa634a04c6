"""bench/bench_methods.py runs each method through the real runner and reports its cost against FT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.data import write_benchmark
from support.results import TINY_BERT, write_tiny_run_config

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_methods.py"


@pytest.mark.slow
def test_bench_methods_reports_each_method_against_ft(tmp_path: Path) -> None:
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=16, n_test=8)
    write_tiny_run_config(tmp_path / "tiny.yaml", dict(TINY_BERT), max_length=32, name="bench_tiny")
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--config", str(tmp_path / "tiny.yaml"), "--data", str(data)]
    cmd += ["--methods", "ft,ft+migu,ewc", "--train-n", "16", "--test-n", "8", "--length", "32"]
    cmd += ["--out", str(out), "--json", str(tmp_path / "bench.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["ft", "ft+migu", "ewc", "FT (A/A)"]  # FT first and last
    assert rows["ft"]["stage_ratio"] == 1.0 and rows["ft"]["peak_ratio"] == 1.0
    for name, r in rows.items():
        assert r["complete"] and r["steps"] == 4, name  # 2 tasks x 16 rows / batch 8
        assert 0 < r["loop_seconds"] <= r["stage_seconds"], name
        assert r["stage_ratio"] == r["stage_seconds"] / rows["ft"]["stage_seconds"], name
        assert r["peak_mib"] > 0, name
    # each method really ran as asked: its own run directory and results
    saved = json.loads((out / "ft+migu" / "results.json").read_text())
    assert saved["method"] == "ft" and saved["migu"]["threshold"] == 0.7
    assert json.loads((out / "ewc" / "results.json").read_text())["method"] == "ewc"
    assert json.loads((out / "pass0" / "ft" / "results.json").read_text())["migu"] is None
    assert "| ft+migu |" in proc.stdout and "x FT" in proc.stdout


@pytest.mark.slow
def test_bench_methods_runs_a_continual_pretraining_config_unshrunk(tmp_path: Path) -> None:
    """A pretrain config gets no finetuning shrink (its data.train_n / model.max_length stay as
    written) and its ACC column is the end tasks' final ACC."""
    import yaml
    from support.data import write_das
    from support.models import TINY_VOCAB, save_tiny_tokenizer, tiny_config

    root = write_das(tmp_path / "das")
    cfg = {
        "name": "bench_tiny_pretrain",
        "tasks": ["restaurant", "acl"],
        "model": {
            "name": "minilm",
            "random_init": tiny_config("bert", TINY_VOCAB),
            "tokenizer": str(save_tiny_tokenizer(tmp_path / "tok")),
        },
        "method": {"name": "ft"},
        "train": {"batch_size": 4, "lr": 1e-3, "log_every": 100},
        "pretrain": {
            "steps_per_domain": 2,
            "block_size": 16,
            "cache_dir": str(tmp_path / "cache"),
            "end_task": {"batch_size": 4, "epochs": 1, "lr": 1e-3, "max_length": 24},
        },
    }
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--config", str(tmp_path / "pre.yaml"), "--data", str(root)]
    cmd += ["--methods", "ft,ewc", "--set", "pretrain.steps_per_domain=3", "--out", str(out)]
    cmd += ["--json", str(tmp_path / "bench.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["env"]["overrides"] == ["pretrain.steps_per_domain=3"]  # no finetuning shrink
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["ft", "ewc", "FT (A/A)"]
    for name, r in rows.items():
        assert r["complete"] and r["steps"] == 6 and 0.0 <= r["acc"] <= 1.0, name  # 2 domains x 3 steps
    saved = json.loads((out / "ewc" / "results.json").read_text())
    assert saved["regime"] == "pretrain" and saved["method"] == "ewc"
    assert saved["config"]["model"]["max_length"] != 128 and saved["config"]["data"]["train_n"] != 320

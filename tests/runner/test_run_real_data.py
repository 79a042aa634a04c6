"""Integration: 2 real CL_Benchmark tasks x 32 rows through the runner with MIGU (tiny model)."""

from __future__ import annotations

from pathlib import Path

from support.data import REAL_ROOT, needs_real_data
from support.models import tiny_config

from migu.runner.config import build_run_config
from migu.runner.execute import run


@needs_real_data
def test_two_real_tasks_through_the_runner(tmp_path: Path) -> None:
    cfg = build_run_config(
        {
            "name": "real_smoke",
            "tasks": ["dbpedia", "agnews"],  # dbpedia's train split is carved out of its test split
            "data": {"train_n": 32, "test_n": 32},
            "model": {"name": "minilm", "random_init": tiny_config("bert"), "max_length": 64},
            "migu": {"threshold": 0.7},
            "train": {"batch_size": 16, "lr": 1e-3},
        }
    )
    res = run(cfg, tmp_path / "run", data_root=REAL_ROOT)
    assert res.complete and res.tasks == ["dbpedia", "agnews"]
    carved = res.per_task["dbpedia"]["carved"]
    assert carved["from"] == "test.json" and carved["disjoint"]
    assert res.timings[0]["steps"] == 2
    assert (tmp_path / "run/accuracy_matrix.csv").is_file()

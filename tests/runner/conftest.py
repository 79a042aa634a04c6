"""Fixtures for runner tests: a small generated CL_Benchmark and tiny run configs (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.data import write_benchmark
from support.models import tiny_config as tiny_model_init

from migu.runner.config import RunConfig, build_run_config


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return write_benchmark(tmp_path / "CL_Benchmark")


def tiny_run_config(data_root: Path, kind: str = "bert", **overrides: Any) -> RunConfig:
    """Two tasks, 32 train / 16 test rows, a tiny random model of ``kind``; dotted-free overrides."""
    data: dict[str, Any] = {
        "name": f"tiny_{kind}",
        "seed": 7,
        "tasks": ["agnews", "amazon"],
        "data_root": str(data_root),
        "data": {"train_n": 32, "test_n": 16},
        "model": {"name": "minilm", "random_init": tiny_model_init(kind), "max_length": 48},
        "method": {"name": "ft"},
        "train": {"batch_size": 8, "lr": 1e-3, "eval_batch_size": 16, "log_every": 2},
    }
    for key, value in overrides.items():
        data[key] = (
            {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        )
    return build_run_config(data)


@pytest.fixture
def tiny_config(bench: Path) -> Callable[..., RunConfig]:
    return lambda kind="bert", **kw: tiny_run_config(bench, kind, **kw)

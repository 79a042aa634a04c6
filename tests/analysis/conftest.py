"""Fixtures for the analysis tests: one tiny finished run (made once per session) and fake sweeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.data import write_benchmark
from support.results import RUN_TASKS, RUN_THRESHOLD, TINY_BERT, fake_results, write_sweep


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark(
        tmp_path_factory.mktemp("analysis_data") / "CL_Benchmark",
        n_train=24,
        n_test=12,
        labels={"amazon": ["negative", "positive"]},
    )


@pytest.fixture(scope="session")
def finished_run(bench_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FT+MIGU (T=0.5) on agnews -> amazon with every task's checkpoint kept."""
    from migu.runner.config import build_run_config
    from migu.runner.execute import run

    config = build_run_config(
        {
            "name": "analysis_tiny",
            "seed": 3,
            "tasks": RUN_TASKS,
            "data_root": str(bench_root),
            "data": {"train_n": 24, "test_n": 12},
            "model": {"name": "minilm", "random_init": dict(TINY_BERT), "max_length": 32},
            "method": {"name": "ft"},
            "migu": {"threshold": RUN_THRESHOLD},
            "keep_checkpoints": True,
            "train": {"batch_size": 8, "lr": 1e-3, "eval_batch_size": 32, "log_every": 100},
        }
    )
    run_dir = tmp_path_factory.mktemp("analysis_runs") / "tiny_ft_migu"
    results = run(config, run_dir)
    assert results.complete
    return run_dir


@pytest.fixture(scope="session")
def similarity_out(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """``migu analyze similarity`` of the same run twice under two labels (the FT vs FT+MIGU layout)."""
    from migu.analysis.similarity import analyze_similarity

    out = tmp_path_factory.mktemp("similarity")
    res = analyze_similarity([finished_run, finished_run], out, labels=["left run", "right run"], samples=10)
    return res, out


def _migu(threshold: float, components: list[str] | None = None) -> dict[str, Any]:
    return {
        "threshold": threshold,
        "components": components or ["qkv", "o", "ffn"],
        "preset": "paper",
        "mode": "grad",
    }


@pytest.fixture
def table_sweep(tmp_path: Path) -> Path:
    """FT and LoRA x MIGU off/on x 3 seeds; one cell unfinished."""
    cells = []
    for method in ("ft", "lora"):
        for on in (False, True):
            for k, seed in enumerate((42, 1024, 2048)):
                res = fake_results(method, _migu(0.7) if on else None, seed, 0.6 + 0.05 * on + 0.01 * k)
                if method == "lora" and on and seed == 2048:
                    res = None
                cells.append(
                    (
                        f"method-{method}_migu-{'on' if on else 'off'}_seed-{seed}",
                        {"method": method, "migu": "on" if on else "off", "seed": seed},
                        res,
                    )
                )
    return write_sweep(tmp_path / "table", "proxy_table", cells)


@pytest.fixture
def ablation_sweep(tmp_path: Path) -> Path:
    """FT at T = 0.0..0.9 and without MIGU, plus MIGU on component subsets at T = 0.7."""
    cells = []
    for t in [round(0.1 * i, 1) for i in range(10)]:
        cells.append(
            (
                f"threshold-{t}",
                {"method": "ft", "migu.threshold": t, "seed": 42},
                fake_results("ft", _migu(t), 42, 0.5 + 0.3 * t),
            )
        )
    cells.append(("migu-off", {"method": "ft", "migu": "off", "seed": 42}, fake_results("ft", None, 42, 0.5)))
    for comps in (["qkv"], ["o"], ["ffn"], ["qkv", "o"]):
        cells.append(
            (
                f"components-{'+'.join(comps)}",
                {"migu.components": comps, "seed": 42},
                fake_results("ft", _migu(0.7, comps), 42, 0.6),
            )
        )
    return write_sweep(tmp_path / "ablation", "ablation", cells)


@pytest.fixture
def make_sweep() -> Callable[..., Path]:
    return write_sweep

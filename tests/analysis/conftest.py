"""Fixtures for the analysis tests: one tiny finished run (made once per session) and fake sweeps."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from migu.metrics import summarize

AG_LABELS = ["World", "Sports", "Business", "Science or Technology"]
AMAZON_LABELS = ["negative", "positive"]
WORDS = {
    "World": "summit",
    "Sports": "goal",
    "Business": "shares",
    "Science or Technology": "chip",
    "negative": "awful",
    "positive": "superb",
}

# A 2-block random BERT on the packaged MiniLM tokenizer: trains 3 steps per task in seconds.
TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
RUN_TASKS = ["agnews", "amazon"]
RUN_THRESHOLD = 0.5


def write_benchmark(root: Path, n_train: int = 24, n_test: int = 12) -> Path:
    """agnews (TC/agnews) and amazon (SC/amazon) in CL_Benchmark layout."""
    for rel, labels in (("TC/agnews", AG_LABELS), ("SC/amazon", AMAZON_LABELS)):
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", n_train), ("test", n_test)):
            rows = [
                {
                    "sentence": f"{rel} {split} {i} {WORDS[labels[i % len(labels)]]} text",
                    "label": labels[i % len(labels)],
                }
                for i in range(n)
            ]
            (d / f"{split}.json").write_text(json.dumps(rows))
    return root


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark(tmp_path_factory.mktemp("analysis_data") / "CL_Benchmark")


@pytest.fixture(scope="session")
def finished_run(bench_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FT+MIGU (T=0.5) on agnews -> amazon with every task's checkpoint kept."""
    from migu.runner.config import build_run_config
    from migu.runner.run import run

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
    with one_thread():
        results = run(config, run_dir)
    assert results["complete"]
    return run_dir


@pytest.fixture(scope="session")
def similarity_out(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """``migu analyze similarity`` of the same run twice under two labels (the FT vs FT+MIGU layout)."""
    from migu.analysis.similarity import analyze_similarity

    out = tmp_path_factory.mktemp("similarity")
    with one_thread():
        res = analyze_similarity(
            [finished_run, finished_run], out, labels=["left run", "right run"], samples=10
        )
    return res, out


def fake_results(
    method: str,
    migu: dict[str, Any] | None,
    seed: int,
    acc: float,
    tasks: tuple[str, ...] = ("dbpedia", "amazon", "agnews"),
) -> dict[str, Any]:
    """A results.json body whose final row averages ``acc`` (the rest plausible, seeded)."""
    rng = random.Random(f"{method}{migu}{seed}")
    n = len(tasks)
    matrix = [[min(1.0, max(0.0, acc + rng.uniform(-0.05, 0.05))) for _ in range(n)] for _ in range(n - 1)]
    matrix.append([acc] * n)
    baseline = [0.2] * n
    return {
        "name": f"{method}-{seed}",
        "method": method,
        "migu": migu,
        "seed": seed,
        "tasks": list(tasks),
        "complete": True,
        "matrix": matrix,
        "baseline": baseline,
        "metrics": summarize(matrix, baseline),
        "wall_seconds": 12.0,
        "config": {"model": {"name": "minilm"}, "data": {"train_n": 100, "test_n": 50}},
    }


def write_sweep(
    root: Path, name: str, cells: list[tuple[str, dict[str, Any], dict[str, Any] | None]]
) -> Path:
    """A sweep directory as ``migu sweep`` lays it out; a cell with results None is unfinished."""
    root.mkdir(parents=True, exist_ok=True)
    for cell, _, res in cells:
        if res is not None:
            (root / cell).mkdir()
            (root / cell / "results.json").write_text(json.dumps(res))
    spec = {"name": name, "cells": [{"name": c, "values": v} for c, v, _ in cells]}
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


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

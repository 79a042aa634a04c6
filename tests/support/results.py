"""Fake finished runs and sweep directories, laid out as ``migu run`` / ``migu sweep`` write them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

from migu.metrics import summarize
from migu.runner.results import RunResults

from .models import tiny_config

# The tiny finished run the analysis tests share (tests/analysis/conftest.py builds it once).
RUN_TASKS = ["agnews", "amazon"]
RUN_THRESHOLD = 0.5
# A 2-block random BERT on the packaged MiniLM tokenizer: trains 3 steps per task in seconds.
TINY_BERT = tiny_config("bert", intermediate_size=64, max_position_embeddings=64)


def write_tiny_run_config(
    path: Path, random_init: dict[str, Any] | None = None, max_length: int = 48, **fields: Any
) -> Path:
    """A run config YAML for a tiny random BERT on agnews -> amazon (batch 8, lr 1e-3): the base that
    sweep, tune and benchmark tests point at; ``fields`` adds or replaces top-level keys."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "tasks": ["agnews", "amazon"],
        "model": {
            "name": "minilm",
            "random_init": random_init or tiny_config("bert"),
            "max_length": max_length,
        },
        "train": {"batch_size": 8, "lr": 1e-3, "eval_batch_size": 16, "log_every": 100},
        **fields,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_results(method: str = "ft", migu: dict[str, Any] | None = None, **fields: Any) -> RunResults:
    """A RunResults with just what a test sets (one unfinished task by default)."""
    base: dict[str, Any] = {
        "name": "r",
        "seed": 0,
        "tasks": ["t"],
        "complete": False,
        "matrices": {"acc": []},
    }
    return RunResults(method=method, migu=migu, **{**base, **fields})


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
    root: Path,
    name: str,
    cells: list[tuple[str, dict[str, Any], dict[str, Any] | None]],
    tuned: list[str] | None = None,
) -> Path:
    """A sweep directory as ``migu sweep`` lays it out (``tuned``: as ``migu tune`` writes its test/
    directory); a cell with results None is unfinished."""
    root.mkdir(parents=True, exist_ok=True)
    for cell, _, res in cells:
        if res is not None:
            (root / cell).mkdir()
            (root / cell / "results.json").write_text(json.dumps(res))
    spec: dict[str, Any] = {"name": name, "cells": [{"name": c, "values": v} for c, v, _ in cells]}
    if tuned:
        spec["tuned"] = tuned
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root

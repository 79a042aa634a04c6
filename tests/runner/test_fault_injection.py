"""Issue 17, fault tests: a tiny run interrupted at many points (between optimizer steps, while
writing a checkpoint, the run state or the results, while scoring) resumes to exactly the
accuracy matrix and final weights of an uninterrupted run.

The points are drawn by a seeded RNG (the same every run), each a test of its own.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from support.data import write_benchmark
from support.faults import ForwardFaults
from support.models import tiny_config as tiny_model_init

from migu.runner import checkpoint as ckpt
from migu.runner import files
from migu.runner import results as results_mod
from migu.runner.config import RunConfig, build_run_config
from migu.runner.execute import run
from migu.runner.regimes import FinetuneStages
from migu.runner.results import RunResults

TRAIN_CALLS = 2 * 2  # 2 stages x (16 rows / batch 8) training forward calls, one per step


def _points(seed: int = 17) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [
        *(("forward", k) for k in sorted(rng.sample(range(1, TRAIN_CALLS + 1), 3))),
        ("checkpoint", rng.randrange(2)),  # after model.safetensors of that stage is written
        ("state", rng.randrange(2, 6)),  # the n-th run_state.json write, its temp file on disk
        ("score", rng.randrange(2)),
        ("results", 1),
    ]


def _config(bench: Path) -> RunConfig:
    """The tiny two-stage run of ``conftest.tiny_run_config``, smaller, with MIGU on."""
    return build_run_config(
        {
            "name": "faults",
            "seed": 7,
            "tasks": ["agnews", "amazon"],
            "data_root": str(bench),
            "data": {"train_n": 16, "test_n": 8},
            "model": {"name": "minilm", "random_init": tiny_model_init("bert"), "max_length": 48},
            "method": {"name": "ft"},
            "migu": {"threshold": 0.5},
            "train": {"batch_size": 8, "lr": 1e-3, "eval_batch_size": 16, "log_every": 1},
        }
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResults, Path, Path]:
    """(results, run directory, data root) of the uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    bench = write_benchmark(root / "CL_Benchmark")
    return run(_config(bench), root / "run"), root / "run", bench


class _Interrupt:
    """Raises KeyboardInterrupt at one point of the run (see ``_points``)."""

    def __init__(self, kind: str, at: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kind, self.at, self.hit = kind, at, False
        self.faults = ForwardFaults(monkeypatch)
        if kind == "forward":
            self.faults.interrupt_at = {at}
        elif kind == "checkpoint":
            real_save = ckpt.save_model
            calls = [0]

            def save_model(model: Any, path: str) -> None:
                real_save(model, path)
                calls[0] += 1
                if calls[0] == at + 1:
                    self.hit = True
                    raise KeyboardInterrupt("killed after the model file was written")

            monkeypatch.setattr(ckpt, "save_model", save_model)
        elif kind == "state":
            real_temp = files._write_temp
            writes = [0]

            def write_temp(path: Path, text: str) -> str:
                tmp = real_temp(path, text)
                if path.name == ckpt.STATE_FILE:
                    writes[0] += 1
                    if writes[0] == at:
                        self.hit = True
                        raise KeyboardInterrupt("killed with the new run state half-way to disk")
                return tmp

            monkeypatch.setattr(files, "_write_temp", write_temp)
        elif kind == "score":
            real_score = FinetuneStages.score

            def score(stages: FinetuneStages, i: int | None, *args: Any) -> Any:
                if i == at:
                    self.hit = True
                    raise KeyboardInterrupt("killed while scoring")
                return real_score(stages, i, *args)

            monkeypatch.setattr(FinetuneStages, "score", score)
        elif kind == "results":

            def write_texts(*args: Any, **kwargs: Any) -> None:
                self.hit = True
                raise KeyboardInterrupt("killed while writing the results")

            monkeypatch.setattr(results_mod, "atomic_write_texts", write_texts)


@pytest.mark.parametrize(("kind", "at"), _points(), ids=[f"{k}-{a}" for k, a in _points()])
def test_interrupted_anywhere_a_resume_matches_the_uninterrupted_run(
    kind: str,
    at: int,
    reference: tuple[RunResults, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full, ref_dir, bench = reference
    cfg = _config(bench)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt = _Interrupt(kind, at, m)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
        assert interrupt.hit or kind == "forward"
    resumed = run(cfg, out)
    assert resumed.complete
    assert resumed.matrices == full.matrices and resumed.baselines == full.baselines
    final = "checkpoints/task_01/model.safetensors"
    mine, theirs = load_file(str(out / final)), load_file(str(ref_dir / final))
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)

"""The learning rate at every optimizer step, for each schedule with warmup, against the formula.

``train.schedule`` (constant, linear, cosine) with ``train.warmup_ratio``: linear warmup from 0 over
``int(warmup_ratio * steps)`` steps, then constant, linear decay to 0, or half a cosine to 0. A
stage that continues an optimization (epochs of one instruction set) sits at its offset on the
whole schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from migu.runner import loop as loop_mod
from migu.runner.config import RunConfig
from migu.runner.execute import run
from migu.runner.optim import build_adamw, build_scheduler

LR = 1e-3


def expected_lr(schedule: str, step: int, total: int, warmup: int) -> float:
    """The lr the optimizer uses at 0-based optimizer step ``step`` of ``total`` (formula)."""
    if step < warmup:
        return LR * step / warmup
    if schedule == "constant":
        return LR
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return LR * max(0.0, 1.0 - progress)
    return LR * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _lrs(
    schedule: str, warmup_ratio: float, total: int, start: int = 0, steps: int | None = None
) -> list[float]:
    opt = build_adamw([torch.nn.Parameter(torch.zeros(2))], lr=LR)
    sched = build_scheduler(opt, schedule, warmup_ratio, total, start_step=start)
    out = []
    for _ in range(total - start if steps is None else steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup_ratio", [0.0, 0.25])
def test_every_step_follows_the_formula(schedule: str, warmup_ratio: float) -> None:
    total = 12
    warmup = int(warmup_ratio * total)
    want = [expected_lr(schedule, s, total, warmup) for s in range(total)]
    assert _lrs(schedule, warmup_ratio, total) == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert want[0] == (0.0 if warmup else LR)  # the curve itself, not only its agreement
    if schedule != "constant":
        assert want[-1] < want[warmup] and all(
            a >= b for a, b in zip(want[warmup:-1], want[warmup + 1 :], strict=True)
        )


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_a_continuing_stage_starts_where_the_schedule_left_off(schedule: str) -> None:
    """Stage 2 of 3 of one optimization (steps 4-7 of 12) sees the whole schedule's steps 4-7."""
    whole = _lrs(schedule, 0.25, 12)
    assert _lrs(schedule, 0.25, 12, start=4, steps=4) == pytest.approx(whole[4:8], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_the_runs_optimizer_steps_at_the_formulas_lr(
    schedule: str, tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real loop: 32 rows at batch 8 for 2 epochs = 8 steps per task, 2 of them warmup; each
    task starts its own schedule."""
    seen: list[list[float]] = []
    real = loop_mod.build_adamw

    def recording(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        opt = real(*args, **kwargs)
        lrs: list[float] = []
        seen.append(lrs)
        opt.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(loop_mod, "build_adamw", recording)
    train = {"batch_size": 8, "lr": LR, "epochs": 2.0, "schedule": schedule, "warmup_ratio": 0.25}
    cfg = tiny_config(train=train, eval_baseline=False)
    run(cfg, tmp_path / "run")
    want = [expected_lr(schedule, s, 8, 2) for s in range(8)]
    assert len(seen) == 2
    for lrs in seen:
        assert lrs == pytest.approx(want, rel=1e-9, abs=1e-15)

"""Issue 17.1: a non-finite loss stops the run naming the stage and step, keeps the last good
checkpoint, and marks the run failed; ``train.nonfinite: skip`` skips such steps instead."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from support.faults import ForwardFaults

from migu.cli import main
from migu.runner import checkpoint as ckpt
from migu.runner.config import RunConfig, TrainConfig
from migu.runner.execute import run
from migu.runner.faults import DivergedError
from migu.runner.guard import NonFiniteGuard
from migu.runner.results import format_results, load_results
from migu.runner.resume import restore_run


def _yaml(cfg: RunConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_nan_loss_stops_the_run_keeps_the_checkpoint_and_marks_it_failed(
    tiny_config: Callable[..., RunConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    faults = ForwardFaults(monkeypatch)
    faults.nan_at = {4 + 3}  # 4 micro-batches (= steps) per task: task 2's third step
    cfg = tiny_config(train={"log_every": 2})
    out = tmp_path / "run"
    with caplog.at_level(logging.ERROR, logger="migu"):
        code = main(["run", str(_yaml(cfg, tmp_path / "c.yaml")), "--out", str(out)])
    assert code == 2
    message = caplog.records[-1].getMessage()
    assert "stage 2 of 2 ('amazon')" in message and "optimizer step 3" in message, message
    assert "non-finite loss nan" in message and "checkpoint after stage 1 ('agnews') is intact" in message

    res = load_results(out)
    assert not res.complete and res.failure is not None
    assert res.failure["stage"] == "amazon" and res.failure["step"] == 3
    assert len(res.matrix) == 1 and not res.metrics
    assert "FAILED" in format_results(res)
    state = json.loads((out / ckpt.STATE_FILE).read_text())
    assert state["failure"]["stage"] == "amazon" and state["trained"] == 1 and state["completed"] == 1
    # No checkpoint of the diverged stage was written; the last good one is intact and loadable.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task_00"]
    _, _, model = restore_run(out, 0)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # Same data, train.nonfinite=skip (not part of the config hash): resumes after stage 1 and
    # skips the bad step's update, counted in the timings; the failure is cleared.
    faults.reset()
    faults.nan_at = {3}  # stage 2 alone is trained now: its third step again
    resumed = run(tiny_config(train={"log_every": 2, "nonfinite": "skip"}), out)
    assert resumed.complete and resumed.failure is None and len(resumed.matrix) == 2
    assert resumed.timings[1]["nonfinite_skipped"] == 1 and resumed.timings[1]["steps"] == 4
    assert resumed.timings[0]["nonfinite_skipped"] == 0
    _, _, model = restore_run(out, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_huge_learning_rate_never_writes_a_non_finite_checkpoint(
    tiny_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(train={"lr": 1e30, "max_grad_norm": None}, eval_baseline=False)
    with pytest.raises(DivergedError, match=r"stage 1 of 2 \('agnews'\)") as info:
        run(cfg, out)
    assert "no stage had finished" in str(info.value) and "--restart" in str(info.value)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert load_results(out).failure["stage"] == "agnews"


def test_guard_records_the_first_bad_step_without_syncing_in_stop_mode() -> None:
    guard = NonFiniteGuard(torch.device("cpu"), "stop", "t", total=5)
    for loss, norm in [(1.0, 1.0), (float("inf"), 2.0), (1.0, float("nan"))]:
        guard.add_loss(torch.tensor(loss))
        assert guard.end_step(torch.tensor(norm)) is True  # stop mode never skips an update
    with pytest.raises(DivergedError, match=r"non-finite loss inf at optimizer step 2 of 5") as info:
        guard.check()
    assert info.value.step == 2 and info.value.stage == "t"
    skip = NonFiniteGuard(torch.device("cpu"), "skip", "t", total=5)
    skip.add_loss(torch.tensor(1.0))
    assert skip.end_step(torch.tensor(float("nan"))) is False and skip.skipped == 1
    skip.check()  # skip mode does not stop
    with pytest.raises(DivergedError, match="weight tensor"):
        skip.check_weights([torch.tensor([1.0, float("nan")])])


def test_nonfinite_is_a_checked_choice() -> None:
    from migu.runner.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"train\.nonfinite must be one of stop, skip"):
        load_config(None, ["tasks=[agnews]", "train.nonfinite=ignore"])
    assert TrainConfig().nonfinite == "stop"

"""The finetuning baselines (EWC, LwF, DER++, OSF) through the real runner: each runs with and without
MIGU, and a run killed in task 2 resumes to exactly the uninterrupted run (accuracy matrix, final
weights and method state bit for bit), which needs the learned state (Fisher, buffer) restored."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from migu.methods import DERPP, EWC
from migu.runner import loop as loop_mod
from migu.runner.config import RunConfig
from migu.runner.execute import run
from migu.runner.results import RunResults

# case -> (method, options, loss terms it logs); DER++'s buffer is smaller than a task's 32 rows so the
# reservoir replaces rows; OSF does not compose with MIGU.
CASES: dict[str, tuple[str, dict[str, Any], set[str]]] = {
    "ewc": ("ewc", {}, {"ewc"}),
    "ewc_online": ("ewc", {"online": True, "gamma": 0.9, "fisher_batch_size": 4}, {"ewc"}),
    "lora_ewc": ("lora_ewc", {}, {"ewc"}),
    "lwf": ("lwf", {}, {"lwf"}),
    "lora_lwf": ("lora_lwf", {}, {"lwf"}),
    "derpp": ("derpp", {"buffer_size": 12}, {"der_mse", "der_ce"}),
    "lora_derpp": ("lora_derpp", {"buffer_size": 12}, {"der_mse", "der_ce"}),
    "osf": ("osf", {}, set()),
}
MIGU_OFF_ONLY = {"osf"}


def config(tiny_config: Callable[..., RunConfig], case: str, migu: bool) -> RunConfig:
    name, options, _ = CASES[case]
    return tiny_config(method={"name": name, "options": options}, migu={} if migu else None)


def crash_then_resume(cfg: RunConfig, out: Path, monkeypatch: pytest.MonkeyPatch) -> RunResults:
    real_train = loop_mod.train_task

    def crash_on_second_task(*args: Any, **kwargs: Any) -> Any:
        if args[1].task_index == 1:  # args[1] is the TaskContext: killed in the middle of task 2
            raise KeyboardInterrupt("killed")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out)
    assert json.loads((out / "run_state.json").read_text())["completed"] == 1
    monkeypatch.setattr("migu.runner.execute.train_task", real_train)
    return run(cfg, out)


def final_checkpoint(out: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    d = out / "checkpoints" / "task_01"
    tensors = d / "method_state.safetensors"
    return (
        load_file(str(d / "model.safetensors")),
        json.loads((d / "method_state.json").read_text()),
        load_file(str(tensors)) if tensors.is_file() else {},
    )


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.parametrize("case", list(CASES))
def test_resume_after_a_crash_matches_an_uninterrupted_run(
    case: str, tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tiny_config, case, migu=case not in MIGU_OFF_ONLY)
    full = run(cfg, tmp_path / "full")
    resumed = crash_then_resume(cfg, tmp_path / "resumed", monkeypatch)
    assert resumed.complete and resumed.matrix == full.matrix and resumed.baseline == full.baseline
    weights, state, tensors = final_checkpoint(tmp_path / "full")
    weights2, state2, tensors2 = final_checkpoint(tmp_path / "resumed")
    assert same_tensors(weights, weights2)
    assert state == state2 and same_tensors(tensors, tensors2)
    assert set(full.timings[1]["loss_terms"]) == CASES[case][2]


@pytest.mark.slow
@pytest.mark.parametrize("cls", [EWC, DERPP])
def test_resume_without_the_learned_state_would_differ(
    cls: type, tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above has teeth: dropping the restored Fisher / buffer changes the resumed weights."""
    cfg = config(tiny_config, cls.name, migu=False)
    run(cfg, tmp_path / "full")
    monkeypatch.setattr(cls, "load_state_dict", lambda self, state, tensors=None: None)
    crash_then_resume(cfg, tmp_path / "resumed", monkeypatch)
    assert not same_tensors(final_checkpoint(tmp_path / "full")[0], final_checkpoint(tmp_path / "resumed")[0])


@pytest.mark.parametrize("case", [c for c in CASES if c not in MIGU_OFF_ONLY])
def test_runs_without_migu(case: str, tiny_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    res = run(config(tiny_config, case, migu=False), tmp_path / "run")
    assert res.complete and res.migu is None and len(res.matrix) == 2
    terms = res.timings[1]["loss_terms"]
    assert set(terms) == CASES[case][2] and all(v > 0 for v in terms.values())

"""The batch-aware method hooks (issue 11.5), exercised through the runner by a method defined here.

A distillation method needs the current batch and the model's outputs on it; an EWC-like method
needs, at the end of a task, the family's loss on that task's rows; both keep tensor state that a
resumed run restores. ``Probe`` does all of it without any change to the runner.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from migu.methods import CLMethod, StepContext, TaskContext, register_method, unregister_method
from migu.runner import loop as loop_mod
from migu.runner.config import RunConfig
from migu.runner.execute import run

CALLS: list[tuple[str, int, bool]] = []  # (hook, task index, rebuilding)
STEPS: list[int] = []  # task index of each before_optimizer_step call


@dataclass
class Probe(CLMethod):
    """Checks what each hook receives and keeps a learned tensor per finished task."""

    name: ClassVar[str] = "probe_hooks"
    paper_name: ClassVar[str] = "Probe"
    description: ClassVar[str] = "test method"
    weight: float = 0.0
    _end_loss: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def on_task_start(self, ctx: TaskContext) -> None:
        super().on_task_start(ctx)
        CALLS.append(("start", ctx.task_index, ctx.rebuilding))

    def step_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        batch, out = ctx.batch, ctx.output
        n = batch["input_ids"].shape[0]
        assert out.logits is not None and out.logits.shape[0] == n  # [B, n_labels] label logits
        assert set(batch) >= {"input_ids", "attention_mask", "labels"}
        with torch.no_grad():  # a second forward on the batch (what DER++ does with its buffer)
            again = ctx.forward(batch)
        assert torch.allclose(again.logits, out.logits, atol=1e-5)
        # a term built from the outputs: what a distillation loss looks like (zero by default)
        finite = torch.where(torch.isfinite(out.logits), out.logits, torch.zeros_like(out.logits))
        return {"probe": self.weight * finite.pow(2).mean()}

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        STEPS.append(ctx.task_index)  # gradients are complete here (a method may edit them)
        assert all(p.grad is not None for p in ctx.model.parameters() if p.requires_grad)

    def on_task_end(self, ctx: TaskContext) -> None:
        CALLS.append(("end", ctx.task_index, ctx.rebuilding))
        if ctx.rebuilding:
            return  # learned state comes back through load_state_dict
        losses = [ctx.run_forward(b).loss.detach() for b in ctx.batches(batch_size=5)]
        assert sum(len(b["labels"]) for b in ctx.batches(batch_size=5)) == len(ctx.examples)
        self._end_loss[ctx.task_index] = torch.stack(losses).mean().reshape(1)

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": sorted(self._end_loss)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"end_loss.{i}": v for i, v in self._end_loss.items()}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        tensors = tensors or {}
        self._end_loss = {i: tensors[f"end_loss.{i}"] for i in state["tasks"]}


@pytest.fixture
def probe() -> Iterator[type[Probe]]:
    register_method(Probe)
    CALLS.clear()
    STEPS.clear()
    yield Probe
    unregister_method(Probe.name)


def test_hooks_see_batches_outputs_and_task_rows(
    probe: type[Probe], tiny_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    res = run(tiny_config(method={"name": "probe_hooks", "options": {"weight": 0.01}}), tmp_path / "run")
    assert res.complete
    assert CALLS == [("start", 0, False), ("end", 0, False), ("start", 1, False), ("end", 1, False)]
    assert [0] * res.timings[0]["steps"] + [1] * res.timings[1]["steps"] == STEPS  # once per optimizer step
    assert set(res.timings[0]["loss_terms"]) == {"probe"} and res.timings[0]["loss_terms"]["probe"] > 0
    state = json.loads((tmp_path / "run/checkpoints/task_01/method_state.json").read_text())
    assert state == {"tasks": [0, 1]}
    assert (tmp_path / "run/checkpoints/task_01/method_state.safetensors").is_file()


def test_resume_rebuilds_structure_and_restores_tensor_state(
    probe: type[Probe], tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(method={"name": "probe_hooks"})
    real_train = loop_mod.train_task
    seen: dict[str, Any] = {}

    def crash_on_second_task(*args: Any, **kwargs: Any) -> Any:
        if args[1].task_index == 1:
            raise KeyboardInterrupt("killed")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run")
    first = CALLS.copy()

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen["end_loss"] = dict(args[3]._end_loss)  # the method, as the runner trains task 2
        return real_train(*args, **kwargs)

    CALLS.clear()
    monkeypatch.setattr("migu.runner.execute.train_task", spy)
    res = run(cfg, tmp_path / "run")
    assert res.complete
    assert first == [("start", 0, False), ("end", 0, False), ("start", 1, False)]
    # resume: task 0 replayed structure-only, then task 1 trained for real
    assert CALLS == [("start", 0, True), ("end", 0, True), ("start", 1, False), ("end", 1, False)]
    assert set(seen["end_loss"]) == {0} and seen["end_loss"][0].shape == (1,)

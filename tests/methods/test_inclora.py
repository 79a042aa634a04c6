"""IncLoRA / OIncLoRA: one adapter per task, old ones frozen bit-for-bit yet still in the output."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft.tuners.lora import LoraLayer
from support.methods import FAMILIES, logits, run_task, snapshot, task_ctx, train_steps, trainable
from torch import nn

from migu.methods import IncLoRA, OIncLoRA
from migu.methods.base import CLMethod

METHODS = [IncLoRA, OIncLoRA]


def _zero_b(model: nn.Module, adapter: str) -> nn.Module:
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.lora_B[adapter].weight.zero_()
    return model


def _two_tasks(cls: type[CLMethod], family: str) -> tuple[CLMethod, nn.Module, dict, dict, torch.Tensor]:
    make, batch_fn, spec = FAMILIES[family]
    model = make()
    base_out = logits(model, batch_fn())
    method = cls()
    method.prepare_model(model, spec)
    run_task(method, model, 0, batch_fn(seed=0))
    task0 = snapshot(model, ".task_0")
    method.on_task_start(task_ctx(model, 1, "task1"))
    task1_init = snapshot(model, ".task_1")
    train_steps(model, method, 1, batch_fn(seed=1), steps=4)
    return method, model, task0, task1_init, base_out


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("cls", METHODS)
def test_old_adapter_bit_identical_new_one_trains(cls: type[CLMethod], family: str) -> None:
    method, model, task0, task1_init, _ = _two_tasks(cls, family)
    assert task0 and task1_init
    params = dict(model.named_parameters())
    for n, value in task0.items():
        assert torch.equal(params[n], value), f"{n} changed while training task 1"
        assert not params[n].requires_grad
    assert any(not torch.equal(params[n], v) for n, v in task1_init.items() if "lora_B" in n)
    heads = {n for n in params if n.startswith("classifier.")}
    assert trainable(model) == set(task1_init) | heads
    assert method.adapters == ["task_0", "task_1"]
    for m in model.modules():
        if isinstance(m, LoraLayer):
            assert m.active_adapters == ["task_0", "task_1"]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("cls", METHODS)
def test_output_sums_both_adapters(cls: type[CLMethod], family: str) -> None:
    _, model, _, _, base_out = _two_tasks(cls, family)
    batch = FAMILIES[family][1]()
    out = logits(model, batch)
    assert not torch.allclose(logits(_zero_b(model, "task_0"), batch), out)
    assert not torch.allclose(logits(_zero_b(model, "task_1"), batch), out)
    if family == "t5":  # no head: with both B zeroed the model is its untouched base again
        both = _zero_b(_zero_b(model, "task_0"), "task_1")
        torch.testing.assert_close(logits(both, batch), base_out)


@pytest.mark.parametrize("cls", METHODS)
def test_resume_rebuilds_same_structure(cls: type[CLMethod]) -> None:
    make, batch_fn, spec = FAMILIES["encoder"]
    method, model, _, _, _ = _two_tasks(cls, "encoder")
    method.on_task_end(task_ctx(model, 1, "task1", []))
    weights = model.state_dict()
    state = json.loads(json.dumps(method.state_dict()))

    fresh, resumed = make(seed=123), cls()
    resumed.prepare_model(fresh, spec)
    for i in range(2):  # what the runner does on resume
        resumed.on_task_start(task_ctx(fresh, i, f"task{i}"))
        resumed.on_task_end(task_ctx(fresh, i, f"task{i}", []))
    fresh.load_state_dict(weights, strict=True)
    resumed.load_state_dict(state)
    batch = batch_fn()
    assert torch.equal(logits(fresh, batch), logits(model, batch))
    resumed.on_task_start(task_ctx(fresh, 2, "task2"))
    assert resumed.adapters == ["task_0", "task_1", "task_2"]
    assert all(".task_2." in n or n.startswith("classifier.") for n in trainable(fresh))


@pytest.mark.parametrize("cls", METHODS)
def test_missing_structure_is_reported(cls: type[CLMethod]) -> None:
    make, _, spec = FAMILIES["encoder"]
    method = cls()
    method.prepare_model(make(), spec)
    with pytest.raises(ValueError, match="task_1"):
        method.load_state_dict({"adapters": ["task_0", "task_1"]})

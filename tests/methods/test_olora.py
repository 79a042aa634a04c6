"""OIncLoRA: the O-LoRA terms match a hand computation, reach only the new adapter, and train down."""

from __future__ import annotations

import math

import pytest
import torch
from peft.tuners.lora import LoraLayer
from support.methods import FAMILIES, run_task, task_ctx, tiny_encoder, train_steps
from torch import nn

from migu.methods import OIncLoRA
from migu.models import ModelSpec

A0 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
A1 = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
A2 = [[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
B1 = [[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]


def _one_layer(method: OIncLoRA, tasks: int) -> tuple[nn.Module, LoraLayer]:
    """A d=3 encoder with LoRA (r=2) on its single query linear, adapters task_0..task_{tasks-1}."""
    model = tiny_encoder(d=3, layers=1)
    method.prepare_model(model, ModelSpec(lora_target_modules=("query",)))
    for i in range(tasks):
        method.on_task_start(task_ctx(model, i, f"task{i}"))
    (layer,) = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for i, a in enumerate([A0, A1, A2][:tasks]):
            layer.lora_A[f"task_{i}"].weight.copy_(torch.tensor(a))
        if tasks > 1:
            layer.lora_B["task_1"].weight.copy_(torch.tensor(B1))
    return model, layer


def test_terms_match_hand_computation() -> None:
    method = OIncLoRA(r=2, lambda1=0.5, lambda2=2.0)
    model, _ = _one_layer(method, 2)
    terms = method.penalties(model, 1)
    # A0 A1^T = [[1, 0], [2, -1]] -> sum |.| = 4
    assert terms["orth"].item() == pytest.approx(0.5 * 4.0)
    # ||A1||_2 = sqrt(1 + 4 + 1 + 9), ||B1||_2 = 5 (unsquared, as O-LoRA's torch.norm(p, p=2))
    assert terms["l2"].item() == pytest.approx(2.0 * (math.sqrt(15.0) + 5.0))


def test_orth_sums_over_all_old_adapters() -> None:
    method = OIncLoRA(r=2)
    model, _ = _one_layer(method, 3)
    # A0 A2^T = [[0, 1], [0, 1]] (2); A1 A2^T = [[0, 3], [3, 2]] (8)
    assert method.penalties(model, 2)["orth"].item() == pytest.approx(0.5 * (2.0 + 8.0))
    assert method.penalties(model, 2)["l2"].item() == 0.0  # lambda2 defaults to 0


def test_first_task_has_no_orth_term() -> None:
    method = OIncLoRA(r=2, lambda2=1.0)
    model, _ = _one_layer(method, 1)
    terms = method.penalties(model, 0)
    assert terms["orth"].item() == 0.0
    assert terms["l2"].item() == pytest.approx(math.sqrt(2.0))  # ||A0||, B0 = 0


def test_orth_gradient_reaches_only_the_new_adapter() -> None:
    method = OIncLoRA(r=2)
    model, layer = _one_layer(method, 2)
    method.penalties(model, 1)["orth"].backward()
    assert layer.lora_A["task_0"].weight.grad is None
    assert layer.lora_A["task_1"].weight.grad is not None
    assert layer.lora_A["task_1"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_lowers_orthogonality(family: str) -> None:
    make, batch_fn, spec = FAMILIES[family]
    model: nn.Module = make()
    method = OIncLoRA()
    method.prepare_model(model, spec)
    run_task(method, model, 0, batch_fn(seed=0))
    method.on_task_start(task_ctx(model, 1, "task1"))
    before = method.penalties(model, 1)["orth"].item()
    train_steps(model, method, 1, batch_fn(seed=1), steps=10)  # task loss + orth + l2
    after = method.penalties(model, 1)["orth"].item()
    assert before > 0
    assert after < 0.5 * before

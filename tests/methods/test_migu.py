"""Every MIGU-compatible method composes with MIGU: the masker attached after on_task_start masks the
right weights (DER++, whose buffer collates rows, is checked on a real family in test_derpp.py; DAS,
which runs on masked-LM encoders only, with MIGU through the runner in test_das.py)."""

from __future__ import annotations

import pytest
import torch
from support.methods import FAMILIES, run_task

from migu import MIGUConfig, attach
from migu.engine import num_masked
from migu.methods import IncLoRA, LoRA, StepContext, TaskContext, get_method, get_method_class, list_methods

COMPATIBLE = [n for n in list_methods() if get_method_class(n).migu_compatible]
NEEDS_ROWS = {"derpp", "lora_derpp"}
THRESHOLD = 0.5


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(
    "name", [n for n in COMPATIBLE if n not in NEEDS_ROWS and "finetune" in get_method_class(n).regimes]
)
def test_masker_targets_and_masks(name: str, family: str) -> None:
    make, batch_fn, spec = FAMILIES[family]
    model = make()
    method = get_method(name)
    model = method.prepare_model(model, spec)
    run_task(method, model, 0, batch_fn(seed=0))
    # what the runner does, then it attaches MIGU; the raw model call stands in for the family's forward
    ctx = TaskContext(model, 1, "task1", forward=lambda m, b: m(**b))
    method.on_task_start(ctx)
    masker = attach(model, MIGUConfig(threshold=THRESHOLD))

    live = {t.name for t in masker.targets if t.weight.requires_grad}
    cls = get_method_class(name)
    if issubclass(cls, LoRA):
        current = "task_1" if issubclass(cls, IncLoRA) else "default"
        expected = {
            f"{n}.{ab}.{current}"
            for n, m in model.named_modules()
            if hasattr(m, "lora_A") and current in m.lora_A
            for ab in ("lora_A", "lora_B")
        }
        assert expected and live == expected
        assert not any(t.name.endswith(".base_layer") for t in masker.targets)
    else:
        assert live and not any("lora" in n for n in live)

    batch = batch_fn(seed=1)
    model.train()
    out = model(**batch)
    loss = out.loss + sum(method.step_loss(StepContext(ctx, model, batch, out, 0)).values())
    loss.backward()
    stats = masker.statistics()
    masks = masker.apply()
    assert set(masks) == live
    for t in masker.targets:
        if t.name not in live:
            assert t.weight.grad is None  # frozen: base weights, task_0's adapter
            assert torch.count_nonzero(stats[t.name]) == 0  # never measured either
            continue
        keep = masks[t.name]
        assert int((~keep).sum()) == num_masked(THRESHOLD, t.d_out)
        grad = t.weight.grad
        assert grad is not None
        assert torch.count_nonzero(grad[~keep]) == 0
        if ".lora_A." not in t.name:  # a new adapter's A has zero gradient while its B is still 0
            assert torch.count_nonzero(grad[keep]) > 0
    masker.detach()

"""Every method composes with MIGU: the masker attached after on_task_start masks the right weights."""

from __future__ import annotations

import pytest
import torch
from support.methods import FAMILIES, run_task, step_terms, task_ctx

from migu import MIGUConfig, attach
from migu.engine import num_masked
from migu.methods import get_method, list_methods

LORA_METHODS = {"lora", "inclora", "olora", "lora_replay"}
THRESHOLD = 0.5


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", list_methods())
def test_masker_targets_and_masks(name: str, family: str) -> None:
    make, batch_fn, spec = FAMILIES[family]
    model = make()
    method = get_method(name)
    model = method.prepare_model(model, spec)
    run_task(method, model, 0, batch_fn(seed=0))
    method.on_task_start(task_ctx(model, 1, "task1"))  # what the runner does, then it attaches MIGU
    masker = attach(model, MIGUConfig(threshold=THRESHOLD))

    live = {t.name for t in masker.targets if t.weight.requires_grad}
    if name in LORA_METHODS:
        current = "task_1" if name in {"inclora", "olora"} else "default"
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
    loss = out.loss + sum(step_terms(method, model, 1, batch, out).values())
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

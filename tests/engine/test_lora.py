"""PEFT LoRA (issue 2, point 4): lora_A is judged by |A x| (length r), lora_B by the whole layer
output |W0 x + s B A x| without the base bias (length d_out); W0 stays frozen and untouched."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from support.engine_reference import (
    assert_keep_matches,
    capture_inputs,
    randomize_biases,
    ref_stat,
    rows_of,
    token_outputs,
)

import migu

R, ALPHA = 4, 8  # scaling s = alpha / r = 2: a wrong scale changes lora_B's statistic
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LAYERS = [
    f"base_model.model.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "value")
]


def _lora_bert(tiny_model):
    base = randomize_biases(tiny_model("bert"))
    cfg = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["query", "value"], lora_dropout=0.0, init_lora_weights=False
    )
    return get_peft_model(base, cfg)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * float(b.abs().max()))


def test_lora_statistics_masks_and_frozen_base(tiny_model, make_batch) -> None:
    model = _lora_bert(tiny_model)
    modules = dict(model.named_modules())
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    lora_names = {f"{n}.lora_{ab}.default" for n in LAYERS for ab in "AB"}
    assert lora_names <= {t.name for t in masker.targets}
    assert not any(t.name.endswith("base_layer") for t in masker.targets)  # W0 is frozen
    w0 = {n: modules[n].base_layer.weight.detach().clone() for n in LAYERS}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)

    batch = make_batch(3, 6, lengths=[6, 4, 2])
    mask = batch["attention_mask"]
    with capture_inputs(model, LAYERS) as xs:
        model(**batch).last_hidden_state.pow(2).sum().backward()
    stats = masker.statistics()
    refs: dict[str, torch.Tensor] = {}
    for n in LAYERS:
        layer = modules[n]
        a_rows = rows_of(layer.lora_A["default"].weight)  # [r, d_in]
        b_rows = rows_of(layer.lora_B["default"].weight)  # [d_out, r]
        w_rows = rows_of(layer.base_layer.weight)
        s = ALPHA / R
        # s B A x per token, by explicit dot products.
        lora_out = [
            [s * v for v in token_outputs(b_rows, torch.stack(token_outputs(a_rows, x)))] for x in xs[n]
        ]
        refs[f"{n}.lora_A.default"] = ref_stat(a_rows, xs[n], [mask])
        refs[f"{n}.lora_B.default"] = ref_stat(w_rows, xs[n], [mask], extra=lora_out)
        assert stats[f"{n}.lora_A.default"].shape == (R,)
        assert stats[f"{n}.lora_B.default"].shape == (16,)
        assert _close(stats[f"{n}.lora_A.default"], refs[f"{n}.lora_A.default"]), n
        assert _close(stats[f"{n}.lora_B.default"], refs[f"{n}.lora_B.default"]), n
        # Non-vacuous: B's own output, the base output alone, or the base bias give other values.
        ref_b = refs[f"{n}.lora_B.default"]
        ax = [torch.stack(token_outputs(a_rows, x)) for x in xs[n]]
        assert not _close(ref_stat(b_rows, ax, [mask]), ref_b, rtol=1e-2)
        assert not _close(ref_stat(w_rows, xs[n], [mask]), ref_b, rtol=1e-2)
        assert not _close(
            ref_stat(w_rows, xs[n], [mask], extra=lora_out, bias=layer.base_layer.bias), ref_b, 1e-2
        )

    grads = {name: modules[name].weight.grad.clone() for name in lora_names}
    masks = masker.apply()
    assert set(masks) == lora_names
    for name in lora_names:
        keep = masks[name]
        assert_keep_matches(keep, refs[name], 0.5)
        g = modules[name].weight.grad  # lora_A: [r, d_in] rows r; lora_B: [d_out, r] rows d_out
        assert keep.shape == (g.shape[0],)
        assert torch.all(g[~keep] == 0) and torch.all(grads[name][~keep] != 0)
        assert torch.equal(g[keep], grads[name][keep])
    before = {name: modules[name].weight.detach().clone() for name in lora_names}
    opt.step()
    for n in LAYERS:
        base = modules[n].base_layer
        assert not base.weight.requires_grad and base.weight.grad is None
        assert torch.equal(base.weight, w0[n])
    for name in lora_names:
        w = modules[name].weight.detach()
        assert torch.equal(w[~masks[name]], before[name][~masks[name]])
        assert not torch.equal(w[masks[name]], before[name][masks[name]])

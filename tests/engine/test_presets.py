"""Presets (issue 2, point 5): ``official`` reproduces the authors' code (raw |y| sums with bias
and padding, quantile cut, every linear, no mask on the first task); ``skip_first_task`` works
alone on the paper preset; explicit fields override the preset."""

from __future__ import annotations

import pytest
import torch
from support.engine_reference import (
    assert_keep_matches,
    capture_inputs,
    randomize_biases,
    ref_keep,
    ref_quantile,
    ref_stat,
    rows_of,
)
from transformers.pytorch_utils import Conv1D

import migu
from migu.engine import make_keep_masks

OFFICIAL = {
    "normalize": False,
    "exclude_padding": False,
    "stat_bias": True,
    "cut": "quantile",
    "targets": "all-linear",
    "skip_first_task": True,
    "mask_bias": False,
}
PAPER = {
    "normalize": True,
    "exclude_padding": True,
    "stat_bias": False,
    "cut": "topk",
    "targets": "default",
    "skip_first_task": False,
    "mask_bias": True,
}
OPPOSITE = {
    "cut": {"topk": "quantile", "quantile": "topk"},
    "targets": {"default": "all-linear", "all-linear": "default"},
}


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * float(b.abs().max()))


def _ref_quantile_keep(ref: torch.Tensor, q: float) -> torch.Tensor:
    cut = ref_quantile(ref, q)
    return torch.tensor([float(v) >= cut for v in ref])


@pytest.mark.parametrize(("preset", "values"), [("official", OFFICIAL), ("paper", PAPER)])
def test_preset_values(preset: str, values: dict) -> None:
    cfg = migu.MIGUConfig(preset=preset)
    assert {k: getattr(cfg, k) for k in values} == values
    assert migu.MIGUConfig().preset == "paper"


@pytest.mark.parametrize("preset", ["official", "paper"])
@pytest.mark.parametrize("key", sorted(OFFICIAL))
def test_explicit_field_overrides_preset(preset: str, key: str) -> None:
    base = OFFICIAL if preset == "official" else PAPER
    value = OPPOSITE[key][base[key]] if key in OPPOSITE else not base[key]
    cfg = migu.MIGUConfig(preset=preset, **{key: value})
    assert getattr(cfg, key) == value
    assert {k: getattr(cfg, k) for k in base if k != key} == {k: v for k, v in base.items() if k != key}


def test_quantile_cut_keeps_ties() -> None:
    stats = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 3.0], [5.0, 1.0, 4.0, 2.0, 3.0, 0.0]])
    keep = make_keep_masks(stats, 0.5, cut="quantile")
    assert keep[0].all()  # q = 1: every tie at the cut is kept (topk would keep 3)
    assert keep[1].tolist() == [True, False, True, False, True, False]  # q = 2.5
    assert make_keep_masks(stats, 0.5)[0].sum() == 3
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, 5, (8, 23), generator=g).float()
    for q in (0.1, 0.5, 0.7):
        keep = make_keep_masks(rand, q, cut="quantile")
        for row in range(8):
            assert torch.equal(keep[row], _ref_quantile_keep(rand[row], q))


def _official_run(tiny_model, make_batch, task_index: int, threshold: float = 0.7, **overrides):
    model = randomize_biases(tiny_model("bert", head="seq-cls"))
    masker = migu.attach(model, migu.MIGUConfig(preset="official", threshold=threshold, **overrides))
    masker.task_index = task_index
    names = [t.name for t in masker.targets]
    batch = make_batch(3, 6, lengths=[6, 4, 2])
    with capture_inputs(model, names) as xs:
        model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
    return model, masker, names, batch, xs


def test_official_first_task_is_not_masked(tiny_model, make_batch) -> None:
    model, masker, names, _, _ = _official_run(tiny_model, make_batch, task_index=0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    masks = masker.apply()
    assert set(masks) == set(names) and all(bool(m.all()) for m in masks.values())
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert all(torch.all(s == 0) for s in masker.statistics().values())  # statistics still reset


def test_official_second_task_raw_sums_with_bias_and_padding_quantile(tiny_model, make_batch) -> None:
    model, masker, names, batch, xs = _official_run(tiny_model, make_batch, task_index=1)
    modules = dict(model.named_modules())
    assert {"classifier", "bert.pooler.dense"} <= set(names)  # all-linear
    stats = masker.statistics()
    refs = {}
    for n in names:
        lin = modules[n]
        rows = rows_of(lin.weight)
        ref = ref_stat(rows, xs[n], None, normalize=False, bias=lin.bias)  # every token, raw, with bias
        refs[n] = ref
        assert _close(stats[n], ref), n
        if xs[n][0].dim() == 3:  # token inputs: padding and bias are in, visibly
            assert not _close(
                ref_stat(rows, xs[n], [batch["attention_mask"]], normalize=False, bias=lin.bias), ref
            )
            assert not _close(ref_stat(rows, xs[n], None, normalize=False), ref, rtol=1e-3)
    grads = {n: (modules[n].weight.grad.clone(), modules[n].bias.grad.clone()) for n in names}
    masks = masker.apply()
    for n in names:
        expected = _ref_quantile_keep(refs[n], 0.7)
        assert torch.equal(masks[n], expected), n
        g, b = modules[n].weight.grad, modules[n].bias.grad
        assert torch.all(g[~masks[n]] == 0) and torch.equal(g[masks[n]], grads[n][0][masks[n]])
        assert torch.equal(b, grads[n][1])  # official: the bias gradient is never masked
    # The quantile cut is not the top-k cut: d_out = 24 keeps 7 rows (topk would keep 8).
    ffn = "bert.encoder.layer.0.intermediate.dense"
    assert int(masks[ffn].sum()) == 7 and int(ref_keep(refs[ffn], 0.7).sum()) == 8


def test_official_with_padding_excluded_override(tiny_model, make_batch) -> None:
    model, masker, names, batch, xs = _official_run(
        tiny_model, make_batch, task_index=1, exclude_padding=True
    )
    modules = dict(model.named_modules())
    stats = masker.statistics()
    for n in names:
        mask = [batch["attention_mask"]] if xs[n][0].dim() == 3 else None
        ref = ref_stat(rows_of(modules[n].weight), xs[n], mask, normalize=False, bias=modules[n].bias)
        assert _close(stats[n], ref), n


def test_skip_first_task_alone_on_the_paper_preset(tiny_model, make_batch) -> None:
    cfg = migu.MIGUConfig(threshold=0.5, skip_first_task=True)
    assert {k: getattr(cfg, k) for k in PAPER if k != "skip_first_task"} == {
        k: v for k, v in PAPER.items() if k != "skip_first_task"
    }
    model = randomize_biases(tiny_model("gpt2"))
    masker = migu.attach(model, cfg)
    names = [t.name for t in masker.targets]
    assert "lm_head" not in names
    batch = make_batch(2, 6, lengths=[6, 3])
    model(**batch).last_hidden_state.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    masks = masker.apply()
    assert all(bool(m.all()) for m in masks.values())
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())

    masker.task_index = 1
    model.zero_grad()
    with capture_inputs(model, names) as xs:
        model(**batch).last_hidden_state.pow(2).sum().backward()
    modules = dict(model.named_modules())
    masks = masker.apply()
    for n in names:
        conv = modules[n]
        assert isinstance(conv, Conv1D)
        ref = ref_stat(rows_of(conv.weight, 1), xs[n], [batch["attention_mask"]])  # paper statistic
        assert_keep_matches(masks[n], ref, 0.5)
        keep = masks[n]
        assert torch.all(conv.weight.grad[:, ~keep] == 0) and torch.all(conv.bias.grad[~keep] == 0)

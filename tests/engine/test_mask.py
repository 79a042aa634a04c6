"""Row masks (issue 2, point 2): exact counts, ties to the lower index, threshold validation,
gradient rows zeroed / untouched, and the bias option both ways."""

from __future__ import annotations

import math

import pytest
import torch
from support.engine_reference import ToyLM, expected_masked, randomize_biases, ref_keep

import migu
from migu.engine import make_keep_masks, num_masked


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.1, 0.29, 0.3, 0.5, 0.7, 0.9, 0.999])
@pytest.mark.parametrize("d_out", [1, 3, 7, 10, 100, 1000])
def test_kept_count_is_d_out_minus_floor_t_d_out(threshold: float, d_out: int) -> None:
    stats = torch.rand(3, d_out, generator=torch.Generator().manual_seed(d_out))
    keep = make_keep_masks(stats, threshold)
    assert keep.dtype == torch.bool and keep.shape == (3, d_out)
    k = d_out - expected_masked(threshold, d_out)
    assert keep.sum(dim=1).tolist() == [k, k, k]
    for row in range(3):
        assert torch.equal(keep[row], ref_keep(stats[row], threshold))


def test_float_error_in_t_times_d_out_does_not_change_the_count() -> None:
    assert 0.29 * 100 < 29 and math.floor(0.29 * 100) == 28  # the trap
    assert num_masked(0.29, 100) == 29
    assert num_masked(0.7, 10) == 7 and num_masked(0.3, 10) == 3 and num_masked(0.0, 5) == 0


def test_exact_ties_break_to_the_lower_index() -> None:
    stats = torch.tensor(
        [
            [1.0, 2.0, 2.0, 2.0, 0.0, 2.0, 1.0, 1.0],  # four 2s fill the 4 kept slots: 1, 2, 3, 5
            [3.0, 1.0, 1.0, 1.0, 1.0, 0.0, 5.0, 1.0],  # tie across the cut: 6, 0, then 1 and 2 of the 1s
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all equal: the first four
        ]
    )
    keep = make_keep_masks(stats, 0.5)
    assert keep[0].nonzero().flatten().tolist() == [1, 2, 3, 5]
    assert keep[1].nonzero().flatten().tolist() == [0, 1, 2, 6]
    assert keep[2].nonzero().flatten().tolist() == [0, 1, 2, 3]


def test_many_ties_match_the_python_sort_reference() -> None:
    g = torch.Generator().manual_seed(0)
    stats = torch.randint(0, 4, (16, 37), generator=g).float()  # heavy exact ties
    for threshold in (0.1, 0.37, 0.5, 0.8):
        keep = make_keep_masks(stats, threshold)
        for row in range(stats.shape[0]):
            assert torch.equal(keep[row], ref_keep(stats[row], threshold)), (threshold, row)


def test_ties_in_a_real_layer_break_to_the_lower_index() -> None:
    """Zero weight rows give |w_i . x| = 0 exactly: the cut through them keeps the lowest indices."""
    model = ToyLM(d=8, f=12)
    zero_rows = [2, 5, 7, 8, 10]
    with torch.no_grad():
        model.layers[0].up_proj.weight[zero_rows] = 0.0
        model.layers[0].up_proj.bias.normal_()  # the bias is left out, so it cannot break the tie
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.25, targets=["layers.0.up_proj"]))
    ids = torch.randint(0, 32, (2, 5))
    model(ids, labels=ids)["loss"].backward()
    stat = masker.statistics()["layers.0.up_proj"]
    assert torch.all(stat[zero_rows] == 0) and torch.all(
        stat[[i for i in range(12) if i not in zero_rows]] > 0
    )
    keep = masker.apply()["layers.0.up_proj"]
    # 3 masked: 7 non-zero rows kept + the 2 lowest of the tied zero rows.
    assert keep.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 9, 11]


@pytest.mark.parametrize("threshold", [0.29, 0.57, 0.7, 0.99])
def test_apply_masks_floor_t_d_out_rows_of_every_layer(threshold: float) -> None:
    """apply() itself (not only make_keep_masks): d_out = 100 with T = 0.29 masks 29 rows, not 28."""
    model = ToyLM(d=8, f=100)
    masker = migu.attach(model, migu.MIGUConfig(threshold=threshold))
    ids = torch.randint(0, 32, (2, 5))
    model(ids, labels=ids)["loss"].backward()
    masks = masker.apply()
    assert {t.d_out for t in masker.targets} == {8, 100}
    for t in masker.targets:
        assert int(masks[t.name].sum()) == t.d_out - expected_masked(threshold, t.d_out), t.name
        assert int((t.weight.grad.abs().sum(dim=1) == 0).sum()) == expected_masked(threshold, t.d_out)


@pytest.mark.parametrize(
    "bad",
    [-0.1, -1, 1, 1.0, 1.5, float("nan"), float("inf"), "0.5", None, True, False, [0.5], torch.tensor(0.5)],
)
def test_threshold_outside_range_or_not_a_number_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="threshold"):
        migu.MIGUConfig(threshold=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [0, 0.0, 0.5, 0.999])
def test_valid_thresholds(good: float) -> None:
    assert migu.MIGUConfig(threshold=good).threshold == float(good)


@pytest.mark.parametrize("mask_bias", [True, False])
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_masked_grad_rows_are_zero_and_kept_rows_unchanged(tiny_model, make_batch, kind, mask_bias) -> None:
    model = randomize_biases(tiny_model(kind))
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.6, mask_bias=mask_bias))
    batch = make_batch(2, 6, lengths=[6, 4])
    model(**batch).last_hidden_state.pow(2).sum().backward()
    before = {t.name: (t.weight.grad.clone(), t.bias.grad.clone()) for t in masker.targets}
    returned = masker.apply()
    assert returned is masker.masks
    assert set(masker.masks) == {t.name for t in masker.targets}
    for t in masker.targets:
        keep = masker.masks[t.name]
        assert keep.dtype == torch.bool and keep.shape == (t.d_out,)
        assert int(keep.sum()) == t.d_out - expected_masked(0.6, t.d_out)
        w_grad, b_grad = before[t.name]
        conv = kind == "gpt2"  # Conv1D weight [d_in, d_out]: output rows are columns
        g = t.weight.grad.t() if conv else t.weight.grad
        g0 = w_grad.t() if conv else w_grad
        assert torch.all(g0[~keep] != 0)  # the test would notice a row that was not zeroed
        assert torch.all(g[~keep] == 0)
        assert torch.equal(g[keep], g0[keep])
        if mask_bias:
            assert torch.all(t.bias.grad[~keep] == 0)
            assert torch.equal(t.bias.grad[keep], b_grad[keep])
        else:
            assert torch.equal(t.bias.grad, b_grad)


def test_paper_preset_masks_the_bias_by_default() -> None:
    assert migu.MIGUConfig().mask_bias is True
    assert migu.MIGUConfig(preset="official").mask_bias is False


def test_threshold_zero_keeps_every_row(tiny_model, make_batch) -> None:
    model = tiny_model("bert")
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.0))
    model(**make_batch(2, 5)).last_hidden_state.sum().backward()
    before = {t.name: t.weight.grad.clone() for t in masker.targets}
    masks = masker.apply()
    for t in masker.targets:
        assert bool(masks[t.name].all())
        assert torch.equal(t.weight.grad, before[t.name])

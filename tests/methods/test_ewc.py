"""EWC: the Fisher against a slow per-example loop, the penalty and its gradient against the closed
form 2 lambda F (theta - theta*), online accumulation by hand, state round trip, bad options."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from migu.methods import EWC, LoRAEWC, TaskContext, get_method
from migu.models import ModelFamily

Families = Callable[..., ModelFamily]  # the make_family fixture
Contexts = Callable[..., TaskContext]  # the family_ctx fixture


def slow_fisher(
    family: ModelFamily, model: nn.Module, rows: list[Any], batch: int = 1
) -> dict[str, torch.Tensor]:
    """Reference: loop over batches of ``batch`` rows, .backward(), square, weight |B|^2 / n, sum."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        model.zero_grad(set_to_none=True)
        family.forward(model, family.collate(part)).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                out[n] += p.grad.pow(2) * len(part) ** 2 / len(rows)
    model.zero_grad(set_to_none=True)
    model.train()
    return out


def perturb(model: nn.Module, scale: float = 0.01, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


def consolidate(method: EWC, family: ModelFamily, ctx_for: Contexts, i: int, rows: list[Any]) -> TaskContext:
    ctx = ctx_for(family, i, rows)
    method.on_task_start(ctx)
    method.on_task_end(ctx)
    return ctx


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_fisher_equals_the_per_example_reference(
    kind: str, make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family(kind)
    method = EWC()
    method.prepare_model(fam.model, fam.spec)
    consolidate(method, fam, family_ctx, 0, rows)
    ref = slow_fisher(fam, fam.model, rows)
    got = method._fisher["0"]
    assert set(got) == set(ref) == {n for n, _ in fam.model.named_parameters()}
    for n in ref:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-12, msg=n)
    assert sum(float(f.sum()) for f in got.values()) > 0
    anchor = method._anchor["0"]
    for n, p in fam.model.named_parameters():
        assert torch.equal(anchor[n], p.detach())


def test_batched_fisher_is_the_documented_approximation(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = EWC(fisher_batch_size=3)  # 8 rows: batches of 3, 3, 2
    consolidate(method, fam, family_ctx, 0, rows)
    ref = slow_fisher(fam, fam.model, rows, batch=3)
    exact = slow_fisher(fam, fam.model, rows, batch=1)
    for n in ref:
        torch.testing.assert_close(method._fisher["0"][n], ref[n], rtol=1e-5, atol=1e-12)
    total = sum(float(f.sum()) for f in ref.values())
    assert total != pytest.approx(sum(float(f.sum()) for f in exact.values()), rel=1e-3)


def test_fisher_samples_is_a_seeded_cap(make_family: Families, rows: list[Any], family_ctx: Contexts) -> None:
    fam = make_family("bert")
    method = EWC(fisher_samples=3)
    method.on_run_start(7)
    ctx = family_ctx(fam, 0, rows)
    picked = method.fisher_rows(ctx)
    again = EWC(fisher_samples=3)
    again.on_run_start(7)
    other = EWC(fisher_samples=3)
    other.on_run_start(8)
    assert len(picked) == 3 and picked == again.fisher_rows(ctx)
    assert [rows.index(r) for r in picked] == sorted(rows.index(r) for r in picked)
    assert picked != other.fisher_rows(ctx)  # another seed, another sample (for these seeds)
    method.on_task_start(ctx)
    method.on_task_end(ctx)
    ref = slow_fisher(fam, fam.model, picked)
    for n in ref:
        torch.testing.assert_close(method._fisher["0"][n], ref[n], rtol=1e-5, atol=1e-12)


def test_penalty_is_zero_at_the_anchor_and_its_gradient_is_the_closed_form(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    model = fam.model
    method = EWC(ewc_lambda=300.0)
    consolidate(method, fam, family_ctx, 0, rows[:4])
    assert float(method.penalty(model).detach()) == 0.0  # theta == theta*
    perturb(model, seed=1)
    consolidate(method, fam, family_ctx, 1, rows[4:])  # a 2nd (Fisher, anchor) pair
    perturb(model, seed=2)
    pen = method.penalty(model)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(pen, list(params.values()))
    expected_value = 0.0
    for (n, p), g in zip(params.items(), grads, strict=True):
        closed = sum(
            2 * 300.0 * method._fisher[k][n] * (p.detach() - method._anchor[k][n]) for k in ("0", "1")
        )
        torch.testing.assert_close(g, closed, rtol=1e-5, atol=1e-10, msg=n)
        expected_value += sum(
            float((method._fisher[k][n] * (p.detach() - method._anchor[k][n]) ** 2).sum()) for k in ("0", "1")
        )
    assert float(pen.detach()) == pytest.approx(300.0 * expected_value, rel=1e-5)
    assert float(pen.detach()) > 0
    with torch.no_grad():
        zero_lambda = EWC(ewc_lambda=0.0)
        zero_lambda._fisher, zero_lambda._anchor = method._fisher, method._anchor
        assert float(zero_lambda.penalty(model).detach()) == 0.0


def test_online_accumulates_gamma_f_old_plus_f_new_with_one_anchor(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    model = fam.model
    method = EWC(online=True, gamma=0.5)
    f1 = slow_fisher(fam, model, rows[:4])
    consolidate(method, fam, family_ctx, 0, rows[:4])
    perturb(model)
    f2 = slow_fisher(fam, model, rows[4:])
    consolidate(method, fam, family_ctx, 1, rows[4:])
    assert list(method._fisher) == list(method._anchor) == ["online"]
    for n, p in model.named_parameters():
        torch.testing.assert_close(method._fisher["online"][n], 0.5 * f1[n] + f2[n], rtol=1e-5, atol=1e-12)
        assert torch.equal(method._anchor["online"][n], p.detach())  # the latest end point only
    assert float(method.penalty(model).detach()) == 0.0


def test_step_loss_adds_the_penalty_from_the_second_task(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    from migu.methods import StepContext

    fam = make_family("bert")
    method = get_method("ewc")
    batch = fam.collate(rows[:4])
    ctx0 = family_ctx(fam, 0, rows)
    method.on_task_start(ctx0)
    out = fam.forward(fam.model, batch)
    assert float(method.step_loss(StepContext(ctx0, fam.model, batch, out, 0))["ewc"].detach()) == 0.0
    method.on_task_end(ctx0)
    perturb(fam.model)
    ctx1 = family_ctx(fam, 1, rows)
    method.on_task_start(ctx1)
    terms = method.step_loss(StepContext(ctx1, fam.model, batch, fam.forward(fam.model, batch), 0))
    assert set(terms) == {"ewc"} and float(terms["ewc"].detach()) > 0 and terms["ewc"].requires_grad


def test_lora_ewc_holds_only_the_adapter_and_head(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = LoRAEWC()
    model = method.prepare_model(fam.model, fam.spec)
    consolidate(method, fam, family_ctx, 0, rows)
    names = set(method._fisher["0"])
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or n.startswith("classifier.") for n in names)


def test_the_runs_last_task_gets_no_fisher_unless_asked(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    skip, keep = EWC(), EWC(last_task_fisher=True)
    for method in (skip, keep):
        for i, part in enumerate((rows[:4], rows[4:])):
            ctx = family_ctx(fam, i, part, n_tasks=2)
            method.on_task_start(ctx)
            method.on_task_end(ctx)
    assert list(skip._fisher) == ["0"] and list(keep._fisher) == ["0", "1"]
    first, last = slow_fisher(fam, fam.model, rows[:4]), slow_fisher(fam, fam.model, rows[4:])
    for n in first:  # what every later task would read is the same either way
        torch.testing.assert_close(skip._fisher["0"][n], first[n], rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(keep._fisher["1"][n], last[n], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("online", [False, True])
def test_state_round_trip_through_safetensors_restores_the_penalty(
    online: bool, make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = EWC(online=online)
    consolidate(method, fam, family_ctx, 0, rows[:4])
    perturb(fam.model)
    consolidate(method, fam, family_ctx, 1, rows[4:])
    moved = copy.deepcopy(fam.model)
    perturb(moved, seed=3)
    state, tensors = method.state_dict(), load(save(method.state_tensors()))
    fresh = EWC(online=online)
    for i in range(2):  # what the runner replays on resume: structure only
        ctx = family_ctx(fam, i, rows, rebuilding=True)
        fresh.on_task_start(ctx)
        fresh.on_task_end(ctx)
    assert not fresh._fisher
    fresh.load_state_dict(state, tensors)
    want = float(method.penalty(moved).detach())
    assert float(fresh.penalty(moved).detach()) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="online"):
        EWC(online=not online).load_state_dict(state, tensors)


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"ewc_lambda": -1.0}, "ewc_lambda"),
        ({"ewc_lambda": float("inf")}, "ewc_lambda"),
        ({"gamma": 1.5}, "gamma"),
        ({"fisher_batch_size": 0}, "fisher_batch_size"),
        ({"fisher_samples": 0}, "fisher_samples"),
        ({"online": "yes"}, "online"),
        ({"last_task_fisher": 1}, "last_task_fisher"),
        ({"lambda": 1.0}, "lambda"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], bad: str) -> None:
    for name in ("ewc", "lora_ewc"):
        with pytest.raises(ValueError, match=f"'{bad}'"):
            get_method(name, **options)

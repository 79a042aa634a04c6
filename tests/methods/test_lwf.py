"""LwF: the KL term against explicit softmaxes (the encoder's -inf off-option logits included), the
teacher is the start-of-task model (a deep copy's logits), the live weights are never written."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from migu.methods import LoRALwF, LwF, StepContext, TaskContext, get_method
from migu.methods.lwf import distillation_kl
from migu.models import ModelFamily

Families = Callable[..., ModelFamily]  # the make_family fixture
Contexts = Callable[..., TaskContext]  # the family_ctx fixture


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """T^2 * mean over rows of sum_c p_c log(p_c / q_c), softmaxes written out over finite entries."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        pairs = enumerate(zip(s_row, t_row, strict=True))
        keep = [j for j, (a, b) in pairs if math.isfinite(a) and math.isfinite(b)]
        zp = sum(math.exp(t_row[j] / t) for j in keep)
        zq = sum(math.exp(s_row[j] / t) for j in keep)
        for j in keep:
            p, q = math.exp(t_row[j] / t) / zp, math.exp(s_row[j] / t) / zq
            total += p * math.log(p / q)
    return t * t * total / student.shape[0]


def test_kl_matches_explicit_softmaxes_and_ignores_off_option_logits() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 6, generator=g, dtype=torch.float64).float().requires_grad_()
    teacher = torch.randn(5, 6, generator=g)
    off = torch.zeros(5, 6, dtype=torch.bool)
    off[0, 2:] = True  # an example with two options
    off[3, 5] = True
    s = student.masked_fill(off, float("-inf"))
    t = teacher.masked_fill(off, float("-inf"))
    for temp in (1.0, 2.0, 3.5):
        got = distillation_kl(s, t, temp)
        assert float(got.detach()) == pytest.approx(reference_kl(s.detach(), t, temp), rel=1e-5)
    got.backward()
    assert torch.isfinite(student.grad).all()
    assert (student.grad[off] == 0).all() and (student.grad[~off] != 0).any()
    assert float(distillation_kl(t, t, 2.0)) == pytest.approx(0.0, abs=1e-7)


def lwf_step(method: LwF, ctx: TaskContext, family: ModelFamily, batch: dict[str, torch.Tensor]) -> Any:
    out = family.forward(ctx.model, batch)
    return out, method.step_loss(StepContext(ctx, ctx.model, batch, out, 0))


def sgd_steps(
    method: LwF, ctx: TaskContext, family: ModelFamily, batch: dict[str, torch.Tensor], steps: int = 3
) -> None:
    opt = torch.optim.SGD([p for p in ctx.model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        out, terms = lwf_step(method, ctx, family, batch)
        (out.loss + sum(terms.values())).backward()  # an in-place write to a live weight would fail here
        opt.step()


@pytest.mark.parametrize(("kind", "cls"), [("bert", LwF), ("bert", LoRALwF), ("t5", LwF), ("llama", LoRALwF)])
def test_teacher_is_the_start_of_task_model_and_the_term_is_the_reference_kl(
    kind: str,
    cls: type[LwF],
    make_family: Families,
    rows: list[Any],
    family_ctx: Contexts,
) -> None:
    fam = make_family(kind)
    method = cls(temperature=2.0, weight=0.7)
    model = method.prepare_model(fam.model, fam.spec)
    batch = fam.collate(rows[:4])
    ctx0 = family_ctx(fam, 0, rows)
    method.on_task_start(ctx0)
    assert not method.has_teacher
    _, terms = lwf_step(method, ctx0, fam, batch)
    assert float(terms["lwf"]) == 0.0 and not terms["lwf"].requires_grad  # no teacher on task 0
    sgd_steps(method, ctx0, fam, batch)
    method.on_task_end(ctx0)

    ctx1 = family_ctx(fam, 1, rows)
    method.on_task_start(ctx1)
    start = copy.deepcopy(model).eval()  # the model as task 1 starts
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(method._teacher) == trainable
    if cls is LoRALwF:
        assert all("lora_" in n or n.startswith("classifier.") for n in trainable)
    sgd_steps(method, ctx1, fam, batch)  # the student moves away; the teacher must not

    with torch.no_grad():
        want = fam.forward(start, batch).logits
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    teacher = method.teacher_logits(ctx1, batch)
    torch.testing.assert_close(teacher, want, rtol=0, atol=1e-6)
    assert model.training  # eval for the teacher only
    out, terms = lwf_step(method, ctx1, fam, batch)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # never written
    student = out.logits.detach()
    assert not torch.allclose(student, want)  # trained: a real distillation target
    assert float(terms["lwf"].detach()) == pytest.approx(0.7 * reference_kl(student, want, 2.0), rel=1e-4)
    terms["lwf"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    method.on_task_end(ctx1)
    assert not method.has_teacher


def test_encoder_family_minus_inf_logits_give_no_nan(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    batch = fam.collate(rows)  # sentiment rows have 2 options of 5 labels: 3 logits are -inf
    out = fam.forward(fam.model, batch)
    assert torch.isinf(out.logits).any()
    method = get_method("lwf")
    ctx0, ctx1 = family_ctx(fam, 0, rows), family_ctx(fam, 1, rows)
    method.on_task_start(ctx0)
    method.on_task_end(ctx0)
    method.on_task_start(ctx1)
    with torch.no_grad():
        for p in fam.model.parameters():
            p.add_(0.05)
    out, terms = lwf_step(method, ctx1, fam, batch)
    assert torch.isfinite(terms["lwf"]) and float(terms["lwf"].detach()) > 0


def test_rebuilding_and_zero_weight_take_no_snapshot(
    make_family: Families, rows: list[Any], family_ctx: Contexts
) -> None:
    fam = make_family("bert")
    method = LwF()
    method.on_task_start(family_ctx(fam, 1, rows, rebuilding=True))
    assert not method.has_teacher
    off = LwF(weight=0.0)
    off.on_task_start(family_ctx(fam, 1, rows))
    assert not off.has_teacher
    assert method.state_dict() == {} and method.state_tensors() == {}


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"alpha_kd": 1.0}, "alpha_kd"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], bad: str) -> None:
    for name in ("lwf", "lora_lwf"):
        with pytest.raises(ValueError, match=f"'{bad}'"):
            get_method(name, **options)

"""LwF (Li & Hoiem 2017, "Learning without Forgetting", TPAMI): distill the previous model's outputs.

While training task i >= 1, each micro-batch gets the term (``step_loss`` key ``"lwf"``)::

    lwf = weight * T^2 * mean_rows KL( softmax(z_old / T) || softmax(z_new / T) )

over the family's logits: the encoder family's [B, n_labels] label logits, restricted to each
example's options (the family sets the others to -inf; they are left out of both softmaxes, so no
NaN), or the generative families' [N, vocab] logits at the N real answer positions (rows are then
answer tokens). The teacher z_old is the model as it was at the start of task i, in eval mode (no
dropout), on the current batch. Task 0 has no teacher and no term.

Li & Hoiem's loss is the cross-entropy between the temperature-softened recorded and current
outputs, whose gradient is the KL's (they differ by the teacher's entropy, a constant); T = 2 and
loss balance lambda_o = 1 are theirs. The T^2 factor is Hinton et al. (2015)'s, keeping the
gradient's scale independent of T; Li & Hoiem have none, so their exact weighting is
``weight = 1 / T^2`` (0.25). MIGU: the runner masks the gradient of task loss + distillation; no
paper threshold exists for LwF + MIGU, so it is the base method's (0.7).

The teacher costs one no-grad forward per micro-batch and a snapshot of the *trainable* parameters
taken at the task's start: for LoRA the adapter and head only; for FT unavoidably one copy of the
model. The teacher's logits come from ``torch.func.functional_call`` with the snapshot substituted
for those parameters, under ``torch.no_grad``: the live parameters are never written (the current
batch's autograd graph holds them; an in-place copy would break its backward). Nothing learned is
kept between tasks, so a resumed run takes the same snapshot from the loaded weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ._options import check_float
from .base import Batch, CLMethod, ForwardOutput, MethodNeeds, StepContext, TaskContext
from .ft import FT
from .lora import LoRA


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over rows of KL(softmax(teacher/T) || softmax(student/T)), fp32.

    ``student``, ``teacher``: [R, C] logits; entries that are -inf in either (the encoder family's
    off-option labels) are excluded from both distributions. A row with no finite entry adds 0.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"LwF: student logits {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    keep = torch.isfinite(student) & torch.isfinite(teacher)  # [R, C]
    floor = torch.finfo(torch.float32).min  # exp(floor - max) is exactly 0: masked entries drop out
    s = torch.where(keep, student.float() / temperature, floor)
    t = torch.where(keep, teacher.float() / temperature, floor)
    log_q = F.log_softmax(s, dim=-1)  # [R, C] student
    log_p = F.log_softmax(t, dim=-1)  # [R, C] teacher
    kl = torch.where(keep, log_p.exp() * (log_p - log_q), 0.0).sum(-1)  # [R]
    return temperature * temperature * kl.mean()


class _FamilyCall(nn.Module):
    """Runs the family's forward on ``model``, so functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Batch], ForwardOutput]) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, batch: Batch) -> ForwardOutput:
        return self._forward(self.model, batch)


@dataclass
class LwFMixin(CLMethod):
    """Adds LwF's distillation to a method (first in the bases: ``class X(LwFMixin, LoRA)``).

    Options: ``temperature`` (2.0, > 0), ``weight`` (1.0, >= 0).
    """

    needs: ClassVar[MethodNeeds] = MethodNeeds()
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "instruct")

    temperature: float = 2.0
    weight: float = 1.0
    _teacher: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        check_float(self, "temperature", 0.0, math.inf, low_open=True, high_open=True)
        check_float(self, "weight", 0.0, math.inf, high_open=True)

    @property
    def has_teacher(self) -> bool:
        return bool(self._teacher)

    def on_task_start(self, ctx: TaskContext) -> None:
        """Snapshot the trainable parameters as they are now: the teacher of this task (none on task 0)."""
        super().on_task_start(ctx)
        self._teacher = {}
        if ctx.rebuilding or ctx.task_index == 0 or self.weight == 0.0:
            return
        self._teacher = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad}

    def on_task_end(self, ctx: TaskContext) -> None:
        super().on_task_end(ctx)
        self._teacher = {}  # the snapshot's memory back before evaluation

    @torch.no_grad()
    def teacher_logits(self, ctx: TaskContext, batch: Batch) -> torch.Tensor:
        """The start-of-task model's logits on ``batch`` (eval mode, snapshot substituted, no grad)."""
        if ctx.forward is None:
            raise RuntimeError(f"task {ctx.task_name!r}: no family forward for the LwF teacher")
        model = ctx.model
        was_training = model.training
        model.eval()
        try:
            call = _FamilyCall(model, ctx.forward)
            out = functional_call(call, {f"model.{n}": t for n, t in self._teacher.items()}, (batch,))
        finally:
            model.train(was_training)
        if out.logits is None:
            raise RuntimeError("LwF: the family's forward gave no logits to distill")
        return out.logits

    def step_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """{"lwf": weight * T^2 * KL(teacher || student)} (a zero without a teacher)."""
        terms = super().step_loss(ctx)
        student = ctx.output.logits
        if not self._teacher or student is None:
            terms["lwf"] = torch.zeros((), device=ctx.output.loss.device)
            return terms
        teacher = self.teacher_logits(ctx.task, ctx.batch)
        terms["lwf"] = self.weight * distillation_kl(student, teacher.to(student.device), self.temperature)
        return terms


@dataclass
class LwF(LwFMixin, FT):
    """FT + LwF (the teacher is a full copy of the weights at each task's start)."""

    name: ClassVar[str] = "lwf"
    paper_name: ClassVar[str] = "LwF"
    description: ClassVar[str] = (
        "FT plus LwF: distill the start-of-task model's outputs on the current batch (KL at T=2); "
        "no old data, one teacher copy of the weights"
    )
    default_threshold: ClassVar[float] = 0.7


@dataclass
class LoRALwF(LwFMixin, LoRA):
    """LoRA + LwF (the teacher snapshot is the adapter and head only)."""

    name: ClassVar[str] = "lora_lwf"
    paper_name: ClassVar[str] = "LoRALwF"
    description: ClassVar[str] = (
        "LoRA plus LwF: distill the start-of-task adapter's outputs on the current batch (KL at T=2); "
        "no old data"
    )
    default_threshold: ClassVar[float] = 0.7

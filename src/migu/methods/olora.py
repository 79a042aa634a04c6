"""OIncLoRA (O-LoRA, Wang et al. 2023): IncLoRA plus an orthogonality loss and an L2 term.

Loss terms while training task i (adapter ``task_i``), following the O-LoRA code
(cmnfriend/O-LoRA, ``src/uie_trainer_lora.py``, ``UIETrainer.training_step``)::

    orth = lambda1 * sum_layers sum_{k<i} sum_{a,b} | (A_k A_i^T)[a, b] |     # L1 over all r x r entries
    l2   = lambda2 * sum_layers ( ||A_i||_2 + ||B_i||_2 )                     # torch.norm(param, p=2)

There, the old tasks' A matrices are concatenated into one ``lora_A`` ([k r, d_in]) and the term is
``torch.abs(torch.mm(lora_A, loranew_A.T)).sum()``: the same number as summing over old tasks. Their
L2 is ``torch.norm(param, p=2)`` over every ``loranew_`` parameter, i.e. the (unsquared) Frobenius
norm of each of the new A and B, summed. Defaults lambda1 = 0.5, lambda2 = 0 (their standard-
benchmark scripts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ._options import check_float
from .base import StepContext
from .inclora import IncLoRA
from .lora import adapter_parameters, lora_layers


def orthogonality(model: nn.Module, new: str, old: list[str]) -> torch.Tensor | None:
    """sum over LoRA layers and old adapters of sum |A_old A_new^T| (fp32), or None if nothing to sum."""
    total: torch.Tensor | None = None
    for _, layer in lora_layers(model):
        if new not in layer.lora_A:
            continue
        olds = [layer.lora_A[k].weight for k in old if k in layer.lora_A]
        if not olds:
            continue
        a_new = layer.lora_A[new].weight.float()  # [r, d_in]
        a_old = torch.cat(olds).float()  # [k r, d_in], as O-LoRA's concatenated lora_A
        term = (a_old @ a_new.t()).abs().sum()
        total = term if total is None else total + term
    return total


def adapter_l2(model: nn.Module, adapter: str) -> torch.Tensor | None:
    """sum of the (unsquared) L2 norms of the adapter's parameters, as O-LoRA's torch.norm(p, 2)."""
    total: torch.Tensor | None = None
    for p in adapter_parameters(model, adapter):
        term = torch.linalg.vector_norm(p.float())
        total = term if total is None else total + term
    return total


@dataclass
class OIncLoRA(IncLoRA):
    """IncLoRA whose new adapter is pushed orthogonal (in A's row space) to the old adapters.

    Options: those of :class:`LoRA`, plus ``lambda1`` (0.5, orthogonality weight) and ``lambda2``
    (0.0, L2 weight on the new adapter). ``step_loss`` returns the *weighted* terms
    ``{"orth", "l2"}`` (what is added to the loss). MIGU threshold 0.1 (paper: 0.05 to 0.1).
    """

    name: ClassVar[str] = "olora"
    paper_name: ClassVar[str] = "OIncLoRA"
    description: ClassVar[str] = (
        "O-LoRA: IncLoRA plus a loss keeping the new adapter's A orthogonal to the old adapters' "
        "(lambda1) and an L2 on the new adapter (lambda2)"
    )
    default_threshold: ClassVar[float] = 0.1

    lambda1: float = 0.5
    lambda2: float = 0.0

    def validate(self) -> None:
        super().validate()
        check_float(self, "lambda1", 0.0, math.inf, high_open=True)
        check_float(self, "lambda2", 0.0, math.inf, high_open=True)

    def step_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """{"orth": lambda1 * orthogonality, "l2": lambda2 * L2}; zeros (no graph) where a weight is 0."""
        return self.penalties(ctx.task.model, ctx.task_index)

    def penalties(self, model: nn.Module, task_index: int) -> dict[str, torch.Tensor]:
        """The weighted terms of task ``task_index``'s adapter (they depend on the weights only)."""
        new = self.adapter_name(task_index)
        orth = orthogonality(model, new, self.old_adapters(task_index)) if self.lambda1 > 0.0 else None
        l2 = adapter_l2(model, new) if self.lambda2 > 0.0 else None
        device = next(model.parameters()).device
        return {
            "orth": self.lambda1 * orth if orth is not None else torch.zeros((), device=device),
            "l2": self.lambda2 * l2 if l2 is not None else torch.zeros((), device=device),
        }

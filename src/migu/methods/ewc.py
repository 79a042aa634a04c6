"""EWC (Kirkpatrick et al. 2017, PNAS) and online EWC (Schwarz et al. 2018, "Progress & Compress").

After each task (not when the runner rebuilds a finished task on resume), the diagonal empirical
Fisher of the trainable parameters is computed from the task's training rows, in fp32, with the
model in eval mode (no dropout noise in the gradients) and the family's own loss::

    F_i = sum_B (|B| / n) * |B| * (d L_B / d theta_i)^2        # L_B: the family's mean loss on batch B

With ``fisher_batch_size`` 1 (the default) this is the exact per-example empirical Fisher
``1/n sum_x (d l_x / d theta_i)^2``. A larger batch is an approximation: the squared gradient of a
batch mean is about ``1/|B|`` of the mean squared per-example gradient when those are uncorrelated,
so it is scaled back by ``|B|`` (ContinualLM, ``networks/baselines/ewc.py``: ``fisher += sbatch *
grad^2``, averaged over batches), at the cost of the cross-example terms it cannot remove.
``fisher_samples`` caps the rows used (a seeded sample, following the run's seed). The last task of
a run gets no Fisher (no later task's penalty reads it; it took as long as the task's training on
the CPU proxy); ``last_task_fisher: true`` computes it for the saved state, as DAS's
``last_domain_importance``.

The penalty added to every later task's loss (``step_loss`` term ``"ewc"``)::

    ewc = ewc_lambda * sum_{tasks t} sum_i F_{t,i} (theta_i - theta*_{t,i})^2

with theta*_t the parameters at the end of task t (Kirkpatrick et al. keep one (F, theta*) pair per
task). ``online: true`` keeps one pair (Schwarz et al.): ``F <- gamma F + F_new`` and theta* the
latest parameters. Memory: 2 fp32 copies of the trainable parameters per finished task (one in all
with ``online``); for FT that is the whole model, for LoRA just the adapters and the head.

Continual pre-training (``EWC`` runs in the ``pretrain`` regime, as ContinualLM's ``ewc`` baseline):
the Fisher is that of the family's MLM loss on the domain's blocks, each masked by the collator as it
is collated. ContinualLM computes it on the first 10k blocks in batches of 100, in train mode
(``networks/baselines/ewc.py::compute``); ``fisher_samples`` and ``fisher_batch_size`` give the
same trade-off here (the default is every block, one at a time).

Defaults and their sources. ``ewc_lambda`` 2500: the penalty above has no 1/2 (the form of Mammoth's
online EWC, ``models/ewc_on.py``, and of Avalanche); ContinualLM writes ``lamb / 2 * sum F (Δθ)^2``
and sets ``args.lamb = 5000`` for EWC (``utils/model.py``, grid 500..50000, "best was 5000"), which
is 2500 here. ``gamma`` 1.0 (Schwarz et al.'s online EWC without forgetting of old importances;
Mammoth's default). ContinualLM merges Fishers by a running mean with one anchor, neither of the two
variants here. MIGU: the runner masks the gradient of task loss + penalty; no paper threshold exists
for EWC + MIGU, so it is the base method's (0.7).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ._options import check_bool, check_float, check_int
from .base import CLMethod, MethodNeeds, StepContext, TaskContext
from .ft import FT
from .lora import LoRA

log = logging.getLogger(__name__)

ONLINE = "online"  # key of the one (Fisher, anchor) pair of online EWC


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters with ``requires_grad``, by name (shared weights once, as named_parameters)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def empirical_fisher(
    ctx: TaskContext, params: dict[str, nn.Parameter], rows: Sequence[Any], batch_size: int
) -> dict[str, torch.Tensor]:
    """sum_B (|B|/n) |B| g_B^2 over ``rows`` in batches of ``batch_size`` (fp32, one tensor per param).

    Gradients come from ``torch.autograd.grad`` so no ``.grad`` is touched; the model runs in eval
    mode and is put back in its previous mode. A batch whose loss is not finite has no target (an
    MLM block in which the collator chose no token: the mean over zero positions) and adds zero.
    """
    names = list(params)
    tensors = [params[n] for n in names]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
    n = len(rows)
    model = ctx.model
    was_training = model.training
    model.eval()
    skipped = 0
    try:
        for batch in ctx.batches(rows, batch_size=batch_size):
            size = int(batch["input_ids"].shape[0])
            with torch.enable_grad():
                loss = ctx.run_forward(batch).loss
                if not bool(torch.isfinite(loss)):  # no target (an MLM block with no chosen token)
                    skipped += 1
                    continue
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            scale = size * size / n
            for f, g in zip(fisher, grads, strict=True):
                if g is not None:
                    f.add_(g.detach().float().pow(2), alpha=scale)
    finally:
        model.train(was_training)
    if skipped:
        log.info("EWC: %d of the Fisher's batches had no finite loss (no target): counted as zero", skipped)
    return dict(zip(names, fisher, strict=True))


@dataclass
class EWCMixin(CLMethod):
    """Adds the EWC penalty to a method (first in the bases: ``class X(EWCMixin, LoRA)``).

    Options: ``ewc_lambda`` (2500, >= 0), ``online`` (False), ``gamma`` (1.0, in [0, 1]; online
    only), ``fisher_batch_size`` (1 = exact per-example Fisher), ``fisher_samples`` (None = every
    training row; else a seeded sample of that many), ``last_task_fisher`` (False: the run's last
    task is not consolidated).
    """

    needs: ClassVar[MethodNeeds] = MethodNeeds()
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "instruct")

    ewc_lambda: float = 2500.0
    online: bool = False
    gamma: float = 1.0
    fisher_batch_size: int = 1
    fisher_samples: int | None = None
    last_task_fisher: bool = False
    _seed: int = field(default=0, init=False, repr=False, compare=False)
    # task key ("0", "1", ... or "online") -> param name -> tensor
    _fisher: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _anchor: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def validate(self) -> None:
        super().validate()
        check_float(self, "ewc_lambda", 0.0, math.inf, high_open=True)
        check_float(self, "gamma", 0.0, 1.0)
        check_int(self, "fisher_batch_size", 1)
        if self.fisher_samples is not None:
            check_int(self, "fisher_samples", 1)
        check_bool(self, "online")
        check_bool(self, "last_task_fisher")

    def on_run_start(self, seed: int) -> None:
        """The Fisher sample (``fisher_samples``) follows the run's seed."""
        super().on_run_start(seed)
        self._seed = seed

    # ------------------------------------------------------------------ Fisher and anchors
    def fisher_rows(self, ctx: TaskContext) -> list[Any]:
        """The rows the Fisher is computed on: all training rows, or a seeded sample (in row order)."""
        rows = list(ctx.examples)
        if self.fisher_samples is None or self.fisher_samples >= len(rows):
            return rows
        rng = random.Random(f"{self._seed}:ewc:{ctx.task_index}:{ctx.task_name}")
        return [rows[j] for j in sorted(rng.sample(range(len(rows)), self.fisher_samples))]

    def consolidate(self, ctx: TaskContext) -> None:
        """Compute this task's Fisher and anchor (the end-of-task parameters) and store them."""
        params = trainable_parameters(ctx.model)
        rows = self.fisher_rows(ctx)
        if not rows or not params:
            log.warning("EWC: task %r has no rows or no trainable parameters: no Fisher", ctx.task_name)
            return
        fisher = empirical_fisher(ctx, params, rows, self.fisher_batch_size)
        anchor = {n: p.detach().float().clone() for n, p in params.items()}
        if self.online:
            old = self._fisher.get(ONLINE, {})
            for n, f in fisher.items():
                if n in old:
                    f.add_(old[n].to(f.device), alpha=self.gamma)  # F <- gamma F_old + F_new
            self._fisher, self._anchor = {ONLINE: fisher}, {ONLINE: anchor}
        else:
            self._fisher[str(ctx.task_index)] = fisher
            self._anchor[str(ctx.task_index)] = anchor
        total = sum(float(f.sum()) for f in fisher.values())
        log.info(
            "EWC: Fisher of task %r from %d rows over %d tensors (sum %.3g)",
            ctx.task_name,
            len(rows),
            len(fisher),
            total,
        )

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """ewc_lambda * sum_t sum_i F_{t,i} (theta_i - theta*_{t,i})^2 (fp32; zero without a Fisher)."""
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device if params else torch.device("cpu")
        total = torch.zeros((), device=device)
        if self.ewc_lambda == 0.0:
            return total
        for key, fisher in self._fisher.items():
            anchor = self._anchor[key]
            for n, f in fisher.items():
                p = params.get(n)
                if p is None or not p.requires_grad:
                    continue  # frozen now (e.g. an old adapter): it cannot move, nothing to hold back
                total = total + (f * (p.float() - anchor[n]).pow(2)).sum()
        return self.ewc_lambda * total

    def _to_device(self, model: nn.Module) -> None:
        """Move stored tensors next to their parameters (a resumed run loads them on the CPU)."""
        params = dict(model.named_parameters())
        for store in (self._fisher, self._anchor):
            for tensors in store.values():
                for n, t in tensors.items():
                    if n in params and t.device != params[n].device:
                        tensors[n] = t.to(params[n].device)

    # ------------------------------------------------------------------ hooks
    def on_task_start(self, ctx: TaskContext) -> None:
        super().on_task_start(ctx)
        if not ctx.rebuilding:
            self._to_device(ctx.model)

    def step_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """{"ewc": the weighted penalty} on the parameters of the model being trained."""
        terms = super().step_loss(ctx)
        terms["ewc"] = self.penalty(ctx.task.model)
        return terms

    def on_task_end(self, ctx: TaskContext) -> None:
        """Consolidate the finished task (not when rebuilding: load_state_dict restores it; not the
        run's last task unless ``last_task_fisher``: nothing reads its Fisher)."""
        super().on_task_end(ctx)
        if ctx.rebuilding:
            return
        last = ctx.n_tasks is not None and ctx.task_index == ctx.n_tasks - 1
        if last and not self.last_task_fisher:
            log.info("EWC: last task %r: its Fisher is not needed, not computed", ctx.task_name)
            return
        self.consolidate(ctx)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The parent's state plus ``ewc``: which (Fisher, anchor) pairs exist and over which names."""
        state = super().state_dict()
        state["ewc"] = {
            "online": self.online,
            "keys": list(self._fisher),
            "params": {k: list(v) for k, v in self._fisher.items()},
        }
        return state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``ewc.fisher.<key>.<param>`` and ``ewc.anchor.<key>.<param>`` (fp32)."""
        tensors = super().state_tensors()
        for key, fisher in self._fisher.items():
            for n, f in fisher.items():
                tensors[f"ewc.fisher.{key}.{n}"] = f
                tensors[f"ewc.anchor.{key}.{n}"] = self._anchor[key][n]
        return tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Restore every (Fisher, anchor) pair from the checkpoint's tensors."""
        super().load_state_dict(state, tensors)
        saved = state.get("ewc")
        if saved is None:
            log.warning("method %r: state has no EWC Fisher; keeping the current one", self.name)
            return
        if bool(saved["online"]) != self.online:
            raise ValueError(
                f"method {self.name!r}: checkpoint was written with online={saved['online']}, "
                f"the config has online={self.online}"
            )
        tensors = tensors or {}
        fisher: dict[str, dict[str, torch.Tensor]] = {}
        anchor: dict[str, dict[str, torch.Tensor]] = {}
        for key in saved["keys"]:
            names = saved["params"][key]
            missing = [n for n in names if f"ewc.fisher.{key}.{n}" not in tensors]
            if missing:
                raise ValueError(f"method {self.name!r}: checkpoint lacks the EWC Fisher of {missing[:3]}")
            fisher[key] = {n: tensors[f"ewc.fisher.{key}.{n}"].float() for n in names}
            anchor[key] = {n: tensors[f"ewc.anchor.{key}.{n}"].float() for n in names}
        self._fisher, self._anchor = fisher, anchor


@dataclass
class EWC(EWCMixin, FT):
    """FT + EWC: every weight trains, held near each old task's solution by its Fisher. Also in the
    continual pre-training regime (ContinualLM's ``ewc`` baseline), where the Fisher is that of the
    family's MLM loss on the domain's blocks, masked by the collator."""

    name: ClassVar[str] = "ewc"
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "pretrain", "instruct")
    paper_name: ClassVar[str] = "EWC"
    description: ClassVar[str] = (
        "FT plus EWC: a Fisher-weighted quadratic penalty pulls weights back toward each earlier "
        "task's end point (online: one decayed Fisher); no old data"
    )
    default_threshold: ClassVar[float] = 0.7


@dataclass
class LoRAEWC(EWCMixin, LoRA):
    """LoRA + EWC on the adapter and head (the only trainable, hence penalized, parameters)."""

    name: ClassVar[str] = "lora_ewc"
    paper_name: ClassVar[str] = "LoRAEWC"
    description: ClassVar[str] = (
        "LoRA plus EWC on the adapter and the shared head (Fisher-weighted pull toward each earlier "
        "task's end point); no old data"
    )
    default_threshold: ClassVar[float] = 0.7

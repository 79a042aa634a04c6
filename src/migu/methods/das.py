"""DAS (Ke et al. 2023, "Continual Pre-training of Language Models", ICLR): soft-masking of units by
their importance, and contrastive integration of new with previously learned knowledge.

For continual pre-training only (``regimes = ("pretrain",)``; the runner refuses it elsewhere).
It follows the reference implementation, ContinualLM (UIC-Liu-Lab/ContinualLM), where the paper
leaves details open; file and function are named below.

**Units and gates.** A unit is an attention head, an FFN intermediate unit or a block's output unit
(ContinualLM's ``layer_to_mask = head_mask_intermediate_mask_output_mask`` for DAS,
``utils/model.py::prepare_sequence_posttrain``). A gate g (one per unit, 1 = unchanged) scales the
head's context, the output of ``intermediate.dense`` before the activation, or the output of
``output.dense`` before dropout/residual/LayerNorm, exactly where ContinualLM's modified RoBERTa
multiplies its masks (``networks/transformers/roberta.py``). Here the gates are forward hooks
(``_encoder.gated``) on an unmodified Hugging Face BERT/RoBERTa.

**Importance** (``networks/baselines/softmask.py::compute_impt``): on the first
``importance_samples`` blocks of a domain (ContinualLM: ``train_dataset.select(range(1e4))``), in
batches of ``importance_batch_size`` (their 100), with the model in train mode::

    raw_l = sum_B |dL_B / dg_l| / (real tokens of all batches)          # all gates at 1

- ``general`` (the general knowledge, once, before the first domain, on its data; their
  ``before_distill``): L = the paper's proxy KL-divergence loss, between the last hidden states of
  two passes of the batch with independent dropout masks, ContinualLM's ``DistillKL(T=1)`` over the
  sequence axis: sum_{b,l,h} p1 (log p1 - log p2) / B with p = softmax over positions l
  (``networks/posttrain/model.py::MyModel.forward``, ``prune_loss='before_distill'``).
- ``after<i>`` (domain i's knowledge, after training on it; their ``after_mlm``): L = the MLM loss.

Each pass is normalized per layer, ``|tanh((raw - mean) / std)|`` (unbiased std; ``impt_norm``), and
the importance used while training domain t is the elementwise max over the passes so far (general,
after0 .. after{t-1}; ``accumulate_impt``). A layer whose raw importances are all equal (e.g. no
dropout, so the proxy KL is 0) normalizes to 0 (ContinualLM would divide by 0).

**Soft-masking** (``softmask.py::soft_mask_gradient``, called every step from
``compute_gradient.py::compute``, from the first domain on): in ``before_optimizer_step`` (after
MIGU's mask, before clipping) each unit's gradients are multiplied by (1 - importance): a head's
rows of Q/K/V (weights and biases) and its columns of ``attention.output.dense``; an intermediate
unit's row of ``intermediate.dense`` and its bias; an output unit's row of ``output.dense`` and its
bias. Embeddings, LayerNorms and the MLM head are not masked, as there.

**Contrastive integration** (``MyModel.forward``, the ``das`` branch; ``simcse.py::
sequence_level_contrast``): each micro-batch adds ``contrast_weight`` times::

    CE_i( [cos(z2_i, z1_j) / tau]_j  ++  [cos(z2_i, z3_j) / tau]_j ,  target i )

with z1, z2 the mean-pooled last hidden states of two dropout passes of the full model on the
batch's *unmasked* tokens (the positives: the full knowledge) and z3 that of one pass with the
accumulated importance as gates (the negatives: the previous knowledge); tau = 0.05 (the
``Similarity(temp=0.05)`` that ``sequence_level_contrast`` uses), weight 1 (their plain
``loss + contrast_loss`` in ``compute_gradient.py::compute``). It costs a 2B- and a B-row forward per
micro-batch, with their backward.

**Differences from ContinualLM**, each a detail of their code rather than of the paper:

- Raw importance takes |gradient| per batch (the paper's importance, after Michel et al. 2019's head
  importance); ContinualLM adds signed gradients (``signed_importance: true``), and adds
  ``head_mask.grad`` after every ``backward`` without zeroing it, which sums cumulative sums (not
  reproduced). The gradients are taken with
  ``torch.autograd.grad``: the importance passes leave the weights' ``.grad`` alone (ContinualLM's
  leak into the first training step is not reproduced).
- The MLM importance feeds the masked batch (``mlm_importance_input: masked``); ContinualLM feeds
  the unmasked ids with the same labels (``original``).
- The two positive views are the two halves of the duplicated batch (rows i and B+i: one example,
  two dropout masks, as in SimCSE). ContinualLM duplicates with ``repeat(2, 1)`` but splits with
  ``view(-1, 2, ...)``, which pairs rows 2i and 2i+1 of the tiled batch (different examples).
- Head soft-masking hits the head's own rows of Q/K/V (``head_grad_layout: units``). ContinualLM
  writes ``weight.grad *= head_mask`` with a [hidden] vector, which broadcasts over the *input*
  columns of Q/K/V, and also scales the bias of ``attention.output.dense``
  (``head_grad_layout: continuallm`` reproduces that).
- The importance passes run in train mode: the paper's two dropout masks need it (ContinualLM's
  ``compute_impt`` leaves the mode as it finds it; its after_mlm pass follows training, in train mode).
- Mean pooling and the proxy KL's softmax skip padded positions (equal on run_mlm's full blocks).
- The importance of the last domain is not computed (nothing in the run reads it;
  ``last_domain_importance: true`` computes it for the saved state).
- Single process: no all-gather of the contrastive batch or the importances.

Every data pass is seeded from (run seed, pass, batch) on a forked RNG, so it does not move the
runner's random stream, and a resumed run (``ctx.rebuilding``: no data pass) restores the raw
importances from ``state_tensors``. MIGU: DAS's gradient scaling multiplies what MIGU's row mask
kept, on the same dense weights, so the two compose (``migu_compatible``); the contrastive forward
passes feed MIGU's statistic like DER++'s replays. No paper threshold exists for DAS + MIGU (0.7,
the base method's).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..validation import invalid
from ._encoder import UNITS, Encoder, capture_hidden, find_encoder, gated, mean_pool
from ._options import check_bool, check_choice, check_float, check_int, option_field
from .base import Batch, CLMethod, MethodNeeds, StepContext, TaskContext

log = logging.getLogger(__name__)

IGNORE = -100
GENERAL = "general"  # the pass before the first domain (ContinualLM's before_distill0)
LAYOUTS = ("units", "continuallm")
MLM_INPUTS = ("masked", "original")


# ---------------------------------------------------------------------------- pure functions
def original_ids(batch: Batch) -> torch.Tensor:
    """[B, L] the unmasked tokens of an MLM batch: the labels where a token was chosen (the collator
    keeps the original there), the input elsewhere (ContinualLM's ``inputs_ori_ids``)."""
    ids, labels = batch["input_ids"], batch["labels"]
    return torch.where(labels != IGNORE, labels, ids)


def sequence_kl(
    first: torch.Tensor, second: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """sum_{b,l,h} p1 (log p1 - log p2) / B, p = softmax over positions l of [B, L, H] (fp32).

    ContinualLM's ``DistillKL(T=1)(teacher, student)`` on ``hidden_states[-1]`` (softmax on dim 1),
    with p1 the first pass; padded positions drop out of both softmaxes.
    """
    keep = (
        torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
        if attention_mask is None
        else attention_mask.to(first.device).bool()
    ).unsqueeze(-1)  # [B, L, 1]
    floor = torch.finfo(torch.float32).min
    log_p1 = F.log_softmax(torch.where(keep, first.float(), floor), dim=1)  # [B, L, H]
    log_p2 = F.log_softmax(torch.where(keep, second.float(), floor), dim=1)
    kl = torch.where(keep, log_p1.exp() * (log_p1 - log_p2), 0.0)
    return kl.sum() / first.shape[0]


def das_contrast(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over i of CE([cos(a_i, p_j)/tau]_j ++ [cos(a_i, n_j)/tau]_j, target i); inputs [B, H].

    ``simcse.py::sequence_level_contrast(z1, z2, z3)`` at world size 1 (its hard-negative weight is 0).
    """
    a = anchor.float()
    pos = F.cosine_similarity(a.unsqueeze(1), positive.float().unsqueeze(0), dim=-1) / temperature  # [B, B]
    neg = F.cosine_similarity(a.unsqueeze(1), negative.float().unsqueeze(0), dim=-1) / temperature  # [B, B]
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(torch.cat([pos, neg], 1), target)


def normalize_importance(raw: torch.Tensor) -> torch.Tensor:
    """[L, n] -> |tanh((raw - mean_l) / std_l)| per layer (unbiased std; 0 where std is 0 or undefined)."""
    raw = raw.float()
    mean = raw.mean(1, keepdim=True)
    std = raw.std(1, keepdim=True) if raw.shape[1] > 1 else torch.zeros_like(mean)
    z = torch.where(std > 0, (raw - mean) / std.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return torch.tanh(z).abs()


def accumulate_importance(passes: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Elementwise max over the normalized passes, per unit kind (ContinualLM's ``accumulate_impt``)."""
    if not passes:
        return {}
    return {k: torch.stack([normalize_importance(p[k]) for p in passes]).amax(0) for k in passes[0]}


def unit_importance(
    encoder: Encoder,
    units: Sequence[str],
    batches: Iterable[tuple[Batch, int]],
    loss_fn: Callable[[Batch], torch.Tensor],
    signed: bool = False,
) -> dict[str, torch.Tensor]:
    """Raw importance {kind: [L, n] fp32}: sum over batches of |dL_B/dg| (signed: dL_B/dg) at g = 1,
    divided by the batches' real tokens. ``batches`` pairs each batch with the seed set just before
    its loss (so its dropout masks are reproducible). A batch whose loss is not finite (an MLM batch
    with no chosen token) adds nothing."""
    shapes = encoder.shapes()
    device = encoder.device
    gates = {k: torch.ones(shapes[k], device=device, requires_grad=True) for k in units}  # [L, n] each
    total = {k: torch.zeros(shapes[k], device=device) for k in units}
    tokens, skipped = 0.0, 0
    for batch, seed in batches:
        torch.manual_seed(seed)
        with torch.enable_grad(), gated(encoder, gates):
            loss = loss_fn(batch)
        mask = batch.get("attention_mask")
        tokens += float(mask.sum()) if mask is not None else float(batch["input_ids"].numel())
        if not bool(torch.isfinite(loss)):
            skipped += 1
            continue
        grads = torch.autograd.grad(loss, [gates[k] for k in units], allow_unused=True)
        for k, g in zip(units, grads, strict=True):
            if g is not None:
                total[k].add_(g.detach() if signed else g.detach().abs())
    if skipped:
        log.info("DAS importance: %d batch(es) without a finite loss skipped", skipped)
    return {k: (t / max(tokens, 1.0)).cpu() for k, t in total.items()}


def _scale(param: torch.nn.Parameter | None, factor: torch.Tensor) -> None:
    if param is not None and param.grad is not None:
        param.grad.mul_(factor.to(device=param.grad.device, dtype=param.grad.dtype))


@torch.no_grad()
def soft_mask_gradients(
    encoder: Encoder, importance: Mapping[str, torch.Tensor], layout: str = "units"
) -> None:
    """Multiply each unit's gradients by (1 - importance) in place (see the module docstring)."""
    for i, layer in enumerate(encoder.layers):
        if "head" in importance:
            keep = (1.0 - importance["head"][i]).repeat_interleave(layer.head_dim)  # [n_heads * d]
            for lin in (layer.query, layer.key, layer.value):
                if layout == "units":
                    _scale(lin.weight, keep.unsqueeze(1))  # the head's rows
                else:
                    if lin.weight.shape[1] != keep.shape[0]:
                        raise ValueError("head_grad_layout 'continuallm' needs all_head_size == hidden_size")
                    _scale(lin.weight, keep.unsqueeze(0))  # ContinualLM: broadcast over the input columns
                _scale(lin.bias, keep)
            _scale(layer.attn_out.weight, keep.unsqueeze(0))  # the head's input columns
            if layout == "continuallm":
                _scale(layer.attn_out.bias, keep)
        if "intermediate" in importance:
            keep = 1.0 - importance["intermediate"][i]  # [I]
            _scale(layer.intermediate.weight, keep.unsqueeze(1))
            _scale(layer.intermediate.bias, keep)
        if "output" in importance:
            keep = 1.0 - importance["output"][i]  # [H]
            _scale(layer.output.weight, keep.unsqueeze(1))
            _scale(layer.output.bias, keep)


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Seeding inside leaves the caller's CPU (and this CUDA device's) random state untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


# ---------------------------------------------------------------------------- the method
@dataclass
class DAS(CLMethod):
    """DAS for continual pre-training of a BERT/RoBERTa masked LM (FT with soft-masks + contrast).

    Options (ContinualLM's values as defaults): ``contrast_weight`` (1.0, >= 0), ``temperature``
    (0.05, > 0), ``units`` (head, intermediate, output), ``general_importance`` (True: the proxy-KL
    pass before the first domain), ``importance_samples`` (10000 blocks; None = all),
    ``importance_batch_size`` (100), ``signed_importance`` (False), ``mlm_importance_input``
    ("masked" | "original"), ``head_grad_layout`` ("units" | "continuallm"),
    ``last_domain_importance`` (False).
    """

    name: ClassVar[str] = "das"
    paper_name: ClassVar[str] = "DAS"
    description: ClassVar[str] = (
        "continual pre-training: unit (head / FFN) importance from gradients of a proxy KL and the "
        "MLM loss soft-masks their gradients; a contrastive term against the importance-gated model"
    )
    default_threshold: ClassVar[float] = 0.7
    needs: ClassVar[MethodNeeds] = MethodNeeds()
    regimes: ClassVar[tuple[str, ...]] = ("pretrain",)
    migu_compatible: ClassVar[bool] = True

    contrast_weight: float = 1.0
    temperature: float = 0.05
    units: tuple[str, ...] = UNITS
    general_importance: bool = True
    importance_samples: int | None = 10000
    importance_batch_size: int = 100
    signed_importance: bool = False
    mlm_importance_input: str = "masked"
    head_grad_layout: str = "units"
    last_domain_importance: bool = False
    _seed: int = field(default=0, init=False, repr=False, compare=False)
    _encoder: Encoder | None = field(default=None, init=False, repr=False, compare=False)
    # pass name ("general", "after0", ...) -> unit kind -> raw [L, n] fp32 on the CPU, in order
    _passes: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _importance: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        check_float(self, "contrast_weight", 0.0, math.inf, high_open=True)
        check_float(self, "temperature", 0.0, math.inf, low_open=True, high_open=True)
        check_int(self, "importance_batch_size", 1)
        if self.importance_samples is not None:
            check_int(self, "importance_samples", 1)
        for flag in ("general_importance", "signed_importance", "last_domain_importance"):
            check_bool(self, flag)
        check_choice(self, "mlm_importance_input", MLM_INPUTS)
        check_choice(self, "head_grad_layout", LAYOUTS)
        units = (self.units,) if isinstance(self.units, str) else self.units
        if (
            not isinstance(units, list | tuple)
            or not units
            or any(u not in UNITS for u in units)
            or len(set(units)) != len(units)
        ):
            raise invalid(
                option_field(self, "units"),
                f"a non-empty list of distinct names from {', '.join(UNITS)}",
                self.units,
            )
        self.units = tuple(u for u in UNITS if u in units)

    # ------------------------------------------------------------------ read-outs
    @property
    def passes(self) -> dict[str, dict[str, torch.Tensor]]:
        """The raw importance of every pass so far, in order (``general``, ``after0``, ...)."""
        return {n: dict(p) for n, p in self._passes.items()}

    def accumulated(self) -> dict[str, torch.Tensor]:
        """The importance the next domain trains with: max over the normalized passes ({} before any)."""
        return accumulate_importance(list(self._passes.values()))

    def seed_for(self, kind: str, task_index: int, part: str | int) -> int:
        """The seed of one part of one importance pass (collation or forward of batch ``part``)."""
        return random.Random(f"{self._seed}:das:{kind}:{task_index}:{part}").getrandbits(62)

    # ------------------------------------------------------------------ importance passes
    def importance_batches(self, ctx: TaskContext, kind: str) -> Iterator[tuple[Batch, int]]:
        """(batch, forward seed) of the first ``importance_samples`` rows, each collated (masked) from
        its own seed: the same batches on every call."""
        rows = list(ctx.examples)
        if self.importance_samples is not None:
            rows = rows[: self.importance_samples]
        size = self.importance_batch_size
        for b, start in enumerate(range(0, len(rows), size)):
            torch.manual_seed(self.seed_for(kind, ctx.task_index, f"collate{b}"))
            batch = next(ctx.batches(rows[start : start + size], batch_size=size))
            yield batch, self.seed_for(kind, ctx.task_index, b)

    def loss_for(self, ctx: TaskContext, kind: str) -> Callable[[Batch], torch.Tensor]:
        """L_impt of a pass: the proxy KL of two dropout passes (general) or the MLM loss (after)."""
        encoder = self._require_encoder()
        if kind == GENERAL:

            def proxy_kl(batch: Batch) -> torch.Tensor:
                with capture_hidden(encoder) as seen:
                    ctx.run_forward(batch)
                    ctx.run_forward(batch)
                return sequence_kl(seen[0], seen[1], batch.get("attention_mask"))

            return proxy_kl

        def mlm(batch: Batch) -> torch.Tensor:
            if self.mlm_importance_input == "original":
                batch = {**batch, "input_ids": original_ids(batch)}
            return ctx.run_forward(batch).loss

        return mlm

    def compute_pass(self, ctx: TaskContext, kind: str) -> dict[str, torch.Tensor]:
        """Run one importance pass on the task's rows (train mode, forked RNG) and store it."""
        model, name = ctx.model, kind if kind == GENERAL else f"after{ctx.task_index}"
        encoder = self._require_encoder()
        was_training = model.training
        model.train()  # the proxy KL needs dropout; ContinualLM's after_mlm runs in train mode too
        try:
            with _forked_rng(encoder.device):
                raw = unit_importance(
                    encoder,
                    self.units,
                    self.importance_batches(ctx, kind),
                    self.loss_for(ctx, kind),
                    signed=self.signed_importance,
                )
        finally:
            model.train(was_training)
        self._passes[name] = raw
        usage = {k: round(float(normalize_importance(v).mean()), 4) for k, v in raw.items()}
        log.info("DAS: importance %s of task %r (mean normalized: %s)", name, ctx.task_name, usage)
        return raw

    def _require_encoder(self) -> Encoder:
        if self._encoder is None:
            raise RuntimeError("DAS: no encoder yet (on_task_start finds it)")
        return self._encoder

    # ------------------------------------------------------------------ hooks
    def on_run_start(self, seed: int) -> None:
        """The importance passes' seeds follow the run's seed."""
        super().on_run_start(seed)
        self._seed = seed

    def on_task_start(self, ctx: TaskContext) -> None:
        """Find the units; before the first domain, the general importance; then the accumulated
        importance this domain trains with."""
        super().on_task_start(ctx)
        self._encoder = find_encoder(ctx.model)
        if ctx.rebuilding:
            return
        if ctx.task_index == 0:
            self._passes = {}
            if self.general_importance:
                self.compute_pass(ctx, GENERAL)
        acc = self.accumulated()
        device = self._encoder.device
        self._importance = {k: v.to(device) for k, v in acc.items()} if acc else None
        if self._importance is None:
            log.warning("DAS: no importance for task %r: no soft-mask, no contrastive term", ctx.task_name)
        else:
            usage = {k: round(float(v.mean()), 4) for k, v in self._importance.items()}
            log.info("DAS: task %r trains with accumulated importance (mean %s)", ctx.task_name, usage)

    def step_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """{"das_contrast": contrast_weight * the contrastive term} (zero before any importance)."""
        terms = super().step_loss(ctx)
        if self._importance is None or self.contrast_weight == 0.0:
            terms["das_contrast"] = torch.zeros((), device=ctx.output.loss.device)
            return terms
        encoder = self._require_encoder()
        batch = ctx.batch
        ids = original_ids(batch)  # [B, L]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        labels = batch["labels"]  # kept so the MLM head runs at the chosen positions only
        n = ids.shape[0]
        twice = {
            "input_ids": ids.repeat(2, 1),
            "attention_mask": mask.repeat(2, 1),
            "labels": labels.repeat(2, 1),
        }
        with capture_hidden(encoder) as seen:
            ctx.forward(twice)
        full = seen[-1]  # [2B, L, H]: rows i and B+i are one example under two dropout masks
        with gated(encoder, self._importance), capture_hidden(encoder) as seen:
            ctx.forward({"input_ids": ids, "attention_mask": mask, "labels": labels})
        prev = seen[-1]  # [B, L, H]: the importance-gated model (previous knowledge)
        m = mask.to(full.device)
        z1, z2 = mean_pool(full[:n], m), mean_pool(full[n:], m)  # [B, H] each
        z3 = mean_pool(prev, m)
        terms["das_contrast"] = self.contrast_weight * das_contrast(z2, z1, z3, self.temperature)
        return terms

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        """Soft-mask: scale each unit's gradients by (1 - its accumulated importance)."""
        super().before_optimizer_step(ctx)
        if self._importance is not None:
            soft_mask_gradients(self._require_encoder(), self._importance, self.head_grad_layout)

    def on_task_end(self, ctx: TaskContext) -> None:
        """The domain's MLM importance (not when rebuilding: load_state_dict restores it)."""
        super().on_task_end(ctx)
        self._importance = None
        if ctx.rebuilding:
            return
        last = ctx.n_tasks is not None and ctx.task_index == ctx.n_tasks - 1
        if last and not self.last_domain_importance:
            log.info("DAS: last domain %r: its importance is not needed, not computed", ctx.task_name)
            return
        self.compute_pass(ctx, "after")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The parent's state plus ``das``: the passes in order and their unit kinds."""
        state = super().state_dict()
        state["das"] = {"passes": list(self._passes), "units": list(self.units)}
        return state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``das.<pass>.<kind>``: each pass's raw importance [L, n] fp32."""
        tensors = super().state_tensors()
        for name, p in self._passes.items():
            for k, t in p.items():
                tensors[f"das.{name}.{k}"] = t.detach().cpu().contiguous()
        return tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Restore the raw importances; the accumulated one is rebuilt at the next task's start."""
        super().load_state_dict(state, tensors)
        saved = state.get("das")
        if saved is None:
            log.warning("method %r: state has no DAS importance; keeping the current one", self.name)
            return
        if tuple(saved["units"]) != self.units:
            raise ValueError(
                f"method {self.name!r}: checkpoint has importance of units {saved['units']}, "
                f"the config asks for {list(self.units)}"
            )
        tensors = tensors or {}
        passes: dict[str, dict[str, torch.Tensor]] = {}
        for name in saved["passes"]:
            missing = [k for k in self.units if f"das.{name}.{k}" not in tensors]
            if missing:
                raise ValueError(f"method {self.name!r}: checkpoint lacks the importance {name}.{missing}")
            passes[name] = {k: tensors[f"das.{name}.{k}"].float().cpu() for k in self.units}
        self._passes, self._importance = passes, None

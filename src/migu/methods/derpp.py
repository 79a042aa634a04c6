"""DER++ (Buzzega et al. 2020, "Dark Experience for General Continual Learning", NeurIPS).

A reservoir buffer of ``buffer_size`` training rows, each kept with the logits the model gave it
when it was inserted. Each micro-batch's loss (``step_loss`` terms ``"der_mse"``, ``"der_ce"``)::

    loss = CE(batch) + alpha * MSE(logits(x'), z') + beta * CE(logits(x''), y'')

with (x', z') and (x'', y'') two independent buffer minibatches of ``minibatch`` rows (default: the
training batch size), drawn without replacement (the paper's Algorithm 2; Mammoth's
``models/derpp.py``, ``Buffer.get_data``). Then the batch's rows are offered to the buffer with their
logits (``outputs.data``, computed before this step's update) by reservoir sampling, Vitter's
Algorithm R as in the paper's ``Buffer.add_data``/``reservoir``: the n-th row seen (0-based, over the
whole stream, all tasks, every epoch's pass) takes slot n while the buffer has room, else slot
j ~ U{0..n} if j < buffer_size, else it is dropped. The buffer replays from the first task on.

Defaults alpha 0.1, beta 0.5, buffer 200, minibatch = batch size: the paper's / Mammoth's best
arguments for seq-CIFAR-10 with a 200-example buffer (``utils/best_args.py``). MIGU: the runner
masks the gradient of all three terms; the buffer's forward passes feed MIGU's statistic too (like
replayed rows in a batch). No paper threshold exists for DER++ + MIGU: that of the paper's
rehearsal method (LoRAReplay, 0.4).

What is stored per row: the family's logits for it, as a [k, C] block: k = 1 and C = n_labels for
the encoder family (-inf off the row's options: the MSE reads only finite entries), k = answer
tokens and C = vocab for the generative ones (full fp32 rows: buffer_size x k x vocab x 4 bytes,
about 50 MB for 200 rows of 2-token answers at T5's 32k vocab; the checkpoint holds them too).

In continual pre-training (the masked-LM stage: the rows are token blocks, masked at random by the
collator each time they are collated) a buffer row is the training batch's row *as masked*
(``input_ids``, ``attention_mask``, ``labels`` as lists), so a replay reuses its masking and its
stored target, and the target is the encoder's last hidden state at the row's real positions, a
[L, H] block (ContinualLM's choice, ``networks/baselines/memory.py::Buffer.add_from_loader``
stores ``hidden_states[-1]`` and ``approaches/compute_gradient.py`` replays it by MSE): the
vocabulary logits at the masked positions would take 12x the memory (200 rows of 128-token MiniLM
blocks: 39 MB of hidden states, 460 MB of logits). The hidden states come from a forward hook on the
encoder (``_encoder.find_encoder``), held while the task trains. ContinualLM fills its buffer once
per domain after training, from its first 10k blocks with the end-of-domain model; here it is the
paper's reservoir over the training stream, as in the other regimes. Replayed rows are stacked
as stored (run_mlm blocks all have one length; rows of different lengths are right-padded with id 0,
attention 0, label -100, which reaches no real position).

Which rows a batch holds: the runner hands ``step_loss`` a collated batch, not rows, so each
training row of the task is keyed by its real input ids (``attention_mask``) and real labels
(``!= -100``), computed once per task through the family's ``collate``; a batch's rows are looked up
by the same key. Rows that collate identically are interchangeable for training, so which of them is
stored does not matter. Every draw is seeded by (run seed, position in the stream / task and call),
no random state is carried, and the buffer (rows as JSON, logits as safetensors, rows seen) is saved
with each checkpoint, so a resumed run replays exactly. Single process only (each data-parallel
rank would keep its own buffer).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..data.cl_benchmark import Example
from ._encoder import Encoder, find_encoder, last_hidden
from ._options import check_float, check_int
from .base import Batch, CLMethod, MethodNeeds, StepContext, TaskContext
from .ft import FT
from .lora import LoRA

log = logging.getLogger(__name__)

IGNORE = -100  # label padding of the generative families
RowKey = tuple[tuple[int, ...], tuple[int, ...]]


def reservoir_slot(seen: int, size: int, seed: int) -> int:
    """Algorithm R for the ``seen``-th row (0-based): its slot in a buffer of ``size``, or -1 (dropped)."""
    if seen < size:
        return seen
    j = random.Random(f"{seed}:derpp:reservoir:{seen}").randint(0, seen)  # U{0..seen}
    return j if j < size else -1


def row_keys(batch: Batch) -> list[RowKey]:
    """One key per example of a collated batch: (real input ids, real labels); padding-independent."""
    ids = batch["input_ids"].detach().cpu()
    mask = batch.get("attention_mask")
    mask = mask.detach().cpu().bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    labels = batch["labels"].detach().cpu()
    keys: list[RowKey] = []
    for i in range(ids.shape[0]):
        lab = labels[i].reshape(-1)
        keys.append((tuple(ids[i][mask[i]].tolist()), tuple(lab[lab != IGNORE].tolist())))
    return keys


def split_logits(logits: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
    """The family's [R, C] logits of a batch as one [k_i, C] block per example.

    Encoder family: R = B, one row each. Generative: R = real answer positions in row-major order,
    k_i = example i's real labels (decoder-only models predict labels[:, 1:], the first always a
    prompt position, so the count is the same).
    """
    labels = batch["labels"]
    if labels.dim() == 1:
        counts = [1] * labels.shape[0]
    else:
        counts = (labels != IGNORE).sum(1).tolist()
        if sum(counts) != logits.shape[0]:
            counts = (labels[:, 1:] != IGNORE).sum(1).tolist()
    if sum(counts) != logits.shape[0]:
        raise RuntimeError(
            f"DER++: {logits.shape[0]} logit rows for a batch whose labels give {sum(counts)}: "
            "this family's logits cannot be split per example"
        )
    return list(torch.split(logits, counts))


def logit_mse(new: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries finite in both (the encoder's options), fp32."""
    if new.shape != stored.shape:
        raise RuntimeError(f"DER++: buffer logits {tuple(stored.shape)} vs model logits {tuple(new.shape)}")
    keep = torch.isfinite(new) & torch.isfinite(stored)
    if not bool(keep.any()):
        return new.sum() * 0.0
    return F.mse_loss(new[keep].float(), stored[keep].float())


def is_token_blocks(rows: Sequence[Any]) -> bool:
    """True for the masked-LM stage's rows (``data.corpus.Blocks``: mappings of token lists)."""
    return bool(rows) and isinstance(rows[0], Mapping) and "input_ids" in rows[0]


MLM_FIELDS = ("input_ids", "attention_mask", "labels")


def masked_rows(batch: Batch) -> list[dict[str, list[int]]]:
    """The rows of a collated MLM batch as they were masked (lists: JSON in the checkpoint)."""
    ids = batch["input_ids"].detach().cpu()
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.detach().cpu()
    labels = batch["labels"].detach().cpu()
    return [
        {"input_ids": ids[i].tolist(), "attention_mask": mask[i].tolist(), "labels": labels[i].tolist()}
        for i in range(ids.shape[0])
    ]


def stack_rows(rows: Sequence[Mapping[str, Sequence[int]]], device: torch.device) -> Batch:
    """A batch of stored MLM rows, right-padded (id 0, attention 0, label -100) to the longest."""
    length = max(len(r["input_ids"]) for r in rows)
    pads = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE}
    return {
        k: torch.tensor(
            [list(r[k]) + [pads[k]] * (length - len(r[k])) for r in rows], dtype=torch.long, device=device
        )
        for k in MLM_FIELDS
    }


def real_positions(hidden: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
    """[B, L, H] hidden states as one [k_i, H] block per row: its real (attended) positions."""
    mask = batch.get("attention_mask")
    if mask is None:
        return list(hidden)
    keep = mask.to(hidden.device).bool()
    return [hidden[i][keep[i]] for i in range(hidden.shape[0])]


def _row_to_json(row: Any) -> dict[str, Any]:
    """A dataclass row (the benchmark's Example or a stand-in) as its fields; else JSON data as is."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {"example": dataclasses.asdict(row)}
    return {"json": row}


_EXAMPLE_FIELDS = {f.name: f for f in dataclasses.fields(Example)}
_EXAMPLE_HINTS = typing.get_type_hints(Example)


def _row_from_json(data: dict[str, Any]) -> Any:
    """Rebuild a row saved by :func:`_row_to_json`: dataclass rows come back as ``Example``."""
    if "json" in data:
        return data["json"]
    fields = dict(data["example"])
    unknown = sorted(set(fields) - set(_EXAMPLE_FIELDS))
    if unknown:
        raise ValueError(f"DER++ buffer row has fields {unknown} that migu.data.cl_benchmark.Example lacks")
    for name, value in fields.items():
        if isinstance(value, list) and typing.get_origin(_EXAMPLE_HINTS[name]) is tuple:
            fields[name] = tuple(value)
    return Example(**fields)


@dataclass
class DERPPMixin(CLMethod):
    """Adds the DER++ buffer and its two replay terms (first in the bases: ``class X(DERPPMixin, LoRA)``).

    Options: ``buffer_size`` (200 rows, >= 1), ``alpha`` (0.1, logit MSE weight, >= 0), ``beta`` (0.5,
    replayed CE weight, >= 0), ``minibatch`` (None = the training batch size), ``buffer_seed``
    (default: the run's seed).
    """

    needs: ClassVar[MethodNeeds] = MethodNeeds(old_data=True)
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "instruct")

    buffer_size: int = 200
    alpha: float = 0.1
    beta: float = 0.5
    minibatch: int | None = None
    buffer_seed: int | None = None
    _rows: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)
    _logits: list[torch.Tensor] = field(default_factory=list, init=False, repr=False, compare=False)  # [k, C]
    _seen: int = field(default=0, init=False, repr=False, compare=False)
    _index: dict[RowKey, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _calls: int = field(default=0, init=False, repr=False, compare=False)
    # masked-LM stage: the encoder's last hidden state of the latest forward, from a hook held per task
    _masked_lm: bool = field(default=False, init=False, repr=False, compare=False)
    _encoder: Encoder | None = field(default=None, init=False, repr=False, compare=False)
    _hook: RemovableHandle | None = field(default=None, init=False, repr=False, compare=False)
    _hidden: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)  # [B, L, H]

    def validate(self) -> None:
        super().validate()
        check_int(self, "buffer_size", 1)
        check_float(self, "alpha", 0.0, math.inf, high_open=True)
        check_float(self, "beta", 0.0, math.inf, high_open=True)
        if self.minibatch is not None:
            check_int(self, "minibatch", 1)
        if self.buffer_seed is not None:
            check_int(self, "buffer_seed", 0)

    def on_run_start(self, seed: int) -> None:
        """An unset ``buffer_seed`` follows the run's seed."""
        super().on_run_start(seed)
        if self.buffer_seed is None:
            self.buffer_seed = seed
            self.snapshot_options()

    @property
    def seed(self) -> int:
        return 0 if self.buffer_seed is None else self.buffer_seed

    @property
    def buffer(self) -> list[Any]:
        """The stored rows, by slot."""
        return list(self._rows)

    @property
    def seen(self) -> int:
        """Rows offered to the buffer so far (the reservoir's n)."""
        return self._seen

    # ------------------------------------------------------------------ buffer
    def index_rows(self, ctx: TaskContext, examples: Sequence[Any]) -> None:
        """Key every training row of the task, so a collated batch can be mapped back to its rows."""
        if ctx.collate is None:
            raise RuntimeError(f"method {self.name!r}: task {ctx.task_name!r} has no family collate")
        self._index = {}
        rows = list(examples)
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            for key, row in zip(row_keys(ctx.collate(chunk)), chunk, strict=True):
                self._index.setdefault(key, row)

    def draw(self, task_index: int, call: int, which: str, size: int) -> list[int]:
        """Seeded slots of one buffer minibatch, without replacement."""
        n = len(self._rows)
        rng = random.Random(f"{self.seed}:derpp:{which}:{task_index}:{call}")
        return rng.sample(range(n), min(size, n))

    def insert(self, batch: Batch, logits: torch.Tensor) -> None:
        """Offer the batch's rows, with their logits (masked LM: their [B, L, H] hidden states), to the
        reservoir."""
        if self._masked_lm:
            rows: list[Any] = masked_rows(batch)
            targets = real_positions(logits.detach(), batch)
        else:
            keys = row_keys(batch)
            try:
                rows = [self._index[k] for k in keys]
            except KeyError:
                raise RuntimeError(
                    f"method {self.name!r}: a training batch row matches none of the task's rows "
                    "(DER++ keys rows by real input ids and labels; this family collates otherwise)"
                ) from None
            targets = split_logits(logits.detach(), batch)
        for row, z in zip(rows, targets, strict=True):
            slot = reservoir_slot(self._seen, self.buffer_size, self.seed)
            self._seen += 1
            if slot < 0:
                continue
            z = z.float().clone()  # [k, C], its own storage (not a view of the batch's logits)
            if slot == len(self._rows):
                self._rows.append(row)
                self._logits.append(z)
            else:
                self._rows[slot], self._logits[slot] = row, z

    def _replay(self, ctx: StepContext, slots: list[int]) -> tuple[Any, torch.Tensor]:
        """The family's output on the buffer rows at ``slots`` and what the MSE compares: the [R, C]
        logits, or (masked LM) the [R, H] hidden states at the rows' real positions."""
        rows = [self._rows[j] for j in slots]
        if self._masked_lm:
            batch = stack_rows(rows, ctx.task.device)
            out = ctx.forward(batch)
            if self._hidden is None or self._hidden.shape[:2] != batch["input_ids"].shape:
                raise RuntimeError(f"method {self.name!r}: the encoder's hidden states were not captured")
            return out, torch.cat(real_positions(self._hidden, batch))
        assert ctx.task.collate is not None
        out = ctx.forward(ctx.task.collate(rows))
        return out, out.logits

    def _watch(self, model: nn.Module) -> None:
        """Hold a hook that keeps the encoder's last hidden state of each forward (masked LM)."""
        self._unwatch()
        self._encoder = find_encoder(model)

        def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._hidden = last_hidden(output)

        self._hook = self._encoder.backbone.register_forward_hook(keep)

    def _unwatch(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._hidden, self._encoder = None, None, None

    # ------------------------------------------------------------------ hooks
    def on_task_start(self, ctx: TaskContext) -> None:
        super().on_task_start(ctx)
        self._calls = 0
        self._index = {}
        self._masked_lm = is_token_blocks(ctx.examples)
        if ctx.rebuilding:
            return
        if self._masked_lm:
            self._watch(ctx.model)  # the rows are masked afresh at each collation: stored as trained
        else:
            self.index_rows(ctx, ctx.examples)
        self._logits = [z.to(ctx.device) for z in self._logits]

    def step_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """{"der_mse": alpha * MSE on buffer logits, "der_ce": beta * CE on buffer labels}; then the
        batch's rows enter the reservoir (zeros while the buffer is empty)."""
        terms = super().step_loss(ctx)
        current = ctx.output.logits
        if self._masked_lm:  # the training forward's hidden states, before the replays replace them
            current = self._hidden
            if current is None or current.shape[:2] != ctx.batch["input_ids"].shape:
                raise RuntimeError(f"method {self.name!r}: the encoder's hidden states were not captured")
        if current is None:
            raise RuntimeError(f"method {self.name!r}: the family's forward gave no logits to store")
        device = ctx.output.loss.device
        mse = ce = torch.zeros((), device=device)
        if self._rows:
            size = self.minibatch or ctx.task.batch_size
            if self.alpha > 0.0:
                slots = self.draw(ctx.task_index, self._calls, "mse", size)
                _, new = self._replay(ctx, slots)
                stored = torch.cat([self._logits[j] for j in slots]).to(new.device)  # [R, C]
                mse = self.alpha * logit_mse(new, stored)
            if self.beta > 0.0:
                out, _ = self._replay(ctx, self.draw(ctx.task_index, self._calls, "ce", size))
                ce = self.beta * out.loss
        self.insert(ctx.batch, current)
        self._calls += 1
        terms["der_mse"], terms["der_ce"] = mse, ce
        return terms

    def on_task_end(self, ctx: TaskContext) -> None:
        super().on_task_end(ctx)
        self._index = {}
        self._unwatch()  # before the end tasks copy the encoder (a deep copy would copy the hook)
        if not ctx.rebuilding:
            n, seen = len(self._rows), self._seen
            log.info("DER++: %d rows in the buffer after %d seen (task %r)", n, seen, ctx.task_name)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The parent's state plus ``derpp``: rows seen and the rows (JSON) by slot."""
        state = super().state_dict()
        state["derpp"] = {"seen": self._seen, "rows": [_row_to_json(r) for r in self._rows]}
        return state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``derpp.logits`` [sum k, C] fp32 (every slot's block, concatenated) and ``derpp.offsets``."""
        tensors = super().state_tensors()
        if self._logits:
            sizes = torch.tensor([0] + [z.shape[0] for z in self._logits], dtype=torch.int64)
            tensors["derpp.logits"] = torch.cat([z.cpu() for z in self._logits])
            tensors["derpp.offsets"] = torch.cumsum(sizes, 0)
        return tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Restore rows, their logits and the stream position."""
        super().load_state_dict(state, tensors)
        saved = state.get("derpp")
        if saved is None:
            log.warning("method %r: state has no DER++ buffer; keeping the current one", self.name)
            return
        rows = [_row_from_json(r) for r in saved["rows"]]
        tensors = tensors or {}
        logits: list[torch.Tensor] = []
        if rows:
            if "derpp.logits" not in tensors or "derpp.offsets" not in tensors:
                raise ValueError(f"method {self.name!r}: checkpoint has {len(rows)} buffer rows, no logits")
            flat, offsets = tensors["derpp.logits"], tensors["derpp.offsets"].tolist()
            if len(offsets) != len(rows) + 1:
                raise ValueError(
                    f"method {self.name!r}: {len(rows)} buffer rows but {len(offsets) - 1} logit blocks"
                )
            logits = [flat[a:b].float() for a, b in itertools.pairwise(offsets)]
        self._rows, self._logits, self._seen = rows, logits, int(saved["seen"])


@dataclass
class DERPP(DERPPMixin, FT):
    """FT + DER++ (also in continual pre-training: ContinualLM's ``derpp`` baseline)."""

    name: ClassVar[str] = "derpp"
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "pretrain", "instruct")
    paper_name: ClassVar[str] = "DER++"
    description: ClassVar[str] = (
        "FT plus DER++: a 200-row reservoir buffer of earlier rows with their logits; MSE to the "
        "stored logits and CE on the stored labels of two buffer minibatches per step"
    )
    default_threshold: ClassVar[float] = 0.4


@dataclass
class LoRADERPP(DERPPMixin, LoRA):
    """LoRA + DER++."""

    name: ClassVar[str] = "lora_derpp"
    paper_name: ClassVar[str] = "LoRADER++"
    description: ClassVar[str] = (
        "LoRA plus DER++: a 200-row reservoir buffer of earlier rows with their logits; MSE to the "
        "stored logits and CE on the stored labels of two buffer minibatches per step"
    )
    default_threshold: ClassVar[float] = 0.4

"""The hooks a continual-learning method plugs into the runner (one file per method).

The runner calls, per run::

    method.on_run_start(seed)                          # once: the run's seed (replay samples follow it)
    model = method.prepare_model(model, spec)          # once (e.g. inject LoRA adapters)
    for i, task in enumerate(order):
        ctx = TaskContext(model, i, task.name, task.train, ...)
        method.on_task_start(ctx)                      # set requires_grad, add an adapter, snapshot ...
        rows = method.training_examples(ctx, rng)      # replay mixes old rows in
        ... each micro-batch:
            out = family.forward(model, batch)         # ForwardOutput: loss and logits
            loss = out.loss + sum(method.step_loss(StepContext(..., batch, out)).values())
        ... each optimizer step, after MIGU's mask:
            method.before_optimizer_step(ctx)          # edit gradients (DAS soft-masking)
        method.on_task_end(ctx)                        # Fisher, buffers, freezing ...

A fresh optimizer is built per task from the parameters with ``requires_grad=True``, after
``on_task_start``. Resume rebuilds the structure by calling ``on_task_start``/``on_task_end`` for
the finished tasks with ``ctx.rebuilding=True`` (no data pass, no training), then loads the saved
weights and the method's state (``state_dict`` as JSON, ``state_tensors`` as safetensors): a method
makes the same structure from the same calls and restores anything learned from its state.

The layering keeps methods below the model families: what a method reads of a family is declared
here as protocols (:class:`ModelInfo`, :class:`ForwardOutput`), which ``migu.models`` implements.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
REGIMES = ("finetune", "pretrain", "instruct")


class ModelInfo(Protocol):
    """What a method needs to know about the model family it wraps (``migu.models.ModelSpec``)."""

    @property
    def lora_target_modules(self) -> tuple[str, ...]: ...  # default LoRA targets (the authors': q and v)
    @property
    def head_modules(self) -> tuple[str, ...]: ...  # task heads trained alongside adapters
    @property
    def task_type(self) -> str | None: ...  # PEFT task type, if any


class ForwardOutput(Protocol):
    """One forward pass of a family (``migu.models.FamilyOutput``).

    ``logits`` are the outputs a distillation method compares: [B, n_labels] label logits of the
    encoder family (-inf outside each example's options), [N, vocab] logits at the N real target
    positions of the generative families.
    """

    @property
    def loss(self) -> torch.Tensor: ...  # mean training loss, fp32
    @property
    def logits(self) -> torch.Tensor | None: ...


@dataclass(frozen=True)
class MethodNeeds:
    """What a method requires beyond the current task's rows: printed by ``migu list methods`` so
    nobody compares a rehearsal method with a rehearsal-free one by accident."""

    old_data: bool = False  # keeps or replays rows of earlier tasks (rehearsal)
    task_boundaries: bool = True  # is told when a task starts and ends (every method here is)
    task_id_at_test: bool = False  # needs the task's identity at evaluation time

    def describe(self) -> str:
        """``old data: no, task boundaries: yes, task id at test: no``."""

        def yn(flag: bool) -> str:
            return "yes" if flag else "no"

        return (
            f"old data: {yn(self.old_data)}, task boundaries: {yn(self.task_boundaries)}, "
            f"task id at test: {yn(self.task_id_at_test)}"
        )


@dataclass
class TaskContext:
    """One task as the method sees it at its start and end.

    ``examples`` are the task's TRAINING rows only. ``rebuilding`` is True when the runner replays
    a finished task on resume to rebuild structure: no data pass, nothing learned is recomputed
    (``load_state_dict`` restores it). ``forward``/``collate`` are the family's, on the model being
    trained; ``device`` is where batches go.
    """

    model: nn.Module
    task_index: int
    task_name: str
    examples: Sequence[Any] = ()
    rebuilding: bool = False
    forward: Callable[[nn.Module, Batch], ForwardOutput] | None = None
    collate: Callable[[Sequence[Any]], Batch] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 16
    n_tasks: int | None = None  # tasks in the run's order (None outside a run): for schedules over tasks

    def batches(
        self, examples: Sequence[Any] | None = None, batch_size: int | None = None
    ) -> Iterator[Batch]:
        """Collated batches (in order, on ``device``) of ``examples`` (default: the task's rows)."""
        if self.collate is None:
            raise RuntimeError(f"task {self.task_name!r}: no family to collate batches")
        rows = list(self.examples if examples is None else examples)
        size = batch_size or self.batch_size
        for start in range(0, len(rows), size):
            batch = self.collate(rows[start : start + size])
            yield {k: v.to(self.device) for k, v in batch.items()}

    def run_forward(self, batch: Batch, model: nn.Module | None = None) -> ForwardOutput:
        """The family's forward pass on ``model`` (default: the task's model)."""
        if self.forward is None:
            raise RuntimeError(f"task {self.task_name!r}: no family forward")
        return self.forward(self.model if model is None else model, batch)


@dataclass
class StepContext:
    """One micro-batch of training: the batch, the family's output on it, and how to run more.

    ``model`` is the model being trained as the loop calls it (maybe a DDP wrapper of
    ``task.model``); ``forward(batch)`` runs the family on it (e.g. a replay buffer's rows).
    """

    task: TaskContext
    model: nn.Module
    batch: Batch
    output: ForwardOutput
    step: int  # optimizer steps done so far in this task

    @property
    def task_index(self) -> int:
        return self.task.task_index

    def forward(self, batch: Batch) -> ForwardOutput:
        return self.task.run_forward(batch, self.model)


@dataclass
class CLMethod:
    """Base class and FT: every parameter trains on every task; no extra loss, no replay.

    Class attributes are the method's facts, read by the registry, the CLI and the analyses:
    ``name`` (registry key), ``paper_name`` (display), ``description`` (one line for users),
    ``default_threshold`` (MIGU's T from the paper when MIGU is on without one), ``needs``,
    ``regimes`` (which settings it runs in: finetune, pretrain, instruct) and ``migu_compatible``
    (False where MIGU's row masks are not defined on the method's parameters: the config refuses
    ``migu`` for it).
    """

    name: ClassVar[str] = "ft"
    paper_name: ClassVar[str] = "FT"
    description: ClassVar[str] = "full finetuning: every weight trains on each task in turn"
    default_threshold: ClassVar[float] = 0.7
    needs: ClassVar[MethodNeeds] = MethodNeeds()
    regimes: ClassVar[tuple[str, ...]] = REGIMES
    migu_compatible: ClassVar[bool] = True
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Options come as keyword arguments (``LoRA(r=4)``) or through ``options`` (what the registry
        and a YAML config pass; it wins when both are given). Unknown names and bad values raise
        ValueError naming the option; afterwards ``options`` holds every resolved value, for results."""
        names = self.option_names()
        given = dict(self.options or {})
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(
                f"method {self.name!r}: unknown option(s) {unknown}; known options: {names or 'none'}"
            )
        for key, value in given.items():
            setattr(self, key, value)
        self.validate()
        self.snapshot_options()

    def validate(self) -> None:
        """Check (and normalise) the option fields; subclasses extend it, calling ``super().validate()``."""

    def snapshot_options(self) -> None:
        """Record every option's resolved value in ``options`` (JSON-friendly: tuples as lists)."""
        self.options = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in ((n, getattr(self, n)) for n in self.option_names())
        }

    @classmethod
    def option_names(cls) -> list[str]:
        """The options a method accepts: its dataclass init fields other than ``options``."""
        return [f.name for f in fields(cls) if f.init and f.name != "options"]

    # ------------------------------------------------------------------ hooks
    def on_run_start(self, seed: int) -> None:
        """Called once with the run's seed, before ``prepare_model``."""

    def prepare_model(self, model: nn.Module, spec: ModelInfo) -> nn.Module:
        """Called once before the first task; returns the model to train (maybe wrapped)."""
        return model

    def on_task_start(self, ctx: TaskContext) -> None:
        """Make exactly the parameters of this task trainable."""
        for p in ctx.model.parameters():
            p.requires_grad_(True)

    def training_examples(self, ctx: TaskContext, rng: random.Random) -> list[Any]:
        """The rows trained on for this task (replay adds past tasks' rows)."""
        return list(ctx.examples)

    def step_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Extra loss terms for this micro-batch, added to the task loss (logged by name)."""
        return {}

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        """After the step's gradients are complete (and MIGU has masked them), before clipping and
        ``optimizer.step()``: where a method edits gradients (e.g. DAS's soft-masking)."""

    def on_task_end(self, ctx: TaskContext) -> None:
        """After training on a task (also replayed on resume with ``ctx.rebuilding``)."""

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state saved with each checkpoint."""
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensor state saved with each checkpoint (safetensors; never pickled)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Restore what ``state_dict`` and ``state_tensors`` returned."""

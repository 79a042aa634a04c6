"""The hooks a continual-learning method plugs into the runner (one file per method).

The runner calls, per run::

    model = method.prepare_model(model, spec)            # once (e.g. wrap with PEFT)
    for i, task in enumerate(order):
        method.on_task_start(model, i, task.name)        # set requires_grad, add an adapter, ...
        examples = method.training_examples(i, task.train, rng)  # replay mixes old rows in
        ... each step: loss = task_loss + sum(method.loss_terms(model, i).values())
        method.on_task_end(model, i, task.name, task.train)       # remember rows, freeze, ...

A fresh optimizer is built per task from the parameters with ``requires_grad=True``.
Resume rebuilds the structure by calling ``on_task_start``/``on_task_end`` for the finished
tasks (without training), then loads the saved weights and ``state_dict()``: methods must make
the same structure from the same calls.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What a method needs to know about the model family it wraps."""

    lora_target_modules: tuple[str, ...]  # default LoRA targets (the authors': q and v)
    head_modules: tuple[str, ...] = ()  # task heads trained alongside adapters (encoder family)
    task_type: str | None = None  # PEFT task type, if any


@dataclass
class CLMethod:
    """Base class and FT: every parameter trains on every task; no extra loss, no replay."""

    name: ClassVar[str] = "ft"
    default_threshold: ClassVar[float] = 0.7
    options: dict[str, Any] = field(default_factory=dict)

    def prepare_model(self, model: nn.Module, spec: ModelSpec) -> nn.Module:
        """Called once before the first task; returns the model to train (maybe wrapped)."""
        return model

    def on_task_start(self, model: nn.Module, task_index: int, task_name: str) -> None:
        """Make exactly the parameters of this task trainable."""
        for p in model.parameters():
            p.requires_grad_(True)

    def training_examples(self, task_index: int, examples: Sequence[Any], rng: random.Random) -> list[Any]:
        """The rows trained on for this task (replay adds past tasks' rows)."""
        return list(examples)

    def loss_terms(self, model: nn.Module, task_index: int) -> dict[str, torch.Tensor]:
        """Extra loss terms added to the task loss (logged by name)."""
        return {}

    def on_task_end(self, model: nn.Module, task_index: int, task_name: str, examples: Sequence[Any]) -> None:
        """After training on a task (also replayed on resume, without training)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state saved with each checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

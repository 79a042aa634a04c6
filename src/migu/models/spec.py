"""What a model family tells the rest of the package: its spec for CL methods and its forward output.

Both satisfy the protocols of ``migu.methods.base`` (``ModelInfo``, ``ForwardOutput``) structurally,
so methods read them without importing the families.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelSpec:
    """What a method needs to know about the model family it wraps."""

    lora_target_modules: tuple[str, ...]  # default LoRA targets (the authors': q and v)
    head_modules: tuple[str, ...] = ()  # task heads trained alongside adapters (encoder family)
    task_type: str | None = None  # PEFT task type, if any


@dataclass
class FamilyOutput:
    """One forward pass: the mean training loss (fp32) and the outputs a distillation compares.

    ``logits``: [B, n_labels] label logits for the encoder family (-inf outside each example's
    options); [N, vocab] fp32 logits at the N real target positions for the generative families
    (the same tensor the loss was computed from: no extra copy).
    """

    loss: torch.Tensor
    logits: torch.Tensor | None = None

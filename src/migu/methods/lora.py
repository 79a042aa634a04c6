"""LoRA: one PEFT LoRA adapter, trained across all tasks in turn (the paper's LoRA baseline).

How the model is wrapped: ``peft.inject_adapter_in_model`` (PEFT's API for integrations that keep
their own model class), not ``get_peft_model``. The model stays the same object of the same class,
so the model family's loss (``model(**batch)`` with input_ids / attention_mask / labels /
decoder_attention_mask, or a custom encoder's ``forward(input_ids, attention_mask, option_mask,
labels)``), ``generate``, ``config`` and checkpoints' base-weight layout work unchanged; only the
targeted linears become PEFT LoRA layers (``q`` -> ``q.base_layer`` + ``q.lora_A.<adapter>`` +
``q.lora_B.<adapter>``). Several adapters (IncLoRA) live side by side in the same layers; which are
summed into the output is set with the layers' own ``set_adapter``.

Heads (the family's ``spec.head_modules``, e.g. an encoder classifier) are trained by ``requires_grad``
on the model's own module, not by PEFT ``modules_to_save``: ``modules_to_save`` keeps one copy of
the head per adapter, each copied from the *original* head, with only one copy active, so under
IncLoRA every new task would restart from the untrained head and drop what earlier tasks taught
it. One shared head, trained on every task, is what FT and the authors' LoRA runs do.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ._options import check_float, check_int, check_names
from .base import CLMethod, MethodNeeds, ModelInfo, TaskContext

try:  # newer peft: upcast fp16/bf16 adapter weights to fp32, as get_peft_model does by default
    from peft.functional import cast_adapter_dtype as _cast_adapter_dtype
except ImportError:  # pragma: no cover - older peft: adapters keep the base layer's dtype
    _cast_adapter_dtype = None

log = logging.getLogger(__name__)


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    """Every PEFT LoRA layer of ``model`` with its module name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    """All parameters of one LoRA adapter (A, B, and DoRA magnitudes / embedding factors if any)."""
    params: list[nn.Parameter] = []
    for _, layer in lora_layers(model):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if container is None or adapter not in container:
                continue
            item = container[adapter]
            params.extend([item] if isinstance(item, nn.Parameter) else item.parameters())
    return params


def match_modules(model: nn.Module, patterns: Iterable[str]) -> dict[str, nn.Module]:
    """Modules whose name equals a pattern or ends with ``"." + pattern``; ValueError if one matches none."""
    found: dict[str, nn.Module] = {}
    named = list(model.named_modules())
    for pattern in patterns:
        hits = {n: m for n, m in named if n and (n == pattern or n.endswith("." + pattern))}
        if not hits:
            raise ValueError(
                f"head module {pattern!r} (the family's head_modules) matches no module of the model"
            )
        found.update(hits)
    return found


@dataclass
class LoRA(CLMethod):
    """One LoRA adapter ("default") on the target linears, trained on every task; base weights frozen.

    Options: ``r`` (8), ``alpha`` (32, PEFT ``lora_alpha``: scaling alpha / r), ``dropout`` (0.05),
    ``target_modules`` (default: the family's ``lora_target_modules``, the authors' q and v).
    MIGU threshold 0.7 (paper appendix).
    """

    name: ClassVar[str] = "lora"
    paper_name: ClassVar[str] = "LoRA"
    description: ClassVar[str] = (
        "one LoRA adapter (base weights frozen) trained on every task in turn; the shared head trains too"
    )
    default_threshold: ClassVar[float] = 0.7
    needs: ClassVar[MethodNeeds] = MethodNeeds()
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "instruct")

    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    _targets: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _task_type: str | None = field(default=None, init=False, repr=False, compare=False)
    _heads: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _adapters: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        check_int(self, "r", 1)
        check_float(self, "alpha", 0.0, math.inf, low_open=True, high_open=True)
        check_float(self, "dropout", 0.0, 1.0, high_open=True)
        check_names(self, "target_modules", allow_none=True)

    # ------------------------------------------------------------------ structure
    def adapter_name(self, task_index: int) -> str:
        """The adapter trained on task ``task_index``: one shared adapter for plain LoRA."""
        return "default"

    @property
    def adapters(self) -> list[str]:
        """Adapters created so far, in creation order."""
        return list(self._adapters)

    def lora_config(self) -> LoraConfig:
        """The PEFT config of every adapter this method creates (same for all tasks)."""
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self._targets),
            bias="none",
            task_type=self._task_type,
        )

    def _add_adapter(self, model: nn.Module, adapter: str) -> None:
        with warnings.catch_warnings():
            # A 2nd inject_adapter_in_model on the same model warns that it now has several
            # adapters: that is the point of IncLoRA.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(self.lora_config(), model, adapter_name=adapter)
        if _cast_adapter_dtype is not None:
            _cast_adapter_dtype(model, adapter_name=adapter, autocast_adapter_dtype=True)
        self._adapters.append(adapter)
        n_layers = sum(1 for _, layer in lora_layers(model) if adapter in layer.lora_A)
        log.info("LoRA adapter %r added to %d layers (r=%d, alpha=%g)", adapter, n_layers, self.r, self.alpha)

    def _activate(self, model: nn.Module, active: Sequence[str], trainable: str | None) -> None:
        """Sum exactly ``active`` adapters into the outputs; train only ``trainable`` and the heads."""
        for _, layer in lora_layers(model):
            layer.set_adapter(list(active))  # also sets requires_grad on them: redone just below
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None  # a stale gradient on a frozen weight would still be masked/clipped/logged
        if trainable is not None:
            for p in adapter_parameters(model, trainable):
                p.requires_grad_(True)
        for head in match_modules(model, self._heads).values():
            for p in head.parameters():
                p.requires_grad_(True)

    def _require_prepared(self) -> None:
        if not self._adapters:
            raise RuntimeError(f"method {self.name!r}: call prepare_model before on_task_start")

    # ------------------------------------------------------------------ hooks
    def prepare_model(self, model: nn.Module, spec: ModelInfo) -> nn.Module:
        """Inject the first adapter in place (same model object returned); freeze all but it and heads."""
        if self._adapters:
            raise RuntimeError(f"method {self.name!r}: prepare_model was already called")
        targets = self.target_modules or tuple(spec.lora_target_modules)
        if not targets:
            raise ValueError(
                f"method {self.name!r}: no LoRA target modules (set option 'target_modules' or "
                "the family's lora_target_modules)"
            )
        self._targets = tuple(targets)
        self._task_type = spec.task_type or None
        self._heads = tuple(match_modules(model, spec.head_modules))  # validated now, not at task 1
        first = self.adapter_name(0)
        self._add_adapter(model, first)
        self._activate(model, [first], trainable=first)
        return model

    def on_task_start(self, ctx: TaskContext) -> None:
        """The one adapter and the heads train; everything else stays frozen."""
        self._require_prepared()
        adapter = self.adapter_name(ctx.task_index)
        self._activate(ctx.model, [adapter], trainable=adapter)

    def state_dict(self) -> dict[str, Any]:
        """The adapter names: load_state_dict checks the rebuilt structure against them."""
        return {"adapters": list(self._adapters)}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Check that resume rebuilt the saved adapters (weights themselves load with the model)."""
        saved = state.get("adapters")
        if saved is not None and list(saved) != self._adapters:
            raise ValueError(
                f"method {self.name!r}: checkpoint has adapters {list(saved)} but the model has "
                f"{self._adapters}; replay on_task_start/on_task_end of the finished tasks "
                "before load_state_dict"
            )

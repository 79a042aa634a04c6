"""OSF: PEFT's Orthogonal Subspace Fine-tuning (``peft.OSFConfig``), re-decomposed before every task.

OSF (Nayak et al. 2025, "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual
Learning"; PEFT >= 0.18, ``peft/tuners/osf``) splits each target weight by its SVD,
W = U_high S_high V_high^T + U_low S_low V_low^T: the top ``effective_rank`` singular directions
are frozen, U_low, S_low, V_low train, and gradient hooks project the gradients of U_low and V_low
orthogonal to U_high and V_high. PEFT 0.21 keeps W in the base layer and adds the learned change
delta = U_low S_low V_low^T - (its value at decomposition) to the output; ``merge`` adds delta to W.

Per task i (``on_task_start``), in place on the runner's one model object: inject OSF into the
target linears with a preserved rank per layer of ``floor(f_i * min(d_out, d_in))``, clipped to
[1, min_dim - 1] (PEFT refuses a rank of 0; at least one direction trains), and train the OSF
factors and the family's heads only (PEFT's OSF freezes everything else, biases of the targets
included). ``on_task_end`` merges every OSF layer's delta into its base weight and puts the plain
base linear back, so evaluation, checkpoints and the next task's SVD all see the updated weights;
task i+1 then decomposes them afresh with a larger preserved rank. Rebuilding a finished task on
resume injects nothing (its end state is the plain model, whose weights the checkpoint restores).

Schedule: ``preserved`` lists f_i per task; unset, f_i = i / n over the run's n tasks, PEFT's
"budget allocation for task sequences" (docs/source/package_reference/osf.md: task 1 trains with
full capacity, task k freezes (k-1)/n). Targets: ``target_modules`` (name or suffix), default every
``nn.Linear`` inside a numbered block (attention and FFN; not embeddings, heads or an LM head),
PEFT's "all-linear" restricted to the blocks. PEFT's OSF wraps only ``torch.nn.Linear``: GPT-2's
``Conv1D`` blocks cannot be targeted (prepare_model says so).

Why ``unload()`` is not used between tasks: PEFT's continual-learning advice and example
(``osf.md`` "Sequential Task Learning", ``examples/orthogonal_subspace_learning/
osf_continual_learning.py``) re-wrap ``model.unload()`` for the next task, but ``unload`` removes
the OSF layers *without* merging, returning the base weights as they were before the task: every
task's learning is dropped (tests/methods/test_osf.py shows it on PEFT 0.21.2); ``merge_and_unload``
keeps it, which is what this module does layer by layer.

MIGU does not compose with OSF (``migu_compatible = False``; the config refuses ``migu`` for it):
MIGU keeps the gradient of the top-magnitude *output rows* of a weight, but OSF's trainable
parameters are factors: S_low and V_low are shared by every output row, so no mask on them freezes a
row of W, and masking rows of U_low's projected gradient would move U_low out of the subspace
orthogonal to U_high, undoing OSF's guarantee.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

import torch
from torch import nn

from ..validation import check_list, check_number
from ._options import check_names, option_field
from .base import CLMethod, MethodNeeds, ModelInfo, TaskContext
from .lora import match_modules

try:  # PEFT >= 0.18
    from peft import OSFConfig, inject_adapter_in_model
    from peft.tuners.osf import OSFLayer
except ImportError:  # pragma: no cover - exercised by patching OSF_AVAILABLE in the tests
    OSFConfig = inject_adapter_in_model = OSFLayer = None  # type: ignore[assignment,misc]

OSF_AVAILABLE = OSFLayer is not None
ADAPTER = "default"
_IN_BLOCK = re.compile(r"(?:^|\.)\d+\.")  # a module inside a numbered transformer block

log = logging.getLogger(__name__)


def osf_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """Every PEFT OSF layer of ``model`` with its module name, in module order."""
    if not OSF_AVAILABLE:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, OSFLayer)]


def merge_osf_layers(model: nn.Module) -> int:
    """Merge each OSF layer's learned delta into its base weight and put the base layer back.

    PEFT's ``merge_and_unload``, done in place on the model (no tuner object is kept with
    ``inject_adapter_in_model``). Returns the number of layers merged.
    """
    layers = osf_layers(model)
    for name, layer in layers:
        layer.merge(adapter_names=[ADAPTER])  # W <- W + (U S V^T - U0 S0 V0^T)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return len(layers)


def preserved_rank(fraction: float, weight: torch.Tensor) -> int:
    """floor(fraction * min_dim), clipped to [1, min_dim - 1]: PEFT needs >= 1 frozen, OSF >= 1 trained."""
    min_dim = min(weight.shape)
    return min(max(1, math.floor(fraction * min_dim)), min_dim - 1)


@dataclass
class OSF(CLMethod):
    """PEFT OSF on the block linears, re-decomposed per task with a growing preserved rank.

    Options: ``preserved`` (one fraction in [0, 1) per task; default i / n), ``target_modules``
    (default: every nn.Linear in a numbered block). Does not compose with MIGU.
    """

    name: ClassVar[str] = "osf"
    paper_name: ClassVar[str] = "OSF"
    description: ClassVar[str] = (
        "PEFT orthogonal subspace finetuning: per task, the top singular directions of each block "
        "linear (a fraction i/n growing over tasks) are frozen and the rest trains, then merged; no "
        "old data; does not compose with MIGU"
    )
    default_threshold: ClassVar[float] = 0.7  # unused: the config refuses MIGU for OSF
    needs: ClassVar[MethodNeeds] = MethodNeeds()
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "instruct")
    migu_compatible: ClassVar[bool] = False

    preserved: tuple[float, ...] | None = None
    target_modules: tuple[str, ...] | None = None
    _targets: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _heads: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _fractions: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        if not OSF_AVAILABLE:
            try:
                version = metadata.version("peft")
            except metadata.PackageNotFoundError:
                version = "none"
            raise ValueError(
                f"method {self.name!r} needs PEFT's OSF (peft.OSFConfig, PEFT >= 0.18); "
                f"installed peft: {version}"
            )
        check_names(self, "target_modules", allow_none=True)
        self.preserved = check_list(
            self.preserved,
            option_field(self, "preserved"),
            lambda v, field: check_number(v, field, low=0.0, high=1.0, high_open=True),
            "fractions in [0, 1) (one per task)",
            none=True,
        )

    # ------------------------------------------------------------------ structure
    def preserved_fraction(self, task_index: int, n_tasks: int | None) -> float:
        """f_i: the fraction of each layer's rank frozen for task ``task_index``."""
        if self.preserved is not None:
            if task_index >= len(self.preserved):
                raise ValueError(
                    f"method {self.name!r}: option 'preserved' has {len(self.preserved)} fractions, "
                    f"none for task index {task_index}"
                )
            return self.preserved[task_index]
        if not n_tasks:
            raise ValueError(
                f"method {self.name!r}: the default schedule i/n needs the number of tasks (the runner "
                "gives it); set option 'preserved' (one fraction per task) instead"
            )
        return task_index / n_tasks

    def _resolve_targets(self, model: nn.Module, heads: set[str]) -> tuple[str, ...]:
        def in_head(name: str) -> bool:
            return any(name == h or name.startswith(h + ".") for h in heads)

        named = [(n, m) for n, m in model.named_modules() if n and not in_head(n)]
        if self.target_modules is not None:
            hits = [
                (n, m) for n, m in named if any(n == t or n.endswith("." + t) for t in self.target_modules)
            ]
            if not hits:
                raise ValueError(
                    f"method {self.name!r}: option 'target_modules' {list(self.target_modules)} "
                    "matches no module"
                )
        else:
            hits = [(n, m) for n, m in named if _IN_BLOCK.search(n + ".")]
            hits = [(n, m) for n, m in hits if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
        bad = sorted(n for n, m in hits if not isinstance(m, nn.Linear))
        if bad:
            raise ValueError(
                f"method {self.name!r}: PEFT's OSF wraps only torch.nn.Linear; {bad[:3]} are "
                f"{type(model.get_submodule(bad[0])).__name__} (e.g. GPT-2's Conv1D)"
            )
        small = sorted(n for n, m in hits if min(m.weight.shape) < 2)
        if small:
            raise ValueError(f"method {self.name!r}: {small[:3]} have rank < 2: nothing to split")
        if not hits:
            raise ValueError(f"method {self.name!r}: no nn.Linear inside a numbered block to decompose")
        return tuple(n for n, _ in hits)

    def osf_config(self, model: nn.Module, fraction: float) -> Any:
        """PEFT's config for one task: exact module names, one preserved rank per module."""
        ranks = {n: preserved_rank(fraction, model.get_submodule(n).weight) for n in self._targets}
        return OSFConfig(
            target_modules=list(self._targets),
            rank_pattern={f"^{re.escape(n)}$": r for n, r in ranks.items()},
        )

    def _train_only_osf_and_heads(self, model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for _, layer in osf_layers(model):
            for p in layer.osf_svd_params.parameters():
                p.requires_grad_(True)
        for head in match_modules(model, self._heads).values():
            for p in head.parameters():
                p.requires_grad_(True)

    # ------------------------------------------------------------------ hooks
    def prepare_model(self, model: nn.Module, spec: ModelInfo) -> nn.Module:
        """Resolve targets and heads (the model is unchanged until the first task)."""
        if self._targets:
            raise RuntimeError(f"method {self.name!r}: prepare_model was already called")
        self._heads = tuple(match_modules(model, spec.head_modules))
        self._targets = self._resolve_targets(model, set(self._heads))
        log.info("OSF: %d target linears, heads %s", len(self._targets), list(self._heads) or "none")
        return model

    def on_task_start(self, ctx: TaskContext) -> None:
        """Decompose the current weights with this task's preserved rank; train OSF factors and heads."""
        if not self._targets:
            raise RuntimeError(f"method {self.name!r}: call prepare_model before on_task_start")
        if osf_layers(ctx.model):
            raise RuntimeError(f"method {self.name!r}: OSF layers of an earlier task were not merged")
        fraction = self.preserved_fraction(ctx.task_index, ctx.n_tasks)
        self._fractions[ctx.task_index] = fraction
        if ctx.rebuilding:
            return  # the finished task ends as the plain model; the checkpoint restores its weights
        config = self.osf_config(ctx.model, fraction)
        with warnings.catch_warnings():
            # A 2nd injection into the same model warns about its peft_config attribute: the previous
            # task's OSF layers are merged and gone by now.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(config, ctx.model, adapter_name=ADAPTER)
        self._train_only_osf_and_heads(ctx.model)
        ranks = [layer.effective_rank[ADAPTER] for _, layer in osf_layers(ctx.model)]
        log.info(
            "OSF task %d: %d layers, preserved fraction %.3f (ranks %d..%d)",
            ctx.task_index,
            len(ranks),
            fraction,
            min(ranks),
            max(ranks),
        )

    def on_task_end(self, ctx: TaskContext) -> None:
        """Merge every OSF layer's learned delta into its base weight and remove the OSF layers."""
        super().on_task_end(ctx)
        merged = merge_osf_layers(ctx.model)
        if merged:
            log.info("OSF task %d: merged %d layers", ctx.task_index, merged)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The preserved fraction of every task started (the weights themselves load with the model)."""
        return {"osf": {"fractions": {str(i): f for i, f in sorted(self._fractions.items())}}}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Check the rebuilt schedule against the checkpoint's."""
        saved = (state.get("osf") or {}).get("fractions")
        if saved is None:
            return
        rebuilt = {str(i): f for i, f in sorted(self._fractions.items())}
        if {k: float(v) for k, v in saved.items()} != rebuilt:
            raise ValueError(
                f"method {self.name!r}: checkpoint was trained with preserved fractions {saved}, "
                f"the rebuilt run has {rebuilt}"
            )

"""MIGU configuration: one dataclass, two presets (the paper's text and the authors' code)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Preset = Literal["paper", "official"]
Mode = Literal["grad", "strict"]
Cut = Literal["topk", "quantile"]
COMPONENTS = ("qkv", "o", "ffn")

# Values each preset gives to the fields left as None. `paper` follows the paper's text
# (method.md); `official` reproduces the authors' public code (wenyudu/MIGU).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "normalize": True,  # per-token L1 normalization over d_out
        "exclude_padding": True,  # average over real tokens only
        "stat_bias": False,  # |w_i . x|: the bias is left out of the magnitude
        "cut": "topk",  # keep exactly d_out - floor(T * d_out) rows
        "targets": "default",  # Q/K/V/O + FFN linears of the transformer blocks
        "skip_first_task": False,
        "mask_bias": True,  # a masked row's bias entry is frozen with it
    },
    "official": {
        "normalize": False,  # raw |y| summed over tokens
        "exclude_padding": False,  # padding tokens included
        "stat_bias": True,  # |y| with the bias in it
        "cut": "quantile",  # keep rows >= torch.quantile(stat, T) (ties keep more)
        "targets": "all-linear",  # every nn.Linear, LM head included
        "skip_first_task": True,  # no mask while training the first task
        "mask_bias": False,  # only weight.grad is masked
    },
}


@dataclass
class MIGUConfig:
    """What MIGU masks and how.

    Fields left as ``None`` take the value of ``preset``; anything set explicitly wins.

    Args:
        threshold: T in [0, 1): the fraction of rows of each target whose gradient is zeroed
            (floor(T * d_out) rows). T = 0 keeps every row (plain training).
        preset: ``"paper"`` (default, the paper's text) or ``"official"`` (the authors' code).
        mode: ``"grad"`` zeroes the masked gradient rows, as the paper; ``"strict"`` (this
            library's own addition, not in the paper) also keeps masked rows and their optimizer
            state exactly unchanged through the optimizer step (AdamW momentum, weight decay).
        targets: ``"default"`` (attention Q/K/V/O and FFN linears of transformer blocks),
            ``"all-linear"`` (every linear layer, LM head included) or a list of module-name
            patterns (exact name, dotted suffix like ``"attention.self.query"``, or a glob).
        components: with ``targets="default"``, which block parts get MIGU (paper ablation).
        normalize: L1-normalize each token's magnitudes over d_out before averaging.
        exclude_padding: average over real tokens only (attention mask / labels != -100).
        stat_bias: include the bias in the magnitude (|W x + b| instead of |W x|).
        cut: ``"topk"`` (exact count, ties to the lower index) or ``"quantile"``.
        skip_first_task: do not mask while ``masker.task_index == 0``.
        mask_bias: also zero the bias gradient of masked rows (default True under ``paper``:
            a frozen row keeps its whole output unit frozen).
        sparse_backward: compute the weight gradient of target ``nn.Linear`` layers for the kept
            rows only (fewer backward FLOPs; ``migu.engine.sparse``). The mask is then taken from
            the CURRENT micro-batch's statistic at backward time, so with gradient accumulation
            each micro-batch gets its own mask (the dense path makes one mask per optimizer step).
            Needs ``mode="grad"`` and ``cut="topk"`` (a fixed kept count); ValueError otherwise.
    """

    threshold: float = 0.7
    preset: Preset = "paper"
    mode: Mode = "grad"
    targets: str | list[str] | tuple[str, ...] | None = None
    components: tuple[str, ...] = COMPONENTS
    normalize: bool | None = None
    exclude_padding: bool | None = None
    stat_bias: bool | None = None
    cut: Cut | None = None
    skip_first_task: bool | None = None
    mask_bias: bool | None = None
    sparse_backward: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"MIGUConfig.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise ValueError(f"MIGUConfig.threshold must be a number in [0, 1), got {self.threshold!r}")
        if not 0.0 <= float(self.threshold) < 1.0:
            raise ValueError(
                f"MIGUConfig.threshold must be in [0, 1) (the fraction of rows masked), got {self.threshold}"
            )
        self.threshold = float(self.threshold)
        if self.mode not in ("grad", "strict"):
            raise ValueError(f"MIGUConfig.mode must be 'grad' or 'strict', got {self.mode!r}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.cut not in ("topk", "quantile"):
            raise ValueError(f"MIGUConfig.cut must be 'topk' or 'quantile', got {self.cut!r}")
        if isinstance(self.targets, str):
            if self.targets not in ("default", "all-linear"):
                raise ValueError(
                    "MIGUConfig.targets must be 'default', 'all-linear' or a list of module-name patterns, "
                    f"got {self.targets!r}"
                )
        elif isinstance(self.targets, list | tuple):
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise ValueError(f"MIGUConfig.targets list must hold non-empty strings, got {self.targets!r}")
            self.targets = tuple(self.targets)
        else:
            raise ValueError(f"MIGUConfig.targets has an unsupported type: {type(self.targets).__name__}")
        comps = tuple(self.components) if not isinstance(self.components, str) else (self.components,)
        bad = [c for c in comps if c not in COMPONENTS]
        if bad or not comps:
            raise ValueError(
                f"MIGUConfig.components must be a non-empty subset of {COMPONENTS}, got {comps!r}"
            )
        self.components = comps
        for key in ("normalize", "exclude_padding", "stat_bias", "skip_first_task", "mask_bias"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"MIGUConfig.{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.sparse_backward, bool):
            raise ValueError(f"MIGUConfig.sparse_backward must be a bool, got {self.sparse_backward!r}")
        if self.sparse_backward and self.mode != "grad":
            raise ValueError(
                "MIGUConfig.sparse_backward=True needs mode='grad': strict mode restores masked rows after "
                f"the optimizer step, which the sparse backward does not support (got mode={self.mode!r})"
            )
        if self.sparse_backward and self.cut != "topk":
            raise ValueError(
                "MIGUConfig.sparse_backward=True needs cut='topk' (a fixed kept count per layer, no host "
                f"sync); got cut={self.cut!r} (the 'official' preset uses 'quantile': pass cut='topk')"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MIGUConfig:
        """Build from a plain mapping (YAML), naming any unknown key."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MIGU config key(s) {unknown}; known: {sorted(known)}")
        if "components" in data and isinstance(data["components"], list):
            data["components"] = tuple(data["components"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (for saving with results)."""
        out = asdict(self)
        out["components"] = list(self.components)
        if isinstance(self.targets, tuple):
            out["targets"] = list(self.targets)
        return out

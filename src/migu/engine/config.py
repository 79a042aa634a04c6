"""MIGU configuration: one dataclass, two presets (the paper's text and the authors' code)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..validation import (
    ValidationError,
    check_bool,
    check_choice,
    check_int,
    check_literals,
    check_number,
    check_strings,
    invalid,
)

Preset = Literal["paper", "official"]
Mode = Literal["grad", "strict"]
Cut = Literal["topk", "quantile"]
Strategy = Literal["weight", "comagnitude"]
Partial = Literal["drop", "fill", "whole"]
When = Literal["once", "each_task"]
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


def resolve_n_clusters(n_clusters: int | float, d_out: int, name: str = "target") -> int:
    """Clusters of a target with ``d_out`` rows: an int as is (ValueError naming the target when it
    exceeds d_out), a fraction f in (0, 1] as round-half-up(f * d_out), at least 1."""
    if isinstance(n_clusters, float):
        return max(1, min(d_out, math.floor(round(n_clusters * d_out, 6) + 0.5)))
    if n_clusters > d_out:
        raise ValueError(
            f"MIGU cluster n_clusters={n_clusters} exceeds the {d_out} rows of target {name!r}; "
            "use at most d_out clusters or a fraction of d_out (e.g. n_clusters: 0.0625)"
        )
    return n_clusters


@dataclass(frozen=True)
class ClusterConfig:
    """MIGU+Cluster (the paper's ablation): rows are grouped into clusters and masked per cluster.

    Each target's rows get a cluster id; a cluster's score is the mean statistic of its rows, and
    whole clusters are kept in score order (ties: lower cluster id) until the budget of
    k = d_out - floor(T d_out) kept rows is met (``migu.engine.cut.cluster_split``).

    Args:
        strategy: ``"weight"`` (k-means on the rows of W; LoRA ``lora_B``: of W0 + s B A, ``lora_A``:
            of A) or ``"comagnitude"`` (k-means on each row's profile of per-example normalized
            magnitudes over ``samples`` training examples).
        n_clusters: an int >= 1 (clusters per target; a target with fewer rows is an error naming
            it), or a float in (0, 1]: that fraction of each target's d_out, rounded half up, at
            least 1 (0.0625 = clusters of about 16 rows; an r = 8 ``lora_A`` gets 1 cluster).
        partial: the cluster that crosses the budget: ``"fill"`` keeps its best rows (by their own
            statistic) so exactly k rows are kept; ``"drop"`` masks it (<= k rows kept, only whole
            clusters); ``"whole"`` keeps it whole (>= k rows kept).
        balanced: equal cluster sizes (they differ by at most 1): k-means centroids, then a greedy
            capacity-constrained assignment improved by size-preserving swaps
            (``migu.engine.cluster.balanced_assign``).
        seed: k-means ``random_state``.
        n_init: k-means restarts (scikit-learn's ``n_init``): the best of ``n_init`` k-means++
            starts by inertia. scikit-learn's ``"auto"`` is 1 start for k-means++; 3 guards against
            a bad start at 3x the (small, once per task at most) clustering cost.
        samples: co-magnitude data budget: the number of training examples N in each profile.
        when: ``"once"`` (clusters made before the first task, kept for the run) or ``"each_task"``
            (made again at the start of every task, from its rows and the current weights).
    """

    strategy: Strategy = "weight"
    n_clusters: int | float = 0.0625
    partial: Partial = "fill"
    balanced: bool = True
    seed: int = 0
    n_init: int = 3
    samples: int = 100
    when: When = "once"

    def __post_init__(self) -> None:
        check_literals(self, "ClusterConfig.")
        n, field = self.n_clusters, "ClusterConfig.n_clusters"
        try:
            if isinstance(n, float):
                check_number(n, field, low=0.0, high=1.0, low_open=True)
            else:
                check_int(n, field, minimum=1)
        except ValidationError:
            raise invalid(field, "an integer >= 1 or a fraction of d_out in (0, 1]", n) from None
        check_bool(self.balanced, "ClusterConfig.balanced")
        for key, low in (("seed", 0), ("n_init", 1), ("samples", 1)):
            check_int(getattr(self, key), f"ClusterConfig.{key}", minimum=low)

    def clusters_for(self, d_out: int, name: str = "target") -> int:
        """The number of clusters of a target with ``d_out`` rows (ValueError naming it if > d_out)."""
        return resolve_n_clusters(self.n_clusters, d_out, name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ClusterConfig:
        """Build from a plain mapping (YAML), naming any unknown key."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MIGU cluster config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        cluster: MIGU+Cluster (a :class:`ClusterConfig` or a mapping of its fields; None = off): rows
            are masked per cluster (``masker.set_clusters``). Needs ``cut="topk"`` (its budget is the
            top-k count) and no ``sparse_backward`` (the sparse backward cuts rows, not clusters).
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
    cluster: ClusterConfig | None = None

    def __post_init__(self) -> None:
        check_choice(self.preset, "MIGUConfig.preset", tuple(PRESETS))
        self.threshold = check_number(
            self.threshold, "MIGUConfig.threshold", low=0.0, high=1.0, high_open=True
        )
        check_choice(self.mode, "MIGUConfig.mode", ("grad", "strict"))
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        check_choice(self.cut, "MIGUConfig.cut", ("topk", "quantile"))
        targets = "default, all-linear or a non-empty list of module-name patterns"
        if isinstance(self.targets, str):
            if self.targets not in ("default", "all-linear"):
                raise invalid("MIGUConfig.targets", targets, self.targets)
        else:
            try:
                self.targets = check_strings(self.targets, "MIGUConfig.targets", single=False)
            except ValidationError:
                raise invalid("MIGUConfig.targets", targets, self.targets) from None
        parts = f"a non-empty subset of {', '.join(COMPONENTS)}"
        try:
            comps = check_strings(self.components, "MIGUConfig.components")
        except ValidationError:
            raise invalid("MIGUConfig.components", parts, self.components) from None
        if any(c not in COMPONENTS for c in comps):
            raise invalid("MIGUConfig.components", parts, self.components)
        self.components = comps
        for key in ("normalize", "exclude_padding", "stat_bias", "skip_first_task", "mask_bias"):
            check_bool(getattr(self, key), f"MIGUConfig.{key}")
        check_bool(self.sparse_backward, "MIGUConfig.sparse_backward")
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
        if isinstance(self.cluster, Mapping):
            self.cluster = ClusterConfig.from_dict(self.cluster)
        if self.cluster is not None:
            if not isinstance(self.cluster, ClusterConfig):
                raise invalid("MIGUConfig.cluster", "a ClusterConfig, a mapping or null", self.cluster)
            if self.sparse_backward:
                raise ValueError(
                    "MIGUConfig.cluster cannot be combined with sparse_backward=True: the sparse backward "
                    "picks rows by their own statistic, not whole clusters; set sparse_backward=False"
                )
            if self.cut != "topk":
                raise ValueError(
                    "MIGUConfig.cluster needs cut='topk' (the cluster budget is the top-k count "
                    f"d_out - floor(T d_out)); got cut={self.cut!r} (the 'official' preset: pass cut='topk')"
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
        if isinstance(data.get("cluster"), Mapping):
            data["cluster"] = ClusterConfig.from_dict(data["cluster"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (for saving with results)."""
        out = asdict(self)
        out["components"] = list(self.components)
        if isinstance(self.targets, tuple):
            out["targets"] = list(self.targets)
        return out

"""The MIGU engine: statistics, token streams, cut, strict mode, sparse backward, callback.

Depends on torch (and peft for LoRA targets) only. ``masker`` holds the forward statistic and
``apply()``; ``cut`` the row selection; ``tokens`` which tokens are real and which stream each
target reads; ``strict`` the optional bit-exact restore of masked rows; ``sparse`` the opt-in
row-sparse weight-gradient backward; ``targets`` which weights are watched; ``cluster`` the
MIGU+Cluster row grouping (its per-step cut is ``cut.cluster_split``).

Names load on first use (module ``__getattr__``): ``from migu.engine import MIGUConfig`` reads the
config module only, so reading a run config or ``migu --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster import comagnitude_clusters, comagnitude_profiles, weight_clusters
    from .config import COMPONENTS, PRESETS, ClusterConfig, MIGUConfig
    from .cut import ClusterLayout, cluster_split, make_keep_masks, num_kept, num_masked, rank_rows
    from .masker import Masker, attach
    from .targets import Target, component_of, is_lora_layer, resolve_targets

_EXPORTS = {
    "COMPONENTS": "config",
    "PRESETS": "config",
    "ClusterConfig": "config",
    "MIGUConfig": "config",
    "ClusterLayout": "cut",
    "cluster_split": "cut",
    "make_keep_masks": "cut",
    "num_kept": "cut",
    "num_masked": "cut",
    "rank_rows": "cut",
    "comagnitude_clusters": "cluster",
    "comagnitude_profiles": "cluster",
    "weight_clusters": "cluster",
    "Masker": "masker",
    "attach": "masker",
    "Target": "targets",
    "component_of": "targets",
    "is_lora_layer": "targets",
    "resolve_targets": "targets",
}

__all__ = [
    "COMPONENTS",
    "PRESETS",
    "ClusterConfig",
    "ClusterLayout",
    "MIGUConfig",
    "Masker",
    "Target",
    "attach",
    "cluster_split",
    "comagnitude_clusters",
    "comagnitude_profiles",
    "component_of",
    "is_lora_layer",
    "make_keep_masks",
    "num_kept",
    "num_masked",
    "rank_rows",
    "resolve_targets",
    "weight_clusters",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

"""The MIGU engine: statistics, token streams, cut, strict mode, sparse backward, callback.

Depends on torch (and peft for LoRA targets) only. ``masker`` holds the forward statistic and
``apply()``; ``cut`` the row selection; ``tokens`` which tokens are real and which stream each
target reads; ``strict`` the optional bit-exact restore of masked rows; ``sparse`` the opt-in
row-sparse weight-gradient backward; ``targets`` which weights are watched; ``cluster`` the
MIGU+Cluster row grouping (its per-step cut is ``cut.cluster_split``).
"""

from .cluster import comagnitude_clusters, comagnitude_profiles, weight_clusters
from .config import COMPONENTS, PRESETS, ClusterConfig, MIGUConfig
from .cut import ClusterLayout, cluster_split, make_keep_masks, num_kept, num_masked, rank_rows
from .masker import Masker, attach
from .targets import Target, component_of, is_lora_layer, resolve_targets

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

"""The MIGU engine: statistics, masks, presets, LoRA support, distributed reduction, callback."""

from .config import PRESETS, MIGUConfig
from .masker import Masker, attach, make_keep_masks, num_masked
from .targets import Target, component_of, resolve_targets

__all__ = [
    "PRESETS",
    "MIGUConfig",
    "Masker",
    "Target",
    "attach",
    "component_of",
    "make_keep_masks",
    "num_masked",
    "resolve_targets",
]

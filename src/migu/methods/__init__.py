"""Continual-learning methods, one file each, plugged into the runner through the hooks of ``base``.

``get_method("lora", r=8)`` builds one by name; ``list_methods()`` lists the names. Every method
composes with MIGU (the runner attaches the masker after ``on_task_start``).
"""

from .base import CLMethod, ModelSpec
from .ft import FT
from .inclora import IncLoRA
from .lora import LoRA
from .olora import OIncLoRA
from .registry import METHODS, get_method, get_method_class, list_methods
from .replay import FTReplay, LoRAReplay, replay_count

__all__ = [
    "FT",
    "METHODS",
    "CLMethod",
    "FTReplay",
    "IncLoRA",
    "LoRA",
    "LoRAReplay",
    "ModelSpec",
    "OIncLoRA",
    "get_method",
    "get_method_class",
    "list_methods",
    "replay_count",
]

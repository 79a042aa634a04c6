"""Continual-learning methods, one file each, plugged into the runner through the hooks of ``base``.

``get_method("lora", r=8)`` builds one by name; ``list_methods()`` lists the names, and each
class carries its facts (``paper_name``, ``description``, ``default_threshold``, ``needs``,
``regimes``, ``migu_compatible``). Every method but OSF composes with MIGU (the runner attaches the
masker after ``on_task_start``; the config refuses ``migu`` for a method with
``migu_compatible = False``).
"""

from .base import REGIMES, CLMethod, ForwardOutput, MethodNeeds, ModelInfo, StepContext, TaskContext
from .das import DAS
from .derpp import DERPP, LoRADERPP
from .ewc import EWC, LoRAEWC
from .ft import FT
from .inclora import IncLoRA
from .lora import LoRA
from .lwf import LoRALwF, LwF
from .olora import OIncLoRA
from .osf import OSF
from .registry import (
    METHODS,
    get_method,
    get_method_class,
    list_methods,
    paper_name,
    register_method,
    unregister_method,
)
from .replay import FTReplay, LoRAReplay, replay_count

__all__ = [
    "DAS",
    "DERPP",
    "EWC",
    "FT",
    "METHODS",
    "OSF",
    "REGIMES",
    "CLMethod",
    "FTReplay",
    "ForwardOutput",
    "IncLoRA",
    "LoRA",
    "LoRADERPP",
    "LoRAEWC",
    "LoRALwF",
    "LoRAReplay",
    "LwF",
    "MethodNeeds",
    "ModelInfo",
    "OIncLoRA",
    "StepContext",
    "TaskContext",
    "get_method",
    "get_method_class",
    "list_methods",
    "paper_name",
    "register_method",
    "replay_count",
    "unregister_method",
]

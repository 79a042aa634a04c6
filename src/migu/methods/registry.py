"""Method registry: names (and the paper's names, case-insensitive) to CL method classes."""

from __future__ import annotations

from typing import Any

from .base import CLMethod
from .das import DAS
from .derpp import DERPP, LoRADERPP
from .ewc import EWC, LoRAEWC
from .ft import FT
from .inclora import IncLoRA
from .lora import LoRA
from .lwf import LoRALwF, LwF
from .olora import OIncLoRA
from .osf import OSF
from .replay import FTReplay, LoRAReplay

METHODS: dict[str, type[CLMethod]] = {
    cls.name: cls
    for cls in (
        *(FT, LoRA, IncLoRA, OIncLoRA, LoRAReplay, FTReplay),
        *(EWC, LoRAEWC, LwF, LoRALwF, DERPP, LoRADERPP, OSF),  # the finetuning baselines (issue 14)
        DAS,  # continual pre-training only
    )
}

# Extra spellings, compared after lower-casing and dropping "_", "-" and spaces: so "LoRAReplay",
# "lora-replay" and "lora_replay" are one name. The paper calls O-LoRA "OIncLoRA"; DER++ keeps its "++".
_ALIASES: dict[str, str] = {"oinclora": "olora", "der++": "derpp", "lorader++": "lora_derpp"}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_- ")


_LOOKUP: dict[str, str] = {_key(n): n for n in METHODS} | _ALIASES


def register_method(cls: type[CLMethod]) -> type[CLMethod]:
    """Add a method class under ``cls.name`` (usable as a decorator): the runner, sweeps and
    ``migu list methods`` see it at once. A name already taken is a ValueError."""
    if not (isinstance(cls, type) and issubclass(cls, CLMethod)):
        raise ValueError(f"register_method needs a CLMethod subclass, got {cls!r}")
    if _key(cls.name) in _LOOKUP:
        raise ValueError(f"a CL method named {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    _LOOKUP[_key(cls.name)] = cls.name
    return cls


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method` (tests, notebooks)."""
    canonical = _LOOKUP.pop(_key(name), None)
    if canonical is not None:
        METHODS.pop(canonical, None)


def list_methods(regime: str | None = None) -> list[str]:
    """The canonical method names (those that run in ``regime``, when given), in the paper's order."""
    return [n for n, cls in METHODS.items() if regime is None or regime in cls.regimes]


def paper_name(name: str) -> str:
    """The paper's spelling of a method (``olora`` -> ``OIncLoRA``); unknown names unchanged."""
    key = _key(name) if isinstance(name, str) else ""
    return METHODS[_LOOKUP[key]].paper_name if key in _LOOKUP else str(name)


def get_method_class(name: str) -> type[CLMethod]:
    """The class registered under ``name`` (canonical or paper name, any case)."""
    if not isinstance(name, str) or _key(name) not in _LOOKUP:
        raise ValueError(
            f"unknown CL method {name!r}; known: {list_methods()} (or the paper's names: "
            f"{', '.join(cls.paper_name for cls in METHODS.values())})"
        )
    return METHODS[_LOOKUP[_key(name)]]


def get_method(name: str, **options: Any) -> CLMethod:
    """A new method instance; options are validated (a ValueError names the bad option)."""
    return get_method_class(name)(options=dict(options))

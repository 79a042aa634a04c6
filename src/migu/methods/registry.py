"""Method registry: names (and the paper's names, case-insensitive) to CL method classes."""

from __future__ import annotations

from typing import Any

from .base import CLMethod
from .ft import FT
from .inclora import IncLoRA
from .lora import LoRA
from .olora import OIncLoRA
from .replay import FTReplay, LoRAReplay

METHODS: dict[str, type[CLMethod]] = {
    cls.name: cls for cls in (FT, LoRA, IncLoRA, OIncLoRA, LoRAReplay, FTReplay)
}

# Extra spellings, compared after lower-casing and dropping "_", "-" and spaces: so "LoRAReplay",
# "lora-replay" and "lora_replay" are one name. The paper calls O-LoRA "OIncLoRA".
_ALIASES: dict[str, str] = {"oinclora": "olora"}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_- ")


_LOOKUP: dict[str, str] = {_key(n): n for n in METHODS} | _ALIASES


def list_methods() -> list[str]:
    """The canonical method names."""
    return list(METHODS)


def get_method_class(name: str) -> type[CLMethod]:
    """The class registered under ``name`` (canonical or paper name, any case)."""
    if not isinstance(name, str) or _key(name) not in _LOOKUP:
        raise ValueError(
            f"unknown CL method {name!r}; known: {list_methods()} (or the paper's names: FT, LoRA, IncLoRA, "
            "OIncLoRA, LoRAReplay)"
        )
    return METHODS[_LOOKUP[_key(name)]]


def get_method(name: str, **options: Any) -> CLMethod:
    """A new method instance; options are validated (a ValueError names the bad option)."""
    return get_method_class(name)(options=dict(options))

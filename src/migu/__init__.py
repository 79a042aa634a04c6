"""migu: MIGU (magnitude-based gradient updating) and a continual-learning harness for LMs.

The public names load on first use, so ``import migu`` (and ``migu --help``) stays light: torch,
transformers and peft are imported by what needs them, not by the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine.callback import MIGUCallback
    from .engine.config import MIGUConfig
    from .engine.masker import Masker, attach

__version__ = "0.1.0"

__all__ = ["MIGUCallback", "MIGUConfig", "Masker", "__version__", "attach"]


def __getattr__(name: str) -> Any:
    if name == "MIGUConfig":
        from .engine.config import MIGUConfig

        return MIGUConfig
    if name in ("Masker", "attach"):
        from .engine import masker

        return getattr(masker, name)
    if name == "MIGUCallback":  # the Trainer callback imports transformers' Trainer machinery
        from .engine.callback import MIGUCallback

        return MIGUCallback
    raise AttributeError(f"module 'migu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

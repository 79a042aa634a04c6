"""migu: MIGU (magnitude-based gradient updating) and a continual-learning harness for LMs."""

from .engine import Masker, MIGUConfig, attach

__version__ = "0.1.0"

__all__ = ["MIGUCallback", "MIGUConfig", "Masker", "__version__", "attach"]


def __getattr__(name: str):
    # The Trainer callback imports transformers' Trainer machinery: load it only when asked.
    if name == "MIGUCallback":
        from .engine.callback import MIGUCallback

        return MIGUCallback
    raise AttributeError(f"module 'migu' has no attribute {name!r}")

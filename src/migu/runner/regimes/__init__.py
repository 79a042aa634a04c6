"""The regimes a run's stages can be, one module each, and the registry that picks one.

An order in ``data/orders.yaml`` names its regime; a ``tasks:`` list belongs to the first regime
that claims all its names (domain corpora: ``pretrain``, instruction sets: ``instruct``), else to
``finetune``, whose stages are labelled tasks. A new regime is a :class:`Stages` subclass in its
own module and one entry in :data:`REGIMES`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Baselines, Matrices, Row, SaveProgress, Stages
from .finetune import FinetuneStages, label_space
from .instruct import InstructStages
from .pretrain import PretrainStages

REGIMES: dict[str, type[Stages]] = {
    "finetune": FinetuneStages,
    "pretrain": PretrainStages,
    "instruct": InstructStages,
}
FALLBACK = "finetune"  # a task list no other regime claims: labelled tasks


def get_regime(name: str) -> type[Stages]:
    """The :class:`Stages` class of regime ``name`` (ValueError naming the known ones)."""
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; known: {', '.join(REGIMES)}")
    return REGIMES[name]


def regime_of(names: Sequence[str]) -> str:
    """The regime a ``tasks:`` list of stage names belongs to."""
    for name, cls in REGIMES.items():
        if name != FALLBACK and cls.claims(names):
            return name
    return FALLBACK


__all__ = [
    "FALLBACK",
    "REGIMES",
    "Baselines",
    "FinetuneStages",
    "InstructStages",
    "Matrices",
    "PretrainStages",
    "Row",
    "SaveProgress",
    "Stages",
    "get_regime",
    "label_space",
    "regime_of",
]

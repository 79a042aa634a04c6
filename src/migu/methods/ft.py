"""FT: full finetuning, every parameter trained on each task in turn (the paper's FT baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._options import merge_options, snapshot_options
from .base import CLMethod


@dataclass
class FT(CLMethod):
    """The base-class behaviour under its registry name; it takes no options.

    MIGU threshold 0.7 (paper appendix, T5-large full finetuning).
    """

    name: ClassVar[str] = "ft"
    default_threshold: ClassVar[float] = 0.7

    def __post_init__(self) -> None:
        merge_options(self)
        snapshot_options(self)

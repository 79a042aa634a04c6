"""FT: full finetuning, every parameter trained on each task in turn (the paper's FT baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import REGIMES, CLMethod, MethodNeeds


@dataclass
class FT(CLMethod):
    """Full finetuning; no options. MIGU threshold 0.7 (paper appendix, T5-large full finetuning)."""

    name: ClassVar[str] = "ft"
    paper_name: ClassVar[str] = "FT"
    description: ClassVar[str] = (
        "full finetuning: every weight trains on each task in turn, no regularizer, no old data "
        "(ContinualLM's NCL in continual pre-training)"
    )
    default_threshold: ClassVar[float] = 0.7
    needs: ClassVar[MethodNeeds] = MethodNeeds()
    regimes: ClassVar[tuple[str, ...]] = REGIMES

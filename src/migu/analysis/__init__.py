"""Analyses and reports from saved runs and sweeps (never retrains): task similarity through
MIGU's updated-row overlap, single-sample magnitude distributions, sweep summaries, reports.

Heavy imports (torch models, matplotlib) happen in the submodules; import what you use::

    from migu.analysis.similarity import analyze_similarity
    from migu.analysis.report import build_report

The overlap helpers below load on first use, so ``migu --help`` (which reads ``analysis.cli``)
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .overlap import chance_overlap, kept_rows, off_diagonal_mean, overlap_matrix, updated_rows

__all__ = ["chance_overlap", "kept_rows", "off_diagonal_mean", "overlap_matrix", "updated_rows"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import overlap

        return getattr(overlap, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

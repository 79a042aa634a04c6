"""Analyses and reports from saved runs and sweeps (never retrains): task similarity through
MIGU's updated-row overlap, single-sample magnitude distributions, sweep summaries, reports.

Heavy imports (torch models, matplotlib) happen in the submodules; import what you use::

    from migu.analysis.similarity import analyze_similarity
    from migu.analysis.report import build_report
"""

from .overlap import chance_overlap, kept_rows, off_diagonal_mean, overlap_matrix, updated_rows

__all__ = ["chance_overlap", "kept_rows", "off_diagonal_mean", "overlap_matrix", "updated_rows"]

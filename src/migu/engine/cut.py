"""The cut: which rows of each target keep their gradient, given the statistic.

Every mask MIGU makes goes through here (dense ``apply()``, the sparse backward, analyses), so the
count rule and the tie rule exist once:

- ``topk`` keeps exactly d_out - floor(T d_out) rows; a stable descending sort puts equal values in
  index order, so ties go to the lower index. The count is fixed, so no host sync is needed.
- ``quantile`` keeps rows >= the T-quantile (the authors' code): ties keep more rows.
"""

from __future__ import annotations

import math

import torch


def num_masked(threshold: float, d_out: int) -> int:
    """floor(T * d_out), robust to binary float error (0.29 * 100 is 28.999...)."""
    return math.floor(round(threshold * d_out, 6))


def num_kept(threshold: float, d_out: int) -> int:
    """d_out - floor(T * d_out): the rows the top-k cut keeps."""
    return d_out - num_masked(threshold, d_out)


def rank_rows(stats: torch.Tensor) -> torch.Tensor:
    """[n, d] row indices of each layer, largest statistic first; ties to the lower index (stable)."""
    return torch.sort(stats, dim=1, descending=True, stable=True).indices


def topk_split(stats: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([n, d] bool keep mask, [n, t] masked row indices or None when no row is masked).

    Keeps exactly d - floor(T d) rows per layer; the tail of the stable order is the masked rows.
    """
    d = stats.shape[1]
    k = num_kept(threshold, d)
    if k >= d:
        return torch.ones_like(stats, dtype=torch.bool), None
    order = rank_rows(stats)  # [n, d]
    keep = torch.zeros_like(stats, dtype=torch.bool).scatter_(1, order[:, :k], True)
    return keep, order[:, k:]


def quantile_keep(stats: torch.Tensor, threshold: float) -> torch.Tensor:
    """[n, d] bool: rows >= the T-quantile of their layer (linear interpolation, torch's default)."""
    q = torch.quantile(stats, threshold, dim=1, keepdim=True)  # [n, 1]
    return stats >= q


def make_keep_masks(stats: torch.Tensor, threshold: float, cut: str = "topk") -> torch.Tensor:
    """Row masks for a stack of statistics.

    Args:
        stats: [n_layers, d_out] fp32 statistics, larger = more important.
        threshold: T in [0, 1).
        cut: ``"topk"`` or ``"quantile"`` (see the module docstring).

    Returns:
        [n_layers, d_out] bool, True = the row keeps its gradient.
    """
    if cut == "quantile":
        return quantile_keep(stats, threshold)
    return topk_split(stats, threshold)[0]

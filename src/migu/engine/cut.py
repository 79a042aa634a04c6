"""The cut: which rows of each target keep their gradient, given the statistic.

Every mask MIGU makes goes through here (dense ``apply()``, the sparse backward, analyses), so the
count rule and the tie rule exist once:

- ``topk`` keeps exactly d_out - floor(T d_out) rows; a stable descending sort puts equal values in
  index order, so ties go to the lower index. The count is fixed, so no host sync is needed.
- ``quantile`` keeps rows >= the T-quantile (the authors' code): ties keep more rows.
- ``cluster`` (MIGU+Cluster, :func:`cluster_split`) keeps whole clusters of rows in the order of
  their score (the mean statistic of their rows; ties to the lower cluster id) up to the top-k
  budget k = d_out - floor(T d_out). The cluster that crosses the budget (the partial cluster) is
  handled by a rule: ``fill`` keeps its best rows to reach exactly k, ``drop`` masks it, ``whole``
  keeps it whole. All three are "the first k' rows of one order", so one sort per width group
  serves them and nothing waits on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ClusterLayout:
    """The fixed tensors of n cluster assignments over d rows, built once per ``set_clusters``.

    ``slots`` lists each cluster's rows, padded with index d (a zero column appended to the
    statistic), so a cluster's sum is a gather and a sum over its slots: deterministic on every
    device (a scatter_add would add in a data-race order on CUDA, and ranks could then see
    different last bits of a score) and exact for one-row clusters (x + 0 = x).
    """

    assign: torch.Tensor  # [n, d] int64 cluster id of each row
    slots: torch.Tensor  # [n, C, S] int64 rows of each cluster, padded with d
    sizes: torch.Tensor  # [n, C] int64 rows per cluster (0: an id no row uses)

    @classmethod
    def build(cls, assign: torch.Tensor) -> ClusterLayout:
        """From [n, d] cluster ids in [0, d); C = the largest id + 1, S = the largest cluster."""
        if assign.dim() != 2:
            raise ValueError(f"cluster assignment must be [n, d], got shape {tuple(assign.shape)}")
        assign = assign.long()
        n, d = assign.shape
        c = int(assign.max()) + 1
        sizes = torch.zeros(n, c, dtype=torch.long, device=assign.device).scatter_add_(
            1, assign, torch.ones_like(assign)
        )  # integer adds: exact and order-free
        s = int(sizes.max())
        perm = torch.sort(
            assign, dim=1, stable=True
        ).indices  # [n, d] rows grouped by cluster, in index order
        ids = assign.gather(1, perm)  # [n, d] cluster id of each grouped row
        starts = sizes.cumsum(1) - sizes  # [n, C] first grouped position of each cluster
        within = torch.arange(d, device=assign.device).expand(n, d) - starts.gather(1, ids)  # [n, d]
        slots = torch.full((n, c * s), d, dtype=torch.long, device=assign.device)
        slots.scatter_(1, ids * s + within, perm)
        return cls(assign, slots.view(n, c, s), sizes)

    def to(self, device: torch.device) -> ClusterLayout:
        if self.assign.device == device:
            return self
        return ClusterLayout(self.assign.to(device), self.slots.to(device), self.sizes.to(device))


def cluster_scores(stats: torch.Tensor, layout: ClusterLayout) -> torch.Tensor:
    """[n, C] mean statistic of each cluster's rows; -inf for ids no row uses (they sort last)."""
    n, c, s = layout.slots.shape
    padded = torch.cat([stats, stats.new_zeros(n, 1)], dim=1)  # [n, d + 1]: column d is the pad
    sums = padded.gather(1, layout.slots.view(n, c * s)).view(n, c, s).sum(2)  # [n, C]
    scores = sums / layout.sizes.clamp_min(1).to(stats.dtype)
    return scores.masked_fill_(layout.sizes == 0, float("-inf"))


def cluster_rank(stats: torch.Tensor, layout: ClusterLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, d] rows in cluster order, [n, C] cluster ids by score).

    Rows are ordered by their cluster's place in the score order (score descending, ties to the
    lower cluster id), then, inside a cluster, by their own statistic (descending, ties to the
    lower row index): the first rows of this order are whole clusters, best first.
    """
    n, c = layout.sizes.shape
    corder = torch.sort(cluster_scores(stats, layout), dim=1, descending=True, stable=True).indices  # [n, C]
    places = torch.arange(c, device=stats.device).expand(n, c)
    cplace = torch.empty_like(corder).scatter_(1, corder, places)  # [n, C] place of each cluster id
    by_stat = rank_rows(stats)  # [n, d]
    key = cplace.gather(1, layout.assign).gather(1, by_stat)  # [n, d] cluster place, rows in stat order
    order = by_stat.gather(1, torch.sort(key, dim=1, stable=True).indices)  # stable: stat order inside
    return order, corder


def cluster_kept_counts(layout: ClusterLayout, corder: torch.Tensor, k: int, partial: str) -> torch.Tensor:
    """[n] rows kept per layer: k (``fill``), the largest cluster boundary <= k (``drop``) or the
    smallest boundary >= k (``whole``), boundaries = running totals of cluster sizes in score order."""
    n, d = layout.assign.shape
    if partial == "fill":
        return torch.full((n,), k, dtype=torch.long, device=corder.device)
    bounds = layout.sizes.gather(1, corder).cumsum(1)  # [n, C] rows kept after each whole cluster
    if partial == "drop":
        return torch.where(bounds <= k, bounds, 0).amax(1)
    if partial == "whole":
        return torch.where(bounds >= k, bounds, d).amin(1)
    raise ValueError(f"partial must be 'drop', 'fill' or 'whole', got {partial!r}")


def cluster_split(
    stats: torch.Tensor, layout: ClusterLayout, threshold: float, partial: str = "fill"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([n, d] bool keep mask, [n, t] masked row indices or None) of the cluster cut.

    ``fill`` keeps exactly k = d - floor(T d) rows, so its masked rows are a fixed-size index
    tensor (the tail of :func:`cluster_rank`'s order), as for the top-k cut. ``drop``/``whole`` keep
    a data-dependent count: only the mask is returned (None), and callers multiply by it, as for
    the quantile cut. None also when nothing is masked (k = d).
    """
    n, d = stats.shape
    k = num_kept(threshold, d)
    if k >= d:
        return torch.ones_like(stats, dtype=torch.bool), None
    order, corder = cluster_rank(stats, layout)
    if partial == "fill":
        keep = torch.zeros_like(stats, dtype=torch.bool).scatter_(1, order[:, :k], True)
        return keep, order[:, k:]
    kept = cluster_kept_counts(layout, corder, k, partial)  # [n]
    places = torch.arange(d, device=stats.device).expand(n, d)
    place = torch.empty_like(order).scatter_(1, order, places)  # [n, d] place of each row in the order
    return place < kept.unsqueeze(1), None

"""Task similarity as the overlap of MIGU's updated-row sets (paper, "Visualization").

For one linear layer and one task, the *updated rows* are the positions MIGU would keep at
threshold T given that task's statistic: the top k = d_out - floor(T d_out) rows of the mean
L1-normalised output magnitude (``make_keep_masks`` with ``cut="topk"``, ties to the lower index).
The overlap ratio of tasks a and b is ``|A ∩ B| / |A|``. With the top-k cut every set has exactly
k rows, so the matrix is symmetric, its diagonal is 1, and two unrelated (uniformly random) sets
overlap by k / d_out on average: the chance level to read every heatmap against.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine import make_keep_masks, num_masked


def kept_rows(d_out: int, threshold: float) -> int:
    """k = d_out - floor(T d_out): how many rows MIGU updates at threshold T."""
    return d_out - num_masked(threshold, d_out)


def updated_rows(stats: torch.Tensor, threshold: float) -> torch.Tensor:
    """[n_tasks, d_out] bool: each task's updated-row set at T (always the exact top-k cut).

    The top-k cut (not the authors' quantile cut) is used so that every set has the same size
    and the overlap ratio is symmetric.
    """
    if stats.dim() != 2:
        raise ValueError(f"stats must be [n_tasks, d_out], got shape {tuple(stats.shape)}")
    return make_keep_masks(stats.float(), threshold, "topk")


def overlap_matrix(keep: torch.Tensor | np.ndarray) -> np.ndarray:
    """O[a, b] = |A ∩ B| / |A| for boolean row sets ``keep`` [n_tasks, d_out].

    Normalised by the row task's set size; an empty set gives NaN on its row.
    """
    k = torch.as_tensor(keep).to(torch.float64)
    if k.dim() != 2:
        raise ValueError(f"keep must be [n_tasks, d_out], got shape {tuple(k.shape)}")
    inter = k @ k.T  # [n, n] |A ∩ B|
    sizes = k.sum(dim=1, keepdim=True)  # [n, 1] |A|
    out = torch.where(sizes > 0, inter / sizes.clamp_min(1.0), torch.full_like(inter, float("nan")))
    return out.numpy()


def chance_overlap(d_out: int, threshold: float) -> float:
    """Expected |A ∩ B| / |A| of two independent uniformly random k-subsets of d_out rows: k / d_out."""
    return kept_rows(d_out, threshold) / d_out


def off_diagonal_mean(matrix: np.ndarray) -> float:
    """Mean of the entries off the diagonal (the between-task overlap); NaN for one task."""
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    if n < 2:
        return float("nan")
    mask = ~np.eye(n, dtype=bool)
    return float(np.nanmean(m[mask]))

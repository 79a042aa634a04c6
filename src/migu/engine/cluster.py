"""MIGU+Cluster: group each target's rows into clusters, so the mask is made per cluster.

The paper's ablation ("Ablation on MIGU+Cluster") names two ways of grouping the rows of a layer:

- ``weight``: rows close in weight space (k-means on the rows of W). For a LoRA ``lora_B`` target
  the rows of the layer's effective weight W0 + s B A (B is judged by the whole layer output, so
  its rows are the layer's output units); for ``lora_A`` the rows of A.
- ``comagnitude``: rows whose product magnitudes rise and fall together over a subset of the data:
  per target a profile P [d_out, N] (column j = example j's L1-normalized magnitude vector, the
  MIGU statistic over that example's real tokens alone) and k-means on the rows of P.

Clustering runs outside the training step (before the first task or at each task start); the
per-step cut is :func:`migu.engine.cut.cluster_split`. Cluster ids are canonical: clusters are
numbered in the order of their lowest row, so equal scores break to the cluster holding the lower
row, and d_out clusters are exactly the rows (plain MIGU).

Balanced clusters (``balanced=True``, the MoEfication style the paper cites): k-means centroids,
then :func:`balanced_assign` (a greedy assignment under capacities that makes the sizes
floor(d/k) or ceil(d/k), improved by size-preserving swaps), refined by a few balanced Lloyd
rounds. It is a heuristic, not the min-cost-flow optimum of ``k-means-constrained``: that package
would pull OR-Tools and, in this project's environment, downgrade protobuf 7 -> 6
(``pip install k-means-constrained --dry-run``), so it is not a dependency.

scikit-learn is imported inside the functions that cluster: ``import migu`` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .config import resolve_n_clusters
from .masker import Masker
from .targets import Target, is_lora_layer

log = logging.getLogger(__name__)

# Balanced Lloyd rounds after the first balanced assignment (each: centroids, then reassign).
_BALANCED_ROUNDS = 10


def target_rows(target: Target) -> torch.Tensor:
    """[d_out, d_in] float64 rows the ``weight`` strategy clusters (see the module docstring)."""
    layer = target.hook_module
    if target.adapter is not None and is_lora_layer(layer):  # lora_B: the layer's effective weight
        base = layer.get_base_layer()
        w0 = base.weight.detach().double()
        if getattr(layer, "fan_in_fan_out", False):  # GPT-2 Conv1D base: weight [d_in, d_out]
            w0 = w0.t()
        a = layer.lora_A[target.adapter].weight.detach().double()  # [r, d_in]
        b = layer.lora_B[target.adapter].weight.detach().double()  # [d_out, r]
        return w0 + float(layer.scaling[target.adapter]) * (b @ a)  # [d_out, d_in]
    w = target.weight.detach().double()
    return w if target.row_dim == 0 else w.t()


def _sq_distances(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[d, k] squared Euclidean distances (float64)."""
    d2 = (rows**2).sum(1)[:, None] - 2.0 * rows @ centroids.T + (centroids**2).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def greedy_assign(dist: np.ndarray) -> np.ndarray:
    """[d] a first balanced assignment: rows in order of regret take their nearest cluster with room."""
    d, k = dist.shape
    base, extra = divmod(d, k)
    if k > 1:
        two = np.partition(dist, 1, axis=1)[:, :2]
        regret = two[:, 1] - two[:, 0]
    else:
        regret = np.zeros(d)
    order = np.lexsort((np.arange(d), -regret))  # regret descending, ties to the lower row
    sizes = np.zeros(k, dtype=np.int64)
    out = np.empty(d, dtype=np.int64)
    for r in order:
        room = (sizes < base) | ((sizes == base) & (extra > 0))
        j = int(np.argmin(np.where(room, dist[r], np.inf)))
        if sizes[j] == base:
            extra -= 1
        sizes[j] += 1
        out[r] = j
    return out


def _improve_by_swaps(dist: np.ndarray, labels: np.ndarray, max_rounds: int = 1000) -> np.ndarray:
    """Pairwise swaps that lower the total distance, until none does (sizes never change).

    Swapping row i of cluster a with row j of cluster b gains g = (D[i,a] - D[i,b]) + (D[j,b] - D[j,a]);
    the best swap of each cluster pair is the best i plus the best j, found for all pairs at once,
    and each round makes the best swaps of disjoint pairs (their gains stay exact).
    """
    d, k = dist.shape
    labels = labels.copy()
    width = int(np.bincount(labels, minlength=k).max())
    members = np.full((k, width), d, dtype=np.int64)  # [k, S] rows of each cluster, padded with d
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(k))
    members[labels[order], np.arange(d) - starts[labels[order]]] = order
    rows = np.arange(d)
    pairs = np.triu_indices(k, 1)
    for _ in range(max_rounds):
        gain = np.vstack([dist[rows, labels][:, None] - dist, np.full((1, k), -np.inf)])  # [d + 1, k]
        per = gain[members]  # [k, S, k]: gain of moving each member of a to b
        best = per.argmax(1)  # [k, k] slot of the best member of a to move to b
        m = np.take_along_axis(per, best[:, None, :], 1)[:, 0, :]  # [k, k]
        total = (m + m.T)[pairs]  # swap gain of each pair a < b
        good = np.nonzero(total > 1e-12 * max(1.0, float(np.abs(dist).max())))[0]
        if good.size == 0:
            break
        used = np.zeros(k, dtype=bool)
        for p in good[np.argsort(-total[good], kind="stable")]:
            a, b = pairs[0][p], pairs[1][p]
            if used[a] or used[b]:
                continue
            used[a] = used[b] = True
            sa, sb = best[a, b], best[b, a]
            i, j = members[a, sa], members[b, sb]
            members[a, sa], members[b, sb] = j, i
            labels[i], labels[j] = b, a
    return labels


def balanced_assign(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[d] cluster of each row, every cluster holding floor(d/k) or ceil(d/k) rows.

    First greedy: rows in order of regret (distance to their second-nearest centroid minus the
    nearest, largest first; ties to the lower row) go to their nearest centroid that still has
    room; room is floor(d/k) rows per cluster, plus one more for the first d mod k clusters that
    ask, so every cluster ends with floor(d/k) or ceil(d/k) rows. Then pairwise swaps lower the
    total squared distance while any does. Measured against the exact optimum (the transportation
    LP, scipy's HiGHS) for k-means centroids of random rows, d = 192..1536, k = d/16: greedy alone
    costs 4.5-17% more, greedy + swaps 0.06-0.4% more, at 1/10 to 1/25 of the LP's time.
    """
    d, k = rows.shape[0], centroids.shape[0]
    if not 1 <= k <= d:
        raise ValueError(f"balanced_assign needs 1 <= k <= d, got k={k}, d={d}")
    dist = _sq_distances(rows, centroids)  # [d, k]
    labels = greedy_assign(dist)
    return _improve_by_swaps(dist, labels) if 1 < k < d else labels


def _canonical(labels: np.ndarray) -> torch.Tensor:
    """Renumber clusters in the order of their lowest row (ids 0..C-1, no gaps)."""
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(labels.max() + 1, dtype=np.int64)
    rank[labels[np.sort(first)]] = np.arange(len(first))
    return torch.from_numpy(rank[labels])


def _inertia(rows: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    centroids = np.stack([rows[labels == j].mean(0) for j in range(k)])
    return float(((rows - centroids[labels]) ** 2).sum()), centroids


def cluster_rows(
    rows: torch.Tensor, n_clusters: int, seed: int = 0, n_init: int = 3, balanced: bool = True
) -> torch.Tensor:
    """[d] int64 cluster ids of the rows of ``rows`` ([d, f]): k-means (scikit-learn ``KMeans``,
    ``random_state=seed``, ``n_init`` k-means++ starts), optionally balanced; canonical ids."""
    x = rows.detach().double().cpu().numpy()
    d = x.shape[0]
    if not 1 <= n_clusters <= d:
        raise ValueError(f"n_clusters must be in [1, {d}], got {n_clusters}")
    if n_clusters == d:
        return torch.arange(d)  # every row its own cluster: plain MIGU
    if n_clusters == 1:
        return torch.zeros(d, dtype=torch.long)
    from sklearn.cluster import KMeans  # lazily: scikit-learn takes ~1 s to import

    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit(x)
    labels = km.labels_.astype(np.int64)
    if balanced:
        labels = balanced_assign(x, km.cluster_centers_)
        best, centroids = _inertia(x, labels, n_clusters)
        for _ in range(_BALANCED_ROUNDS):  # balanced Lloyd: keep the best assignment seen
            new = balanced_assign(x, centroids)
            if np.array_equal(new, labels):
                break
            cost, new_centroids = _inertia(x, new, n_clusters)
            if cost >= best:
                break
            labels, best, centroids = new, cost, new_centroids
    return _canonical(labels)


def _targets_of(masker_or_targets: Masker | Sequence[Target], trainable_only: bool) -> list[Target]:
    targets = masker_or_targets.targets if isinstance(masker_or_targets, Masker) else list(masker_or_targets)
    return [t for t in targets if t.weight.requires_grad or not trainable_only]


def weight_clusters(
    masker_or_targets: Masker | Sequence[Target],
    n_clusters: int | float,
    seed: int = 0,
    n_init: int = 3,
    balanced: bool = True,
    trainable_only: bool = True,
) -> dict[str, torch.Tensor]:
    """{target name: [d_out] cluster ids} from k-means on each target's rows (:func:`target_rows`).

    ``n_clusters``: an int, or a fraction of each target's d_out (``config.resolve_n_clusters``).
    Frozen targets (never masked) are skipped unless ``trainable_only=False``.
    """
    out: dict[str, torch.Tensor] = {}
    for t in _targets_of(masker_or_targets, trainable_only):
        k = resolve_n_clusters(n_clusters, t.d_out, t.name)
        out[t.name] = cluster_rows(target_rows(t), k, seed, n_init, balanced)
    log.info("MIGU weight clusters for %d targets", len(out))
    return out


@torch.no_grad()
def comagnitude_profiles(
    masker: Masker,
    batches: Iterable[Mapping[str, torch.Tensor]],
    forward: Callable[[Mapping[str, torch.Tensor]], Any],
    samples: int,
) -> dict[str, torch.Tensor]:
    """{target name: [d_out, N] fp32 (CPU)}: column j is example j's statistic (its L1-normalized
    magnitudes averaged over its own real tokens), for the first N = min(samples, available)
    examples of ``batches``.

    ``forward(batch)`` runs the masker's model on one batch (e.g. the family's forward); it runs in
    eval mode (no dropout) under ``torch.no_grad()``, and the training statistic is untouched. A
    module that runs more than once per forward gets the mean of its calls, as the statistic does.
    """
    model = masker.model
    was_training = model.training
    model.eval()
    columns: dict[str, list[torch.Tensor]] = {}
    seen = 0
    try:
        with masker.per_example() as record:
            for batch in batches:
                if seen >= samples:
                    break
                record.clear()
                forward(batch)
                per_target: dict[str, torch.Tensor] = {}
                for name, calls in record.items():
                    if len({tuple(c.shape) for c in calls}) != 1:
                        raise RuntimeError(f"co-magnitude profile: {name!r} saw batches of several sizes")
                    per_target[name] = calls[0] if len(calls) == 1 else torch.stack(calls).mean(0)  # [B, d]
                if not per_target:
                    raise RuntimeError("co-magnitude profile: no trainable target ran in the forward pass")
                if columns and set(per_target) != set(columns):
                    raise RuntimeError("co-magnitude profile: the targets that ran differ between batches")
                widths = {v.shape[0] for v in per_target.values()}
                if len(widths) != 1:
                    raise RuntimeError(f"co-magnitude profile: targets saw different example counts {widths}")
                take = min(widths.pop(), samples - seen)
                for name, v in per_target.items():
                    columns.setdefault(name, []).append(v[:take].float().cpu())
                seen += take
    finally:
        model.train(was_training)
    if not columns:
        raise ValueError("co-magnitude profile: no examples in the batches")
    log.info("MIGU co-magnitude profiles over %d examples for %d targets", seen, len(columns))
    return {name: torch.cat(v).t().contiguous() for name, v in columns.items()}  # [d_out, N]


def comagnitude_clusters(
    profiles: Mapping[str, torch.Tensor],
    n_clusters: int | float,
    seed: int = 0,
    n_init: int = 3,
    balanced: bool = True,
) -> dict[str, torch.Tensor]:
    """{target name: [d_out] cluster ids} from k-means on the rows of each [d_out, N] profile."""
    return {
        name: cluster_rows(p, resolve_n_clusters(n_clusters, p.shape[0], name), seed, n_init, balanced)
        for name, p in profiles.items()
    }

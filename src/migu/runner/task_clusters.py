"""MIGU+Cluster in runs: compute the clusters at the right time and keep them with the checkpoint.

``MIGUConfig.cluster.when`` says when: ``"once"`` (before the first task; the same clusters for
the whole run) or ``"each_task"`` (at every task start, from the current weights and the task's
rows). The clusters used for a task are saved with its checkpoint (``migu_state.safetensors``,
keys = target names), so a resumed run goes on with the same clusters.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ..engine import (
    ClusterConfig,
    Masker,
    MIGUConfig,
    attach,
    comagnitude_clusters,
    comagnitude_profiles,
    weight_clusters,
)
from ..methods import TaskContext

log = logging.getLogger(__name__)


def compute_clusters(
    masker: Masker,
    cluster_cfg: ClusterConfig,
    batches: Iterable[dict[str, torch.Tensor]],
    forward: Callable[[Mapping[str, torch.Tensor]], Any],
) -> dict[str, torch.Tensor]:
    """{target name: [d_out] cluster ids} for the masker's trainable targets.

    ``weight`` reads the weights only (``batches`` is not consumed); ``comagnitude`` runs
    ``forward(batch)`` on the first ``cluster_cfg.samples`` examples of ``batches``. Under
    ``torch.distributed`` rank 0's clusters are broadcast, so every rank cuts the same clusters
    (k-means restarts need not agree bit for bit across processes).
    """
    c = cluster_cfg
    if c.strategy == "weight":
        clusters = weight_clusters(masker, c.n_clusters, c.seed, c.n_init, c.balanced)
    else:
        profiles = comagnitude_profiles(masker, batches, forward, c.samples)
        clusters = comagnitude_clusters(profiles, c.n_clusters, c.seed, c.n_init, c.balanced)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        devices = {t.name: t.weight.device for t in masker.targets}
        for name in sorted(clusters):  # the same order on every rank
            ids = clusters[name].to(devices[name])
            dist.broadcast(ids, src=0)
            clusters[name] = ids.cpu()
    return clusters


def cluster_tensors(clusters: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The clusters as safetensors wants them: contiguous CPU int64, keys = target names."""
    return {
        name: ids.detach().to(device="cpu", dtype=torch.long).contiguous() for name, ids in clusters.items()
    }


def load_cluster_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Clusters saved by ``safetensors.torch.save_file(cluster_tensors(...), path)``."""
    return load_file(str(path))


def task_clusters(
    migu: MIGUConfig | None,
    ctx: TaskContext,
    seed: int,
    previous: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor] | None:
    """The clusters task ``ctx.task_index`` trains with (None without MIGU+Cluster).

    ``"once"``: ``previous`` when there is one (an earlier task's, or the checkpoint's on resume),
    else computed now. ``"each_task"``: computed now. Co-magnitude profiles use
    ``cluster.samples`` of the task's training rows, drawn with ``seed`` (the task's seed, so a
    resumed run draws the same rows). Call after ``method.on_task_start`` (it sets what trains).
    """
    cfg = migu.cluster if migu is not None else None
    if cfg is None:
        return None
    if cfg.when == "once" and previous is not None:
        return previous
    rows = list(ctx.examples)
    if cfg.strategy == "comagnitude" and len(rows) > cfg.samples:
        rows = random.Random(seed).sample(rows, cfg.samples)
    masker = attach(ctx.model, migu)
    try:
        clusters = compute_clusters(masker, cfg, ctx.batches(rows), ctx.run_forward)
    finally:
        masker.detach()
    log.info(
        "task %d %s: %s clusters for %d targets",
        ctx.task_index + 1,
        ctx.task_name,
        cfg.strategy,
        len(clusters),
    )
    return clusters

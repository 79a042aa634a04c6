"""``migu analyze magnitudes``: single samples of different tasks on one layer, overlaid.

MIGU rests on the observation that the L1-normalised output magnitude distribution of a linear
layer differs between tasks (paper, "Magnitude Distribution"). For one seeded train row per task
this takes that distribution over the layer's d_out output rows, in the model's own row order
(not sorted), and smooths it with a centred moving average for the plot; the raw values are in
the CSV. The strip below the curves marks the rows MIGU would update for that sample at T.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ..runner.results import load_results
from . import plots
from .collect import (
    analysis_config,
    checkpoint_indices,
    default_layer,
    match_layer,
    mean_statistics,
    measuring,
    resolve_threshold,
    restore,
    run_label,
)
from .overlap import chance_overlap, overlap_matrix, updated_rows

log = logging.getLogger(__name__)

MAX_DEFAULT_TASKS = 5


@dataclass
class MagnitudeResult:
    """One sample per task on one layer: raw distributions [n_tasks, d_out] and updated rows."""

    run_dir: str
    label: str
    layer: str
    tasks: list[str]
    sentences: list[str]
    checkpoint: int
    threshold: float
    vectors: np.ndarray
    keep: np.ndarray
    window: int
    figure: Figure | None = None


def pick_row(rows: list[Any], index: int, seed: int) -> Any:
    """Row ``index`` of a seeded shuffle of ``rows`` (stable for any index: one permutation)."""
    if not rows:
        raise ValueError("no rows to pick a sample from")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return rows[order[index % len(rows)]]


def compute_magnitudes(
    run_dir: str | Path,
    *,
    layer: str | None = None,
    tasks: list[str] | None = None,
    sample: int = 0,
    seed: int = 0,
    checkpoint: str | int = "last",
    threshold: float | None = None,
    window: int | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
) -> MagnitudeResult:
    """The magnitude distribution of one train row per task on ``layer`` (default: first FFN
    linear of the last block), measured on one checkpoint (default: after the last task)."""
    results = load_results(run_dir)
    order = list(results.tasks)
    if tasks:
        unknown = [t for t in tasks if t not in order]
        if unknown:
            raise ValueError(f"tasks {unknown} are not in the run; its tasks: {order}")
        chosen = list(tasks)
    else:
        chosen = order[:MAX_DEFAULT_TASKS]
        if len(order) > MAX_DEFAULT_TASKS:
            log.info("showing the first %d of %d tasks (choose with --tasks)", MAX_DEFAULT_TASKS, len(order))
    ci = checkpoint_indices(checkpoint, order, results.trained)[-1]
    t = resolve_threshold(results, threshold)
    run = restore(run_dir, ci, data_root, device)
    by_name = {task.name: task for task in run.plan.tasks}
    vectors: list[torch.Tensor] = []
    sentences: list[str] = []
    # Always L1-normalised (also for runs with the authors' raw-sum preset): the plot shows shares.
    with measuring(run.model, analysis_config(results, t, normalize=True)) as (masker, layers):
        names = list(layers.values())
        name = match_layer(names, layer) if layer else default_layer(names)
        for task in chosen:
            row = pick_row(list(by_name[task].train), sample, seed)
            sentences.append(row.sentence)
            vectors.append(mean_statistics(masker, layers, run, [row])[name])
    stats = torch.stack(vectors)  # [n_tasks, d_out]
    d = int(stats.shape[1])
    return MagnitudeResult(
        run_dir=str(run_dir),
        label=run_label(results),
        layer=name,
        tasks=chosen,
        sentences=sentences,
        checkpoint=ci,
        threshold=t,
        vectors=stats.numpy(),
        keep=updated_rows(stats, t).numpy(),
        window=window if window is not None else max(1, d // 32),
    )


def analyze_magnitudes(
    run_dir: str | Path, out: str | Path, **kwargs: Any
) -> tuple[MagnitudeResult, list[Path]]:
    """Compute (see :func:`compute_magnitudes`), then write magnitudes.csv/.json and magnitudes.png."""
    res = compute_magnitudes(run_dir, **kwargs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = res.vectors.shape[1]
    smooth = np.stack([plots.moving_average(v, res.window) for v in res.vectors])
    files: list[Path] = []
    path = out / "magnitudes.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", *(f"{k}_{t}" for t in res.tasks for k in ("raw", "smooth", "updated"))])
        for i in range(d):
            w.writerow(
                [i]
                + [
                    x
                    for j in range(len(res.tasks))
                    for x in (f"{res.vectors[j, i]:.8g}", f"{smooth[j, i]:.8g}", int(res.keep[j, i]))
                ]
            )
    files.append(path)
    overlap = overlap_matrix(res.keep)
    top_share = [
        float(res.vectors[j][res.keep[j]].sum() / max(res.vectors[j].sum(), 1e-30))
        for j in range(len(res.tasks))
    ]
    meta = {
        "run_dir": res.run_dir,
        "run": res.label,
        "layer": res.layer,
        "d_out": d,
        "checkpoint": res.checkpoint,
        "threshold": res.threshold,
        "statistic": "L1-normalised |w_i . x| averaged over the sample's real tokens (MIGU's statistic)",
        "smoothing": f"centred moving average over {res.window} neighbouring rows (window shrinks at edges)",
        "tasks": res.tasks,
        "sentences": [s[:300] for s in res.sentences],
        "share_of_magnitude_in_updated_rows": dict(zip(res.tasks, top_share, strict=True)),
        "updated_row_overlap": overlap.tolist(),
        "chance_overlap": chance_overlap(d, res.threshold),
    }
    path = out / "magnitudes.json"
    path.write_text(json.dumps(meta, indent=1))
    files.append(path)
    res.figure = plots.plot_magnitudes(
        res.tasks,
        res.vectors,
        res.keep,
        window=res.window,
        layer=res.layer,
        threshold=res.threshold,
        title=f"Magnitude distribution of one sample per task, {res.label}\n"
        f"{res.layer}, " + (f"moving average over {res.window} rows" if res.window > 1 else "unsmoothed"),
    )
    files.append(plots.save(res.figure, out / "magnitudes.png"))
    return res, files

"""``migu analyze similarity``: how much the rows MIGU would update for one task overlap another's.

Per task: N seeded train rows go through a saved checkpoint (by default the model after the last
task), the mean L1-normalised output magnitude over all their real tokens is taken per layer (the
statistic MIGU builds a mask from), and its top k = d_out - floor(T d_out) rows are the task's
updated-row set. Overlap of tasks A and B = |A ∩ B| / |A| (symmetric: |A| = |B| = k); chance
level k / d_out. The paper draws this for the first FFN linear of the last block, FT vs FT+MIGU.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
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
    layer_component,
    match_layer,
    mean_statistics,
    measuring,
    resolve_threshold,
    restore,
    run_label,
    sample_rows,
    short_layers,
)
from .overlap import chance_overlap, kept_rows, off_diagonal_mean, overlap_matrix, updated_rows

log = logging.getLogger(__name__)

NORMALISATION = "|A ∩ B| / |A| with |A| = |B| = k = d_out - floor(T d_out) (top-k cut): symmetric"


@dataclass
class RunSimilarity:
    """Overlap matrices of one run, every analysed layer."""

    run_dir: str
    label: str
    method: str
    migu: dict[str, Any] | None
    tasks: list[str]
    threshold: float
    checkpoint: str
    checkpoints: list[int]  # checkpoint index each task was measured on
    samples: dict[str, int]  # rows actually used per task
    seed: int
    layers: list[str] = field(default_factory=list)
    d_out: dict[str, int] = field(default_factory=dict)
    overlap: dict[str, np.ndarray] = field(default_factory=dict)

    def chance(self, layer: str) -> float:
        """Expected overlap of unrelated sets on ``layer``: k / d_out."""
        return chance_overlap(self.d_out[layer], self.threshold)

    def mean_overlap(self, layers: list[str] | None = None) -> np.ndarray:
        """Element-wise mean of the overlap matrices of ``layers`` (default all)."""
        return np.mean([self.overlap[n] for n in layers or self.layers], axis=0)

    def to_json(self) -> dict[str, Any]:
        """Plain data for similarity.json."""
        return {
            "run_dir": self.run_dir,
            "label": self.label,
            "method": self.method,
            "migu": self.migu,
            "tasks": self.tasks,
            "threshold": self.threshold,
            "checkpoint": self.checkpoint,
            "checkpoint_per_task": dict(zip(self.tasks, self.checkpoints, strict=True)),
            "samples_per_task": self.samples,
            "seed": self.seed,
            "normalisation": NORMALISATION,
            "mean_over_layers": self.mean_overlap().tolist(),
            "mean_over_layers_between_tasks": off_diagonal_mean(self.mean_overlap()),
            "layers": {
                n: {
                    "component": layer_component(n),
                    "d_out": self.d_out[n],
                    "kept": kept_rows(self.d_out[n], self.threshold),
                    "chance": self.chance(n),
                    "between_tasks": off_diagonal_mean(self.overlap[n]),
                    "overlap": self.overlap[n].tolist(),
                }
                for n in self.layers
            },
        }


def compute_similarity(
    run_dir: str | Path,
    *,
    samples: int = 100,
    threshold: float | None = None,
    checkpoint: str | int = "last",
    seed: int = 0,
    batch_size: int = 16,
    data_root: str | Path | None = None,
    device: str = "cpu",
    label: str | None = None,
) -> RunSimilarity:
    """Overlap matrices of every target layer of one run (restores checkpoints; trains nothing)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    results = load_results(run_dir)
    tasks = list(results.tasks)
    t = resolve_threshold(results, threshold)
    idx = checkpoint_indices(checkpoint, tasks, results.trained)
    per_task: dict[int, dict[str, torch.Tensor]] = {}
    used: dict[str, int] = {}
    for ci in sorted(set(idx)):
        run = restore(run_dir, ci, data_root, device)
        with measuring(run.model, analysis_config(results, t)) as (masker, layers):
            for j, task in enumerate(run.plan.tasks):
                if idx[j] != ci:
                    continue
                rows = sample_rows(task.train, samples, seed)
                if not rows:
                    raise ValueError(f"task {task.name!r} of {run_dir} has no train rows to sample")
                used[task.name] = len(rows)
                per_task[j] = mean_statistics(masker, layers, run, rows, batch_size)
                log.info("%s: %s on checkpoint %d, %d rows", Path(run_dir).name, task.name, ci, len(rows))
        del run
    names = list(per_task[0])
    sim = RunSimilarity(
        run_dir=str(run_dir),
        label=label or run_label(results),
        method=results.method,
        migu=results.migu,
        tasks=tasks,
        threshold=t,
        checkpoint=str(checkpoint),
        checkpoints=idx,
        samples=used,
        seed=seed,
    )
    for name in names:
        stats = torch.stack([per_task[j][name] for j in range(len(tasks))])  # [n_tasks, d_out]
        sim.layers.append(name)
        sim.d_out[name] = int(stats.shape[1])
        sim.overlap[name] = overlap_matrix(updated_rows(stats, t))
    return sim


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "run"


def _unique_labels(sims: list[RunSimilarity]) -> list[str]:
    labels = [s.label for s in sims]
    return [
        f"{lab} [{Path(s.run_dir).name}]" if labels.count(lab) > 1 else lab
        for lab, s in zip(labels, sims, strict=True)
    ]


@dataclass
class SimilarityOutput:
    """What ``analyze_similarity`` made: the per-run results, figures (by file stem) and files."""

    runs: list[RunSimilarity]
    layer: str
    figures: dict[str, Figure]
    files: list[Path]


def analyze_similarity(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    layer: str | None = None,
    labels: list[str] | None = None,
    **kwargs: Any,
) -> SimilarityOutput:
    """Compute the overlaps of each run and write JSON, CSVs and heatmaps into ``out``.

    ``kwargs`` go to :func:`compute_similarity` (samples, threshold, checkpoint, seed, ...).
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    sims = [
        compute_similarity(d, label=labels[i] if labels else None, **kwargs) for i, d in enumerate(run_dirs)
    ]
    for s, lab in zip(sims, _unique_labels(sims), strict=True):
        s.label = lab
    common = [n for n in sims[0].layers if all(n in s.layers for s in sims[1:])]
    if not common:
        raise ValueError("the runs share no analysed layer (different model types?)")
    chosen = match_layer(common, layer) if layer else default_layer(common)
    if len({s.threshold for s in sims}) > 1:
        log.warning(
            "runs use different T (%s): pass --threshold to compare at one T", [s.threshold for s in sims]
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    summary = {
        "layer": chosen,
        "normalisation": NORMALISATION,
        "runs": [s.to_json() for s in sims],
    }
    path = out / "similarity.json"
    path.write_text(json.dumps(summary, indent=1))
    files.append(path)

    path = out / "similarity_overlap.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "layer", "component", "d_out", "kept", "threshold", "task_a", "task_b", "overlap"])
        for s in sims:
            for n in s.layers:
                for a, ta in enumerate(s.tasks):
                    for b, tb in enumerate(s.tasks):
                        w.writerow(
                            [
                                s.label,
                                n,
                                layer_component(n),
                                s.d_out[n],
                                kept_rows(s.d_out[n], s.threshold),
                                s.threshold,
                                ta,
                                tb,
                                f"{s.overlap[n][a, b]:.6f}",
                            ]
                        )
    files.append(path)
    for s in sims:
        for tag, matrix in (("layer", s.overlap[chosen]), ("mean", s.mean_overlap(common))):
            path = out / f"similarity_{_slug(s.label)}_{tag}.csv"
            with path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["task", *s.tasks])
                for ta, row in zip(s.tasks, matrix, strict=True):
                    w.writerow([ta, *(f"{v:.6f}" for v in row)])
            files.append(path)

    counts = sorted({c for s in sims for c in s.samples.values()})
    n_rows = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    figures: dict[str, Figure] = {}
    t_text = "T = " + "/".join(sorted({f"{s.threshold:g}" for s in sims}))
    figures["similarity_layer"] = plots.plot_overlap(
        [(s.label, s.overlap[chosen], s.tasks) for s in sims],
        suptitle=f"Updated-row overlap between tasks, {chosen}\n({t_text}, {n_rows} train rows per task, "
        f"checkpoint: {sims[0].checkpoint})",
        chance=[s.chance(chosen) for s in sims],
    )
    figures["similarity_mean"] = plots.plot_overlap(
        [(s.label, s.mean_overlap(common), s.tasks) for s in sims],
        suptitle=f"Updated-row overlap between tasks, mean over {len(common)} layers ({t_text})",
        chance=[float(np.mean([s.chance(n) for n in common])) for s in sims],
    )
    per_layer = [[round(s.chance(n), 6) for n in common] for s in sims]
    figures["similarity_by_layer"] = plots.plot_overlap_by_layer(
        [(s.label, short_layers(common), [off_diagonal_mean(s.overlap[n]) for n in common]) for s in sims],
        chance=per_layer[0] if all(c == per_layer[0] for c in per_layer) else None,
        title=f"Mean updated-row overlap between different tasks, per layer ({t_text})",
    )
    for stem, fig in figures.items():
        files.append(plots.save(fig, out / f"{stem}.png"))
    for s in sims:
        log.info(
            "%s: %s between-task overlap %.1f%% (chance %.1f%%); mean over layers %.1f%%",
            s.label,
            chosen,
            100 * off_diagonal_mean(s.overlap[chosen]),
            100 * s.chance(chosen),
            100 * off_diagonal_mean(s.mean_overlap(common)),
        )
    return SimilarityOutput(sims, chosen, figures, files)


def format_similarity(result: SimilarityOutput) -> str:
    """A short text summary for the terminal."""
    lines = [f"layer: {result.layer}  ({NORMALISATION})"]
    for s in result.runs:
        m = s.overlap[result.layer]
        lines.append(f"\n{s.label}  T={s.threshold:g}  chance {100 * s.chance(result.layer):.1f}%")
        width = max(10, *(len(t) for t in s.tasks)) + 1
        lines.append("".ljust(width) + "".join(t[:9].rjust(10) for t in s.tasks))
        for ta, row in zip(s.tasks, m, strict=True):
            lines.append(ta.ljust(width) + "".join(f"{100 * v:9.1f}%" for v in row))
        lines.append(
            f"between tasks: {100 * off_diagonal_mean(m):.1f}% on this layer, "
            f"{100 * off_diagonal_mean(s.mean_overlap()):.1f}% mean over {len(s.layers)} layers"
        )
    return "\n".join(lines)

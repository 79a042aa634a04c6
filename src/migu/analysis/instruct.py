"""Learning vs forgetting of instruction-tuning runs (the paper's LLM figure), from run directories."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from ..runner.results import RunResults, load_results
from . import plots
from .collect import run_label


@dataclass
class InstructCurves:
    """Per run: (stage, learning score, general score) in training order; what was written."""

    curves: dict[str, list[tuple[str, float, float]]]
    figure: Figure
    files: list[Path]


def learning_forgetting(results: RunResults, column: str | None = None) -> list[tuple[str, float, float]]:
    """(stage, learning, general) rows of one instruct run: learning is ``column``'s score (default
    the mean over the sets that have one), general the lm-eval mean; the untrained model first."""
    if results.regime != "instruct":
        raise ValueError(f"run {results.name!r} is a {results.regime} run, not an instruction-tuning run")
    if not results.matrices.get("general") or not results.matrices["general"][0]:
        raise ValueError(
            f"run {results.name!r} has no general score (instruct.general was not set): nothing to plot as "
            "forgetting"
        )
    sets = results.columns.get("score", results.tasks)
    if column is not None and column not in sets:
        raise ValueError(f"{column!r} is not an instruction set of run {results.name!r}: {sets}")

    def learn(row: Sequence[float | None]) -> float:
        vals = [
            v for n, v in zip(sets, row, strict=True) if v is not None and (column is None or n == column)
        ]
        return sum(vals) / len(vals) if vals else float("nan")

    out = []
    if results.baselines and results.baselines.get("general"):
        out.append(("untrained", learn(results.baselines["score"]), results.baselines["general"][0]))
    for stage, row, gen in zip(
        results.stages, results.matrices["score"], results.matrices["general"], strict=False
    ):
        out.append((stage, learn(row), gen[0]))  # type: ignore[arg-type]
    return out


def analyze_instruct(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    column: str | None = None,
    labels: Sequence[str] | None = None,
) -> InstructCurves:
    """``learning_forgetting.png`` and ``learning_forgetting.csv`` of the runs (e.g. LoRA vs LoRA+MIGU)."""
    runs = [load_results(d) for d in run_dirs]
    names = list(labels) if labels else [run_label(r) for r in runs]
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} labels for {len(runs)} runs")
    curves = {n: learning_forgetting(r, column) for n, r in zip(names, runs, strict=True)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    what = column or "mean instruction-set score"
    fig = plots.plot_learning_forgetting(curves, what, "general score", "Learning vs forgetting over epochs")
    files = [plots.save(fig, out / "learning_forgetting.png")]
    with (out / "learning_forgetting.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "stage", "learning", "general"])
        w.writerows([n, stage, f"{v:.6f}", f"{g:.6f}"] for n, pts in curves.items() for stage, v, g in pts)
    files.append(out / "learning_forgetting.csv")
    return InstructCurves(curves, fig, files)

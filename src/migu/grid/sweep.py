"""``migu sweep SWEEP.yaml``: every cell of a grid (``grid.spec``) run as an ordinary run directory
under the sweep directory, so a re-run resumes every unfinished cell, then ``summary.json`` /
``summary.csv`` / ``summary.md``: ACC/BWT/FWT/forgetting as mean and sample std over seeds,
grouped by ``migu.analysis.groups`` exactly as ``migu analyze sweep`` groups them, with the paired
effects and the published numbers."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from ..analysis.effects import EFFECT_TITLES, effect_sections, effects_table
from ..analysis.groups import SWEEP_FILE, group_cells, read_sweep_dir
from ..analysis.tables import (
    markdown_table,
    method_table,
    paper_comparisons,
    paper_table,
    summary_rows,
    table_metrics,
)
from ..runner.config import build_run_config
from ..runner.execute import execute
from ..runner.faults import DivergedError, RunLockedError
from ..runner.files import atomic_write_text
from ..runner.plan import plan_run
from .spec import load_sweep

log = logging.getLogger(__name__)


def write_summary(sweep_dir: Path) -> str:
    """summary.json, summary.csv and summary.md of a sweep directory; returns the Markdown."""
    sweep = read_sweep_dir(sweep_dir)
    groups = group_cells([sweep])
    rows = summary_rows(groups)
    keys = [k for k in (sweep.cells[0].values if sweep.cells else {}) if k != "seed"]
    summary: dict[str, Any] = {"name": sweep.name, "keys": keys, "rows": rows, "missing": sweep.missing}
    buf = io.StringIO()
    w = csv.writer(buf)
    metrics = table_metrics(groups)
    head = [*keys, "method", "setting", "other", "n", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]
    w.writerow(head)
    for r in rows:
        w.writerow([r.get(k, "") for k in head])
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    header, table = method_table(groups)
    done = len(sweep.cells) - len(sweep.missing)
    md = f"{markdown_table(header, table)}\n\nmean ± sample std over seeds, in % (no std for a single seed); "
    md += f"{done} of {len(sweep.cells)} cells finished\n"
    for kind, effects in effect_sections(groups).items():
        md += f"\n{EFFECT_TITLES[kind]}:\n\n"
        md += (
            markdown_table(*effects_table(effects))
            + "\n\n"
            + "\n".join(f"- {e.sentence()}" for e in effects)
            + "\n"
        )
        summary["effects" if kind == "migu" else f"{kind}_effects"] = [dataclasses.asdict(e) for e in effects]
    comparisons = paper_comparisons(c.results for c in sweep.cells if c.results is not None)
    if comparisons:
        md += "\nPublished vs measured (mean over every finished run with that published number):\n\n"
        md += markdown_table(*paper_table(comparisons)) + "\n"
        summary["paper"] = [dataclasses.asdict(c) for c in comparisons]
    atomic_write_text(sweep_dir / "summary.json", json.dumps(summary, indent=1))
    if sweep.missing:
        md += f"\nnot finished: {', '.join(sweep.missing)}\n"
    atomic_write_text(sweep_dir / "summary.md", md)
    return md


def run_sweep(
    path: str | Path,
    out: str | Path | None = None,
    data_root: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Plan every cell (all inputs validated first), run the unfinished ones, write the summary.

    A cell locked by another process (a second ``migu sweep`` on the same directory) is skipped and
    listed under ``busy``; a cell that diverged is listed under ``failed``; both stay unfinished in
    the summary, and a later re-run picks them up.
    """
    name, cells = load_sweep(path, overrides)
    sweep_dir = Path(out) if out else Path("runs") / name
    plans = [plan_run(build_run_config(c.config), sweep_dir / c.name, data_root) for c in cells]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        sweep_dir / SWEEP_FILE,
        yaml.safe_dump(
            {"name": name, "cells": [{"name": c.name, "values": c.values} for c in cells]}, sort_keys=False
        ),
    )
    busy: list[str] = []
    failed: list[str] = []
    for i, (cell, plan) in enumerate(zip(cells, plans, strict=True)):
        log.info("sweep %s: cell %d/%d %s", name, i + 1, len(cells), cell.name)
        try:
            execute(plan)  # takes the cell's lock: each cell is one run
        except RunLockedError as exc:
            # Another sweep (or run) on this directory is running this cell: leave it to that one, so
            # two `migu sweep` processes on one directory share its cells instead of colliding.
            log.warning("sweep %s: cell %s skipped: %s", name, cell.name, exc)
            busy.append(cell.name)
        except DivergedError as exc:  # a diverged cell is a result of the grid, not the sweep's end
            log.warning("sweep %s: cell %s failed: %s", name, cell.name, exc)
            failed.append(cell.name)
    write_summary(sweep_dir)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    return {**summary, "busy": busy, "failed": failed}

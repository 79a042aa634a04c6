"""Grids of runs (methods x MIGU on/off x seeds, thresholds, components) and their summary table.

A sweep file::

    name: proxy_table
    base: ../cpu/standard_proxy.yaml      # the run config every cell starts from (merged in)
    overrides: [train.lr=1e-4]            # applied to every cell (optional)
    grid:                                  # dotted run-config keys -> values; the product is run
      method: [ft, lora]                   # alias of method.name
      migu: [off, on]                      # off = no MIGU, on = the method's paper threshold
      seed: [42, 1024, 2048]

A grid value may be a mapping of overrides applied together, named by its ``label``, e.g.
``recipe: [{label: ft, method.name: ft, train.lr: 1e-4}, {label: lora, method.name: lora, train.lr: 1e-3}]``.

Each cell is an ordinary run directory under the sweep directory (so a re-run resumes every
unfinished cell); ``summary.json``/``summary.csv``/``summary.md`` aggregate ACC/BWT/FWT/forgetting
as mean and sample std over seeds, grouped by ``migu.runner.summary`` exactly as
``migu analyze sweep`` groups them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..methods import get_method_class
from .config import ConfigError, apply_overrides, build_run_config, read_yaml_config, yaml_load
from .faults import DivergedError, RunLockedError
from .files import atomic_write_text
from .run import execute, plan_run
from .summary import (
    EFFECT_TITLES,
    SWEEP_FILE,
    effect_sections,
    effects_table,
    grid_label,
    group_cells,
    markdown_table,
    method_table,
    migu_grid_value,
    paper_comparisons,
    paper_table,
    read_sweep_dir,
    summary_rows,
    table_metrics,
)

log = logging.getLogger(__name__)

_ALIASES = {"method": "method.name"}
TUNE_KEYS = ("select", "metric", "test_seeds")


@dataclass
class Cell:
    """One run of the grid: its values per grid key, its directory name and its config mapping."""

    values: dict[str, Any]
    name: str
    config: dict[str, Any]


def _paper_table(path: str | Path, raw: Any) -> dict[str, Any] | None:
    """A sweep's ``paper:`` table, checked: ``{source, metric, values: {method: {base: x, migu: y}}}``.

    Each cell gets the published number of its method without (``base``) or with MIGU as its run config's
    ``paper`` (``migu report`` shows it beside the measured one)."""
    if raw is None:
        return None
    where = f"{path}: paper"
    if not isinstance(raw, dict) or set(raw) - {"source", "metric", "values"}:
        raise ConfigError(f"{where} must be a mapping with keys source, metric, values")
    values = raw.get("values")
    if not isinstance(values, dict) or not values:
        raise ConfigError(
            f"{where}.values must map method names to {{base: number, migu: number}} (base: without MIGU)"
        )
    table: dict[str, dict[str, float]] = {}
    for method, pair in values.items():
        try:
            canonical = get_method_class(str(method)).name
        except ValueError as exc:
            raise ConfigError(f"{where}.values: {exc}") from None
        if not isinstance(pair, dict) or not pair or set(pair) - {"base", "migu"}:
            raise ConfigError(
                f"{where}.values.{method} must be a mapping with keys base (without MIGU) and/or migu, "
                f"got {pair!r}"
            )
        for side, v in pair.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not -100 <= v <= 100:
                raise ConfigError(f"{where}.values.{method}.{side} must be a percentage, got {v!r}")
        table[canonical] = pair
    return {"source": raw.get("source", ""), "metric": raw.get("metric", "acc"), "values": table}


def _with_paper(data: dict[str, Any], paper: dict[str, Any]) -> dict[str, Any]:
    """The cell's config with the published number of its (method, MIGU off/on), if the table has one."""
    method = get_method_class(str((data.get("method") or {}).get("name", "ft"))).name
    side = "base" if data.get("migu") is None else "migu"
    value = paper["values"].get(method, {}).get(side)
    if value is None:
        return data  # the paper has no number for this cell
    return {**data, "paper": {"source": paper["source"], "values": {paper["metric"]: value}}}


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[str, list[Cell]]:
    """Expand a sweep file into cells (validating each cell's config before any training)."""
    overrides = list(overrides or [])
    # ``grid.seed=[42]`` narrows or changes the grid itself; other overrides apply to every cell.
    spec = read_yaml_config(path)
    grid = spec.pop("grid", None)
    for text in (o for o in overrides if o.startswith("grid.")):
        key, value = text[len("grid.") :].split("=", 1) if "=" in text else (text, "")
        grid = {**(grid or {}), key: yaml_load(value)}  # grid keys are dotted names: not split

    name = spec.pop("name", Path(path).stem)
    spec.pop("paper", None)  # merged with the base config's own: the sweep's table is read unmerged
    own = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    paper = _paper_table(path, own.get("paper") if isinstance(own, dict) else None)
    for key in TUNE_KEYS:  # read by `migu tune` (runner/tune.py), not part of any run's config
        spec.pop(key, None)
    common = list(spec.pop("overrides", []) or []) + [o for o in overrides if not o.startswith("grid.")]
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: a sweep needs a non-empty 'grid' mapping of key -> list of values")
    base = spec  # what is left is the run config every cell starts from (with its `base:` merged)
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ConfigError(f"{path}: grid.{k} must be a non-empty list")
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        data = apply_overrides(base, common)
        for k, v in values.items():
            if k == "migu":
                data["migu"] = migu_grid_value(v)
                continue
            if isinstance(
                v, dict
            ):  # a bundle of overrides, e.g. {label: lora, method.name: lora, train.lr: 1e-3}
                data = apply_overrides(
                    data, [f"{kk}={json.dumps(vv)}" for kk, vv in v.items() if kk != "label"]
                )
                continue
            data = apply_overrides(data, [f"{_ALIASES.get(k, k)}={json.dumps(v)}"])
        label = "_".join(f"{k.split('.')[-1]}-{grid_label(k, v)}" for k, v in values.items())
        data["name"] = f"{name}/{label}"
        data.pop("paper", None)  # a base config's number is for its own method, not every cell's
        if paper is not None:
            data = _with_paper(data, paper)
        try:
            build_run_config(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: cell {label}: {exc}") from None
        cells.append(Cell(values=values, name=label, config=data))
    return name, cells


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

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
as mean and sample std over seeds for every other combination of grid values.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import atomic_write_text
from .config import ConfigError, apply_overrides, build_run_config, read_yaml_config, yaml_load
from .results import RESULTS_FILE

log = logging.getLogger(__name__)

_ALIASES = {"method": "method.name"}
METRICS = ("acc", "bwt", "fwt", "forgetting")


@dataclass
class Cell:
    """One run of the grid: its values per grid key, its directory name and its config mapping."""

    values: dict[str, Any]
    name: str
    config: dict[str, Any]


def _migu_value(value: Any) -> Any:
    """Grid values for ``migu``: off/false/null -> None, on/true -> {} (method default), else as is."""
    # Identity/str checks, not ``in``: 0.0 == False and 1 == True in Python.
    if value is None or value is False or value in ("off", "none"):
        return None
    if value is True or value == "on":
        return {}
    if isinstance(value, int | float):
        return {"threshold": float(value)}
    return value


def _label(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, dict) and "label" in value:
        return str(value["label"])
    if isinstance(value, dict):
        return "on" if not value else "-".join(f"{k}{v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return str(value)


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
                data["migu"] = _migu_value(v)
                continue
            if isinstance(
                v, dict
            ):  # a bundle of overrides, e.g. {label: lora, method.name: lora, train.lr: 1e-3}
                data = apply_overrides(
                    data, [f"{kk}={json.dumps(vv)}" for kk, vv in v.items() if kk != "label"]
                )
                continue
            data = apply_overrides(data, [f"{_ALIASES.get(k, k)}={json.dumps(v)}"])
        label = "_".join(
            f"{k.split('.')[-1]}-{_label(_migu_value(v) if k == 'migu' else v)}" for k, v in values.items()
        )
        data["name"] = f"{name}/{label}"
        try:
            build_run_config(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: cell {label}: {exc}") from None
        cells.append(Cell(values=values, name=label, config=data))
    return name, cells


def summarize_sweep(sweep_dir: Path, cells: list[Cell]) -> dict[str, Any]:
    """Mean/std of each metric over seeds, per combination of the other grid values."""
    groups: dict[tuple, dict[str, Any]] = {}
    for cell in cells:
        key_values = {
            k: _label(_migu_value(v) if k == "migu" else v) for k, v in cell.values.items() if k != "seed"
        }
        key = tuple(key_values.items())
        group = groups.setdefault(key, {"values": key_values, "runs": [], "missing": []})
        path = sweep_dir / cell.name / RESULTS_FILE
        if not path.is_file():
            group["missing"].append(cell.name)
            continue
        res = json.loads(path.read_text())
        if not res.get("complete"):
            group["missing"].append(cell.name)
            continue
        group["runs"].append(
            {
                "cell": cell.name,
                "seed": res.get("seed"),
                **res["metrics"],
                "wall_seconds": res.get("wall_seconds"),
            }
        )
    rows = []
    for group in groups.values():
        row: dict[str, Any] = dict(group["values"])
        row["n"] = len(group["runs"])
        for m in METRICS:
            vals = [r[m] for r in group["runs"] if r.get(m) is not None]
            row[f"{m}_mean"] = statistics.fmean(vals) if vals else None
            row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else None  # undefined for one seed
        row["seeds"] = [r["seed"] for r in group["runs"]]
        row["missing"] = group["missing"]
        rows.append(row)
    return {"rows": rows, "keys": [k for k in cells[0].values if k != "seed"] if cells else []}


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def write_summary(sweep_dir: Path, summary: dict[str, Any]) -> str:
    """summary.json, summary.csv and a Markdown table (returned)."""
    atomic_write_text(sweep_dir / "summary.json", json.dumps(summary, indent=1))
    keys = summary["keys"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*keys, "n", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))])
    for r in summary["rows"]:
        w.writerow(
            [r[k] for k in keys] + [r["n"]] + [r[f"{m}_{s}"] for m in METRICS for s in ("mean", "std")]
        )
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    head = [*keys, "seeds", "ACC (%)", "BWT (%)", "FWT (%)", "Forgetting (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = [str(r[k]) for k in keys] + [str(r["n"])]
        cells += [_pct(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n\nmean ± sample std over seeds (no std for a single seed)\n"
    atomic_write_text(sweep_dir / "summary.md", table)
    return table


def run_sweep(
    path: str | Path,
    out: str | Path | None = None,
    data_root: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Plan every cell (all inputs validated first), run the unfinished ones, write the summary."""
    from .run import execute, plan_run

    name, cells = load_sweep(path, overrides)
    sweep_dir = Path(out) if out else Path("runs") / name
    plans = [plan_run(build_run_config(c.config), sweep_dir / c.name, data_root) for c in cells]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        sweep_dir / "sweep.yaml",
        yaml.safe_dump(
            {"name": name, "cells": [{"name": c.name, "values": c.values} for c in cells]}, sort_keys=False
        ),
    )
    for i, (cell, plan) in enumerate(zip(cells, plans, strict=True)):
        log.info("sweep %s: cell %d/%d %s", name, i + 1, len(cells), cell.name)
        execute(plan)
    summary = summarize_sweep(sweep_dir, cells)
    summary["name"] = name
    write_summary(sweep_dir, summary)
    return summary

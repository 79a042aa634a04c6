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

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..analysis.groups import grid_label, migu_grid_value
from ..methods import get_method_class
from ..runner.config import ConfigError, apply_overrides, build_run_config, read_yaml_config, yaml_load
from ..validation import check_number, config_errors, invalid

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
        raise ConfigError(str(invalid(where, "a mapping with keys source, metric, values", raw)))
    values = raw.get("values")
    if not isinstance(values, dict) or not values:
        expected = "a mapping of method names to {base: number, migu: number} (base: without MIGU)"
        raise ConfigError(str(invalid(f"{where}.values", expected, values)))
    table: dict[str, dict[str, float]] = {}
    for method, pair in values.items():
        try:
            canonical = get_method_class(str(method)).name
        except ValueError as exc:
            raise ConfigError(f"{where}.values: {exc}") from None
        if not isinstance(pair, dict) or not pair or set(pair) - {"base", "migu"}:
            expected = "a mapping with keys base (without MIGU) and/or migu"
            raise ConfigError(str(invalid(f"{where}.values.{method}", expected, pair)))
        with config_errors():
            for side, v in pair.items():
                check_number(v, f"{where}.values.{method}.{side}", low=-100.0, high=100.0)
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
            raise ConfigError(str(invalid(f"{path}: grid.{k}", "a non-empty list", grid[k])))
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

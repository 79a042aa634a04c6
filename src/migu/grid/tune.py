"""``migu tune SWEEP.yaml``: hyperparameters chosen on validation rows; test rows touched once.

A tune file is a sweep file (``grid.spec``) with two more keys::

    select: [recipe]        # grid keys whose values are the candidates (e.g. a per-method lr bundle)
    metric: val_acc         # what is maximised (mean over seeds); default val_acc
    test_seeds: [42, 1024, 2048]   # optional: the seeds of the test runs (default: the grid's seeds)

1. Every cell of the grid runs with ``data.eval_on: [val]``: it is scored on validation rows only,
   the test rows are never predicted (``<out>/select/<cell>``). The base config must set
   ``data.val_n``.
2. Cells are grouped by method and MIGU setting (from their results) and the other grid keys
   (``select`` keys and the seed excepted); in each group the candidate with the highest mean
   ``metric`` over seeds is chosen (ties: the first in grid order).
3. The chosen candidate of every group is run again with ``data.eval_on: [test]`` for the same seeds,
   or for ``test_seeds`` (``<out>/test/<cell>``; a finished run there is reused). Training is
   deterministic, so on a selection seed these are the selected models, now scored once on the
   test rows. ``test_seeds`` lets a cheaper selection (fewer seeds) precede the 3-seed test.
4. ``tune_summary.json``/``.md``: every candidate's validation numbers, the choice and its margin,
   the chosen settings' test metrics, and MIGU's paired effect on test ACC per method.

A cell directory holding a finished ``results.json`` but no run state (results copied back, e.g. a
batch another machine ran) is reused once its saved config matches the cell's; ``--summarize``
trains nothing and rewrites the summaries from such files alone.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..analysis.effects import Effect, effects_table, paired_effects
from ..analysis.groups import (
    SWEEP_FILE,
    Group,
    MIGUSetting,
    SweepCell,
    SweepDir,
    grid_label,
    group_cells,
    group_keys,
)
from ..analysis.tables import markdown_table, method_table, pct
from ..runner.config import ConfigError, build_run_config, read_yaml_config
from ..runner.execute import execute
from ..runner.files import atomic_write_text
from ..runner.plan import plan_run, resolve_regime
from ..runner.results import METRICS, RESULTS_FILE, ResultsError, RunResults, load_results
from ..runner.state import STATE_FILE, config_changes
from ..validation import check_int, check_list, config_errors, invalid
from .spec import Cell, load_sweep

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One value of the selected keys within a group, over its seeds."""

    label: str
    cells: list[str]
    seeds: list[int]
    scores: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else float("-inf")

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else None


@dataclass
class Choice:
    """A group (method, MIGU setting, other settings) and the candidate its validation picked."""

    method: str
    setting: str
    extra: str
    metric: str
    candidates: list[Candidate] = field(default_factory=list)
    chosen: str = ""
    reason: str = ""


def _spec(path: str | Path) -> tuple[list[str], str, list[int] | None]:
    spec = read_yaml_config(path)
    select = spec.get("select")
    if isinstance(select, str):
        select = [select]
    if not isinstance(select, list) or not select or not all(isinstance(k, str) for k in select):
        expected = "a non-empty list of grid keys (whose values are the candidates)"
        raise ConfigError(str(invalid(f"{path}: select", expected, spec.get("select"))))
    grid = spec.get("grid") or {}
    unknown = [k for k in select if k not in grid]
    if unknown:
        raise ConfigError(f"{path}: select names {unknown}, which are not grid keys ({sorted(grid)})")
    metric = spec.get("metric", "val_acc")
    if not isinstance(metric, str) or not metric.startswith("val_"):
        raise ConfigError(
            str(invalid(f"{path}: metric", "a validation metric (val_acc, val_bwt, ...)", metric))
        )
    test_seeds = spec.get("test_seeds")
    if test_seeds is not None and not isinstance(test_seeds, list):  # a tuple is not YAML
        raise ConfigError(
            str(invalid(f"{path}: test_seeds", "a non-empty list of integer seeds", test_seeds))
        )
    with config_errors():
        check_list(test_seeds, f"{path}: test_seeds", check_int, "integer seeds", none=True)
    return select, metric, test_seeds


def _without_seed(cell: Cell) -> tuple[tuple[str, str], ...]:
    """A cell's grid values other than the seed: the same setting at any seed."""
    return tuple((k, json.dumps(v, sort_keys=True)) for k, v in cell.values.items() if k != "seed")


def _cells(path: str | Path, overrides: list[str], eval_on: str) -> tuple[str, list[Cell]]:
    """The grid's cells, each scored on ``eval_on`` rows only; every cell must have validation rows."""
    name, cells = load_sweep(path, [*overrides, f"data.eval_on=[{eval_on}]"])
    for c in cells:
        if not (c.config.get("data") or {}).get("val_n"):
            raise ConfigError(
                f"{path}: cell {c.name}: tuning needs data.val_n (validation rows) in the base config"
            )
    return name, cells


def _write_sweep_file(cells: list[Cell], root: Path, tuned: list[str] | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        root / SWEEP_FILE,
        yaml.safe_dump(
            {
                "name": root.name,
                **({"tuned": tuned} if tuned else {}),  # chosen per setting: readers pair across them
                "cells": [{"name": c.name, "values": c.values} for c in cells],
            }
        ),
    )


def _run_cells(
    cells: list[Cell], root: Path, data_root: str | None, tuned: list[str] | None = None
) -> dict[str, RunResults]:
    """Run every cell (resuming partial runs); return every cell's results. A cell holding a
    finished results.json but no run_state (a copy of committed results, e.g. a batch another
    machine ran) is reused once its saved config matches the cell's; one that does not is
    refused, never overwritten."""
    results = _load_saved(
        [c for c in cells if _results_only(root / c.name)],
        root,
        f"{root}: results.json without a run state that this tune cannot reuse (move them away to "
        "train these cells again)",
    )
    todo = [c for c in cells if c.name not in results]
    plans = [
        plan_run(build_run_config(c.config), root / c.name, data_root) for c in todo
    ]  # all checked first
    _write_sweep_file(cells, root, tuned)
    for name in results:
        log.info("tune: %s cell %s: reusing its finished results.json (no run state)", root.name, name)
    for i, (cell, plan) in enumerate(zip(todo, plans, strict=True)):
        log.info("tune: %s cell %d/%d %s", root.name, i + 1, len(todo), cell.name)
        execute(plan)
        results[cell.name] = load_results(root / cell.name)
    return {c.name: results[c.name] for c in cells}


def _results_only(run_dir: Path) -> bool:
    return (run_dir / RESULTS_FILE).is_file() and not (run_dir / STATE_FILE).is_file()


def _load_saved(cells: list[Cell], root: Path, why: str) -> dict[str, RunResults]:
    """Each cell's saved results.json, checked to stand for the cell's run; one ConfigError
    headed ``why`` lists every missing, unfinished or differing cell (nothing is written)."""
    results: dict[str, RunResults] = {}
    problems = []
    for c in cells:
        res, problem = _saved_results(c, root)
        if res is not None and problem is None:
            results[c.name] = res
        else:
            problems.append(f"{c.name}: {problem}")
    if problems:
        raise ConfigError(f"{why}:\n  " + "\n  ".join(problems))
    return results


def _saved_results(c: Cell, root: Path) -> tuple[RunResults | None, str | None]:
    """A cell's saved results and why they cannot stand for the cell's run (None: they can).

    Keys that a results file predates (fields added to the config since) are not compared: they
    did not exist, so the run used what their defaults now say. Keys removed since are reported."""
    try:
        res = load_results(root / c.name)
    except ResultsError as exc:
        return None, str(exc)
    if not res.complete:
        return res, f"the run in {root / c.name} did not finish"
    if res.config:
        config = build_run_config(c.config)
        now = {**config.to_dict(), "regime": resolve_regime(config)[0]}  # as the run resolved it
        saved = {k: v for k, v in res.config.items() if k in now}
        changes = config_changes(saved, now, skip_added=True)
        if changes:
            return res, f"made with another config ({'; '.join(changes)})"
    return res, None


def choose(cells: list[Cell], results: dict[str, RunResults], select: list[str], metric: str) -> list[Choice]:
    """The best candidate per group by mean validation ``metric`` over seeds (see the module doc)."""
    choices: dict[tuple[Any, ...], Choice] = {}
    order: dict[tuple[Any, ...], dict[str, Candidate]] = {}
    keyed = group_keys([(results[c.name], c.values) for c in cells], skip=(*select, "seed"))
    for cell, (key, extra) in zip(cells, keyed, strict=True):
        res = results[cell.name]
        choice = choices.setdefault(key, Choice(res.method, MIGUSetting.of(res).label, extra, metric))
        label = ", ".join(grid_label(k, cell.values[k]) for k in select)
        cand = order.setdefault(key, {}).setdefault(label, Candidate(label, [], [], []))
        score = res.metric(metric)
        if score is None:
            raise ValueError(
                f"cell {cell.name}: no {metric} in its results (was it scored on validation rows?)"
            )
        cand.cells.append(cell.name)
        cand.seeds.append(res.seed)
        cand.scores.append(score)
    for key, choice in choices.items():
        choice.candidates = list(order[key].values())
        best = max(choice.candidates, key=lambda c: c.mean)  # max keeps the first of equal means
        ranked = sorted(choice.candidates, key=lambda c: -c.mean)
        runner_up = ranked[1] if len(ranked) > 1 else None
        choice.chosen = best.label
        margin = (
            f", {100 * (best.mean - runner_up.mean):.2f} points above {runner_up.label}" if runner_up else ""
        )
        choice.reason = f"highest mean {metric} over seeds {best.seeds}: {100 * best.mean:.2f}{margin}"
    return list(choices.values())


def run_tune(
    path: str | Path,
    out: str | Path | None = None,
    data_root: str | None = None,
    overrides: list[str] | None = None,
    summarize: bool = False,
) -> dict[str, Any]:
    """Select on validation, then score the chosen settings on test; write the tune summary.

    ``summarize``: train nothing; read every cell's results.json (a committed copy of a tune
    without its run_state or checkpoints suffices) and write the summaries again."""
    overrides = list(overrides or [])
    select, metric, test_seeds = _spec(path)
    name, val_cells = _cells(path, overrides, "val")
    seeds = [f"grid.seed=[{', '.join(map(str, test_seeds))}]"] if test_seeds else []
    _, test_cells = _cells(path, [*overrides, *seeds], "test")
    out = Path(out) if out else Path("runs") / f"{name}_tune"
    summarized = "--summarize needs every cell's finished results in"
    if summarize:
        val_results = _load_saved(val_cells, out / "select", f"{summarized} {out / 'select'}")
    else:
        val_results = _run_cells(val_cells, out / "select", data_root)
    choices = choose(val_cells, val_results, select, metric)
    by_name = {c.name: c for c in val_cells}
    chosen = {
        _without_seed(by_name[n])
        for ch in choices
        for cand in ch.candidates
        if cand.label == ch.chosen
        for n in cand.cells
    }
    final = [c for c in test_cells if _without_seed(c) in chosen]
    if summarize:
        # both checked before either sweep file is rewritten
        test_results = _load_saved(final, out / "test", f"{summarized} {out / 'test'}")
        _write_sweep_file(val_cells, out / "select", None)
        _write_sweep_file(final, out / "test", select)
    else:
        test_results = _run_cells(final, out / "test", data_root, tuned=select)
    return write_tune_summary(out, name, choices, final, select, metric, test_results)


def write_tune_summary(
    out: Path,
    name: str,
    choices: list[Choice],
    final: list[Cell],
    select: list[str],
    metric: str,
    results: dict[str, RunResults] | None = None,
) -> dict[str, Any]:
    """``results``: the test cells' results when already loaded (else read from ``out/test``)."""
    loaded = results or {c.name: load_results(out / "test" / c.name) for c in final}
    test_dir = SweepDir(
        "test",
        out / "test",
        [SweepCell(c.name, c.values, out / "test" / c.name, loaded[c.name]) for c in final],
        tuple(select),
    )
    groups = group_cells([test_dir])
    effects = paired_effects(groups)
    summary = {
        "name": name,
        "select": select,
        "metric": metric,
        "choices": [asdict(c) for c in choices],
        "test": [
            {
                "method": g.method,
                "setting": g.setting,
                "seeds": g.seeds,
                "chosen": g.tuned,
                **{f"{m}_mean": g.mean_std(m)[0] for m in METRICS},
            }
            for g in groups
        ],
        "effects": [asdict(e) for e in effects],
    }
    atomic_write_text(out / "tune_summary.json", json.dumps(summary, indent=1))
    text = _tune_markdown(name, choices, groups, effects, select, metric)
    atomic_write_text(out / "tune_summary.md", text)
    summary["markdown"] = text
    return summary


def _tune_markdown(
    name: str,
    choices: list[Choice],
    groups: list[Group],
    effects: list[Effect],
    select: list[str],
    metric: str,
) -> str:
    """tune_summary.md: every candidate on validation, the choices, the test table, MIGU's effects."""
    lines = [
        f"# Tuning: {name}",
        "",
        f"Selected on validation rows by mean {metric} over seeds; test rows scored once, by the chosen "
        "settings.",
        "",
    ]
    rows = []
    for ch in choices:
        for cand in ch.candidates:
            rows.append(
                [
                    ch.method,
                    ch.setting,
                    ch.extra or "-",
                    cand.label,
                    " ".join(map(str, cand.seeds)),
                    pct(cand.mean, cand.std),
                    "chosen" if cand.label == ch.chosen else "",
                ]
            )
    lines += [
        markdown_table(["method", "MIGU", "other", "candidate", "seeds", f"{metric} (%)", ""], rows),
        "",
    ]
    lines += [
        f"- {ch.method} / MIGU {ch.setting}{' / ' + ch.extra if ch.extra else ''}: {ch.chosen} ({ch.reason})"
        for ch in choices
    ]
    lines += ["", "## Test rows (chosen settings)", "", markdown_table(*method_table(groups)), ""]
    if effects:
        lines += [
            "## MIGU effect on test ACC (paired by seed)",
            "",
            markdown_table(*effects_table(effects)),
            "",
        ]
        lines += [f"- {e.sentence()}" for e in effects]
        apart = sorted(
            {g.method for g in groups for h in groups if g.method == h.method and g.tuned != h.tuned}
        )
        if apart:
            lines += [
                "",
                f"{', '.join(apart)}: without and with MIGU chose different {', '.join(select)}, so each "
                "effect compares the two as tuned, each at its own best, not MIGU at one fixed value.",
            ]
    return "\n".join(lines) + "\n"
